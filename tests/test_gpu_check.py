"""bench/gpu_check.py: the pure helpers (peak table, MFU, the data-bound verdict, parsers) and
``bash bench/gpu_check.sh --smoke`` end to end on the CPU."""
from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from _scripts import REPO, load_script

gc = load_script("bench/gpu_check.py", "bench_gpu_check")


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA A10G", 125.0),
    ("NVIDIA A10", 125.0), ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0),
    ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA GeForce RTX 3090", 71.0), ("nvidia h200", 989.0),
    ("Tesla V100-SXM2-16GB", None),
])
def test_peak_is_the_longest_name_substring(name, peak):
    assert gc.peak_tflops(name) == peak


def test_mfu_against_a_hand_computation():
    # 2,000 samples/s x 30 GFLOP = 60 TFLOP/s; of 989 TFLOP/s: 6.07 %; over 2 devices half of it
    assert gc.mfu(2000, 30e9, 989.0) == pytest.approx(60 / 989)
    assert gc.mfu(2000, 30e9, 989.0, devices=2) == pytest.approx(30 / 989)
    value, words = gc.mfu_entry(2000, {"flops_per_sample": 30e9, "text_len_mean": 17.0, "context_length": 77},
                                {"device": "NVIDIA H200", "peak_tflops": 989.0})
    assert value == pytest.approx(0.0607, abs=1e-4) and words.startswith("MFU 6.1 % (30 GFLOP/sample")


def test_mfu_is_na_on_cpu_and_on_an_unknown_device():
    flops = {"flops_per_sample": 1e9, "text_len_mean": 10.0, "context_length": 77}
    assert gc.mfu_entry(100, flops, {"device": "cpu", "peak_tflops": None})[0] == "n/a"
    value, words = gc.mfu_entry(100, flops, {"device": "Tesla V100", "peak_tflops": None})
    assert value == "n/a"
    assert words.startswith("MFU n/a (unknown device Tesla V100: add its bf16 peak to PEAKS in bench/gpu_check.py")


@pytest.mark.parametrize("loader, step, margin, verdict", [
    (900, 1000, 0.10, "data-bound"), (1050, 1000, 0.10, "data-bound"),  # no headroom over the step
    (2000, 1000, 0.10, "compute-bound"), (1050, 1000, 0.0, "compute-bound"), (999, 1000, 0.0, "data-bound"),
])
def test_data_bound_verdict(loader, step, margin, verdict):
    assert gc.bound_verdict(loader, step, margin) == verdict


def test_steady_samples_per_s_skips_warmup_evaluations_and_the_last_step():
    rows = [{"step": "0", "train/samples_per_sec": ""}, {"step": "1", "train/samples_per_sec": ""},
            {"step": "2", "train/samples_per_sec": "10"},  # warm-up
            {"step": "3", "train/samples_per_sec": "100"}, {"step": "4", "train/samples_per_sec": "5"},  # 4: evaluated
            {"step": "5", "train/samples_per_sec": "200"}, {"step": "6", "train/samples_per_sec": "1"}]  # 6: last
    rate, used = gc.steady_samples_per_s(rows, skip=2, exclude={4})
    assert used == 2 and rate == pytest.approx(2 / (1 / 100 + 1 / 200))  # harmonic mean = samples / seconds
    with pytest.raises(ValueError, match="after warm-up step 6"):
        gc.steady_samples_per_s(rows, skip=6, exclude=set())


def test_callback_share_parsing_and_projection():
    text = "Run finished: runs/x/ (12 steps)\n  bias probes: 7 evaluations, 6.3 s = 3.0 % of the run (+ 1.0 s once)\n"
    cost = gc.parse_probe_cost(text)
    assert cost["evaluations"] == 7 and cost["eval_seconds"] == 6.3 and cost["share"] == pytest.approx(0.03)
    assert gc.parse_probe_cost("Run finished: runs/x/") is None
    # 81 evaluations of 2 s against 40,000 steps of 0.1 s: 162 / (162 + 4000)
    assert gc.projected_share(2.0, 0.1, 40_000, 81) == pytest.approx(162 / 4162)


def test_memory_parsers_read_the_benches_lines():
    gc_text = ("grad_checkpointing=False  step 0.210 s (median of 3, min 0.200)  autograd-saved 140.3 MiB  peak 900 MiB\n"
               "grad_checkpointing=True   step 0.256 s (median of 3, min 0.250)  autograd-saved 17.8 MiB  peak 300 MiB\n")
    parsed = gc.parse_grad_checkpointing(gc_text)
    assert parsed["off"] == {"step_s": 0.21, "autograd_saved_mib": 140.3, "cuda_peak_mib": 900.0}
    assert parsed["on"]["autograd_saved_mib"] == 17.8
    ca_text = ("accumulate_contrastive=1   micro-batch  256  step 0.397 s (median of 3, min 0.390) x1.00  "
               "autograd-saved peak 274.6 MiB x1.00\n"
               "accumulate_contrastive=8   micro-batch   32  step 0.591 s (median of 3, min 0.580) x1.49  "
               "autograd-saved peak 41.6 MiB x0.15\n")
    ks = gc.parse_contrastive(ca_text)
    assert ks["8"] == {"step_s": 0.591, "autograd_saved_mib": 41.6, "cuda_peak_mib": None, "micro_batch": 32}
    with pytest.raises(ValueError):
        gc.parse_grad_checkpointing("nothing")


def test_out_inside_the_repository_is_refused():
    with pytest.raises(SystemExit):
        gc.main(["--smoke", "--out", str(REPO / "gpu_check_out")])
    assert not (REPO / "gpu_check_out").exists()


def test_stages_past_the_budget_fail_one_by_one_and_the_exit_status_says_so(tmp_path, capsys):
    assert gc.main(["--smoke", "--out", str(tmp_path), "--minutes", "0.01"]) == 1
    printed = capsys.readouterr().out
    for number, name in enumerate(["corpus", "train", "ddp", "loader", "callback", "memory"]):
        assert f"{number}. {name}: FAILED: skipped: the --minutes budget is spent" in printed
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(results["errors"]) == {"device", "corpus", "train", "ddp", "loader", "callback", "memory"}


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_smoke_runs_every_stage_on_the_cpu(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--out", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for number in range(6):
        assert f"\n{number}. " in proc.stdout
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    stages = results["stages"]
    assert results["errors"] == {}
    assert _positive(stages["train"]["samples_per_s"]) and stages["train"]["mfu"] == "n/a"
    assert _positive(stages["train"]["flops_per_sample"])
    assert _positive(stages["ddp"]["samples_per_s"])
    assert _positive(stages["loader"]["samples_per_s"])
    assert stages["loader"]["verdict"] in ("data-bound", "compute-bound")
    assert 0 <= stages["callback"]["share"] <= 1 and 0 <= stages["callback"]["projected_share"] <= 1
    memory = stages["memory"]
    assert all(_positive(memory["grad_checkpointing"][k]["autograd_saved_mib"]) for k in ("off", "on"))
    assert sorted(memory["contrastive_accumulation"]["ks"], key=int) == ["1", "4", "8"]
    assert all(_positive(v["autograd_saved_mib"]) for v in memory["contrastive_accumulation"]["ks"].values())
    assert "python -m train fit --config laion_small.yaml" in stages["train"]["command"]
    assert (tmp_path / "gpu_check.log").is_file()
