"""The word-order probe (ARO's COCO-Order idea, Yuksekgonul et al., ICLR 2023): does the image
prefer its true caption over word-order perturbations of it?

For each (image, caption) the caption is normalised (lower case, words and punctuation split and
joined by single spaces; the perturbations are written the same way, so spelling never gives the
true caption away) and perturbed once by each kind:

- ``nouns_adjectives``: the nouns and adjectives swap places among themselves
  (:func:`data_prep.mentions.noun_adjective_spans`, the rule-based stand-in for ARO's NOUN/ADJ tags);
- ``allbut_nouns_adjectives``: every other word swaps places, nouns and adjectives stay;
- ``within_trigrams``: the words inside each run of three swap places;
- ``trigrams``: runs of three words swap places as blocks;
- ``all_words``: every word swaps places.

A perturbation must differ from the caption (up to :data:`DRAWS` seeded draws); a caption where
some kind cannot (one noun, two words) is skipped and counted under ``skipped``. Scores on
L2-normalised embeddings, a similarity within :data:`TIE_TOLERANCE` counting as a tie:

- ``precision_at_1``: per item 1 if the true caption is the most similar of its k+1 texts,
  1/(1+t) when it ties t perturbations at the top, 0 otherwise; chance 1/(k+1). A text model that
  ignores word order ties every perturbation and scores exactly chance.
- ``pairwise/<kind>``: per item 1, ½ or 0 as the true caption beats, ties or loses to that
  kind's perturbation; chance 0.5.

Means carry normal 95 % intervals (:func:`eval.stats.mean_interval`); fewer than
:data:`eval.stats.MIN_ITEMS` items gives "n/a (N = k)".
"""
from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from data_prep.mentions import Vocabulary, noun_adjective_spans, open_vocabulary
from eval.stats import MIN_ITEMS, gated_entry, mean_interval

KINDS: tuple[str, ...] = ("nouns_adjectives", "allbut_nouns_adjectives", "within_trigrams", "trigrams", "all_words")
DRAWS = 20
TIE_TOLERANCE = 1e-6
_WORD = re.compile(r"[\w'’-]+|[^\w\s]")


def normalise(caption: str) -> tuple[list[str], list[bool]]:
    """``(tokens, is_word)`` of a caption: lower-case words and punctuation marks."""
    tokens = [m.group(0).lower() for m in _WORD.finditer(caption)]
    return tokens, [bool(re.match(r"[\w'’-]", t)) for t in tokens]


def _noun_adjective_tokens(caption: str, vocab: Vocabulary) -> set[int]:
    """Token indices (of :func:`normalise`) that are nouns or adjectives."""
    spans = noun_adjective_spans(caption, vocab)
    out = set()
    for i, m in enumerate(_WORD.finditer(caption)):
        if any(a <= m.start() and m.end() <= b for a, b in spans):
            out.add(i)
    return out


def _shuffle_positions(tokens: list[str], positions: list[int], rng: random.Random) -> list[str]:
    out = list(tokens)
    values = [tokens[p] for p in positions]
    rng.shuffle(values)
    for p, v in zip(positions, values):
        out[p] = v
    return out


def _perturb_once(kind: str, tokens: list[str], words: list[int], nouns: set[int], rng: random.Random) -> list[str]:
    if kind == "nouns_adjectives":
        return _shuffle_positions(tokens, [i for i in words if i in nouns], rng)
    if kind == "allbut_nouns_adjectives":
        return _shuffle_positions(tokens, [i for i in words if i not in nouns], rng)
    if kind == "all_words":
        return _shuffle_positions(tokens, words, rng)
    word_tokens = [tokens[i] for i in words]
    grams = [word_tokens[i:i + 3] for i in range(0, len(word_tokens), 3)]
    if kind == "within_trigrams":
        for g in grams:
            rng.shuffle(g)
    elif kind == "trigrams":
        rng.shuffle(grams)
    else:
        raise ValueError(f"unknown perturbation {kind!r}; valid: {', '.join(KINDS)}")
    flat = [w for g in grams for w in g]
    out = list(tokens)
    for i, w in zip(words, flat):
        out[i] = w
    return out


def perturbations(caption: str, kinds: Sequence[str] = KINDS, seed: int = 0,
                  vocab: Vocabulary | None = None) -> tuple[str, dict[str, str | None]]:
    """``(normalised caption, {kind: perturbed caption, or None where no draw differs})``."""
    vocab = vocab or open_vocabulary()
    tokens, is_word = normalise(caption)
    words = [i for i, w in enumerate(is_word) if w]
    nouns = _noun_adjective_tokens(caption, vocab)
    true = " ".join(tokens)
    out: dict[str, str | None] = {}
    for k, kind in enumerate(kinds):
        rng = random.Random(f"{seed}:{kind}:{true}")
        out[kind] = None
        for _ in range(DRAWS):
            text = " ".join(_perturb_once(kind, tokens, words, nouns, rng))
            if text != true:
                out[kind] = text
                break
    return true, out


@dataclass
class WordOrderItems:
    """Captions and their perturbations: ``texts`` to encode once; per kept item its image key,
    the row of its true caption and ``[k]`` rows of its perturbations."""

    kinds: tuple[str, ...]
    image_keys: list = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    true_rows: list[int] = field(default_factory=list)
    perturbed_rows: list[list[int]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def build_items(pairs: Sequence[tuple[object, str]], kinds: Sequence[str] = KINDS, seed: int = 0,
                vocab: Vocabulary | None = None) -> WordOrderItems:
    """Items of ``(image key, caption)`` pairs; a caption some kind cannot perturb is skipped."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"word-order kinds: {'unknown ' + repr(bad) if bad else 'none given'}; valid: {', '.join(KINDS)}")
    vocab = vocab or open_vocabulary()
    items = WordOrderItems(tuple(kinds))
    rows: dict[str, int] = {}

    def row(text: str) -> int:
        if text not in rows:
            rows[text] = len(items.texts)
            items.texts.append(text)
        return rows[text]

    for key, caption in pairs:
        true, perts = perturbations(caption, kinds, seed, vocab)
        missing = [k for k, t in perts.items() if t is None]
        if missing:
            reason = f"no {missing[0]} perturbation differs"
            items.skipped[reason] = items.skipped.get(reason, 0) + 1
            continue
        items.image_keys.append(key)
        items.true_rows.append(row(true))
        items.perturbed_rows.append([row(perts[k]) for k in kinds])
    return items


def score(images: torch.Tensor, true_text: torch.Tensor, perturbed: torch.Tensor, kinds: Sequence[str],
          min_items: int = MIN_ITEMS, skipped: dict | None = None, tol: float = TIE_TOLERANCE) -> dict:
    """The probe on normalised embeddings: ``images [N, D]``, ``true_text [N, D]``,
    ``perturbed [N, k, D]`` (see the module docstring for the scores)."""
    n, k = int(perturbed.shape[0]), len(kinds)
    s_true = (images * true_text).sum(-1)  # [N]
    s_pert = torch.einsum("nd,nkd->nk", images, perturbed)  # [N, k]
    diff = s_true[:, None] - s_pert
    beats, ties = diff > tol, diff.abs() <= tol
    top = ~(diff < -tol).any(dim=1)  # nothing strictly above the true caption
    p1 = [1.0 / (1 + t) if ok else 0.0 for ok, t in zip(top.tolist(), ties.sum(dim=1).tolist())]
    pair = beats.double() + 0.5 * ties.double()  # [N, k]
    out: dict = {"n_items": n, "kinds": list(kinds), "chance_precision_at_1": 1.0 / (k + 1),
                 "skipped": dict(skipped or {}), "ties": int(ties.sum())}
    mean = sum(p1) / n if n else None
    out["precision_at_1"] = mean
    summary = {"precision_at_1": gated_entry(mean, n, mean_interval(p1), min_items)}
    out["pairwise"] = {}
    for j, kind in enumerate(kinds):
        col = pair[:, j].tolist()
        m = sum(col) / n if n else None
        out["pairwise"][kind] = m
        summary[f"pairwise_{kind}"] = gated_entry(m, n, mean_interval(col), min_items)
    out["summary"] = summary
    return out
