"""train.optim.adamw: the fused / foreach AdamW give the for-loop implementation's parameters."""
from __future__ import annotations

import pytest
import torch

from train.optim import ADAMW_IMPLS, adamw, adamw_impl, param_groups


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(500, 16)  # like CLIP's token embedding, most of the parameters
        self.fc = torch.nn.Linear(16, 8)
        self.ln = torch.nn.LayerNorm(8)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))


def _steps(impl: str, steps: int, lr: float = 1e-3) -> list[torch.Tensor]:
    """``steps`` AdamW steps on the same fixed gradients (most embedding rows get none, as in training)."""
    torch.manual_seed(0)
    net = _Net()
    opt = adamw(param_groups(net, 0.1), lr=lr, betas=(0.9, 0.98), eps=1e-6, impl=impl)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in net.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** -step
        net.emb.weight.grad[40 + step:] = 0
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("impl", ["fused", "foreach", "auto"])
def test_adamw_impls_equal_the_for_loop(impl):
    start = _steps("for-loop", 0)
    for steps in (1, 5):  # one step (bias correction 1) and several (moments carried, shrinking grads)
        ref, got = _steps("for-loop", steps), _steps(impl, steps)
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # fused kernels reorder float32 ops
        assert all(not torch.equal(a, s) for a, s in zip(ref, start))  # every tensor moved


def test_adamw_foreach_is_bitwise_the_for_loop():
    for a, b in zip(_steps("for-loop", 5), _steps("foreach", 5)):
        assert torch.equal(a, b)


def test_adamw_auto_picks_fused_on_cpu_and_names_unknown():
    groups = param_groups(_Net(), 0.1)
    assert adamw_impl(groups, "auto") == "fused"  # torch >= 2.4 has a fused AdamW kernel for CPU
    opt = adamw(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6)
    assert opt.defaults["fused"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(ValueError, match="valid: " + ", ".join(ADAMW_IMPLS)):
        adamw(groups, lr=1e-3, betas=(0.9, 0.98), eps=1e-6, impl="fast")


def test_fused_not_chosen_where_lightning_refuses_it():
    """Lightning's mixed-precision plugin refuses gradient clipping with a fused optimizer."""
    import lightning as L

    from train.optim import fused_allowed

    groups = param_groups(_Net(), 0.1)
    amp_clip = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert not fused_allowed(amp_clip)
    assert adamw_impl(groups, "auto", allow_fused=fused_allowed(amp_clip)) == "for-loop"  # CPU has no foreach
    for kwargs in ({"precision": "32-true", "gradient_clip_val": 1.0}, {"precision": "bf16-mixed"}):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, **kwargs)
        assert fused_allowed(trainer)
    assert fused_allowed(None)


def test_resume_keeps_todays_adamw_implementation_not_the_checkpoints():
    """torch's load_state_dict brings the saved group's `fused` flag along; the resume hook resets it."""
    from types import SimpleNamespace

    from train.module import CLIPModule

    module = CLIPModule(model_name="clip-micro")
    hp = module.hparams  # the same values as the config: only the implementation differs
    saved, today = (adamw(param_groups(module.model, hp.weight_decay), lr=hp.lr, betas=hp.betas, eps=hp.eps, impl=impl)
                    for impl in ("fused", "foreach"))
    module._adamw_flags = {k: today.param_groups[0][k] for k in ("fused", "foreach")}
    today.load_state_dict(saved.state_dict())
    assert today.param_groups[0]["fused"] is True  # what the hook has to undo
    for group in today.param_groups:  # set by the LR scheduler in a real run
        group["initial_lr"] = module.hparams.lr
    module._trainer = SimpleNamespace(optimizers=[today], lr_scheduler_configs=[])
    module._apply_optimizer_settings_on_resume()
    assert all(g["fused"] in (None, False) and g["foreach"] is True for g in today.param_groups)
