"""The aux-loss hook (model.aux_losses) and the two built-in losses: known answers, config-only use, tiny fits."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms as T

from train.aux_losses import AuxBatch, AuxLoss, OrderInvariantText, RegionLoss, aux_terms, capture_all
from train.aux_losses.geometry import box_patches, map_box, preprocess_geometry
from train.aux_losses.order_invariant import multi_positive_sums
from train.aux_losses.region import pool_regions
from train.loss import build_loss, contrastive_loss
from train.models import build_model_and_transforms, register_model_configs


class ToyAux(AuxLoss):
    """Test loss added by config only: the mean image-feature norm, plus a logged-only count."""

    def forward(self, batch: AuxBatch):
        return {"toy": batch.image_features.pow(2).sum(-1).mean(),
                "toy/batch": (batch.images.new_tensor(float(batch.images.shape[0])), 0.0)}


def _rendered_meta(key: str, names: list[str], boxes: list[list[float]], size: int = 32) -> dict:
    from data_prep.captions import make_caption

    objects = [{"name": n, "bbox": b, "area": b[2] * b[3], "mention_index": k} for k, (n, b) in enumerate(zip(names, boxes))]
    caption = make_caption(names, "photo")
    return {"key": key, "__key__": key, "caption": caption, "template": "photo", "objects": objects,
            "preprocess": {"crop": [0.0, 0.0, float(size), float(size)], "size": [float(size), float(size)]}}


def _model(name: str = "clip-micro") -> torch.nn.Module:
    register_model_configs()
    torch.manual_seed(0)
    model, _, _ = build_model_and_transforms(name)
    return model


def _batch(model, images, texts, metas, features, **kw) -> AuxBatch:
    return AuxBatch(images=images, texts=texts, meta=metas, image_features=features["image_features"],
                    text_features=features["text_features"], logit_scale=features["logit_scale"],
                    logit_bias=features["logit_bias"], model=model, tokenizer=open_clip.get_tokenizer("clip-micro"),
                    **kw)


# ----------------------------------------------------------------------------- geometry and pooling


def test_pool_regions_is_the_exact_mean_of_the_box_patches():
    patches = torch.arange(2 * 16 * 3, dtype=torch.float64).reshape(2, 16, 3)
    box = (8.0, 8.0, 24.0, 16.0)  # 32 px, 4x4 grid of 8 px: centres x 12, 20 inside; y 12 inside
    cells = box_patches(box, (32, 32), (4, 4))
    assert cells == [5, 6]
    regions = pool_regions(patches, [1, 0], [cells, [0]])
    # exact on purpose: small integers in float64, so the mean of two is exact on any CPU
    torch.testing.assert_close(regions[0], (patches[1, 5] + patches[1, 6]) / 2, rtol=0, atol=0)
    torch.testing.assert_close(regions[1], patches[0, 0], rtol=0, atol=0)
    # a box holding no patch centre still gets one patch: the one with its centre
    assert box_patches((17.0, 1.0, 19.0, 3.0), (32, 32), (4, 4)) == [2]
    # size-independent: a 4-patch and a 1-patch region of the same constant token are equal
    const = torch.ones(1, 16, 3)
    big, small = pool_regions(const, [0, 0], [box_patches((0, 0, 16, 16), (32, 32), (4, 4)), [7]])
    torch.testing.assert_close(big, small)


def test_map_box_through_the_crop_and_refusals():
    geometry = {"crop": [8.0, 8.0, 16.0, 16.0], "size": [32.0, 32.0]}  # the centre half, upscaled x2
    assert map_box([8, 8, 8, 8], geometry) == (0.0, 0.0, 16.0, 16.0)
    assert map_box([12, 12, 4, 2], geometry) == (8.0, 8.0, 16.0, 12.0)
    assert map_box([0, 0, 6, 6], geometry) is None  # outside the crop
    assert map_box([4, 4, 8, 8], geometry) is None  # a quarter inside < min_visible 0.5
    assert map_box([4, 4, 8, 8], geometry, min_visible=0.25) == (0.0, 0.0, 8.0, 8.0)
    assert map_box([8, 8, 8, 8], None) is None  # preprocess not understood
    assert map_box([8, 8, 0, 8], geometry) is None and map_box([8, 8], geometry) is None


def test_preprocess_geometry_replays_the_crop_the_image_went_through(monkeypatch):
    _, train_pp, val_pp = build_model_and_transforms("clip-micro")
    from PIL import Image

    image = Image.new("RGB", (48, 40))
    drawn = []
    real = T.RandomResizedCrop.get_params

    def spy(img, scale, ratio):
        drawn.append(real(img, scale, ratio))
        return drawn[-1]

    for seed in range(5):
        torch.manual_seed(seed)
        geometry = preprocess_geometry(train_pp, image.size)
        monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(spy))
        torch.manual_seed(seed)
        train_pp(image)
        monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(real))
        i, j, h, w = drawn[-1]
        assert geometry == {"crop": [float(j), float(i), float(w), float(h)], "size": [32.0, 32.0]}
    # Resize(32) of a 48x40 image -> 38x32 (x scaled by 38/48), CenterCrop(32) -> left 3: source x 3*48/38
    geometry = preprocess_geometry(val_pp, (48, 40))
    assert geometry["crop"] == pytest.approx([3 * 48 / 38, 0.0, 32 * 48 / 38, 40.0]) and geometry["size"] == [32, 32]
    assert preprocess_geometry(T.Compose([T.Pad(2), T.ToTensor()]), (32, 32)) is None


def test_meta_batches_match_default_batches(tiny_shards):
    from train.data import WebDataModule

    model, train_pp, val_pp = build_model_and_transforms("clip-micro")
    tok = open_clip.get_tokenizer("clip-micro")
    out = []
    for keep in (False, True):
        dm = WebDataModule(train_shards=tiny_shards, batch_size=8, num_workers=0, seed=3)
        dm.set_model_transforms(train_pp, val_pp, tok)
        dm.keep_meta = keep
        out.append(next(iter(dm.train_dataloader())))
    plain, meta = out
    assert len(plain) == 3 and len(meta) == 4
    assert torch.equal(plain[0], meta[0]) and torch.equal(plain[1], meta[1])  # same images, crops and tokens
    m = meta[3][0]
    assert m["__key__"] == m["key"] and m["caption"] == m["caption"].strip()
    assert m["source_size"] == [64, 64] and m["preprocess"]["size"] == [32.0, 32.0]
    assert tok([m["caption"]]).equal(meta[1][:1])


# ----------------------------------------------------------------------------- order-invariant objective


def test_multi_positive_infonce_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    n, d = 5, 4
    img, txt, prm = (F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(3))
    mask = torch.tensor([True, False, True, True, False])
    scale = torch.tensor(3.0)
    i2t, p2i = multi_positive_sums(img, txt, prm, mask, img, 0, scale)
    cols = [txt[j] for j in range(n)] + [prm[j] for j in range(n) if mask[j]]
    col_of = {j: n + k for k, j in enumerate(j for j in range(n) if mask[j])}
    want_i2t = want_p2i = 0.0
    for i in range(n):
        if not mask[i]:
            continue
        z = sum(math.exp(scale * float(img[i] @ c)) for c in cols)
        lp = lambda c: math.log(math.exp(scale * float(img[i] @ cols[c])) / z)  # noqa: E731
        want_i2t += -(lp(i) + lp(col_of[i])) / 2
        zi = sum(math.exp(scale * float(prm[i] @ img[j])) for j in range(n))
        want_p2i += -math.log(math.exp(scale * float(prm[i] @ img[i])) / zi)
    assert i2t.item() == pytest.approx(want_i2t, rel=1e-5)
    assert p2i.item() == pytest.approx(want_p2i, rel=1e-5)
    # a rank holding rows 3..4 sums only its own anchor (row 3)
    i2t_r, _ = multi_positive_sums(img[3:], txt, prm, mask, img, 3, scale)
    full_rows, _ = multi_positive_sums(img[3:4], txt, prm, mask, img, 3, scale)
    assert i2t_r.item() == pytest.approx(full_rows.item(), rel=1e-6)


def test_twin_is_seeded_differs_and_needs_two_mentions():
    loss = OrderInvariantText()
    meta = _rendered_meta("k1", ["dog", "cat", "car"], [[0, 0, 4, 4]] * 3)
    caption = meta["caption"]
    twins = {loss.twin(caption, meta, random.Random(s)) for s in range(30)}
    assert caption not in twins and None not in twins and len(twins) == 5  # the 5 other orders
    assert all(sorted(t.replace(",", "").split()) == sorted(caption.replace(",", "").split()) for t in twins)
    assert loss.twin(caption, meta, random.Random(7)) == loss.twin(caption, meta, random.Random(7))
    one = _rendered_meta("k2", ["dog"], [[0, 0, 4, 4]])
    assert loss.twin(one["caption"], one, random.Random(0)) is None
    assert loss.twin("two dogs and a red car", {}, random.Random(0)) == "a red car and two dogs"  # free-form
    # AuxBatch.rng: same (seed, key, step) -> same draw; another step -> another stream
    b = lambda step: AuxBatch(None, torch.zeros(1), [meta], *(None,) * 6, seed=1, step=step)  # noqa: E731
    assert b(0).rng("x", 0).random() == b(0).rng("x", 0).random() != b(1).rng("x", 0).random()


@pytest.mark.parametrize("mode", ["multi_positive", "pull"])
def test_zero_weight_leaves_gradients_identical_and_weight_adds_the_term(mode):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    metas = [_rendered_meta(f"s{i}", ["dog", "cat", "car"][: 2 + i % 2], [[0, 0, 16, 16], [16, 16, 16, 16], [0, 16, 8, 8]])
             for i in range(4)]
    texts = open_clip.get_tokenizer("clip-micro")([m["caption"] for m in metas])
    grads, values = [], []
    for losses in ([], [OrderInvariantText(weight=0.0, mode=mode), RegionLoss(weight=0.0)],
                   [OrderInvariantText(weight=0.5, mode=mode)]):
        model = _model()
        feats: dict = {}
        with capture_all(losses, model):
            loss = contrastive_loss(model, images, texts, build_loss("clip"), features=feats)
        extra, terms = aux_terms(losses, _batch(model, images, texts, metas, feats))
        (loss + extra).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        values.append((loss.item(), extra.item(), terms))
    for name, g in grads[0].items():
        assert torch.equal(grads[1][name], g), name  # weight 0: bit-identical gradients
    assert values[1][1] == 0.0 and values[1][2]["order_invariant"].item() > 0 and values[1][2]["region"].item() > 0
    assert values[1][2]["order_invariant/coverage"].item() == 1.0
    assert values[2][1] == pytest.approx(0.5 * values[2][2]["order_invariant"].item())
    assert any(not torch.equal(grads[2][n], g) for n, g in grads[0].items())


# ----------------------------------------------------------------------------- region loss


def test_region_loss_pools_the_patch_tokens_of_the_forward():
    model = _model()
    loss = RegionLoss()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    metas = [_rendered_meta("a", ["dog", "cat"], [[0, 0, 16, 16], [24, 24, 8, 8]]),
             _rendered_meta("b", ["car"], [[8, 0, 24, 8]])]
    texts = open_clip.get_tokenizer("clip-micro")([m["caption"] for m in metas])
    feats: dict = {}
    with capture_all([loss], model):
        contrastive_loss(model, images, texts, build_loss("clip"), features=feats)
    captured = loss._tokens
    terms = loss(_batch(model, images, texts, metas, feats))
    assert terms["region/regions"][0].item() == 3 and terms["region/refused"][0].item() == 0
    # by hand: ln_post over the patch tokens, mean over the box's patches, proj, normalise
    v = model.visual
    patches = v.ln_post(captured[:, 1:])
    with torch.no_grad():
        dog = F.normalize(patches[0, [0, 1, 4, 5]].mean(0) @ v.proj, dim=-1)
        names = F.normalize(model.encode_text(open_clip.get_tokenizer("clip-micro")(
            ["a photo of a car", "a photo of a cat", "a photo of a dog"])), dim=-1)
        cat = F.normalize(patches[0, 15] @ v.proj, dim=-1)
        car = F.normalize(patches[1, [1, 2, 3]].mean(0) @ v.proj, dim=-1)
        logits = feats["logit_scale"] * torch.stack([dog, cat, car]) @ names.T
        want = F.cross_entropy(logits, torch.tensor([2, 1, 0]))
    assert terms["region"].item() == pytest.approx(want.item(), rel=1e-4)
    # the image tower's pooled output was untouched by the hook
    torch.testing.assert_close(feats["image_features"], model.encode_image(images, normalize=True))


def test_region_loss_refuses_a_resnet_tower(tmp_path):
    from train.module import CLIPModule

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "aux-rn-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "aux-rn-tiny.json")
    with pytest.raises(ValueError, match=r"model.aux_losses\[0\] \(RegionLoss\): RegionLoss needs a ViT image tower.*ModifiedResNet"):
        CLIPModule(model_name="aux-rn-tiny", aux_losses=[RegionLoss()])
    CLIPModule(model_name="aux-rn-tiny", aux_losses=[OrderInvariantText()])  # text-side loss: fine


def test_aux_losses_with_parameters_or_duplicate_names_are_refused():
    from train.module import CLIPModule

    class Learns(AuxLoss):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

    with pytest.raises(ValueError, match="trainable parameters"):
        CLIPModule(model_name="clip-micro", aux_losses=[Learns()])
    with pytest.raises(ValueError, match="weight must be a finite number"):
        ToyAux(weight=float("nan"))
    model = _model()
    feats = {"image_features": torch.ones(2, 4), "text_features": torch.ones(2, 4), "logit_scale": torch.tensor(1.0),
             "logit_bias": None}
    batch = _batch(model, torch.zeros(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.long), None, feats)
    with pytest.raises(ValueError, match="'toy' .* returned twice"):
        aux_terms([ToyAux(), ToyAux()], batch)
    with pytest.raises(ValueError, match="needs per-sample meta"):
        aux_terms([OrderInvariantText()], batch)


# ----------------------------------------------------------------------------- through the CLI


def _read_metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_toy_loss_added_by_config_only_is_logged(tmp_path, tiny_shards):
    from test_train_fit import fit_args

    from train.cli import main

    cli = main(fit_args(tiny_shards, tmp_path, "toy", "--trainer.max_steps=2",
                        '--model.aux_losses=[{"class_path": "test_aux_losses.ToyAux", "init_args": {"weight": 0.1}}]'))
    assert type(cli.model.aux_losses[0]).__name__ == "ToyAux"
    assert not cli.datamodule.keep_meta  # ToyAux reads no meta: batches stay (images, tokens, stats)
    rows = [r for r in _read_metrics(tmp_path / "toy" / "metrics.csv") if r.get("train/aux/toy")]
    assert len(rows) == 2
    for r in rows:  # unit-norm features: toy = 1; loss = contrastive + 0.1 x toy
        assert float(r["train/aux/toy"]) == pytest.approx(1.0, abs=1e-5)
        assert float(r["train/aux/toy/batch"]) == 16
        assert float(r["train/loss"]) == pytest.approx(float(r["train/loss_contrastive"]) + 0.1, abs=1e-5)


@pytest.mark.parametrize("overlay,term", [("mitigation/order_invariant.yaml", "order_invariant"),
                                          ("mitigation/region_loss.yaml", "region")])
def test_tiny_fit_with_each_overlay(tmp_path, overlay, term):
    from train.cli import main

    torch.set_num_threads(1)
    args = ["fit", "--config", "quickstart.yaml", "--config", overlay,
            "--model.model_name=clip-micro", "--model.warmup_steps=1",
            "--data.synthetic.num_samples=64", "--data.synthetic.image_size=32", "--data.synthetic.val_num_samples=0",
            "--data.synthetic.shard_size=32", f"--data.cache_dir={tmp_path}/cache", "--data.batch_size=16",
            "--data.num_workers=0", "--data.shuffle_buffer=16", "--trainer.max_steps=2", "--trainer.callbacks=[]",
            "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
            "--trainer.enable_model_summary=false", f"--run.root={tmp_path}/runs", "--run.name=o",
            "--run.wandb_mode=disabled"]
    cli = main(args)
    assert cli.datamodule.keep_meta and cli.trainer.global_step == 2
    rows = [r for r in _read_metrics(tmp_path / "runs" / "o" / "metrics.csv") if r.get(f"train/aux/{term}")]
    assert len(rows) == 2 and all(math.isfinite(float(r[f"train/aux/{term}"])) for r in rows)
    if term == "order_invariant":
        assert all(float(r["train/aux/order_invariant/coverage"]) > 0.9 for r in rows)  # 2-4 objects per scene
    else:
        assert all(float(r["train/aux/region/regions"]) >= 32 for r in rows)  # >= 2 boxes x 16 samples
        assert all(float(r["train/aux/region/refused"]) == 0 for r in rows)
    assert all(float(r["train/loss"]) > float(r["train/loss_contrastive"]) for r in rows)


def test_resume_with_other_aux_losses_is_refused_as_a_change_of_history():
    from train import resume
    from train.aux_losses import OrderInvariantText, RegionLoss

    def history(losses):
        return resume.run_history(model_name="clip-tiny", model_cfg=None, pretrained=None, loss="clip", batch_size=8,
                                  world_size=1, accumulate_grad_batches=1, warmup_steps=1, total_steps=10,
                                  min_lr_ratio=0.0, aux_losses=[resume.describe_aux_loss(x) for x in losses])

    plain, oi = history([]), history([OrderInvariantText()])
    assert resume.history_diff(oi, history([OrderInvariantText()])) == []
    (line,) = resume.history_diff(plain, oi)
    assert line.startswith("model.aux_losses: checkpoint [], now [{'class_path': 'train.aux_losses.order_invariant")
    assert resume.history_diff(oi, history([OrderInvariantText(weight=0.5)]))  # a weight is part of the objective
    assert resume.history_diff(oi, history([RegionLoss()]))
    legacy = {k: v for k, v in oi.items() if k != "model.aux_losses"}  # records written before aux losses
    assert resume.history_diff(legacy, oi) == []
