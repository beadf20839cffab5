"""The whole suite (prepare once, run many) on a fake CLIP whose answers are known.

The fake maps each object name to a fixed random orthonormal vector. Captions are tokenised to
the ids of the names they mention, in order; eval images are tiny PNGs whose first pixel row
carries object ids (red) and which slot is large (green).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from _scripts import load_script
from eval import probes as P
from eval.manifest import load_eval_set
from eval.suite import SuiteConfig, prepare_suite, run_suite

NAMES = ["apple", "bus", "cat", "dog", "egg", "fox", "gum", "hat", "ink", "jar", "kite", "lamp"]
SIZES = {"apple": "small", "egg": "small", "gum": "small", "ink": "small",
         "bus": "large", "kite": "large", "lamp": "large",
         "cat": "medium", "dog": "medium", "fox": "medium", "hat": "medium", "jar": "medium"}
WEIGHTS = torch.tensor([1.0, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005])


class FakeAdapter:
    """``text_rule``: "first" (mostly the first-named object) or "mean" (order-free).
    ``image_rule``: "largest" (only the large object) or "mean"."""

    def __init__(self, names=NAMES, dim: int = 32, text_rule: str = "first", image_rule: str = "largest"):
        q, _ = torch.linalg.qr(torch.randn(dim, len(names), generator=torch.Generator().manual_seed(0)))
        self.vectors = q.T.contiguous()
        self.ids = {n: i + 1 for i, n in enumerate(names)}
        self.text_rule, self.image_rule = text_rule, image_rule
        self.noise = 0.05 * torch.randn(997, dim, generator=torch.Generator().manual_seed(1))
        self.calls = {"preprocess": 0, "tokenizer": 0, "encode_text": 0, "encode_image": 0}
        self.device = torch.device("cpu")
        self.name = "fake"

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        self.calls["preprocess"] += 1
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)

    def tokenizer(self, texts: list[str]) -> torch.Tensor:
        self.calls["tokenizer"] += 1
        out = torch.zeros(len(texts), len(WEIGHTS), dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.ids[w] for w in re.findall(r"[a-z]+", t) if w in self.ids]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def _mix(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        vec = torch.cat([torch.zeros(1, self.vectors.shape[1]), self.vectors])[ids]  # id 0 -> zero
        return (weights[..., None] * vec).sum(1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls["encode_text"] += 1
        present = (tokens > 0).float()
        if self.text_rule == "first":
            emb = self._mix(tokens, WEIGHTS[: tokens.shape[1]] * present)
        else:  # order-free mean, plus noise that depends only on the set of objects
            emb = self._mix(tokens, present / present.sum(1, keepdim=True))
            key = ((tokens**2).sum(1) * 7919) % self.noise.shape[0]
            emb = emb + self.noise[key] * (present.sum(1, keepdim=True) > 1)
        return F.normalize(emb, dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["encode_image"] += 1
        ids = images[:, 0, 0, :].long()  # red = object id (0 = empty)
        large = images[:, 1, 0, :]  # green 255 = large slot
        if self.image_rule == "largest":
            pick = torch.where(ids > 0, large, -1.0).argmax(1)
            emb = self._mix(ids.gather(1, pick[:, None]), torch.ones(len(ids), 1))
        else:
            emb = self._mix(ids, (ids > 0).float())
        return F.normalize(emb, dim=-1)


def write_fake_eval_set(root: Path, n_objects=(2, 3), per_setting: int = 12, names=NAMES) -> Path:
    """Singles plus, per n and large slot, ``per_setting`` counterbalanced images."""
    root.mkdir(parents=True, exist_ok=True)
    ids = {n: i + 1 for i, n in enumerate(names)}
    lines = []

    def save(rel: str, objs: list[str], large: int | None):
        arr = np.zeros((8, 8, 3), dtype=np.uint8)
        for s, o in enumerate(objs):
            arr[0, s, 0] = ids[o]
            arr[0, s, 1] = 255 if s == large else 50
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel)
        areas = [400 if s == large else 100 for s in range(len(objs))]
        lines.append({"image": rel, "objects": objs, "large": large, "areas": areas,
                      "n_objects": len(objs), "kind": "single" if large is None else "multi",
                      "setting": "single" if large is None else f"n{len(objs)}_large_slot{large}"})

    for o in names:
        save(f"single/{o}.png", [o], None)
    for n in n_objects:
        for j in range(n):
            for t, objs in enumerate(P.latin_square_lists(names, n, per_setting, seed=10 * n + j)[:per_setting]):
                save(f"n{n}_large_slot{j}/{t:03d}.png", objs, j)
    (root / "manifest.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    return root


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory):
    return load_eval_set(write_fake_eval_set(tmp_path_factory.mktemp("es")))


def _prepare(adapter, eval_set, **kw):
    opts = dict(n_objects=(2, 3), items_per_probe=24, linear_items=96,
                itm_distractors=3, size_classes=SIZES, progress=False)
    opts.update(kw)
    return prepare_suite(adapter, eval_set, **opts)


def test_full_suite_known_answers(eval_set):
    adapter = FakeAdapter()
    prepared = _prepare(adapter, eval_set, text_encodings=("plain", "split"))
    res = run_suite(adapter, prepared)
    assert set(res) == set(P.PROBE_NAMES) and all(set(v) == {2, 3} for v in res.values())
    tor = res["tor"][3]
    assert tor["n_items"] == 24 and tor["n_conditional"] == 24
    assert tor["conditional"]["pos1"]["share"] == 1.0 and tor["summary"]["order_bias"]["value"] == 1.0
    assert tor["variants"]["photo"]["conditional"]["pos1"]["share"] == 1.0  # other template
    assert tor["variants"]["split"]["summary"]["order_bias"]["value"] < 0.5  # order-free encoding
    ior = res["ior"][3]
    # 24 wanted -> whole balanced blocks: 12 objects x 3 large-slot settings
    assert ior["n_items"] == 36 and ior["unconditional"]["large"]["share"] == 1.0 and ior["summary"]["size_bias"]["value"] == 1.0
    assert res["i2tor"][2]["unconditional"]["large"]["share"] == 1.0
    itm = res["itm"][3]
    assert itm["s1"]["total"] == 36 * 3 and itm["s1"]["share"] == 1.0 and itm["s2"]["share"] == 0.0
    assert itm["summary"]["gap"]["value"] == 1.0 and "split" in itm["variants"]
    assert res["toc"][2]["accuracy"]["pos1"]["share"] > res["toc"][2]["accuracy"]["pos2"]["share"]
    assert res["ioc"][2]["labels"] == ["large", "small1"]
    balance = prepared.describe()["balance"]
    assert balance["tor/n3"] == {"pos1": [2, 2], "pos2": [2, 2], "pos3": [2, 2]}  # 24 captions, 12 objects
    assert set(balance["ior/n2"]) == {"large", "small1"}
    assert all(lo == hi for lo, hi in balance["ior/n3"].values()), balance["ior/n3"]  # role-balanced
    c1 = res["claim1"][3]
    assert c1["large_first"]["conditional"]["pos1"]["share"] == 1.0 and c1["summary"]["first_share_gap"]["value"] == 0.0
    json.dumps(res)  # JSON-able


def test_symmetric_encoder_equal_shares(eval_set):
    adapter = FakeAdapter(text_rule="mean")
    res = run_suite(adapter, _prepare(adapter, eval_set, probes=("tor",), n_objects=(3,), items_per_probe=120))
    tor = res["tor"][3]
    assert tor["n_conditional"] == tor["n_items"] == 120
    for k in ("pos1", "pos2", "pos3"):
        lo, hi = tor["conditional"][k]["ci"]
        assert lo <= 1 / 3 <= hi


def test_run_suite_only_encodes(eval_set):
    adapter = FakeAdapter()
    prepared = _prepare(adapter, eval_set)
    before = dict(adapter.calls)
    assert before["tokenizer"] == 1 and before["preprocess"] == len(prepared.images)
    assert before["encode_text"] == before["encode_image"] == 0
    first = run_suite(adapter, prepared)
    second = run_suite(adapter, prepared)
    assert first == second
    assert adapter.calls["tokenizer"] == 1 and adapter.calls["preprocess"] == before["preprocess"]
    assert adapter.calls["encode_text"] == 2 and adapter.calls["encode_image"] == 2
    # distinct inputs are encoded once: gallery names + all captions, each string once
    assert len(prepared.texts) == len(set(prepared.texts))
    # same prepared inputs, changed weights -> changed answer
    adapter.image_rule = "mean"
    assert run_suite(adapter, prepared)["ior"][2]["summary"]["size_bias"]["value"] < 1.0


def test_bad_options_name_valid_values(eval_set):
    adapter = FakeAdapter()
    with pytest.raises(ValueError, match=r"probes: unknown \['tox'\]; valid: tor, toc"):
        _prepare(adapter, eval_set, probes=("tox",))
    with pytest.raises(ValueError, match=r"n_objects \[4\] not in the eval set.*valid: \[2, 3\]"):
        _prepare(adapter, eval_set, n_objects=(3, 4))
    with pytest.raises(ValueError, match=r"templates: unknown \['fancy'\]"):
        _prepare(adapter, eval_set, templates=("fancy",))
    with pytest.raises(TypeError, match="unknown suite options"):
        _prepare(adapter, eval_set, itemz=3)
    # text-only probes do not need images of that n
    res = run_suite(adapter, _prepare(adapter, eval_set, probes=("tor",), n_objects=(4,)))
    assert res["tor"][4]["conditional"]["pos1"]["share"] == 1.0


def test_suite_config_defaults_are_the_paper_forms():
    cfg = SuiteConfig()
    assert cfg.templates[0] == "and_chain" and cfg.gallery_template == "{}"
    from data_prep.captions import make_caption

    assert make_caption(["dog", "pizza", "car"], cfg.templates[0]) == "dog and pizza and car"


def test_bench_timing_split_smoke(eval_set):
    """bench/bench_probes.py's split of run time into encoder forwards and the rest."""
    bench = load_script("bench/bench_probes.py")
    cfg = SuiteConfig(probes=("tor", "ior"), n_objects=(2,), items_per_probe=12, templates=("and_chain",))
    row = bench.timed_run(FakeAdapter(), eval_set, cfg, repeats=2)
    assert row["text_rows_encoded"] == row["texts"] and row["image_rows_encoded"] == row["images"]
    assert len(row["run_s_all"]) == 2 and 0 < row["encoder_share"] <= 1
    small = bench.restrict(eval_set, 6)
    assert small.vocabulary == NAMES[:6] and all(set(it.objects) <= set(NAMES[:6]) for it in small.items)


# ---------------------------------------------------------------- one definition of the probe options


def test_callback_and_cli_take_the_suite_options_from_suite_config(tmp_path):
    """Defaults and checks of the probe options live in SuiteConfig only: the training callback's
    defaults are its defaults, its errors are its errors, and the CLI's defaults/choices derive from it."""
    import inspect

    from eval import cli
    from eval.callback import BiasEvalCallback
    from eval.suite import TEXT_ENCODINGS, SuiteConfig, SuiteOptionError

    default = SuiteConfig()
    params = inspect.signature(BiasEvalCallback).parameters
    assert set(BiasEvalCallback.SUITE_OPTIONS) == set(SuiteConfig.__dataclass_fields__)
    for name in BiasEvalCallback.SUITE_OPTIONS:
        assert params[name].default == getattr(default, name), name
    assert BiasEvalCallback(data_dir=None, cache_dir=str(tmp_path)).suite == default

    bad = {"probes": ["tor", "nope"], "n_objects": [1], "items_per_probe": 0, "itm_distractors": 0,
           "templates": ["haiku"], "text_encodings": ["bpe"], "seed": -1}
    with pytest.raises(SuiteOptionError) as want:
        SuiteConfig(**bad)
    with pytest.raises(ValueError) as got:
        BiasEvalCallback(**bad, cache_dir=str(tmp_path))
    assert "\n" not in str(got.value)
    for message in want.value.messages():
        assert message in str(got.value), message

    args = cli.build_parser().parse_args(["comco", "--model", "m", "--out", str(tmp_path / "r.json")])
    assert cli.suite_config(args) == default
    assert set(cli.SUITE_FLAGS) == set(SuiteConfig.__dataclass_fields__)
    choices = next(a.choices for a in cli.add_comco_parser(
        cli.argparse.ArgumentParser().add_subparsers())._actions if a.dest == "text_encoding")
    assert tuple(choices) == TEXT_ENCODINGS
    args.items, args.probes = 0, ["nope"]
    with pytest.raises(SystemExit) as cli_err:
        cli.validate_args(args)
    with pytest.raises(SuiteOptionError) as want:
        SuiteConfig(items_per_probe=0, probes=["nope"])
    for message in want.value.messages(cli.SUITE_FLAGS):
        assert message in str(cli_err.value), message


SUITE_FIELDS = list(SuiteConfig.__dataclass_fields__)


def _squash(text: str) -> str:
    """Text without whitespace: help compared whatever line breaks (or hyphen breaks) a formatter chose."""
    return re.sub(r"\s+", "", text)


def _comco_parser():
    from eval import cli

    return cli.add_comco_parser(cli.argparse.ArgumentParser().add_subparsers())


@pytest.mark.parametrize("name", SUITE_FIELDS)
def test_every_suite_option_is_one_comco_flag_with_the_declared_default_and_help(name, tmp_path):
    """DESIGN: a probe option is declared once (SuiteConfig: type, default, help, choices); comco
    derives its flag from it, so the flag cannot drift from the declaration."""
    from eval import cli
    from eval.suite import suite_options

    opt = {o.name: o for o in suite_options()}[name]
    parser = _comco_parser()
    flag = cli.SUITE_FLAGS[name]
    mine = [a for a in parser._actions if flag in a.option_strings]
    assert len(mine) == 1 and mine[0].option_strings == [flag], mine
    action = mine[0]
    assert [a for a in parser._actions if a.dest == action.dest] == [action]  # nothing else sets its value
    # the declared default, as comco spells it: a list for a tuple; n_objects unset = every n in the eval set
    assert action.default == {"n_objects": None}.get(name, list(opt.default) if opt.is_list else opt.default)
    args = parser.parse_args(["--model", "m", "--out", str(tmp_path / "r.json")])
    assert getattr(cli.suite_config(args), name) == getattr(SuiteConfig(), name) == opt.default
    if opt.is_list and name not in ("probes", "templates"):
        assert action.nargs == "+"
    elif not opt.is_list and opt.item_type is not str:
        assert action.type is opt.item_type
    if action.choices is not None:
        assert tuple(action.choices) == opt.choices
    shown = _squash(parser.format_help())
    assert _squash(opt.help) in shown and _squash(action.help.replace("%%", "%")) in shown
    assert opt.help in action.help and "(default: " in action.help
    if opt.choices:  # listed in the help, also where argparse does not check them (a comma-separated list)
        assert "valid: " + ", ".join(opt.choices) in action.help


def test_comco_probe_flags_are_the_suite_options_and_today_s_flags_still_work(tmp_path):
    from eval import cli

    group = next(g for g in _comco_parser()._action_groups if g.title.startswith("probe options"))
    flags = [s for a in group._group_actions for s in a.option_strings]
    assert flags == [cli.SUITE_FLAGS[f] for f in SUITE_FIELDS] and len(set(flags)) == len(SUITE_FIELDS)
    assert set(cli.SUITE_FLAGS.values()) >= {"--probes", "--n-objects", "--items", "--templates", "--gallery-template",
                                             "--text-encoding", "--itm-distractors", "--seed"}
    args = cli.build_parser().parse_args(
        ["comco", "--model", "m", "--out", str(tmp_path / "r.json"), "--probes", "TOR,itm", "--n-objects", "2", "3",
         "--items", "8", "--templates", "photo,and_chain", "--gallery-template", "a {}", "--text-encoding", "split",
         "plain", "--itm-distractors", "0", "--seed", "3"])
    assert cli.suite_config(args) == SuiteConfig(
        probes=("tor", "itm"), n_objects=(2, 3), items_per_probe=8, templates=("photo", "and_chain"),
        gallery_template="a {}", text_encodings=("split", "plain"), itm_distractors=None, seed=3)
    assert cli.suite_config(args, n_objects=(4,)).n_objects == (4,)


def test_callback_signature_is_suite_config_s_options():
    """The callback keeps explicit keyword arguments (LightningCLI reads its signature), one per
    SuiteConfig option, with SuiteConfig's defaults; its docstring's entries are SuiteConfig's help."""
    import inspect

    import docstring_parser

    from eval.callback import BiasEvalCallback
    from eval.suite import suite_options

    params = inspect.signature(BiasEvalCallback).parameters
    assert BiasEvalCallback.SUITE_OPTIONS == tuple(SUITE_FIELDS)
    docs = {p.arg_name: p.description for p in docstring_parser.parse(BiasEvalCallback.__doc__).params}
    for opt in suite_options():
        assert params[opt.name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert params[opt.name].default == opt.default, opt.name
        assert _squash(docs[opt.name]) == _squash(opt.describe("null")), opt.name
    assert "every_n_steps" in docs and "eval_set_blocks" in docs  # the callback's own arguments keep theirs
    cfg_docs = {p.arg_name: p.description for p in docstring_parser.parse(SuiteConfig.__doc__).params}
    assert list(cfg_docs) == SUITE_FIELDS


#: (option, comco argv, the callback's value, the rule's text after the option's name)
BAD_OPTIONS = [
    ("probes", ["--probes", "tor,nope"], ["tor", "nope"], ": unknown ['nope']; valid: " + ", ".join(P.PROBE_NAMES)),
    ("n_objects", ["--n-objects", "1", "3"], [1, 3], " must be a list of integers >= 2 (objects per item), got [1, 3]"),
    ("items_per_probe", ["--items", "0"], 0, " must be an integer >= 1, got 0"),
    ("templates", ["--templates", "haiku"], ["haiku"], ": unknown ['haiku']; valid: photo, "),
    ("gallery_template", ["--gallery-template", "x"], "x", " needs a '{}' for the object name, got 'x'"),
    ("split_template", ["--split-template", "y"], "y", " needs a '{}' for the object name, got 'y'"),
    ("linear_items", ["--linear-items", "3"], 3, " must be an integer >= 4, got 3"),
    ("linear_steps", ["--linear-steps", "0"], 0, " must be an integer >= 1, got 0"),
    ("train_frac", ["--train-frac", "1.5"], 1.5, " must be a number between 0 and 1, got 1.5"),
    ("itm_distractors", ["--itm-distractors", "-1"], -1, " must be an integer >= 1 or null (all), got -1"),
    ("seed", ["--seed", "-1"], -1, " must be an integer >= 0, got -1"),
]


@pytest.mark.parametrize("name, argv, value, rule", BAD_OPTIONS, ids=[b[0] for b in BAD_OPTIONS])
def test_a_bad_probe_option_gives_the_same_rule_via_comco_and_the_callback(tmp_path, name, argv, value, rule):
    """SuiteConfig holds the rule; comco names the flag, the callback its argument (under its config path)."""
    from eval import cli
    from eval.callback import BiasEvalCallback
    from eval.suite import SuiteOptionError

    with pytest.raises(SuiteOptionError) as own:
        SuiteConfig(**{name: value})
    assert own.value.problems == [(name, own.value.problems[0][1])] and rule in own.value.problems[0][1]
    data = tmp_path / "set"
    data.mkdir()
    (data / "manifest.jsonl").write_text("")
    args = cli.build_parser().parse_args(
        ["comco", "--model", "m", "--data", str(data), "--out", str(tmp_path / "r.json"), *argv])
    with pytest.raises(SystemExit) as by_cli:
        cli.validate_args(args)
    assert f"{cli.SUITE_FLAGS[name]}{rule}" in str(by_cli.value)
    with pytest.raises(ValueError) as by_callback:
        BiasEvalCallback(**{name: value}, data_dir=str(data))
    assert str(by_callback.value).startswith(f"BiasEvalCallback ({BiasEvalCallback.CONFIG_PATH}): ")
    assert f"{name}{rule}" in str(by_callback.value) and "--" not in str(by_callback.value)


@pytest.mark.parametrize("name, word, rule", [("text_encodings", "bpe", ": unknown ['bpe']; valid: plain, split"),
                                              ("linear_method", "svm", ": 'svm'; valid: ridge, logistic")])
def test_a_bad_choice_is_refused_by_argparse_from_the_declared_choices(tmp_path, capsys, name, word, rule):
    """Where comco's flag takes words from the declared choices, argparse itself refuses another word
    (naming the flag, listing the choices); the callback gets SuiteConfig's rule."""
    from eval import cli
    from eval.callback import BiasEvalCallback
    from eval.suite import suite_options

    flag = cli.SUITE_FLAGS[name]
    with pytest.raises(SystemExit) as by_cli:
        cli.build_parser().parse_args(["comco", "--model", "m", "--out", str(tmp_path / "r.json"), flag, word])
    choices = {o.name: o.choices for o in suite_options()}[name]
    assert by_cli.value.code == 2
    assert f"argument {flag}: invalid choice: '{word}' (choose from " in capsys.readouterr().err
    assert choices == {"text_encodings": ("plain", "split"), "linear_method": ("ridge", "logistic")}[name]
    with pytest.raises(ValueError, match=re.escape(f"{name}{rule}")):
        BiasEvalCallback(**{name: [word] if name == "text_encodings" else word}, cache_dir=str(tmp_path))


def test_suite_config_normalises_loose_values_and_names_every_bad_one():
    from eval.suite import SuiteConfig, SuiteOptionError

    cfg = SuiteConfig(probes="TOR, itm", n_objects=3, items_per_probe="8", templates=["photo"], seed=2.0)
    assert (cfg.probes, cfg.n_objects, cfg.items_per_probe, cfg.templates, cfg.seed) == (
        ("tor", "itm"), (3,), 8, ("photo",), 2)
    with pytest.raises(SuiteOptionError) as err:
        SuiteConfig(probes=[], n_objects=[True], items_per_probe=2.5, gallery_template="x", linear_method="svm",
                    train_frac=1.0, linear_items=3)
    keys = [key for key, _ in err.value.problems]
    assert keys == ["probes", "n_objects", "items_per_probe", "gallery_template", "linear_items", "linear_method",
                    "train_frac"]
    assert err.value.messages({"probes": "X.probes"})[0] == "X.probes: none given; valid: " + ", ".join(
        SuiteConfig.probes)


def test_itm_every_absent_object_as_distractor(eval_set):
    """``itm_distractors=None`` (the paper's ITM): one pair per image and absent object."""
    adapter = FakeAdapter()
    prepared = _prepare(adapter, eval_set, probes=("itm",), n_objects=(2,), itm_distractors=None)
    itm = run_suite(adapter, prepared)["itm"][2]
    n_images = len(prepared.tasks["itm"][2]["s1"]["image"].unique())
    assert n_images == 24 and itm["s1"]["total"] == itm["s2"]["total"] == n_images * (len(NAMES) - 2)
    assert itm["summary"]["gap"]["value"] == 1.0 and itm["summary"]["gap"]["denominator"] == "pairs S1=240, S2=240"
    lo, hi = itm["summary"]["gap"]["ci"]
    assert 0.95 < lo < hi == 1.0


def test_tor_template_variants_marked_held_out_or_in_distribution(eval_set, monkeypatch):
    from data_prep import captions

    assert SuiteConfig().templates == ("and_chain", "photo", "there_is")
    adapter = FakeAdapter()
    tor = run_suite(adapter, _prepare(adapter, eval_set, probes=("tor",), n_objects=(2,),
                                      templates=SuiteConfig().templates, text_encodings=("plain", "split")))["tor"][2]
    held = set(captions.HELD_OUT_TEMPLATES)
    assert held == {"and_chain", "there_is"}
    assert tor["template"] == "and_chain" and tor["template_split"] == "held_out"
    assert set(tor["variants"]) == {"photo", "there_is", "split"}
    assert tor["variants"]["photo"]["template_split"] == "in_distribution"
    assert tor["variants"]["there_is"]["template_split"] == "held_out"
    assert tor["variants"]["split"]["template_split"] is None
    # a data_prep without the list: nothing is claimed
    monkeypatch.delattr(captions, "HELD_OUT_TEMPLATES")
    from eval.suite import template_split

    assert template_split("photo") is None
