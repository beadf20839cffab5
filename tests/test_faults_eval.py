"""Fault cases of the eval room (issue 8): torn ``bias.jsonl``, bad lines in a report, unwritable
outputs found before any work, and the callback's arguments refused in one readable line."""
from __future__ import annotations

import json
import logging

import pytest

from eval import cli
from eval.callback import BiasEvalCallback
from eval.records import append_records, make_records, read_records


def _result(share: float) -> dict:
    return {"order_bias": share, "n_items": 4}


def _records(step: int) -> list[dict]:
    return make_records({"tor": {2: _result(step / 100)}}, step, step * 64)


@pytest.fixture
def afile(tmp_path):
    """A regular file: nothing can be written 'under' it, even as root (chmod does not stop root)."""
    path = tmp_path / "afile"
    path.write_text("not a folder\n")
    return path


def _boom(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran although the output cannot be written")
    return fail


# ---------------------------------------------------------------- item 7: append-only records


def test_torn_last_line_is_cut_before_the_next_append_and_every_record_stays_readable(tmp_path, caplog):
    path = tmp_path / "bias.jsonl"
    append_records(path, _records(0))
    append_records(path, _records(10))
    with path.open("a", encoding="utf-8") as fh:  # killed while writing the step-20 record
        fh.write('{"n_objects": 2, "probe": "tor", "res')
    torn_bytes = len('{"n_objects": 2, "probe": "tor", "res')
    with caplog.at_level(logging.WARNING, logger="eval.records"):
        append_records(path, _records(20))  # the resumed run re-evaluates step 20
    assert [r["step"] for r in read_records(path)] == [0, 10, 20]
    assert all(json.loads(line) for line in path.read_text().splitlines())  # every line is whole
    warning = caplog.text
    assert str(path) in warning and f"{torn_bytes} bytes" in warning


def test_record_that_only_lost_its_newline_is_kept(tmp_path, caplog):
    path = tmp_path / "bias.jsonl"
    append_records(path, _records(0))
    path.write_text(path.read_text().rstrip("\n"))  # killed between the record and its newline
    with caplog.at_level(logging.WARNING, logger="eval.records"):
        append_records(path, _records(10))
    assert [r["step"] for r in read_records(path)] == [0, 10]
    assert "added it" in caplog.text


def test_report_skips_a_bad_middle_line_with_a_warning_and_still_writes(tmp_path, caplog, capsys):
    run = tmp_path / "runs" / "r1"
    for step in (0, 10, 20):
        append_records(run / "bias.jsonl", _records(step))
    lines = (run / "bias.jsonl").read_text().splitlines(keepends=True)
    lines.insert(1, '{"step": 5, "samples_seen": 3\n')  # a torn line that a later append glued over
    (run / "bias.jsonl").write_text("".join(lines))
    out = tmp_path / "report"
    with caplog.at_level(logging.WARNING):
        assert cli.main(["report", str(run), "--out", str(out)]) == 0
    assert "line 2" in caplog.text and "skipped 1 bad line" in caplog.text
    summary = (out / "summary.md").read_text()
    assert "| r1 | tor | 2 | order_bias | +0.000 (0) | +0.200 (1280)" in summary
    assert "Skipped lines" in summary and "line 2" in summary
    assert (out / "tor.png").is_file()
    assert [r["step"] for r in read_records(run)] == [0, 10, 20]


def test_a_file_with_no_record_at_all_is_still_refused(tmp_path):
    (tmp_path / "bias.jsonl").write_text("hello\nworld\n")
    with pytest.raises(ValueError, match="no line is a bias.jsonl record"):
        read_records(tmp_path)


# ---------------------------------------------------------------- item 6: outputs checked first


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_comco_unwritable_out_fails_before_model_or_suite(tmp_path, afile, monkeypatch, where):
    monkeypatch.setattr("eval.suite.prepare_suite", _boom("prepare_suite"))
    monkeypatch.setattr("eval.suite.run_suite", _boom("run_suite"))
    data = tmp_path / "set"
    data.mkdir()
    (data / "manifest.jsonl").write_text("")
    out = afile / "res.json" if where == "under_a_file" else "/proc/clip-bias-lab-test/res.json"
    args = cli.build_parser().parse_args(["comco", "--model", "fake", "--data", str(data), "--out", str(out)])
    with pytest.raises(SystemExit) as err:
        cli.run_comco(args, adapter_factory=_boom("loading the model"))
    assert f"--out {out} cannot be written" in str(err.value)


def test_comco_unwritable_cache_for_the_default_set_fails_first(tmp_path, afile):
    args = cli.build_parser().parse_args(["comco", "--model", "fake", "--cache-dir", str(afile / "cache"),
                                          "--out", str(tmp_path / "res.json")])
    with pytest.raises(SystemExit) as err:
        cli.run_comco(args, adapter_factory=_boom("loading the model"))
    assert "--cache-dir" in str(err.value) and "cannot be written" in str(err.value)


def test_attention_unwritable_out_fails_before_the_model_loads(afile, monkeypatch):
    monkeypatch.setattr(cli, "load_adapter", _boom("loading the model"))
    with pytest.raises(SystemExit) as err:
        cli.main(["attention", "--model", "fake", "--out", str(afile / "att.json")])
    assert f"--out {afile / 'att.json'} cannot be written" in str(err.value)


def test_report_unwritable_out_fails_before_reading_or_plotting(tmp_path, afile, monkeypatch):
    run = tmp_path / "run"
    append_records(run / "bias.jsonl", _records(0))
    monkeypatch.setattr("eval.plots.plot_runs", _boom("plotting"))
    monkeypatch.setattr("eval.report.write_report", _boom("the report"))
    with pytest.raises(SystemExit) as err:
        cli.main(["report", str(run), "--out", str(afile / "rep")])
    assert f"--out {afile / 'rep'} cannot be written" in str(err.value)


# ---------------------------------------------------------------- item 6: the callback's arguments


def test_callback_bad_arguments_give_one_line_naming_each(afile):
    with pytest.raises(ValueError) as err:
        BiasEvalCallback(probes="tor,nope", n_objects=[3], items_per_probe="many", itm_distractors=0,
                         every_n_steps=0, image_size=8, templates=["haiku"], text_encodings=["bpe"],
                         eval_at_end="yes", seed=-1, run_dir=str(afile / "run"))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("BiasEvalCallback (trainer.callbacks")
    for part in ("probes: unknown ['nope']", "items_per_probe must be an integer >= 1, got 'many'",
                 "itm_distractors must be an integer >= 1 or null (all), got 0",
                 "every_n_steps must be an integer >= 1, got 0", "image_size must be an integer >= 16",
                 "templates: unknown ['haiku']", "text_encodings: unknown ['bpe']", "eval_at_end must be true or false",
                 "seed must be an integer >= 0, got -1", f"run_dir {afile / 'run'} cannot be written"):
        assert part in msg, part


def test_callback_good_arguments_are_normalised():
    cb = BiasEvalCallback(probes="TOR, itm", n_objects=[2, 3], items_per_probe="8", every_n_steps=5.0)
    assert cb.suite.probes == ("tor", "itm") and cb.suite.items_per_probe == 8 and cb.every_n_steps == 5
