"""Unit tests of the train room's pieces, each against an independent computation."""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from train.cli import find_config, list_configs, resolve_config_args
from train.data import SyntheticCorpus, WebDataModule, check_shards_exist, count_samples, expand_shards
from train.loss import build_loss, contrastive_loss
from train.models import build_model_and_transforms, check_model_name
from train.optim import param_groups, warmup_cosine
from train.retrieval import retrieval_recall
from train.run_dir import resolve_wandb_mode, wandb_api_key_configured


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine(110, 10, 110, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110) == pytest.approx(0.0)


def test_no_weight_decay_on_gains_biases_logit_scale():
    model, _, _ = build_model_and_transforms("clip-micro")
    decay, exempt = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    ids = {id(p) for p in exempt["params"]}
    named = dict(model.named_parameters())
    assert id(named["logit_scale"]) in ids
    for name, p in named.items():
        if p.ndim < 2 or name.endswith(".bias") or ".ln_" in name or name.startswith("ln_"):
            assert id(p) in ids, name
    assert id(named["visual.transformer.resblocks.0.mlp.c_fc.weight"]) not in ids
    assert id(named["transformer.resblocks.0.attn.in_proj_weight"]) not in ids
    assert len(decay["params"]) + len(exempt["params"]) == len(named)


def test_retrieval_recall_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    txt = F.normalize(img + 0.8 * torch.randn(40, 8, generator=g), dim=-1)
    got = retrieval_recall(img, txt)
    sim = (img @ txt.T).tolist()
    for k in (1, 5, 10):
        i2t = sum(sorted(range(40), key=lambda j: -sim[i][j]).index(i) < k for i in range(40)) / 40
        t2i = sum(sorted(range(40), key=lambda j: -sim[j][i]).index(i) < k for i in range(40)) / 40
        assert got[f"i2t_R@{k}"] == pytest.approx(i2t)
        assert got[f"t2i_R@{k}"] == pytest.approx(t2i)
    assert 0 < got["i2t_R@1"] < 1


def test_clip_loss_single_process_is_symmetric_cross_entropy():
    model, _, _ = build_model_and_transforms("clip-micro")
    tok = open_clip.get_tokenizer("clip-micro")
    images = torch.randn(6, 3, 32, 32)
    texts = tok([f"a photo of {i}" for i in range(6)])
    loss = contrastive_loss(model, images, texts, build_loss("clip"))
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(texts, normalize=True)
    logits = model.logit_scale.exp() * img @ txt.T
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown model_name 'ViT-Nope'.*clip-tiny.*ViT-B-32"):
        check_model_name("ViT-Nope")


def test_clip_tiny_is_random_init_and_64px():
    a, _, pv = build_model_and_transforms("clip-tiny")
    b, _, _ = build_model_and_transforms("clip-tiny")
    assert a.visual.image_size == (64, 64)
    assert len(a.visual.transformer.resblocks) == 4 and len(a.transformer.resblocks) == 4
    assert not torch.equal(a.token_embedding.weight, b.token_embedding.weight)  # no pretrained weights


def test_config_lookup(tmp_path):
    assert "quickstart.yaml" in list_configs() and "laion_small.yaml" in list_configs()
    assert find_config("quickstart.yaml").endswith("configs/quickstart.yaml")
    assert find_config("quickstart").endswith("configs/quickstart.yaml")
    own = tmp_path / "mine.yaml"
    own.write_text("{}")
    assert find_config(str(own)) == str(own)
    with pytest.raises(FileNotFoundError, match="nope.yaml.*quickstart.yaml"):
        find_config("nope.yaml")
    argv = resolve_config_args(["fit", "--config", "quickstart.yaml", "--config=laion_small", "--trainer.max_steps=3"])
    assert argv[2].endswith("configs/quickstart.yaml") and argv[3].endswith("configs/laion_small.yaml")
    assert resolve_config_args(["fit"])[1:3] == ["--config", find_config("quickstart.yaml")]
    # overlays are listed (a mistyped name shows them too) and are refused without a base config
    assert "mitigation/caption_shuffle.yaml" in list_configs()
    with pytest.raises(FileNotFoundError, match="nope.yaml.*mitigation/caption_shuffle.yaml"):
        find_config("nope.yaml")
    with pytest.raises(ValueError, match=r"--config mitigation/caption_shuffle.yaml only changes a base config; "
                                         r"add one first, e.g. --config quickstart.yaml --config mitigation/"):
        resolve_config_args(["fit", "--config", "mitigation/caption_shuffle.yaml"])
    argv = resolve_config_args(["fit", "--config", "quickstart", "--config", "mitigation/caption_shuffle.yaml"])
    assert argv[4].endswith("configs/mitigation/caption_shuffle.yaml")


def test_config_errors_from_the_shell_are_one_line():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    for args, want in ((["--config", "mitigation/crop.yaml"], "only changes a base config"),
                       (["--config", "nope.yaml"], "is neither a file nor a config")):
        out = subprocess.run([sys.executable, "-m", "train", "fit", *args], cwd=repo, capture_output=True, text=True)
        assert out.returncode == 2 and want in out.stderr and "Traceback" not in out.stderr, out.stderr[-1500:]


def test_wandb_offline_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_api_key_configured()
    assert resolve_wandb_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert wandb_api_key_configured() and resolve_wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"


def test_datamodule_bad_input_messages(tmp_path, tiny_shards):
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        WebDataModule(train_shards=tiny_shards, batch_size=0)
    missing = str(tmp_path / "laion" / "{00000..00002}.tar")
    with pytest.raises(FileNotFoundError, match=r"00000\.tar.*python -m data_prep laion"):
        WebDataModule(train_shards=missing)
    with pytest.raises(ValueError, match="exactly one of data.train_shards, data.train_sources and data.synthetic"):
        WebDataModule()
    for nice in (-1, 20, 2.5):
        with pytest.raises(ValueError, match=rf"data.worker_nice must be an int in 0..19 .*got {nice}"):
            WebDataModule(train_shards=tiny_shards, worker_nice=nice)


class _Niceness(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield os.nice(0)


def test_worker_nice_lowers_only_the_workers_priority(tiny_shards):
    from train.data import lower_priority

    dm = WebDataModule(train_shards=tiny_shards, batch_size=8, num_workers=1, worker_nice=5)
    _, pv, _ = build_model_and_transforms("clip-micro")
    dm.set_model_transforms(pv, pv, open_clip.get_tokenizer("clip-micro"))
    init = dm.train_dataloader().worker_init_fn
    assert (init.func, init.args) == (lower_priority, (5,))  # the loader's workers get data.worker_nice

    here = os.nice(0)
    for nice, expected in ((0, here), (7, min(19, here + 7))):
        loader = torch.utils.data.DataLoader(_Niceness(), batch_size=None, num_workers=1,
                                             worker_init_fn=functools.partial(lower_priority, nice))
        assert list(loader) == [expected]
    assert os.nice(0) == here  # the training process keeps its priority


def test_shard_expansion_and_counting(tiny_shards):
    pattern = str(Path(tiny_shards[0]).parent / "{00000..00001}.tar")
    assert expand_shards(pattern) == tiny_shards
    assert count_samples(tiny_shards) == 128


def test_a_shard_folder_expands_to_its_tars_in_order(tiny_shards, tmp_path):
    folder = Path(tiny_shards[0]).parent
    assert expand_shards(str(folder)) == sorted(tiny_shards) == expand_shards([str(folder)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expands to no files"):
        check_shards_exist(expand_shards(str(tmp_path / "empty")), "data.train_shards")


def test_pipeline_skips_and_counts_bad_samples(tmp_path):
    from conftest import write_shards

    shards = write_shards(tmp_path / "s", n_shards=1, per_shard=20, bad={"corrupt_jpg": 3, "no_caption": 2})
    dm = WebDataModule(train_shards=shards, batch_size=5, num_workers=0, shuffle_buffer=1, samples_per_epoch=25)
    _, pv, _ = build_model_and_transforms("clip-micro")
    dm.set_model_transforms(pv, pv, open_clip.get_tokenizer("clip-micro"))
    assert dm.batches_per_rank() == (5, 5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    images, tokens, stats = batches[-1]
    assert images.shape == (5, 3, 32, 32) and tokens.shape == (5, 16)
    # 25 good samples drawn from a shard of 20 good + 5 bad: resampling reads it at least twice.
    assert stats["counts"]["decode_errors"] >= 3 and stats["counts"]["no_caption"] >= 2
    assert stats["counts"]["decode_errors"] % 3 == 0 and stats["counts"]["no_caption"] % 2 == 0


def test_epoch_length_equal_on_every_rank(tiny_shards):
    dm = WebDataModule(train_shards=tiny_shards, batch_size=8, num_workers=3)
    dm.trainer = type("T", (), {"world_size": 2, "lightning_module": None})()
    per_worker, per_rank = dm.batches_per_rank()  # 128 samples / (8 x 2) = 8 batches -> ceil(8/3) x 3
    assert (per_worker, per_rank) == (3, 9)


def test_synthetic_corpus_cached_by_parameters(tmp_path, monkeypatch):
    import sys
    import types

    calls = []

    def fake_write_corpus(out_dir, num_samples, **kw):
        from conftest import write_shards

        calls.append((num_samples, kw["seed"]))
        write_shards(Path(out_dir), n_shards=1, per_shard=num_samples)
        (Path(out_dir) / "meta.json").write_text(json.dumps({"num_samples": num_samples, **kw}))
        return {}

    fake = types.ModuleType("data_prep.synth")
    fake.write_corpus = fake_write_corpus
    monkeypatch.setitem(sys.modules, "data_prep.synth", fake)
    syn = SyntheticCorpus(num_samples=8, val_num_samples=4)
    dm = WebDataModule(synthetic=syn, cache_dir=str(tmp_path / "cache"), batch_size=4)
    dm.prepare_data()
    dm.prepare_data()  # cached: no second render
    assert calls == [(8, 0), (4, 1)]
    train_dir = syn.cache_path(tmp_path / "cache", "train")
    assert train_dir.name.startswith("synth-") and (train_dir / "00000.tar").exists()
    assert SyntheticCorpus(num_samples=9).cache_path(tmp_path, "train") != syn.cache_path(tmp_path, "train")
    assert dm._train_urls() == [str(train_dir / "00000.tar")]
    assert len(dm._val_urls()) == 1 and count_samples(dm._train_urls()) == 8
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_siglip_loss_option_builds_bias_and_trains():
    from train.module import CLIPModule

    module = CLIPModule(model_name="clip-micro", loss="siglip")
    assert module.model.logit_bias is not None and module.model.logit_bias.item() == -10.0
    tok = open_clip.get_tokenizer("clip-micro")
    loss = contrastive_loss(module.model, torch.randn(4, 3, 32, 32), tok(["a", "b", "c", "d"]), build_loss("siglip"))
    loss.backward()
    assert torch.isfinite(loss) and module.model.logit_bias.grad is not None


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_validation_loss_equals_full_forward_loss(loss, monkeypatch):
    """validation_step reuses its normalised features; the loss must equal open_clip's full forward."""
    from train.module import CLIPModule

    torch.manual_seed(0)
    module = CLIPModule(model_name="clip-micro", loss=loss)
    module.eval()
    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    size = module.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    images = torch.randn(6, 3, size, size)
    texts = module.tokenizer([f"a photo of object {i}" for i in range(6)])
    with torch.no_grad():
        module.on_validation_epoch_start()
        module.validation_step((images, texts), 0)
        expected = contrastive_loss(module.model, images, texts, build_loss(loss))
    torch.testing.assert_close(logged["val/loss"], expected, rtol=1e-5, atol=1e-6)


def test_missing_shards_hint_is_a_laion_command_that_parses(tmp_path):
    """The hint names --parquet, which `python -m data_prep laion` requires (argparse accepts the command)."""
    import re
    import shlex

    from data_prep.cli import build_parser
    from train.data import check_shards_exist

    with pytest.raises(FileNotFoundError) as e:
        check_shards_exist([str(tmp_path / "laion" / "00000.tar")], "data.train_shards")
    command = re.search(r"`python -m data_prep (laion [^`]*)`", str(e.value)).group(1)
    args = build_parser().parse_args(shlex.split(command))
    assert str(args.parquet) == "PARQUET" and args.out == tmp_path / "laion"
