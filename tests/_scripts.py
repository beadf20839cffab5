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
