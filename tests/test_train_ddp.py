"""DDP on CPU (gloo): gradient equivalence of the loss construction, and a real 2-process CLI run."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss

from train.loss import build_loss, contrastive_loss
from train.models import build_model_and_transforms, register_model_configs

REPO = Path(__file__).resolve().parent.parent
B = 4  # per-rank batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    register_model_configs()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, 32, 32, generator=g)
    texts = open_clip.get_tokenizer("clip-micro")([f"a photo of thing {i} and {i * 7 % 5}" for i in range(n)])
    return images, texts


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model, _, _ = build_model_and_transforms("clip-micro")
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _rank_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    images, texts = _data(B * world)
    mine = slice(rank * B, (rank + 1) * B)
    results = {}
    for label, loss_fn in {
        "train": build_loss("clip", rank=rank, world_size=world),  # what CLIPModule uses
        # negative control: local loss without gather-with-grad is known to give wrong gradients
        "no_grad_gather": ClipLoss(local_loss=True, gather_with_grad=False, rank=rank, world_size=world),
    }.items():
        model = torch.nn.parallel.DistributedDataParallel(_model())
        results[label] = _rank_result(model, contrastive_loss(model, images[mine], texts[mine], loss_fn), world)
    _save_and_close(rank, results, out)


def _rank_result(model: torch.nn.parallel.DistributedDataParallel, loss: torch.Tensor, world: int) -> dict:
    """Backward (DDP averages gradients over ranks); the loss averaged over ranks and the gradients."""
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": mean_loss / world, "grads": _grads(model.module)}


def _save_and_close(rank: int, results: dict, out: str) -> None:
    """Rank 0 saves the results for the test process; every rank leaves the group."""
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


def test_two_ranks_match_one_process_with_double_batch(tmp_path):
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_rank_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=False)

    model = _model()
    images, texts = _data(2 * B)
    loss = contrastive_loss(model, images, texts, build_loss("clip"))
    loss.backward()
    ref = _grads(model)

    assert ddp["train"]["loss"].item() == pytest.approx(loss.item(), abs=1e-5)
    assert set(ddp["train"]["grads"]) == set(ref)
    for name, g in ref.items():
        torch.testing.assert_close(ddp["train"]["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # the control must differ, otherwise this test could not catch a wrong construction
    worst = max((ddp["no_grad_gather"]["grads"][n] - g).abs().max().item() for n, g in ref.items())
    assert worst > 1e-4


@pytest.mark.slow
def test_cli_fit_two_cpu_processes(tmp_path):
    from conftest import write_shards

    write_shards(tmp_path / "shards", n_shards=2, per_shard=40)
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "train", "fit", "--config", "quickstart.yaml",
        "--model.model_name=clip-micro", "--data.synthetic=null",
        f"--data.train_shards={tmp_path}/shards/{{00000..00001}}.tar", "--data.batch_size=8", "--data.num_workers=1",
        "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", f"--run.root={tmp_path}/runs", "--run.name=ddp",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "ddp"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    with open(run / "metrics.csv") as f:
        seen = {int(r["step"]): float(r["samples_seen"]) for r in csv.DictReader(f) if r.get("samples_seen")}
    assert seen[3] == 3 * 8 * 2  # global_step x per-device batch x world size, the row of step 3
