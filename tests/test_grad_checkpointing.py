"""model.grad_checkpointing: open_clip's activation recomputation in both towers, same gradients."""
from __future__ import annotations

import pytest
import torch

from _clip_fixtures import loss_and_grads
from train.loss import build_loss, contrastive_loss
from train.module import CLIPModule


def _grads(grad_checkpointing: bool) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    module = CLIPModule("clip-micro", grad_checkpointing=grad_checkpointing)
    return loss_and_grads(module, [f"a photo of a {w}" for w in ("dog", "cat", "car", "tree", "cup", "apple")])


def test_same_loss_and_gradients_with_and_without():
    loss0, g0 = _grads(False)
    loss1, g1 = _grads(True)
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert set(g0) == set(g1)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_switch_reaches_both_towers_and_is_checked():
    module = CLIPModule("clip-micro", grad_checkpointing=True)
    assert module.model.transformer.grad_checkpointing and module.model.visual.transformer.grad_checkpointing
    assert not CLIPModule("clip-micro").model.transformer.grad_checkpointing
    with pytest.raises(ValueError, match="grad_checkpointing must be true or false"):
        CLIPModule("clip-micro", grad_checkpointing="yes")


def test_it_keeps_fewer_activations_for_the_backward():
    """The bytes autograd saves during the forward (saved-tensor hooks): fewer with checkpointing."""
    def saved_bytes(flag: bool) -> int:
        torch.manual_seed(0)
        module = CLIPModule("clip-micro", grad_checkpointing=flag)
        size = module.model.visual.image_size[0]
        images = torch.randn(8, 3, size, size)
        texts = module.tokenizer(["a photo of a dog"] * 8)
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            contrastive_loss(module.model.train(), images, texts, build_loss("clip"))
        return total

    plain, checkpointed = saved_bytes(False), saved_bytes(True)
    assert checkpointed < 0.6 * plain, (plain, checkpointed)


def test_bench_memory_meter_counts_saved_tensors_until_their_backward():
    """The benches' memory number: bytes autograd saves, live until that graph's backward frees them."""
    from bench.grad_checkpointing import SavedTensorMeter

    x, w = torch.randn(8, 4, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    with SavedTensorMeter() as meter:
        first = (x @ w).sum()  # mm saves both inputs: (32 + 12) floats
        assert meter.live == meter.peak == 44 * 4
        first.backward()
        assert meter.live == 0
        (x @ w).sum().backward()  # a second graph after the first was freed: the peak does not add up
    assert meter.peak == 44 * 4 and meter.live == 0
