"""Load a repository script (bench/, experiments/: folders that are not packages) as a module."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(rel_path: str, name: str | None = None) -> ModuleType:
    """``REPO/rel_path`` executed as module ``name`` (default: the file's stem), registered in
    ``sys.modules`` (dataclasses look their module up there), with the script's folder on
    ``sys.path`` (scripts import their sibling helpers)."""
    path = REPO / rel_path
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_probes_on_micro(tmp_path: Path) -> tuple[ModuleType, object, object]:
    """``(bench/bench_probes.py, a fake eval set, a ClipAdapter over a random-init clip-micro)``: the
    setup of the bench's compare-mode smoke tests."""
    import open_clip
    import torch
    from test_probes_suite import write_fake_eval_set

    from eval.manifest import load_eval_set
    from eval.model_access import ClipAdapter
    from eval.models import register_model_configs

    bench = load_script("bench/bench_probes.py")
    eval_set = load_eval_set(write_fake_eval_set(tmp_path / "es"))
    register_model_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("clip-micro")
    return bench, eval_set, ClipAdapter(model.eval(), preprocess, open_clip.get_tokenizer("clip-micro"))
