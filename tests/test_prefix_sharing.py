"""Text encoding over a prefix trie (eval.prefix_sharing): equal to open_clip's encode_text.

References: open_clip's own ``model.encode_text`` on the whole rows, and brute-force prefix counts.
"""
from __future__ import annotations

import random

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from eval.model_access import ClipAdapter
from eval.models import register_model_configs
from eval.prefix_sharing import encode_prefix_trie, prefix_sharing_ineligibility, trie_chunks, trie_plan
from eval.text_encoding import pooled_positions

TOL = dict(rtol=1e-5, atol=1e-5)
SMALL = {"embed_dim": 32,
         "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
         "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}


def _captions(n: int = 60, seed: int = 0) -> list[str]:
    """Template captions over shuffled object names: long shared prefixes, varied lengths."""
    rng = random.Random(seed)
    names = ["dog", "cat", "pizza", "red bus", "lamp", "kite", "umbrella", "egg"]
    out = []
    for _ in range(n):
        picked = rng.sample(names, rng.randint(1, 4))
        template = rng.choice(["a photo of {}", "there is {}", "{}"])
        out.append(template.format(" and ".join(f"a {x}" for x in picked)))
    return out + out[:5]  # and duplicates


def _small(**text_cfg) -> CLIP:
    torch.manual_seed(0)
    return CLIP(SMALL["embed_dim"], SMALL["vision_cfg"], {**SMALL["text_cfg"], **text_cfg}).eval()


@pytest.mark.parametrize("text_cfg", [{}, {"ls_init_value": 0.5}, {"pool_type": "eos", "eos_id": 49407}])
def test_equals_open_clips_encode_text(text_cfg):
    model = _small(**text_cfg)
    text = open_clip.get_tokenizer("clip-micro")(_captions())[:, :16]
    with torch.no_grad():
        assert prefix_sharing_ineligibility(model) is None
        torch.testing.assert_close(encode_prefix_trie(model, text), model.encode_text(text), **TOL)
        # a small attention budget: many length groups, same result
        torch.testing.assert_close(encode_prefix_trie(model, text, budget=20), model.encode_text(text), **TOL)


def test_registered_model_through_the_adapter_equals_the_row_by_row_path():
    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("clip-tiny").eval()
    text = open_clip.get_tokenizer("clip-tiny")(_captions(200, seed=1))
    shared = ClipAdapter(model, preprocess=None, tokenizer=None, batch_size=4)  # several trie chunks
    rows = ClipAdapter(model, preprocess=None, tokenizer=None, batch_size=4, share_prefixes=False)
    calls = []
    model.transformer.resblocks[0].ln_1.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape))
    got = shared.encode_text(text)
    assert len(calls) > 1 and all(len(shape) == 2 for shape in calls)  # the trie path: (nodes, width)
    assert sum(shape[0] for shape in calls) < int((pooled_positions(model, torch.unique(text, dim=0)) + 1).sum())
    torch.testing.assert_close(got, rows.encode_text(text), **TOL)
    ref = torch.nn.functional.normalize(model.encode_text(text).detach(), dim=-1)
    torch.testing.assert_close(got, ref, **TOL)


@pytest.mark.parametrize("budget", [12, 8192])
def test_plan_has_one_node_per_distinct_prefix_and_runs_each_query_once(budget):
    text = open_clip.get_tokenizer("clip-micro")(_captions())[:, :16]
    ends = text.argmax(dim=-1).tolist()
    plan = trie_plan(text, ends, budget)
    rows = text.tolist()
    prefixes = {tuple(r[:k + 1]) for r, e in zip(rows, ends) for k in range(e + 1)}
    assert len(plan.tokens) == len(plan.depths) == len(prefixes)
    assert sorted(zip(plan.depths.tolist(), plan.tokens.tolist())) == sorted((len(p) - 1, p[-1]) for p in prefixes)
    queried = torch.cat([g.query_nodes[g.owned] for g in plan.groups]).tolist()
    assert sorted(queried) == list(range(len(prefixes)))  # every node's query runs once, in one group
    for g in plan.groups:  # a query sees its own path up to itself: keys at depths 0..its depth
        depth = plan.depths[g.query_nodes]
        seen = (~g.hidden).sum(dim=-1)
        assert torch.equal(seen[g.owned], depth[g.owned] + 1)
        assert torch.equal(plan.depths[g.keys][:, :1], torch.zeros(len(g.keys), 1, dtype=torch.long))
        assert g.keys.shape[0] * g.keys.shape[1] <= budget or g.keys.shape[0] == 1
    last = torch.cat([g.query_nodes[g.owned] for g in plan.last_groups]).tolist()
    assert sorted(last) == sorted(plan.ends.tolist()) and len(set(last)) == len({tuple(r[:e + 1]) for r, e in zip(rows, ends)})
    for row, end, slot in zip(rows, ends, plan.row_end.tolist()):  # each row pools its own last node
        node = plan.ends[slot]
        assert (plan.depths[node].item(), plan.tokens[node].item()) == (end, row[end])


@pytest.mark.parametrize("budget", [8, 40, 10_000])
def test_trie_chunks_stay_within_their_node_budget(budget):
    text = torch.unique(open_clip.get_tokenizer("clip-micro")(_captions(80))[:, :16], dim=0)
    lengths = text.argmax(dim=-1) + 1
    sizes = trie_chunks(text, lengths, budget)
    assert sum(sizes) == text.shape[0]
    start = 0
    for size in sizes:
        rows = text[start:start + size].tolist()
        nodes = {tuple(r[:k + 1]) for r, n in zip(rows, lengths[start:start + size].tolist()) for k in range(n)}
        assert len(nodes) <= budget or size == 1
        start += size
    if budget == 10_000:
        assert sizes == [text.shape[0]]


def test_not_used_where_it_would_not_be_exact_or_at_inference():
    model = _small()
    assert "not plain inference" in prefix_sharing_ineligibility(model)  # autograd on
    with torch.no_grad():
        assert "not plain inference" in prefix_sharing_ineligibility(model.train())
        assert "causal" in prefix_sharing_ineligibility(_small(pool_type="argmax", no_causal_mask=True))
    text = open_clip.get_tokenizer("clip-micro")(_captions())[:, :16]
    model.train()  # the adapter falls back to the length-trimmed path, same embeddings
    torch.manual_seed(0)
    got = ClipAdapter(model, preprocess=None, tokenizer=None).encode_text(text)
    with torch.no_grad():
        torch.testing.assert_close(got, torch.nn.functional.normalize(model.encode_text(text), dim=-1), **TOL)


def test_bench_compare_prefixes_smoke(tmp_path):
    """bench/bench_probes.py --compare-prefixes: both runs timed, results and embeddings checked equal."""
    from _scripts import bench_probes_on_micro

    from eval.suite import SuiteConfig

    bench, eval_set, adapter = bench_probes_on_micro(tmp_path)
    cfg = SuiteConfig(probes=("tor", "itm"), n_objects=(2,), items_per_probe=12, templates=("and_chain", "photo"))
    row = bench.compare_prefixes(adapter, eval_set, cfg, repeats=1)
    assert row["results_equal_1e-5"] and row["result_diffs"] == [] and row["max_embedding_diff"] < 1e-5
    assert row["rows_s"] > 0 and row["trie_s"] > 0 and row["encode_text_speedup"] > 0
    assert bench.result_diffs({"a": [1.0]}, {"a": [1.1]})  # the equality check can fail
