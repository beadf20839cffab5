"""Fault matrix of the data module (issue 8): bad data never hangs training, every bad sample is
skipped and counted (never passed on), and bad data values or a failed corpus build are handled
before or without damage. Each case runs the real WebDataModule pipeline on tiny tars."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from train.data import SyntheticCorpus, WebDataModule
from train.data_samples import NoUsableSamplesError


class Hung(BaseException):
    """BaseException, so that webdataset's and PIL's ``except Exception`` cannot swallow it."""


@contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def on_alarm(signum, frame):
        raise Hung(f"still running after {seconds}s: the data pipeline hangs")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------------------- tiny data


def jpg(value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, 60)).save(buf, format="JPEG")
    return buf.getvalue()


def write_tar(path: Path, samples: list[dict]) -> str:
    """Samples as dicts of raw members (``__key__``, ``jpg``, ``txt``, ``json``: bytes or str)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)
    return str(path)


def good(i: int, **extra) -> dict:
    """A sample whose caption ``sample <i>`` lets the tokenizer below report which samples arrived."""
    caption = f"sample {i}"
    return {"__key__": f"{i:06d}", "jpg": jpg(i % 256), "txt": caption,
            "json": json.dumps({"key": f"{i:06d}", "caption": caption, "status": "success", **extra})}


def preprocess(image: Image.Image) -> torch.Tensor:
    return torch.zeros(3, 4, 4)


SEEN: list[str] = []  # every caption that reached the tokenizer (num_workers=0 only)


def tokenizer(captions: list[str]) -> torch.Tensor:
    SEEN.extend(captions)
    return torch.tensor([int(c.rsplit(" ", 1)[-1]) if c.rsplit(" ", 1)[-1].isdigit() else -1 for c in captions])


def datamodule(shards: list[str], **kw) -> WebDataModule:
    args = dict(batch_size=1, num_workers=0, shuffle_buffer=0, samples_per_epoch=1000, max_warnings=1)
    args.update(kw)
    dm = WebDataModule(train_shards=shards, **args)
    dm.set_model_transforms(preprocess, preprocess, tokenizer)
    return dm


def read(dm: WebDataModule, n_batches: int) -> tuple[list[int], dict]:
    """Ids of the first ``n_batches`` batches' samples and the worker's counts at the end."""
    SEEN.clear()
    ids, counts = [], {}
    with no_hang():
        for k, (images, tokens, stats) in enumerate(dm.train_dataloader()):
            ids += tokens.tolist()
            counts = stats["counts"]
            if k + 1 == n_batches:
                break
    return ids, counts


# ----------------------------------------------------------------------------- nothing usable: stop, never hang


def test_all_shards_empty_stops_with_message(tmp_path):
    empty_tar = write_tar(tmp_path / "00000.tar", [])
    zero_bytes = tmp_path / "00001.tar"
    zero_bytes.write_bytes(b"")
    dm = datamodule([empty_tar, str(zero_bytes)])
    with no_hang(), pytest.warns(UserWarning, match="empty_shard"):
        with pytest.raises(NoUsableSamplesError) as err:
            next(iter(dm.train_dataloader()))
    msg = str(err.value)
    assert "1000 shards in a row gave no sample" in msg
    assert "00000.tar" in msg and "00001.tar" in msg
    assert "empty_shard=1000" in msg and "data.max_bad_shards" in msg


def test_all_shards_corrupt_error_crosses_the_worker_boundary(tmp_path):
    rng = torch.Generator().manual_seed(0)
    shards = []
    for i in range(2):
        path = tmp_path / f"{i:05d}.tar"
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist()))
        shards.append(str(path))
    dm = datamodule(shards, num_workers=1)  # default bound: 1000 shards, well under a second
    with no_hang(), pytest.raises(NoUsableSamplesError, match=r"DataLoader worker process 0") as err:
        next(iter(dm.train_dataloader()))
    msg = str(err.value)
    assert "1000 shards in a row gave no sample" in msg and "corrupt_tar=1000" in msg
    assert "00000.tar" in msg and "00001.tar" in msg


def test_trainer_fit_on_corrupt_shards_stops_with_the_message(tmp_path):
    """The real path: Lightning's fit with one DataLoader worker re-raises the worker's error."""
    import lightning as L

    from train.module import CLIPModule

    path = tmp_path / "00000.tar"
    path.write_bytes(b"this is not a tar file" * 100)
    module = CLIPModule(model_name="clip-micro")
    dm = WebDataModule(train_shards=[str(path)], batch_size=2, num_workers=1, samples_per_epoch=8, max_warnings=0)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    with no_hang(120), pytest.raises(NoUsableSamplesError, match=r"1000 shards in a row.*corrupt_tar=1000"):
        trainer.fit(module, datamodule=dm)


def test_no_sample_decodes_stops_with_message(tmp_path):
    bad = [{"__key__": f"{i:06d}", "jpg": b"not a jpeg", "txt": f"sample {i}"} for i in range(7)]
    dm = datamodule([write_tar(tmp_path / "00000.tar", bad)], max_bad_samples=30)
    with no_hang(), pytest.raises(NoUsableSamplesError) as err:
        next(iter(dm.train_dataloader()))
    msg = str(err.value)
    assert "30 samples in a row were skipped" in msg and "decode_errors=30" in msg and "00000.tar" in msg


def test_a_usable_sample_resets_the_bounds(tmp_path):
    """Noisy but usable data: 1 good sample per 9 bad ones never trips a bound of 10."""
    samples = []
    for i in range(40):
        samples.append(good(i) if i % 10 == 9 else {"__key__": f"{i:06d}", "jpg": b"junk", "txt": f"sample {i}"})
    empty = write_tar(tmp_path / "00001.tar", [])
    dm = datamodule([write_tar(tmp_path / "00000.tar", samples), empty], max_bad_samples=10, max_bad_shards=30)
    ids, counts = read(dm, 20)
    assert set(ids) <= {9, 19, 29, 39} and len(ids) == 20
    assert counts["decode_errors"] >= 9 * 4


# ----------------------------------------------------------------------------- skipped, counted, never passed on


def _member_offsets(path: str) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


@pytest.mark.parametrize("cut", ["inside_a_member", "at_a_member_boundary"])
def test_truncated_tar_counted_and_samples_before_the_cut_kept(tmp_path, cut):
    full = write_tar(tmp_path / "full.tar", [good(i) for i in range(10)])
    members = _member_offsets(full)
    first_of_6 = next(m for m in members if m.name.startswith("000006."))
    # inside: 10 bytes into the data of sample 6's first member; boundary: exactly at its header,
    # which tarfile reads as a clean end (only the missing end-of-archive blocks tell).
    size = first_of_6.offset_data + 10 if cut == "inside_a_member" else first_of_6.offset
    data = Path(full).read_bytes()[:size]
    shard = tmp_path / "00000.tar"
    shard.write_bytes(data)
    dm = datamodule([str(shard)])
    with pytest.warns(UserWarning, match="truncated_tar"):
        ids, counts = read(dm, 30)
    # the shard is resampled; samples 0-4 come through, sample 5 (the last read before the cut,
    # which could miss members) is dropped, nothing at or past the cut is ever passed on
    assert set(ids) == {0, 1, 2, 3, 4}
    assert counts["truncated_tar"] >= 5 and counts["ok"] >= 30


def test_intact_tar_is_not_flagged_and_keeps_its_last_sample(tmp_path):
    dm = datamodule([write_tar(tmp_path / "00000.tar", [good(i) for i in range(4)])])
    ids, counts = read(dm, 12)
    assert set(ids) == {0, 1, 2, 3} and "truncated_tar" not in counts


def test_non_utf8_caption_counted_and_skipped(tmp_path):
    samples = [good(0), {"__key__": "000001", "jpg": jpg(), "txt": "caf\xe9 sample 1".encode("latin-1")}, good(2)]
    dm = datamodule([write_tar(tmp_path / "00000.tar", samples)])
    with pytest.warns(UserWarning, match="bad_utf8"):
        ids, counts = read(dm, 8)
    assert set(ids) == {0, 2} and counts["bad_utf8"] >= 3
    assert not any("\ufffd" in c for c in SEEN)


def test_bad_json_counted_and_never_passed_on(tmp_path):
    samples = [good(0), {"__key__": "000001", "jpg": jpg(), "txt": "sample 1", "json": b"{not json"}, good(2),
               {"__key__": "000003", "jpg": jpg(), "txt": "sample 3", "json": b"[1, 2]"}]
    dm = datamodule([write_tar(tmp_path / "00000.tar", samples)])
    with pytest.warns(UserWarning, match="bad_json"):
        ids, counts = read(dm, 8)
    assert set(ids) == {0, 2} and counts["bad_json"] >= 6


def test_object_crop_with_a_bad_json_first_sample_trains(tmp_path):
    from data_prep.captions import make_caption
    from train.mitigations import ObjectAwareCrop

    def rendered(i: int) -> dict:
        names = ["dog", "apple"]
        objects = [{"name": "dog", "bbox": [1, 1, 8, 8], "area": 64, "mention_index": 0},
                   {"name": "apple", "bbox": [10, 10, 4, 4], "area": 16, "mention_index": 1}]
        caption = make_caption(names, "photo")
        meta = {"key": f"{i:06d}", "caption": caption, "status": "success", "template": "photo", "objects": objects}
        return {"__key__": f"{i:06d}", "jpg": jpg(i), "txt": caption, "json": json.dumps(meta)}

    broken_first = {"__key__": "000000", "jpg": jpg(), "txt": "a dog and an apple", "json": b'{"objects": [tr'}
    shard = write_tar(tmp_path / "00000.tar", [broken_first] + [rendered(i) for i in range(1, 5)])
    crop = ObjectAwareCrop(p=1.0)
    dm = datamodule([shard], sample_transforms=[crop])
    with pytest.warns(UserWarning, match="bad_json"):
        ids, counts = read(dm, 6)
    assert len(ids) == 6 and counts["bad_json"] >= 1 and counts["ObjectAwareCrop/applied"] >= 6


# ----------------------------------------------------------------------------- values refused before work


def test_bad_data_values_refused_in_one_error(tmp_path):
    shard = write_tar(tmp_path / "00000.tar", [good(0)])
    with pytest.raises(ValueError) as err:
        WebDataModule(train_shards=[shard], shuffle_buffer=-1, max_warnings=-2, seed=1.5)
    msg = str(err.value)
    for part in ("data.shuffle_buffer must be an int >= 0", "got -1", "data.max_warnings", "got -2",
                 "data.seed must be an int, got 1.5"):
        assert part in msg
    with pytest.raises(ValueError, match="data.max_bad_shards must be an int >= 1, got 0"):
        WebDataModule(train_shards=[shard], max_bad_shards=0)


def test_bad_synthetic_values_named_by_config_path(tmp_path):
    syn = SyntheticCorpus(num_samples=0, p_large_first=1.5, shard_size=0, min_objects=3, max_objects=2, seed=-1)
    with pytest.raises(ValueError) as err:
        WebDataModule(synthetic=syn, cache_dir=str(tmp_path / "cache"))
    msg = str(err.value)
    assert "data.synthetic.p_large_first" in msg and "1.5" in msg
    for name in ("num_samples", "shard_size", "max_objects", "min_objects", "seed"):
        assert f"data.synthetic.{name}" in msg, name
    assert "--" not in msg  # data_prep's flag names never reach a config user
    assert not (tmp_path / "cache").exists()


def test_unwritable_cache_dir_refused_before_rendering(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"data.cache_dir .*a_file is not a directory"):
        WebDataModule(synthetic=SyntheticCorpus(num_samples=8), cache_dir=str(blocker / "cache"))


# ----------------------------------------------------------------------------- corpus cache: no leftovers


def _fake_render(fail: bool):
    def write_corpus(out_dir, num_samples, **kw):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=False)
        write_tar(out / "00000.tar", [good(i) for i in range(num_samples)])
        if fail:
            raise RuntimeError("disk full (simulated)")
        (out / "sizes.json").write_text(json.dumps({"00000.tar": num_samples}))
        return {}
    return write_corpus


def test_failed_corpus_build_leaves_no_tmp_folder(tmp_path, monkeypatch):
    import data_prep.synth

    monkeypatch.setattr(data_prep.synth, "write_corpus", _fake_render(fail=True))
    cache = tmp_path / "cache"
    dm = WebDataModule(synthetic=SyntheticCorpus(num_samples=4), cache_dir=str(cache))
    with pytest.raises(RuntimeError, match="disk full"):
        dm.prepare_data()
    assert cache.is_dir() and list(cache.iterdir()) == []


def test_stale_tmp_of_a_dead_process_cleaned_live_one_kept(tmp_path, monkeypatch):
    import data_prep.synth

    monkeypatch.setattr(data_prep.synth, "write_corpus", _fake_render(fail=False))
    cache = tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = cache / f"synth-0123456789.tmp-{dead.pid}"
        running = cache / f"synth-abcdef0123.tmp-{live.pid}"
        not_ours = [cache / f"synth-mine.tmp-{dead.pid}", cache / f"other-0123456789.tmp-{dead.pid}"]
        for d in [stale, running, *not_ours]:
            (d / "00000.tar").parent.mkdir(parents=True)
            (d / "00000.tar").write_bytes(b"partial")
        dm = WebDataModule(synthetic=SyntheticCorpus(num_samples=4), cache_dir=str(cache))
        with pytest.warns(UserWarning, match="partial corpus"):
            dm.prepare_data()
        assert not stale.exists()
        assert running.exists() and all(d.exists() for d in not_ours)
        assert (SyntheticCorpus(num_samples=4).cache_path(cache, "train") / "sizes.json").exists()
        assert not list(cache.glob(f"*.tmp-{os.getpid()}"))
    finally:
        live.kill()
        live.wait()
