"""WebDataModule: img2dataset-layout webdataset shards → (image tensor, token tensor) batches.

Training uses resampled shards and a fixed number of batches per rank (``with_epoch``), so every DDP
rank sees the same number of steps and none waits forever at a collective. Bad data is skipped,
warned about and counted by reason (shards: empty, corrupt, truncated, unreadable; samples: no
image, undecodable image, bad json, non-UTF-8 or empty caption), never passed on; the counts
travel with each batch so the LightningModule can log them. Data of which nothing is usable stops
the run with ``NoUsableSamplesError`` (``data.max_bad_shards`` / ``data.max_bad_samples``) instead
of being resampled forever. Every data value is checked when the module is built.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import random
import re
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.checks import is_int
from data_prep.corpus_spec import CorpusSpec, document_fields, knob, with_default
from data_prep.fileio import atomic_dir, pid_alive, writable_problem
from train.data_mix import buffer_shares, mixed, parse_sources, shares
from train.data_samples import CountingHandler, SampleProcessor, StallGuard, derive_seed
from train.transforms import SampleTransform



#: where ``data.synthetic``'s fields live in the config, for messages: ``data.synthetic.p_large_first``
SYNTHETIC_KEY = "data.synthetic"


@document_fields
@dataclass
class SyntheticCorpus(CorpusSpec):
    """Rendered training corpus generated on first use by ``data_prep.synth.write_corpus``.

    The knobs, their defaults, help and rules are ``data_prep.corpus_spec.CorpusSpec``'s (the same
    names as ``python -m data_prep synth``'s flags); this adds the quickstart's default size and a
    validation corpus and the vocabulary (``python -m data_prep synth --objects``).
    """

    num_samples: int = with_default(CorpusSpec, "num_samples", 40000)
    val_num_samples: int = knob(0, "If > 0, also render a validation corpus (seed + 1) of this many samples "
                                   "for retrieval R@k.", min=0)
    objects: list[str] | None = knob(
        None, "Draw the objects from these names only (null: all of the vocabulary; python -m data_prep vocab "
              "lists them). A small world (e.g. 8 objects, two to a scene) puts the same pair in several "
              "arrangements into one batch, which relations need; the callback's relation set then uses "
              "the same names.")

    def problems(self, name: str | Callable[[str], str] = SYNTHETIC_KEY, **kw: Any) -> list[str]:
        """Every problem with these values (``CorpusSpec.problems``' rules), named by their config path
        (``data.synthetic.seed``); ``name``: the section's path, or a function naming a field."""
        namer = (lambda f: f"{name}.{f}") if isinstance(name, str) else name
        return super().problems(namer, objects=self.objects, **kw)

    def corpus_kwargs(self, split: str) -> dict[str, Any]:
        kw = asdict(self)
        if kw["objects"] is not None:
            kw["objects"] = sorted(kw["objects"])  # a set of names: their order renders the same corpus
        val_n = kw.pop("val_num_samples")
        if split == "val":
            kw.update(num_samples=val_n, seed=self.seed + 1)
        return kw

    def cache_path(self, cache_dir: str | Path, split: str) -> Path:
        """``<cache_dir>/synth-<hash of the write_corpus arguments>``; new arguments → new directory.

        The hash covers every field (but ``val_num_samples``) by name and value as given: a field added to
        ``CorpusSpec`` renames every cached corpus, so existing caches are rendered once more — except
        the knobs at the values that render what the corpus was before they existed (:data:`UNHASHED_AT_DEFAULT`).
        """
        kw = self.corpus_kwargs(split)
        for key, default in UNHASHED_AT_DEFAULT.items():
            if key in kw and (kw[key] is None if default is None else kw[key] == default):
                kw.pop(key)
        digest = hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:10]
        return Path(cache_dir) / f"synth-{digest}"


#: knobs added after corpora were cached, and the value of each that renders the same bytes as before it existed
UNHASHED_AT_DEFAULT: dict[str, Any] = {"relation_share": 0.0, "attribute_share": 0.0, "objects": None}


def expand_shards(shards: str | list[str]) -> list[str]:
    """Brace patterns (``a/{00000..00009}.tar``, ``::``-joined), local folders (their ``*.tar``, sorted)
    or a list of them → list of URLs."""
    items = [shards] if isinstance(shards, str) else list(shards)
    out: list[str] = []
    for item in items:
        for url in wds.shardlists.expand_urls(item):
            out.extend(sorted(str(p) for p in Path(url).glob("*.tar")) if _is_local(url) and os.path.isdir(url)
                       else [url])
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
            f"`python -m data_prep laion --parquet PARQUET --out {Path(missing[0]).parent}` (PARQUET: a file with "
            f"url and caption columns; see docs/real_data.md), "
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


def _synthetic_splits(synthetic: SyntheticCorpus) -> list[str]:
    return ["train"] + (["val"] if synthetic.val_num_samples > 0 else [])


def _cache_dir_problems(synthetic: SyntheticCorpus, cache_dir: str | Path) -> list[str]:
    """A corpus still to be rendered needs a writable cache dir; found out before any work, not after it."""
    if all((synthetic.cache_path(cache_dir, s) / "sizes.json").exists() for s in _synthetic_splits(synthetic)):
        return []  # already cached: a read-only cache is fine
    problem = writable_problem(Path(cache_dir).absolute(), is_dir=True)
    if problem:
        return [f"data.cache_dir {str(cache_dir)!r} cannot be written: {problem}; the synthetic corpus is rendered "
                f"there on first use: set data.cache_dir to a writable folder"]
    return []


#: ``prepare_data``'s build folders: ``synth-<10 hex digits>.tmp-<pid of the building process>``.
_BUILD_DIR = re.compile(r"^synth-[0-9a-f]{10}\.tmp-(\d+)$")


def clean_stale_builds(cache_dir: str | Path) -> list[Path]:
    """Remove the build folders of corpus renders whose process is gone (killed, crashed); return them.

    Only folders named like ``prepare_data``'s own (``synth-<hash>.tmp-<pid>``) whose pid no longer
    runs are removed: a build still in progress, or anything else in the cache, is left alone.
    """
    removed = []
    for path in sorted(Path(cache_dir).glob("synth-*.tmp-*")):
        m = _BUILD_DIR.match(path.name)
        if m and path.is_dir() and not path.is_symlink() and not pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class WebDataModule(L.LightningDataModule):
    """Webdataset shards in img2dataset layout (``{key}.jpg``, ``{key}.txt``, ``{key}.json``)."""

    def __init__(
        self,
        train_shards: str | list[str] | None = None,
        train_sources: list[dict[str, Any]] | None = None,
        val_shards: str | list[str] | None = None,
        synthetic: SyntheticCorpus | None = None,
        cache_dir: str = "data/cache",
        batch_size: int = 128,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        worker_nice: int = 0,
        shuffle_buffer: int = 2000,
        samples_per_epoch: int | None = None,
        sample_transforms: list[SampleTransform] | None = None,
        seed: int | None = None,
        segment_batches: int | None = None,
        max_warnings: int = 5,
        max_bad_shards: int = 1000,
        max_bad_samples: int = 20_000,
        boxes_sidecar: str | None = None,
        boxes_min_score: float = 0.3,
        boxes_vocabulary: str | None = None,
    ) -> None:
        """
        Args:
            train_shards: Brace pattern or list of training tars (local paths or URLs webdataset can open).
            train_sources: Instead of ``train_shards``, several shard sets mixed by weight: a list of
                ``{name, shards, weight}``; each training sample's source is drawn with probability
                weight / total from the run's seed (exact on resume), the samples taken from each are
                logged as ``data/source/<name>`` (:mod:`train.data_mix`). An epoch is all sources'
                samples together unless ``samples_per_epoch`` says otherwise.
            val_shards: Optional validation tars; enables image↔text retrieval R@1/5/10 on the whole set.
            synthetic: Render a corpus on first use (into ``cache_dir``) instead of ``train_shards``.
            cache_dir: Where synthetic corpora are cached, one directory per parameter set.
            batch_size: Per-device training batch size.
            val_batch_size: Per-device validation batch size (default: ``batch_size``).
            num_workers: DataLoader worker processes per device.
            worker_nice: Scheduling niceness added to each worker process (0-19; 0, the default:
                none). On an otherwise idle machine with fewer cores than compute threads plus
                workers (a 2-core laptop), a niced worker decodes in the trainer's gaps instead of
                preempting its threads; when other programs compete for the cores it can starve
                and make the run data-bound. Same data either way (a pure function of the seed);
                measured both ways in docs/benchmarks.md.
            shuffle_buffer: Samples held in webdataset's shuffle buffer.
            samples_per_epoch: Samples per epoch over all ranks (default: counted from sizes.json /
                img2dataset ``*_stats.json``).
            sample_transforms: Image/caption transforms (mitigations) applied before preprocess/tokenize.
            seed: Seed of the training data order (shard draws, shuffle buffer), the transforms'
                (mitigations') draws and the preprocess crops. None (default): ``seed_everything``'s seed
                (the CLI writes it into the run's config.yaml), 0 if nothing was seeded.
            segment_batches: The training stream is reseeded from ``(seed, rank, segment, lane)`` every
                this many batches per rank (default: one segment per epoch; the CLI sets it to
                ``run.checkpoint_every_n_steps`` x ``trainer.accumulate_grad_batches``), so a resume
                at batch k rebuilds the stream of k's segment and skips at most this many batches in
                it: the data order is the uninterrupted run's (see ``TrainStream``).
            max_warnings: Warnings printed per worker per kind of skipped sample (all are counted).
            max_bad_shards: Stop with an error naming the shards and skip counts when this many shards in a
                row gave no sample (empty, corrupt, unreadable), instead of resampling them forever.
            max_bad_samples: Likewise when this many samples in a row were skipped (undecodable image, bad
                json, non-UTF-8 or empty caption). Both bounds are far beyond what a usable dataset reaches.
            boxes_sidecar: Detector boxes for shards that have none (LAION): a jsonl of ``{"key", "objects":
                [{name, bbox, score}]}`` lines (format: ``data_prep/boxes.py``), merged into each training
                sample's json ``objects`` so box-based mitigations (``ObjectAwareCrop``) work on it.
            boxes_min_score: Sidecar boxes scored below this are dropped.
            boxes_vocabulary: Vocabulary that maps sidecar labels and caption words to object names
                (``coco``, ``rendered`` or a TSV path; default: the mentions module's default).
        """
        super().__init__()
        problems = []
        if batch_size <= 0:
            problems.append(f"data.batch_size must be > 0, got {batch_size}")
        if val_batch_size is not None and val_batch_size <= 0:
            problems.append(f"data.val_batch_size must be > 0, got {val_batch_size}")
        if num_workers < 0:
            problems.append(f"data.num_workers must be >= 0, got {num_workers}")
        if not is_int(worker_nice) or not 0 <= worker_nice <= 19:
            problems.append(f"data.worker_nice must be an int in 0..19 (0: workers at the trainer's priority), "
                            f"got {worker_nice!r}")
        if samples_per_epoch is not None and samples_per_epoch <= 0:
            problems.append(f"data.samples_per_epoch must be > 0, got {samples_per_epoch}")
        if not is_int(shuffle_buffer) or shuffle_buffer < 0:
            problems.append(f"data.shuffle_buffer must be an int >= 0 (0: no shuffling), got {shuffle_buffer!r}")
        if not is_int(max_warnings) or max_warnings < 0:
            problems.append(f"data.max_warnings must be an int >= 0, got {max_warnings!r}")
        if seed is not None and not is_int(seed):
            problems.append(f"data.seed must be an int, got {seed!r}")
        if segment_batches is not None and (not is_int(segment_batches) or segment_batches < 1):
            problems.append(f"data.segment_batches must be an int >= 1, got {segment_batches!r}")
        for name, value in (("max_bad_shards", max_bad_shards), ("max_bad_samples", max_bad_samples)):
            if not is_int(value) or value < 1:
                problems.append(f"data.{name} must be an int >= 1, got {value!r}")
        if sum(x is not None for x in (train_shards, train_sources, synthetic)) != 1:
            problems.append("set exactly one of data.train_shards, data.train_sources and data.synthetic")
        if train_sources is not None:
            from train.data_mix import source_problems

            problems.extend(source_problems(train_sources))
        if boxes_sidecar is not None and not Path(boxes_sidecar).is_file():
            problems.append(f"data.boxes_sidecar {boxes_sidecar!r} is not a file")
        if not 0.0 <= boxes_min_score <= 1.0:
            problems.append(f"data.boxes_min_score must lie in [0, 1], got {boxes_min_score!r}")
        if synthetic is not None:
            synth_problems = synthetic.problems("data.synthetic")
            problems.extend(synth_problems)
            if not synth_problems:
                problems.extend(_cache_dir_problems(synthetic, cache_dir))
        if problems:
            raise ValueError("Invalid data config: " + "; ".join(problems))
        self.train_shards = train_shards
        self.train_sources = parse_sources(train_sources) if train_sources is not None else None
        self.val_shards = val_shards
        self.synthetic = synthetic
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.worker_nice = worker_nice
        self.shuffle_buffer = shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.sample_transforms = list(sample_transforms or [])
        self.seed = seed if seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self.segment_batches = segment_batches
        self.max_warnings = max_warnings
        self.max_bad_shards = max_bad_shards
        self.max_bad_samples = max_bad_samples
        self.boxes_sidecar = boxes_sidecar
        self.boxes_min_score = boxes_min_score
        self.boxes_vocabulary = boxes_vocabulary
        self._boxes: Callable | None = None
        #: training batches carry per-sample meta (4th element): set in ``setup`` when a configured
        #: aux loss of the LightningModule reads it (``train.aux_losses``); off, batches are unchanged
        self.keep_meta = False
        self.preprocess_train: Callable | None = None
        self.preprocess_val: Callable | None = None
        self.tokenizer: Callable | None = None
        if train_shards is not None:  # fail before anything starts, not in a worker hours later
            check_shards_exist(expand_shards(train_shards), "data.train_shards")
        for i, source in enumerate(self.train_sources or []):
            check_shards_exist(expand_shards(source.shards), f"data.train_sources[{i}].shards")
        if val_shards is not None:
            check_shards_exist(expand_shards(val_shards), "data.val_shards")

    # ---------------------------------------------------------------- synthetic corpus
    def prepare_data(self) -> None:
        """Render the synthetic corpus into its cache directory if it is not there yet (rank 0 only)."""
        if self.synthetic is None:
            return
        if Path(self.cache_dir).is_dir():
            for stale in clean_stale_builds(self.cache_dir):
                warnings.warn(f"removed {stale}: a partial corpus left by a render that was killed", stacklevel=2)
        for split in _synthetic_splits(self.synthetic):
            path = self.synthetic.cache_path(self.cache_dir, split)
            if (path / "sizes.json").exists():
                continue
            from data_prep.synth import write_corpus  # imported lazily: only the quickstart needs it

            try:  # built in ``<name>.tmp-<pid>``, then renamed: a half-written corpus is never mistaken for a
                # cached one, and a failed or interrupted build leaves nothing behind
                with atomic_dir(path) as tmp:
                    write_corpus(tmp, **self.synthetic.corpus_kwargs(split), desc=f"rendering {split} corpus")
            except OSError:
                if not (path / "sizes.json").exists():
                    raise
                # another process finished the same corpus first: use theirs

    def _train_urls(self) -> list[str]:
        if self.synthetic is not None:
            path = self.synthetic.cache_path(self.cache_dir, "train")
            return sorted(str(p) for p in path.glob("*.tar"))
        if self.train_sources is not None:
            return [url for source in self.train_sources for url in expand_shards(source.shards)]
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
        if module is not None:
            self.keep_meta = self.keep_meta or any(getattr(a, "needs_meta", False)
                                                   for a in getattr(module, "aux_losses", None) or ())
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
    def _processor(self, train: bool) -> tuple[SampleProcessor, CountingHandler, StallGuard]:
        handler = CountingHandler(self.max_warnings)
        guard = StallGuard(handler, max_bad_shards=self.max_bad_shards, max_bad_samples=self.max_bad_samples)
        proc = SampleProcessor(
            preprocess=self.preprocess_train if train else self.preprocess_val,
            tokenizer=self.tokenizer,
            transforms=self.sample_transforms if train else [],
            handler=handler,
            seed=self.seed,
            max_warnings=self.max_warnings,
            guard=guard,
            boxes=self._sidecar() if train else None,
            keep_meta=self.keep_meta and train,
        )
        return proc, handler, guard

    def _sidecar(self) -> Callable | None:
        """The boxes sidecar, loaded once in this process (before the DataLoader starts its workers)."""
        if self.boxes_sidecar is not None and self._boxes is None:
            from data_prep.boxes import BoxesSidecar

            self._boxes = BoxesSidecar(self.boxes_sidecar, self.boxes_min_score, self.boxes_vocabulary)
        return self._boxes

    def _batches_done(self) -> int | None:
        """Training batches this rank has consumed (Lightning's own count, restored from a checkpoint)."""
        if self.trainer is None:
            return None
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.processed)

    def _streams(self, handler: CountingHandler, guard: StallGuard) -> list[StreamSource]:
        """The training stream's sources: the one shard set, or each of ``data.train_sources`` with its
        own stall guard and handler shard state (their reads interleave), its share and its buffer."""
        if self.train_sources is None:
            return [StreamSource(self._train_urls(), guard, shuffle_buffer=self.shuffle_buffer)]
        return [StreamSource(expand_shards(source.shards), StallGuard(handler.sibling(), self.max_bad_shards,
                                                                      self.max_bad_samples),
                             source.name, p, buffer)
                for source, p, buffer in zip(self.train_sources, shares(self.train_sources),
                                             buffer_shares(self.shuffle_buffer, self.train_sources))]

    def train_dataloader(self) -> DataLoader:
        _, per_rank = self.batches_per_rank()
        proc, handler, guard = self._processor(train=True)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        dataset = TrainStream(self._streams(handler, guard), proc, self.batch_size, self.seed, rank, per_rank,
                              self.segment_batches or per_rank)
        # Workers are started afresh at every epoch (not persistent): each start carries the stream's
        # position, set by ResumableLoader.__iter__.
        return ResumableLoader(
            dataset, position=self._batches_done, batch_size=None, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), worker_init_fn=functools.partial(lower_priority, self.worker_nice),
        )

    def val_dataloader(self) -> DataLoader | list:
        urls = self._val_urls()
        if not urls:
            return []
        proc, handler, guard = self._processor(train=False)
        # Every rank reads the whole (small) validation set, so R@k is exact on every rank.
        dataset = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_worker,
            guard.read,
            proc.samples,
            wds.batched(self.val_batch_size, collation_fn=proc.collate, partial=True),
        )
        return DataLoader(dataset, batch_size=None, num_workers=min(self.num_workers, len(urls)),
                          worker_init_fn=functools.partial(lower_priority, self.worker_nice))


def lower_priority(nice: int, worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: add ``nice`` to this process's niceness (never fails a run:
    a platform without ``os.nice`` keeps the priority)."""
    if nice:
        try:
            os.nice(nice)
        except (AttributeError, OSError):
            pass


def seeded_shuffle(src, bufsize: int, rng: random.Random, initial: int = 100):
    """webdataset's ``shuffle`` buffer (same filling rule) with a given rng instead of one seeded from
    the pid and the clock."""
    src = iter(src)
    initial = min(initial, bufsize)
    buf: list = []
    for sample in src:
        buf.append(sample)
        if len(buf) < bufsize:  # fill two per sample taken until the buffer is full
            try:
                buf.append(next(src))
            except StopIteration:
                pass
        if len(buf) >= initial:
            k = rng.randrange(len(buf))
            buf[k], buf[-1] = buf[-1], buf[k]
            yield buf.pop()
    while buf:
        k = rng.randrange(len(buf))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()


@dataclass
class StreamSource:
    """One shard stream of a :class:`TrainStream`: its URLs and stall guard; for a mixture's source
    (``data.train_sources``) also its name and probability. ``name`` None: the single shard set,
    seeded without a source name."""

    urls: list[str]
    guard: StallGuard
    name: str | None = None
    probability: float = 1.0
    shuffle_buffer: int = 0


class TrainStream(IterableDataset):
    """The training batches of one rank, a pure function of ``(seed, rank, batch index)`` for a given
    ``segment_batches`` and number of workers.

    Batch index b (batches this rank consumed before it, over the whole run) belongs to segment
    ``b // segment_batches`` and lane ``b % W`` (W = DataLoader workers, 1 without workers); the
    DataLoader hands batch b to the worker serving lane ``b % W``. Each (segment, lane) has its own
    stream: shards drawn with replacement by ``Random(derive_seed(seed, "shards", rank, segment, lane))``,
    a shuffle buffer, transform and preprocess draws seeded the same way, an empty buffer and nothing
    held over from the previous segment. A stream started at ``start`` (a resume) rebuilds the stream
    of ``start``'s segment and skips the batches of its lane before ``start`` (at most
    ``segment_batches / W``, decoded and dropped), so batch b is the same whether the run was
    interrupted or not. One iteration ends at the end of ``start``'s epoch (``batches_per_epoch``).
    A mixture (several ``sources``) has one such stream per source (the source's name added to the
    seeds) and draws each sample's source from ``derive_seed(seed, "mix", rank, segment, lane)``.
    """

    def __init__(self, sources: list[StreamSource], proc: SampleProcessor, batch_size: int, seed: int, rank: int,
                 batches_per_epoch: int, segment_batches: int) -> None:
        super().__init__()
        self.sources, self.proc, self.batch_size = sources, proc, batch_size
        self.seed, self.rank = seed, rank
        self.batches_per_epoch, self.segment_batches = batches_per_epoch, segment_batches
        self.start = 0

    @property
    def mixture(self) -> list[list] | None:
        """``[[name, probability], ...]`` of a mixture (kept in checkpoints); None for one shard set."""
        if len(self.sources) == 1 and self.sources[0].name is None:
            return None
        return [[s.name, s.probability] for s in self.sources]

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _items(self, source: StreamSource, key: tuple) -> Iterator[tuple]:
        """One source's preprocessed samples in the stream seeded by ``key``."""
        shard_rng = random.Random(derive_seed("shards", *key))
        source.guard.new_stream()
        raw = source.guard.read({"url": shard_rng.choice(source.urls)} for _ in itertools.count())
        if source.shuffle_buffer > 0:
            raw = seeded_shuffle(raw, source.shuffle_buffer, random.Random(derive_seed("shuffle", *key)))
        return self.proc.samples(raw, rng=random.Random(derive_seed("transforms", *key)),
                                 preprocess_seeds=random.Random(derive_seed("preprocess", *key)), guard=source.guard)

    def segment(self, segment: int, lane: int):
        """The batches of one (segment, lane), from a stream seeded by nothing else."""
        key = (self.seed, self.rank, segment, lane)
        if self.mixture is None:
            items = self._items(self.sources[0], key)
        else:
            streams = [self._items(s, (*key, s.name)) for s in self.sources]
            items = mixed(streams, [s.name for s in self.sources], [s.probability for s in self.sources],
                          random.Random(derive_seed("mix", *key)), self.proc.counts)
        while True:
            batch = list(itertools.islice(items, self.batch_size))
            if len(batch) < self.batch_size:
                return
            yield self.proc.collate(batch)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        end = (self.start // self.batches_per_epoch + 1) * self.batches_per_epoch
        size = self.segment_batches
        b, current, stream = self.start + worker, None, None
        while b < end:
            if b // size != current:
                current, lane = b // size, b % workers
                stream = self.segment(current, lane)
                first = current * size + (lane - current * size) % workers  # the lane's first batch in it
                for _ in range((b - first) // workers):
                    next(stream)
            yield next(stream)
            b += workers


class ResumableLoader(DataLoader):
    """DataLoader over a ``TrainStream`` that starts each iteration at the rank's position: the batches
    consumed so far (``position()``, Lightning's count), or the position restored from a checkpoint.
    Its ``state_dict`` makes it resumable in Lightning's sense (stored in the checkpoint, loaded before
    the first iteration)."""

    def __init__(self, dataset: TrainStream, position: Callable[[], int | None] | None = None, **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.position = position
        self._restored: int | None = None
        self._iterations = 0

    def __iter__(self):
        start = self._restored
        self._restored = None
        if start is None and self.position is not None:
            start = self.position()
        if start is None:  # no trainer: one epoch after the other
            start = self._iterations * len(self.dataset)
        self.dataset.start = start
        self._iterations += 1
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        done = self.position() if self.position is not None else None
        return {"batches": done, "seed": self.dataset.seed, "segment_batches": self.dataset.segment_batches,
                "workers": max(1, self.num_workers), "mixture": self.dataset.mixture}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batches") is not None:
            self._restored = int(state["batches"])
        if state.get("segment_batches"):
            self.dataset.segment_batches = int(state["segment_batches"])  # the run's layout, whatever today's cadence
        changed = [f"{name}: checkpoint {state[k]}, now {v}" for k, name, v in
                   (("seed", "data.seed", self.dataset.seed), ("workers", "data.num_workers", max(1, self.num_workers)),
                    ("mixture", "data.train_sources", self.dataset.mixture))
                   if k in state and state[k] != v]
        if changed:
            warnings.warn("the data order after this resume differs from the uninterrupted run's ("
                          + "; ".join(changed) + ")", stacklevel=2)
