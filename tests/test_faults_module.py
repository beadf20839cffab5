"""Issue 8, LightningModule side: resume is exact or refuses, NaN skips cannot hide, bad model values
are refused up front. Real CLI (in-process) on tiny shards, clip-micro, a few steps each."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from test_train_fit import fit_args, read_metrics
from train.cli import main
from train.optim import warmup_cosine

# no bias callback (its evaluations cost more than the steps); a 6-step cosine with 2 warmup steps
FAST = ("--trainer.callbacks=[]", "--model.warmup_steps=2", "--model.total_steps=6", "--run.checkpoint_every_n_steps=3")


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a run dir and its content hash (the lock file only says who holds the dir)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "run.lock"}


def metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def lr_used():
    """The lr of every param group each time an optimizer actually steps, in order."""
    seen: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups])
    )
    yield seen
    handle.remove()


# ---------------------------------------------------------------- resume


def test_resume_applies_a_changed_peak_lr_from_the_resume_step(tmp_path, tiny_shards, lr_used, capsys):
    main(fit_args(tiny_shards, tmp_path, "lr", "--trainer.max_steps=3", "--model.lr=1e-3", *FAST))
    assert [round(g[0] / 1e-3, 6) for g in lr_used] == [round(warmup_cosine(s, 2, 6), 6) for s in range(3)]
    lr_used.clear()
    cli = main(fit_args(tiny_shards, tmp_path, "lr", "--trainer.max_steps=6", "--ckpt_path=last", "--model.lr=1e-2",
                        *FAST))
    want = [1e-2 * warmup_cosine(s, 2, 6) for s in range(3, 6)]
    assert len(lr_used) == 3
    for groups, lr in zip(lr_used, want):  # both param groups (decayed and exempt) use the new peak
        assert groups == pytest.approx([lr, lr], rel=1e-6)
    assert "applying changed model.lr 0.001 -> 0.01 from this step on" in capsys.readouterr().out
    logged = read_metrics(tmp_path / "lr/metrics.csv", "train/lr")
    # the row of step s is the update that made step s, which used the schedule at s - 1
    assert [logged[s + 1] for s in range(3, 6)] == pytest.approx(want, rel=1e-6)
    assert [logged[s + 1] for s in range(3)] == pytest.approx([1e-3 * warmup_cosine(s, 2, 6) for s in range(3)], rel=1e-6)
    assert cli.trainer.global_step == 6
    # config.yaml stays the config the run started with; the resume's config is kept beside it
    import yaml

    assert yaml.safe_load((tmp_path / "lr/config.yaml").read_text())["model"]["lr"] == 1e-3
    (resumed,) = (tmp_path / "lr").glob("config.resume-*.yaml")
    assert yaml.safe_load(resumed.read_text())["model"]["lr"] == 1e-2


def test_resume_with_changed_history_refuses_with_a_diff_and_changes_nothing(tmp_path, tiny_shards):
    main(fit_args(tiny_shards, tmp_path, "hist", "--trainer.max_steps=3", *FAST))
    run = tmp_path / "hist"
    before = snapshot(run)
    with pytest.raises(ValueError) as err:
        main(fit_args(tiny_shards, tmp_path, "hist", "--trainer.max_steps=6", "--ckpt_path=last", *FAST,
                      "--data.batch_size=8", "--model.warmup_steps=3", "--trainer.accumulate_grad_batches=2"))
    msg = str(err.value)
    for line in ("data.batch_size: checkpoint 16, now 8", "model.warmup_steps: checkpoint 2, now 3",
                 "trainer.accumulate_grad_batches: checkpoint 1, now 2"):
        assert line in msg, msg
    assert "another --run.name" in msg and "model.lr" not in msg
    after = snapshot(run)
    assert after == before  # config.yaml too: the CLI refuses in before_fit, before anything is written
    torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)  # still loadable


def test_early_history_check_needs_no_fit(tmp_path, tiny_shards):
    """What a CLI calls before ``trainer.fit``, so that a refused resume writes nothing at all."""
    import lightning as L

    from train.data import WebDataModule
    from train.module import CLIPModule
    from train.resume import ResumeMismatchError, refuse_changed_history

    main(fit_args(tiny_shards, tmp_path, "early", "--trainer.max_steps=1", *FAST))
    ckpt = str(tmp_path / "early/checkpoints/last.ckpt")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=6)
    same = CLIPModule(model_name="clip-micro", warmup_steps=2, total_steps=6, lr=5e-2)  # lr may change
    refuse_changed_history(ckpt, same, trainer, WebDataModule(train_shards=tiny_shards, batch_size=16))
    with pytest.raises(ResumeMismatchError, match=r"data\.batch_size: checkpoint 16, now 8"):
        refuse_changed_history(ckpt, same, trainer, WebDataModule(train_shards=tiny_shards, batch_size=8))
    siglip = CLIPModule(model_name="clip-micro", warmup_steps=2, total_steps=6, loss="siglip", min_lr_ratio=0.1)
    with pytest.raises(ResumeMismatchError) as err:
        refuse_changed_history(ckpt, siglip, trainer, WebDataModule(train_shards=tiny_shards, batch_size=16))
    assert "model.loss: checkpoint clip, now siglip" in str(err.value)
    assert "model.min_lr_ratio: checkpoint 0.0, now 0.1" in str(err.value)


def test_samples_seen_continues_from_the_checkpoint(tmp_path, tiny_shards):
    main(fit_args(tiny_shards, tmp_path, "seen", "--trainer.max_steps=3", *FAST))
    ckpt_dir = tmp_path / "seen/checkpoints"
    ckpt = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    record = ckpt["clip_bias_lab_run"]
    assert record["samples_seen"] == 48 and record["global_step"] == 3
    assert record["history"]["data.batch_size"] == 16
    # The stored count is the truth, whatever today's batch size would give: make it distinctive.
    record["samples_seen"] = 1000
    torch.save(ckpt, ckpt_dir / "edited.ckpt")
    cli = main(fit_args(tiny_shards, tmp_path, "seen", "--trainer.max_steps=5", f"--ckpt_path={ckpt_dir / 'edited.ckpt'}",
                        *FAST))
    seen = read_metrics(tmp_path / "seen/metrics.csv", "samples_seen")
    assert [seen[s] for s in range(1, 6)] == [16, 32, 48, 1016, 1032]
    assert cli.model.samples_seen == 1032
    again = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["clip_bias_lab_run"]
    assert again["samples_seen"] == 1032 and again["global_step"] == 5


def test_resume_with_longer_max_steps_keeps_the_schedule_of_the_run(tmp_path, tiny_shards, lr_used, capsys):
    """model.total_steps unset: the cosine length was resolved from max_steps=4 at the start and stays."""
    fast = ("--trainer.callbacks=[]", "--model.warmup_steps=1", "--run.checkpoint_every_n_steps=2", "--model.lr=1e-3",
            "--model.min_lr_ratio=0.1")
    main(fit_args(tiny_shards, tmp_path, "long", "--trainer.max_steps=2", *fast))
    lr_used.clear()
    main(fit_args(tiny_shards, tmp_path, "long", "--trainer.max_steps=6", "--ckpt_path=last", *fast))
    # steps 2..5 are past the 2-step schedule: min_lr_ratio x lr, not a cosine re-planned over 6 steps
    assert [g[0] for g in lr_used] == pytest.approx([1e-4] * 4, rel=1e-6)
    assert "trainer.max_steps=6 goes past the LR schedule, whose length (2 steps, warmup 1) was fixed when the run " \
           "started: steps 3..6 run at the stored schedule's LR 0.0001, not a new cosine." in capsys.readouterr().out


# ---------------------------------------------------------------- NaN


def _nan_on(monkeypatch, calls: set[int] | None = None, after: int | None = None) -> dict:
    import train.module as module
    from train.loss import contrastive_loss as real

    state = {"n": 0}

    def loss(*args, **kwargs):
        state["n"] += 1
        out = real(*args, **kwargs)
        bad = (calls and state["n"] in calls) or (after is not None and state["n"] > after)
        return out * float("nan") if bad else out

    monkeypatch.setattr(module, "contrastive_loss", loss)
    return state


def test_nan_skip_logs_skipped_steps_not_a_stale_loss(tmp_path, tiny_shards, monkeypatch, capsys):
    _nan_on(monkeypatch, calls={3, 4})  # the 3rd and 4th batches: the rows of steps 3 and 4
    main(fit_args(tiny_shards, tmp_path, "skip", "--trainer.max_steps=6", "--model.nan_policy=skip",
                  "--trainer.callbacks=[]"))
    rows = [r for r in metric_rows(tmp_path / "skip/metrics.csv") if r.get("samples_seen")]
    by_step = {int(r["step"]): r for r in rows}
    assert sorted(by_step) == list(range(1, 7))
    assert [by_step[s]["train/loss"] != "" for s in range(1, 7)] == [True, True, False, False, True, True]
    assert [float(by_step[s]["train/skipped_steps"]) for s in range(1, 7)] == [0, 0, 1, 2, 2, 2]
    assert "2 of 6 steps were skipped for a non-finite loss" in capsys.readouterr().out


def test_more_than_k_consecutive_skips_stop_the_run(tmp_path, tiny_shards, monkeypatch):
    state = _nan_on(monkeypatch, after=1)  # every step from global step 1 on
    # default model.max_consecutive_skips=3: steps 1, 2, 3 skipped, the 4th in a row stops the run
    with pytest.raises(FloatingPointError, match=r"Loss became nan at global step 4 \(batch 4\): a non-finite loss on 4 "
                       r"steps in a row, more than model\.max_consecutive_skips=3\. Lower model\.lr, raise "
                       r"model\.warmup_steps, enable trainer\.gradient_clip_val"):
        main(fit_args(tiny_shards, tmp_path, "dead", "--trainer.max_steps=12", "--model.nan_policy=skip",
                      "--trainer.callbacks=[]"))
    assert state["n"] == 5
    # K=0: the first non-finite loss stops the run, as nan_policy=raise does
    state = _nan_on(monkeypatch, calls={2})
    with pytest.raises(FloatingPointError, match=r"Loss became nan at global step 1 \(batch 1\): a non-finite loss on 1 "
                       r"step in a row, more than model\.max_consecutive_skips=0"):
        main(fit_args(tiny_shards, tmp_path, "dead0", "--trainer.max_steps=4", "--model.nan_policy=skip",
                      "--model.max_consecutive_skips=0", "--trainer.callbacks=[]"))


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize("arg, message", [
    ("--model.min_lr_ratio=-1", "model.min_lr_ratio must be in [0, 1], got -1"),
    ("--model.min_lr_ratio=1.5", "model.min_lr_ratio must be in [0, 1], got 1.5"),
    ("--model.weight_decay=-0.1", "model.weight_decay must be >= 0, got -0.1"),
    ("--model.betas=[0.9, 1.0]", "model.betas[1] must be in [0, 1), got 1"),
    ("--model.betas=[-0.1, 0.98]", "model.betas[0] must be in [0, 1), got -0.1"),
    ("--model.eps=0", "model.eps must be > 0, got 0"),
    ("--model.warmup_steps=-1", "model.warmup_steps must be an integer >= 0, got -1"),
    ("--model.total_steps=0", "model.total_steps must be an integer > 0"),
    ("--model.max_consecutive_skips=-1", "model.max_consecutive_skips must be an integer >= 0, got -1"),
])
def test_bad_model_value_is_refused_with_its_config_path(arg, message, tmp_path, tiny_shards):
    with pytest.raises(ValueError) as err:
        main(fit_args(tiny_shards, tmp_path, "bad", arg, "--trainer.callbacks=[]"))
    assert message in str(err.value)
    assert not (tmp_path / "bad").exists()  # refused before any work


def test_all_bad_model_values_in_one_error_before_the_model_is_built(monkeypatch):
    import train.module as module

    def never(*args, **kwargs):
        raise AssertionError("the model was built before the arguments were checked")

    monkeypatch.setattr(module, "build_model_and_transforms", never)
    with pytest.raises(ValueError) as err:
        module.CLIPModule(model_name="clip-micro", lr=-1.0, weight_decay=-1.0, betas=(0.9, 1.2), eps=0.0,
                          warmup_steps=10, total_steps=5, min_lr_ratio=2.0, max_consecutive_skips=-2)
    msg = str(err.value)
    for part in ("model.lr must be > 0, got -1", "model.weight_decay must be >= 0, got -1",
                 "model.betas[1] must be in [0, 1), got 1.2", "model.eps must be > 0, got 0",
                 "model.warmup_steps (10) must be <= model.total_steps (5)", "model.min_lr_ratio must be in [0, 1], got 2",
                 "model.max_consecutive_skips must be an integer >= 0, got -2"):
        assert part in msg, msg
    with pytest.raises(ValueError, match="model.lr must be > 0, got nan"):
        module.CLIPModule(model_name="clip-micro", lr=float("nan"))
    with pytest.raises(ValueError, match="model.model_name: Unknown model_name 'nope'"):
        module.CLIPModule(model_name="nope")
