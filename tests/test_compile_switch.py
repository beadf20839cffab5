"""model.compile_model: torch.compile of the training forward, same loss and gradients, same state_dict."""
from __future__ import annotations

import pytest
import torch

from _clip_fixtures import loss_and_grads
from train.module import CLIPModule


def _step(module: CLIPModule) -> tuple[float, dict[str, torch.Tensor]]:
    return loss_and_grads(module, [f"a photo of a {w}" for w in ("dog", "cat and a car", "tree", "cup")])


def test_compiled_forward_gives_the_same_loss_gradients_and_state_dict(monkeypatch):
    compiled = []
    original = torch.nn.Module.compile

    def eager_compile(self, *args, **kwargs):  # dynamo traces the real forward; no C++ build in CI
        compiled.append(type(self).__name__)
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    torch.manual_seed(0)
    plain = CLIPModule("clip-micro")
    torch.manual_seed(0)
    module = CLIPModule("clip-micro", compile_model=True)
    assert compiled == ["CLIP"]
    assert list(module.state_dict()) == list(plain.state_dict())  # checkpoints do not change
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    loss1, g1 = _step(module)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames  # the forward went through dynamo
    loss0, g0 = _step(plain)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert set(g1) == set(g0)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_switch_is_checked():
    with pytest.raises(ValueError, match="compile_model must be true or false, got 'yes'"):
        CLIPModule("clip-micro", compile_model="yes")
