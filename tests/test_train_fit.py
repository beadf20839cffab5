"""End-to-end training through the real CLI (in-process) on tiny shards written by the test."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import open_clip
import pytest
import torch

from train.cli import main
from train.export import export_checkpoint
from train.models import register_model_configs


def fit_args(shards: list[str], root: Path, name: str, *extra: str) -> list[str]:
    pattern = str(Path(shards[0]).parent / ("{00000..%05d}.tar" % (len(shards) - 1)))
    return [
        "fit", "--config", "quickstart.yaml",
        "--model.model_name=clip-micro", "--model.warmup_steps=2",
        "--data.synthetic=null", f"--data.train_shards={pattern}", "--data.batch_size=16",
        "--data.num_workers=0", "--data.shuffle_buffer=32",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1",
        f"--run.root={root}", f"--run.name={name}", "--run.wandb_mode=disabled",
        *extra,
    ]


def read_metrics(path: Path, key: str) -> dict[int, float]:
    with open(path) as f:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}


def test_one_step_fit_writes_run_dir(tmp_path, tiny_shards):
    cli = main(fit_args(tiny_shards, tmp_path, "one", "--trainer.max_steps=1", "--run.checkpoint_every_n_steps=1",
                   "--trainer.val_check_interval=1", "--trainer.check_val_every_n_epoch=null",
                   f"--data.val_shards={tiny_shards[1]}"))
    run = tmp_path / "one"
    assert cli.trainer.global_step == 1 and cli.model.samples_seen == 16
    for rel in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/step0000001.ckpt"):
        assert (run / rel).is_file(), rel
    assert "name: one" in (run / "config.yaml").read_text()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "train/lr", "train/logit_scale", "samples_seen", "val/i2t_R@1", "val/t2i_R@10"):
        assert key in header, key
    assert read_metrics(run / "metrics.csv", "samples_seen")[1] == 16  # rows by global step
    # ClipLoss over a batch of 16 random pairs starts near ln(16)
    assert abs(read_metrics(run / "metrics.csv", "train/loss")[1] - math.log(16)) < 0.5


def test_loss_falls_over_50_steps(tmp_path, tiny_shards):
    torch.set_num_threads(1)
    main(fit_args(tiny_shards, tmp_path, "fall", "--trainer.max_steps=50", "--model.lr=2e-3",
                  "--run.checkpoint_every_n_steps=1000"))
    loss = read_metrics(tmp_path / "fall" / "metrics.csv", "train/loss")
    first = sum(loss[s] for s in range(1, 6)) / 5
    last = sum(loss[s] for s in range(46, 51)) / 5
    assert last < 0.75 * first, (first, last)
    sps = read_metrics(tmp_path / "fall" / "metrics.csv", "train/samples_per_sec")
    assert len(sps) >= 40 and all(v > 0 for v in sps.values())


def test_resume_continues_at_same_step_lr_and_samples(tmp_path, tiny_shards):
    common = ("--model.total_steps=6", "--model.warmup_steps=2", "--run.checkpoint_every_n_steps=3")
    straight = main(fit_args(tiny_shards, tmp_path, "straight", "--trainer.max_steps=6", *common))
    main(fit_args(tiny_shards, tmp_path, "resumed", "--trainer.max_steps=3", *common))
    ckpt = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    resumed = main(fit_args(tiny_shards, tmp_path, "resumed", "--trainer.max_steps=6", "--ckpt_path=last", *common))
    assert resumed.trainer.global_step == straight.trainer.global_step == 6
    assert resumed.model.samples_seen == straight.model.samples_seen == 96
    lr_a = read_metrics(tmp_path / "straight/metrics.csv", "train/lr")
    lr_b = read_metrics(tmp_path / "resumed/metrics.csv", "train/lr")
    assert sorted(lr_b) == sorted(lr_a) == list(range(1, 7))  # resumed run logged steps 4..6 after 1..3
    for step in range(1, 7):
        assert lr_b[step] == pytest.approx(lr_a[step], rel=1e-9)
    final_a = straight.trainer.optimizers[0].param_groups[0]["lr"]
    final_b = resumed.trainer.optimizers[0].param_groups[0]["lr"]
    assert final_b == pytest.approx(final_a, rel=1e-12)


def test_checkpoint_exports_to_plain_open_clip(tmp_path, tiny_shards):
    cli = main(fit_args(tiny_shards, tmp_path, "exp", "--trainer.max_steps=2"))
    model_name, out = export_checkpoint(tmp_path / "exp/checkpoints/last.ckpt", tmp_path / "export/model.pt")
    assert model_name == "clip-micro"
    register_model_configs()
    plain = open_clip.create_model(model_name, pretrained=str(out)).eval()
    trained = cli.model.model.eval()
    images = torch.randn(3, 3, 32, 32)
    texts = open_clip.get_tokenizer(model_name)(["a red dot", "a blue bar", "a white square"])
    with torch.no_grad():
        want_i, want_t = trained.encode_image(images), trained.encode_text(texts)
        assert torch.equal(plain.encode_image(images), want_i)
        assert torch.equal(plain.encode_text(texts), want_t)
        fresh = open_clip.create_model(model_name).eval()
        assert not torch.allclose(fresh.encode_image(images), want_i)
    cfg = json.loads(out.with_name("clip-micro.json").read_text())
    assert cfg["vision_cfg"]["image_size"] == 32
    # plain open_clip, without this package's registry: the exported JSON is all it needs
    import subprocess
    import sys

    code = ("import open_clip, torch; torch.manual_seed(0); "
            f"open_clip.add_model_config({str(out.with_name('clip-micro.json'))!r}); "
            f"m = open_clip.create_model('clip-micro', pretrained={str(out)!r}).eval(); "
            "t = open_clip.get_tokenizer('clip-micro')(['a red dot']); "
            "print(float(m.encode_text(t).double().sum()))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert got.returncode == 0, got.stderr[-1500:]
    with torch.no_grad():
        want = float(trained.encode_text(open_clip.get_tokenizer(model_name)(["a red dot"])).double().sum())
    assert float(got.stdout.strip().splitlines()[-1]) == pytest.approx(want, abs=1e-4)


def test_nan_loss_stops_with_step_or_skips(tmp_path, tiny_shards, monkeypatch):
    import train.module as module

    real = module.contrastive_loss
    calls = {"n": 0}

    def nan_on_third(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(module, "contrastive_loss", nan_on_third)
    with pytest.raises(FloatingPointError, match="at global step 2 .*nan_policy=skip"):
        main(fit_args(tiny_shards, tmp_path, "nan", "--trainer.max_steps=4"))
    calls["n"] = 0
    cli = main(fit_args(tiny_shards, tmp_path, "nanskip", "--trainer.max_steps=4", "--model.nan_policy=skip"))
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    assert calls["n"] >= 4


def test_sample_transforms_from_config_run_and_are_counted(tmp_path, tiny_shards):
    cli = main(fit_args(tiny_shards, tmp_path, "tf", "--trainer.max_steps=2",
                        '--data.sample_transforms=[{"class_path": "conftest.UpperCaption"}]'))
    assert type(cli.datamodule.sample_transforms[0]).__name__ == "UpperCaption"
    applied = read_metrics(tmp_path / "tf" / "metrics.csv", "data/UpperCaption/applied")
    assert applied[2] >= 32  # by step 2, two batches of 16 went through the transform


def test_logit_scale_clamped_to_ln100_after_the_optimizer_step(tmp_path, tiny_shards):
    import lightning as L

    from train.data import WebDataModule
    from train.module import CLIPModule

    module = CLIPModule(model_name="clip-micro", lr=1e-3, warmup_steps=1, total_steps=2)
    with torch.no_grad():
        module.model.logit_scale.fill_(6.0)  # exp(6) = 403 > 100
    dm = WebDataModule(train_shards=tiny_shards, batch_size=16, num_workers=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    assert module.model.logit_scale.item() == pytest.approx(math.log(100), abs=1e-6)
    # AdamW moves a parameter by about lr per step, so without the clamp it would still be ~6
