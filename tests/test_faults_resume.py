"""Fault matrix, round two (issue 20): a branch never changes its parent, every ``--ckpt_path`` form
gets the same history check, one step convention, schedules that say what they do, and start-up
faults as one line that leave the run name usable. Each test drives the real CLI on tiny shards."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_faults_run import fit_args, refused_before_model_build, snapshot
from train.cli import ConfigError, main, resolve_config_args, without_worker_traceback
from train.resume import ResumeMismatchError
from train.optim import warmup_cosine
from train.run_dir import BRANCH_FILE, BRANCHES_FILE, RunDirError

REPO = Path(__file__).resolve().parent.parent
SCHEDULE = ("--model.warmup_steps=2", "--model.total_steps=12", "--run.checkpoint_every_n_steps=3")


def rows(run: Path, *keys: str) -> list[tuple]:
    """``(step, epoch, *keys)`` of every train row of ``run``'s metrics.csv, as written."""
    with open(run / "metrics.csv") as f:
        return [(r["step"], r["epoch"], *(r[k] for k in keys)) for r in csv.DictReader(f) if r.get("train/loss")]


# ---------------------------------------------------------------- branching


def test_resuming_an_older_checkpoint_in_place_is_refused_and_its_branch_leaves_the_parent_alone(
        tmp_path, tiny_shards, monkeypatch):
    main(fit_args(tiny_shards, tmp_path, "p", "--trainer.max_steps=6", "--run.checkpoint_every_n_steps=4"))
    parent = tmp_path / "p"
    before = snapshot(parent)
    step4 = parent / "checkpoints/step0000004.ckpt"
    msg = refused_before_model_build(monkeypatch, fit_args(tiny_shards, tmp_path, "p", "--trainer.max_steps=8",
                                                           f"--ckpt_path={step4}", "--data.seed=5"), "RunDirError")
    assert f"holds step 4, but {parent} trained on to step 6" in msg and "overwrite" in msg
    assert f"--run.name p-from-step4 --ckpt_path {step4}" in msg
    assert snapshot(parent) == before

    # the command the refusal names: a new run from step 4; the parent's files stay byte for byte
    cli = main(fit_args(tiny_shards, tmp_path, "p-from-step4", "--trainer.max_steps=8", f"--ckpt_path={step4}",
                        "--data.seed=5"))
    assert cli.trainer.global_step == 8
    after = snapshot(parent)
    assert {k: v for k, v in after.items() if k != BRANCHES_FILE} == before
    child = tmp_path / "p-from-step4"
    record = json.loads((child / BRANCH_FILE).read_text())
    assert record["global_step"] == 4 and record["parent_run"] == str(parent.resolve())
    assert record["checkpoint"] == str(step4.resolve())
    listed = json.loads((parent / BRANCHES_FILE).read_text())
    assert [(b["run"], b["global_step"]) for b in listed] == [(str(child.resolve()), 4)]
    assert [r[0] for r in rows(child)] == ["5", "6", "7", "8"]  # the child's own history only

    # the newest state itself may be resumed in place (nothing is lost)
    main(fit_args(tiny_shards, tmp_path, "p", "--trainer.max_steps=7", f"--ckpt_path={parent / 'checkpoints/last.ckpt'}"))
    assert [r[0] for r in rows(parent)] == ["1", "2", "3", "4", "5", "6", "7"]


# ---------------------------------------------------------------- one history check for every form


@pytest.mark.parametrize("form", ["last", "step file"])
def test_every_ckpt_path_form_refuses_a_changed_model_and_applies_a_changed_lr(tmp_path, tiny_shards, capsys, form):
    schedule = ("--model.total_steps=8", "--run.checkpoint_every_n_steps=4")
    main(fit_args(tiny_shards, tmp_path, "h", "--trainer.max_steps=4", *schedule))
    ckpt = "last" if form == "last" else str(tmp_path / "h/checkpoints/step0000004.ckpt")
    with pytest.raises(ResumeMismatchError, match="model.model_name: checkpoint clip-micro, now clip-tiny"):
        main(fit_args(tiny_shards, tmp_path, "h", "--trainer.max_steps=6", f"--ckpt_path={ckpt}",
                      "--model.model_name=clip-tiny"))
    capsys.readouterr()
    cli = main(fit_args(tiny_shards, tmp_path, "h", "--trainer.max_steps=6", f"--ckpt_path={ckpt}", "--model.lr=5e-4",
                        *schedule))
    out = capsys.readouterr().out
    assert "Resuming at step 4: applying changed model.lr 0.001 -> 0.0005 from this step on." in out
    lrs = {int(r[0]): float(r[2]) for r in rows(tmp_path / "h", "train/lr")}
    hp = cli.model.hparams
    assert hp.lr == 5e-4
    for step in (5, 6):  # the update making step s uses the schedule's multiplier at s - 1
        assert lrs[step] == pytest.approx(5e-4 * warmup_cosine(step - 1, hp.warmup_steps, 8, hp.min_lr_ratio), rel=1e-6)


# ---------------------------------------------------------------- steps and schedules


def test_extending_a_finished_run_twice_writes_the_rows_of_an_uninterrupted_run(tmp_path, tiny_shards):
    """Steps 1..12, epochs, losses, LR and samples_seen exactly as one 12-step run writes them
    (8 batches per epoch: the run crosses an epoch; extensions from the end-of-training checkpoint)."""
    keys = ("train/loss", "train/lr", "samples_seen")
    main(fit_args(tiny_shards, tmp_path, "whole", "--trainer.max_steps=12", *SCHEDULE))
    for end in (4, 10, 12):
        main(fit_args(tiny_shards, tmp_path, "cut", f"--trainer.max_steps={end}", *SCHEDULE,
                      *(["--ckpt_path=last"] if end > 4 else [])))
    whole, cut = rows(tmp_path / "whole", *keys), rows(tmp_path / "cut", *keys)
    assert [r[0] for r in whole] == [str(s) for s in range(1, 13)]
    assert [r[1] for r in whole] == ["0"] * 8 + ["1"] * 4
    assert [float(r[4]) for r in whole] == [8.0 * s for s in range(1, 13)]  # samples_seen = step x batch
    assert cut == whole


def test_validation_rows_carry_the_step_of_the_checkpoint_they_evaluate(tmp_path, tiny_shards):
    main(fit_args(tiny_shards, tmp_path, "v", "--trainer.max_steps=4", "--run.checkpoint_every_n_steps=2",
                  f"--data.val_shards={tiny_shards[1]}", "--trainer.limit_val_batches=1",
                  "--trainer.val_check_interval=2", "--trainer.check_val_every_n_epoch=null"))
    with open(tmp_path / "v/metrics.csv") as f:
        val_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("val/loss")]
    assert val_steps == [2, 4]
    assert sorted(p.name for p in (tmp_path / "v/checkpoints").glob("step*.ckpt")) == \
        ["step0000002.ckpt", "step0000004.ckpt"]


def test_going_past_the_stored_schedule_prints_the_lr_it_runs_at(tmp_path, tiny_shards, capsys):
    short = ("--model.warmup_steps=2", "--run.checkpoint_every_n_steps=100")
    main(fit_args(tiny_shards, tmp_path, "s", "--trainer.max_steps=4", *short))
    capsys.readouterr()
    main(fit_args(tiny_shards, tmp_path, "s", "--trainer.max_steps=6", "--ckpt_path=last", *short))
    out = capsys.readouterr().out
    assert "whose length (4 steps, warmup 2) was fixed when the run started: steps 5..6 run at the stored " \
           "schedule's LR 0, not a new cosine." in out
    assert [float(r[2]) for r in rows(tmp_path / "s", "train/lr")][4:] == [0.0, 0.0]

    # warmup longer than the run: the LR keeps rising past the schedule's length, and the line says so
    main(fit_args(tiny_shards, tmp_path, "w", "--trainer.max_steps=2", "--model.warmup_steps=4",
                  "--run.checkpoint_every_n_steps=100"))
    capsys.readouterr()
    main(fit_args(tiny_shards, tmp_path, "w", "--trainer.max_steps=3", "--model.warmup_steps=4", "--ckpt_path=last",
                  "--run.checkpoint_every_n_steps=100"))
    out = capsys.readouterr().out
    logged = [float(r[2]) for r in rows(tmp_path / "w", "train/lr")]
    assert logged == pytest.approx([0.25e-3, 0.5e-3, 0.75e-3])
    assert "steps 3..3 run at the stored schedule's LR 0.00075" in out


def test_warmup_longer_than_the_run_is_warned_with_the_numbers(tmp_path, tiny_shards, monkeypatch, capsys):
    main(fit_args(tiny_shards, tmp_path, "wu", "--trainer.max_steps=2", "--model.warmup_steps=30"))
    err = capsys.readouterr().err
    assert "warning: model.warmup_steps=30 > trainer.max_steps=2: the LR rises for the whole run and never " \
           "reaches model.lr (it ends at 2/30 x model.lr = 6.66667e-05)" in err


@pytest.mark.parametrize("steps,expected", [
    ("0", "trainer.max_steps=0 trains nothing"),
    ("-3", "trainer.max_steps=-3 trains nothing"),
    ("-1", "trainer.max_steps=-1 sets no step limit and trainer.max_epochs=-1 none either"),
])
def test_a_step_limit_that_trains_nothing_or_has_no_length_is_refused(tmp_path, tiny_shards, monkeypatch, steps,
                                                                      expected):
    msg = refused_before_model_build(monkeypatch, fit_args(tiny_shards, tmp_path, "n", f"--trainer.max_steps={steps}"),
                                     "ConfigError")
    assert expected in msg
    assert not (tmp_path / "n").exists()


def test_resuming_a_run_that_does_not_exist_is_refused_naming_the_runs_that_do(tmp_path, tiny_shards, monkeypatch):
    main(fit_args(tiny_shards, tmp_path, "real", "--trainer.max_steps=1"))
    msg = refused_before_model_build(monkeypatch, fit_args(tiny_shards, tmp_path, "typo", "--trainer.max_steps=2",
                                                           "--ckpt_path=last"), "RunDirError")
    assert "there is no run 'typo' to resume" in msg and "can resume: real." in msg and "leave out --ckpt_path" in msg
    assert not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- start-up faults: one line, the name stays usable


def test_a_run_that_died_before_its_first_step_can_be_started_again_under_its_name(tmp_path, tiny_shards, capsys):
    from train.data_samples import NoUsableSamplesError

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.tar").write_bytes(b"\x13" * 5000)  # not a tar
    (bad / "sizes.json").write_text('{"00000.tar": 64}')
    args = ("--trainer.max_steps=2", "--data.max_bad_shards=3")
    with pytest.raises(NoUsableSamplesError):
        main(fit_args([str(bad / "00000.tar")], tmp_path, "d", *args))
    assert (tmp_path / "d/config.yaml").exists() and not list((tmp_path / "d").glob("checkpoints/*.ckpt"))
    with pytest.raises(RunDirError, match="holds no checkpoint: an earlier start stopped before its first step"):
        main(fit_args(tiny_shards, tmp_path, "d", *args, "--ckpt_path=last"))
    capsys.readouterr()
    cli = main(fit_args(tiny_shards, tmp_path, "d", *args))  # no --run.overwrite needed
    assert cli.trainer.global_step == 2
    assert "holds only the files of an earlier start that stopped before its first step" in capsys.readouterr().err
    assert [r[0] for r in rows(tmp_path / "d")] == ["1", "2"]


def test_data_and_device_faults_are_refused_before_the_model_is_built(tmp_path, tiny_shards, monkeypatch):
    nosizes = tmp_path / "nosizes"
    nosizes.mkdir()
    (nosizes / "00000.tar").write_bytes(Path(tiny_shards[0]).read_bytes())
    cases = [
        (["--data.batch_size=100"], "data.batch_size=100: one batch (100 x 1 rank(s)) is more than the 64 samples "
                                    "of data.train_shards; lower data.batch_size to at most 64"),
        ([f"--data.train_shards={nosizes / '00000.tar'}"], "cannot count the training samples (no sizes.json"),
        ([f"--data.train_shards=pipe:cat {tiny_shards[0]}"], "(1 of 1 shards are pipe: or remote URLs)"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--trainer.accelerator=gpu"], "trainer.accelerator=gpu: this machine has no usable CUDA GPU"))
    for extra, expected in cases:
        args = fit_args(tiny_shards, tmp_path, "f", "--trainer.max_steps=2")
        args = [a for a in args if not any(a.startswith(e.split("=")[0] + "=") for e in extra)] + extra
        msg = refused_before_model_build(monkeypatch, args, "ConfigError")
        assert expected in msg, msg
        assert not (tmp_path / "f").exists()


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=rf"--config {bad}: line 3, column 1: not valid YAML"):
        resolve_config_args(["fit", "--config", str(bad)])


def test_a_worker_error_is_shown_without_the_worker_traceback():
    from torch._utils import ExceptionWrapper

    from train.data_samples import NoUsableSamplesError

    try:
        raise NoUsableSamplesError("No usable training sample: check data.train_shards")
    except NoUsableSamplesError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(NoUsableSamplesError) as err:
        wrapped.reraise()
    assert "Original Traceback" in str(err.value)
    assert without_worker_traceback(err.value) == "No usable training sample: check data.train_shards"


def test_the_shell_sees_one_line_for_a_worker_data_error(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "00000.tar").write_bytes(b"\x13" * 5000)
    (bad / "sizes.json").write_text('{"00000.tar": 64}')
    args = fit_args([str(bad / "00000.tar")], tmp_path, "w", "--trainer.max_steps=2", "--data.num_workers=1",
                    "--data.max_bad_shards=3")
    proc = subprocess.run([sys.executable, "-m", "train", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "No usable training sample" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and "Original Traceback" not in proc.stderr
