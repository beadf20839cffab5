"""The house's rules, checked on the source (docs/INTERFACES.md, "Packages and who imports whom").

Every ``import`` statement counts, also those inside functions: a lazy import breaks a rule as much
as one at the top of a file.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("data_prep", "eval", "train")
#: room -> the other rooms it may import
ALLOWED = {"data_prep": set(), "eval": {"data_prep"}, "train": {"data_prep", "eval"}}


def _modules(room: str) -> list[Path]:
    return sorted((ROOT / room).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted module)`` for every import in ``path``, relative imports made absolute."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("room", ROOMS)
def test_a_room_imports_only_the_rooms_below_it(room):
    broken = [f"{_where(path, line)} imports {module}"
              for path in _modules(room) for line, module in _imports(path)
              if (top := module.split(".")[0]) in ROOMS and top != room and top not in ALLOWED[room]]
    assert not broken, f"{room} may import only {sorted(ALLOWED[room]) or 'no other room'}: {broken}"


def test_nothing_imports_a_command_line_module_but_its_main():
    """``<room>/cli.py`` parses arguments and calls library functions; only ``<room>/__main__.py`` imports it."""
    broken = []
    for room in ROOMS:
        for path in _modules(room):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] in ROOMS and "cli" in parts[1:2] and path.name != "__main__.py":
                    broken.append(f"{_where(path, line)} imports {module}")
    assert not broken, broken


def test_the_rules_see_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function and a relative one are both found."""
    pkg = tmp_path / "data_prep"
    pkg.mkdir()
    src = pkg / "x.py"
    src.write_text("def f():\n    from train.module import CLIPModule\n\nfrom .cli import main\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = [m for _, m in _imports(src)]
    assert "train.module" in found and "data_prep.cli" in found


def _calls(path: Path, call: str) -> list[int]:
    """Lines calling ``call``: ``"define_metric"`` (any ``x.define_metric(...)``) or ``"os.replace"``."""
    owner, _, attribute = call.rpartition(".")
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute
            and (not owner or isinstance(node.func.value, ast.Name) and node.func.value.id == owner)]


@pytest.mark.parametrize("call, home", [
    ("define_metric", "eval/samples_axis.py"),  # W&B metric definitions
    ("os.replace", "data_prep/fileio.py"),      # atomic writes (temp file + rename)
    ("mkstemp", "data_prep/fileio.py"),         # temp files beside their target
])
def test_one_home_per_idea(call, home):
    homes = {str(path.relative_to(ROOT)) for room in ROOMS + ("bench", "experiments")
             for path in (ROOT / room).rglob("*.py") if _calls(path, call)}
    assert homes == {home}, f"{call}() is called outside its home {home}: {sorted(homes - {home})}"


def test_one_definition_per_shared_helper():
    """The generic helpers are defined once (a second ``def pid_alive`` is a second home)."""
    names = ("pid_alive", "_pid_alive", "check_writable", "_check_writable", "write_json_atomic", "is_int", "_is_int",
             "atomic_torch_save", "wandb_loggers", "_wandb_loggers")
    defined: dict[str, list[str]] = {}
    for room in ROOMS + ("bench", "experiments"):
        for path in (ROOT / room).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.FunctionDef) and node.name in names:
                    defined.setdefault(node.name.lstrip("_"), []).append(_where(path, node.lineno))
    assert {k: len(v) for k, v in defined.items()} == {k: 1 for k in defined}, defined


def test_the_traceback_switch_has_one_home():
    """Every command reads ``CLIP_BIAS_LAB_TRACEBACK`` through data_prep/shell.py, so all obey it alike."""
    homes = {str(path.relative_to(ROOT)) for room in ROOMS for path in (ROOT / room).rglob("*.py")
             if '"CLIP_BIAS_LAB_TRACEBACK"' in path.read_text()}
    assert homes == {"data_prep/shell.py"}, homes
