"""bench/step_bench.py (FLOPs from shapes, the in-process step), bench/profile_step.py, and the case
arguments of bench/bench_vs_open_clip.py."""
from __future__ import annotations

import sys

import pytest
import torch

from _scripts import load_script


def _load(name: str):
    return load_script(f"bench/{name}.py", f"bench_{name}")


@pytest.mark.parametrize("trim_text", [True, False])
def test_flops_from_shapes_match_flop_counter_on_clip_tiny(trim_text):
    sb = _load("step_bench")
    step = sb.make_step("clip-tiny", 8, trim_text=trim_text)
    assert (step.text_len < step.texts.shape[1]) == trim_text  # captions end well before the context's 32
    ours = sb.clip_train_flops(step.model, step.text_len)
    counted = sb.counted_train_flops(step)
    assert ours["total"] == ours["vision"] + ours["text"]
    assert ours["total"] == pytest.approx(counted, rel=0.01)  # measured: 0.015 % apart (logits, softmax left out)


def test_step_trains_and_gemm_rate_is_positive():
    sb = _load("step_bench")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    step = sb.make_step("clip-tiny", 4)
    before = step.model.visual.conv1.weight.detach().clone()
    assert torch.isfinite(step.run())
    assert not torch.equal(before, step.model.visual.conv1.weight)
    assert step.optimizer.defaults["fused"] is True  # train.optim.adamw's choice on CPU
    assert sb.gemm_flops_per_s(128, repeats=2) > 0


def test_profile_step_prints_a_table():
    ps = _load("profile_step")
    text = ps.profile_case("quickstart", steps=1, top=5, optimizer_impl="auto", trim_text=True, batch=4)
    assert text.startswith("quickstart: clip-tiny, batch 4, text tower on ")
    assert "aten::" in text and "Self CPU" in text


def test_bench_vs_open_clip_cases():
    b = _load("bench_vs_open_clip")
    a = b.argparse.Namespace(model="clip-tiny", batch_size=64, steps=30, skip=3, laion_batch_size=8, laion_steps=8)
    assert b.case_args(a, "tiny") is a
    laion = b.case_args(a, "laion-text")
    assert (laion.model, laion.batch_size, laion.steps, laion.skip) == ("ViT-B-32", 8, 8, 2)
    import open_clip

    assert open_clip.get_model_config(laion.model)["text_cfg"]["context_length"] == 77
    with pytest.raises(ValueError, match="valid: tiny, laion-text"):
        b.case_args(a, "huge")


def test_roofline_prints_a_percentage_per_variant(monkeypatch, capsys):
    rl = _load("roofline")
    monkeypatch.setattr(sys, "argv", ["roofline.py", "--batch", "4", "--steps", "1", "--rounds", "1",
                                      "--gemm-n", "64", "--threads", str(torch.get_num_threads()),
                                      "--variants", "before", "after"])
    rl.main()
    out = capsys.readouterr().out
    assert out.startswith("fp32 GEMM ceiling: ")
    for name in ("before", "after"):
        line = next(x for x in out.splitlines() if x.startswith(f"{name:6s}: clip-tiny batch 4"))
        assert "% of the GEMM ceiling" in line
    assert "[useful FLOPs: " in out  # before runs the padding too
    assert "after / before samples/s: " in out
