"""Fault matrix, round two, outside ``fit`` (issue 20 item 4): ``eval``, ``train export`` and ``data_prep``
on inputs that cannot work end in one ``error:`` line naming the value and the fix (exit 2), and
``data_prep coco`` counts and warns about what it drops."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from _coco_fixture import make_coco
from data_prep.cli import main as data_prep_main
from data_prep.coco import convert
from eval.model_access import ClipAdapter
from eval.models import load_checkpoint, register_model_configs
from eval.report import write_report

REPO = Path(__file__).resolve().parent.parent


def shell(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "CLIP_BIAS_LAB_TRACEBACK": "0"})


def test_a_zero_byte_checkpoint_is_one_line_from_eval_and_export(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    for args in (("eval", "comco", "--checkpoint", str(empty), "--out", str(tmp_path / "c.json")),
                 ("train", "export", str(empty), str(tmp_path / "m.pt")),
                 ("train", "export", str(tmp_path / "missing.ckpt"), str(tmp_path / "m.pt"))):
        proc = shell(*args)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "empty (0 bytes)" in lines[0] or "does not exist" in lines[0], lines[0]
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "c.json").exists()


def test_a_truncated_checkpoint_is_named_as_such(tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, good)
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ValueError, match=rf"{cut} is not a PyTorch checkpoint, or a truncated one"):
        load_checkpoint(cut)


def test_weights_of_another_architecture_name_the_model_they_fit(tmp_path):
    register_model_configs()
    model = open_clip.create_model("clip-micro")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    (tmp_path / "clip-micro.json").write_text(json.dumps(open_clip.get_model_config("clip-micro")))
    with pytest.raises(ValueError, match=r"could not build 'clip-tiny'.*another architecture.*--model clip-micro"):
        ClipAdapter.from_open_clip("clip-tiny", str(tmp_path / "model.pt"))


def test_report_of_an_empty_bias_jsonl_says_the_file_and_its_size(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "bias.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no evaluation records in .*bias.jsonl \(0 bytes\).*BiasEvalCallback"):
        write_report([run], tmp_path / "report")


# ---------------------------------------------------------------- data_prep


def test_coco_captions_and_instances_of_different_images_are_refused(tmp_path):
    make_coco(tmp_path / "coco")
    caps = json.loads((tmp_path / "coco/captions.json").read_text())
    for c in caps["annotations"]:
        c["image_id"] += 1000
    for im in caps["images"]:
        im["id"] += 1000
    (tmp_path / "coco/captions_other.json").write_text(json.dumps(caps))
    with pytest.raises(ValueError, match=r"--captions and --instances share no image id .*same split"):
        convert(tmp_path / "coco/images", [tmp_path / "coco/captions_other.json"], [tmp_path / "coco/instances.json"],
                tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_coco_counts_and_warns_about_captions_without_an_image_and_images_without_boxes(tmp_path):
    make_coco(tmp_path / "coco")
    caps = json.loads((tmp_path / "coco/captions.json").read_text())
    caps["annotations"].append({"id": 9999, "image_id": 424242, "caption": "an image nobody has"})
    (tmp_path / "coco/captions.json").write_text(json.dumps(caps))
    inst = json.loads((tmp_path / "coco/instances.json").read_text())
    inst["annotations"] = [a for a in inst["annotations"] if a["image_id"] == 100]  # 3 of 4 images lose boxes
    (tmp_path / "coco/instances.json").write_text(json.dumps(inst))
    with pytest.warns(UserWarning) as record:
        meta = convert(tmp_path / "coco/images", [tmp_path / "coco/captions.json"], [tmp_path / "coco/instances.json"],
                       tmp_path / "out", progress=False)
    messages = " | ".join(str(w.message) for w in record)
    assert "1 captions name an image id that no 'images' list holds" in messages
    assert "3 of 4 images have no instance annotation" in messages
    assert meta["counts"]["captions_without_image"] == 1 and meta["counts"]["captioned_images_without_boxes"] == 3


def test_coco_with_an_images_folder_that_holds_none_of_them_is_refused(tmp_path, capsys):
    make_coco(tmp_path / "coco")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        data_prep_main(["coco", "--images", str(tmp_path / "empty"), "--captions", str(tmp_path / "coco/captions.json"),
                        "--instances", str(tmp_path / "coco/instances.json"), "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "none of the first 4 captioned images (e.g. '000000000100.png')" in err and "point --images" in err
    assert not (tmp_path / "out").exists()


def test_caption_order_on_a_folder_without_shards_is_refused(tmp_path, capsys):
    (tmp_path / "noshards").mkdir()
    with pytest.raises(SystemExit) as exc:
        data_prep_main(["caption-order", "--shards", str(tmp_path / "noshards"), "--out", str(tmp_path / "co")])
    assert exc.value.code == 2
    assert f"--shards {tmp_path / 'noshards'} holds no *.tar shard" in capsys.readouterr().err
    assert not (tmp_path / "co").exists()


def test_export_to_a_place_that_cannot_be_written_is_refused_before_reading_the_checkpoint(tmp_path):
    from data_prep.fileio import OutDirError
    from eval.models import export_checkpoint

    with pytest.raises(OutDirError, match=r"OUT /proc/clip-bias-lab-test/m.pt cannot be written"):
        export_checkpoint(tmp_path / "never-read.ckpt", "/proc/clip-bias-lab-test/m.pt")
