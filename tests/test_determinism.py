"""Same config + same seed → the same run, to the bit, on CPU; one seed drives model, data and draws."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from test_train_fit import fit_args
from train.cli import main
from train.data import WebDataModule

FAST = ("--model.warmup_steps=2", "--model.total_steps=12", "--run.checkpoint_every_n_steps=3")


def losses(run: Path) -> dict[int, str]:
    """``train/loss`` per step as written (strings: compared exactly, not to a tolerance)."""
    with open(run / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def bias_records(run: Path) -> list[dict]:
    out = []
    for line in (run / "bias.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for key in ("time", "wall_time", "timestamp", "seconds", "elapsed_s", "eval_seconds"):
            rec.pop(key, None)
        out.append(rec)
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_same_seed_same_losses(tmp_path, tiny_shards, workers):
    for name in ("a", "b"):
        main(fit_args(tiny_shards, tmp_path, name, "--trainer.max_steps=10", f"--data.num_workers={workers}",
                      "--trainer.callbacks=[]", *FAST))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == list(range(1, 11)) and a == b  # rows by global step: 1..10


def test_same_seed_same_bias_records(tmp_path, tiny_shards):
    from data_prep.comco import write_eval_set

    eval_dir = tmp_path / "comco"
    write_eval_set(eval_dir, image_size=32, n_objects=(2,), progress=False)
    cb = ('--trainer.callbacks=[{"class_path": "eval.callback.BiasEvalCallback", "init_args": {"probes": ["tor", "itm"], '
          f'"n_objects": [2], "items_per_probe": 8, "every_n_steps": 2, "evaluations_per_run": null, "data_dir": "{eval_dir}", "plots": false}}}}]')
    for name in ("a", "b"):
        main(fit_args(tiny_shards, tmp_path, name, "--trainer.max_steps=4", cb, *FAST))
    a, b = bias_records(tmp_path / "a"), bias_records(tmp_path / "b")
    assert len(a) >= 2 and a == b
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def first_batch(tiny_shards, seed: int | None) -> torch.Tensor:
    def preprocess(image):
        return torch.tensor(list(image.convert("L").resize((8, 8)).getdata()), dtype=torch.float32)

    def tokenizer(captions):
        return torch.tensor([[ord(c) for c in cap[:16].ljust(16)] for cap in captions])

    dm = WebDataModule(train_shards=tiny_shards, batch_size=8, num_workers=0, shuffle_buffer=32,
                       samples_per_epoch=128, seed=seed)
    dm.set_model_transforms(preprocess, preprocess, tokenizer)
    images, tokens, _ = next(iter(dm.train_dataloader()))
    return torch.cat([images.flatten(), tokens.flatten().float()])


def test_data_seed_sets_first_batch(tiny_shards):
    assert torch.equal(first_batch(tiny_shards, 1), first_batch(tiny_shards, 1))
    assert not torch.equal(first_batch(tiny_shards, 1), first_batch(tiny_shards, 2))


def test_seed_everything_drives_data_seed(tmp_path, tiny_shards):
    """data.seed unset: seed_everything's seed, written into config.yaml; the first loss follows the seed."""
    for name, seed in (("s0", 0), ("s0b", 0), ("s1", 1)):
        cli = main(fit_args(tiny_shards, tmp_path, name, "--trainer.max_steps=1", f"--seed_everything={seed}",
                            "--trainer.callbacks=[]", *FAST))
        assert cli.datamodule.seed == seed
        assert f"seed: {seed}" in (tmp_path / name / "config.yaml").read_text().split("data:")[1]
    assert losses(tmp_path / "s0") == losses(tmp_path / "s0b")
    assert losses(tmp_path / "s0")[1] != losses(tmp_path / "s1")[1]
    # set apart on purpose: an explicit data.seed wins over seed_everything
    cli = main(fit_args(tiny_shards, tmp_path, "apart", "--trainer.max_steps=1", "--seed_everything=0",
                        "--data.seed=7", "--trainer.callbacks=[]", *FAST))
    assert cli.datamodule.seed == 7
