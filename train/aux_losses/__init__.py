"""Auxiliary training objectives (``model.aux_losses``): the hook and the two built-in losses.

- :class:`AuxLoss`, :class:`AuxBatch`: the interface (:mod:`train.aux_losses.base`);
- :class:`OrderInvariantText`: a mention-permuted caption as a second positive (order bias);
- :class:`RegionLoss`: per-object patch regions aligned with their names (size bias, ViT towers);
- :class:`HardNegatives`: NegCLIP-style word-order hard negatives for each caption's own image.

Config: ``model.aux_losses: [{class_path: train.aux_losses.OrderInvariantText, init_args: {weight: 0.5}}]``
(see ``configs/mitigation/order_invariant.yaml``, ``region_loss.yaml``).
"""
from train.aux_losses.base import AuxBatch, AuxLoss, Terms, aux_terms, capture_all, check_aux_losses
from train.aux_losses.hard_negatives import HardNegatives
from train.aux_losses.order_invariant import OrderInvariantText
from train.aux_losses.region import RegionLoss

__all__ = ["AuxBatch", "AuxLoss", "Terms", "aux_terms", "capture_all", "check_aux_losses", "HardNegatives",
           "OrderInvariantText", "RegionLoss"]
