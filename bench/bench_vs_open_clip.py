"""Throughput of ``python -m train fit`` vs open_clip's own trainer on identical work.

Same shards (rendered corpus), model config, batch size, workers, precision (fp32) and steps; both
runs in this script, alternating. Prints the steady-state samples/s of each (median over steps
after the first ``--skip`` ones, best of ``--repeats`` alternating runs) and the ratio ours / theirs,
for each case:

- ``tiny``: ``--model`` (clip-tiny: 64 px, context 32) at ``--batch-size``;
- ``laion-text``: the ``laion_small`` model (open_clip ViT-B-32, 224 px, text context 77) at a
  CPU-sized batch (``--laion-batch-size``, ``--laion-steps``): where text trimming pays most;
- ``tiny-busy``: ``tiny`` while ``--busy`` busy-loop processes (default 2) hold the cores: the
  lead under a fixed background load.

    python bench/bench_vs_open_clip.py --model clip-tiny --batch-size 64 --workers 1 --steps 30
    python bench/bench_vs_open_clip.py --cases tiny laion-text --steps 24 --laion-steps 8
    python bench/bench_vs_open_clip.py --cases tiny tiny-busy --steps 30 --skip 5 --repeats 3

open_clip_train needs webdataset<=0.2.86 (it uses private internals of older versions), so it runs
with its own copy: ``pip install --no-deps --target <work>/wds0286 webdataset==0.2.86`` (done here
if missing; needs pandas + braceexpand, which are installed).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = ("tiny", "laion-text", "tiny-busy")
LAION_MODEL = "ViT-B-32"  # configs/laion_small.yaml's model.model_name
WRAPPER = """import sys, open_clip
open_clip.add_model_config({config_dir!r})
from open_clip_train.main import main; main(sys.argv[1:])
"""


def ensure_old_webdataset(target: Path) -> None:
    if (target / "webdataset").is_dir():
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    "webdataset==0.2.86"], check=True)


def make_shards(out: Path, num_samples: int, image_size: int) -> str:
    if not (out / "sizes.json").exists():
        sys.path.insert(0, str(REPO))
        from data_prep.synth import write_corpus

        write_corpus(out, num_samples=num_samples, image_size=image_size, shard_size=1000)
    n = len(list(out.glob("*.tar")))
    return str(out / ("{00000..%05d}.tar" % (n - 1)))


@contextlib.contextmanager
def busy_loops(n: int):
    """``n`` processes spinning in a Python loop (a fixed background load) for the block's duration."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def run_ours(a, shards: str, work: Path) -> float:
    cmd = [sys.executable, "-m", "train", "fit", "--config", "quickstart.yaml", "--data.synthetic=null",
           f"--data.train_shards={shards}", f"--data.batch_size={a.batch_size}", f"--data.num_workers={a.workers}",
           f"--model.model_name={a.model}", f"--model.warmup_steps={min(10, a.steps)}", f"--trainer.max_steps={a.steps}",
           "--trainer.precision=32-true", f"--trainer.accelerator={a.accelerator}",
           "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
           "--trainer.callbacks=[]",  # no bias probes: open_clip's run has no zero-shot eval either
           f"--run.root={work}/ours", "--run.name=bench", "--run.wandb_mode=disabled",
           f"--run.checkpoint_every_n_steps={a.steps * 10}"]
    shutil.rmtree(work / "ours" / "bench", ignore_errors=True)  # fit refuses a run dir that holds a run
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "WANDB_MODE": "disabled"})
    with open(work / "ours" / "bench" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/samples_per_sec")]
    values = [float(r["train/samples_per_sec"]) for r in rows if int(r["step"]) >= a.skip]
    return statistics.median(values)


def run_theirs(a, shards: str, work: Path) -> float:
    sys.path.insert(0, str(REPO))
    from eval.models import MODEL_CONFIG_DIR  # the tiny model JSONs shipped with the package

    ensure_old_webdataset(work / "wds0286")
    wrapper = work / "open_clip_main.py"
    wrapper.write_text(WRAPPER.format(config_dir=str(MODEL_CONFIG_DIR)))
    cmd = [sys.executable, str(wrapper), "--train-data", shards, "--dataset-type", "webdataset",
           "--train-num-samples", str(a.batch_size * a.steps), "--batch-size", str(a.batch_size),
           "--workers", str(a.workers), "--epochs", "1", "--model", a.model, "--lr", "1e-3", "--warmup", str(min(10, a.steps)),
           "--precision", "fp32", "--device", "cpu" if a.accelerator == "cpu" else "cuda",
           "--report-to", "", "--log-every-n-steps", "1", "--save-frequency", "0", "--zeroshot-frequency", "0",
           "--logs", str(work / "theirs"), "--name", "bench", "--dataset-resampled"]
    shutil.rmtree(work / "theirs" / "bench", ignore_errors=True)  # open_clip_train refuses an existing name
    env = {**os.environ, "PYTHONPATH": str(work / "wds0286")}
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{proc.stderr[-3000:]}")
    log = (work / "theirs" / "bench" / "out.log").read_text()
    values = [float(v) for v in re.findall(r"([0-9.]+)/s/gpu", log)]
    return statistics.median(values[a.skip:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clip-tiny")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=3, help="warm-up steps left out of the median")
    p.add_argument("--num-samples", type=int, default=4000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--repeats", type=int, default=2,
                   help="alternate the two trainers this many times and keep each one's best median "
                        "(a shared machine's load comes and goes)")
    p.add_argument("--work-dir", default=None, help="default: a fresh temporary directory")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES,
                   help="tiny: --model at --batch-size; laion-text: ViT-B-32 (context 77) at --laion-batch-size; "
                        "tiny-busy: tiny under --busy busy-loop processes")
    p.add_argument("--laion-batch-size", type=int, default=8, help="laion-text case: a CPU-sized batch")
    p.add_argument("--laion-steps", type=int, default=10, help="laion-text case: steps per run")
    p.add_argument("--busy", type=int, default=2, help="tiny-busy case: busy-loop processes during its runs")
    a = p.parse_args()
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="bench-clip-"))
    work.mkdir(parents=True, exist_ok=True)
    shards = make_shards(work / "shards", a.num_samples, a.image_size)
    cases = {name: case_args(a, name) for name in a.cases}
    runs = {name: ([], []) for name in cases}
    for _ in range(a.repeats):  # alternate trainers and cases, so load changes hit all of them alike
        for name, c in cases.items():
            with busy_loops(c.busy if name == "tiny-busy" else 0):
                runs[name][0].append(run_ours(c, shards, work))
            with busy_loops(c.busy if name == "tiny-busy" else 0):
                runs[name][1].append(run_theirs(c, shards, work))
    print(f"workers={a.workers} accelerator={a.accelerator} repeats={a.repeats} threads=default (all cores)")
    for name, c in cases.items():
        ours_runs, theirs_runs = runs[name]
        ours, theirs = max(ours_runs), max(theirs_runs)
        busy = f" under {c.busy} busy loops" if name == "tiny-busy" else ""
        print(f"[{name}] model={c.model} batch={c.batch_size} steps={c.steps} (median after {c.skip}){busy}; per repeat: "
              f"ours {[round(x, 1) for x in ours_runs]}, open_clip {[round(x, 1) for x in theirs_runs]}")
        print(f"[{name}] python -m train fit      : {ours:10.2f} samples/s")
        print(f"[{name}] open_clip_train.main     : {theirs:10.2f} samples/s")
        print(f"[{name}] ratio ours / open_clip   : {ours / theirs:10.2f}x")


def case_args(a: argparse.Namespace, name: str) -> argparse.Namespace:
    """The run arguments of case ``name`` (see the module docstring)."""
    if name in ("tiny", "tiny-busy"):
        return a
    if name == "laion-text":
        return argparse.Namespace(**{**vars(a), "model": LAION_MODEL, "batch_size": a.laion_batch_size,
                                     "steps": a.laion_steps, "skip": min(a.skip, max(1, a.laion_steps // 4))})
    raise ValueError(f"unknown case {name!r}; valid: {', '.join(CASES)}")


if __name__ == "__main__":
    main()
