"""Fault matrix for the run lifecycle (issue 8, items 1, 2, 6): one run per directory, the run lock,
plain run names, atomic checkpoints under kill -9 and a full disk, unreadable ``last.ckpt``, and
config errors as one line. Each test drives the real CLI (or the real checkpoint writer) on tiny data
and asserts both the message and that nothing was lost."""
from __future__ import annotations

import builtins
import errno
import fcntl
import functools
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from train.cli import main
from train.module import CLIPModule


def fit_args(shards: list[str], root: Path, name: str, *extra: str) -> list[str]:
    return [
        "fit", "--config", "quickstart.yaml",
        "--model.model_name=clip-micro", "--model.warmup_steps=1",
        "--data.synthetic=null", f"--data.train_shards={shards[0]}", "--data.batch_size=8",
        "--data.num_workers=0", "--data.shuffle_buffer=16",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1", "--trainer.callbacks=[]",
        f"--run.root={root}", f"--run.name={name}", "--run.wandb_mode=disabled",
        *extra,
    ]


def snapshot(run: Path) -> dict[str, str]:
    """Every file of a run (but the lock) with its content hash."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != "run.lock"}


def forbid_model_build(monkeypatch) -> None:
    """Refusals must come before the model is built (ViT-B-32 takes ~17 s): building one fails the test.
    The signature stays, so the CLI still parses the model's arguments."""
    real = CLIPModule.__init__

    @functools.wraps(real)
    def refuse(self, *args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(CLIPModule, "__init__", refuse)

def refused_before_model_build(monkeypatch, args: list[str], error: str) -> str:
    """Run ``main(args)`` expecting the refusal ``error`` (exception class name) before any model is
    built; return its message."""
    with monkeypatch.context() as m:
        forbid_model_build(m)
        with pytest.raises(Exception) as exc:
            main(args)
    msg = str(exc.value)
    assert type(exc.value).__name__ == error, msg
    return msg


@pytest.fixture
def no_model_build(monkeypatch):
    forbid_model_build(monkeypatch)


@pytest.fixture
def other_fs_root(tmp_path, monkeypatch):
    """A run root on another filesystem than $TMPDIR (here a disk folder) where the machine allows:
    /dev/shm is tmpfs. Where it does not, the root is under tmp_path."""
    disk_tmp = tmp_path / "tmpdir"
    disk_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(disk_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(disk_tmp))
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != disk_tmp.stat().st_dev:
        root = Path(tempfile.mkdtemp(prefix="clip-bias-lab-test-", dir=shm))
        yield root
        shutil.rmtree(root, ignore_errors=True)
    else:
        yield tmp_path / "runs"


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# ---------------------------------------------------------------- one run, one directory

def test_reusing_a_run_name_is_refused_before_any_work_and_old_run_untouched(
    tmp_path, tiny_shards, monkeypatch
):
    main(fit_args(tiny_shards, tmp_path, "r", "--trainer.max_steps=1"))
    run = tmp_path / "r"
    before = snapshot(run)
    assert "checkpoints/last.ckpt" in before and "metrics.csv" in before and "config.yaml" in before

    msg = refused_before_model_build(
        monkeypatch, fit_args(tiny_shards, tmp_path, "r", "--trainer.max_steps=2"), "RunDirError")
    assert f"{run} already holds a run" in msg
    for way in ("--ckpt_path last", "--run.name NEW_NAME", "--run.overwrite true", "nothing is deleted"):
        assert way in msg, way
    assert snapshot(run) == before, "the refused fit changed the old run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "shards"], "nothing written beside the run"

    # validate is not a new run: not refused, and it leaves the fit's record (config.yaml, old rows) alone
    main(["validate", *fit_args(tiny_shards, tmp_path, "r", "--ckpt_path=last",
                                f"--data.val_shards={tiny_shards[1]}", "--trainer.limit_val_batches=1")[1:]])
    after = snapshot(run)
    assert after["config.yaml"] == before["config.yaml"]
    assert after["checkpoints/last.ckpt"] == before["checkpoints/last.ckpt"]
    old_rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert len(old_rows) >= 2  # header + the fit's row survive


def test_overwrite_moves_the_old_run_aside_and_deletes_nothing(tmp_path, tiny_shards, capsys):
    main(fit_args(tiny_shards, tmp_path, "o", "--trainer.max_steps=1"))
    before = snapshot(tmp_path / "o")

    with pytest.raises(Exception, match="pass one of them"):  # overwrite and resume contradict each other
        main(fit_args(tiny_shards, tmp_path, "o", "--run.overwrite=true", "--ckpt_path=last"))
    assert snapshot(tmp_path / "o") == before

    capsys.readouterr()
    cli = main(fit_args(tiny_shards, tmp_path, "o", "--trainer.max_steps=2", "--run.overwrite=true"))
    asides = sorted(tmp_path.glob("o.old-*"))
    assert len(asides) == 1, sorted(p.name for p in tmp_path.iterdir())
    assert snapshot(asides[0]) == before, "the old run must be moved whole, byte for byte"
    err = capsys.readouterr().err
    assert f"moved the old run {tmp_path / 'o'} aside to {asides[0]}" in err
    assert cli.trainer.global_step == 2
    new = torch.load(tmp_path / "o/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    old = torch.load(asides[0] / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert (new["global_step"], old["global_step"]) == (2, 1)
    assert "version_" not in " ".join(p.name for p in (tmp_path / "o").iterdir())


def test_second_concurrent_fit_is_refused_naming_the_holder(tmp_path, tiny_shards, monkeypatch):
    run = tmp_path / "c"
    run.mkdir()
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:  # a first fit: holds <run>/run.lock with its pid, as long as it lives
        try:
            fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"pid {os.getpid()}\nhost test\nstarted now\n".encode())
            os.write(ready_w, b"1")
            time.sleep(120)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        msg = refused_before_model_build(
            monkeypatch, fit_args(tiny_shards, tmp_path, "c", "--trainer.max_steps=1"), "RunLockedError")
        assert f"{run} is in use by another fit (pid {holder} on test" in msg and "--run.name" in msg
        assert sorted(p.name for p in run.iterdir()) == ["run.lock"], "the refused fit wrote into the run"
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        os.close(ready_r)
    # the holder died (kill -9): the kernel dropped its lock, so its lock file blocks nothing
    cli = main(fit_args(tiny_shards, tmp_path, "c", "--trainer.max_steps=1"))
    assert cli.trainer.global_step == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert f"pid {os.getpid()}" in (run / "run.lock").read_text()


@pytest.mark.parametrize("name", ["..", ".", "a/b"])
def test_run_name_must_be_a_plain_name(tmp_path, tiny_shards, no_model_build, name):
    root = tmp_path / "runs"
    with pytest.raises(Exception, match=r"run\.name must be a plain directory name .*got '") as exc:
        main(fit_args(tiny_shards, root, name, "--trainer.max_steps=1"))
    assert "\n" not in str(exc.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"], "nothing may be written anywhere"


def test_run_root_that_cannot_hold_runs_is_refused_before_any_work(tmp_path, tiny_shards, no_model_build):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the run root's parent should be")
    with pytest.raises(Exception, match=r"run\.root .*cannot create the run directory .*not a directory"):
        main(fit_args(tiny_shards, blocker / "runs", "x", "--trainer.max_steps=1"))
    assert blocker.read_text().startswith("a file")


# ---------------------------------------------------------------- atomic checkpoints

def test_kill_9_during_checkpoint_saves_always_leaves_a_loadable_last_ckpt(other_fs_root, tmp_path):
    from train.run_dir import AtomicCheckpointIO, clean_stale_temps

    ckpt_dir = other_fs_root / "k" / "checkpoints"
    payload = torch.arange(3_000_000, dtype=torch.float32)  # 12 MB: a save takes long enough to be hit
    checkpoint_io = AtomicCheckpointIO()  # what ClipCLI gives the Trainer
    rng = random.Random(8)
    killed: list[int] = []
    for attempt in range(5):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: saves last.ckpt and rotating step checkpoints as fast as it can
            try:
                os.close(ready_r)
                step = 0
                while True:
                    step += 1
                    ckpt = {"state_dict": {"w": payload}, "global_step": step, "attempt": attempt}
                    checkpoint_io.save_checkpoint(ckpt, ckpt_dir / f"step{step % 3:07d}.ckpt")
                    checkpoint_io.save_checkpoint(ckpt, ckpt_dir / "last.ckpt")
                    if step == 1:
                        os.write(ready_w, b"1")
            finally:
                os._exit(0)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed.append(pid)

        last = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
        assert last["attempt"] == attempt and torch.equal(last["state_dict"]["w"], payload)
        for p in ckpt_dir.iterdir():
            if p.suffix == ".ckpt":  # every file under a checkpoint name is whole
                assert torch.equal(torch.load(p, map_location="cpu", weights_only=False)["state_dict"]["w"], payload)
            else:  # a save cut short: only ever a hidden temp file of a killed writer
                assert p.name.startswith(".") and int(p.name.rsplit(".tmp-", 1)[1]) in killed, p.name
        assert not any(Path(os.environ["TMPDIR"]).iterdir()), "nothing may be left in $TMPDIR"
    temps = {p for p in ckpt_dir.iterdir() if p.suffix != ".ckpt"}
    assert set(clean_stale_temps(ckpt_dir)) == temps  # what the next fit does when it takes the run
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt", *(f"step{i:07d}.ckpt" for i in range(3))]


class _FullDisk:
    """A file on a full disk: half of each write lands, then ENOSPC."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(bytes(data)[: max(1, len(data) // 2)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_during_save_keeps_previous_checkpoint_and_leaves_no_temp(
    other_fs_root, tiny_shards, monkeypatch
):
    main(fit_args(tiny_shards, other_fs_root, "full", "--trainer.max_steps=2", "--run.checkpoint_every_n_steps=1"))
    ckpt_dir = other_fs_root / "full" / "checkpoints"
    before = snapshot(ckpt_dir)
    assert sorted(before) == ["last.ckpt", "step0000001.ckpt", "step0000002.ckpt"]

    # From now on the filesystem holding the run directory is full: every write there fails midway.
    real_open, real_sendfile = builtins.open, os.sendfile

    def on_run_fs(target) -> bool:
        return str(ckpt_dir) in os.path.abspath(str(target))

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        return _FullDisk(f) if writing and isinstance(file, (str, os.PathLike)) and on_run_fs(file) else f

    def full_sendfile(out_fd, in_fd, offset, count):
        if on_run_fs(os.readlink(f"/proc/self/fd/{out_fd}")):
            real_sendfile(out_fd, in_fd, offset, max(1, count // 2))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_sendfile(out_fd, in_fd, offset, count)

    with monkeypatch.context() as m, pytest.raises(Exception) as exc:
        m.setattr(builtins, "open", full_open)
        m.setattr(os, "sendfile", full_sendfile)
        main(fit_args(tiny_shards, other_fs_root, "full", "--trainer.max_steps=4",
                      "--run.checkpoint_every_n_steps=1", "--ckpt_path=last"))
    chain, e = [], exc.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) for e in chain), chain
    assert type(exc.value).__name__ == "CheckpointWriteError", chain  # one line from the shell, the chain kept
    assert "is full" in str(exc.value) and "--ckpt_path last" in str(exc.value)

    assert snapshot(ckpt_dir) == before, "no partial checkpoint and no temp file may be left"
    assert sorted(os.listdir(ckpt_dir)) == sorted(before)
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert not any(Path(os.environ["TMPDIR"]).iterdir())


def test_unreadable_last_ckpt_names_the_newest_readable_step_checkpoint(tmp_path, tiny_shards, monkeypatch):
    main(fit_args(tiny_shards, tmp_path, "u", "--trainer.max_steps=2", "--run.checkpoint_every_n_steps=1"))
    ckpt_dir = tmp_path / "u" / "checkpoints"
    for name, keep in (("last.ckpt", 0.5), ("step0000002.ckpt", 0.1)):  # torn writes, as an old Lightning left
        data = (ckpt_dir / name).read_bytes()
        (ckpt_dir / name).write_bytes(data[: int(len(data) * keep)])
    step1 = ckpt_dir / "step0000001.ckpt"
    intact = step1.read_bytes()

    msg = refused_before_model_build(
        monkeypatch, fit_args(tiny_shards, tmp_path, "u", "--trainer.max_steps=3", "--ckpt_path=last"), "RunDirError")
    assert f"--ckpt_path last: {ckpt_dir / 'last.ckpt'} is unreadable (" in msg
    assert f"The newest readable checkpoint is {step1} (global step 1): pass --ckpt_path {step1}" in msg
    assert step1.read_bytes() == intact

    # following the advice works, and the next start clears temp files a killed writer left behind
    stale = ckpt_dir / f".last.ckpt.tmp-{_dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    cli = main(fit_args(tiny_shards, tmp_path, "u", "--trainer.max_steps=2", f"--ckpt_path={step1}"))
    assert cli.trainer.global_step == 2
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 2
    assert not stale.exists()


# ---------------------------------------------------------------- config errors as one line

def test_callback_bad_argument_is_one_readable_error_line(tmp_path, tiny_shards, monkeypatch, capsys):
    argv = fit_args(tiny_shards, tmp_path, "cb", "--trainer.max_steps=1")
    argv = [a for a in argv if not a.startswith("--trainer.callbacks")]
    argv.append('--trainer.callbacks=[{"class_path": "eval.callback.BiasEvalCallback", '
                '"init_args": {"every_n_steps": 0}}]')
    monkeypatch.setattr(sys, "argv", ["python -m train", *argv])  # as typed in a shell
    monkeypatch.delenv("CLIP_BIAS_LAB_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "usage:" not in err and "Union" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.strip().splitlines()) <= 3, err
    assert errors[0].startswith("error: trainer.callbacks[0] (eval.callback.BiasEvalCallback): ")
    assert "every_n_steps" in errors[0] and "got 0" in errors[0]
    assert not (tmp_path / "cb").exists()


def test_checkpoint_of_another_run_is_not_resumed_into_an_existing_run(tmp_path, tiny_shards):
    """--ckpt_path from run b into run a (which holds a run) would append b's history to a's files."""
    from test_train_fit import fit_args

    from train.cli import main
    from train.run_dir import RunDirError

    fast = ("--trainer.callbacks=[]", "--trainer.max_steps=1", "--run.checkpoint_every_n_steps=1",
            "--trainer.limit_val_batches=0")
    main(fit_args(tiny_shards, tmp_path, "a", *fast))
    main(fit_args(tiny_shards, tmp_path, "b", *fast))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "a").rglob("*") if p.is_file())
    with pytest.raises(RunDirError, match="is not a checkpoint of .*would mix two runs"):
        main(fit_args(tiny_shards, tmp_path, "a", *fast, "--trainer.max_steps=2",
                      f"--ckpt_path={tmp_path / 'b/checkpoints/last.ckpt'}"))
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "a").rglob("*") if p.is_file()) == before
    # a fresh run may start from another run's checkpoint
    main(fit_args(tiny_shards, tmp_path, "c", *fast, "--trainer.max_steps=2",
                  f"--ckpt_path={tmp_path / 'b/checkpoints/last.ckpt'}"))


def test_stale_temp_with_this_process_pid_is_removed_at_start(tmp_path):
    """A container restarts its trainer under the same pid: that pid's old temp is a leftover."""
    import os

    from train.run_dir import TMP_MARK, clean_stale_temps

    own = tmp_path / f".last.ckpt{TMP_MARK}{os.getpid()}"
    own.write_bytes(b"partial")
    assert clean_stale_temps(tmp_path) == [own] and not own.exists()
