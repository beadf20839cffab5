"""Bias figures built from hand-made records, checked through their matplotlib artists."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
from matplotlib.collections import PolyCollection

from eval.plots import plot_probe, plot_runs, samples_label
from eval.stats import proportion

N = 62


def _retrieval(pos1: int, pos2: int, n_cond: int, cond_value: float | None, ci: bool = True,
               template: str | None = "and_chain", split: str | None = "held_out", variants: dict | None = None) -> dict:
    """A TOR result on N captions, n = 2: pos1/pos2 top-1 counts; conditional index given."""
    bias = (pos1 - pos2) / N

    def entry(value, den):
        out = {"value": value, "denominator": den}
        if ci:
            out["ci"] = None if value is None else [value - 0.1, value + 0.1]
        return out

    res = {"probe": "tor", "labels": ["pos1", "pos2"], "n_items": N, "n_conditional": n_cond,
           "conditional": {"pos1": proportion(min(n_cond, pos1), n_cond), "pos2": proportion(max(0, n_cond - pos1), n_cond)},
           "unconditional": {"pos1": proportion(pos1, N), "pos2": proportion(pos2, N),
                             "none": proportion(N - pos1 - pos2, N)},
           "summary": {"order_bias": entry(bias, f"N={N}"),
                       "order_bias_conditional": entry(cond_value, f"N_cond={n_cond}/{N}")}}
    if ci:  # records from before the intervals had no own-objects view either
        res["own_objects"] = {"pos1": proportion(40, N), "pos2": proportion(22, N)}
        res["summary"]["order_bias_own"] = entry(18 / N, f"N={N}")
    if template is not None:
        res["template"] = template
    if split is not None:
        res["template_split"] = split
    if variants:
        res["variants"] = variants
    return res


def _records(results: list[dict], probe: str = "tor", n: int = 2) -> list[dict]:
    return [{"step": i * 10, "samples_seen": i * 640, "probe": probe, "n_objects": n, "eval_seconds": 1.0,
             "result": r} for i, r in enumerate(results)]


def _tor_run(cond_values=(None, None, None)) -> list[dict]:
    out = []
    for i, cond in enumerate(cond_values):
        variants = {"photo": _retrieval(20 + i, 20, 3, None, template="photo", split="in_distribution"),
                    "there_is": _retrieval(30 + i, 10, 3, None, template="there_is", split="held_out")}
        out.append(_retrieval(30 + 5 * i, 20, 30 if cond is not None else 3, cond, variants=variants))
    return _records(out)


def _axis(fig, suffix: str):
    (ax,) = [a for a in fig.axes if a.get_title().endswith(suffix)]
    return ax


def _curves(ax) -> dict:
    """Line label -> Line2D, for the curves (not the init markers or level lines)."""
    return {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def _bands(ax) -> list[PolyCollection]:
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_title_names_the_run_and_axes_say_what_they_measure():
    fig = plot_probe({"baseline-seed0": _tor_run()}, "tor")
    assert fig._suptitle.get_text() == "TOR · run: baseline-seed0"
    assert _axis(fig, "· index").get_ylabel() == "order bias: share(pos1) − mean share(others)"
    assert "top-1" in _axis(fig, "· unconditional").get_ylabel()
    assert "own" in _axis(fig, "· own_objects").get_ylabel()
    assert _axis(fig, "· index").get_xlabel() == "" and fig.axes[-1].get_xlabel() == "samples seen"


def test_index_bands_come_from_the_summary_ci():
    recs = _tor_run()
    fig = plot_probe({"r": recs}, "tor")
    ax = _axis(fig, "· index")
    curves = _curves(ax)
    assert set(curves) == {"order_bias", "order_bias_own"}  # conditional: n/a everywhere, no curve
    values = [r["result"]["summary"]["order_bias"]["value"] for r in recs]
    assert list(curves["order_bias"].get_ydata()) == pytest.approx(values)
    bands = _bands(ax)
    assert len(bands) == 2  # order_bias and order_bias_own; none for the n/a conditional index
    ys = sorted({round(float(y), 9) for b in bands for y in b.get_paths()[0].vertices[:, 1]})
    expect = sorted({round(v + d, 9) for r in recs for k in ("order_bias", "order_bias_own")
                     for v in [r["result"]["summary"][k]["value"]] for d in (-0.1, 0.1)})
    assert ys == expect


def test_conditional_na_panel_says_so_and_draws_nothing():
    fig = plot_probe({"r": _tor_run()}, "tor")
    ax = _axis(fig, "· conditional")
    assert _curves(ax) == {} and not ax.get_lines()
    assert [t.get_text() for t in ax.texts] == ["n/a (N = 3)"]
    assert [t.get_text() for t in _axis(fig, "· index").texts] == ["conditional n/a (N = 3)"]


def test_conditional_partly_available_keeps_only_defined_points():
    recs = _tor_run(cond_values=(None, 0.4, 0.5))
    fig = plot_probe({"r": recs}, "tor")
    ax = _axis(fig, "· conditional")
    pos1 = _curves(ax)["pos1"].get_ydata()
    assert math.isnan(pos1[0]) and not any(math.isnan(y) for y in pos1[1:])
    assert [t.get_text() for t in ax.texts] == ["n/a at 1 of 3 evaluations (N = 3)"]
    cond = _curves(_axis(fig, "· index"))["order_bias_conditional"].get_ydata()
    assert math.isnan(cond[0]) and list(cond[1:]) == [0.4, 0.5]


def test_every_template_variant_drawn_held_out_dashed():
    recs = _tor_run()
    fig = plot_probe({"r": recs}, "tor")
    ax = _axis(fig, "index by template")
    curves = _curves(ax)
    assert {k: ln.get_linestyle() for k, ln in curves.items()} == {
        "and_chain (held-out)": "--", "photo (in-distribution)": "-", "there_is (held-out)": "--"}
    photo = [r["result"]["variants"]["photo"]["summary"]["order_bias"]["value"] for r in recs]
    assert list(curves["photo (in-distribution)"].get_ydata()) == pytest.approx(photo)
    assert len(_bands(ax)) == 3
    assert "order bias" in ax.get_ylabel()


def test_old_records_without_intervals_draw_no_band():
    recs = _records([_retrieval(30, 20, 3, None, ci=False, split=None, variants={
        "photo": _retrieval(20, 20, 3, None, ci=False, template=None, split=None)}) for _ in range(2)])
    fig = plot_probe({"old": recs}, "tor")
    for title in ("· index", "index by template"):
        assert _bands(_axis(fig, title)) == [], title
    assert set(_curves(_axis(fig, "index by template"))) == {"and_chain", "photo"}  # split unknown: plain label
    assert all(ln.get_linestyle() == "-" for ln in _curves(_axis(fig, "index by template")).values())
    assert not any(a.get_title().endswith("own_objects") for a in fig.axes)


def test_runs_overlaid_with_run_markers_and_itm_gap(tmp_path):
    itm = [{"probe": "itm", "s1": proportion(s1, 100), "s2": proportion(50, 100),
            "summary": {"gap": {"value": (s1 - 50) / 100, "denominator": "pairs S1=100, S2=100",
                                "ci": [(s1 - 50) / 100 - 0.13, (s1 - 50) / 100 + 0.13]}}} for s1 in (50, 70)]
    runs = {"a": _tor_run() + _records(itm, "itm", 3), "b": _tor_run(cond_values=(0.1, 0.2, 0.3))}
    fig = plot_probe(runs, "tor")
    assert fig._suptitle.get_text() == "TOR · runs: a, b"
    curves = _curves(_axis(fig, "· unconditional"))
    assert curves["pos1 [a]"].get_marker() != curves["pos1 [b]"].get_marker()
    assert [t.get_text() for t in _axis(fig, "· conditional").texts] == ["a: n/a (N = 3)"]
    assert "pos1 [b]" in _curves(_axis(fig, "· conditional"))
    fig = plot_probe(runs, "itm")
    ax = _axis(fig, "n=3 · index")
    assert ax.get_ylabel() == "ITM gap: accuracy S1 − S2" and len(_bands(ax)) == 1
    assert not any(a.get_title().endswith("by template") for a in fig.axes)
    paths = plot_runs(runs, tmp_path)
    assert sorted(p.name for p in paths) == ["itm.png", "tor.png"] and all(p.stat().st_size > 5000 for p in paths)


def test_samples_axis_labels_stay_short():
    """Long runs' samples-seen ticks (768,000) printed in full ran into each other."""
    assert [samples_label(x) for x in (0, 500, 40000, 128000, 768000, 1_500_000)] == \
        ["0", "500", "40k", "128k", "768k", "1.5M"]
