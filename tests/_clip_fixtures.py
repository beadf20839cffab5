"""Tiny open_clip models and a minimal LightningModule holding one the way CLIPModule does.

Used by the eval tests (model access, callback, attention); never downloads anything.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import open_clip
import torch
from torch.utils.data import DataLoader, TensorDataset

TINY_NAME = "evaltest-tiny-vit"
#: 32 px ViT (4x4 patches of 8 px, 2 heads), 2-layer text tower, context 16.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny(config_dir: Path, name: str = TINY_NAME, cfg: dict = TINY_CFG) -> str:
    """Write ``cfg`` as ``<config_dir>/<name>.json`` and register it with open_clip."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(config_dir)
    return name


class TinyCLIPModule(L.LightningModule):
    """Holds an open_clip model as ``.model`` with ``.tokenizer`` / ``.preprocess_val`` like CLIPModule."""

    def __init__(self, model_name: str = TINY_NAME, batch_size: int = 4, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(seed)
        self.model_name = model_name
        self.model, _, self.preprocess_val = open_clip.create_model_and_transforms(model_name)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.batch_size = batch_size
        self.loss_fn = open_clip.ClipLoss()

    @property
    def samples_seen(self) -> int:
        return self.global_step * self.batch_size * self.trainer.world_size

    def training_step(self, batch, batch_idx):
        images, tokens = batch
        img = self.model.encode_image(images, normalize=True)
        txt = self.model.encode_text(tokens, normalize=True)
        return self.loss_fn(img, txt, self.model.logit_scale.exp())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def random_batches(module: TinyCLIPModule, n_batches: int, seed: int = 0) -> DataLoader:
    """A loader of ``n_batches`` (images, tokens) batches: random pixels, distinct captions."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * module.batch_size
    size = module.model.visual.image_size[0]
    images = torch.randn(n, 3, size, size, generator=g)
    tokens = module.tokenizer([f"a photo of thing number {i}" for i in range(n)])
    return DataLoader(TensorDataset(images, tokens), batch_size=module.batch_size)


def loss_and_grads(module, captions: list[str]) -> tuple[float, dict[str, torch.Tensor]]:
    """One training forward + backward of a ``train.module.CLIPModule``'s model on fixed random
    images and ``captions`` (text trimming on, as in training): the loss and every gradient."""
    from train.loss import build_loss, contrastive_loss

    model = module.model.train()
    g = torch.Generator().manual_seed(1)
    size = model.visual.image_size[0]
    images = torch.randn(len(captions), 3, size, size, generator=g)
    loss = contrastive_loss(model, images, module.tokenizer(captions), build_loss("clip"))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
