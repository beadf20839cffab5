"""model.accumulate_contrastive: the gradient of K micro-batches equals the single big batch's.

References are independent of the code under test: one ordinary forward + backward of
``contrastive_loss`` over the whole batch (2 ranks: over both ranks' batches in one process). The
negative control is what plain gradient accumulation computes (each micro-batch's own loss, its
own negatives), which must differ, or the test could not tell the two apart.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from open_clip.loss import ClipLoss

from train.contrastive_cache import cached_contrastive_loss
from train.loss import build_loss, contrastive_loss
from train.module import CLIPModule

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def _batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 32 px images and distinct captions (clip-micro)."""
    from test_train_ddp import _data

    return _data(n)


def _model(kind: str = "clip") -> torch.nn.Module:
    """clip-micro at a fixed init; SigLIP's with its learnable logit bias (as CLIPModule builds it)."""
    from train.models import build_model_and_transforms

    torch.manual_seed(0)
    return build_model_and_transforms("clip-micro", None, **({"init_logit_bias": -10.0} if kind == "siglip" else {}))[0]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-4, msg=name)


def _reference(images, texts, kind: str = "clip") -> tuple[float, dict]:
    model = _model(kind)
    loss = contrastive_loss(model, images, texts, build_loss(kind))
    loss.backward()
    return loss.item(), _grads(model)


@pytest.mark.parametrize("kind,k", [("clip", 2), ("clip", 4), ("clip", 3), ("siglip", 4)])
def test_micro_batches_give_the_whole_batch_gradient(kind, k):
    images, texts = _batch(8)
    want_loss, want = _reference(images, texts, kind)
    model = _model(kind)
    calls = []

    def backward(share):
        calls.append(share.detach())
        share.backward()

    loss = cached_contrastive_loss(model, images, texts, build_loss(kind), k, backward)
    assert loss.item() == pytest.approx(want_loss, abs=1e-6)
    loss.backward()
    assert len(calls) == k - 1  # the last micro-batch's graph travels in the returned loss
    _assert_grads_equal(_grads(model), want)
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0


def test_control_plain_accumulation_differs():
    """Each micro-batch's own loss (Lightning's accumulate_grad_batches) is not the big batch's gradient."""
    images, texts = _batch(8)
    _, want = _reference(images, texts)
    model = _model()
    for imgs, txts in zip(images.tensor_split(4), texts.tensor_split(4)):
        (contrastive_loss(model, imgs, txts, build_loss("clip")) / 4).backward()
    worst = max((_grads(model)[n] - g).abs().max().item() for n, g in want.items())
    assert worst > 1e-3


def test_random_draws_replayed_in_the_second_forward():
    """A tower with randomness in its forward (open_clip's patch dropout) draws the same mask in the
    graph-less and the gradient pass: the gradient equals one big batch drawn with the same masks."""
    from train.models import build_model_and_transforms

    images, texts = _batch(8)

    def dropout_model():
        torch.manual_seed(0)
        model, _, _ = build_model_and_transforms("clip-micro")
        from open_clip.transformer import PatchDropout

        model.visual.patch_dropout = PatchDropout(0.5)
        return model.train()

    # reference: micro-batch i's masks are the ones drawn at its place in one pass over the batch
    ref = dropout_model()
    torch.manual_seed(5)
    parts = [ref(imgs, txts) for imgs, txts in zip(images.tensor_split(2), texts.tensor_split(2))]
    img = torch.cat([p[0] for p in parts])
    txt = torch.cat([p[1] for p in parts])
    ClipLoss()(img, txt, ref.logit_scale.exp()).backward()
    state_after_reference = torch.get_rng_state()
    model = dropout_model()
    torch.manual_seed(5)
    loss = cached_contrastive_loss(model, images, texts, ClipLoss(), 2, lambda t: t.backward(), trim_text=False)
    loss.backward()
    _assert_grads_equal(_grads(model), _grads(ref))
    assert torch.equal(torch.get_rng_state(), state_after_reference)  # what follows draws as without caching


def test_refusals():
    from train.aux_losses import OrderInvariantText

    with pytest.raises(ValueError, match=r"accumulate_contrastive must be an integer >= 1 \(1: off\), got 0"):
        CLIPModule("clip-micro", accumulate_contrastive=0)
    with pytest.raises(ValueError, match="accumulate_contrastive=2 cannot be combined with model.aux_losses"):
        CLIPModule("clip-micro", accumulate_contrastive=2, aux_losses=[OrderInvariantText()])
    with pytest.raises(ValueError, match="BatchNorm"):
        CLIPModule("RN50", accumulate_contrastive=2)
    images, texts = _batch(8)
    with pytest.raises(ValueError, match="needs at least 16 samples per device batch, got a batch of 8"):
        cached_contrastive_loss(_model(), images, texts, build_loss("clip"), 16, lambda t: t.backward())


class _GradTap(L.Callback):
    """The gradients Lightning hands the optimizer (after accumulation and, under DDP, the all-reduce)."""

    def __init__(self):
        self.grads = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads.append(_grads(pl_module.model))


def _fit_grads(k: int, accumulate_grad_batches: int, images, texts, batch: int) -> list[dict]:
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    module = CLIPModule("clip-micro", accumulate_contrastive=k, warmup_steps=0, total_steps=4, trim_text=False)
    tap = _GradTap()
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[tap],
                        accumulate_grad_batches=accumulate_grad_batches)
    trainer.fit(module, train_dataloaders=DataLoader(TensorDataset(images, texts), batch_size=batch))
    return tap.grads


def test_lightning_step_with_gradient_accumulation_on_top():
    """In CLIPModule under Lightning, with accumulate_grad_batches=2 on top: each data batch's gradient
    is its own big-batch gradient, and the step averages the two like plain K=1 does."""
    images, texts = _batch(16)
    want = _fit_grads(1, 2, images, texts, batch=8)
    got = _fit_grads(4, 2, images, texts, batch=8)
    assert len(got) == len(want) == 1
    _assert_grads_equal(got[0], want[0])


_DDP_SCRIPT = r'''
import sys, torch, lightning as L
sys.path[:0] = [{repo!r}, {tests!r}]
torch.set_num_threads(1)
from torch.utils.data import DataLoader, TensorDataset
from test_contrastive_cache import _GradTap, _batch
from train.module import CLIPModule

k, accumulate, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
images, texts = _batch(16)
torch.manual_seed(0)
module = CLIPModule("clip-micro", accumulate_contrastive=k, warmup_steps=0, total_steps=4, trim_text=False)
tap = _GradTap()
trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[tap],
                    accumulate_grad_batches=accumulate, use_distributed_sampler=False)
# each rank its own 8 samples (rank r: samples 8r..8r+7), in order (no DistributedSampler splitting them again)
class Ranked(L.LightningDataModule):
    def train_dataloader(self):
        r = self.trainer.global_rank
        return DataLoader(TensorDataset(images[8 * r:8 * r + 8], texts[8 * r:8 * r + 8]), batch_size=8 // accumulate)
trainer.fit(module, datamodule=Ranked())
if trainer.global_rank == 0:
    torch.save(tap.grads[0], out)
'''


@pytest.mark.slow
def test_two_gloo_ranks_lightning_ddp_equal_one_process_whole_batch(tmp_path):
    """2 ranks x 8 samples, each rank in 4 micro-batches of 2 (inside Lightning's DDP) == 1 process x 16;
    control: Lightning's own accumulate_grad_batches=4 over batches of 2 (each sees 2 x 2 negatives) differs."""
    script = tmp_path / "ddp_cache.py"
    script.write_text(_DDP_SCRIPT.format(repo=str(REPO), tests=str(TESTS)))
    env = {**__import__("os").environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}:{TESTS}"}

    def ddp_grads(k: int, accumulate: int) -> dict:
        out = tmp_path / f"g{k}_{accumulate}.pt"
        proc = subprocess.run([sys.executable, str(script), str(k), str(accumulate), str(out)], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(out, weights_only=False)

    images, texts = _batch(16)
    _, want = _reference(images, texts)
    _assert_grads_equal(ddp_grads(4, 1), want)
    plain = ddp_grads(1, 4)
    assert max((plain[n] - g).abs().max().item() for n, g in want.items()) > 1e-3
