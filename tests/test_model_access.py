"""ClipAdapter: live module access, Lightning checkpoint round trip, open_clip files, bad input."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from PIL import Image

from _clip_fixtures import TINY_CFG, TinyCLIPModule, random_batches, register_tiny
from eval.model_access import ClipAdapter
from eval.prefix_sharing import trie_plan

#: the same weights run by two code paths: equal up to float32 reordering on any CPU and thread count
#: (embeddings are L2-normalised, so entries are <= 1 and the absolute term sets the floor)
SAME_WEIGHTS = dict(rtol=1e-5, atol=1e-6)
#: a bfloat16 copy (8 mantissa bits, relative step 2^-8 per op) against float32
BF16_VS_FP32 = dict(rtol=0.02, atol=0.05)


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return register_tiny(tmp_path_factory.mktemp("model_configs"))


@pytest.fixture(scope="module")
def trained(tiny_name, tmp_path_factory):
    """A module after 2 real optimizer steps and its Lightning checkpoint written by the Trainer."""
    root = tmp_path_factory.mktemp("run")
    module = TinyCLIPModule(tiny_name)
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root, accelerator="cpu")
    trainer.fit(module, train_dataloaders=random_batches(module, 2))
    ckpt = root / "tiny.ckpt"
    trainer.save_checkpoint(ckpt)
    return module, ckpt


def _inputs(adapter: ClipAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = [Image.new("RGB", (40, 48), c) for c in ("red", "navy", "white")]
    images = torch.stack([adapter.preprocess(im) for im in imgs])
    return images, adapter.tokenizer(["a dog and a cat", "a pizza", "cat"])


def test_from_module_matches_open_clip_and_is_normalised(trained):
    module, _ = trained
    adapter = ClipAdapter.from_module(module)
    images, tokens = _inputs(adapter)
    assert tokens.dtype == torch.long and tokens.shape == (3, TINY_CFG["text_cfg"]["context_length"])
    img, txt = adapter.encode_image(images), adapter.encode_text(tokens)
    assert img.dtype == txt.dtype == torch.float32
    assert img.shape == txt.shape == (3, TINY_CFG["embed_dim"])
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(img, module.model.encode_image(images, normalize=True))
        torch.testing.assert_close(txt, module.model.encode_text(tokens, normalize=True))


def test_from_module_sees_live_weights(tiny_name):
    module = TinyCLIPModule(tiny_name)
    adapter = ClipAdapter.from_module(module)
    _, tokens = _inputs(adapter)
    before = adapter.encode_text(tokens)
    with torch.no_grad():
        module.model.text_projection.mul_(-1.0)  # flips every text embedding
    torch.testing.assert_close(adapter.encode_text(tokens), -before)


def test_chunked_encoding_equals_one_batch(trained):
    module, _ = trained
    whole = ClipAdapter.from_module(module)
    chunked = ClipAdapter.from_module(module, batch_size=2)
    images, tokens = _inputs(whole)
    torch.testing.assert_close(chunked.encode_image(images), whole.encode_image(images))
    torch.testing.assert_close(chunked.encode_text(tokens), whole.encode_text(tokens))


def test_from_checkpoint_equals_from_module(trained):
    module, ckpt = trained
    live = ClipAdapter.from_module(module)
    loaded = ClipAdapter.from_checkpoint(ckpt)
    assert not loaded.model.training
    images, tokens = _inputs(live)
    module.model.eval()
    torch.testing.assert_close(loaded.encode_image(images), live.encode_image(images), **SAME_WEIGHTS)
    torch.testing.assert_close(loaded.encode_text(tokens), live.encode_text(tokens), **SAME_WEIGHTS)
    # the checkpoint holds trained weights, not a fresh init
    fresh = ClipAdapter.from_module(TinyCLIPModule(module.model_name))
    assert not torch.allclose(fresh.encode_text(tokens), loaded.encode_text(tokens))
    # preprocess of the loaded model equals the module's eval transform
    im = Image.new("RGB", (50, 37), "green")
    torch.testing.assert_close(loaded.preprocess(im), module.preprocess_val(im))


def test_from_open_clip_with_weights_file_and_lightning_ckpt(trained, tmp_path):
    module, ckpt = trained
    plain = tmp_path / "weights.pt"
    torch.save(module.model.state_dict(), plain)
    ref = ClipAdapter.from_checkpoint(ckpt)
    images, tokens = _inputs(ref)
    for src in (plain, ckpt):
        other = ClipAdapter.from_open_clip(module.model_name, str(src))
        torch.testing.assert_close(other.encode_image(images), ref.encode_image(images), **SAME_WEIGHTS)
        torch.testing.assert_close(other.encode_text(tokens), ref.encode_text(tokens), **SAME_WEIGHTS)


def test_bad_checkpoints_name_the_problem(trained, tmp_path):
    module, ckpt = trained
    text = tmp_path / "notes.ckpt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        ClipAdapter.from_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipAdapter.from_checkpoint(tmp_path / "nope.ckpt")
    plain = tmp_path / "plain.pt"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        ClipAdapter.from_checkpoint(plain)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "hyper_parameters": {}}, other)
    with pytest.raises(ValueError, match="no parameters prefixed 'model.'"):
        ClipAdapter.from_checkpoint(other)
    full = torch.load(ckpt, weights_only=False)
    nameless = tmp_path / "nameless.ckpt"
    torch.save({"state_dict": full["state_dict"], "hyper_parameters": {}}, nameless)
    with pytest.raises(ValueError, match="no 'model_name'"):
        ClipAdapter.from_checkpoint(nameless)
    wide = register_tiny(tmp_path / "cfg", "evaltest-tiny-wide", {**TINY_CFG, "embed_dim": 48})
    with pytest.raises(ValueError, match="weights do not fit open_clip model 'evaltest-tiny-wide'"):
        ClipAdapter.from_checkpoint(ckpt, model_name=wide)
    with pytest.raises(ValueError, match="'no-such-model'"):
        ClipAdapter.from_checkpoint(ckpt, model_name="no-such-model")
    with pytest.raises(TypeError, match="not a CLIP model"):
        ClipAdapter(torch.nn.Linear(2, 2), preprocess=lambda x: x, tokenizer=lambda x: x)
    with pytest.raises(AttributeError, match="preprocess_val"):
        ClipAdapter.from_module(torch.nn.Module())


def test_checkpoint_carrying_its_model_config_needs_no_registry(trained, tmp_path):
    """CLIPModule writes ``checkpoint["open_clip"] = {model_name, model_cfg}``; that alone suffices."""
    module, _ = trained
    sd = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    ckpt = tmp_path / "self_describing.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {"model_name": "mystery-arch"},
                "open_clip": {"model_name": "mystery-arch", "model_cfg": TINY_CFG}}, ckpt)
    loaded = ClipAdapter.from_checkpoint(ckpt)
    live = ClipAdapter.from_module(module)
    images, tokens = _inputs(live)
    module.model.eval()
    torch.testing.assert_close(loaded.encode_image(images), live.encode_image(images), **SAME_WEIGHTS)
    torch.testing.assert_close(loaded.encode_text(tokens), live.encode_text(tokens), **SAME_WEIGHTS)
    # a registered name whose config changed since training: the checkpoint's config wins
    wide = {**TINY_CFG, "embed_dim": 48}
    register_tiny(tmp_path / "cfg", "evaltest-drifted", wide)
    torch.save({"state_dict": sd, "hyper_parameters": {"model_name": "evaltest-drifted"},
                "open_clip": {"model_name": "evaltest-drifted", "model_cfg": TINY_CFG}}, ckpt)
    torch.testing.assert_close(ClipAdapter.from_checkpoint(ckpt).encode_text(tokens), live.encode_text(tokens),
                               **SAME_WEIGHTS)


def test_half_precision_model_gets_cast_inputs_and_float32_outputs(tiny_name):
    module = TinyCLIPModule(tiny_name)
    adapter = ClipAdapter.from_module(module)
    images, tokens = _inputs(adapter)
    ref_img, ref_txt = adapter.encode_image(images), adapter.encode_text(tokens)
    module.model.to(torch.bfloat16)
    img, txt = adapter.encode_image(images), adapter.encode_text(tokens)
    assert img.dtype == txt.dtype == torch.float32
    torch.testing.assert_close(img, ref_img, **BF16_VS_FP32)
    torch.testing.assert_close(txt, ref_txt, **BF16_VS_FP32)


def test_from_open_clip_bad_input(trained, tmp_path):
    module, ckpt = trained
    with pytest.raises(ValueError, match="could not build 'no-such-arch'"):
        ClipAdapter.from_open_clip("no-such-arch")
    renamed = tmp_path / "lightning.pt"
    renamed.write_bytes(ckpt.read_bytes())
    with pytest.raises(ValueError, match="use from_checkpoint"):
        ClipAdapter.from_open_clip(module.model_name, str(renamed))


# ---------------------------------------------------------------- one home for model configs and checkpoints


def test_model_configs_ship_with_the_eval_package(tmp_path, monkeypatch):
    """The tiny configs are package data of ``eval`` (found from a non-editable install too), and
    train builds its models from the same registry."""
    import configparser
    import json
    from pathlib import Path

    import open_clip

    import eval as eval_pkg
    import train.models
    from eval import models

    pkg = Path(eval_pkg.__file__).resolve().parent
    assert models.MODEL_CONFIG_DIR.parent == pkg  # inside the package, not found via the repository
    shipped = sorted(models.MODEL_CONFIG_DIR.glob("*.json"))
    assert {p.stem for p in shipped} >= {"clip-tiny", "clip-micro"}
    cfg = configparser.ConfigParser()
    cfg.read(pkg.parent / "setup.cfg")
    pattern = cfg["options.package_data"]["eval"].strip()
    assert sorted(pkg.glob(pattern)) == shipped  # what setup.cfg ships is every config there is
    models.register_model_configs()
    assert open_clip.get_model_config("clip-tiny") == json.loads((models.MODEL_CONFIG_DIR / "clip-tiny.json").read_text())
    for name in ("check_model_name", "build_model_and_transforms", "model_config", "register_model_configs"):
        assert getattr(train.models, name) is getattr(models, name), name

    # your own configs in ./configs/models are registered too
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "my-own-tiny.json").write_text(json.dumps(TINY_CFG))
    monkeypatch.chdir(tmp_path)
    models.register_model_configs()
    assert open_clip.get_model_config("my-own-tiny") == TINY_CFG
    with pytest.raises(ValueError, match="Unknown model_name 'nope'.*clip-tiny.*my-own-tiny"):
        models.check_model_name("nope")


def test_export_is_the_checkpoint_reader_of_eval(trained, tmp_path):
    import open_clip

    from eval.models import export_checkpoint
    from train.export import export_checkpoint as train_export

    assert train_export is export_checkpoint
    module, ckpt = trained
    name, out = export_checkpoint(ckpt, tmp_path / "w.pt")
    assert name == module.model_name
    plain = open_clip.create_model(name, pretrained=str(out)).eval()
    images = torch.randn(2, 3, 32, 32)
    was_training = module.model.training
    with torch.no_grad():
        torch.testing.assert_close(plain.encode_image(images), module.model.eval().encode_image(images))
    module.model.train(was_training)
    with pytest.raises(ValueError, match="no parameters prefixed 'model.'"):
        other = tmp_path / "other.ckpt"
        torch.save({"state_dict": {"net.weight": torch.zeros(2)}, "hyper_parameters": {}}, other)
        export_checkpoint(other, tmp_path / "x.pt")


def test_one_model_registry():
    """Only eval/models.py registers model configs with open_clip or strips the checkpoint prefix."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = [str(p.relative_to(root)) for d in ("eval", "train") for p in (root / d).rglob("*.py")
                 if p != root / "eval" / "models.py"
                 and any(s in p.read_text(encoding="utf-8") for s in ("add_model_config(", 'startswith("model.")'))]
    assert offenders == []


def test_shared_inputs_encode_once_per_evaluation_with_the_same_embeddings(monkeypatch):
    import open_clip

    import eval.model_access as access

    from eval.models import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clip-micro").eval()
    tok = open_clip.get_tokenizer("clip-micro")
    adapter = ClipAdapter(model, preprocess=None, tokenizer=tok)
    captions = tok(["a photo of a dog", "a cat and a dog", "a photo of a dog"])
    prompts = tok(["a photo of a dog", "a bus"])  # overlaps the captions
    g = torch.Generator().manual_seed(1)
    scenes = torch.randn(4, 3, 32, 32, generator=g)
    singles = scenes[[2, 0]].clone()  # the same images again, as another probe holds them
    ref = {name: adapter.encode_text(t) for name, t in (("captions", captions), ("prompts", prompts))}
    ref_img = {"scenes": adapter.encode_image(scenes), "singles": adapter.encode_image(singles)}
    planned = []
    monkeypatch.setattr(access, "trie_plan", lambda *a, **k: planned.append(1) or trie_plan(*a, **k))
    adapter.share_inputs([captions, prompts, None], [scenes, singles])
    assert planned == [1]  # the union's plan, built at registration
    calls = {"text": [], "image": []}
    model.transformer.resblocks[0].ln_1.register_forward_pre_hook(lambda m, a: calls["text"].append(a[0].shape[0]))
    model.visual.conv1.register_forward_pre_hook(lambda m, a: calls["image"].append(a[0].shape[0]))
    for _ in range(2):  # two evaluations: each encodes the distinct registered rows once
        with adapter.evaluation():
            torch.testing.assert_close(adapter.encode_text(captions), ref["captions"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(adapter.encode_text(prompts), ref["prompts"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(adapter.encode_image(scenes), ref_img["scenes"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(adapter.encode_image(singles), ref_img["singles"], rtol=1e-5, atol=1e-6)
    assert planned == [1]  # and reused by both evaluations
    assert calls["image"] == [4, 4]  # 4 distinct images per evaluation, not 6
    assert len(calls["text"]) == 2  # one trie over the 3 distinct captions, per evaluation
    other = tok(["a red bus"])
    with adapter.evaluation():
        adapter.encode_text(other)  # not registered: encoded as usual
    adapter.encode_text(captions)  # outside an evaluation: encoded as usual
    assert len(calls["text"]) == 4
