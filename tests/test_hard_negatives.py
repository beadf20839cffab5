"""HardNegatives (NegCLIP-style): the negatives it builds, its loss against a brute force, seeding."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from data_prep.corpus_spec import CorpusSpec
from data_prep.relations import OPPOSITE, RELATION_WORDS
from data_prep.synth import make_sample
from train.aux_losses.hard_negatives import hard_negative, hard_negative_sum
from train.mitigations import CaptionShuffle

SHUFFLE = CaptionShuffle(p=1.0)


def _metas(kind: str, n: int = 40) -> list[dict]:
    spec = CorpusSpec(num_samples=n, relation_share=1.0 if kind == "relation" else 0.0,
                      attribute_share=1.0 if kind == "attribute" else 0.0)
    return [m for i in range(n) if (m := make_sample(i, spec, str(i))[3]).get("caption_kind", "list") == kind]


def test_negatives_use_the_caption_s_own_spans():
    kinds = set()
    for meta in _metas("relation"):
        neg, kind = hard_negative(meta, meta["caption"], random.Random(meta["key"]), SHUFFLE)
        kinds.add(kind)
        assert neg != meta["caption"]
        if kind == "swap_obj":
            assert RELATION_WORDS[meta["relation"]] in neg and sorted(neg.split()) == sorted(meta["caption"].split())
        else:
            assert RELATION_WORDS[OPPOSITE[meta["relation"]]] in neg
    assert kinds == {"swap_obj", "replace_rel"}
    for meta in _metas("attribute"):
        neg, kind = hard_negative(meta, meta["caption"], random.Random(0), SHUFFLE)
        assert kind == "swap_att" and sorted(neg.split()) == sorted(meta["caption"].split()) and neg != meta["caption"]
    for meta in _metas("list")[:10]:  # a reordered list is still true: no negative
        assert hard_negative(meta, meta["caption"], random.Random(0), SHUFFLE) is None
    free = {"caption": "A dog chasing a cat on the grass", "key": "x"}
    neg, kind = hard_negative(free, free["caption"], random.Random(1), SHUFFLE)
    assert kind == "swap_mentions" and neg != free["caption"]
    assert hard_negative({"caption": "A sunny day"}, "A sunny day", random.Random(1), SHUFFLE) is None


def test_loss_equals_a_brute_force_cross_entropy():
    g = torch.Generator().manual_seed(0)
    n, b, d = 6, 3, 8
    texts = F.normalize(torch.randn(n, d, generator=g), dim=-1)
    images = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    negs = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    mask = torch.tensor([True, False, True])
    offset, scale = 3, torch.tensor(10.0)
    got = hard_negative_sum(images, texts, negs, mask, offset, scale)
    want = 0.0
    for i in (0, 2):
        logits = scale * torch.cat([images[i] @ texts.T, (images[i] @ negs[i])[None]])
        want = want - torch.log_softmax(logits, 0)[offset + i]
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # a negative equal to the caption halves the caption's probability share with it: the loss rises
    negs2 = negs.clone()
    negs2[0] = texts[offset]
    assert hard_negative_sum(images, texts, negs2, mask, offset, scale) > 0
    assert hard_negative_sum(images, texts, negs, torch.zeros(3, dtype=torch.bool), offset, scale).item() == 0.0
