"""``DataStatsLogger``: the data pipeline's skip and transform counters as ``data/<reason>`` metrics.

Every training batch of :class:`train.data.WebDataModule` is ``(images, tokens, stats)``: the
DataLoader worker that built it (``train.data_samples.SampleProcessor``) attaches its cumulative
counters, ``stats = {"source": "rank0-worker1", "counts": {"decode_errors": 2, "ok": 510,
"CaptionShuffle/changed": 97, ...}}``. The LightningModule only unpacks images and texts; this
callback, registered by ``python -m train`` next to the data module, reads the third element in
``on_train_batch_end`` and logs the sum over every worker as ``data/<reason>`` (``ok`` left out:
``samples_seen`` says it).

Counting rules:

- per source, the latest counts replace the earlier ones (they are cumulative); when a source's
  counts go down, its worker was started again (a new epoch without persistent workers), and the
  counts it had reached are kept and added to the new ones;
- batches without a stats element (another data module) are trained on as usual: nothing logged.

DDP: each rank sees only its own workers' batches. The callback sums the per-rank totals in one
``all_gather_object`` (the reason names can differ between ranks, which rules out a per-key
``sync_dist`` all-reduce: a key missing on one rank would hang the others) and only on the steps
Lightning writes to the loggers (every ``trainer.log_every_n_steps``), so the cost is one small
collective per logging step. Every rank then logs the same global totals (no ``sync_dist``).
Counts start again at 0 on resume (new workers), as they always have.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch.distributed as dist

from eval.samples_axis import define_samples_axis

PREFIX = "data/"
NOT_LOGGED = frozenset({"ok"})


def batch_stats(batch: Any) -> Mapping | None:
    """The stats element of a ``(images, tokens, stats)`` batch; None for any other batch."""
    if isinstance(batch, (list, tuple)) and len(batch) > 2:
        stats = batch[2]
        if isinstance(stats, Mapping) and isinstance(stats.get("counts"), Mapping):
            return stats
    return None


class DataStatsLogger(L.Callback):
    """Logs ``data/<reason>``: the skip/transform counters of every DataLoader worker, summed
    (over all ranks under DDP). See the module docstring for the counting and DDP rules."""

    def __init__(self) -> None:
        self._latest: dict[str, Counter] = {}  # source -> its latest cumulative counts
        self._restarted: Counter = Counter()  # counts of worker incarnations that were replaced

    def update(self, source: str, counts: Mapping[str, int]) -> None:
        """Take a worker's cumulative ``counts``; a count lower than before means a new worker."""
        new = Counter({k: int(v) for k, v in counts.items()})
        old = self._latest.get(source)
        if old is not None and any(new[k] < v for k, v in old.items()):
            self._restarted.update(old)
        self._latest[source] = new

    def totals(self) -> Counter:
        """This rank's counts, summed over its workers (and their earlier incarnations)."""
        total = Counter(self._restarted)
        for counts in self._latest.values():
            total.update(counts)
        return total

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        define_samples_axis(trainer.loggers, [PREFIX + "*"])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stats = batch_stats(batch)
        if stats is not None:
            self.update(str(stats.get("source")), stats["counts"])
        if _distributed(trainer):
            if not _logs_this_step(trainer):  # same answer on every rank: all enter the collective or none
                return
            totals = _sum_over_ranks(self.totals())
        else:
            totals = self.totals()
        for reason in sorted(totals):
            if reason not in NOT_LOGGED:
                pl_module.log(PREFIX + reason, float(totals[reason]))


def _distributed(trainer: L.Trainer) -> bool:
    return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()


def _logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes this batch's step metrics to the loggers: its own rule
    (``_LoggerConnector.should_update_logs``) without the ``should_stop`` term, which is not
    guaranteed to agree across ranks."""
    n = trainer.log_every_n_steps
    if not n:
        return False
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    stepped = getattr(loop, "_batches_that_stepped", None)  # private; without it, gather every batch
    return stepped is None or (stepped + 1) % n == 0


def _sum_over_ranks(totals: Counter) -> Counter:
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(totals))
    out: Counter = Counter()
    for part in gathered:
        out.update(part)
    return out
