"""Data statistics leave the LightningModule: ``DataStatsLogger`` logs ``data/<reason>``, the module
only unpacks images and texts, and ``samples_seen``'s W&B axis is declared once per prefix."""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader

from eval.samples_axis import define_samples_axis, samples_per_step, samples_seen
from test_faults_data import good, jpg, no_hang, write_tar
from train.data import WebDataModule
from train.data_stats import DataStatsLogger, batch_stats
from train.module import CLIPModule


def _trainer(tmp_path: Path, callbacks, logger, max_steps: int) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, callbacks=callbacks, logger=logger,
                     log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path))


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


class Recorder(L.Callback):
    """The stats element of every training batch, as the workers sent it."""

    def __init__(self):
        self.counts: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counts.append(dict(batch[2]["counts"]))


# ----------------------------------------------------------------------------- the callback over a real fit


def test_callback_logs_the_counts_of_a_shard_with_known_bad_samples(tmp_path):
    """One shard: a non-UTF-8 caption, an undecodable image, then 3 good samples. With batches of 3
    and no shuffling, each batch is one pass over the (resampled) shard: after batch k the worker
    has skipped k bad captions and k bad images and passed 3k samples on."""
    torch.manual_seed(0)
    bad_caption = {"__key__": "000100", "jpg": jpg(), "txt": "caf\xe9 sample 100".encode("latin-1")}
    bad_image = {"__key__": "000101", "jpg": b"not a jpeg", "txt": "sample 101"}
    shard = write_tar(tmp_path / "shards" / "00000.tar", [bad_caption, bad_image, good(0), good(1), good(2)])
    dm = WebDataModule(train_shards=[shard], batch_size=3, num_workers=0, shuffle_buffer=0, samples_per_epoch=300,
                       max_warnings=0)
    recorder = Recorder()
    trainer = _trainer(tmp_path, [DataStatsLogger(), recorder], CSVLogger(tmp_path, name="csv"), max_steps=3)
    with no_hang(120), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(CLIPModule(model_name="clip-micro", warmup_steps=1), datamodule=dm)

    assert recorder.counts == [{"bad_utf8": k, "decode_errors": k, "ok": 3 * k} for k in (1, 2, 3)]
    rows = _rows(Path(trainer.logger.log_dir) / "metrics.csv")
    data_keys = sorted(k for k in rows[0] if k.startswith("data/"))
    assert data_keys == ["data/bad_utf8", "data/decode_errors"]  # "ok" is not logged
    logged = {int(r["step"]): {k: float(r[k]) for k in data_keys} for r in rows if r["data/bad_utf8"]}
    assert logged == {k - 1: {"data/bad_utf8": k, "data/decode_errors": k} for k in (1, 2, 3)}


def test_counts_are_summed_over_workers_and_kept_when_a_worker_restarts():
    cb = DataStatsLogger()
    cb.update("rank0-worker0", {"ok": 10, "bad_utf8": 2})
    cb.update("rank0-worker1", {"ok": 8, "decode_errors": 1})
    cb.update("rank0-worker0", {"ok": 20, "bad_utf8": 3})  # cumulative: replaces, not adds
    assert cb.totals() == {"ok": 28, "bad_utf8": 3, "decode_errors": 1}
    cb.update("rank0-worker0", {"ok": 4})  # counts went down: a new worker (next epoch)
    assert cb.totals() == {"ok": 32, "bad_utf8": 3, "decode_errors": 1}


def test_batch_stats_only_from_a_stats_element():
    images, tokens = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, dtype=torch.long)
    stats = {"source": "rank0-worker0", "counts": {"ok": 2}}
    assert batch_stats((images, tokens, stats)) is stats
    assert batch_stats([images, tokens]) is None and batch_stats(images) is None
    assert batch_stats((images, tokens, torch.zeros(2))) is None


# ----------------------------------------------------------------------------- the module ignores stats


def _batches(module: CLIPModule, n: int, with_stats: bool) -> DataLoader:
    size = module.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    out = []
    for i in range(n):
        images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(i))
        tokens = module.tokenizer([f"a photo of thing {4 * i + j}" for j in range(4)])
        stats = {"source": "rank0-worker0", "counts": {"ok": 4 * (i + 1), "bad_utf8": i + 1}}
        out.append((images, tokens, stats) if with_stats else (images, tokens))
    return DataLoader(out, batch_size=1, collate_fn=lambda items: items[0])  # each batch as it is


@pytest.mark.parametrize("with_stats", [False, True])
def test_training_step_only_unpacks_images_and_texts(tmp_path, with_stats):
    torch.manual_seed(0)
    module = CLIPModule(model_name="clip-micro", warmup_steps=1)
    assert not hasattr(module, "_worker_stats")
    trainer = _trainer(tmp_path, [], CSVLogger(tmp_path, name="csv"), max_steps=2)
    trainer.fit(module, train_dataloaders=_batches(module, 2, with_stats))
    assert trainer.global_step == 2 and module.samples_seen == 8
    rows = _rows(Path(trainer.logger.log_dir) / "metrics.csv")
    assert any(r.get("train/loss") for r in rows)
    assert not any(k.startswith("data/") for k in rows[0])  # without the callback, stats are not logged


# ----------------------------------------------------------------------------- samples_seen + define_metric once


class FakeWandb(WandbLogger):
    """A real ``WandbLogger`` subclass (so ``isinstance`` holds) whose run records its calls."""

    def __init__(self, save_dir: str):
        super().__init__(project="fake", save_dir=save_dir, offline=True)
        self.run = mock.MagicMock()
        self.metrics: list[dict] = []

    @property
    def experiment(self):
        return self.run

    def log_hyperparams(self, params) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append(dict(metrics))


def _define_calls(run) -> list:
    return [(c.args, c.kwargs) for c in run.define_metric.call_args_list]


def test_define_metric_once_per_prefix_in_a_fit(tmp_path):
    torch.manual_seed(0)
    module = CLIPModule(model_name="clip-micro", warmup_steps=1)
    logger = FakeWandb(str(tmp_path))
    trainer = _trainer(tmp_path, [DataStatsLogger()], logger, max_steps=2)
    trainer.fit(module, train_dataloaders=_batches(module, 2, with_stats=True))
    calls = _define_calls(logger.run)
    assert calls[0] == (("samples_seen",), {})
    declared = sorted(args[0] for args, kw in calls[1:])
    assert declared == ["data/*", "train/*", "val/*"]
    assert all(kw == {"step_metric": "samples_seen"} for _, kw in calls[1:])
    assert [m["data/bad_utf8"] for m in logger.metrics if "data/bad_utf8" in m] == [1.0, 2.0]


def test_define_samples_axis_is_idempotent_and_matches_by_isinstance(tmp_path):
    logger = FakeWandb(str(tmp_path))
    spec = mock.MagicMock(spec=WandbLogger)  # a mock spec'd from the real class passes isinstance
    lookalike = mock.MagicMock()
    type(lookalike).__name__ = "WandbLogger"  # the old class-name match would have taken it
    for _ in range(2):
        found = define_samples_axis([logger, spec, lookalike, CSVLogger(tmp_path)], ["bias/*", "train/*"])
        define_samples_axis([logger, spec], ["bias/*", "data/*"])
    assert found == [logger, spec]
    for run in (logger.run, spec.experiment):
        names = [args[0] for args, _ in _define_calls(run)]
        assert sorted(names) == ["bias/*", "data/*", "samples_seen", "train/*"]  # each once
    lookalike.experiment.define_metric.assert_not_called()


def test_one_samples_seen_formula():
    trainer = mock.Mock(world_size=4, accumulate_grad_batches=2, global_step=10)
    assert samples_per_step(trainer, 16) == 128
    assert samples_seen(trainer, object(), 16) == 1280  # a module without samples_seen: from the trainer
    assert samples_seen(trainer, mock.Mock(samples_seen=999), 16) == 999  # CLIPModule's own (resume-aware)
    assert samples_seen(trainer, object()) == 0  # batch size not known yet


# ----------------------------------------------------------------------------- DDP: one gather per logging step


def _ddp_rank(rank: int, world: int, port: int, out: str) -> None:
    import os
    import types

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    logged: list[dict] = []
    module = types.SimpleNamespace(log=lambda name, value: logged[-1].__setitem__(name, value))
    epoch_loop = types.SimpleNamespace(_batches_that_stepped=0)
    trainer = types.SimpleNamespace(world_size=world, log_every_n_steps=2,
                                    fit_loop=types.SimpleNamespace(epoch_loop=epoch_loop))
    cb = DataStatsLogger()
    for step in range(4):
        logged.append({})
        epoch_loop._batches_that_stepped = step
        # rank 1 alone meets bad captions: the reason names differ between ranks
        counts = {"ok": 4 * (step + 1), **({"bad_utf8": step + 1} if rank == 1 else {"decode_errors": 1})}
        cb.on_train_batch_end(trainer, module, None, (None, None, {"source": f"rank{rank}-worker0",
                                                                    "counts": counts}), step)
    torch.save(logged, f"{out}.{rank}")
    dist.destroy_process_group()


def test_ddp_totals_are_summed_over_ranks_on_logging_steps(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "logged")
    with no_hang(120):
        mp.spawn(_ddp_rank, args=(2, port, out), nprocs=2, join=True)
    per_rank = [torch.load(f"{out}.{r}") for r in range(2)]
    assert per_rank[0] == per_rank[1]  # every rank logs the same global totals
    # log_every_n_steps=2: Lightning writes after batches 2 and 4 (batches_that_stepped + 1), gathered only there
    assert per_rank[0] == [{}, {"data/bad_utf8": 2.0, "data/decode_errors": 1.0}, {},
                           {"data/bad_utf8": 4.0, "data/decode_errors": 1.0}]


def test_bias_indices_keep_their_last_value_as_the_run_summary(tmp_path):
    """W&B's runs table compares final bias indices: ``bias/*`` is declared with ``summary="last"``, once."""
    logger = FakeWandb(str(tmp_path))
    define_samples_axis([logger], ["bias/*", "train/*"])
    define_samples_axis([logger], ["bias/*"])
    calls = dict((args[0], kw) for args, kw in _define_calls(logger.run))
    assert calls == {"samples_seen": {}, "bias/*": {"step_metric": "samples_seen", "summary": "last"},
                     "train/*": {"step_metric": "samples_seen"}}
    assert len(_define_calls(logger.run)) == 3
