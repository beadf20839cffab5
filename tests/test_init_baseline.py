"""experiments/init_baseline.py: the init-seed baseline of TOR and its text-tower ablations."""
from __future__ import annotations

import itertools
import json

import pytest
import torch

from _scripts import load_script
from eval import probes as P
from eval.model_access import ClipAdapter
from eval.suite import prepare_suite, run_suite

MODEL = "clip-tiny"


@pytest.fixture(scope="module")
def ib():
    return load_script("experiments/init_baseline.py")


@pytest.fixture(scope="module")
def seeded(ib):
    """(model, preprocess, tokenizer) of clip-tiny at init, seed 0."""
    return ib.random_model(MODEL, 0)


def _captions(names_lists, template="and_chain"):
    from data_prep.captions import make_caption

    return [make_caption(list(x), template) for x in names_lists]


def test_as_is_is_the_suites_tor(ib):
    """The as_is row is the suite's own TOR (what BiasEvalCallback records at step 0) for that seed."""
    eval_set = ib.default_vocabulary_set()
    for seed in (1,):
        model, preprocess, tokenizer = ib.random_model(MODEL, seed)
        adapter = ClipAdapter(model, preprocess, tokenizer)
        prepared = prepare_suite(adapter, eval_set, probes=("tor",), n_objects=(3,), items_per_probe=None,
                                 progress=False)
        tor = run_suite(adapter, prepared)["tor"][3]
        row = ib.evaluate_seed(MODEL, seed, eval_set, ["as_is"], [])["ablations"]["as_is"]
        assert row["order_bias"]["and_chain"] == tor["summary"]["order_bias"]["value"]
        assert row["order_bias"]["photo"] == tor["variants"]["photo"]["summary"]["order_bias"]["value"]
        assert row["n_items"] == len(eval_set.vocabulary) == 62


def test_ablated_forward_at_identity_is_open_clip(ib, seeded):
    """The ablation forward with nothing ablated reproduces open_clip's encode_text (and padding-free
    grouping by length is exact under the causal mask)."""
    model, _, tokenizer = seeded
    tokens = tokenizer(_captions([("cat", "traffic light", "apple"), ("dog", "axe", "bed")]) + ["cat", "a photo of a dog"])
    with torch.no_grad():
        ref = model.encode_text(tokens, normalize=True)
        mine = ib.ablated_encode_text(model, tokens, ib.Ablation(), normalize=True)
    assert torch.allclose(ref, mine, atol=1e-5)


def test_ablations_change_what_they_claim_and_are_undone(ib, seeded):
    model, preprocess, tokenizer = seeded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = model.attn_mask
    lists = [("cat", "traffic light", "apple"), ("dog", "axe", "bed"), ("banana", "bear", "boat")]
    enc = ClipAdapter(model, preprocess, tokenizer, trim_text=False)

    def perm_spread(ablation):
        """max over sets of the largest embedding difference between permutations of its names."""
        with torch.no_grad(), ib.text_ablation(model, ablation):
            spread = 0.0
            for names in lists:
                emb = enc.encode_text(tokenizer(_captions(itertools.permutations(names))))
                spread = max(spread, float((emb - emb[:1]).abs().max()))
        return spread

    # neither mask nor position: a function of the multiset of tokens
    assert perm_spread(ib.ABLATIONS["no_mask_no_pos"]) < 1e-5
    for name in ("no_causal_mask", "no_pos_emb", "mean_pool"):
        assert perm_spread(ib.ABLATIONS[name]) > 1e-3, name  # each alone keeps order information
    with ib.text_ablation(model, ib.ABLATIONS["no_mask_no_pos"]):
        assert model.attn_mask is None and not model.positional_embedding.any()
    # causal mask: the first name's states equal the bare-name prompt's; without it they do not
    with torch.no_grad():
        assert ib.prefix_state_gap(model, tokenizer, lists) == 0.0
        with ib.text_ablation(model, ib.ABLATIONS["no_pos_emb"]):
            assert ib.prefix_state_gap(model, tokenizer, lists) == 0.0
        with ib.text_ablation(model, ib.ABLATIONS["no_causal_mask"]):
            assert ib.prefix_state_gap(model, tokenizer, lists) > 1e-3
    # mean pooling pools something else than the EOT state
    tokens = tokenizer(_captions(lists))
    with torch.no_grad():
        eot = model.encode_text(tokens)
        with ib.text_ablation(model, ib.ABLATIONS["mean_pool"]):
            mean = model.encode_text(tokens)
    assert (eot - mean).abs().max() > 1e-3
    # undone, also after an error inside the block
    with pytest.raises(RuntimeError, match="boom"):
        with ib.text_ablation(model, ib.ABLATIONS["no_mask_no_pos"]):
            raise RuntimeError("boom")
    assert "encode_text" not in vars(model) and model.attn_mask is mask
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_symmetric_tower_gives_position_symmetric_tor(ib, seeded):
    """Known answer: with a permutation-invariant tower and every order of each name set as a caption,
    each position wins equally often, so the shares are equal and the order bias is exactly 0."""
    model, preprocess, tokenizer = seeded
    vocab = ib.default_vocabulary_set().vocabulary[:12]
    sets = [vocab[i:i + 3] for i in range(0, 12, 3)] + [vocab[i::4][:3] for i in range(4)]
    lists = [p for s in sets for p in itertools.permutations(s)]
    enc = ClipAdapter(model, preprocess, tokenizer, trim_text=False)
    col = {o: i for i, o in enumerate(vocab)}
    targets = torch.tensor([[col[o] for o in x] for x in lists])
    with torch.no_grad(), ib.text_ablation(model, ib.ABLATIONS["no_mask_no_pos"]):
        for template in ("and_chain", "photo"):
            res = P.tor(enc.encode_text(tokenizer(_captions(lists, template))), enc.encode_text(tokenizer(vocab)), targets)
            shares = [res["unconditional"][k]["share"] for k in ("pos1", "pos2", "pos3")]
            assert shares[0] == shares[1] == shares[2] and shares[0] > 0, (template, shares)
            assert res["summary"]["order_bias"]["value"] == 0.0


def test_describe_t_interval(ib):
    d = ib.describe([0.0, 1.0, 2.0, 3.0])
    assert d["mean"] == 1.5 and d["min"] == 0.0 and d["max"] == 3.0
    half = 3.182446305284263 * d["sd"] / 2  # t(0.975, 3 df), sd/sqrt(4)
    assert d["ci95"] == pytest.approx([1.5 - half, 1.5 + half])


def test_cli_two_seeds(ib, tmp_path):
    out = tmp_path / "figs" / "init_baseline"
    assert ib.main(["--seeds", "2", "--out", str(out), "--ablations", "as_is,no_mask_no_pos,as_is_gallery_photo"]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| as_is | and_chain |" in md and "| no_mask_no_pos | photo |" in md and "as_is_gallery_photo" in md
    assert out.with_suffix(".png").stat().st_size > 1000
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["model"] == MODEL and [s["seed"] for s in data["per_seed"]] == [0, 1]
    assert data["summary"]["as_is"]["and_chain"]["n"] == 2
    assert "Paired change against `as_is`" in md
    # md/png are rewritten from the json alone, to the same text
    assert ib.main(["--from-json", str(out.with_suffix(".json")), "--out", str(out)]) == 0
    assert out.with_suffix(".md").read_text() == md
    with pytest.raises(SystemExit):
        ib.main(["--seeds", "2", "--out", str(out), "--ablations", "nope"])
