"""`python -m eval coco / sugarcrepe / zeroshot / word-order` end to end, bad input, and the field's
tools (plain open_clip, as clip_benchmark loads a model) reading an exported checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.cli import main

DATA = Path(__file__).parent / "data" / "coco_mini"
COCO = ["--images", str(DATA / "val2017"), "--instances", str(DATA / "instances_val2017.json"),
        "--captions", str(DATA / "captions_val2017.json")]


@pytest.fixture(scope="module")
def micro_ckpt(tmp_path_factory) -> Path:
    """A CLIPModule checkpoint of clip-micro (random init), as the trainer stores it."""
    from train.module import CLIPModule

    torch.manual_seed(0)
    module = CLIPModule("clip-micro")
    path = tmp_path_factory.mktemp("ckpt") / "micro.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "open_clip": {"model_name": "clip-micro", "model_cfg": __import__("eval.models").models.model_config("clip-micro")}},
               path)
    return path


def test_coco_command_on_real_photos(micro_ckpt, tmp_path, capsys):
    out = tmp_path / "coco.json"
    assert main(["coco", *COCO, "--checkpoint", str(micro_ckpt), "--out", str(out), "--no-progress",
                 "--min-items", "5"]) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"coco_bias", "word_order_coco"}
    assert res["coco_bias"]["summary"]["size_bias"]["denominator"] == "N=9"
    assert res["coco_bias"]["image"]["skipped"] == {"largest < 2 x the next category": 2, "fewer than 2 categories": 1}
    assert res["word_order_coco"]["n_items"] + sum(res["word_order_coco"]["skipped"].values()) == 60
    printed = capsys.readouterr().out
    assert "size_bias" in printed and "order_bias_own_first_not_largest" in printed and "N=9" in printed
    # default minimum of 20: the 9 images read n/a
    assert main(["coco", *COCO, "--checkpoint", str(micro_ckpt), "--out", str(out), "--no-progress",
                 "--no-word-order"]) == 0
    res = json.loads(out.read_text())["results"]
    assert set(res) == {"coco_bias"} and res["coco_bias"]["summary"]["size_bias"]["value"] is None
    assert "n/a (N = 9, fewer than 20)" in capsys.readouterr().out


def test_sugarcrepe_command(micro_ckpt, tmp_path):
    out = tmp_path / "sc.json"
    assert main(["sugarcrepe", "--dir", str(DATA / "sugarcrepe"), "--images", str(DATA / "val2017"),
                 "--checkpoint", str(micro_ckpt), "--out", str(out), "--no-progress", "--min-items", "1"]) == 0
    res = json.loads(out.read_text())["results"]["sugarcrepe"]
    assert sum(r["n_pairs"] for r in res["subsets"].values()) == 69


@pytest.mark.parametrize("argv, message", [
    (["coco", "--images", "/nope", "--instances", "/nope.json"], "--images /nope is not a directory"),
    (["coco", *COCO, "--ratio", "0.5"], "--ratio must be >= 1, got 0.5"),
    (["sugarcrepe", "--dir", str(DATA), "--images", str(DATA / "val2017")], "has none of add_obj.json"),
    (["zeroshot", "--folder", str(DATA / "sugarcrepe")], "0 class folder(s)"),
    (["word-order", "--items", "0"], "--items must be positive, got 0"),
    (["word-order", "--template", "poem"], "--template: unknown 'poem'"),
])
def test_bad_input_is_refused_before_the_model_loads(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--model", "no-such-model", "--out", str(tmp_path / "o.json")])
    assert message in str(e.value)
    assert not (tmp_path / "o.json").exists()


def _colour_folder(root: Path) -> None:
    for name, rgb in {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), tuple(min(255, c + 8 * i) for c in rgb)).save(root / name / f"{i}.png")


PLAIN_OPEN_CLIP = textwrap.dedent('''
    import json, sys
    import open_clip, torch
    from PIL import Image
    from pathlib import Path
    config, weights, name, folder = sys.argv[1:5]
    open_clip.add_model_config(config)  # the one line a plain open_clip / clip_benchmark user adds
    # clip_benchmark.models.open_clip.load_open_clip does exactly this:
    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=weights)
    tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    templates = json.loads(sys.argv[5])
    with torch.no_grad():
        w = open_clip.build_zero_shot_classifier(model, tokenizer, classes, templates, num_classes_per_batch=None)
        hits = n = 0
        for i, c in enumerate(classes):
            for f in sorted((Path(folder) / c).iterdir()):
                x = transform(Image.open(f).convert("RGB"))[None]
                pred = int((model.encode_image(x, normalize=True) @ w).argmax())
                hits += pred == i
                n += 1
    print(json.dumps({"hits": hits, "n": n}))
''')


def test_plain_open_clip_reads_the_export_and_agrees_on_zero_shot(micro_ckpt, tmp_path):
    """`train export` -> weights + config; plain open_clip (no clip_bias_lab import, as clip_benchmark
    loads models) builds it and scores the same zero-shot hits as `python -m eval zeroshot`."""
    from eval.models import export_checkpoint
    from eval.zeroshot import TEMPLATES

    folder = tmp_path / "folder"
    _colour_folder(folder)
    name, weights = export_checkpoint(micro_ckpt, tmp_path / "export" / "clip.pt")
    config = weights.with_name(f"{name}.json")
    script = tmp_path / "plain.py"
    script.write_text(PLAIN_OPEN_CLIP)
    done = subprocess.run([sys.executable, str(script), str(config), str(weights), name, str(folder),
                           json.dumps(list(TEMPLATES))], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    for model_args in (["--checkpoint", str(micro_ckpt)], ["--model", name, "--pretrained", str(weights)]):
        out = tmp_path / "zs.json"
        assert main(["zeroshot", "--folder", str(folder), *model_args, "--out", str(out), "--no-progress",
                     "--min-items", "1"]) == 0
        ours = json.loads(out.read_text())["results"]["zeroshot_folder"]
        assert (ours["top1"]["count"], ours["top1"]["total"]) == (plain["hits"], plain["n"]) == (ours["top1"]["count"], 12)


def test_a_prompts_file_without_some_category_names_it(micro_ckpt, tmp_path, capsys):
    cats = json.loads((DATA / "instances_val2017.json").read_text())["categories"]
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({c["name"]: f"a photo of one {c['name']}" for c in cats if c["name"] != "person"}))
    out = tmp_path / "coco.json"
    assert main(["coco", *COCO, "--prompts", str(prompts), "--checkpoint", str(micro_ckpt), "--out", str(out),
                 "--no-progress", "--no-word-order", "--min-items", "1"]) == 0
    res = json.loads(out.read_text())["results"]["coco_bias"]
    assert res["no_prompt"] == ["person"] and res["image"]["skipped"]["category without prompt"] >= 1
    assert "category without prompt" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(SystemExit, match="--prompts: .*not JSON"):  # before the model loads
        main(["coco", *COCO, "--prompts", str(tmp_path / "bad.json"), "--model", "no-such-model",
              "--out", str(out), "--no-progress"])
