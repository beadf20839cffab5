"""Share of training wall time spent in BiasEvalCallback (issue 4, benchmark b).

Trains train.module.CLIPModule (the quickstart model) on in-memory random batches of the
quickstart's batch size with the callback at its quickstart settings (all read from
``configs/quickstart.yaml``), measures seconds per evaluation and per training step, and
extrapolates to the quickstart schedule. Data loading is excluded, so the share printed is an
upper bound for a real run.

    python bench/bias_callback_overhead.py [--steps 24] [--every 8] [--threads 2] [--paper-probes-only]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader, TensorDataset

from eval.callback import BiasEvalCallback, callback_init_args
from train.module import CLIPModule


QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def quickstart_settings(path: Path = QUICKSTART) -> dict:
    """Model name, batch size, max_steps and the BiasEvalCallback's init_args of the quickstart."""
    cfg = yaml.safe_load(path.read_text())
    init_args = callback_init_args(cfg)
    if init_args is None:
        raise SystemExit(f"{path} attaches no BiasEvalCallback")
    return {"model": (cfg.get("model") or {}).get("model_name", "clip-tiny"),
            "batch": (cfg.get("data") or {}).get("batch_size"),
            "max_steps": (cfg.get("trainer") or {}).get("max_steps"), "callback": init_args}


def main() -> None:
    qs = quickstart_settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24, help="training steps of the measurement run")
    ap.add_argument("--every", type=int, default=8, help="evaluate every N steps in the measurement run")
    ap.add_argument("--batch", type=int, default=qs["batch"], help="per-device batch (default: the quickstart's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--qs-steps", type=int, default=qs["max_steps"], help="quickstart max_steps (default: its config's)")
    cb_args = qs["callback"]
    qs_every = cb_args.get("every_n_steps")
    if cb_args.get("evaluations_per_run") and qs["max_steps"]:  # the spacing the callback derives at fit start
        qs_every = BiasEvalCallback.spacing(qs["max_steps"], cb_args["evaluations_per_run"])
    ap.add_argument("--qs-every", type=int, default=qs_every,
                    help="quickstart evaluation spacing in steps (default: derived from its config)")
    ap.add_argument("--paper-probes-only", action="store_true",
                    help="without the probes beyond the paper's that are on by default (zeroshot, word_order)")
    args = ap.parse_args()
    missing = [f"--{k.replace('_', '-')}" for k in ("batch", "qs_steps", "qs_every") if not getattr(args, k)]
    if missing:
        ap.error(f"{QUICKSTART} does not give {', '.join(missing)} as a number; pass them")
    torch.set_num_threads(args.threads)
    L.seed_everything(0)
    module = CLIPModule(qs["model"], warmup_steps=min(10, args.steps), total_steps=args.steps)
    size = module.model.visual.image_size[0]
    n = args.batch * args.steps
    images = torch.randn(n, 3, size, size)
    tokens = module.tokenizer([f"a photo of object {i % 500} and object {i % 37}" for i in range(n)])
    loader = DataLoader(TensorDataset(images, tokens), batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        cb_args = {k: v for k, v in qs["callback"].items() if k != "evaluations_per_run"}
        if args.paper_probes_only:
            cb_args.update(zeroshot=False, word_order=False)
        cb = BiasEvalCallback(**{**cb_args, "every_n_steps": args.every, "cache_dir": tmp, "plots": False,
                                 "run_dir": tmp})
        cb._default_set(module)  # render the eval set outside the timed run (a one-off, cached)
        trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", callbacks=[cb], logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        wall = time.perf_counter() - t0
    per_eval = cb.total_seconds / cb.n_evaluations
    per_step = (wall - cb.total_seconds - cb.prepare_seconds) / args.steps
    qs_evals = 1 + args.qs_steps // args.qs_every + (args.qs_steps % args.qs_every != 0)
    qs_eval_s = qs_evals * per_eval
    qs_wall = args.qs_steps * per_step + qs_eval_s + cb.prepare_seconds
    print(f"measured: {cb.n_evaluations} evaluations, {per_eval:.2f} s each, + {cb.prepare_seconds:.2f} s "
          f"decoding and tokenising once; {per_step:.2f} s per training step (batch {args.batch}, "
          f"{args.threads} threads)")
    print(f"quickstart ({args.qs_steps} steps, eval every {args.qs_every} + init + end = {qs_evals} evals): "
          f"evaluations {qs_eval_s:.1f} s of {qs_wall:.0f} s = {100 * qs_eval_s / qs_wall:.1f} %, with the "
          f"preparation {100 * (qs_eval_s + cb.prepare_seconds) / qs_wall:.1f} % "
          "(upper bound: data loading not included)")


if __name__ == "__main__":
    main()
