"""Probes on hand-built embeddings whose answers are known."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from eval import probes
from eval.manifest import ManifestError, load_eval_set
from eval.stats import difference_interval, proportion, wilson_interval

VOCAB = [f"obj{i:02d}" for i in range(12)]


def name_vectors(m: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    """Fixed random orthonormal rows."""
    q, _ = torch.linalg.qr(torch.randn(d, m, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def targets_of(lists: list[list[str]], vocab=VOCAB) -> torch.Tensor:
    idx = {o: i for i, o in enumerate(vocab)}
    return torch.tensor([[idx[o] for o in lst] for lst in lists])


# ---------------------------------------------------------------- Wilson
def test_wilson_matches_hand_computation():
    # 8/10, z = 1.96: centre = (0.8 + 0.19208) / 1.38416 = 0.716738,
    # half = 1.96 / 1.38416 * sqrt(0.016 + 0.009604) = 0.226580 -> [0.4902, 0.9433] (textbook)
    lo, hi = wilson_interval(8, 10, z=1.96)
    assert lo == pytest.approx(0.490158, abs=1e-5)
    assert hi == pytest.approx(0.943318, abs=1e-5)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.16113, abs=1e-4)  # 3.8415 / 23.8415
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="count=5"):
        wilson_interval(5, 3)


def test_proportion_zero_denominator():
    assert proportion(0, 0) == {"share": None, "count": 0, "total": 0, "ci": None}


# ---------------------------------------------------------------- Latin square
@pytest.mark.parametrize("n", [2, 3, 5])
def test_latin_square_counterbalanced(n):
    lists = probes.latin_square_lists(VOCAB, n, 30, seed=3)
    assert len(lists) == 36  # rounded up to whole blocks of 12
    for lst in lists:
        assert len(set(lst)) == n
    for k in range(n):
        counts = Counter(lst[k] for lst in lists)
        assert set(counts) == set(VOCAB) and len(set(counts.values())) == 1


# ---------------------------------------------------------------- TOR
def test_tor_first_object_encoder_gives_share_one_at_pos1():
    g = name_vectors(len(VOCAB))
    lists = probes.latin_square_lists(VOCAB, 3, 48)
    t = targets_of(lists)
    # the caption embedding is mostly its first object, with a little of the others so that
    # the top-3 are exactly its objects (conditional denominator = all items)
    cap = F.normalize(g[t[:, 0]] + 0.3 * g[t[:, 1]] + 0.2 * g[t[:, 2]], dim=-1)
    res = probes.tor(cap, g, t)
    assert res["n_conditional"] == res["n_items"] == 48
    assert res["conditional"]["pos1"]["share"] == 1.0
    assert res["conditional"]["pos2"]["share"] == 0.0
    assert res["unconditional"]["none"]["share"] == 0.0
    assert res["summary"]["order_bias"]["value"] == 1.0 and res["summary"]["order_bias_conditional"]["value"] == 1.0
    # pure first-object encoder: top-1 right, top-3 not the caption's set -> unconditional only
    res = probes.tor(g[t[:, 0]], g, t)
    assert res["unconditional"]["pos1"]["share"] == 1.0


def test_tor_symmetric_encoder_gives_equal_shares():
    g = name_vectors(len(VOCAB))
    lists = probes.latin_square_lists(VOCAB, 3, 120, seed=1)
    t = targets_of(lists)
    # symmetric mean + per-caption noise: which object wins is random, not positional
    noise = 0.05 * torch.randn(len(lists), g.shape[1], generator=torch.Generator().manual_seed(0))
    cap = F.normalize(g[t].mean(1) + noise, dim=-1)
    res = probes.tor(cap, g, t)
    assert res["n_conditional"] == len(lists)
    shares = [res["conditional"][p] for p in ("pos1", "pos2", "pos3")]
    assert sum(s["share"] for s in shares) == pytest.approx(1.0)
    for s in shares:
        assert s["ci"][0] <= 1 / 3 <= s["ci"][1]


def test_summary_index_is_first_minus_mean_of_others():
    g = name_vectors(len(VOCAB))
    t = targets_of([["obj00", "obj01", "obj02"], ["obj03", "obj04", "obj05"],
                    ["obj06", "obj07", "obj08"], ["obj09", "obj10", "obj11"]])
    winner = torch.tensor([0, 0, 1, 2])  # shares 0.5, 0.25, 0.25
    weights = 0.3 + 0.7 * torch.nn.functional.one_hot(winner, 3).float()
    cap = F.normalize((weights[:, :, None] * g[t]).sum(1), dim=-1)
    res = probes.tor(cap, g, t, min_conditional=4)
    assert [res["conditional"][p]["share"] for p in ("pos1", "pos2", "pos3")] == [0.5, 0.25, 0.25]
    assert res["summary"]["order_bias"]["value"] == pytest.approx(0.25) and res["summary"]["order_bias_conditional"]["value"] == pytest.approx(0.25)
    # below the minimum number of conditional items the index is n/a, the denominator still says N_cond
    small = probes.tor(cap, g, t)["summary"]["order_bias_conditional"]
    assert small == {"value": None, "denominator": "N_cond=4/4", "ci": None} and probes.MIN_CONDITIONAL > 4
    assert probes.ior(cap, g, t)["summary"]["size_bias"]["value"] == pytest.approx(0.25)


def test_tor_zero_conditional_denominator():
    g = name_vectors(len(VOCAB))
    t = targets_of([["obj00", "obj01"], ["obj02", "obj03"]])
    cap = g[torch.tensor([5, 6])]  # nearest names are unrelated objects
    res = probes.tor(cap, g, t)
    assert res["n_conditional"] == 0
    assert res["conditional"]["pos1"]["share"] is None and res["conditional_reason"]
    assert res["summary"]["order_bias_conditional"]["value"] is None
    assert res["unconditional"]["none"]["share"] == 1.0 and res["summary"]["order_bias"]["value"] == 0.0


def test_retrieval_matches_brute_force():
    torch.manual_seed(0)
    g = F.normalize(torch.randn(12, 16), dim=-1)
    lists = probes.latin_square_lists(VOCAB, 3, 24)
    t = targets_of(lists)
    q = F.normalize(torch.randn(len(lists), 16), dim=-1)
    res = probes.tor(q, g, t)
    cond, unc, none = Counter(), Counter(), 0
    for i in range(len(lists)):
        sims = [(float(q[i] @ g[j]), j) for j in range(12)]
        top = [j for _, j in sorted(sims, reverse=True)[:3]]
        pos = [k for k in range(3) if int(t[i, k]) == top[0]]
        if pos:
            unc[pos[0]] += 1
        else:
            none += 1
        if set(top) == set(t[i].tolist()):
            cond["n"] += 1
            cond[pos[0]] += 1
    assert res["n_conditional"] == cond["n"]
    for k in range(3):
        assert res["unconditional"][f"pos{k+1}"]["count"] == unc[k]
        assert res["conditional"][f"pos{k+1}"]["count"] == cond[k]
    assert res["unconditional"]["none"]["count"] == none


# ---------------------------------------------------------------- IOR / I2TOR
def test_ior_largest_object_encoder_gives_large_share_one():
    g = name_vectors(len(VOCAB))
    by_role = probes.latin_square_lists(VOCAB, 4, 24, seed=2)  # (large, small1, small2, small3)
    t = targets_of(by_role)
    images = g[t[:, 0]]  # the image encoder sees only the largest object
    res = probes.ior(images, g, t)
    assert res["labels"] == ["large", "small1", "small2", "small3"]
    assert res["unconditional"]["large"]["share"] == 1.0
    assert res["summary"]["size_bias"]["value"] == 1.0
    res2 = probes.i2tor(images, g, t)
    assert res2["probe"] == "i2tor" and res2["unconditional"]["large"]["share"] == 1.0


# ---------------------------------------------------------------- TOC / IOC
def test_toc_recovers_only_the_encoded_position():
    g = name_vectors(len(VOCAB))
    lists = probes.latin_square_lists(VOCAB, 2, 240, seed=0)
    t = targets_of(lists)
    noise = 0.02 * torch.randn(len(lists), g.shape[1], generator=torch.Generator().manual_seed(1))
    cap = F.normalize(g[t[:, 0]] + noise, dim=-1)  # position 2 leaves no trace
    res = probes.toc(cap, t, n_classes=len(VOCAB), seed=0)
    assert res["n_test"] == 72 and res["chance"] == pytest.approx(1 / 12)
    assert res["accuracy"]["pos1"]["share"] > 0.95
    assert res["accuracy"]["pos2"]["share"] < 0.3
    again = probes.toc(cap, t, n_classes=len(VOCAB), seed=0)
    assert again == res  # deterministic
    res_i = probes.ioc(cap, t, n_classes=len(VOCAB))
    assert res_i["labels"] == ["large", "small1"]


@pytest.mark.parametrize("method", ["ridge", "logistic"])
def test_linear_probe_methods_under_no_grad(method):
    g = name_vectors(len(VOCAB))
    t = targets_of(probes.latin_square_lists(VOCAB, 2, 48))
    with torch.no_grad():
        res = probes.toc(g[t[:, 1]], t, n_classes=12, method=method)
    assert res["method"] == method and res["accuracy"]["pos2"]["share"] == 1.0
    assert res["accuracy"]["pos1"]["share"] < 0.5


def test_linear_probe_restores_thread_count():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = name_vectors(len(VOCAB))
        t = targets_of(probes.latin_square_lists(VOCAB, 2, 24))
        probes.toc(g[t[:, 0]], t, n_classes=12)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


def test_ridge_solution_matches_direct_solve():
    torch.manual_seed(0)
    x = torch.randn(40, 6)
    y = torch.randint(0, 5, (40, 2))
    (w,) = probes._ridge_solutions(x, y, 5, [3.0])
    xb = torch.cat([x, torch.ones(40, 1)], 1).double()
    onehot = torch.nn.functional.one_hot(y, 5).double().reshape(40, -1)
    direct = torch.linalg.solve(xb.T @ xb + 3.0 * torch.eye(7, dtype=torch.double), xb.T @ onehot)
    torch.testing.assert_close(w, direct.reshape(7, 2, 5).float(), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- ITM
def test_itm_lists_follow_the_scenarios():
    lists = probes.itm_lists([("car", "cup", "dog")], ["car", "cup", "dog", "fox"])
    assert lists["s1"] == ([0], [["car", "cup", "dog"]], [["fox", "cup", "dog"]])
    assert lists["s2"] == ([0], [["cup", "dog", "car"]], [["car", "cup", "fox"]])


def test_itm_three_item_toy_set_by_hand():
    # 2-D embeddings; three (image, x) pairs. Sims: image·correct vs image·wrong
    e = lambda a: torch.tensor([math.cos(a), math.sin(a)])  # noqa: E731
    img = torch.stack([e(0.0), e(0.0), e(0.0)])
    s1_correct = torch.stack([e(0.1), e(0.5), e(0.2)])
    s1_wrong = torch.stack([e(0.3), e(0.4), e(0.9)])  # wins: yes, no, yes -> 2/3
    s2_correct = torch.stack([e(0.6), e(0.5), e(0.2)])
    s2_wrong = torch.stack([e(0.3), e(0.4), e(0.2)])  # wins: no, no, tie -> 0/3
    s1 = probes.itm_accuracy(img, s1_correct, s1_wrong)
    s2 = probes.itm_accuracy(img, s2_correct, s2_wrong)
    assert (s1["count"], s1["total"]) == (2, 3) and (s2["count"], s2["total"]) == (0, 3)
    res = probes.itm(s1, s2)
    assert res["summary"]["gap"]["value"] == pytest.approx(2 / 3)


def test_itm_first_object_text_encoder_passes_s1_fails_s2():
    """A text encoder that only sees the first-named object matches images by their large object."""
    g = name_vectors(len(VOCAB))
    by_role = probes.latin_square_lists(VOCAB, 3, 12)
    lists = probes.itm_lists(by_role, VOCAB, n_distractors=4, seed=0)
    images = g[targets_of(by_role)[:, 0]]  # image encoder: largest object
    acc = {}
    for s, (idx, correct, wrong) in lists.items():
        enc = lambda ls: g[targets_of(ls)[:, 0]]  # noqa: E731
        acc[s] = probes.itm_accuracy(images[torch.tensor(idx)], enc(correct), enc(wrong))
    assert acc["s1"]["total"] == 48 and acc["s1"]["share"] == 1.0
    assert acc["s2"]["share"] == 0.0  # correct starts with a small object; wrong with the large


# ---------------------------------------------------------------- Claim 1
def test_claim1_lists_and_gap():
    classes = {"bus": "large", "car": "large", "cup": "small", "key": "small",
               "dog": "medium", "man": "medium", "chair": "medium"}
    vocab = sorted(classes)
    lists = probes.claim1_lists(vocab, classes, 3, 6)
    assert len(lists["large_first"]) == len(lists["small_first"]) == 6
    for a, b in zip(lists["large_first"], lists["small_first"]):
        assert classes[a[0]] == "large" and classes[b[0]] == "small" and a[1:] == b[1:]
        assert all(classes[o] == "medium" for o in a[1:])
    g = name_vectors(len(vocab))
    # encoder: large-first captions embed the first object, small-first ones the second
    tl, ts = targets_of(lists["large_first"], vocab), targets_of(lists["small_first"], vocab)
    res = probes.claim1(probes.tor(g[tl[:, 0]], g, tl), probes.tor(g[ts[:, 1]], g, ts))
    assert res["summary"]["first_share_gap"]["value"] == 1.0
    with pytest.raises(ValueError, match="medium"):
        probes.claim1_lists(vocab, {"bus": "large", "cup": "small"}, 3, 6)


# ---------------------------------------------------------------- summary indices: one key
def test_every_probe_returns_its_summary_indices_under_one_key():
    g = name_vectors(len(VOCAB))
    t = targets_of(probes.latin_square_lists(VOCAB, 3, 24))
    tor = probes.tor(g[t[:, 0]], g, t)  # top-3 never exact: conditional index undefined
    assert tor[probes.SUMMARY_KEY] == {
        "order_bias": {"value": 1.0, "denominator": "N=24", "ci": [1.0, 1.0]},  # no variance: every item pos1
        "order_bias_conditional": {"value": None, "denominator": "N_cond=0/24", "ci": None},
        "order_bias_own": {"value": 1.0, "denominator": "N=24", "ci": [1.0, 1.0]},
    }
    assert set(probes.ior(g[t[:, 0]], g, t)["summary"]) == {"size_bias", "size_bias_conditional", "size_bias_own"}
    assert set(probes.i2tor(g[t[:, 0]], g, t)["summary"]) == {"size_bias", "size_bias_conditional", "size_bias_own"}
    assert probes.toc(g[t[:, 0]], t, len(VOCAB))["summary"] == {}
    itm = probes.itm(proportion(9, 10), proportion(2, 10))
    gap = itm["summary"]["gap"]
    assert gap["value"] == pytest.approx(0.7) and gap["denominator"] == "pairs S1=10, S2=10"
    assert gap["ci"] == pytest.approx(list(difference_interval(9, 10, 2, 10)))
    c1 = probes.claim1(tor, probes.tor(g[t[:, 1]], g, t))
    assert c1["summary"]["first_share_gap"]["value"] == 1.0
    assert c1["summary"]["first_share_gap"]["ci"] == pytest.approx(list(difference_interval(24, 24, 0, 24)))
    assert c1["summary"]["first_share_gap_conditional"] == {"value": None, "denominator": "N=0/0", "ci": None}
    # results written before "summary" existed: the same summary is rebuilt from the top-level terms;
    # retrieval intervals were never stored, so theirs is None (the gaps' come from the counts)
    for res in (tor, itm, c1):
        old = {k: v for k, v in res.items() if k != "summary"} | {k: e["value"] for k, e in res["summary"].items()}
        expect = {k: {**e, "ci": None} if res is tor else e for k, e in res["summary"].items()}
        assert probes.legacy_summary(old) == expect
        assert not set(res["summary"]) & set(res)  # the indices' only home is "summary"


# ---------------------------------------------------------------- manifest
def _write_set(root, lines, images=True):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "manifest.jsonl", "w") as fh:
        for ln in lines:
            fh.write(json.dumps(ln) + "\n")
            if images:
                (root / ln["image"]).parent.mkdir(parents=True, exist_ok=True)
                (root / ln["image"]).write_bytes(b"x")


def _single(o):
    return {"image": f"single/{o}.png", "objects": [o], "large": None, "areas": [10],
            "n_objects": 1, "kind": "single", "setting": "single"}


def test_manifest_loads(tmp_path):
    lines = [_single(o) for o in ("car", "cup", "dog")] + [
        {"image": "m/0.png", "objects": ["cup", "car"], "large": 1, "areas": [5, 50],
         "n_objects": 2, "kind": "multi", "setting": "n2_large_slot2"}]
    _write_set(tmp_path / "es", lines)
    es = load_eval_set(tmp_path / "es")
    assert es.vocabulary == ["car", "cup", "dog"] and es.n_values() == [2]
    assert es.multi(2)[0].by_role() == ("car", "cup")
    with pytest.raises(ValueError, match=r"n_objects \[3\].*valid: \[2\]"):
        es.check_n([2, 3])


def test_manifest_errors_name_the_problem(tmp_path):
    lines = [_single("car"), {"image": "m/0.png", "objects": ["car", "zebra"], "large": 5,
                              "areas": [1, 2], "n_objects": 2, "kind": "multi", "setting": ""}]
    _write_set(tmp_path / "bad", lines, images=False)
    with pytest.raises(ManifestError) as err:
        load_eval_set(tmp_path / "bad", known_objects=["car"])
    msg = str(err.value)
    assert "zebra" in msg and "missing images" in msg and "single/car.png" in msg
    assert "'large'=5" in msg and "not in the vocabulary" in msg
    with pytest.raises(FileNotFoundError, match="write_eval_set"):
        load_eval_set(tmp_path / "nowhere")
