"""The TOR order bias of a *random* text tower, across init seeds, and what causes it (ablations).

    python experiments/init_baseline.py --seeds 20 --out docs/figures/init_baseline

For seeds 0..K-1: ``torch.manual_seed(seed)``, then open_clip's random init of the model that
``configs/quickstart.yaml`` trains (``clip-tiny``), then the TOR probe exactly as
``BiasEvalCallback`` runs it at step 0 (``eval.suite.prepare_suite``/``run_suite``: 3 objects,
one Latin-square block of the rendered vocabulary = 62 captions, the suite's templates
``and_chain`` (headline, bare "A and B and C") and ``photo``, bare-name gallery ``"{}"``).

The text tower is evaluated as is and under ablations (:data:`ABLATIONS`, applied by
:func:`text_ablation`, which patches the model reversibly):

- ``as_is``: the model untouched, encoded by ``ClipAdapter`` exactly as the suite/callback does;
- ``no_causal_mask``: bidirectional attention over the caption's own tokens (SOT..EOT; padding
  is never attended, as in a padding-masked bidirectional encoder);
- ``no_pos_emb``: positional embedding zeroed;
- ``no_mask_no_pos``: both — the tower is then a function of the *multiset* of tokens, so every
  permutation of a caption's names gives the same embedding and TOR is position-symmetric
  (a known answer, tested in tests/test_init_baseline.py);
- ``mean_pool``: EOT pooling replaced by the mean over the caption's real tokens (SOT..EOT).

Besides the order bias (``share(pos1) - mean share(pos2, pos3)``, unconditional, N = 62) it
reports per mention position the mean cosine of the caption embedding with the bare-name
embedding of the object at that position, and a mechanism check: under the causal mask the
final hidden states of the caption's first name (positions 1..) are those of the gallery prompt
"<name>" itself (max abs difference reported), because both sequences start ``SOT, name`` and a
causal tower's state at position i sees only tokens 0..i.

Writes ``<out>.md`` (table + explanation numbers), ``<out>.png`` (order bias per seed and
ablation) and ``<out>.json`` (every number).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from eval.manifest import EvalItem, EvalSet, load_eval_set  # noqa: E402
from eval.model_access import ClipAdapter  # noqa: E402
from eval.models import build_model_and_transforms  # noqa: E402
from eval.suite import PreparedSuite, SuiteConfig, prepare_suite, run_suite  # noqa: E402

DEFAULT_CONFIG = ROOT / "configs" / "quickstart.yaml"
N_OBJECTS = 3
TEMPLATES = ("and_chain", "photo")  # the suite's defaults: headline first, then the variant


@dataclass(frozen=True)
class Ablation:
    """What the text tower keeps: causal mask, positional embedding, and how it pools."""

    causal: bool = True
    positional: bool = True
    pooling: str = "eot"  # "eot" (open_clip's argmax pooling) or "mean" (over SOT..EOT)

    @property
    def is_identity(self) -> bool:
        return self.causal and self.positional and self.pooling == "eot"


ABLATIONS: dict[str, Ablation] = {
    "as_is": Ablation(),
    "no_causal_mask": Ablation(causal=False),
    "no_pos_emb": Ablation(positional=False),
    "no_mask_no_pos": Ablation(causal=False, positional=False),
    "mean_pool": Ablation(pooling="mean"),
}
#: controls on the untouched model: the suite's TOR with another gallery prompt. "a photo of a {}"
#: gives every gallery name the prefix that the photo template's *first* name has ("a photo of a(n)")
#: and moves it away from position 1, where the and_chain's first name sits.
GALLERY_CONTROLS: dict[str, str] = {"as_is_gallery_photo": "a photo of a {}"}


# ------------------------------------------------------------------------------ the ablation


def _check_plain_clip(model: torch.nn.Module) -> None:
    from open_clip.model import CLIP

    if not isinstance(model, CLIP) or model.text_pool_type != "argmax":
        raise TypeError(f"text ablations need an open_clip CLIP with argmax (EOT) pooling, got "
                        f"{type(model).__name__} pooling {getattr(model, 'text_pool_type', None)!r}")


def ablated_encode_text(model: torch.nn.Module, text: torch.Tensor, ablation: Ablation,
                        normalize: bool = False) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` with the ablation applied, each row on its own tokens only.

    Rows are grouped by length (EOT position + 1) and run on ``text[:, :length]``: with a causal
    mask that is exactly open_clip's result (trimming, see ``eval.text_encoding``); without one it
    keeps padding out of the attention. Reads ``model.positional_embedding`` and ``model.attn_mask``
    as they are (:func:`text_ablation` zeroes / removes them).
    """
    cast = model.transformer.get_cast_dtype()
    eot = text.argmax(dim=-1)
    out = None
    for length in torch.unique(eot + 1).tolist():
        rows = (eot + 1 == length).nonzero(as_tuple=True)[0]
        t = text[rows, :length]
        x = model.token_embedding(t).to(cast) + model.positional_embedding[:length].to(cast)
        mask = None if model.attn_mask is None else model.attn_mask[:length, :length]
        x = model.ln_final(model.transformer(x, attn_mask=mask))
        x = x[:, -1] if ablation.pooling == "eot" else x.mean(dim=1)
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
        if out is None:
            out = x.new_empty(text.shape[0], x.shape[-1])
        out[rows.to(out.device)] = x
    return F.normalize(out, dim=-1) if normalize else out


@contextmanager
def text_ablation(model: torch.nn.Module, ablation: Ablation) -> Iterator[torch.nn.Module]:
    """Within the block the model's text tower is ablated; on exit it is exactly as before.

    ``positional=False`` zeroes ``positional_embedding`` in place (restored from a copy);
    ``causal=False`` sets ``attn_mask`` to None (restored); any ablation installs an instance
    ``encode_text`` (:func:`ablated_encode_text`; removed on exit). The identity ablation changes
    nothing, so the suite's own (trimmed) path runs. Encode through
    ``ClipAdapter(..., trim_text=False)``, which calls ``model.encode_text``.
    """
    if ablation.pooling not in ("eot", "mean"):
        raise ValueError(f"pooling must be 'eot' or 'mean', got {ablation.pooling!r}")
    if ablation.is_identity:
        yield model
        return
    _check_plain_clip(model)
    if "encode_text" in vars(model):
        raise RuntimeError("model.encode_text is already patched (nested text_ablation?)")
    pos = model.positional_embedding.detach().clone()
    mask = model.attn_mask
    try:
        if not ablation.positional:
            with torch.no_grad():
                model.positional_embedding.zero_()
        if not ablation.causal:
            model.attn_mask = None
        model.encode_text = lambda text, normalize=False: ablated_encode_text(model, text, ablation, normalize)
        yield model
    finally:
        vars(model).pop("encode_text", None)
        model.attn_mask = mask
        with torch.no_grad():
            model.positional_embedding.copy_(pos)


# ------------------------------------------------------------------------------ the probe


def vocabulary_eval_set(vocabulary: Sequence[str], root: Path | str = "<vocabulary>") -> EvalSet:
    """An eval set of single-object items only: all TOR needs (its vocabulary; no image is read)."""
    items = [EvalItem(image=f"{o}.png", path=Path(root) / f"{o}.png", objects=(o,), large=0, areas=(0.25,),
                      n_objects=1, kind="single", setting="single") for o in vocabulary]
    return EvalSet(root=Path(root), items=items)


def default_vocabulary_set(data: str | None = None) -> EvalSet:
    """``data`` (an eval-set folder) if given, else the rendered default set's vocabulary
    (``data_prep.comco.vocabulary("objects")``, the vocabulary of ``comco-objects-seed0-px64``)."""
    if data:
        return load_eval_set(data)
    from data_prep.comco import vocabulary

    return vocabulary_eval_set(sorted(vocabulary("objects")))


def suite_config(seed: int = 0, gallery_template: str = "{}") -> SuiteConfig:
    """TOR as the quickstart callback runs it: n=3, one Latin-square block, both templates."""
    return SuiteConfig(probes=("tor",), n_objects=(N_OBJECTS,), items_per_probe=None, templates=TEMPLATES, seed=seed,
                       gallery_template=gallery_template)


def random_model(model_name: str, seed: int):
    """``torch.manual_seed(seed)`` then open_clip's random init: ``(model.eval(), preprocess, tokenizer)``."""
    import open_clip

    torch.manual_seed(seed)
    model, _, preprocess = build_model_and_transforms(model_name)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


def _position_cosines(text: torch.Tensor, prepared: PreparedSuite) -> dict[str, list[float]]:
    """Per template: mean over captions of cos(caption, bare-name embedding of the object at pos k)."""
    task = prepared.tasks["tor"][N_OBJECTS]
    names = text[prepared.gallery_text]
    out = {}
    for template, rows in task["variants"].items():
        caps = text[rows]
        cos = torch.stack([(caps * names[task["targets"][:, k]]).sum(-1) for k in range(N_OBJECTS)], dim=1)
        out[template] = [float(c) for c in cos.mean(dim=0)]
    return out


def prefix_state_gap(model: torch.nn.Module, tokenizer, lists: Sequence[Sequence[str]]) -> float:
    """Max abs difference between the final hidden states of each caption's first-name tokens
    (positions 1..m) and those of the same tokens in the bare-name prompt (as ``model.encode_text``'s
    tower computes them, after ``ln_final``). 0 under a causal mask: a prefix's states do not see
    what follows."""
    from data_prep.captions import make_caption

    gap = 0.0
    for names in lists:
        tok = tokenizer([make_caption(list(names), "and_chain"), names[0]])
        m = int(tok[1].argmax()) - 1  # tokens of the first name
        x = model.token_embedding(tok) + model.positional_embedding
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
        gap = max(gap, float((x[0, 1:1 + m] - x[1, 1:1 + m]).abs().max()))
    return gap


def _tor_row(enc, prepared: PreparedSuite) -> dict:
    tor = run_suite(enc, prepared)["tor"][N_OBJECTS]
    text = F.normalize(enc.encode_text(prepared.tokens).float(), dim=-1)
    return {
        "order_bias": {"and_chain": tor["summary"]["order_bias"]["value"],
                       "photo": tor["variants"]["photo"]["summary"]["order_bias"]["value"]},
        "shares": {"and_chain": {k: v["share"] for k, v in tor["unconditional"].items()},
                   "photo": {k: v["share"] for k, v in tor["variants"]["photo"]["unconditional"].items()}},
        "position_cosine": _position_cosines(text, prepared),
        "n_items": tor["n_items"],
    }


def evaluate_seed(model_name: str, seed: int, eval_set: EvalSet, ablations: Sequence[str] = tuple(ABLATIONS),
                  controls: Sequence[str] = tuple(GALLERY_CONTROLS), prefix_captions: int = 8) -> dict:
    """Every ablation's (and gallery control's) TOR result and position cosines for one init seed."""
    model, preprocess, tokenizer = random_model(model_name, seed)
    adapter = ClipAdapter(model, preprocess, tokenizer, name=f"{model_name}:init{seed}")
    prepared = prepare_suite(adapter, eval_set, config=suite_config(), progress=False)
    out: dict = {"seed": seed, "ablations": {}}
    for name in ablations:
        ablation = ABLATIONS[name]
        with torch.no_grad(), text_ablation(model, ablation):
            enc = adapter if ablation.is_identity else ClipAdapter(model, preprocess, tokenizer, trim_text=False)
            row = _tor_row(enc, prepared)
            if ablation.pooling == "eot":
                lists = prepared.tasks["tor"][N_OBJECTS]["lists"][:prefix_captions]
                row["prefix_state_gap"] = prefix_state_gap(model, tokenizer, lists)
        out["ablations"][name] = row
    for name in controls:
        control = prepare_suite(adapter, eval_set, config=suite_config(gallery_template=GALLERY_CONTROLS[name]),
                                progress=False)
        out["ablations"][name] = _tor_row(adapter, control)
    return out


# ------------------------------------------------------------------------------ statistics, output


def describe(values: Sequence[float]) -> dict:
    """mean, sd (n-1), t-based 95 % interval of the mean, min, max, n."""
    from scipy.stats import t

    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else float("nan")
    half = t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "min": min(values), "max": max(values)}


def summarise(per_seed: list[dict]) -> dict:
    names = list(per_seed[0]["ablations"])
    out = {}
    for name in names:
        rows = [s["ablations"][name] for s in per_seed]
        entry = {t: describe([r["order_bias"][t] for r in rows]) for t in TEMPLATES}
        entry["position_cosine"] = {
            t: [statistics.fmean(r["position_cosine"][t][k] for r in rows) for k in range(N_OBJECTS)] for t in TEMPLATES}
        entry["pos1_share"] = {t: statistics.fmean(r["shares"][t]["pos1"] for r in rows) for t in TEMPLATES}
        if "prefix_state_gap" in rows[0]:
            entry["prefix_state_gap"] = max(r["prefix_state_gap"] for r in rows)
        out[name] = entry
    return out


def _fmt(d: dict) -> str:
    return (f"{d['mean']:+.3f} | {d['sd']:.3f} | [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
            f"{d['min']:+.3f} | {d['max']:+.3f}")


def markdown(summary: dict, per_seed: list[dict], model_name: str, command: str) -> str:
    k = len(per_seed)
    lines = [
        f"# TOR order bias at initialisation: {model_name}, {k} init seeds (0..{k - 1})",
        "",
        f"`{command}`",
        "",
        "Order bias = share(pos1) − mean share(pos2, pos3), unconditional, 3 objects, 62 captions per seed "
        "(one Latin-square block of the rendered vocabulary), bare-name gallery; exactly the TOR of "
        "`BiasEvalCallback`'s step-0 record for the `as_is` row. sd across seeds; 95 % CI of the mean (t, "
        f"{k - 1} df).",
        "",
        "| ablation | template | mean | sd | 95 % CI of mean | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary.items():
        for t in TEMPLATES:
            lines.append(f"| {name} | {t} | {_fmt(entry[t])} |")
    if "as_is" in summary and len(summary) > 1:
        lines += ["", "Paired change against `as_is` (same seeds): as_is − ablation, mean and 95 % CI (t):", "",
                  "| ablation | and_chain | photo |", "|---|---|---|"]
        for name in summary:
            if name == "as_is":
                continue
            cells = []
            for t in TEMPLATES:
                d = describe([s["ablations"]["as_is"]["order_bias"][t] - s["ablations"][name]["order_bias"][t]
                              for s in per_seed])
                cells.append(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Mean top-1 shares of `as_is` (pos1 / pos2 / pos3 / none): " + "; ".join(
        t + " " + " / ".join(f"{statistics.fmean(s['ablations']['as_is']['shares'][t][k] for s in per_seed):.3f}"
                             for k in ("pos1", "pos2", "pos3", "none")) for t in TEMPLATES)
        if "as_is" in summary else ""]
    lines += ["", "Mean cosine of the caption embedding with the bare-name embedding of the object at each "
              "mention position (mean over captions and seeds):", "",
              "| ablation | template | pos1 | pos2 | pos3 | pos1 top-1 share |", "|---|---|---|---|---|---|"]
    for name, entry in summary.items():
        for t in TEMPLATES:
            c = entry["position_cosine"][t]
            lines.append(f"| {name} | {t} | {c[0]:.4f} | {c[1]:.4f} | {c[2]:.4f} | {entry['pos1_share'][t]:.3f} |")
    lines += ["", "Max abs difference between the final hidden states of an and_chain caption's first-name tokens "
              "and those tokens in the bare-name prompt (8 captions per seed, all seeds): "
              + ", ".join(f"{n} {e['prefix_state_gap']:.2e}" for n, e in summary.items() if "prefix_state_gap" in e),
              "", "Per seed (and_chain order bias):", "",
              "| seed | " + " | ".join(summary) + " |", "|---" * (len(summary) + 1) + "|"]
    for s in per_seed:
        lines.append(f"| {s['seed']} | " + " | ".join(f"{s['ablations'][n]['order_bias']['and_chain']:+.3f}"
                                                     for n in summary) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, per_seed: list[dict], path: Path, model_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(TEMPLATES), figsize=(4.2 * len(TEMPLATES), 3.6), sharey=True)
    for ax, t in zip(axes, TEMPLATES):
        for i, name in enumerate(names):
            vals = [s["ablations"][name]["order_bias"][t] for s in per_seed]
            jitter = [(j % 7 - 3) * 0.03 for j in range(len(vals))]
            ax.scatter([i + d for d in jitter], vals, s=9, alpha=0.5, color="C0")
            d = summary[name][t]
            ax.errorbar(i + 0.3, d["mean"], yerr=[[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]],
                        fmt="o", color="C3", capsize=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
        ax.set_title(f"template {t}", fontsize=9)
    axes[0].set_ylabel("TOR order bias at init\nshare(pos1) − mean share(others)")
    fig.suptitle(f"{model_name} at init, {len(per_seed)} seeds (dots), mean ± 95 % CI (red)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_from_config(config: Path) -> str:
    import yaml

    return yaml.safe_load(Path(config).read_text())["model"]["model_name"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=20, help="init seeds 0..K-1 (default 20)")
    p.add_argument("--out", default="docs/figures/init_baseline", help="output prefix: <out>.md/.png/.json")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config whose model.model_name is used")
    p.add_argument("--model", default=None, help="open_clip model name (overrides --config)")
    p.add_argument("--data", default=None, help="eval-set folder (default: the rendered set's vocabulary)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="rewrite <out>.md/.png from a <out>.json written before (no model is run)")
    p.add_argument("--ablations", default=",".join([*ABLATIONS, *GALLERY_CONTROLS]),
                   help=f"comma list from {[*ABLATIONS, *GALLERY_CONTROLS]}")
    args = p.parse_args(argv)
    if args.seeds < 2:
        p.error("--seeds must be >= 2 (a spread needs two)")
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    bad = [a for a in ablations if a not in ABLATIONS and a not in GALLERY_CONTROLS]
    if bad:
        p.error(f"unknown ablations {bad}; valid: {[*ABLATIONS, *GALLERY_CONTROLS]}")
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        model_name, per_seed = data["model"], data["per_seed"]
        return _write(Path(args.out), model_name, per_seed, len(per_seed), data)
    model_name = args.model or model_from_config(Path(args.config))
    eval_set = default_vocabulary_set(args.data)
    per_seed = []
    for seed in range(args.seeds):
        res = evaluate_seed(model_name, seed, eval_set, [a for a in ablations if a in ABLATIONS],
                            [a for a in ablations if a in GALLERY_CONTROLS])
        per_seed.append(res)
        print(f"seed {seed}: " + ", ".join(f"{n} {r['order_bias']['and_chain']:+.3f}/{r['order_bias']['photo']:+.3f}"
                                          for n, r in res["ablations"].items()), flush=True)
    return _write(Path(args.out), model_name, per_seed, args.seeds)


def _write(out: Path, model_name: str, per_seed: list[dict], seeds: int, data: dict | None = None) -> int:
    summary = summarise(per_seed)
    command = f"python experiments/init_baseline.py --seeds {seeds} --out {out}"
    md = markdown(summary, per_seed, model_name, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    if data is None:
        out.with_suffix(".json").write_text(json.dumps({"model": model_name, "summary": summary, "per_seed": per_seed}))
    plot(summary, per_seed, out.with_suffix(".png"), model_name)
    print(md)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')}, {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
