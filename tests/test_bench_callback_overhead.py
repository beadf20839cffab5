"""bench/bias_callback_overhead.py takes the quickstart's cadence and probe items from its config."""
from __future__ import annotations

import yaml

from _scripts import load_script

def _load():
    return load_script("bench/bias_callback_overhead.py", "bench_bias_callback_overhead")


def test_settings_are_the_quickstart_configs(tmp_path):
    bench = _load()
    real = yaml.safe_load(bench.QUICKSTART.read_text())
    got = bench.quickstart_settings()
    cb = next(c["init_args"] for c in real["trainer"]["callbacks"] if c["class_path"].endswith("BiasEvalCallback"))
    assert got["callback"] == cb  # every init_arg, no copies of its own
    assert (got["batch"], got["max_steps"]) == (real["data"]["batch_size"], real["trainer"]["max_steps"])
    other = tmp_path / "q.yaml"
    other.write_text(yaml.safe_dump({"model": {"model_name": "clip-micro"}, "data": {"batch_size": 32},
                                     "trainer": {"max_steps": 100, "callbacks": [
                                         {"class_path": "eval.callback.BiasEvalCallback",
                                          "init_args": {"evaluations_per_run": 4, "items_per_probe": 62,
                                                        "probes": ["tor"], "n_objects": [2],
                                                        "itm_distractors": 3}}]}}))
    got = bench.quickstart_settings(other)
    assert got == {"model": "clip-micro", "batch": 32, "max_steps": 100,
                   "callback": {"evaluations_per_run": 4, "items_per_probe": 62, "probes": ["tor"],
                                "n_objects": [2], "itm_distractors": 3}}
