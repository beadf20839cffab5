"""Interrupt at step k, resume: the same losses as the uninterrupted run (exactly, as written to
metrics.csv); last.ckpt holds the final step; a finished run is not trained again."""
from __future__ import annotations

import pytest
import torch

from test_determinism import FAST, losses
from test_train_fit import fit_args
from train.cli import main


@pytest.mark.parametrize("workers,k", [(0, 5), (1, 4)])
def test_resume_reproduces_uninterrupted_run(tmp_path, tiny_shards, workers, k):
    # 128 samples / batch 16 = 8 batches per epoch: 12 steps cross an epoch; k=5 is between checkpoints (3, 6)
    args = ("--trainer.callbacks=[]", f"--data.num_workers={workers}", *FAST)
    main(fit_args(tiny_shards, tmp_path, "whole", "--trainer.max_steps=12", *args))
    main(fit_args(tiny_shards, tmp_path, "cut", f"--trainer.max_steps={k}", *args))
    ckpt = torch.load(tmp_path / "cut/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == k  # written at the last step, not only every 3
    with pytest.warns() as record:
        main(fit_args(tiny_shards, tmp_path, "cut", "--trainer.max_steps=12", "--ckpt_path=last", *args))
    assert not [w for w in record if "not resumable" in str(w.message)]
    whole, cut = losses(tmp_path / "whole"), losses(tmp_path / "cut")
    assert sorted(cut) == list(range(1, 13))  # no step twice
    assert cut == whole


def test_finished_run_says_so(tmp_path, tiny_shards, capsys):
    args = ("--trainer.callbacks=[]", *FAST)
    main(fit_args(tiny_shards, tmp_path, "done", "--trainer.max_steps=4", *args))
    before = (tmp_path / "done/metrics.csv").read_text()
    main(fit_args(tiny_shards, tmp_path, "done", "--trainer.max_steps=4", "--ckpt_path=last", *args))
    err = capsys.readouterr().err
    assert "finished" in err and "step 4" in err and "trainer.max_steps" in err
    assert (tmp_path / "done/metrics.csv").read_text() == before


def test_sigterm_saves_last_and_resume_is_exact(tmp_path, tiny_shards):
    """SIGTERM: Lightning stops after the current batch, last.ckpt is saved there, exit status 143;
    resuming from it gives the uninterrupted run's losses."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    args = ("--trainer.callbacks=[]", "--data.num_workers=1", *FAST)
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "train", *fit_args(tiny_shards, tmp_path, "term",
                                                                      "--trainer.max_steps=100000", *args)],
                            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # the same intra-op thread count as this process (other tests set it): bitwise
                            # equality needs the same GEMM blocking in the interrupted and the whole run
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "term/checkpoints/step0000003.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM" in err
    step = torch.load(tmp_path / "term/checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert step >= 3
    end = step + 3
    main(fit_args(tiny_shards, tmp_path, "term", f"--trainer.max_steps={end}", "--ckpt_path=last", *args))
    main(fit_args(tiny_shards, tmp_path, "whole", f"--trainer.max_steps={end}", *args))
    term, whole = losses(tmp_path / "term"), losses(tmp_path / "whole")
    assert {s: term[s] for s in range(step + 1, end + 1)} == {s: whole[s] for s in range(step + 1, end + 1)}
