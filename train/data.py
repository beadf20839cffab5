"""WebDataModule: img2dataset-layout webdataset shards → (image tensor, token tensor) batches.

Training uses resampled shards and a fixed number of batches per rank (``with_epoch``), so every DDP
rank sees the same number of steps and none waits forever at a collective. Bad samples (decode
errors, missing captions, unreadable tars) are skipped, warned about and counted; the counts travel
with each batch so the LightningModule can log them.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from train.data_samples import CountingHandler, SampleProcessor
from train.transforms import SampleTransform



@dataclass
class SyntheticCorpus:
    """Rendered training corpus generated on first use by ``data_prep.synth.write_corpus``.

    Args:
        num_samples: Training samples to render.
        p_large_first: Probability that a caption names the largest object first (the bias knob).
        seed: Rendering seed.
        image_size: Image side in pixels.
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene.
        size_mode: ``data_prep`` size mode (e.g. ``one_large``).
        shard_size: Samples per tar.
        val_num_samples: If > 0, also render a validation corpus (seed + 1) for retrieval R@k.
    """

    num_samples: int = 40000
    p_large_first: float = 0.9
    seed: int = 0
    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 4
    size_mode: str = "one_large"
    shard_size: int = 1000
    val_num_samples: int = 0

    def corpus_kwargs(self, split: str) -> dict[str, Any]:
        kw = asdict(self)
        val_n = kw.pop("val_num_samples")
        if split == "val":
            kw.update(num_samples=val_n, seed=self.seed + 1)
        return kw

    def cache_path(self, cache_dir: str | Path, split: str) -> Path:
        """``<cache_dir>/synth-<hash of the write_corpus arguments>``; new arguments → new directory."""
        kw = self.corpus_kwargs(split)
        digest = hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:10]
        return Path(cache_dir) / f"synth-{digest}"


def expand_shards(shards: str | list[str]) -> list[str]:
    """Brace patterns (``a/{00000..00009}.tar``, ``::``-joined) or a list of them → list of URLs."""
    items = [shards] if isinstance(shards, str) else list(shards)
    out: list[str] = []
    for item in items:
        out.extend(wds.shardlists.expand_urls(item))
    return out


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def check_shards_exist(urls: list[str], what: str) -> None:
    """Raise ``FileNotFoundError`` naming missing local shards and how to create them."""
    missing = [u for u in urls if _is_local(u) and not os.path.exists(u)]
    if not urls:
        raise FileNotFoundError(f"{what}: the shard pattern expands to no files")
    if missing:
        shown = ", ".join(missing[:3]) + (f" ... ({len(missing)} of {len(urls)} missing)" if len(missing) > 3 else "")
        raise FileNotFoundError(
            f"{what}: missing shards {shown}. Download LAION-style shards first, e.g. "
            f"`python -m data_prep laion --out {Path(missing[0]).parent} ...` (see README), "
            f"or render a corpus with `python -m data_prep synth --out DIR` and point data.train_shards at it."
        )


def count_samples(urls: list[str]) -> int | None:
    """Samples in local shards from ``sizes.json`` (data_prep) or img2dataset ``*_stats.json``; None if unknown."""
    total = 0
    for url in urls:
        if not _is_local(url):
            return None
        path = Path(url)
        sizes = path.parent / "sizes.json"
        stats = path.with_name(path.name.replace(".tar", "_stats.json"))
        if sizes.exists():
            table = _read_json_cached(str(sizes))
            if path.name not in table:
                return None
            total += int(table[path.name])
        elif stats.exists():
            total += int(json.loads(stats.read_text())["successes"])
        else:
            return None
    return total


_json_cache: dict[str, dict] = {}


def _read_json_cached(path: str) -> dict:
    if path not in _json_cache:
        _json_cache[path] = json.loads(Path(path).read_text())
    return _json_cache[path]


class WebDataModule(L.LightningDataModule):
    """Webdataset shards in img2dataset layout (``{key}.jpg``, ``{key}.txt``, ``{key}.json``)."""

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        val_shards: str | list[str] | None = None,
        synthetic: SyntheticCorpus | None = None,
        cache_dir: str = "data/cache",
        batch_size: int = 128,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 2000,
        samples_per_epoch: int | None = None,
        sample_transforms: list[SampleTransform] | None = None,
        seed: int = 0,
        max_warnings: int = 5,
    ) -> None:
        """
        Args:
            train_shards: Brace pattern or list of training tars (local paths or URLs webdataset can open).
            val_shards: Optional validation tars; enables image↔text retrieval R@1/5/10 on the whole set.
            synthetic: Render a corpus on first use (into ``cache_dir``) instead of ``train_shards``.
            cache_dir: Where synthetic corpora are cached, one directory per parameter set.
            batch_size: Per-device training batch size.
            val_batch_size: Per-device validation batch size (default: ``batch_size``).
            num_workers: DataLoader worker processes per device.
            shuffle_buffer: Samples held in webdataset's shuffle buffer.
            samples_per_epoch: Samples per epoch over all ranks (default: counted from sizes.json /
                img2dataset ``*_stats.json``).
            sample_transforms: Image/caption transforms (mitigations) applied before preprocess/tokenize.
            seed: Seed for shuffling and sample transforms.
            max_warnings: Warnings printed per worker per kind of skipped sample (all are counted).
        """
        super().__init__()
        problems = []
        if batch_size <= 0:
            problems.append(f"data.batch_size must be > 0, got {batch_size}")
        if val_batch_size is not None and val_batch_size <= 0:
            problems.append(f"data.val_batch_size must be > 0, got {val_batch_size}")
        if num_workers < 0:
            problems.append(f"data.num_workers must be >= 0, got {num_workers}")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            problems.append(f"data.samples_per_epoch must be > 0, got {samples_per_epoch}")
        if (train_shards is None) == (synthetic is None):
            problems.append("set exactly one of data.train_shards and data.synthetic")
        if problems:
            raise ValueError("Invalid data config: " + "; ".join(problems))
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.synthetic = synthetic
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.sample_transforms = list(sample_transforms or [])
        self.seed = seed
        self.max_warnings = max_warnings
        self.preprocess_train: Callable | None = None
        self.preprocess_val: Callable | None = None
        self.tokenizer: Callable | None = None
        if train_shards is not None:  # fail before anything starts, not in a worker hours later
            check_shards_exist(expand_shards(train_shards), "data.train_shards")
        if val_shards is not None:
            check_shards_exist(expand_shards(val_shards), "data.val_shards")

    # ---------------------------------------------------------------- synthetic corpus
    def prepare_data(self) -> None:
        """Render the synthetic corpus into its cache directory if it is not there yet (rank 0 only)."""
        if self.synthetic is None:
            return
        splits = ["train"] + (["val"] if self.synthetic.val_num_samples > 0 else [])
        for split in splits:
            path = self.synthetic.cache_path(self.cache_dir, split)
            if (path / "sizes.json").exists():
                continue
            from data_prep.synth import write_corpus  # imported lazily: only the quickstart needs it

            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            write_corpus(tmp, **self.synthetic.corpus_kwargs(split))
            os.replace(tmp, path)  # atomic: a half-written corpus is never mistaken for a cached one

    def _train_urls(self) -> list[str]:
        if self.synthetic is not None:
            path = self.synthetic.cache_path(self.cache_dir, "train")
            return sorted(str(p) for p in path.glob("*.tar"))
        return expand_shards(self.train_shards)

    def _val_urls(self) -> list[str] | None:
        if self.val_shards is not None:
            return expand_shards(self.val_shards)
        if self.synthetic is not None and self.synthetic.val_num_samples > 0:
            return sorted(str(p) for p in self.synthetic.cache_path(self.cache_dir, "val").glob("*.tar"))
        return None

    # ---------------------------------------------------------------- transforms from the model
    def set_model_transforms(self, preprocess_train: Callable, preprocess_val: Callable, tokenizer: Callable) -> None:
        """Use these open_clip transforms (taken from the LightningModule automatically in ``setup``)."""
        self.preprocess_train, self.preprocess_val, self.tokenizer = preprocess_train, preprocess_val, tokenizer

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        if self.tokenizer is None:
            if module is None or not hasattr(module, "tokenizer"):
                raise RuntimeError("WebDataModule needs open_clip transforms: attach a CLIPModule or call set_model_transforms()")
            self.set_model_transforms(module.preprocess_train, module.preprocess_val, module.tokenizer)
        check_shards_exist(self._train_urls(), "training shards") if stage == "fit" else None

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    def batches_per_rank(self) -> tuple[int, int]:
        """``(batches per worker, batches per rank)`` of one epoch; equal on every rank."""
        n = self.samples_per_epoch or count_samples(self._train_urls())
        if n is None:
            raise ValueError("Cannot count training samples (no sizes.json or *_stats.json next to the shards); set data.samples_per_epoch")
        per_rank = n // (self.batch_size * self.world_size)
        if per_rank < 1:
            raise ValueError(f"{n} samples per epoch < one batch of {self.batch_size} x {self.world_size} ranks; lower data.batch_size")
        workers = max(1, self.num_workers)
        per_worker = math.ceil(per_rank / workers)
        return per_worker, per_worker * workers

    # ---------------------------------------------------------------- loaders
    def _processor(self, train: bool) -> tuple[SampleProcessor, CountingHandler]:
        handler = CountingHandler(self.max_warnings)
        proc = SampleProcessor(
            preprocess=self.preprocess_train if train else self.preprocess_val,
            tokenizer=self.tokenizer,
            transforms=self.sample_transforms if train else [],
            handler=handler,
            seed=self.seed,
            max_warnings=self.max_warnings,
        )
        return proc, handler

    def train_dataloader(self) -> DataLoader:
        per_worker, per_rank = self.batches_per_rank()
        proc, handler = self._processor(train=True)
        dataset = (
            wds.WebDataset(
                self._train_urls(),
                resampled=True,
                shardshuffle=False,  # resampling already draws shards at random
                nodesplitter=wds.split_by_node,
                workersplitter=wds.split_by_worker,
                handler=handler,
                seed=self.seed,
            )
            .shuffle(self.shuffle_buffer)
            .compose(proc.samples)
            .batched(self.batch_size, collation_fn=proc.collate, partial=False)
            .with_epoch(per_worker)
            .with_length(per_rank, silent=True)
        )
        return DataLoader(
            dataset, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader | list:
        urls = self._val_urls()
        if not urls:
            return []
        proc, handler = self._processor(train=False)
        # Every rank reads the whole (small) validation set, so R@k is exact on every rank.
        dataset = (
            wds.WebDataset(
                urls, shardshuffle=False, nodesplitter=None, workersplitter=wds.split_by_worker,
                handler=handler, empty_check=False,
            )
            .compose(proc.samples)
            .batched(self.val_batch_size, collation_fn=proc.collate, partial=True)
        )
        return DataLoader(dataset, batch_size=None, num_workers=min(self.num_workers, len(urls)))
