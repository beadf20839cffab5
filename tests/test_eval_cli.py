"""``python -m eval comco``: tables, JSON, default eval-set cache, bad input; a tiny real open_clip."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import open_clip
import pytest
import torch

from eval import cli
from eval.eval_sets import CACHE_ENV, default_cache_dir, default_eval_set
from eval.manifest import load_eval_set
from eval.model_access import ClipAdapter
from eval.suite import prepare_suite, run_suite
from test_probes_suite import SIZES, FakeAdapter, write_fake_eval_set


@pytest.fixture(scope="module")
def fake_set(tmp_path_factory):
    return write_fake_eval_set(tmp_path_factory.mktemp("fake"))


def _fake(args):
    return FakeAdapter()


def test_cli_fake_model_prints_tables_and_writes_json(fake_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("eval.suite._default_size_classes", lambda vocab: SIZES)
    out = tmp_path / "sub" / "res.json"
    args = cli.build_parser().parse_args(
        ["comco", "--model", "fake", "--data", str(fake_set), "--n-objects", "2", "3", "--items", "24",
         "--text-encoding", "plain", "split", "--itm-distractors", "3", "--no-progress", "--out", str(out)])
    assert cli.run_comco(args, adapter_factory=_fake) == 0
    text = capsys.readouterr().out
    assert "TOR: caption -> object-name retrieval" in text and "ITM: accuracy" in text
    assert "Claim 1" in text and "variant photo" in text
    rec = json.loads(out.read_text())
    assert rec["model"] == "fake" and rec["config"]["n_objects"] == [2, 3]
    assert rec["results"]["tor"]["3"]["conditional"]["pos1"]["share"] == 1.0
    assert rec["results"]["itm"]["2"]["summary"]["gap"]["value"] == 1.0
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name) or ".tmp" in p.name) == [out.name]  # no temp file left


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--probes", "tor,tox"], "--probes: unknown ['tox']; valid: tor, toc, ior, ioc, i2tor, itm, claim1"),
        (["--n-objects", "4"], "--n-objects: n_objects [4] not in the eval set"),
        (["--n-objects", "7"], "--n-objects: n_objects [7] not in the eval set"),
        (["--n-objects", "1", "3"], "--n-objects must be a list of integers >= 2"),
        (["--items", "0", "--templates", "haiku"], "--items must be an integer >= 1, got 0\n  --templates: unknown"),
        (["--checkpoint", "nope.ckpt"], "give exactly one of --checkpoint"),
        (["--eval-set-blocks", "0"], "--eval-set-blocks must be >= 1, got 0"),
        (["--eval-set-blocks", "4"], "--eval-set-blocks sizes the rendered default set; it does not apply to --data"),
    ],
)
def test_cli_bad_input_names_the_problem(fake_set, tmp_path, argv, message):
    args = cli.build_parser().parse_args(
        ["comco", "--model", "fake", "--data", str(fake_set), "--out", str(tmp_path / "r.json"), *argv])
    with pytest.raises(SystemExit) as err:
        cli.run_comco(args, adapter_factory=_fake)
    assert message in str(err.value)


def test_cli_missing_data_dir(tmp_path):
    args = cli.build_parser().parse_args(
        ["comco", "--model", "fake", "--data", str(tmp_path), "--out", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match="has no manifest.jsonl"):
        cli.run_comco(args, adapter_factory=_fake)


@pytest.mark.filterwarnings("ignore:items_per_setting")
def test_default_eval_set_rendered_once(tmp_path, monkeypatch):
    import data_prep.comco

    calls = []
    real = data_prep.comco.write_eval_set

    def counting(out_dir, **kw):
        calls.append(kw)
        return real(out_dir, **{**kw, "n_objects": (2,), "items_per_setting": 2})

    monkeypatch.setattr(data_prep.comco, "write_eval_set", counting)
    first = default_eval_set(tmp_path, seed=0, image_size=32, progress=False)
    second = default_eval_set(tmp_path, seed=0, image_size=32, progress=False)
    assert first == second and len(calls) == 1
    assert load_eval_set(first).n_values() == [2]
    assert [p.name for p in (tmp_path / "eval_sets").iterdir()] == [first.name]  # no temp dirs left


def test_cache_location_is_read_when_used(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "b"))  # changed after every import: still followed
    assert default_cache_dir() == tmp_path / "b"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "clip_bias_lab"


def _imports(path: Path) -> set[str]:
    """Modules a file imports (``from eval import cli`` counts as ``eval.cli``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and path.parent.name == "eval":
                base = "eval" + (f".{base}" if base else "")
            names |= {base, *(f"{base}.{a.name}" for a in node.names)}
    return names


def test_nothing_imports_the_command_line_module():
    """DESIGN: a command-line module only parses arguments and calls library functions; nothing
    imports it (the package's ``__main__`` and the tests that drive it aside)."""
    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("eval", "train", "data_prep", "bench", "experiments") for p in (root / d).rglob("*.py")]
    offenders = [str(p.relative_to(root)) for p in files
                 if p != root / "eval" / "__main__.py" and "eval.cli" in _imports(p)]
    assert offenders == []
    assert "importlib" not in _imports(root / "eval" / "cli.py")


def test_cli_tiny_open_clip_matches_library(tmp_path, capsys):
    """CLI on a weights file == prepare_suite/run_suite on the same weights."""
    torch.manual_seed(0)
    from _clip_fixtures import register_tiny

    name = register_tiny(tmp_path / "cfg")
    model = open_clip.create_model(name)
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    data = write_fake_eval_set(tmp_path / "es", n_objects=(2,), per_setting=6)
    out = tmp_path / "res.json"
    assert cli.main(["comco", "--model", name, "--pretrained", str(weights), "--data", str(data),
                     "--probes", "tor,ior,i2tor,itm", "--items", "12", "--no-progress", "--out", str(out)]) == 0
    got = json.loads(out.read_text())["results"]
    adapter = ClipAdapter.from_open_clip(name, str(weights))
    prepared = prepare_suite(adapter, load_eval_set(data), probes=("tor", "ior", "i2tor", "itm"),
                             n_objects=(2,), items_per_probe=12, progress=False)
    want = json.loads(json.dumps(run_suite(adapter, prepared)))
    assert got == want
    assert got["tor"]["2"]["n_items"] == 12 and got["ior"]["2"]["n_items"] == 12


@pytest.mark.filterwarnings("ignore:items_per_setting")
def test_cli_without_data_renders_default_set_at_model_size(tmp_path, monkeypatch):
    import data_prep.comco

    from _clip_fixtures import register_tiny

    sizes = []
    real = data_prep.comco.write_eval_set

    def small(out_dir, **kw):
        sizes.append(kw["image_size"])
        return real(out_dir, **{**kw, "n_objects": (2,), "items_per_setting": 4})

    monkeypatch.setattr(data_prep.comco, "write_eval_set", small)
    name = register_tiny(tmp_path / "cfg")
    weights = tmp_path / "w.pt"
    torch.save(open_clip.create_model(name).state_dict(), weights)
    out = tmp_path / "res.json"
    argv = ["comco", "--model", name, "--pretrained", str(weights), "--cache-dir", str(tmp_path / "cache"),
            "--probes", "ior,itm", "--no-progress", "--out", str(out)]
    assert cli.main(argv) == 0 and cli.main(argv) == 0
    assert sizes == [32]  # the tiny model's input size, rendered once
    rec = json.loads(out.read_text())
    assert rec["eval_set"].endswith("comco-objects-seed0-px32") and rec["results"]["ior"]["2"]["n_items"] == 8
    # --eval-set-blocks renders (once) the larger set the training callback uses, in its own cache folder
    sizes.clear()
    assert cli.main([*argv, "--eval-set-blocks", "2"]) == 0
    assert sizes == [32] and json.loads(out.read_text())["eval_set"].endswith("comco-objects-seed0-px32-b2d")


def test_default_eval_set_bounds_n_for_cli_and_callback(tmp_path):
    """Without an eval set of one's own, n must be one the default set holds (eval.eval_sets says which)."""
    from eval.callback import BiasEvalCallback
    from eval.eval_sets import DEFAULT_N_OBJECTS

    bad = max(DEFAULT_N_OBJECTS) + 1
    args = cli.build_parser().parse_args(["comco", "--model", "fake", "--cache-dir", str(tmp_path), "--n-objects",
                                          str(bad), "--out", str(tmp_path / "r.json")])
    with pytest.raises(SystemExit, match=rf"--n-objects \[{bad}\]: the default eval set holds n in 2\.\.5"):
        cli.run_comco(args, adapter_factory=_fake)
    with pytest.raises(ValueError, match=rf"n_objects \[{bad}\]: the default eval set holds n in 2\.\.5"):
        BiasEvalCallback(n_objects=[bad], cache_dir=str(tmp_path))


def test_retrieval_table_prints_the_three_views_with_intervals():
    import torch

    from eval.cli import format_results
    from eval.probes import tor

    names = torch.eye(6)
    targets = torch.tensor([[0, 1, 2], [3, 4, 5]] * 15)
    captions = names[targets[:, 0]]  # a pure first-object encoder
    lines = format_results({"tor": {3: tor(captions, names, targets)}}).splitlines()
    row = {line.split()[1]: line for line in lines if line.startswith("  3  ")}
    assert set(row) == {"cond", "uncond", "own"}
    assert "1.000   0.000   0.000   0.000         30  +1.000 [" in row["uncond"]
    assert row["own"].split()[2:5] == ["1.000", "0.000", "0.000"] and "+1.000 [" in row["own"]
    assert "15/30" in row["cond"] and "[" not in row["cond"]  # 15 < MIN_CONDITIONAL: no index, no interval
