"""Fault cases of the data room (issue 8): ``--overwrite`` deletes only what data_prep wrote (the
files its ``meta.json`` records, even after a kill), and ``--out`` is checked before any work."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _coco_fixture import make_coco
from test_data_prep_synth import interrupt_sample
from data_prep.cli import main as cli_main
from data_prep.shards import WRITER

ROOT = Path(__file__).resolve().parents[1]


def _synth(out: Path, n: int, *extra: str) -> None:
    cli_main(["synth", "--out", str(out), "--num-samples", str(n), "--shard-size", "4", "--image-size", "32",
              "--no-progress", *extra])


def test_synth_overwrite_replaces_its_shards_and_leaves_foreign_files(tmp_path):
    out = tmp_path / "corpus"
    _synth(out, 12)  # 00000..00002.tar
    (out / "other.tar").write_bytes(b"someone else's shard")
    (out / "notes.txt").write_text("my notes")
    (out / "sub").mkdir()
    (out / "sub" / "00009.tar").write_bytes(b"nested")
    with pytest.warns(UserWarning, match=r"did not write: notes.txt, other.tar, sub/00009.tar.*'\*.tar' glob"):
        _synth(out, 4, "--overwrite", "--seed", "1")  # one shard now
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "meta.json", "notes.txt", "other.tar",
                                                      "sizes.json", "sub"]
    assert (out / "other.tar").read_bytes() == b"someone else's shard"
    assert (out / "notes.txt").read_text() == "my notes" and (out / "sub" / "00009.tar").read_bytes() == b"nested"
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4}
    assert json.loads((out / "meta.json").read_text())["seed"] == 1


def test_synth_overwrite_refuses_to_replace_a_shard_it_did_not_write(tmp_path, capsys):
    out = tmp_path / "download"  # e.g. an img2dataset download: shards, no data_prep meta.json
    out.mkdir()
    (out / "00000.tar").write_bytes(b"precious")
    (out / "00000_stats.json").write_text("{}")
    with pytest.raises(SystemExit) as err:
        _synth(out, 4, "--overwrite")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert f"--out {out}: 00000.tar would be replaced, but data_prep did not write it" in msg
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00000_stats.json"]
    assert (out / "00000.tar").read_bytes() == b"precious"


def test_overwrite_after_a_killed_synth_run_removes_its_partial_output_only(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "other.tar").write_bytes(b"keep me")
    killer = textwrap.dedent(f"""
        import os
        from data_prep import synth
        real = synth.make_sample
        def dying(index, **kw):
            if index == 6:
                os._exit(9)  # like kill -9: no cleanup runs
            return real(index, **kw)
        synth.make_sample = dying
        synth.write_corpus({str(out)!r}, num_samples=12, shard_size=4, image_size=32, progress=False,
                           overwrite=True)
    """)
    r = subprocess.run([sys.executable, "-c", killer], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 9, r.stderr
    assert {"00000.tar", "meta.json"} <= {p.name for p in out.iterdir()}  # partial: no sizes.json
    assert not (out / "sizes.json").exists()
    with pytest.warns(UserWarning, match="did not write: other.tar"):
        _synth(out, 2, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "meta.json", "other.tar", "sizes.json"]
    assert (out / "other.tar").read_bytes() == b"keep me"


def test_comco_overwrite_removes_its_old_images_and_keeps_foreign_files(tmp_path):
    out = tmp_path / "evalset"
    cli_main(["comco", "--out", str(out), "--kind", "shapes", "--n-objects", "2", "3", "--image-size", "32",
              "--no-progress"])
    assert (out / "n3_large_slot0").is_dir()
    (out / "00000.tar").write_bytes(b"a shard that is not ours")
    with pytest.warns(UserWarning, match="did not write: 00000.tar"):
        cli_main(["comco", "--out", str(out), "--kind", "shapes", "--n-objects", "2", "--image-size", "32",
                  "--no-progress", "--overwrite"])
    assert (out / "00000.tar").read_bytes() == b"a shard that is not ours"
    assert not (out / "n3_large_slot0").exists()  # the previous run's n=3 images are gone
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert on_disk == {r["image"] for r in manifest}


def test_foreign_folder_with_a_data_prep_kind_is_not_ours(tmp_path, capsys):
    out = tmp_path / "other_tool"  # another tool's folder that happens to use kind "laion" + sizes.json
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"kind": "laion"}))
    (out / "sizes.json").write_text(json.dumps({"00000.tar": 4, "00001.tar": 4}))
    for name in ("00000.tar", "00001.tar"):
        (out / name).write_bytes(b"their shard")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as err:
        _synth(out, 4, "--overwrite")
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "00000.tar, meta.json, sizes.json would be replaced, but data_prep did not write them" in msg
    assert "move it away" in msg
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # with the shards renamed, its meta.json and sizes.json (planned names) are still not replaced
    for name in ("00000.tar", "00001.tar"):
        (out / name).rename(out / name.replace("0000", "0010"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit):
        _synth(out, 4, "--overwrite")
    assert "meta.json, sizes.json would be replaced" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_data_prep_meta_carries_the_writer_marker(tmp_path):
    _synth(tmp_path / "c", 4)
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["writer"] == WRITER


def test_coco_overwrite_refuses_to_replace_a_foreign_shard(tmp_path, capsys):
    make_coco(tmp_path / "coco")
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.tar").write_bytes(b"precious")
    with pytest.raises(SystemExit) as err:
        cli_main(["coco", "--images", str(tmp_path / "coco" / "images"), "--captions",
                  str(tmp_path / "coco" / "captions.json"), "--instances", str(tmp_path / "coco" / "instances.json"),
                  "--out", str(out), "--no-progress", "--overwrite"])
    assert err.value.code == 2
    assert "00000.tar would be replaced, but data_prep did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar"]
    assert (out / "00000.tar").read_bytes() == b"precious"


def test_overwrite_does_not_delete_through_a_symlinked_subfolder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00000.png").write_bytes(b"not yours")
    out = tmp_path / "evalset"
    out.mkdir()
    (out / "single").symlink_to(outside, target_is_directory=True)
    (out / "meta.json").write_text(json.dumps({"kind": "shapes", "writer": WRITER}))
    (out / "manifest.jsonl").write_text(json.dumps({"image": "single/00000.png"}) + "\n")
    _synth(out, 4, "--overwrite")
    assert (outside / "00000.png").read_bytes() == b"not yours"
    assert (out / "single").is_symlink() and not (out / "manifest.jsonl").exists()


def test_synth_overwrite_after_an_interrupted_run(tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    interrupt_sample(monkeypatch, at=5)
    with pytest.raises(KeyboardInterrupt):
        _synth(out, 12)
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "meta.json"]
    monkeypatch.undo()  # the real make_sample again
    _synth(out, 8, "--overwrite")  # no foreign files: no warning, no refusal
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "meta.json", "sizes.json"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 4, "00001.tar": 4}


@pytest.mark.parametrize("command", [
    ["synth", "--num-samples", "4", "--no-progress"],
    ["comco", "--kind", "shapes", "--n-objects", "2", "--no-progress"],
])
def test_unwritable_out_is_named_before_any_work(tmp_path, capsys, command):
    afile = tmp_path / "afile"
    afile.write_text("a file, not a folder")
    with pytest.raises(SystemExit) as err:
        cli_main([command[0], "--out", str(afile / "out"), *command[1:]])
    assert err.value.code == 2
    assert f"--out {afile / 'out'} cannot be written: {afile} is not a directory" in capsys.readouterr().err


def test_caption_order_unwritable_out_fails_before_the_analysis(tmp_path, capsys, monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("analysed although --out cannot be written")

    monkeypatch.setattr("data_prep.caption_order.analyse_shards", boom)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.tar").write_bytes(b"")  # a shard to analyse (never read: --out is refused first)
    with pytest.raises(SystemExit) as err:
        cli_main(["caption-order", "--shards", str(shards), "--out", "/proc/clip-bias-lab-test/co"])
    assert err.value.code == 2 and "--out /proc/clip-bias-lab-test/co cannot be written" in capsys.readouterr().err
