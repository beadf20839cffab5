"""DDP on CPU (gloo): the aux losses' gradients, 2 ranks x batch B == 1 process x batch 2B."""
from __future__ import annotations

import datetime
import os

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_aux_losses import _rendered_meta
from test_train_ddp import _free_port, _grads, _model, _rank_result, _save_and_close

from train.aux_losses import AuxBatch, HardNegatives, OrderInvariantText, RegionLoss, aux_terms, capture_all
from train.loss import build_loss, contrastive_loss
from train.models import register_model_configs

B = 4  # per-rank batch
NAMES = ["dog", "cat", "car", "apple", "tree"]
SETUPS = {
    "multi_positive": lambda: [OrderInvariantText(weight=1.0)],
    "pull": lambda: [OrderInvariantText(weight=1.0, mode="pull")],
    "region": lambda: [RegionLoss(weight=1.0)],
    # rank 1 has no caption with >= 2 objects, so no twin of its own: it must still join the
    # backward collectives of the gathers, or DDP hangs
    "multi_positive/rank1_without_twins": lambda: [OrderInvariantText(weight=1.0)],
    # relation and attribute captions (the samples naming 2+ objects), so most samples have a negative
    "hard_negatives/relational": lambda: [HardNegatives(weight=1.0)],
}


def _metas_for(label: str, metas: list[dict]) -> list[dict]:
    """The setup's sample metas: for ``*/rank1_without_twins`` rank 1's samples name one object each;
    for ``*/relational`` the captions naming 2+ objects state a relation or the size words of the first two."""
    if label.endswith("relational"):
        return [_relational(m, i) for i, m in enumerate(metas)]
    if not label.endswith("rank1_without_twins"):
        return metas
    out = list(metas[:B])
    for i, m in enumerate(metas[B:], start=B):
        out.append(_rendered_meta(f"s{i:03d}", [m["objects"][0]["name"]], [m["objects"][0]["bbox"]]))
    return out


def _relational(meta: dict, i: int) -> dict:
    from data_prep.relations import rebuild_caption

    objects = [dict(o) for o in meta["objects"]]
    if len(objects) < 2:
        return meta
    for o in objects[2:]:
        o["mention_index"] = None
    extra = ({"caption_kind": "relation", "relation": ("left", "above", "below", "right")[i % 4]} if i % 2 else
             {"caption_kind": "attribute", "size_words": ["large", "small"]})
    caption = rebuild_caption({**meta, **extra}, [objects[0]["name"], objects[1]["name"]])
    return {**meta, **extra, "objects": objects, "caption": caption}


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    register_model_configs()  # spawned ranks start with open_clip's registry only
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=g)
    metas = []
    for i in range(n):
        k = 1 + i % 3  # 1, 2 or 3 objects: some samples have no twin
        names = [NAMES[(i + j * 2) % len(NAMES)] for j in range(k)]
        boxes = [[(8 * j + i) % 24, (5 * i) % 24, 8 + 4 * j, 8] for j in range(k)]
        metas.append(_rendered_meta(f"s{i:03d}", names, boxes))
    metas[0]["objects"][0]["bbox"] = [40, 40, 4, 4]  # outside the image: refused on every setup alike
    texts = open_clip.get_tokenizer("clip-micro")([m["caption"] for m in metas])
    return images, texts, metas


def _step(model, module, images, texts, metas, losses, rank: int, world: int, aux_world: int | None = None) -> torch.Tensor:
    """Contrastive + aux loss of one rank; ``aux_world=1`` makes the aux losses act as if alone."""
    feats: dict = {}
    with capture_all(losses, module):
        loss = contrastive_loss(model, images, texts, build_loss("clip", rank=rank, world_size=world), features=feats)
    batch = AuxBatch(images=images, texts=texts, meta=metas, image_features=feats["image_features"],
                     text_features=feats["text_features"], logit_scale=feats["logit_scale"], logit_bias=None,
                     model=module, tokenizer=open_clip.get_tokenizer("clip-micro"), rank=rank if aux_world is None else 0,
                     world_size=world if aux_world is None else aux_world,
                     seed=5, step=3)
    extra, _ = aux_terms(losses, batch)
    return loss + extra


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # a rank left out of a collective fails the test after 2 minutes instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    images, texts, all_metas = _data(B * world)
    mine = slice(rank * B, (rank + 1) * B)
    results = {}
    for label, make in SETUPS.items():
        metas = _metas_for(label, all_metas)
        # "<label>/local": negative control, every rank pretends to be alone (no gather, local normalisation)
        for aux_world, key in ((None, label), (1, f"{label}/local")):
            model = torch.nn.parallel.DistributedDataParallel(_model())
            loss = _step(model, model.module, images[mine], texts[mine], metas[mine], make(), rank, world, aux_world)
            results[key] = _rank_result(model, loss, world)
    _save_and_close(rank, results, out)


def test_aux_losses_two_ranks_match_one_process_with_double_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_rank_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)
    images, texts, all_metas = _data(2 * B)
    for label, make in SETUPS.items():
        model = _model()
        loss = _step(model, model, images, texts, _metas_for(label, all_metas), make(), 0, 1)
        loss.backward()
        ref = _grads(model)
        got = ddp[label]
        assert got["loss"].item() == pytest.approx(loss.item(), abs=1e-5), label
        assert set(got["grads"]) == set(ref)
        for name, g in ref.items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4, msg=f"{label}: {name}")
        # the control must differ, otherwise this test could not catch a missing gather / local normalisation
        worst = max((ddp[f"{label}/local"]["grads"][n] - g).abs().max().item() for n, g in ref.items())
        assert worst > 1e-4, label


@pytest.mark.slow
def test_cli_fit_two_cpu_processes_with_both_aux_losses(tmp_path):
    """The real path: Lightning's DDP strategy, meta through DataLoader workers, two losses (overlay + append)."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(repo), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "train", "fit", "--config", "quickstart.yaml", "--config", "mitigation/order_invariant.yaml",
        "--model.aux_losses+={\"class_path\": \"train.aux_losses.RegionLoss\", \"init_args\": {\"weight\": 0.5}}",
        "--model.model_name=clip-micro", "--model.warmup_steps=1", "--data.synthetic.num_samples=128",
        "--data.synthetic.image_size=32", "--data.synthetic.val_num_samples=0", "--data.synthetic.shard_size=64",
        f"--data.cache_dir={tmp_path}/cache", "--data.batch_size=8", "--data.num_workers=1",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.callbacks=[]", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        f"--run.root={tmp_path}/runs", "--run.name=ddp",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "runs" / "ddp" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/aux/region")]
    assert len(rows) == 3
    for r in rows:
        assert float(r["train/aux/order_invariant/coverage"]) == 1.0  # rendered scenes name 2-4 objects
        assert float(r["train/aux/region/regions"]) >= 16  # >= 2 boxes x 8 samples on rank 0
        total = float(r["train/loss_contrastive"]) + 0.5 * (float(r["train/aux/order_invariant"])
                                                          + float(r["train/aux/region"]))
        assert float(r["train/loss"]) == pytest.approx(total, rel=1e-5)
