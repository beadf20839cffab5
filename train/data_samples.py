"""Work done inside DataLoader workers: read shards, decode, skip-and-count, transforms, preprocess,
tokenize, and stop (``NoUsableSamplesError``) when nothing read is usable."""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
import warnings
from collections import Counter
from typing import Callable, Iterable, Iterator

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import get_worker_info

from train.transforms import SampleTransform

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


#: Shard-level skip reasons, counted once per shard read. Sample-level ones (``SampleProcessor``):
#: no_image, decode_errors, bad_json, bad_utf8, no_caption. Anything else unreadable: read_errors.
SHARD_REASONS = ("empty_shard", "corrupt_tar", "truncated_tar", "unreadable_shard")
_TRUNCATION_MESSAGES = ("unexpected end of data", "truncated header", "empty header")


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (run seed, purpose, rank, segment, lane, ...): the same on every
    machine, Python version and process (unlike ``hash`` of a str; the pid and clock play no part)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class NoUsableSamplesError(RuntimeError):
    """Reading goes on but no sample is usable: every shard empty, corrupt or undecodable."""


def classify_read_error(exn: BaseException) -> str:
    """Skip reason for an exception raised while opening or reading a tar."""
    msg = str(exn.args[0]) if exn.args else ""
    if isinstance(exn, EOFError) or (isinstance(exn, tarfile.ReadError) and any(m in msg for m in _TRUNCATION_MESSAGES)):
        return "truncated_tar"  # EOFError: a compressed tar cut short
    if isinstance(exn, tarfile.ReadError) and "empty file" in msg:
        return "empty_shard"
    if isinstance(exn, tarfile.TarError):
        return "corrupt_tar"
    if isinstance(exn, OSError):
        return "unreadable_shard"
    return "read_errors"


def tar_tail_is_complete(path: str) -> bool:
    """False if a local uncompressed tar lacks the end-of-archive zero blocks every tar writer adds.

    tarfile reads a tar cut at a member boundary without complaint; this catches that case.
    Compressed tars are not checked here (their decompressor raises ``EOFError`` when cut).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00" or not head:
                return True
            size = f.seek(0, os.SEEK_END)
            if size % 512 or size < 1024:  # tars are whole 512-byte blocks, ending in (at least) two zero ones
                return False
            f.seek(size - 1024)
            return f.read(1024) == bytes(1024)
    except OSError:
        return True  # unreadable: opening it reports the real error


class CountingHandler:
    """webdataset error handler and skip counter: warn (up to ``max_warnings`` times per reason), count, continue.

    Shard-level reasons (``SHARD_REASONS``) are counted once per shard read; ``read_errors`` (e.g. a
    duplicate member name) once per error. ``counts`` also receives the sample-level reasons of
    ``SampleProcessor`` and the ``ok`` count, so one counter describes the worker's stream.
    """

    def __init__(self, max_warnings: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings
        self.shard: str | None = None  # the shard being read (set by StallGuard), for messages
        self.shard_reasons: set[str] = set()  # shard-level reasons already counted for it

    def sibling(self) -> "CountingHandler":
        """A handler for another stream read in the same worker (a mixture's source): its own shard
        state, the same ``counts`` (one counter still describes the worker)."""
        other = CountingHandler(self.max_warnings)
        other.counts = self.counts
        return other

    def skip(self, kind: str, what: str, detail: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_warnings:
            warnings.warn(f"skipping {what} ({kind}): {detail}", stacklevel=3)

    def shard_skip(self, kind: str, detail: str) -> None:
        """Count a shard-level reason once for the current shard."""
        if kind not in self.shard_reasons:
            self.shard_reasons.add(kind)
            self.skip(kind, f"shard {self.shard}", detail)

    def __call__(self, exn: BaseException) -> bool:
        kind = classify_read_error(exn)
        if kind in SHARD_REASONS:
            detail = {"truncated_tar": "the tar is cut short; its samples before the cut are used, the one at "
                                       "the cut is dropped"}.get(kind, "")
            self.shard_skip(kind, f"{detail + ': ' if detail else ''}{exn!r}")
        else:
            self.skip(kind, f"data in shard {self.shard}", repr(exn))
        return True


class StallGuard:
    """Keeps a resampled stream from reading forever without a usable sample, and drops the sample at
    the cut of a truncated tar.

    Two stages go around webdataset's ``group_by_keys`` (``read`` chains them): ``tar_files`` (shard
    URLs → tar members) and ``samples`` (the grouped raw samples). ``SampleProcessor`` reports each
    usable or skipped sample. The run stops with ``NoUsableSamplesError`` naming the shards and the skip counts when
    ``max_bad_shards`` shards in a row gave no sample at all (empty, corrupt, unreadable) or
    ``max_bad_samples`` samples in a row were skipped. A healthy but noisy dataset cannot reach
    either bound; they exist so that a wrong dataset stops the run instead of spinning a worker.
    Every shard's last sample is held until the shard ended, so the one at a truncation is never
    passed on; the order of samples is unchanged.
    """

    def __init__(self, handler: CountingHandler, max_bad_shards: int = 1000, max_bad_samples: int = 20_000) -> None:
        self.handler = handler
        self.max_bad_shards = max_bad_shards
        self.max_bad_samples = max_bad_samples
        self.bad_shards = 0  # shards in a row that gave no raw sample
        self.bad_samples = 0  # samples in a row skipped by SampleProcessor
        self.tried: Counter[str] = Counter()  # shards opened since the last usable sample
        self._seq = 0  # number of the shard being read
        self._tail_ok = True
        self._released = 0  # raw samples of the current shard passed on
        self._held: dict | None = None  # the latest raw sample, until we know it is not at a cut
        self._held_seq = -1

    def new_stream(self) -> None:
        """Forget the sample held from an abandoned stream (the data pipeline starts a fresh, reseeded
        stream at every segment boundary; nothing of the old one may leak into it)."""
        self._held, self._held_seq = None, -1
        self._released = 0

    # ---- stage 1: shard URLs -> tar members, one shard after the other
    def tar_files(self, src: Iterable[dict]) -> Iterator[dict]:
        """``tarfile_to_samples``'s opener and expander, except that every shard ends with the
        end-of-shard marker even when reading it failed. (webdataset's expander skips the marker
        then, and ``group_by_keys`` carries the shard's last, possibly partial sample into the next.)"""
        for item in src:
            url = item["url"]
            self._start_shard(url)
            try:
                stream = wds.gopen(url)
                try:
                    for member in wds.tariterators.tar_file_iterator(stream, handler=self.handler):
                        member["__url__"] = url
                        yield member
                finally:
                    stream.close()
            except Exception as exn:  # unopenable, not a tar, cut short: counted, never fatal
                self.handler(exn)
            yield {}  # end of shard: group_by_keys emits its last sample now
            self._end_shard()

    def _start_shard(self, url: str) -> None:
        self._seq += 1
        self._released = 0
        self._tail_ok = tar_tail_is_complete(url) if _is_local(url) else True
        self.handler.shard, self.handler.shard_reasons = url, set()
        self.tried[url] += 1

    def _end_shard(self) -> None:
        if not self._tail_ok and not self.handler.shard_reasons:  # not already counted as corrupt/truncated
            self.handler.shard_skip("truncated_tar", "the tar lacks its end-of-archive blocks (cut short); its "
                                                     "samples are used except the last, which may be incomplete")
        truncated = "truncated_tar" in self.handler.shard_reasons
        got = self._released
        if self._held is not None and self._held_seq == self._seq:
            if truncated:
                self._held = None  # the sample at the cut: some of its members may be missing
            else:
                got += 1
        if got == 0 and not self.handler.shard_reasons:
            self.handler.shard_skip("empty_shard", "the tar holds no sample")
        self.bad_shards = 0 if got else self.bad_shards + 1
        if self.bad_shards >= self.max_bad_shards:
            raise self.error(f"{self.bad_shards} shards in a row gave no sample")

    # ---- stage 2: raw samples grouped by key
    def samples(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample in src:
            if self._held is not None:
                if self._held_seq == self._seq:
                    self._released += 1  # not the last of its shard
                yield self._held
            self._held, self._held_seq = sample, self._seq
        if self._held is not None:  # finite stream: its shard ended (and was checked) already
            held, self._held = self._held, None
            yield held

    def read(self, src: Iterable[dict]) -> Iterator[dict]:
        """Shard URLs → raw samples: ``tar_files`` + webdataset's ``group_by_keys`` + ``samples``."""
        files = self.tar_files(src)
        return self.samples(wds.tariterators.group_by_keys(files, handler=self.handler))

    # ---- called by SampleProcessor
    def used(self) -> None:
        self.bad_samples = 0
        if self.tried:
            self.tried.clear()

    def skipped(self) -> None:
        self.bad_samples += 1
        if self.bad_samples >= self.max_bad_samples:
            raise self.error(f"{self.bad_samples} samples in a row were skipped")

    def error(self, what: str) -> NoUsableSamplesError:
        shards = sorted(self.tried, key=lambda u: -self.tried[u])
        shown = ", ".join(shards[:5]) + (f", ... ({len(shards)} distinct)" if len(shards) > 5 else "")
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.handler.counts.items()) if v) or "none"
        return NoUsableSamplesError(
            f"No usable training sample: {what} (rank {_rank()}, worker {_worker_id()}). "
            f"Shards read since the last usable sample: {shown or 'none'}. Skip counts: {counts}. "
            f"Check these shards (e.g. `tar tvf {shards[0] if shards else 'SHARD.tar'}`) and data.train_shards; "
            f"if the data is only very noisy, raise data.max_bad_shards / data.max_bad_samples."
        )


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def _worker_id() -> int:
    info = get_worker_info()
    return info.id if info is not None else 0


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


class SampleProcessor:
    """Turns raw webdataset samples into ``(image_tensor, caption)`` and batches into
    ``(images, tokens, stats)``; ``stats`` carries this worker's cumulative skip/transform counters.
    With ``keep_meta`` (set when an aux loss reads per-sample meta) samples are ``(image, caption,
    meta)`` and batches end with the list of meta dicts: the sample json after the transforms plus
    ``caption`` (as tokenised), ``__key__``, ``source_size`` and ``preprocess`` (the source region
    the model input shows). Without it nothing is added to the default path."""

    def __init__(
        self,
        preprocess: Callable,
        tokenizer: Callable,
        transforms: list[SampleTransform],
        handler: CountingHandler,
        seed: int = 0,
        max_warnings: int = 5,
        guard: StallGuard | None = None,
        boxes: Callable[..., dict] | None = None,
        keep_meta: bool = False,
    ) -> None:
        self.preprocess = preprocess
        self.keep_meta = keep_meta  # batches carry per-sample meta (aux losses): see ``collate``
        self.boxes = boxes
        self.tokenizer = tokenizer
        self.transforms = transforms
        self.handler = handler
        self.guard = guard
        self.seed = seed
        self.max_warnings = max_warnings
        self.counts = handler.counts  # one counter per worker: shard- and sample-level reasons, ``ok``
        self._checked = False
        self._rng: random.Random | None = None

    def _skip(self, kind: str, key: str, detail: str) -> None:
        self.handler.skip(kind, f"sample {key!r}", detail)

    def decode(self, sample: dict) -> tuple[Image.Image, str, dict] | None:
        """``(RGB image, caption, meta)`` or None (counted) if the image, json or caption is unusable."""
        key = sample.get("__key__", "?")
        img_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if img_key is None:
            self._skip("no_image", key, f"no {'/'.join(IMAGE_KEYS)} member")
            return None
        try:
            image = Image.open(io.BytesIO(sample[img_key]))
            image = image.convert("RGB")
        except Exception as exn:  # corrupt bytes must never stop a run
            self._skip("decode_errors", key, repr(exn))
            return None
        meta: dict = {}
        if "json" in sample:
            try:
                meta = json.loads(sample["json"])
                if not isinstance(meta, dict):
                    raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
            except Exception as exn:  # never trained on with its metadata missing
                self._skip("bad_json", key, repr(exn))
                return None
        if self.boxes is not None:  # detector boxes for shards that have none (data_prep.boxes)
            meta = self.boxes(meta, key=key)
        if "txt" in sample:
            try:
                caption = sample["txt"].decode("utf-8").strip()
            except UnicodeDecodeError as exn:  # never trained on as '\ufffd\ufffd'
                self._skip("bad_utf8", key, f"caption is not UTF-8: {exn}")
                return None
        else:
            caption = meta.get("caption") or ""
            caption = caption.strip() if isinstance(caption, str) else ""
        if not caption:
            self._skip("no_caption", key, "empty or missing caption")
            return None
        return image, caption, meta

    def samples(self, src: Iterable[dict], rng: random.Random | None = None,
                preprocess_seeds: random.Random | None = None,
                guard: StallGuard | None = None) -> Iterator[tuple[torch.Tensor, str]]:
        """webdataset ``compose`` stage: raw samples → preprocessed ``(image, caption)``.

        ``rng`` draws the transforms' (mitigations') random choices (default: one per worker, seeded
        from ``(seed, rank, worker)``). With ``preprocess_seeds``, each image's preprocess (open_clip's
        RandomResizedCrop draws from torch's global CPU generator) runs with the CPU generator seeded
        from it, and the generator's state is restored after: the crops are a function of the stream's
        seed, not of what else drew from torch's generator (model init, other workers, a resume).
        ``guard``: the stall guard of ``src``'s stream (default: the processor's own)."""
        guard = guard or self.guard
        if rng is None:
            if self._rng is None:
                self._rng = random.Random(derive_seed(self.seed, "samples", _rank(), _worker_id()))
            rng = self._rng
        for sample in src:
            decoded = self.decode(sample)
            if decoded is None:
                if guard is not None:
                    guard.skipped()
                continue
            image, caption, meta = decoded
            if not self._checked:  # the first usable sample: bad ones never reach a transform
                for t in self.transforms:
                    t.check_metadata(meta)
                self._checked = True
            for t in self.transforms:
                image, caption, meta = t(image, caption, meta, rng)
            size = image.size
            seed = None if preprocess_seeds is None else preprocess_seeds.getrandbits(63)
            image, geometry = self._preprocess(image, seed)
            if guard is not None:
                guard.used()
            self.counts["ok"] += 1  # before the yield: a batch's stats count its own last sample
            if self.keep_meta:
                key = sample.get("__key__")
                yield image, caption, {**meta, "caption": caption, "__key__": key, "source_size": list(size),
                                       "preprocess": geometry}
            else:
                yield image, caption

    def _preprocess(self, image: Image.Image, seed: int | None) -> tuple[torch.Tensor, dict | None]:
        """``(tensor, geometry)``: the preprocess, run with torch's CPU generator seeded by ``seed``
        (state restored after) if given; with ``keep_meta``, also the source region it mapped onto the
        output (:func:`train.aux_losses.geometry.preprocess_geometry`), drawn from the same generator
        state so the image is the one it would be without it."""
        if seed is None and not self.keep_meta:
            return self.preprocess(image), None
        state = torch.random.get_rng_state()
        try:
            if seed is not None:
                torch.random.default_generator.manual_seed(seed)
            geometry = None
            if self.keep_meta:
                from train.aux_losses.geometry import preprocess_geometry  # lazy: aux_losses imports this module

                start = torch.random.get_rng_state()
                geometry = preprocess_geometry(self.preprocess, image.size)
                torch.random.set_rng_state(start)
            return self.preprocess(image), geometry
        finally:
            if seed is not None:  # unseeded: the generator advances as it would without keep_meta
                torch.random.set_rng_state(state)

    def stats(self) -> dict:
        counts = dict(self.counts)
        if self.boxes is not None:
            counts |= {f"boxes/{k}": v for k, v in self.boxes.counts.items()}
        for t in self.transforms:
            for k, v in t.stats().items():
                counts[f"{type(t).__name__}/{k}"] = v
        return {"source": f"rank{_rank()}-worker{_worker_id()}", "counts": counts}

    def collate(self, items: list[tuple]) -> tuple:
        """``(images, tokens, stats)``; with ``keep_meta`` also the list of per-sample meta dicts."""
        images = torch.stack([item[0] for item in items])
        tokens = self.tokenizer([item[1] for item in items])
        if self.keep_meta:
            return images, tokens, self.stats(), [item[2] for item in items]
        return images, tokens, self.stats()
