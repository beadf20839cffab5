"""``python -m train export CKPT OUT.pt``: Lightning checkpoint → plain open_clip state_dict."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path) -> tuple[str, Path]:
    """Write the CLIP weights of ``ckpt_path`` to ``out_path`` (and the model config beside it).

    Load with ``open_clip.create_model(model_name, pretrained=out_path)`` (for the tiny configs call
    ``train.models.register_model_configs()`` first). ``<out_path>.config.json`` records the model
    name and its open_clip config, so the weights stay usable without this repository.
    Returns ``(model_name, out_path)``.
    """
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    info = ckpt.get("open_clip") or {"model_name": ckpt["hyper_parameters"]["model_name"], "model_cfg": None}
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{ckpt_path} holds no 'model.*' weights; is it a CLIPModule checkpoint?")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, out_path)
    meta = out_path.with_name(out_path.name + ".config.json")
    meta.write_text(json.dumps({"model_name": info["model_name"], "model_cfg": info.get("model_cfg")}, indent=2))
    return info["model_name"], out_path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m train export", description=export_checkpoint.__doc__)
    parser.add_argument("ckpt", help="Lightning checkpoint (e.g. runs/quickstart/checkpoints/last.ckpt)")
    parser.add_argument("out", help="output .pt file with the open_clip state_dict")
    args = parser.parse_args(argv)
    name, out = export_checkpoint(args.ckpt, args.out)
    print(f"wrote {out}; load with: open_clip.create_model({name!r}, pretrained={str(out)!r})")
