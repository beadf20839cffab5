"""95 % intervals of the summary indices and the own-object view of the retrieval probes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eval import probes
from eval.stats import Z95, difference_interval, lead_index_interval

VOCAB = [f"obj{i:02d}" for i in range(12)]


def name_vectors(m: int, d: int = 32, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, m, generator=torch.Generator().manual_seed(seed)))
    return q.T.contiguous()


def targets_of(lists, vocab=VOCAB) -> torch.Tensor:
    idx = {o: i for i, o in enumerate(vocab)}
    return torch.tensor([[idx[o] for o in lst] for lst in lists])


def per_item_scores(outcomes: torch.Tensor, n: int) -> torch.Tensor:
    """X_i = 1{pos1} − mean over the other positions of 1{pos k}; outcome n = "none"."""
    x = torch.zeros(len(outcomes), dtype=torch.float64)
    x[outcomes == 0] = 1.0
    x[(outcomes >= 1) & (outcomes < n)] = -1.0 / (n - 1)
    return x


# ---------------------------------------------------------------- lead index interval
@pytest.mark.parametrize("n,probs", [(2, [0.5, 0.3, 0.2]), (3, [0.5, 0.2, 0.2, 0.1]), (4, [0.1, 0.5, 0.2, 0.2, 0.0])])
def test_lead_index_interval_equals_direct_per_item_computation(n, probs):
    gen = torch.Generator().manual_seed(n)
    outcomes = torch.multinomial(torch.tensor(probs), 257, replacement=True, generator=gen)
    counts = [int((outcomes == k).sum()) for k in range(n)]
    x = per_item_scores(outcomes, n)
    lo, hi = lead_index_interval(counts, len(outcomes))
    # centre = mean of the per-item score, half-width = z * population sd / sqrt(N)
    half = Z95 * x.std(unbiased=False).item() / math.sqrt(len(x))
    assert (lo + hi) / 2 == pytest.approx(x.mean().item(), abs=1e-12)
    assert (hi - lo) / 2 == pytest.approx(half, rel=1e-10)


def test_lead_index_interval_matches_bootstrap_and_covers():
    n, probs, size = 3, torch.tensor([0.5, 0.2, 0.2, 0.1]), 400
    truth = 0.5 - (0.2 + 0.2) / 2
    gen = torch.Generator().manual_seed(0)
    outcomes = torch.multinomial(probs, size, replacement=True, generator=gen)
    x = per_item_scores(outcomes, n)
    boot = x[torch.randint(size, (4000, size), generator=gen)].mean(1)  # bootstrap of the index
    lo, hi = lead_index_interval([int((outcomes == k).sum()) for k in range(n)], size)
    assert (hi - lo) / 2 / Z95 == pytest.approx(boot.std().item(), rel=0.06)
    # coverage of the true index over repeated samples
    reps = torch.multinomial(probs, size * 2000, replacement=True, generator=gen).view(2000, size)
    covered = 0
    for row in reps:
        lo, hi = lead_index_interval([int((row == k).sum()) for k in range(n)], size)
        covered += lo <= truth <= hi
    assert 0.93 <= covered / 2000 <= 0.97


def test_lead_index_interval_edges():
    assert lead_index_interval([0, 0], 0) is None
    assert lead_index_interval([5], 5) is None  # one position: no index
    assert lead_index_interval([0, 10], 10) == (-1.0, -1.0)  # clipped to X's range, no variance
    lo, hi = lead_index_interval([0, 0, 0], 10)  # every item "none": index 0, no variance
    assert lo == hi == 0.0
    with pytest.raises(ValueError):
        lead_index_interval([6, 6], 10)


# ---------------------------------------------------------------- difference interval (ITM, Claim 1)
def test_difference_interval_matches_newcombe_1998_table():
    # Newcombe (1998), Stat. Med. 17:873, method 10 (score-based hybrid), examples (a), (c), (e)
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    assert difference_interval(5, 56, 0, 29) == pytest.approx((-0.0381, 0.1926), abs=1e-4)
    assert difference_interval(3, 5, 0, 0) is None


# ---------------------------------------------------------------- in the probe results
def test_retrieval_summary_intervals_use_each_views_own_counts():
    g = name_vectors(len(VOCAB))
    t = targets_of(probes.latin_square_lists(VOCAB, 3, 48))
    gen = torch.Generator().manual_seed(1)
    # mixed encoder: first object heavy, random noise -> a spread of outcomes in every view
    cap = F.normalize(g[t[:, 0]] + 0.8 * g[t[:, 1]] + 0.6 * g[t[:, 2]] + 0.7 * torch.randn(48, 32, generator=gen), dim=-1)
    res = probes.tor(cap, g, t, min_conditional=1)
    summ = res["summary"]
    for view, key, total in (("unconditional", "order_bias", res["n_items"]),
                             ("conditional", "order_bias_conditional", res["n_conditional"]),
                             ("own_objects", "order_bias_own", res["n_items"])):
        counts = [res[view][lab]["count"] for lab in res["labels"]]
        assert summ[key]["ci"] == pytest.approx(list(lead_index_interval(counts, total))), key
        lo, hi = summ[key]["ci"]
        assert lo <= summ[key]["value"] <= hi and hi - lo > 0, key
    assert 0 < res["n_conditional"] < 48  # the conditional view really has its own denominator
    # below the conditional minimum: value and interval both n/a
    assert probes.tor(cap, g, t)["summary"]["order_bias_conditional"]["ci"] is None


def test_own_objects_exists_where_top1_is_never_an_own_object():
    """Top-1 always a foreign object ("none" = 1): the own-object view still reads position 1."""
    g = name_vectors(len(VOCAB))
    t = targets_of(probes.latin_square_lists(VOCAB, 3, 48))
    foreign = (t.max(1).values + 1) % len(VOCAB)
    foreign = torch.where((foreign[:, None] == t).any(1), (foreign + 5) % len(VOCAB), foreign)
    assert not (foreign[:, None] == t).any()
    cap = F.normalize(g[foreign] + 0.3 * g[t[:, 0]] + 0.2 * g[t[:, 1]] + 0.1 * g[t[:, 2]], dim=-1)
    res = probes.ior(cap, g, t)
    assert res["unconditional"]["none"]["share"] == 1.0 and res["n_conditional"] == 0
    assert res["summary"]["size_bias"]["value"] == 0.0
    assert [res["own_objects"][r]["share"] for r in ("large", "small1", "small2")] == [1.0, 0.0, 0.0]
    assert "none" not in res["own_objects"]
    assert res["summary"]["size_bias_own"] == {"value": 1.0, "denominator": "N=48", "ci": [1.0, 1.0]}
    # the smallest object most similar -> index at its minimum, -1/(n-1)
    res = probes.ior(F.normalize(g[foreign] + 0.1 * g[t[:, 0]] + 0.2 * g[t[:, 1]] + 0.3 * g[t[:, 2]], dim=-1), g, t)
    assert res["own_objects"]["small2"]["share"] == 1.0 and res["summary"]["size_bias_own"]["value"] == -0.5


def test_own_objects_symmetric_encoder_ties_spread_evenly():
    """An order-free mean ties all own objects: argmax would give pos1 every win, the view must not."""
    g = name_vectors(len(VOCAB))
    t = targets_of(probes.latin_square_lists(VOCAB, 3, 48))
    res = probes.tor(F.normalize(g[t].mean(1), dim=-1), g, t)
    assert [res["own_objects"][p]["count"] for p in ("pos1", "pos2", "pos3")] == [16, 16, 16]
    assert res["summary"]["order_bias_own"]["value"] == pytest.approx(0.0)
    lo, hi = res["summary"]["order_bias_own"]["ci"]
    assert lo < 0 < hi


def test_own_object_winners_one_per_row():
    sims = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.8], [0.1, 0.8, 0.8], [0.5, 0.5, 0.5]])
    win = probes.own_object_winners(sims)
    assert win.sum(1).tolist() == [1, 1, 1, 1]
    assert win.int().tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]  # row i takes tie (i mod t)
    nan = probes.own_object_winners(torch.tensor([[float("nan")] * 3, [0.1, 0.3, 0.2]]))
    assert nan.int().tolist() == [[0, 0, 0], [0, 1, 0]]  # a diverged row has no winner, no crash


def test_items_needed_for_a_half_width():
    from eval.stats import difference_items_needed, lead_index_items_needed

    def half(shares, n_items):  # the interval's half-width at these exact shares
        w = 1 / (len(shares) - 1)
        mean = shares[0] - w * sum(shares[1:])
        return Z95 * math.sqrt((shares[0] + w * w * sum(shares[1:]) - mean ** 2) / n_items)

    for shares in ([0.5, 0.2, 0.2], [0.5, 0.2], [0.6, 0.2, 0.2], [0.4, 0.15, 0.15, 0.15, 0.15]):
        n = lead_index_items_needed(shares)
        assert half(shares, n) <= 0.05 < half(shares, n - 1), shares
    assert lead_index_items_needed([0.5, 0.2, 0.2]) == 784  # the quickstart sizing (n = 3)
    assert lead_index_items_needed([1.0, 0.0]) == 0
    with pytest.raises(ValueError):
        lead_index_items_needed([0.9, 0.9])
    p = difference_items_needed(0.5, 0.5)
    assert p == 769 and difference_interval(p // 2, p, p // 2, p)[1] - difference_interval(p // 2, p, p // 2, p)[0] <= 0.1 + 1e-3
