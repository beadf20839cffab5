"""``python -m eval report --across-seeds`` (eval/seed_report.py): init/final indices per config and seed."""
import json
from pathlib import Path

import pytest

from eval import seed_report as mod
from eval.cli import main as eval_main

REPO = Path(__file__).resolve().parents[1]


def _report(runs, *args) -> int:
    return eval_main(["report", *map(str, runs), "--across-seeds", *args])


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
def test_per_seed_rows_take_first_and_last_record(tmp_path, legacy):
    runs = [_write_run(tmp_path, "exp-baseline-s0", [0.1, 0.5, 0.3], [0.0, 0.2, 0.4], legacy),
            _write_run(tmp_path, "exp-baseline-s1", [0.2, 0.0, -0.1], [0.1, 0.1, 0.1], legacy),
            _write_run(tmp_path, "not-a-sweep-run", [9.0], [9.0], legacy)]
    out = tmp_path / "out"
    assert _report(runs, "--out", str(out)) == 0
    text = (out / "summary.md").read_text()
    assert "| baseline | 0 | +0.100 → +0.300 (N=5) | -0.100 → -0.300 (N=5) |" in text
    assert "| baseline | 1 | +0.200 → -0.100 (N=5)" in text
    assert "+0.000 → +0.400 (pairs S1=12, S2=12)" in text
    assert "not-a-sweep" not in text and "+9.000" not in text
    assert (out / "across_seeds.png").stat().st_size > 1000


def _write_metrics(run: Path, r1: float) -> None:
    (run / "metrics.csv").write_text(f"step,train/loss,val/i2t_R@1\n0,4.8,\n9,3.0,{r1 / 2}\n19,2.5,{r1}\n20,2.4,\n")


def test_changes_get_t_intervals_across_seeds_and_a_paired_comparison_with_the_baseline(tmp_path):
    """Hand-computed: baseline changes (+0.2, +0.1, +0.3) -> mean +0.2, sd 0.1, half-width 4.303 * 0.1 / sqrt(3);
    treated changes are the baseline's minus (0.10, 0.12, 0.11) per seed -> the paired difference is -0.11
    with sd 0.01 (beyond noise), while an unpaired look would drown it in the seeds' spread."""
    base_changes, cuts = [0.2, 0.1, 0.3], [0.10, 0.12, 0.11]
    runs = []
    for seed, (c, cut) in enumerate(zip(base_changes, cuts)):
        init = 0.05 * seed
        runs.append(_write_run(tmp_path, f"exp-baseline-s{seed}", [init, init + c], [0.0, 0.1], legacy=False))
        runs.append(_write_run(tmp_path, f"exp-shuffle-s{seed}", [init, init + c - cut], [0.0, 0.1], legacy=False))
        _write_metrics(runs[-2], 0.10 + 0.01 * seed)
        _write_metrics(runs[-1], 0.10 + 0.01 * seed - 0.02)
    stats = mod.statistics(mod.collect(runs))
    label = mod.INDICES[0][0]
    base = stats["baseline"][label]["change"]
    half = 4.303 * 0.1 / 3 ** 0.5
    assert base.n == 3 and base.mean == pytest.approx(0.2) and base.lo == pytest.approx(0.2 - half, abs=1e-9)
    paired = stats["shuffle"][label]["vs_baseline"]
    assert paired.mean == pytest.approx(-0.11) and paired.hi == pytest.approx(-0.11 + 4.303 * 0.01 / 3 ** 0.5)
    assert paired.beyond_noise and not stats["shuffle"]["ITM gap S1-S2"]["vs_baseline"].beyond_noise
    r1 = stats["shuffle"][mod.RETRIEVAL[0]]
    assert r1["final"].mean == pytest.approx(0.09) and r1["vs_baseline"].mean == pytest.approx(-0.02)
    assert stats["baseline"][label]["vs_baseline"] is None

    doc = tmp_path / "results.md"
    doc.write_text(f"# x\nbefore\n{mod.BEGIN}\nold numbers\n{mod.END}\nafter\n")
    out = tmp_path / "fig" / "sweep"
    assert _report(runs, "--out", str(out), "--results-block", str(doc), "--command", "CMD") == 0
    text = doc.read_text()
    assert "old numbers" not in text and text.startswith("# x\nbefore\n") and text.endswith(f"{mod.END}\nafter\n")
    assert "Reproduce: `CMD`" in text and "-0.110 [-0.135, -0.085] **✱**" in text
    assert sorted(p.name for p in out.iterdir()) == ["across_seeds.png"]  # the numbers live in the doc only


def test_a_results_file_without_its_block_is_refused_before_any_work(tmp_path):
    run = _write_run(tmp_path, "exp-baseline-s0", [0.1, 0.4], [0.0, 0.1], legacy=False)
    doc = tmp_path / "results.md"
    doc.write_text("# no block here\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="has no <!-- results:begin --> ... <!-- results:end --> block"):
        _report([run], "--out", str(out), "--results-block", str(doc))
    assert doc.read_text() == "# no block here\n" and not (out / "across_seeds.png").exists()
    with pytest.raises(SystemExit, match="--results-block needs --across-seeds"):
        eval_main(["report", str(run), "--results-block", str(doc)])


def test_one_seed_gives_no_interval_never_a_number_built_on_one_run(tmp_path):
    run = _write_run(tmp_path, "exp-baseline-s0", [0.1, 0.4], [0.0, 0.1], legacy=False)
    text = mod.markdown(mod.collect([run]), "CMD")
    assert "+0.300 (interval n/a, N = 1)" in text and "[" not in text.split("Per seed")[0].split("|---|")[1]


def test_t_quantiles_and_seed_mean_match_scipy():
    from eval.seed_stats import seed_mean, t975

    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 10, 30, 31, 60, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-3)
    xs = [0.3, -0.1, 0.25, 0.4]
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=sum(xs) / 4, scale=stats.sem(xs))
    s = seed_mean(xs + [None])
    assert s.n == 4 and s.lo == pytest.approx(lo, abs=1e-3) and s.hi == pytest.approx(hi, abs=1e-3)


def test_sweep_script_refuses_an_unknown_configuration_before_any_run(tmp_path):
    import os
    import subprocess

    res = subprocess.run(["bash", str(REPO / "experiments" / "bias_mitigation.sh")], capture_output=True, text=True,
                         env={**os.environ, "RUNS": "baseline caption_shufle", "SEEDS": "0"}, timeout=60)
    assert res.returncode == 2 and "no configs/mitigation/caption_shufle.yaml" in res.stderr
    # the trade-off experiment is the same script with its own configurations, every one of them present
    res = subprocess.run(["bash", str(REPO / "experiments" / "compositional_tradeoff.sh")], capture_output=True,
                         text=True, env={**os.environ, "RUNS": "baseline hard_negativs", "SEEDS": "0"}, timeout=60)
    assert res.returncode == 2 and "no configs/mitigation/hard_negativs.yaml" in res.stderr
    script = (REPO / "experiments" / "compositional_tradeoff.sh").read_text()
    runs = script.split('DEFAULT_RUNS="')[1].split('"')[0].split()
    assert all((REPO / "configs" / "mitigation" / f"{r}.yaml").is_file() for r in runs if r != "baseline")


def test_unfinished_runs_and_runs_without_step_0_are_left_out_not_counted_as_no_change(tmp_path, capsys):
    done = _write_run(tmp_path, "exp-baseline-s0", [0.1, 0.2, 0.5], [0.0, 0.1, 0.2], legacy=False)
    killed = _write_run(tmp_path, "exp-baseline-s1", [0.3], [0.0], legacy=False)  # only its step-0 evaluation
    late = _write_run(tmp_path, "exp-baseline-s2", [0.3, 0.3, 0.6], [0.0, 0.0, 0.0], legacy=False)
    lines = (late / "bias.jsonl").read_text().splitlines()[2:]  # drop the step-0 records
    (late / "bias.jsonl").write_text("\n".join(lines) + "\n")
    table = mod.collect([done, killed, late])
    assert list(table["baseline"]) == [0]
    err = capsys.readouterr().err
    assert "left out" in err and "exp-baseline-s1" in err and "exp-baseline-s2" in err


def test_compositional_indices_join_when_present_and_the_tradeoff_figure(tmp_path):
    """Records with n_objects null (the compositional probes) add their columns and a trade-off plot;
    runs without them keep the paper's columns only."""
    runs = []
    for config, swap in (("baseline", (0.5, 0.8)), ("caption_shuffle", (0.5, 0.55))):
        for seed in (0, 1):
            run = _write_run(tmp_path, f"exp-{config}-s{seed}", [0.1, 0.4 - 0.3 * (config != "baseline")], [0.0, 0.1],
                             legacy=False)
            with open(run / "bias.jsonl", "a") as f:
                for step, value in enumerate(swap):
                    res = {"summary": {"swap_obj": _entry(value + 0.01 * seed, "N=248")}}
                    f.write(json.dumps({"step": step * 10, "samples_seen": step * 80, "probe": "compositional",
                                        "n_objects": None, "result": res}) + "\n")
            runs.append(run)
    out = tmp_path / "out"
    assert _report(runs, "--out", str(out)) == 0
    text = (out / "summary.md").read_text()
    assert "swap_obj acc." in text and "+0.500 → +0.800 (N=248)" in text and "replace_rel acc." not in text
    assert (out / mod.TRADEOFF_FILE).stat().st_size > 1000
    table = mod.collect(runs)
    assert table["caption_shuffle"][1]["swap_obj acc."] == (0.51, 0.56, "N=248")
    plain = tmp_path / "plain"
    assert _report(runs[:0] + [_write_run(tmp_path, "exp-baseline-s5", [0.1, 0.2], [0.0, 0.1])], "--out", str(plain)) == 0
    assert "swap_obj" not in (plain / "summary.md").read_text() and not (plain / mod.TRADEOFF_FILE).exists()
