"""Zero-shot classification (eval.zeroshot): open_clip's own classifier as the reference, known answers."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from _table_adapter import TableAdapter
from eval import zeroshot as Z


def test_class_embeddings_equal_open_clip_build_zero_shot_classifier():
    import open_clip

    from eval.model_access import ClipAdapter

    adapter = ClipAdapter.from_open_clip("clip-micro")
    names = ["dog", "pizza", "traffic light", "teddy bear"]
    ours = Z.class_embeddings(adapter, names)
    ref = open_clip.build_zero_shot_classifier(adapter.model, adapter.tokenizer, names, Z.TEMPLATES,
                                               num_classes_per_batch=None).T
    torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-5)


def test_classify_known_answer_and_shuffled_labels():
    eye = torch.eye(10)
    images = eye[torch.arange(100) % 10] + 0.01
    labels = torch.arange(100) % 10
    res = Z.classify(torch.nn.functional.normalize(images, dim=-1), eye, labels)
    assert res["top1"]["share"] == 1.0 and res["summary"]["top1"]["denominator"] == "N=100"
    assert res["chance_top1"] == 0.1 and res["chance_top5"] == 0.5
    shuffled = labels[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    res = Z.classify(torch.nn.functional.normalize(images, dim=-1), eye, shuffled)
    assert res["top1"]["ci"][0] < 0.1 + 0.1 and res["top1"]["share"] < 0.3
    # top-5: the true class among the 5 most similar
    sims = torch.nn.functional.normalize(torch.tensor([[5., 4, 3, 2, 1, 0]]), dim=-1)
    res = Z.classify(sims, torch.eye(6), torch.tensor([4]), min_items=1)
    assert res["top1"]["count"] == 0 and res["top5"]["count"] == 1
    res = Z.classify(sims, torch.eye(6), torch.tensor([4]))
    assert res["summary"]["top1"] == {"value": None, "denominator": "n/a (N = 1, fewer than 20)", "ci": None}


def _folder(tmp_path, colours: dict[str, tuple]) -> None:
    for name, rgb in colours.items():
        d = tmp_path / name
        d.mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), rgb).save(d / f"{i}.png")


def test_folder_run_counts_unreadable_files(tmp_path):
    colours = {"red_car": (255, 0, 0), "green_tree": (0, 255, 0), "blue_sky": (0, 0, 255)}
    _folder(tmp_path, colours)
    (tmp_path / "red_car" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "red_car" / "notes.txt").write_text("x")
    folder = Z.load_folder(tmp_path)
    assert folder.classnames == ["blue sky", "green tree", "red car"]

    def image_fn(im):
        return torch.tensor(im.getpixel((0, 0)), dtype=torch.float)

    def text_fn(s):
        return torch.tensor([float("blue" in s), float("green" in s), float("red" in s)]).flip(0) * 255

    adapter = TableAdapter(image_fn, text_fn)
    res = Z.run_prepared(adapter, Z.prepare_folder(adapter, folder), min_items=1)
    assert res["top1"]["share"] == 1.0 and res["n_images"] == 9
    assert res["skipped"] == {"not an image file": 1, "unreadable image": 1}


def test_folder_problems(tmp_path):
    assert "is not a directory" in Z.folder_problem(tmp_path / "nope")
    (tmp_path / "only").mkdir()
    assert "1 class folder" in Z.folder_problem(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "classnames.txt").write_text("a\nb\nc\n")
    assert "3 names for 2 class folders" in Z.folder_problem(tmp_path)
    with pytest.raises(ValueError, match="3 names"):
        Z.load_folder(tmp_path)
