"""experiments/summarize.py: init/final indices per config and seed, from bias.jsonl."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("summarize", REPO / "experiments" / "summarize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _entry(value, denominator):
    return {"value": value, "denominator": denominator}


def _write_run(root: Path, name: str, tor_values: list[float], gap_values: list[float], legacy: bool = True) -> Path:
    """Records as older runs wrote them (indices at the top of each result only), or, with
    ``legacy=False``, with the indices only under ``summary`` (no top-level copies)."""
    run = root / name
    run.mkdir()
    with open(run / "bias.jsonl", "w") as f:
        for step, (tor, gap) in enumerate(zip(tor_values, gap_values)):
            if legacy:
                tor_res = {"order_bias": tor, "n_items": 5, "variants": {"photo": {"order_bias": -tor, "n_items": 5}}}
                itm_res = {"gap": gap, "s1": {"total": 12}, "s2": {"total": 12}}
            else:
                tor_res = {"n_items": 5, "summary": {"order_bias": _entry(tor, "N=5")},
                           "variants": {"photo": {"summary": {"order_bias": _entry(-tor, "N=5")}}}}
                itm_res = {"summary": {"gap": _entry(gap, "pairs S1=12, S2=12")}}
            for probe, res in (("tor", tor_res), ("itm", itm_res)):
                f.write(json.dumps({"step": step * 10, "samples_seen": step * 80, "probe": probe,
                                    "n_objects": 3, "result": res}) + "\n")
    return run


@pytest.mark.parametrize("legacy", [True, False], ids=["old-records-top-level-indices", "summary-key-only"])
def test_summary_takes_first_and_last_record_per_seed(tmp_path, legacy):
    mod = _load()
    runs = [_write_run(tmp_path, "exp-base-s0", [0.1, 0.5, 0.3], [0.0, 0.2, 0.4], legacy),
            _write_run(tmp_path, "exp-base-s1", [0.2, 0.0, -0.1], [0.1, 0.1, 0.1], legacy),
            _write_run(tmp_path, "not-a-sweep-run", [9.0], [9.0], legacy)]
    out = tmp_path / "out" / "summary"
    assert mod.main([str(r) for r in runs] + ["--out", str(out)]) == 0
    text = out.with_suffix(".md").read_text()
    assert "| base | 0 | 160 | +0.100 → +0.300 (N=5) | -0.100 → -0.300 (N=5) |" in text
    assert "| base | 1 | 160 | +0.200 → -0.100 (N=5)" in text
    assert "+0.000 → +0.400 (pairs S1=12, S2=12)" in text
    assert "not-a-sweep" not in text and "+9.000" not in text
    assert out.with_suffix(".png").stat().st_size > 1000
