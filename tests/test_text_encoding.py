"""Length-trimmed text encoding (eval.text_encoding): equal to open_clip's encode_text, exact fallbacks.

Random-init models only (nothing downloads). Trimmed outputs are compared with open_clip's to
1e-5 (they differ by float rounding of smaller matrix products); every path that is *not*
trimmed (switch off, ineligible tower, full-length batch) must be bit-identical.
"""
from __future__ import annotations

import dataclasses
import logging
import math

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP

from _scripts import load_script
from eval.model_access import ClipAdapter
from eval.models import register_model_configs
from eval.text_encoding import encode_text, pooled_positions, trim_ineligibility, trimmed_forward

#: two code paths over the same weights; scaled to the magnitudes compared (gradients reach ~6 here,
#: where float32 reordering differs by ~1e-5 absolute, ~2e-6 relative, by CPU and thread count)
TOL = dict(rtol=1e-5, atol=1e-5)
CAPTIONS = ["a dog", "pizza", "a dog and a cat and a big red bus", "a photo of a cat on a mat",
            "egg", "a lamp and a kite"]
#: a small config built without the registry (the ineligibility tests vary its text tower)
SMALL = {"embed_dim": 32,
         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    register_model_configs()
    yield
    torch.set_num_threads(before)


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval(), open_clip.get_tokenizer(name)


def _small(cls=CLIP, seed: int = 0, **text_cfg):
    torch.manual_seed(seed)
    return cls(SMALL["embed_dim"], SMALL["vision_cfg"], {**SMALL["text_cfg"], **text_cfg}).eval()


def _tokens(n: int = 16, captions=CAPTIONS) -> torch.Tensor:
    return open_clip.get_tokenizer("clip-micro")(captions)[:, :n]


class _Lengths:
    """Records the sequence length every text-transformer pass sees (at its first block's ln_1,
    which open_clip's blocks and the inference path of eval.text_encoding both call)."""

    def __init__(self, transformer):
        self.seen: list[int] = []
        axis = 1 if transformer.batch_first else 0
        self.handle = transformer.resblocks[0].ln_1.register_forward_pre_hook(
            lambda m, args: self.seen.append(args[0].shape[axis]))


@pytest.mark.parametrize("name", ["clip-micro", "clip-tiny", "ViT-B-32"])
def test_equals_open_clip_and_trims(name):
    model, tok = _model(name)
    text = tok(CAPTIONS[:4] if name == "ViT-B-32" else CAPTIONS)  # ViT-B-32: ~150M params, small batch
    assert trim_ineligibility(model) is None
    lengths = _Lengths(model.transformer)
    with torch.no_grad():
        for normalize in (False, True):
            ref = model.encode_text(text, normalize=normalize)
            got = encode_text(model, text, normalize=normalize)
            assert got.shape == ref.shape and got.dtype == ref.dtype
            torch.testing.assert_close(got, ref, **TOL)
    last_eot = int(text.argmax(-1).max())
    assert lengths.seen == [text.shape[1], last_eot + 1] * 2  # open_clip: full context; ours: trimmed


def test_inference_takes_the_fused_attention_path_and_training_does_not(monkeypatch):
    """At inference the trimmed tower hands nn.MultiheadAttention a boolean causal mask, so it takes
    torch's fused path (open_clip's float mask keeps it off); same embeddings as open_clip. With
    autograd on, or in train mode, open_clip's own blocks run (never the fused path)."""
    model, tok = _model("clip-tiny")
    text = tok(CAPTIONS)
    fused = []
    native = torch._native_multi_head_attention
    monkeypatch.setattr(torch, "_native_multi_head_attention", lambda *a, **k: fused.append(1) or native(*a, **k))
    with torch.no_grad():
        ref = model.encode_text(text, normalize=True)
        assert fused == []  # open_clip's float mask: no fused attention
        got = encode_text(model, text, normalize=True)
    assert len(fused) == len(model.transformer.resblocks)
    torch.testing.assert_close(got, ref, **TOL)
    fused.clear()
    torch.testing.assert_close(encode_text(model, text, normalize=True), ref, **TOL)  # grad enabled
    with torch.no_grad():
        model.train()
        torch.testing.assert_close(encode_text(model, text, normalize=True), ref, **TOL)  # no dropout in clip-tiny
    assert fused == []


def test_loss_and_gradients_of_a_training_step_equal_untrimmed():
    from train.loss import build_loss, contrastive_loss

    model, tok = _model("clip-tiny", seed=1)
    model.train()
    text = tok(CAPTIONS + ["a cat", "a bus and a dog"])
    images = torch.randn(len(text), 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def step(trim: bool):
        model.zero_grad(set_to_none=True)
        loss = contrastive_loss(model, images, text, build_loss("clip"), trim_text=trim)
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    lengths = _Lengths(model.transformer)
    loss_ref, grads_ref = step(False)
    loss, grads = step(True)
    assert lengths.seen == [text.shape[1], int(text.argmax(-1).max()) + 1]
    assert "encode_text" not in vars(model)  # the shadow is gone after the block
    torch.testing.assert_close(loss, loss_ref, **TOL)
    assert grads.keys() == grads_ref.keys() and "positional_embedding" in grads
    for k in grads_ref:
        torch.testing.assert_close(grads[k], grads_ref[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
    assert float(grads_ref["token_embedding.weight"].abs().max()) > 1e-4  # a real, nonzero gradient


def test_direct_encode_text_gradients_equal():
    """The hook for validation/custom steps: encode_text(model, ...) in place of model.encode_text."""
    model = _small(seed=2).train()
    text = _tokens()
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(len(text), 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = []
    for trim in (False, True):
        model.zero_grad()
        img = model.encode_image(images, normalize=True)
        loss = loss_fn(img, encode_text(model, text, normalize=True, trim=trim), model.logit_scale.exp())
        loss.backward()
        out.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(out[1][0], out[0][0], **TOL)
    for a, b in zip(out[1][1], out[0][1]):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("kind,match", [
    ("pool_last", "pool type 'last'"),
    ("no_causal_mask", "no causal attention mask"),
    ("altered_mask", "not the standard causal mask"),
    ("cls_token", "appends a CLS token"),
    ("custom_class", "not an open_clip CLIP"),
])
def test_ineligible_tower_is_bit_identical_and_says_why(kind, match, caplog):
    if kind == "pool_last":
        model = _small(pool_type="last")
    elif kind == "no_causal_mask":
        model = _small(no_causal_mask=True)
    elif kind == "altered_mask":
        model = _small()
        model.attn_mask[0, 1] = 0.0  # attends one step into the future: trimming would change it
    elif kind == "cls_token":
        model = _small(CustomTextCLIP, embed_cls=True)
    else:
        class MyCLIP(CLIP):
            def encode_text(self, text, normalize=False):
                return super().encode_text(text, normalize) * 2

        model = _small(MyCLIP)
    text = _tokens()
    reason = trim_ineligibility(model)
    assert reason is not None and match in reason
    assert pooled_positions(model, text) is None
    with caplog.at_level(logging.INFO, logger="eval.text_encoding"), torch.no_grad():
        for _ in range(2):
            assert torch.equal(encode_text(model, text, normalize=True), model.encode_text(text, normalize=True))
    assert sum(match in r.getMessage() for r in caplog.records) <= 1  # logged once per class+reason
    with trimmed_forward(model):
        assert "encode_text" not in vars(model)  # nothing shadowed for an ineligible tower


def test_custom_text_model_through_the_adapter():
    """A model that is not open_clip's (encode_text(tokens) without a normalize flag) keeps working."""
    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(49408, 8)

        def encode_text(self, tokens):
            return self.emb(tokens)

        def encode_image(self, images):
            return images.flatten(1)

    model, text = Bag(), _tokens()
    assert "not an open_clip CLIP" in trim_ineligibility(model)
    got = ClipAdapter(model, preprocess=None, tokenizer=None).encode_text(text)
    assert torch.equal(got, torch.nn.functional.normalize(model.encode_text(text), dim=-1).detach())


def test_switch_off_and_full_length_batch_are_open_clips_path():
    model = _small()
    text = _tokens()
    with torch.no_grad():
        assert torch.equal(encode_text(model, text, trim=False), model.encode_text(text))
        full = _tokens(captions=["a " * 40 + "dog", "pizza"])  # first caption fills the context
        assert int(full.argmax(-1).max()) == full.shape[1] - 1
        assert torch.equal(encode_text(model, full, normalize=True), model.encode_text(full, normalize=True))
    with trimmed_forward(model, enabled=False):
        assert "encode_text" not in vars(model)


@pytest.mark.parametrize("cls,cfg", [(CLIP, {"pool_type": "eos", "eos_id": 49407}),
                                     (CustomTextCLIP, {}),
                                     (CustomTextCLIP, {"qk_norm": True, "scale_fc": True}),
                                     (CLIP, {"proj_bias": True})])
def test_other_eligible_towers(cls, cfg):
    """EOS pooling, CustomTextCLIP's TextTransformer, custom blocks, a Linear projection."""
    model = _small(cls, **cfg)
    text = _tokens()
    assert trim_ineligibility(model) is None
    with torch.no_grad():
        torch.testing.assert_close(encode_text(model, text, normalize=True), model.encode_text(text, normalize=True),
                                   **TOL)


def test_adapter_encodes_each_distinct_row_once_sorted_by_length():
    model = _small()
    captions = CAPTIONS + CAPTIONS[:3] + ["a dog"]
    text = _tokens(captions=captions)
    lengths = _Lengths(model.transformer)
    rows = []
    model.transformer.resblocks[0].ln_1.register_forward_pre_hook(lambda m, args: rows.append(args[0].shape[0]))
    trimmed = ClipAdapter(model, preprocess=None, tokenizer=None, batch_size=2, share_prefixes=False)
    plain = ClipAdapter(model, preprocess=None, tokenizer=None, batch_size=2, trim_text=False)
    ref = torch.nn.functional.normalize(model.encode_text(text).detach(), dim=-1)
    lengths.seen.clear(), rows.clear()
    got = trimmed.encode_text(text)
    assert sum(rows) == len(set(captions)) == len(CAPTIONS)
    assert lengths.seen == sorted(lengths.seen) and max(lengths.seen) < text.shape[1]  # short chunks first
    # chunks hold at most as many tokens as batch_size full rows, so short captions share a chunk
    assert all(r * n <= 2 * text.shape[1] for r, n in zip(rows, lengths.seen)) and max(rows) > 2
    torch.testing.assert_close(got, ref, **TOL)
    lengths.seen.clear(), rows.clear()
    off = plain.encode_text(text)
    assert sum(rows) == len(CAPTIONS) and set(lengths.seen) == {text.shape[1]}
    torch.testing.assert_close(off, ref, **TOL)
    assert torch.equal(got[0], got[-1])  # duplicates scattered back from one encoding


def test_adapter_from_module_follows_the_module_switch():
    class Module(torch.nn.Module):
        def __init__(self, trim):
            super().__init__()
            self.model, self.tokenizer, self.preprocess_val = _small(), _tokens, lambda im: im
            if trim is not None:
                self.trim_text = trim

    assert ClipAdapter.from_module(Module(None)).trim_text is True
    assert ClipAdapter.from_module(Module(False)).trim_text is False


def _assert_close_tree(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=0, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.fixture(scope="module")
def micro_suite(tmp_path_factory):
    """A random-init clip-micro adapter and the fake eval set of tests/test_probes_suite.py."""
    from test_probes_suite import write_fake_eval_set

    from eval.manifest import load_eval_set

    eval_set = load_eval_set(write_fake_eval_set(tmp_path_factory.mktemp("es")))
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("clip-micro")
    return ClipAdapter(model.eval(), preprocess, open_clip.get_tokenizer("clip-micro")), eval_set


def test_probe_suite_same_results_with_and_without_trimming(micro_suite):
    from test_probes_suite import SIZES

    from eval.suite import prepare_suite, run_suite

    adapter, eval_set = micro_suite
    prepared = prepare_suite(adapter, eval_set, n_objects=(2, 3), items_per_probe=24, linear_items=96,
                             itm_distractors=3, size_classes=SIZES, progress=False,
                             text_encodings=("plain",))
    on = run_suite(adapter, prepared)
    untrimmed = dataclasses.replace(adapter, trim_text=False)
    off = run_suite(untrimmed, prepared)
    emb_on, emb_off = adapter.encode_text(prepared.tokens), untrimmed.encode_text(prepared.tokens)
    assert float((emb_on - emb_off).abs().max()) < 1e-5
    _assert_close_tree(on, off)
    # The "split" encoding is compared as embeddings, not probe results: it is order-free by
    # construction, so a 2-object caption ties exactly between its objects (sim(a+b, a) = sim(a+b, b))
    # and float rounding of any kind picks the TOR winner.
    from eval.text_split import encode_split

    lists = prepared.tasks["tor"][3]["lists"]
    torch.testing.assert_close(encode_split(adapter, lists), encode_split(untrimmed, lists), **TOL)


def test_bench_compare_smoke(micro_suite):
    """bench/bench_probes.py --compare: both runs timed, results checked equal."""
    from eval.suite import SuiteConfig

    bench = load_script("bench/bench_probes.py")
    adapter, eval_set = micro_suite
    cfg = SuiteConfig(probes=("tor", "itm"), n_objects=(2,), items_per_probe=12, templates=("and_chain",))
    row = bench.compare_trimming(dataclasses.replace(adapter), eval_set, cfg, repeats=1)
    assert row["results_equal_1e-5"] and row["result_diffs"] == [] and row["max_embedding_diff"] < 1e-5
    assert row["untrimmed_s"] > 0 and row["trimmed_s"] > 0 and row["speedup"] > 0
    assert row["max_caption_tokens"] < row["context_length"]
    assert bench.result_diffs({"a": [1.0, 2]}, {"a": [1.0 + 1e-4, 2]}) == ["/a[0]: 1.0 vs 1.0001"]


def test_bench_compare_fused_times_the_float_mask_path_against_the_fused_one(micro_suite, monkeypatch):
    """bench/bench_probes.py --compare-fused: only its 'fused' run reaches the fused kernel; the
    switch is restored afterwards; the embeddings agree."""
    import eval.text_encoding as te
    from eval.suite import SuiteConfig, prepare_suite

    bench = load_script("bench/bench_probes.py")
    adapter, eval_set = micro_suite
    cfg = SuiteConfig(probes=("tor", "itm"), n_objects=(2,), items_per_probe=12, templates=("and_chain",))
    calls = []
    native = torch._native_multi_head_attention
    monkeypatch.setattr(torch, "_native_multi_head_attention", lambda *a, **k: calls.append(1) or native(*a, **k))
    with torch.no_grad():  # the row-by-row path (bench.compare_fused uses it), not the prefix trie
        dataclasses.replace(adapter, share_prefixes=False).encode_text(
            prepare_suite(adapter, eval_set, cfg, progress=False).tokens)
    one_pass = len(calls)
    assert one_pass > 0
    calls.clear()
    ready = te._fast_path_ready
    row = bench.compare_fused(adapter, eval_set, cfg, repeats=2)
    assert len(calls) == 2 * one_pass  # the two fused runs; the float-mask runs never reach the kernel
    assert te._fast_path_ready is ready
    assert row["equal_1e-5"] and row["float_mask_s"] > 0 and row["fused_s"] > 0 and row["speedup"] > 0


def test_training_loss_uses_the_trimmed_encoder_with_equal_loss_and_gradients(monkeypatch):
    """CLIPModule's step (train.loss.contrastive_loss, trim_text on by default) goes through the
    trimmed encoder and matches open_clip's path; trim_text=False never calls it."""
    import eval.text_encoding as te
    from train.loss import build_loss, contrastive_loss
    from train.module import CLIPModule

    module = CLIPModule(model_name="clip-micro", warmup_steps=0)
    assert module.hparams.trim_text is True
    side = module.model.visual.image_size
    side = side[0] if isinstance(side, (tuple, list)) else side
    torch.manual_seed(0)
    images = torch.randn(8, 3, side, side)
    texts = module.tokenizer(["a dog and a cat", "a red car", "three apples on a table", "x"] * 2)
    calls: list[bool] = []
    real = te.encode_text
    monkeypatch.setattr(te, "encode_text", lambda *a, **k: calls.append(True) or real(*a, **k))
    results = {}
    for trim in (True, False):
        calls.clear()
        module.model.zero_grad()
        loss = contrastive_loss(module.model, images, texts, build_loss("clip"), trim_text=trim)
        loss.backward()
        results[trim] = (loss.detach(), {n: p.grad.clone() for n, p in module.model.named_parameters()
                                         if p.grad is not None})
        assert bool(calls) == trim
    (l1, g1), (l0, g0) = results[True], results[False]
    assert torch.allclose(l1, l0, atol=1e-5)
    assert g1.keys() == g0.keys()
    assert max((g1[n] - g0[n]).abs().max().item() for n in g1) < 1e-5
