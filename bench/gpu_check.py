"""One-shot GPU check: training throughput and MFU, DDP, the data loader, the bias callback's share, memory.

Run once on a lent GPU machine (``bash bench/gpu_check.sh``, <= 8 min on one GPU); ``--smoke`` runs the
same code paths on the CPU with ``clip-micro`` at 32 px in about a minute. Stages, each printed with
its number and the exact command it ran:

1. ``python -m train fit --config laion_small.yaml`` (ViT-B-32, 224 px, bf16-mixed, one GPU) on a
   rendered corpus (``python -m data_prep synth``): steady-state samples/s from the run's
   ``metrics.csv`` (``train/samples_per_sec`` of every step but the warm-up, the bias-evaluation steps
   and the last one; harmonic mean = samples / seconds) and MFU = samples/s x fwd+bwd FLOPs per
   sample (``bench/step_bench.py``'s ``clip_train_flops``, the text tower at the trimmed length of
   the corpus's batches) / the GPU's dense bf16 peak (:data:`PEAKS`).
2. The same fit under ``--trainer.strategy=ddp --trainer.devices=-1`` (NCCL over every visible GPU).
3. The data loader alone (``WebDataModule.train_dataloader`` with the model's transforms, the
   config's workers, no model) against stage 1's samples/s: which bounds the run.
4. The bias callback's share of stage 1's wall time (the summary's ``bias probes`` line,
   ``eval_seconds`` in ``bias.jsonl``), and that share projected to the config's cadence.
5. ``bench/grad_checkpointing.py`` and ``bench/contrastive_accumulation.py`` on the device.

A failing stage prints its error and the check goes on; the exit status is 1 if any stage failed.
Everything is written under ``--out`` (default: a new temp folder): ``gpu_check.json`` (every
number and command), ``gpu_check.log`` (what was printed), ``logs/`` (each command's output).

    python bench/gpu_check.py [--smoke] [--out DIR] [--minutes 8]
    python bench/gpu_check.py loader --shards DIR [--model ViT-B-32 --batch 256 --workers 8 ...]
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
CONFIG = "laion_small.yaml"

#: dense (no sparsity) bf16 tensor-core peak, TFLOP/s, keyed by a substring of
#: ``torch.cuda.get_device_name()``; the longest matching key wins ("A100" over "A10", "L40S" over "L4")
PEAKS: dict[str, float] = {
    "H200": 989.0, "H100": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0,
    "A100": 312.0, "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0,
}
#: loader headroom below which the run counts as data-bound (the step was measured with the loader feeding it)
DATA_BOUND_MARGIN = 0.10


# ---------------------------------------------------------------------- settings


@dataclass
class Settings:
    """What each stage runs: the GPU check's sizes, or the smoke's tiny ones."""

    model: str
    image_size: int
    accelerator: str
    precision: str
    batch: int
    workers: int
    shuffle_buffer: int
    steps: int
    ddp_steps: int
    skip_steps: int
    ddp_devices: str
    num_samples: int
    loader_batches: int
    gc_batch: int
    ca_batch: int
    reps: int
    device: str  # for the memory benches

    @classmethod
    def for_run(cls, smoke: bool, config: dict) -> "Settings":
        data = config.get("data") or {}
        if smoke:
            return cls(model="clip-micro", image_size=32, accelerator="cpu", precision="32-true", batch=16, workers=1,
                       shuffle_buffer=64, steps=12, ddp_steps=8, skip_steps=2, ddp_devices="1", num_samples=512,
                       loader_batches=6, gc_batch=16, ca_batch=16, reps=1, device="cpu")
        batch, steps = int(data.get("batch_size", 256)), 150
        # one epoch (batch x steps samples) covers stage 1: DataLoader workers restart at every epoch
        return cls(model=str((config.get("model") or {}).get("model_name", "ViT-B-32")), image_size=224,
                   accelerator="gpu", precision="bf16-mixed", batch=batch, workers=int(data.get("num_workers", 8)),
                   shuffle_buffer=int(data.get("shuffle_buffer", 5000)), steps=steps, ddp_steps=100, skip_steps=10,
                   ddp_devices="-1", num_samples=batch * steps, loader_batches=48, gc_batch=256, ca_batch=512,
                   reps=3, device="cuda")


def read_config(name: str = CONFIG) -> dict:
    """``configs/<name>`` as plain data."""
    import yaml

    return yaml.safe_load((REPO / "configs" / name).read_text())


def callback_args(config: dict) -> dict:
    """The ``BiasEvalCallback``'s ``init_args`` in ``config`` ({} when it attaches none)."""
    from eval.callback import callback_init_args

    return callback_init_args(config) or {}


# ---------------------------------------------------------------------- pure helpers


def peak_tflops(device_name: str) -> float | None:
    """Dense bf16 peak (TFLOP/s) of the longest :data:`PEAKS` key in ``device_name`` (case-insensitive)."""
    name = device_name.lower()
    hits = [key for key in PEAKS if key.lower() in name]
    return PEAKS[max(hits, key=len)] if hits else None


def mfu(samples_per_s: float, flops_per_sample: float, peak_tflops_per_device: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over ``devices`` x the dense peak."""
    return samples_per_s * flops_per_sample / (peak_tflops_per_device * 1e12 * devices)


def bound_verdict(loader_sps: float, step_sps: float, margin: float = DATA_BOUND_MARGIN) -> str:
    """``data-bound`` when the loader alone delivers less than the step's samples/s (plus ``margin``:
    the step was measured with the loader feeding it, so a data-bound step runs at the loader's
    pace and the loader alone is only slightly faster); else ``compute-bound``."""
    return "data-bound" if loader_sps < step_sps * (1 + margin) else "compute-bound"


def steady_samples_per_s(rows: list[dict], skip: int, exclude: set[int]) -> tuple[float, int]:
    """Samples/s over ``metrics.csv`` rows: the harmonic mean (samples / seconds) of
    ``train/samples_per_sec`` of the steps after ``skip``, without those in ``exclude`` (bias
    evaluations) and the last step (its checkpoint); returns (rate, steps used)."""
    values = [(int(r["step"]), float(r["train/samples_per_sec"])) for r in rows
              if r.get("train/samples_per_sec") not in (None, "")]
    if not values:
        raise ValueError("metrics.csv has no train/samples_per_sec value")
    last = max(step for step, _ in values)
    used = [v for step, v in values if skip < step < last and step not in exclude and v > 0]
    if not used:
        raise ValueError(f"metrics.csv has no train/samples_per_sec after warm-up step {skip} "
                         f"(last step {last}): train more steps")
    return len(used) / sum(1 / v for v in used), len(used)


def eval_seconds_by_step(path: Path) -> dict[int, float]:
    """``{step: eval_seconds}`` of each evaluation in ``bias.jsonl`` (repeated per record there; torn
    lines left out, as :func:`eval.records.scan_records` does)."""
    from eval.records import scan_records

    records, _ = scan_records(path)
    return {int(r["step"]): float(r["eval_seconds"]) for r in records if r.get("eval_seconds") is not None}


_PROBE_COST = re.compile(r"bias probes: (\d+) evaluations, ([\d.]+) s = ([\d.]+) % of the run")


def parse_probe_cost(text: str) -> dict | None:
    """The summary's ``bias probes: N evaluations, X s = Y % of the run`` line (train/summary.py)."""
    m = _PROBE_COST.search(text)
    if m is None:
        return None
    return {"evaluations": int(m[1]), "eval_seconds": float(m[2]), "share": float(m[3]) / 100,
            "line": text[m.start():].splitlines()[0]}


def projected_share(per_eval_s: float, per_step_s: float, run_steps: int, evaluations: int) -> float:
    """Share of a run's wall time spent in ``evaluations`` evaluations over ``run_steps`` steps."""
    spent = evaluations * per_eval_s
    return spent / (spent + run_steps * per_step_s)


_GC = re.compile(r"grad_checkpointing=(True|False)\s+step ([\d.]+) s .*?autograd-saved ([\d.]+) MiB"
                 r"(?:\s+peak (\d+) MiB)?")
_CA = re.compile(r"accumulate_contrastive=(\d+)\s+micro-batch\s+(\d+)\s+step ([\d.]+) s .*?"
                 r"autograd-saved peak ([\d.]+) MiB x[\d.]+(?:\s+CUDA peak (\d+) MiB)?")


def _mem(step_s: str, saved: str, peak: str | None) -> dict:
    return {"step_s": float(step_s), "autograd_saved_mib": float(saved),
            "cuda_peak_mib": float(peak) if peak else None}


def parse_grad_checkpointing(text: str) -> dict:
    """``{"off": {...}, "on": {...}}`` from ``bench/grad_checkpointing.py``'s output."""
    out = {("on" if m[1] == "True" else "off"): _mem(m[2], m[3], m[4]) for m in _GC.finditer(text)}
    if set(out) != {"on", "off"}:
        raise ValueError("bench/grad_checkpointing.py printed no on/off lines")
    return out


def parse_contrastive(text: str) -> dict:
    """``{"K": {..., "micro_batch"}}`` from ``bench/contrastive_accumulation.py``'s output."""
    out = {m[1]: {**_mem(m[3], m[4], m[5]), "micro_batch": int(m[2])} for m in _CA.finditer(text)}
    if not out:
        raise ValueError("bench/contrastive_accumulation.py printed no accumulate_contrastive lines")
    return out


# ---------------------------------------------------------------------- the run's context


class StageError(RuntimeError):
    """A stage could not produce its numbers; the message says why."""


class Check:
    """Output folder, log, time budget, results and the subprocess runner of one check."""

    def __init__(self, out: Path, minutes: float, smoke: bool) -> None:
        self.out, self.smoke = out, smoke
        self.deadline = time.monotonic() + 60 * minutes
        self.results: dict[str, Any] = {"smoke": smoke, "stages": {}, "errors": {}}
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self._log = (out / "gpu_check.log").open("a")
        self.env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                    "CLIP_BIAS_LAB_CACHE": str(out / "cache"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def say(self, text: str) -> None:
        print(text, flush=True)
        self._log.write(text + "\n")
        self._log.flush()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, cmd: list[str], log_name: str, shown_env: str = "") -> tuple[str, float]:
        """Run ``cmd`` from the repository root within the budget; (its output, seconds). Its output
        goes to ``logs/<log_name>.log``; a non-zero exit raises :class:`StageError` with the last lines."""
        budget = self.remaining()
        if budget < 5:
            raise StageError("the --minutes budget is spent")
        log = self.out / "logs" / f"{log_name}.log"
        self.say(f"   $ {shown_env}{shlex.join(['python', *cmd[1:]] if cmd[0] == sys.executable else cmd)}")
        t0 = time.perf_counter()
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                raise StageError(f"timed out after {budget:.0f} s (the --minutes budget); output in {log}") from None
        text = log.read_text(errors="replace")
        if rc != 0:
            tail = "\n".join("      " + ln for ln in text.strip().splitlines()[-12:])
            raise StageError(f"exit status {rc}; last lines of {log}:\n{tail}")
        return text, time.perf_counter() - t0

    def stage(self, number: int, name: str, fn: Callable[[], dict]) -> dict | None:
        """Run one stage; record its result or its error, never raise."""
        try:
            if self.remaining() < 5:
                raise StageError("skipped: the --minutes budget is spent")
            t0 = time.perf_counter()
            result = fn()
            result["stage_seconds"] = time.perf_counter() - t0
            self.results["stages"][name] = result
            return result
        except Exception as err:  # noqa: BLE001 - a failing stage must not stop the others
            message = str(err) if isinstance(err, StageError) else f"{type(err).__name__}: {err}"
            self.say(f"{number}. {name}: FAILED: {message}")
            self.results["errors"][name] = message
            return None

    def close(self) -> None:
        self._log.close()

    def save(self) -> Path:
        path = self.out / "gpu_check.json"
        path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        return path


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this check started for ``proc`` (DDP ranks included), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


# ---------------------------------------------------------------------- device, model, FLOPs


def device_info(accelerator: str) -> dict:
    """Device name, visible GPU count and dense bf16 peak (None: CPU or a device not in PEAKS)."""
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        return {"device": "cpu", "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                "peak_tflops": None}
    name = torch.cuda.get_device_name(0)
    return {"device": name, "gpus": torch.cuda.device_count(), "peak_tflops": peak_tflops(name)}


@functools.lru_cache(maxsize=2)
def clip_module(model_name: str):
    """The training module (``train.module.CLIPModule``, on the CPU): its model, transforms and tokenizer."""
    from train.module import CLIPModule

    return CLIPModule(model_name)


def shard_captions(shards: Path, n: int) -> list[str]:
    """The first ``n`` captions (``*.txt`` members) of the shards in ``shards``, in shard order."""
    captions: list[str] = []
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                if member.name.endswith(".txt"):
                    captions.append(tf.extractfile(member).read().decode("utf-8"))
                    if len(captions) >= n:
                        return captions
    if not captions:
        raise StageError(f"no caption (*.txt) in the shards of {shards}")
    return captions


def flops_per_sample(model_name: str, shards: Path, batch: int, n_batches: int = 8) -> dict:
    """Forward + backward model FLOPs per sample (``bench/step_bench.py``: ``clip_train_flops``), averaged
    over ``n_batches`` batches of the corpus's captions, each with the text tower at the length
    training runs it on (the batch's last end-of-text token, or the full context when not trimmed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from step_bench import clip_train_flops

    from eval.text_encoding import pooled_positions, trim_ineligibility

    module = clip_module(model_name)
    captions = shard_captions(shards, batch * n_batches)
    trim = module.hparams.trim_text and trim_ineligibility(module.model) is None
    flops, lengths = [], []
    for i in range(0, len(captions), batch):
        tokens = module.tokenizer(captions[i:i + batch])
        length = int(pooled_positions(module.model, tokens).max()) + 1 if trim else tokens.shape[1]
        lengths.append(length)
        flops.append(clip_train_flops(module.model, length)["total"])
    return {"flops_per_sample": sum(flops) / len(flops), "text_len_mean": sum(lengths) / len(lengths),
            "context_length": int(tokens.shape[1])}


def mfu_entry(samples_per_s: float, flops: dict | None, info: dict, devices: int = 1) -> tuple[Any, str]:
    """(MFU or "n/a", the words printed for it)."""
    if flops is None:
        return "n/a", "MFU n/a (no FLOP count, see the error above)"
    achieved = samples_per_s * flops["flops_per_sample"] / 1e12
    counted = (f"{flops['flops_per_sample'] / 1e9:.3g} GFLOP/sample fwd+bwd, text on {flops['text_len_mean']:.1f} "
               f"of {flops['context_length']} tokens: {achieved:.3g} TFLOP/s")
    if info["device"] == "cpu":
        return "n/a", f"MFU n/a (CPU run: no GPU bf16 peak; {counted})"
    if info["peak_tflops"] is None:
        return "n/a", (f"MFU n/a (unknown device {info['device']}: add its bf16 peak to PEAKS in "
                       f"bench/gpu_check.py; {counted})")
    value = mfu(samples_per_s, flops["flops_per_sample"], info["peak_tflops"], devices)
    return value, f"MFU {100 * value:.1f} % ({counted} of {devices} x {info['peak_tflops']:.0f} dense bf16, {info['device']})"


# ---------------------------------------------------------------------- stages


def stage_corpus(check: Check, s: Settings) -> dict:
    corpus = check.out / "corpus"
    cmd = [sys.executable, "-m", "data_prep", "synth", "--out", str(corpus), "--num-samples", str(s.num_samples),
           "--image-size", str(s.image_size), "--workers", str(max(1, os.cpu_count() or 1)), "--no-progress",
           "--overwrite"]
    check.say(f"0. corpus: {s.num_samples:,} rendered samples at {s.image_size} px")
    _, secs = check.run(cmd, "0-corpus")
    check.say(f"   rendered in {secs:.1f} s")
    return {"command": shlex.join(cmd), "dir": str(corpus), "num_samples": s.num_samples, "seconds": secs}


def fit_command(check: Check, s: Settings, name: str, steps: int, devices: str, strategy: str,
                callbacks: bool) -> list[str]:
    """``python -m train fit --config laion_small.yaml`` on the rendered corpus, outputs under ``--out``."""
    cmd = [sys.executable, "-m", "train", "fit", "--config", CONFIG, f"--data.train_shards={check.out / 'corpus'}",
           f"--model.model_name={s.model}", f"--data.batch_size={s.batch}", f"--data.num_workers={s.workers}",
           f"--data.shuffle_buffer={s.shuffle_buffer}", f"--trainer.max_steps={steps}",
           f"--trainer.accelerator={s.accelerator}", f"--trainer.precision={s.precision}",
           f"--trainer.devices={devices}", f"--trainer.strategy={strategy}", "--trainer.log_every_n_steps=1",
           "--trainer.enable_progress_bar=false", f"--run.root={check.out / 'runs'}", f"--run.name={name}",
           "--run.wandb_mode=disabled", "--run.overwrite=true"]
    # 3 evaluations (step 0, middle, end) instead of the config's 80, which would be every other step here
    cmd += ["--trainer.callbacks.init_args.evaluations_per_run=2"] if callbacks else ["--trainer.callbacks=null"]
    return cmd


def _run_fit(check: Check, cmd: list[str], name: str, log_name: str, skip: int) -> dict:
    """Run the fit ``cmd`` of run ``name``: its steady samples/s (``metrics.csv``), evaluations
    (``bias.jsonl``) and summary line."""
    text, secs = check.run(cmd, log_name)
    run_dir = check.out / "runs" / name
    with (run_dir / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    bias = run_dir / "bias.jsonl"
    evals = eval_seconds_by_step(bias) if bias.is_file() else {}
    sps, used = steady_samples_per_s(rows, skip, set(evals))
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):  # ~1.8 GB each for ViT-B-32: the numbers are what matters
        ckpt.unlink()
    return {"command": shlex.join(["python", *cmd[1:]]), "samples_per_s": sps, "steps_used": used,
            "warmup_steps_skipped": skip, "eval_steps": sorted(evals), "eval_seconds": evals,
            "probe_cost": parse_probe_cost(text), "process_seconds": secs, "run_dir": str(run_dir)}


def stage_train(check: Check, s: Settings, info: dict) -> dict:
    devices = "1"
    check.say(f"1. train: {s.model} at {s.image_size} px, {s.precision}, {s.accelerator} x {devices}, "
              f"batch {s.batch}, {s.steps} steps")
    result = _run_fit(check, fit_command(check, s, "train", s.steps, devices, "auto", True), "train", "1-train",
                      s.skip_steps)
    try:
        flops = flops_per_sample(s.model, check.out / "corpus", s.batch)
    except Exception as err:  # noqa: BLE001 - the samples/s stand without it
        check.say(f"   FLOP count failed: {type(err).__name__}: {err}")
        flops = None
    value, words = mfu_entry(result["samples_per_s"], flops, info)
    result.update(mfu=value, mfu_text=words, **(flops or {}))
    check.say(f"1. train: {result['samples_per_s']:,.1f} samples/s (steady: {result['steps_used']} steps of "
              f"metrics.csv train/samples_per_sec after {s.skip_steps} warm-up, without the "
              f"{len(result['eval_steps'])} bias-evaluation steps and the last); {words}")
    return result


def stage_ddp(check: Check, s: Settings, info: dict, train: dict | None) -> dict:
    gpu = s.accelerator != "cpu"
    world = info["gpus"] if gpu else int(s.ddp_devices)
    if gpu and world <= 1:
        note = "DDP: 1 GPU visible, NCCL not exercised across ranks"
    elif gpu:
        note = f"DDP: NCCL over {world} GPUs"
    else:
        note = f"DDP: {world} gloo CPU rank(s) (smoke), NCCL not exercised"
    check.say(f"2. ddp: {note}; {s.ddp_steps} steps, batch {s.batch} per rank, bias callback off")
    cmd = fit_command(check, s, "ddp", s.ddp_steps, s.ddp_devices, "ddp", False)
    result = _run_fit(check, cmd, "ddp", "2-ddp", s.skip_steps)
    flops = {k: train[k] for k in ("flops_per_sample", "text_len_mean", "context_length")} \
        if train and "flops_per_sample" in train else None
    value, words = mfu_entry(result["samples_per_s"], flops, info, max(world, 1))
    per_rank = result["samples_per_s"] / max(world, 1)
    scaling = (f", {per_rank / train['samples_per_s']:.2f}x stage 1 per rank" if train else "")
    result.update(world_size=world, note=note, samples_per_s_per_rank=per_rank, mfu=value, mfu_text=words)
    check.say(f"2. ddp: {result['samples_per_s']:,.1f} samples/s over {world} rank(s) = {per_rank:,.1f} per rank"
              f"{scaling}; {words}")
    return result


def loader_samples_per_s(shards: Path, model: str, batch: int, workers: int, shuffle_buffer: int,
                         warmup: int, batches: int) -> dict:
    """Samples/s of ``WebDataModule.train_dataloader`` alone (decode, the model's train transforms,
    tokenise, batch; no model step) over ``batches`` batches after ``warmup`` (worker start-up)."""
    from train.data import WebDataModule

    module = clip_module(model)
    dm = WebDataModule(train_shards=str(shards), batch_size=batch, num_workers=workers,
                       shuffle_buffer=shuffle_buffer, seed=0)
    dm.set_model_transforms(module.preprocess_train, module.preprocess_val, module.tokenizer)
    dm.setup("fit")
    loader = dm.train_dataloader()
    per_epoch = len(loader.dataset)
    if per_epoch <= warmup:
        raise StageError(f"one epoch is {per_epoch} batches, not more than the {warmup} warm-up ones: render more samples")
    batches = min(batches, per_epoch - warmup)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    t0, samples = time.perf_counter(), 0
    for _ in range(batches):
        samples += int(next(it)[0].shape[0])
    secs = time.perf_counter() - t0
    return {"samples_per_s": samples / secs, "batches": batches, "warmup_batches": warmup, "seconds": secs}


def loader_command(shards: Path, s: Settings, warmup: int) -> list[str]:
    return ["python", "bench/gpu_check.py", "loader", "--shards", str(shards), "--model", s.model, "--batch",
            str(s.batch), "--workers", str(s.workers), "--shuffle-buffer", str(s.shuffle_buffer), "--warmup",
            str(warmup), "--batches", str(s.loader_batches)]


def stage_loader(check: Check, s: Settings, train: dict | None) -> dict:
    warmup = max(2, s.workers)
    cmd = loader_command(check.out / "corpus", s, warmup)
    check.say(f"3. loader: WebDataModule.train_dataloader alone, {s.model}'s transforms, {s.workers} worker(s)")
    check.say(f"   $ PYTHONPATH=. {shlex.join(cmd)}    # run in this process")
    result = loader_samples_per_s(check.out / "corpus", s.model, s.batch, s.workers, s.shuffle_buffer, warmup,
                                  s.loader_batches)
    result["command"] = "PYTHONPATH=. " + shlex.join(cmd)
    if train is None:
        raise StageError(f"{result['samples_per_s']:,.1f} samples/s, but no training samples/s to compare with "
                         f"(stage 1 failed)")
    step = train["samples_per_s"]
    result.update(step_samples_per_s=step, ratio=result["samples_per_s"] / step,
                  verdict=bound_verdict(result["samples_per_s"], step))
    check.say(f"3. loader: {result['samples_per_s']:,.1f} samples/s vs the training step's {step:,.1f} "
              f"(loader/step {result['ratio']:.2f}): {result['verdict']} (data-bound: loader < step x "
              f"{1 + DATA_BOUND_MARGIN:.2f})")
    return result


def stage_callback(check: Check, train: dict | None, config: dict, full_steps: int, batch: int) -> dict:
    check.say("4. bias callback: its share of stage 1's wall time")
    if train is None:
        raise StageError("no training run to read (stage 1 failed)")
    evals, cost = train["eval_seconds"], train["probe_cost"]
    if not evals or cost is None:
        raise StageError(f"stage 1 recorded no bias evaluation (bias.jsonl, the summary's 'bias probes' line) "
                         f"in {train['run_dir']}")
    per_eval = sorted(evals.values())[len(evals) // 2]
    per_step = batch / train["samples_per_s"]  # stage 1 runs on one device
    from eval.callback import BiasEvalCallback

    every = callback_args(config).get("evaluations_per_run")
    n = 1 + math.ceil(full_steps / BiasEvalCallback.spacing(full_steps, every)) if every else None
    projected = projected_share(per_eval, per_step, full_steps, n) if n else None
    result = {"share": cost["share"], "summary_line": cost["line"].strip(), "evaluations": cost["evaluations"],
              "eval_seconds_total": cost["eval_seconds"], "eval_seconds_median": per_eval,
              "step_seconds": per_step, "projected_share": projected, "projected_run_steps": full_steps,
              "projected_evaluations": n, "source": f"{train['run_dir']}/bias.jsonl eval_seconds + the summary line"}
    check.say(f"4. bias callback: {100 * cost['share']:.1f} % of stage 1's run ({cost['evaluations']} evaluations, "
              f"{cost['eval_seconds']:.1f} s; median {per_eval:.2f} s each, a step {per_step * 1e3:.0f} ms)"
              + (f"; projected {100 * projected:.2f} % for {CONFIG}'s cadence ({n} evaluations in "
                 f"{full_steps:,} steps)" if projected is not None else ""))
    check.say(f"   summary: {cost['line'].strip()}")
    return result


def _fail(message: str) -> dict:
    raise StageError(message)


def stage_memory(check: Check, s: Settings) -> dict:
    check.say(f"5. memory: gradient checkpointing and contrastive accumulation, {s.model} on {s.device}")
    env = "PYTHONPATH=. "
    gc_cmd = [sys.executable, "bench/grad_checkpointing.py", "--device", s.device, "--model", s.model,
              "--batch", str(s.gc_batch), "--reps", str(s.reps)]
    ca_cmd = [sys.executable, "bench/contrastive_accumulation.py", "--device", s.device, "--model", s.model,
              "--ks", "1", "4", "8", "--batch", str(s.ca_batch), "--reps", str(s.reps)]
    result: dict[str, Any] = {}
    gc_text, _ = check.run(gc_cmd, "5-grad_checkpointing", env)
    gc = parse_grad_checkpointing(gc_text)
    result["grad_checkpointing"] = {"batch": s.gc_batch, "command": env + shlex.join(["python", *gc_cmd[1:]]), **gc}
    check.say(f"5. memory: grad_checkpointing off/on, batch {s.gc_batch}: step {gc['off']['step_s']:.3f}/"
              f"{gc['on']['step_s']:.3f} s, autograd-saved {gc['off']['autograd_saved_mib']:.1f}/"
              f"{gc['on']['autograd_saved_mib']:.1f} MiB" + _peaks([gc["off"], gc["on"]]))
    ca_text, _ = check.run(ca_cmd, "5-contrastive_accumulation", env)
    ca = parse_contrastive(ca_text)
    result["contrastive_accumulation"] = {"batch": s.ca_batch, "command": env + shlex.join(["python", *ca_cmd[1:]]),
                                          "ks": ca}
    ks = sorted(ca, key=int)
    check.say(f"5. memory: accumulate_contrastive K={'/'.join(ks)}, contrastive batch {s.ca_batch}: step "
              + "/".join(f"{ca[k]['step_s']:.3f}" for k in ks) + " s, autograd-saved "
              + "/".join(f"{ca[k]['autograd_saved_mib']:.1f}" for k in ks) + " MiB" + _peaks([ca[k] for k in ks]))
    return result


def _peaks(entries: list[dict]) -> str:
    peaks = [e["cuda_peak_mib"] for e in entries]
    return f", CUDA peak {'/'.join(f'{p:.0f}' for p in peaks)} MiB" if all(p is not None for p in peaks) else ""


# ---------------------------------------------------------------------- summary and entry points


def summary_lines(results: dict) -> list[str]:
    """The closing table: one row per number."""
    st, rows = results["stages"], []
    if "train" in st:
        t = st["train"]
        rows += [("1", "train samples/s", f"{t['samples_per_s']:,.1f}"),
                 ("1", "MFU", t["mfu"] if t["mfu"] == "n/a" else f"{100 * t['mfu']:.1f} %")]
    if "ddp" in st:
        d = st["ddp"]
        rows.append(("2", f"DDP samples/s ({d['world_size']} rank(s))", f"{d['samples_per_s']:,.1f}"))
    if "loader" in st:
        ld = st["loader"]
        rows.append(("3", "loader samples/s", f"{ld['samples_per_s']:,.1f} ({ld.get('verdict', 'n/a')})"))
    if "callback" in st:
        c = st["callback"]
        proj = f", projected {100 * c['projected_share']:.2f} %" if c["projected_share"] is not None else ""
        rows.append(("4", "bias callback share", f"{100 * c['share']:.1f} %{proj}"))
    if "memory" in st:
        g, a = st["memory"]["grad_checkpointing"], st["memory"]["contrastive_accumulation"]
        rows.append(("5", "grad ckpt autograd-saved on/off",
                     f"x{g['on']['autograd_saved_mib'] / g['off']['autograd_saved_mib']:.2f}"))
        ks = sorted(a["ks"], key=int)
        first, last = a["ks"][ks[0]], a["ks"][ks[-1]]
        rows.append(("5", f"contrastive K={ks[-1]} vs K={ks[0]} saved",
                     f"x{last['autograd_saved_mib'] / first['autograd_saved_mib']:.2f}"))
    width = max([len(r[1]) for r in rows] + [11])
    return [f"stage  {'measurement'.ljust(width)}  value"] + [f"{n:5s}  {m.ljust(width)}  {v}" for n, m, v in rows]


def run_check(out: Path, minutes: float, smoke: bool, full_steps: int) -> int:
    """All stages; 0 when every one gave its numbers."""
    check = Check(out, minutes, smoke)
    config = read_config()
    s = Settings.for_run(smoke, config)
    check.results["settings"] = asdict(s)
    check.say(f"gpu_check{' --smoke' if smoke else ''}: {s.model} at {s.image_size} px on {s.accelerator}; "
              f"outputs in {out}; budget {minutes:g} min")
    info = check.stage(0, "device", lambda: device_info(s.accelerator)) or \
        {"device": "?", "gpus": 0, "peak_tflops": None}
    check.results.update({k: v for k, v in info.items() if k != "stage_seconds"})
    if s.accelerator != "cpu" and info["gpus"] == 0:
        check.say("no CUDA GPU visible: the GPU stages will fail; use --smoke on a CPU machine")
    corpus = check.stage(0, "corpus", lambda: stage_corpus(check, s))

    def on_corpus(fn: Callable[[], dict]) -> Callable[[], dict]:
        """``fn``, or a stage that fails at once when there is no corpus to train on."""
        if corpus is not None:
            return fn
        return lambda: _fail("no corpus to read (stage 0 failed)")

    train = check.stage(1, "train", on_corpus(lambda: stage_train(check, s, info)))
    check.stage(2, "ddp", on_corpus(lambda: stage_ddp(check, s, info, train)))
    check.stage(3, "loader", on_corpus(lambda: stage_loader(check, s, train)))
    check.stage(4, "callback", lambda: stage_callback(check, train, config, full_steps, s.batch))
    check.stage(5, "memory", lambda: stage_memory(check, s))
    check.results["log"] = str(out / "gpu_check.log")
    path = check.save()
    took = 60 * minutes - check.remaining()
    check.results["seconds"] = took
    check.say(f"== gpu_check summary ({info['device']}, {info['gpus']} GPU(s) visible, {took:.0f} s) ==")
    for line in summary_lines(check.results):
        check.say(line)
    failed = check.results["errors"]
    check.say(f"numbers: {path}; log: {out / 'gpu_check.log'}" + (f"; FAILED stages: {', '.join(failed)}" if failed else ""))
    check.save()
    check.close()
    return 1 if failed else 0


def loader_main(argv: list[str]) -> None:
    """``python bench/gpu_check.py loader ...``: stage 3 on its own."""
    ap = argparse.ArgumentParser(prog="gpu_check.py loader", description=loader_samples_per_s.__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, required=True, help="folder of webdataset shards with sizes.json")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--shuffle-buffer", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=8, help="untimed batches (worker start-up)")
    ap.add_argument("--batches", type=int, default=48, help="timed batches")
    a = ap.parse_args(argv)
    r = loader_samples_per_s(a.shards, a.model, a.batch, a.workers, a.shuffle_buffer, a.warmup, a.batches)
    print(f"loader: {r['samples_per_s']:,.1f} samples/s ({r['batches']} batches of {a.batch} after {a.warmup})")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loader"]:
        loader_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, clip-micro at 32 px, a few steps: the same code paths")
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new temp folder)")
    ap.add_argument("--minutes", type=float, default=8.0, help="time budget; stages past it are skipped")
    ap.add_argument("--full-run-steps", type=int, default=40_000,
                    help=f"run length for the callback share projected to {CONFIG}'s cadence (its comment: "
                         "10 epochs of ~1M pairs are ~40k steps on one GPU)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out = out.resolve()
    if out == REPO or REPO in out.parents:
        ap.error(f"--out {out} is inside the repository; give a folder outside it")
    out.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_MODE"] = "disabled"
    return run_check(out, args.minutes, args.smoke, args.full_run_steps)


if __name__ == "__main__":
    sys.exit(main())
