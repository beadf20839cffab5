"""``python -m eval report``: records on disk -> figures + markdown summary with known numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from eval import probes
from eval.cli import main
from eval.plots import series
from eval.records import append_records, flatten, make_records, read_records
from eval.report import run_labels, summary_table, view_rows, views_table
from eval.stats import proportion

GALLERY = torch.eye(4)  # object i embeds as e_i
TARGETS = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])


def _tor(first_wins: int) -> dict:
    """TOR result where the first-mentioned object wins for ``first_wins`` of 4 captions, else the second."""
    win = torch.tensor([int(TARGETS[i, 0 if i < first_wins else 1]) for i in range(4)])
    lose = TARGETS.sum(1) - win  # the other object of each caption ranks second
    query = F.normalize(GALLERY[win] + 0.1 * GALLERY[lose], dim=-1)
    return probes.tor(query, GALLERY, TARGETS)


def _itm(s1: int, s2: int, total: int = 10) -> dict:
    return probes.itm(proportion(s1, total), proportion(s2, total))


def _write_run(run_dir, steps_and_wins):
    for step, wins, itm in steps_and_wins:
        append_records(run_dir / "bias.jsonl",
                       make_records({"tor": {2: _tor(wins)}, "itm": {3: _itm(*itm)}}, step, step * 64))


@pytest.fixture
def two_runs(tmp_path):
    base, mitig = tmp_path / "runs" / "baseline", tmp_path / "runs" / "shuffled"
    _write_run(base, [(0, 2, (5, 5)), (10, 3, (8, 4)), (20, 4, (9, 2))])
    _write_run(mitig, [(0, 2, (5, 5)), (20, 2, (7, 7))])
    return base, mitig


def test_hand_built_tor_results_have_the_expected_index():
    assert _tor(4)["unconditional"]["pos1"]["share"] == 1.0 and _tor(4)["summary"]["order_bias"]["value"] == 1.0
    assert _tor(2)["summary"]["order_bias"]["value"] == 0.0 and _tor(3)["summary"]["order_bias"]["value"] == 0.5


def test_report_writes_figures_and_summary(two_runs, tmp_path, capsys):
    base, mitig = two_runs
    out = tmp_path / "report"
    assert main(["report", str(base), str(mitig), "--out", str(out)]) == 0
    for name in ("tor.png", "itm.png"):
        assert (out / name).stat().st_size > 5000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    # order bias 0 -> 1 over 1280 samples for the baseline, 0 -> 0 for the mitigation
    assert "| baseline | tor | 2 | order_bias | +0.000 (0) | +1.000 (1280) | +1.000 | N=4 → N=4 |" in summary
    assert "| shuffled | tor | 2 | order_bias | +0.000 (0) | +0.000 (1280) | +0.000 | N=4 → N=4 |" in summary
    # ITM gap 0 -> 0.7 with its pair counts
    assert "| baseline | itm | 3 | gap | +0.000 (0) | +0.700 (1280) | +0.700 | pairs S1=10, S2=10 → " in summary
    assert "![tor](tor.png)" in summary


def test_curves_hold_the_recorded_shares(two_runs):
    base, _ = two_runs
    tor = [r for r in read_records(base) if r["probe"] == "tor"]
    s = series(tor)
    xs, ys = s["unconditional"]["pos1"]
    assert xs == [0.0, 640.0, 1280.0] and ys == [0.5, 0.75, 1.0]
    assert s["index"]["order_bias"][1] == [0.0, 0.5, 1.0]
    assert "none" in s["unconditional"] and "conditional" in s
    itm = series([r for r in read_records(base) if r["probe"] == "itm"])
    assert itm["itm"]["s2"][1] == [0.5, 0.4, 0.2]


def test_flatten_names_every_number():
    flat = flatten(_tor(3), "bias/tor/n2")
    assert flat["bias/tor/n2/unconditional/pos1"] == 0.75
    assert flat["bias/tor/n2/unconditional/pos1/count"] == 3 and flat["bias/tor/n2/unconditional/pos1/total"] == 4
    lo, hi = flat["bias/tor/n2/unconditional/pos1/ci_lo"], flat["bias/tor/n2/unconditional/pos1/ci_hi"]
    assert lo < 0.75 < hi
    assert flat["bias/tor/n2/order_bias"] == 0.5
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    # a zero denominator yields no share (not a division by zero) but keeps its counts
    empty = flatten({"x": proportion(0, 0)}, "p")
    assert empty == {"p/x/count": 0.0, "p/x/total": 0.0}


def test_reader_skips_torn_last_line_and_keeps_latest_duplicate(tmp_path):
    _write_run(tmp_path, [(0, 2, (5, 5)), (10, 3, (8, 4))])
    _write_run(tmp_path, [(10, 4, (8, 4))])  # a resumed run re-evaluated step 10
    with open(tmp_path / "bias.jsonl", "a") as fh:
        fh.write('{"step": 20, "samp')
    recs = [r for r in read_records(tmp_path) if r["probe"] == "tor"]
    assert [r["step"] for r in recs] == [0, 10] and recs[1]["result"]["summary"]["order_bias"]["value"] == 1.0


def test_bad_input_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no bias.jsonl in .*nothing"):
        main(["report", str(tmp_path / "nothing")])
    (tmp_path / "bias.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    with pytest.raises(ValueError, match="line 1 lacks"):
        read_records(tmp_path)
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run"]) == ["a/run", "b/run"]
    assert "no summary indices" in summary_table({"r": []})


def _without_top_level_indices(result: dict) -> dict:
    """A probe result whose indices live only under ``summary`` (no ``order_bias``/``gap`` at the top)."""
    return {k: v for k, v in result.items() if k not in ("order_bias", "order_bias_conditional", "gap")}


def test_plots_report_and_loggers_read_the_summary_key_only(tmp_path):
    run = tmp_path / "runs" / "summary_only"
    for step, wins, (s1, s2) in ((0, 2, (5, 5)), (20, 4, (9, 2))):
        tor = _without_top_level_indices(_tor(wins))
        tor["decoy_bias"] = 0.99  # a suffix-named number outside "summary" is not an index
        itm = _without_top_level_indices(_itm(s1, s2))
        assert "order_bias" not in tor and "gap" not in itm and "order_bias" in tor["summary"]
        append_records(run / "bias.jsonl", make_records({"tor": {2: tor}, "itm": {3: itm}}, step, step * 64))
    recs = read_records(run)
    summary = summary_table({"summary_only": recs})
    assert "| summary_only | tor | 2 | order_bias | +0.000 (0) | +1.000 (1280) | +1.000 | N=4 → N=4 |" in summary
    assert "| summary_only | itm | 3 | gap | +0.000 (0) | +0.700 (1280) | +0.700 | pairs S1=10, S2=10 → " in summary
    assert "decoy" not in summary
    s = series([r for r in recs if r["probe"] == "tor"])
    assert s["index"]["order_bias"][1] == [0.0, 1.0] and "decoy_bias" not in s["index"]
    flat = flatten([r for r in recs if r["probe"] == "tor"][-1]["result"], "bias/tor/n2")
    assert flat["bias/tor/n2/order_bias"] == 1.0  # the logged name has no "summary/" in it
    assert not any("/summary" in k for k in flat)


def test_old_bias_jsonl_without_summary_reads_as_before(tmp_path):
    """Records written before results had ``summary`` (indices only at the top) still report."""
    new, old = tmp_path / "new", tmp_path / "old"
    _write_run(new, [(0, 2, (5, 5)), (20, 4, (9, 2))])
    old.mkdir()
    with open(old / "bias.jsonl", "w") as fh:
        for line in (new / "bias.jsonl").read_text().splitlines():
            rec = json.loads(line)
            summary = rec["result"].pop("summary")  # old files: the indices were top-level terms
            rec["result"].update({k: e["value"] for k, e in summary.items()})
            fh.write(json.dumps(rec) + "\n")
    assert "summary" not in (old / "bias.jsonl").read_text()
    table = {name: summary_table({"r": read_records(d)}) for name, d in (("new", new), ("old", old))}
    def without_ci(text: str) -> list[str]:  # old records kept no retrieval interval: last column differs
        return [line.rsplit("|", 2)[0] for line in text.splitlines()]

    assert without_ci(table["old"]) == without_ci(table["new"]) and "order_bias_conditional" in table["old"]
    assert "| [-0.980, +0.980] → [+1.000, +1.000] |" in table["new"] and "| - → - |" in table["old"]
    old_summary, new_summary = (read_records(d)[0]["result"]["summary"] for d in (old, new))
    assert set(old_summary) == set(new_summary)
    for key, entry in new_summary.items():  # old records kept no retrieval interval: ci None, the rest equal
        assert old_summary[key] == {**entry, "ci": entry["ci"] if key == "gap" else None}, key


def test_flatten_logs_summary_intervals():
    flat = flatten(_tor(3), "bias/tor/n2")
    lo, hi = flat["bias/tor/n2/order_bias/ci_lo"], flat["bias/tor/n2/order_bias/ci_hi"]
    assert lo < 0.5 < hi and _tor(3)["summary"]["order_bias"]["ci"] == [lo, hi]
    assert "bias/tor/n2/order_bias_conditional/ci_lo" not in flat  # n/a below MIN_CONDITIONAL
    legacy = {"summary": {"order_bias": {"value": 0.5, "denominator": "N=4"}}}  # no "ci" key at all
    assert flatten(legacy, "p") == {"p/order_bias": 0.5}


def test_summary_table_marks_template_variants_and_gives_intervals():
    def tor(wins: int) -> dict:
        res = _tor(wins)
        res.update(template="and_chain", template_split="held_out")
        res["variants"] = {"photo": {**_tor(2), "template": "photo", "template_split": "in_distribution"},
                           "there_is": {**_tor(4 - wins), "template": "there_is", "template_split": "held_out"}}
        return res

    recs = [r for step, wins in ((0, 2), (20, 4)) for r in make_records({"tor": {2: tor(wins)}}, step, step * 64)]
    table = summary_table({"r": recs})
    assert "| r | tor | 2 | order_bias (held-out template) | +0.000 (0) | +1.000 (1280) |" in table
    assert "| r | tor | 2 | photo/order_bias (in-distribution template) | +0.000 (0) | +0.000 (1280) |" in table
    assert "| r | tor | 2 | there_is/order_bias (held-out template) | +0.000 (0) | -1.000 (1280) |" in table
    ci = _tor(4)["summary"]["order_bias"]["ci"]
    assert f"→ [{ci[0]:+.3f}, {ci[1]:+.3f}] |" in table


def test_view_rows_put_the_conditional_view_next_to_the_others_and_say_na_below_the_minimum():
    # every caption's top-2 are its own two objects (N_cond = 4 of 4); the first wins 3 times
    win = torch.tensor([int(TARGETS[i, 0 if i < 3 else 1]) for i in range(4)])
    query = F.normalize(GALLERY[win] + 0.1 * GALLERY[TARGETS.sum(1) - win], dim=-1)
    few = view_rows(probes.tor(query, GALLERY, TARGETS))  # minimum 20 conditional items: n/a
    assert [r["view"] for r in few] == ["conditional", "unconditional", "own objects"]
    assert few[0]["n"] == "4/4 (100 %)" and few[0]["value"] is None and few[0]["shares"] == "n/a (N = 4)"
    ci = proportion(3, 4)["ci"]
    assert few[1]["value"] == 0.5 and few[1]["shares"].startswith(f"pos1 0.75 [{ci[0]:.2f}, {ci[1]:.2f}] · pos2 0.25")
    assert few[1]["shares"].endswith("none 0.00 [0.00, 0.49]") and few[1]["n"] == "4"
    enough = view_rows(probes.tor(query, GALLERY, TARGETS, min_conditional=2))
    assert enough[0]["value"] == 0.5 and enough[0]["shares"].startswith("pos1 0.75")
    assert enough[0]["ci"][0] < 0.5 < enough[0]["ci"][1]
    assert view_rows(_itm(5, 5)) == []  # not a retrieval probe


def test_report_has_the_three_views_at_the_last_evaluation(two_runs, tmp_path):
    base, _ = two_runs
    out = tmp_path / "report"
    assert main(["report", str(base), "--out", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    assert "## The three views at the last evaluation" in summary
    table = views_table({"baseline": read_records(base / "bias.jsonl")})
    assert table in summary
    rows = [ln for ln in table.splitlines() if ln.startswith("| baseline (step 20) | tor | 2 |")]
    assert [ln.split(" | ")[4] for ln in rows] == ["conditional", "unconditional", "own objects"]
    assert "| n/a (N = 4) | n/a |" in rows[0] and "+1.000 [" in rows[1]
    assert not [ln for ln in table.splitlines() if "| itm |" in ln]
