"""The probes of "CLIP Under the Microscope" (Abbasi et al., CVPR 2025) over embeddings.

Every probe is a small function on L2-normalised embedding tensors plus item metadata (gallery
indices of each item's objects in position or role order); none of them calls a model. They
return dicts of named terms: shares with counts, denominators and 95 % Wilson intervals, and
their summary indices. The caption/item builders below turn an eval set into that metadata.

Summary indices live under one key, ``result["summary"]`` (:data:`SUMMARY_KEY`), in every probe
result (nested ones too: TOR ``variants``, Claim-1 ``large_first``/``small_first``)::

    {"<index>": {"value": float | None, "denominator": "<text, e.g. N=62>",
                 "ci": [lo, hi] | None}, ...}

- TOR: ``order_bias`` (unconditional shares, ``N=<n_items>``), ``order_bias_conditional``
  (``N_cond=<n_conditional>/<n_items>``) and ``order_bias_own`` (own-object shares, ``N=<n_items>``);
  IOR, I2TOR: ``size_bias``, ``size_bias_conditional``, ``size_bias_own``.
- ITM: ``gap`` (S1 − S2, ``pairs S1=<P>, S2=<P>``).
- Claim 1: ``first_share_gap``, ``first_share_gap_conditional`` (``N=<large-first>/<small-first>``).
- TOC, IOC: ``{}`` (accuracies only).

The three retrieval views (:func:`retrieval_shares`): *unconditional* = which gallery item is the
top-1 (one of the item's objects at position/role k, or "none"); *conditional* = the same among
items whose top-n are exactly their n objects (DESIGN.md's "paper's number"; empty on weak
models); *own_objects* = which of the item's own n objects is most similar (the paper's "which of
the image's own objects ranks highest", no "none", defined at any scale).

``ci`` is a 95 % interval: for the retrieval indices the normal interval of the mean per-item score
with its exact multinomial variance (:func:`eval.stats.lead_index_interval`), for the gaps
Newcombe's interval of a difference of two proportions (:func:`eval.stats.difference_interval`).
It is ``None`` where the value is (and in records written before intervals existed).
``value`` is ``None`` where a denominator is 0. Plots, reports, the experiment summary and the
logged scalars (``bias/<probe>/n<k>/<index>``, see ``eval.records.flatten``) and ``eval comco``'s
tables read this key; it is the indices' only home (results written before it existed carry them
as top-level terms, which :func:`legacy_summary` turns into a ``summary``).

- TOR  (text-based object retrieval): caption -> gallery of object-name embeddings.
- TOC  (text-based object classification): linear probe per mention position.
- IOR  (image-based object retrieval): multi-object image -> gallery of single-object images.
- IOC  (image-based object classification): linear probe per size role.
- I2TOR (image-to-text object retrieval): IOR with object-name embeddings as the gallery.
- ITM  (image-text matching), scenarios 1 and 2, and the Claim-1 probe (paper Fig. 4a).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from eval.stats import difference_interval, lead_index_interval, proportion

PROBE_NAMES: tuple[str, ...] = ("tor", "toc", "ior", "ioc", "i2tor", "itm", "claim1")
#: key of a probe result's summary indices (module docstring)
SUMMARY_KEY = "summary"
#: fewest items behind a conditional index: below it the index is ``None`` ("n/a", the denominator
#: says N_cond), never a number built on one or two items; the conditional shares keep their counts
MIN_CONDITIONAL = 20


def position_labels(n: int) -> list[str]:
    """``["pos1", ..., "posn"]`` — mention positions in a caption."""
    return [f"pos{k + 1}" for k in range(n)]


def role_labels(n: int) -> list[str]:
    """``["large", "small1", ..., "small{n-1}"]`` — size roles in an image."""
    return ["large", *(f"small{k + 1}" for k in range(n - 1))]


# --------------------------------------------------------------------------------------------
# Retrieval probes: TOR, IOR, I2TOR
# --------------------------------------------------------------------------------------------


def retrieval_shares(
    query: torch.Tensor,
    gallery: torch.Tensor,
    targets: torch.Tensor,
    labels: Sequence[str],
    index_name: str = "bias",
    min_conditional: int = MIN_CONDITIONAL,
) -> dict:
    """Which of each query's objects wins a nearest-neighbour lookup in the gallery.

    Args:
        query: ``[N, D]`` L2-normalised query embeddings (captions or multi-object images).
        gallery: ``[V, D]`` L2-normalised embeddings, one per vocabulary object.
        targets: ``[N, n]`` gallery indices of each query's objects, in position/role order.
        labels: ``n`` names for the positions/roles (e.g. ``pos1..`` or ``large, small1..``).
        index_name: key of the summary index ``share(labels[0]) - mean share(others)``.
        min_conditional: the conditional index is ``None`` below this many conditional items.

    Returns:
        ``conditional``: among queries whose top-n gallery items are exactly their n objects
        (the paper's number, denominator ``n_conditional``), the share whose top-1 is the object
        at each position. ``unconditional``: top-1 = object at each position over all ``n_items``
        queries, plus ``none``. The index is computed on unconditional shares (always defined);
        ``<index_name>_conditional`` on conditional ones (``None`` if the denominator is 0); both
        under ``summary`` (:func:`retrieval_summary`). ``own_objects``: over all ``n_items``, the
        share whose most similar object among its own n is the one at each position (ties:
        :func:`own_object_winners`; no "none"), with the index ``<index_name>_own``. Every index
        has a 95 % ``ci`` (:func:`eval.stats.lead_index_interval` on its own denominator).
    """
    n_items, n = targets.shape
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} objects per item")
    if gallery.shape[0] < n:
        raise ValueError(f"gallery has {gallery.shape[0]} entries, fewer than n={n}")
    targets = targets.to(query.device)
    sims = query @ gallery.to(query.device).T
    top_n = sims.topk(n, dim=1).indices  # [N, n], top-1 first
    exact = (top_n.sort(dim=1).values == targets.sort(dim=1).values).all(dim=1)
    hit = top_n[:, :1] == targets  # [N, n]: top-1 is the object at position k
    n_cond = int(exact.sum())
    cond_counts = (hit & exact[:, None]).sum(dim=0).tolist()
    uncond_counts = hit.sum(dim=0).tolist()
    own_counts = own_object_winners(sims.gather(1, targets)).sum(dim=0).tolist()
    n_none = n_items - int(hit.any(dim=1).sum())
    out: dict = {
        "labels": list(labels),
        "n_items": int(n_items),
        "n_conditional": n_cond,
        "conditional": {lab: proportion(c, n_cond) for lab, c in zip(labels, cond_counts)},
        "conditional_reason": None
        if n_cond
        else "no item's top-n gallery matches were exactly its n objects (denominator 0)",
        "unconditional": {lab: proportion(c, n_items) for lab, c in zip(labels, uncond_counts)},
        "own_objects": {lab: proportion(c, n_items) for lab, c in zip(labels, own_counts)},
    }
    out["unconditional"]["none"] = proportion(n_none, n_items)
    cond_ok = n_cond >= min_conditional
    indices = {
        index_name: _lead_index(out["unconditional"], labels),
        f"{index_name}_ci": lead_index_interval(uncond_counts, n_items),
        f"{index_name}_conditional": _lead_index(out["conditional"], labels) if cond_ok else None,
        f"{index_name}_conditional_ci": lead_index_interval(cond_counts, n_cond) if cond_ok else None,
        f"{index_name}_own": _lead_index(out["own_objects"], labels),
        f"{index_name}_own_ci": lead_index_interval(own_counts, n_items),
    }
    out[SUMMARY_KEY] = retrieval_summary({**out, **indices}, index_name)
    return out


#: own-object similarities closer than this (cosine) to an item's best one count as tied with it
OWN_TIE_TOLERANCE = 1e-6


def own_object_winners(own_sims: torch.Tensor, tol: float = OWN_TIE_TOLERANCE) -> torch.Tensor:
    """``[N, n]`` bool, one True per row: which of the item's own n objects is most similar.

    ``own_sims[i, k]`` is item i's similarity to its object at position/role k. Objects within
    ``tol`` of the row's best are tied; item i gives the win to its ``(i mod t)``-th tied object
    (t = number tied), so an order-free encoder, whose similarities tie up to rounding, is not
    credited to position 1 by ``argmax`` (over a counterbalanced set ties spread evenly).
    """
    best = own_sims.max(dim=1, keepdim=True).values
    tied = own_sims >= best - tol
    rank = tied.long().cumsum(dim=1) - 1  # order among the tied objects
    # clamp: a row of NaN similarities (a diverged model) ties nothing and gets no winner, not a crash
    pick = torch.arange(len(own_sims), device=own_sims.device) % tied.sum(dim=1).clamp_min(1)
    return tied & (rank == pick[:, None])


def _entry(value: float | None, denominator: str, ci: Sequence[float] | None = None) -> dict:
    return {"value": value, "denominator": denominator, "ci": None if ci is None or value is None else list(ci)}


def retrieval_summary(res: Mapping, index_name: str) -> dict:
    """``summary`` of a TOR/IOR/I2TOR result from its top-level terms (missing ones read as None).

    ``<index>``, ``<index>_conditional`` and, if present, ``<index>_own``; each interval is read
    from ``<term>_ci`` (absent in results written before intervals existed: ``ci`` None).
    """
    n_items, n_cond = res.get("n_items"), res.get("n_conditional")
    out = {index_name: _entry(res.get(index_name), f"N={n_items}", res.get(f"{index_name}_ci")),
           f"{index_name}_conditional": _entry(res.get(f"{index_name}_conditional"), f"N_cond={n_cond}/{n_items}",
                                               res.get(f"{index_name}_conditional_ci"))}
    if f"{index_name}_own" in res:
        out[f"{index_name}_own"] = _entry(res.get(f"{index_name}_own"), f"N={n_items}", res.get(f"{index_name}_own_ci"))
    return out


def itm_summary(res: Mapping) -> dict:
    """``summary`` of an ITM result: the gap with the pair counts of both scenarios and, from
    them, Newcombe's interval of the difference (:func:`eval.stats.difference_interval`).

    S1 and S2 are scored on the same images and distractors; the interval treats them as
    independent samples (the counts are all a summary holds)."""
    s1, s2 = (res[s] if isinstance(res.get(s), Mapping) else {} for s in ("s1", "s2"))
    ci = None
    if all(isinstance(s.get(k), int) for s in (s1, s2) for k in ("count", "total")):
        ci = difference_interval(s1["count"], s1["total"], s2["count"], s2["total"])
    return {"gap": _entry(res.get("gap"), "pairs S1={}, S2={}".format(s1.get("total"), s2.get("total")), ci)}


def claim1_summary(res: Mapping) -> dict:
    """``summary`` of a Claim-1 result: both gaps with the large-first/small-first denominators and
    Newcombe intervals of the difference of the two pos1 shares (independent caption sets)."""
    def dens(key: str) -> str:
        return "N=" + "/".join(str(res[g].get(key)) for g in ("large_first", "small_first")
                               if isinstance(res.get(g), Mapping))

    def ci(kind: str) -> tuple[float, float] | None:
        try:
            a, b = (res[g][kind]["pos1"] for g in ("large_first", "small_first"))
            return difference_interval(a["count"], a["total"], b["count"], b["total"])
        except (KeyError, TypeError):
            return None

    return {"first_share_gap": _entry(res.get("first_share_gap"), dens("n_items"), ci("unconditional")),
            "first_share_gap_conditional": _entry(res.get("first_share_gap_conditional"), dens("n_conditional"),
                                                  ci("conditional"))}


#: top-level index names of results written before ``summary`` existed -> the builder of their summary
_LEGACY_INDICES = {
    "order_bias": lambda r: retrieval_summary(r, "order_bias"),
    "size_bias": lambda r: retrieval_summary(r, "size_bias"),
    "gap": itm_summary,
    "first_share_gap": claim1_summary,
}


def legacy_summary(res: Mapping) -> dict:
    """``summary`` rebuilt from a result that has only top-level indices (``bias.jsonl`` of older runs).

    Keeps only the entries whose top-level term is present; ``{}`` if the result has none. Their
    ``ci`` is ``None`` for retrieval indices (the old records kept no interval); the ITM and
    Claim-1 gaps get theirs from the counts the records hold.
    """
    out: dict = {}
    for name, build in _LEGACY_INDICES.items():
        if name in res or f"{name}_conditional" in res:
            out.update({k: v for k, v in build(res).items() if k in res})
    return out


def _lead_index(shares: Mapping[str, dict], labels: Sequence[str]) -> float | None:
    """share(first label) − mean share(other labels); ``None`` if undefined."""
    values = [shares[lab]["share"] for lab in labels]
    if any(v is None for v in values) or len(values) < 2:
        return None
    return values[0] - sum(values[1:]) / (len(values) - 1)


def tor(captions: torch.Tensor, names: torch.Tensor, targets: torch.Tensor, min_conditional: int = MIN_CONDITIONAL) -> dict:
    """TOR: captions ``[N, D]`` vs object-name embeddings ``[V, D]``; ``targets`` in mention order."""
    res = retrieval_shares(captions, names, targets, position_labels(targets.shape[1]), "order_bias", min_conditional)
    return {"probe": "tor", **res}


def ior(images: torch.Tensor, singles: torch.Tensor, targets: torch.Tensor, min_conditional: int = MIN_CONDITIONAL) -> dict:
    """IOR: multi-object images vs single-object image embeddings; ``targets`` in role order."""
    res = retrieval_shares(images, singles, targets, role_labels(targets.shape[1]), "size_bias", min_conditional)
    return {"probe": "ior", **res}


def i2tor(images: torch.Tensor, names: torch.Tensor, targets: torch.Tensor, min_conditional: int = MIN_CONDITIONAL) -> dict:
    """I2TOR: multi-object images vs object-name text embeddings; ``targets`` in role order."""
    res = retrieval_shares(images, names, targets, role_labels(targets.shape[1]), "size_bias", min_conditional)
    return {"probe": "i2tor", **res}


# --------------------------------------------------------------------------------------------
# Linear probes: TOC, IOC
# --------------------------------------------------------------------------------------------


@contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run tiny CPU linear algebra on one thread.

    The matrices here are ~(D+1)^2; with several intra-op threads on a busy machine LAPACK's
    eigh/solve spend their time in thread barriers, orders of magnitude slower than one thread.
    The previous thread count is restored.
    """
    prev = torch.get_num_threads()
    if device.type != "cpu" or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


RIDGE_GRID: tuple[float, ...] = (1000.0, 100.0, 10.0, 1.0, 0.1)


def linear_probe(
    features: torch.Tensor,
    targets: torch.Tensor,
    n_classes: int,
    labels: Sequence[str],
    train_frac: float = 0.7,
    seed: int = 0,
    method: str = "ridge",
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 1e-3,
) -> dict:
    """Held-out accuracy of one linear classifier per position/role on frozen features.

    ``features [N, D]`` predict ``targets[:, k]`` (class ids < ``n_classes``) for each k. Items
    are split once (seeded) into train/test; features are standardised with train statistics.

    Args:
        method: ``"ridge"`` (default): closed-form ridge regression on one-hot targets, the
            penalty per head chosen from ``RIDGE_GRID`` on a held-back 20 % of the training
            items, then refit on all of them — deterministic and milliseconds, so it fits a
            training-time callback. ``"logistic"``: multinomial logistic regression trained
            full-batch with Adam from zero for ``steps`` steps (``lr``, ``weight_decay``).
    Returns:
        accuracy per label with Wilson CI, ``n_train``, ``n_test``, ``chance``, ``method``
        (and the chosen ``ridge_penalty`` per label).
    """
    n_items, n = targets.shape
    n_train = int(round(train_frac * n_items))
    if n_train < 1 or n_items - n_train < 1:
        raise ValueError(f"linear probe needs items in both splits; got {n_items} items")
    if method not in ("ridge", "logistic"):
        raise ValueError(f"unknown linear probe method {method!r}; valid: ridge, logistic")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_items, generator=gen).to(features.device)
    tr, te = perm[:n_train], perm[n_train:]
    x = features.detach().float()
    mean, std = x[tr].mean(0), x[tr].std(0).nan_to_num(1.0).clamp_min(1e-6)
    x = (x - mean) / std
    y = targets.to(features.device)
    extra: dict = {}
    with _single_thread(x.device):
        if method == "ridge":
            pred, penalties = _ridge_predict(x, y, n_classes, tr, te)
            extra["ridge_penalty"] = dict(zip(labels, penalties))
        else:
            pred = _logistic_predict(x, y, n_classes, tr, te, steps, lr, weight_decay)
    correct = (pred == y[te]).sum(0).tolist()
    n_test = n_items - n_train
    return {
        "labels": list(labels),
        "method": method,
        "n_items": int(n_items),
        "n_train": n_train,
        "n_test": n_test,
        "n_classes": int(n_classes),
        "chance": 1.0 / n_classes,
        "accuracy": {lab: proportion(c, n_test) for lab, c in zip(labels, correct)},
        **extra,
        SUMMARY_KEY: {},  # accuracies only: no summary index
    }


def _ridge_solutions(x: torch.Tensor, y: torch.Tensor, n_classes: int, penalties: Sequence[float]):
    """Ridge weights ``[D+1, n, C]`` (bias row last) for each penalty, from one eigendecomposition."""
    xb = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1).double()
    onehot = F.one_hot(y, n_classes).double().reshape(len(x), -1)  # [N, n*C]
    evals, evecs = torch.linalg.eigh(xb.T @ xb)
    proj = evecs.T @ (xb.T @ onehot)
    return [(evecs @ (proj / (evals + lam)[:, None])).reshape(xb.shape[1], y.shape[1], n_classes).float()
            for lam in penalties]


def _ridge_apply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (torch.einsum("nd,dkc->nkc", x, w[:-1]) + w[-1]).argmax(-1)


def _ridge_predict(x, y, n_classes, tr, te) -> tuple[torch.Tensor, list[float]]:
    n_fit = int(round(0.8 * len(tr)))
    n_heads = y.shape[1]
    if n_fit < 2 or n_fit == len(tr):  # too few items to hold some back: middle of the grid
        chosen = [1.0] * n_heads
    else:
        fit, val = tr[:n_fit], tr[n_fit:]
        sols = _ridge_solutions(x[fit], y[fit], n_classes, RIDGE_GRID)
        val_acc = torch.stack([(_ridge_apply(x[val], w) == y[val]).float().mean(0) for w in sols])  # [G, n]
        chosen = [RIDGE_GRID[int(i)] for i in val_acc.argmax(0)]  # ties -> stronger penalty
    pred = torch.empty(len(te), n_heads, dtype=torch.long, device=x.device)
    for lam in set(chosen):
        (w,) = _ridge_solutions(x[tr], y[tr], n_classes, [lam])
        heads = [k for k in range(n_heads) if chosen[k] == lam]
        pred[:, heads] = _ridge_apply(x[te], w)[:, heads]
    return pred, chosen


def _logistic_predict(x, y, n_classes, tr, te, steps, lr, weight_decay) -> torch.Tensor:
    n = y.shape[1]
    weight = torch.zeros(n, x.shape[1], n_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(n, n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():  # probes run inside no_grad evaluation loops
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            logits = torch.einsum("nd,kdc->nkc", x[tr], weight) + bias
            loss = F.cross_entropy(logits.reshape(-1, n_classes), y[tr].reshape(-1))
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (torch.einsum("nd,kdc->nkc", x[te], weight) + bias).argmax(-1)


def toc(captions: torch.Tensor, targets: torch.Tensor, n_classes: int, **kw) -> dict:
    """TOC: linear probe per mention position on frozen caption embeddings."""
    return {"probe": "toc", **linear_probe(captions, targets, n_classes, position_labels(targets.shape[1]), **kw)}


def ioc(images: torch.Tensor, targets: torch.Tensor, n_classes: int, **kw) -> dict:
    """IOC: linear probe per size role on frozen image embeddings."""
    return {"probe": "ioc", **linear_probe(images, targets, n_classes, role_labels(targets.shape[1]), **kw)}


# --------------------------------------------------------------------------------------------
# ITM and Claim 1
# --------------------------------------------------------------------------------------------


def itm_accuracy(images: torch.Tensor, correct: torch.Tensor, wrong: torch.Tensor) -> dict:
    """Share of (image, x) pairs whose image is closer to the correct caption than to the wrong one.

    All three are ``[P, D]`` L2-normalised, one row per pair (the image and the correct caption
    repeated for each distractor x). Ties count as failures.
    """
    wins = ((images * correct).sum(-1) > (images * wrong).sum(-1)).sum()
    return proportion(int(wins), images.shape[0])


def itm(s1: dict, s2: dict) -> dict:
    """ITM summary: both scenarios and the fragility gap S1 − S2 (accuracies)."""
    gap = None if s1["share"] is None or s2["share"] is None else s1["share"] - s2["share"]
    out = {"probe": "itm", "s1": s1, "s2": s2}
    out[SUMMARY_KEY] = itm_summary({**out, "gap": gap})
    return out


def claim1(large_first: dict, small_first: dict) -> dict:
    """Claim-1 (paper Fig. 4a): TOR share of the first object, large-first vs small-first captions.

    Both arguments are :func:`tor` results on paired caption sets that differ only in the first
    object (real-world large vs small; the remaining objects are medium-sized and identical).
    """

    def gap(kind: str) -> float | None:
        a, b = large_first[kind]["pos1"]["share"], small_first[kind]["pos1"]["share"]
        if kind == "conditional" and min(large_first["n_conditional"], small_first["n_conditional"]) < MIN_CONDITIONAL:
            return None  # too few items behind one of the two conditional shares (MIN_CONDITIONAL)
        return None if a is None or b is None else a - b

    out = {
        "probe": "claim1",
        "large_first": large_first,
        "small_first": small_first,
    }
    out[SUMMARY_KEY] = claim1_summary(
        {**out, "first_share_gap": gap("unconditional"), "first_share_gap_conditional": gap("conditional")})
    return out


# --------------------------------------------------------------------------------------------
# Item builders (metadata only)
# --------------------------------------------------------------------------------------------


def latin_square_lists(vocabulary: Sequence[str], n: int, n_items: int, seed: int = 0) -> list[list[str]]:
    """Object lists of length ``n`` where every object appears equally often at every position.

    Built in blocks of ``M = len(vocabulary)`` lists: a base tuple of n distinct vocabulary
    offsets, shifted cyclically by 0..M-1 (a cyclic Latin square). Consecutive blocks use the
    cyclic rotations of one random base, so each object set is also seen in rotated orders.
    ``n_items`` is rounded up to whole blocks.
    """
    m = len(vocabulary)
    if n > m:
        raise ValueError(f"need n={n} distinct objects but the vocabulary has {m}")
    rng = random.Random(seed)
    lists: list[list[str]] = []
    base: list[int] = []
    seen: set[tuple[int, ...]] = set()  # blocks used so far, as offsets relative to the first object

    def block_key(offsets: list[int]) -> tuple[int, ...]:
        return tuple((o - offsets[0]) % m for o in offsets)

    for block in range(max(1, math.ceil(n_items / m))):
        if block % n == 0:
            # Redraw a base whose rotations repeat an earlier block: a repeated block duplicates
            # M captions, which would then sit in both the train and the held-out split of TOC.
            # Once every block is used (small vocabularies), repeats are accepted.
            for _ in range(100 if n > 1 else 1):
                base = rng.sample(range(m), n)
                keys = {block_key(base[r:] + base[:r]) for r in range(n)}
                if len(keys) == n and not keys & seen:
                    break
        rotated = base[block % n :] + base[: block % n]
        seen.add(block_key(rotated))
        lists.extend([vocabulary[(o + s) % m] for o in rotated] for s in range(m))
    return lists


def claim1_lists(
    vocabulary: Sequence[str], size_classes: Mapping[str, str], n: int, n_items: int, seed: int = 0
) -> dict[str, list[list[str]]]:
    """Paired caption lists: a large (resp. small) object first, then the same n-1 medium ones.

    Raises ``ValueError`` if the vocabulary lacks large, small or enough medium objects.
    """
    by_class = {c: [o for o in vocabulary if size_classes.get(o) == c] for c in ("large", "medium", "small")}
    if not by_class["large"] or not by_class["small"] or len(by_class["medium"]) < n - 1:
        counts = {c: len(v) for c, v in by_class.items()}
        raise ValueError(
            f"claim1 needs large and small objects and {n - 1} medium ones in the vocabulary; have {counts} "
            "(size classes come from data_prep.vocab; pass size_classes= for other vocabularies)"
        )
    tails = latin_square_lists(by_class["medium"], n - 1, n_items, seed) if n > 1 else [[]] * n_items
    return {
        f"{c}_first": [[by_class[c][i % len(by_class[c])], *t] for i, t in enumerate(tails)]
        for c in ("large", "small")
    }


def itm_lists(
    items_by_role: Sequence[Sequence[str]],
    vocabulary: Sequence[str],
    n_distractors: int | None = None,
    seed: int = 0,
) -> dict[str, tuple[list[int], list[list[str]], list[list[str]]]]:
    """Caption object lists for ITM scenarios 1 and 2, one row per (image, x) pair.

    ``items_by_role[i]`` is image i's objects as (large, small1, ..., small{n-1}). x runs over
    objects absent from the image (all of them, or ``n_distractors`` drawn with ``seed``; the
    same x serve both scenarios). Scenario 1: correct = large first; wrong = x in place of the
    large object (first). Scenario 2: correct = large last; wrong = large first and x in place
    of the last small object (last). Returns ``{"s1"|"s2": (image_index, correct, wrong)}``.
    """
    rng = random.Random(seed)
    out: dict[str, tuple[list[int], list[list[str]], list[list[str]]]] = {
        "s1": ([], [], []),
        "s2": ([], [], []),
    }
    for i, objs in enumerate(items_by_role):
        large, smalls = objs[0], list(objs[1:])
        absent = [o for o in vocabulary if o not in objs]
        xs = absent if n_distractors is None or n_distractors >= len(absent) else rng.sample(absent, n_distractors)
        for x in xs:
            for name, correct, wrong in (
                ("s1", [large, *smalls], [x, *smalls]),
                ("s2", [*smalls, large], [large, *smalls[:-1], x]),
            ):
                out[name][0].append(i)
                out[name][1].append(correct)
                out[name][2].append(wrong)
    return out
