"""``python -m train export CKPT OUT.pt``: Lightning checkpoint → plain open_clip state_dict.

The work is :func:`eval.models.export_checkpoint` (re-exported here).
"""
from __future__ import annotations

import argparse

from eval.models import export_checkpoint, plain_open_clip_recipe

__all__ = ["export_checkpoint", "main"]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m train export", description=export_checkpoint.__doc__)
    parser.add_argument("ckpt", help="Lightning checkpoint (e.g. runs/quickstart/checkpoints/last.ckpt)")
    parser.add_argument("out", help="output .pt file with the open_clip state_dict")
    args = parser.parse_args(argv)
    name, out = export_checkpoint(args.ckpt, args.out)
    print(f"wrote {out}; load it in plain open_clip with:\n{plain_open_clip_recipe(name, out)}")
