"""Per-object caption splitting: normalised mean of normalised phrase embeddings, order-free."""
from __future__ import annotations

import random

import open_clip
import pytest
import torch

from eval.model_access import ClipAdapter
from eval.text_split import encode_split

from _clip_fixtures import register_tiny

DIM = 8


class FakeAdapter:
    """Token = phrase id; embedding = a fixed random, *unnormalised* vector per phrase."""

    def __init__(self, seed: int = 0) -> None:
        self.vocab: dict[str, int] = {}
        self.table = torch.randn(100, DIM, generator=torch.Generator().manual_seed(seed)) * 3
        self.seen: list[str] = []
        self.calls = 0

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        self.seen.extend(texts)
        return torch.tensor([[self.vocab.setdefault(t, len(self.vocab))] for t in texts])

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table[tokens[:, 0]]

    def vector(self, phrase: str) -> torch.Tensor:
        return self.table[self.vocab[phrase]]


def hand_computed(adapter: FakeAdapter, objs: list[str], template: str) -> torch.Tensor:
    """The definition, written out with plain loops over the phrases of one caption."""
    total = torch.zeros(DIM)
    for n in objs:
        v = adapter.vector(template.format(n))
        total += v / v.norm()
    mean = total / len(objs)
    return mean / mean.norm()


LISTS = [["dog", "pizza", "car"], ["car", "apple"], ["umbrella"], ["dog", "dog", "cat"], ["cat", "car", "apple", "dog"]]


@pytest.mark.parametrize("template", ["{}", "a photo of a {}"])
def test_equals_hand_computed_normalised_mean(template):
    adapter = FakeAdapter()
    out = encode_split(adapter, LISTS, template=template)
    assert out.shape == (len(LISTS), DIM) and out.dtype == torch.float32
    for row, objs in zip(out, LISTS):
        torch.testing.assert_close(row, hand_computed(adapter, objs, template))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(len(LISTS)))
    # a one-object caption is just that phrase's normalised embedding
    v = adapter.vector(template.format("umbrella"))
    torch.testing.assert_close(out[2], v / v.norm())
    assert all(p.startswith(template.format("")) for p in adapter.seen)


def test_order_invariant_and_not_the_same_as_plain_mean():
    adapter = FakeAdapter(seed=1)
    rng = random.Random(0)
    shuffled = [rng.sample(objs, len(objs)) for objs in LISTS]
    assert shuffled != LISTS
    torch.testing.assert_close(encode_split(adapter, LISTS), encode_split(adapter, shuffled))
    # the per-phrase normalisation matters: unnormalised averaging gives a different direction
    raw = torch.stack([adapter.vector("dog"), adapter.vector("pizza"), adapter.vector("car")]).mean(0)
    assert not torch.allclose(encode_split(adapter, [LISTS[0]])[0], raw / raw.norm(), atol=1e-3)


def test_phrases_deduplicated_and_batched():
    adapter = FakeAdapter()
    full = encode_split(adapter, LISTS)
    distinct = {n for objs in LISTS for n in objs}
    assert sorted(adapter.seen) == sorted(distinct) and adapter.calls == 1
    small = FakeAdapter()
    torch.testing.assert_close(encode_split(small, LISTS, batch_size=2), full)
    assert small.calls == -(-len(distinct) // 2)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="no objects"):
        encode_split(FakeAdapter(), [["dog"], []])
    with pytest.raises(ValueError, match="empty"):
        encode_split(FakeAdapter(), [])
    with pytest.raises(ValueError, match="template"):
        encode_split(FakeAdapter(), [["dog"]], template="a photo of a dog")


def test_with_a_real_open_clip_model(tmp_path):
    name = register_tiny(tmp_path / "cfg")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    adapter = ClipAdapter(model, preprocess, tokenizer, name=name)
    lists = [["dog", "pizza"], ["pizza", "car", "dog"]]
    out = encode_split(adapter, lists, template="a photo of a {}")
    with torch.no_grad():
        for row, objs in zip(out, lists):
            e = model.encode_text(tokenizer([f"a photo of a {n}" for n in objs]), normalize=True)
            mean = e.mean(0)
            torch.testing.assert_close(row, mean / mean.norm(), atol=1e-5, rtol=1e-5)
        # and it differs from encoding the whole caption as one sequence
        whole = model.encode_text(tokenizer(["a photo of a dog and a pizza"]), normalize=True)[0]
    assert (out[0] @ whole).item() < 0.9999
