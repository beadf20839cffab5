"""data.train_sources: shard sets mixed by weight — realised shares, counts, exact resume, refusals.

Source B's captions start with "B " and source A's do not, so every sample's source is read off
its own tokens (independently of the counts the pipeline reports).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from conftest import write_shards
from test_train_fit import fit_args
from train.cli import main
from train.data import WebDataModule

Z = 3.29  # two-sided 99.9 % normal quantile: a correct mixture fails the interval test 1 time in 1000


def _tokenizer(captions):
    """One token per caption: 1 if it came from source B."""
    return torch.tensor([[1 if cap.startswith("B ") else 0] for cap in captions])


def _preprocess(image):
    import torchvision.transforms.functional as F

    return F.to_tensor(image.resize((8, 8)))


@pytest.fixture
def two_sources(tmp_path: Path) -> dict[str, str]:
    a = write_shards(tmp_path / "a", n_shards=2, per_shard=48, size=32, seed=1)
    b = write_shards(tmp_path / "b", n_shards=2, per_shard=48, size=32, seed=2, caption_prefix="B ")
    return {"a": str(Path(a[0]).parent), "b": str(Path(b[0]).parent)}


def _module(two_sources, weights: tuple[float, float], **kw) -> WebDataModule:
    sources = [{"name": n, "shards": two_sources[n], "weight": w} for n, w in zip("ab", weights)]
    kw = {"batch_size": 16, "num_workers": 0, "shuffle_buffer": 32, "seed": 3, **kw}
    dm = WebDataModule(train_sources=sources, **kw)
    dm.set_model_transforms(_preprocess, _preprocess, _tokenizer)
    return dm


def _batches(loader, n: int) -> list[tuple]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError(f"the loader ended after {len(out)} of {n} batches")


@pytest.mark.parametrize("weights", [(3.0, 1.0), (1.0, 4.0)])
def test_realised_shares_match_the_weights_within_a_binomial_interval(two_sources, weights):
    n_batches = 40
    dm = _module(two_sources, weights, samples_per_epoch=16 * n_batches)
    batches = _batches(dm.train_dataloader(), n_batches)
    from_b = sum(int(tokens.sum()) for _, tokens, _ in batches)
    n = 16 * n_batches
    p = weights[1] / sum(weights)
    assert abs(from_b - n * p) <= Z * math.sqrt(n * p * (1 - p)), (from_b, n, p)
    counts = batches[-1][2]["counts"]  # cumulative: the whole stream so far
    assert counts["source/b"] == from_b and counts["source/a"] == n - from_b
    assert counts["ok"] == n


def test_resume_continues_the_mixture(two_sources):
    """A loader restored at batch 6 (mid-segment: segments of 4) yields the uninterrupted run's batches 6..11."""
    whole = _batches(_module(two_sources, (1.0, 1.0), samples_per_epoch=16 * 12, segment_batches=4)
                     .train_dataloader(), 12)
    loader = _module(two_sources, (1.0, 1.0), samples_per_epoch=16 * 12, segment_batches=4).train_dataloader()
    state = loader.state_dict() | {"batches": 6}
    assert state["mixture"] == [["a", 0.5], ["b", 0.5]]
    loader.load_state_dict(state)
    resumed = _batches(loader, 6)
    for got, want in zip(resumed, whole[6:]):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the draws are not one fixed pattern: the two sources' shares differ between batches
    assert len({int(t.sum()) for _, t, _ in whole}) > 1


def test_changed_weights_on_resume_are_named(two_sources):
    saved = _module(two_sources, (1.0, 1.0), samples_per_epoch=64).train_dataloader().state_dict()
    loader = _module(two_sources, (3.0, 1.0), samples_per_epoch=64).train_dataloader()
    with pytest.warns(UserWarning, match=r"data.train_sources: checkpoint \[\['a', 0.5\], \['b', 0.5\]\], now"):
        loader.load_state_dict(saved | {"batches": 2})


def test_one_shard_set_keeps_its_data_order(tiny_shards):
    """train_shards is not a mixture: no source counts and the seeds of before (pinned by test_determinism)."""
    dm = WebDataModule(train_shards=tiny_shards, batch_size=8, num_workers=0, samples_per_epoch=64)
    dm.set_model_transforms(_preprocess, _preprocess, _tokenizer)
    loader = dm.train_dataloader()
    assert loader.dataset.mixture is None and loader.state_dict()["mixture"] is None
    assert not any(k.startswith("source/") for k in next(iter(loader))[2]["counts"])


@pytest.mark.parametrize("sources,match", [
    ([{"name": "a", "shards": "X", "weight": 0}], r"train_sources\[0\].weight must be a finite number > 0"),
    ([{"name": "a", "shards": "X"}, {"name": "a", "shards": "Y"}], "the name 'a' is used 2 times"),
    ([{"name": "a/b", "shards": "X"}], r"train_sources\[0\].name must be a plain name"),
    ([{"name": "a", "shards": "X", "wieght": 2}], r"train_sources\[0\]: unknown key\(s\) wieght"),
    ([], "must be a non-empty list"),
])
def test_bad_sources_are_refused_naming_the_entry(sources, match):
    with pytest.raises(ValueError, match=match):
        WebDataModule(train_sources=sources)


def test_sources_and_shards_together_are_refused(two_sources):
    with pytest.raises(ValueError, match="set exactly one of data.train_shards, data.train_sources and data.synthetic"):
        WebDataModule(train_shards=two_sources["a"], train_sources=[{"name": "b", "shards": two_sources["b"]}])


def test_missing_source_shards_are_named(two_sources, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.train_sources\[1\].shards: missing shards .*nowhere/00000.tar"):
        WebDataModule(train_sources=[{"name": "a", "shards": two_sources["a"]},
                                     {"name": "b", "shards": str(tmp_path / "nowhere/{00000..00001}.tar")}])


def test_fit_logs_each_sources_samples(tmp_path, two_sources):
    sources = (f'[{{name: a, shards: "{two_sources["a"]}", weight: 0.75}}, '
               f'{{name: b, shards: "{two_sources["b"]}", weight: 0.25}}]')
    main(fit_args([two_sources["a"] + "/00000.tar"], tmp_path, "mix", "--data.train_shards=null",
                  f"--data.train_sources={sources}", "--trainer.max_steps=4", "--trainer.callbacks=[]",
                  "--model.total_steps=4"))
    with open(tmp_path / "mix/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("data/source/a")]
    last = rows[-1]
    assert float(last["data/source/a"]) + float(last["data/source/b"]) == 16 * 4
    assert float(last["data/source/b"]) > 0
    config = (tmp_path / "mix/config.yaml").read_text()
    assert "train_sources" in config and "weight: 0.25" in config


def test_cli_refuses_bad_or_missing_sources_before_building_anything(tmp_path, two_sources):
    from train.cli import ConfigError

    base = ["fit", "--config", "quickstart.yaml", "--data.synthetic=null", "--run.wandb_mode=disabled",
            f"--run.root={tmp_path}/runs"]
    with pytest.raises(ConfigError, match=r"data.train_sources\[1\].weight must be a finite number > 0 .*, got -1"):
        main(base + [f'--data.train_sources=[{{name: a, shards: "{two_sources["a"]}"}}, '
                     f'{{name: b, shards: "{two_sources["b"]}", weight: -1}}]'])
    with pytest.raises(ConfigError, match=r"data.train_sources\[0\].shards: 2 of 2 shards are missing"):
        main(base + [f'--data.train_sources=[{{name: a, shards: "{tmp_path}/zz/{{00000..00001}}.tar"}}]'])
    assert not (tmp_path / "runs").exists()


def test_counterbalanced_overlay_merges_into_laion_small_and_names_its_missing_source(tmp_path, monkeypatch):
    """configs/laion/counterbalanced_mix.yaml on laion_small: laion_small's train_shards cleared (no
    'exactly one of' refusal), the first missing source shard named with the command that makes it —
    before anything is built."""
    from train.cli import CONFIG_DIR, ConfigError

    path = CONFIG_DIR / "laion" / "counterbalanced_mix.yaml"
    assert path.read_text().startswith(
        "# python -m train fit --config laion_small.yaml --config laion/counterbalanced_mix.yaml\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["python -m train"])
    with pytest.raises(ConfigError, match=r"(?s)data\.train_sources\[0\]\.shards: 100 of 100 shards are missing "
                                          r"\(data/laion_small/00000\.tar.*python -m data_prep laion"):
        main(["fit", "--config", "laion_small.yaml", "--config", "laion/counterbalanced_mix.yaml",
              f"--run.root={tmp_path}/runs", "--run.wandb_mode=disabled"])
    assert not (tmp_path / "runs").exists()
