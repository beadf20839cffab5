"""Cadences expressed once: the quickstart's run length, validation and bias-evaluation points follow
from its corpus size and batch (``val_check_interval`` a fraction of the epoch, the callback's
``evaluations_per_run``), and ``items_per_probe: null`` is one item per vocabulary object."""
from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
import yaml

from _clip_fixtures import TinyCLIPModule, random_batches, register_tiny
from data_prep.captions import HELD_OUT_TEMPLATES
from data_prep.comco import vocabulary
from eval.callback import BiasEvalCallback
from eval.manifest import load_eval_set
from eval.records import read_records
from eval.suite import SuiteConfig, prepare_suite
from train.cli import CONFIG_DIR, ConfigError, main

QUICKSTART = CONFIG_DIR / "quickstart.yaml"


def bias_args(cfg: dict) -> dict:
    return next(c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("BiasEvalCallback"))


def bias_points(run_steps: int, every: int) -> list[int]:
    """Steps the callback evaluates at: 0, every multiple of ``every``, and the end."""
    return sorted({0, *range(every, run_steps + 1, every), run_steps})


# ----------------------------------------------------------------------------- the quickstart's numbers


def test_quickstart_cadence_is_derived_from_corpus_and_batch():
    text = QUICKSTART.read_text()
    cfg = yaml.safe_load(text)
    samples, batch = cfg["data"]["synthetic"]["num_samples"], cfg["data"]["batch_size"]
    steps = samples // batch
    # one pass over the corpus; max_steps is the one number kept by hand, checked here
    assert cfg["trainer"]["max_steps"] == steps == 312
    assert cfg["trainer"]["val_check_interval"] == 0.5 and int(steps * 0.5) == 156
    cb = bias_args(cfg)
    assert "every_n_steps" not in cb and cb["evaluations_per_run"] == 6
    every = BiasEvalCallback.spacing(steps, cb["evaluations_per_run"])
    assert every == 52 and bias_points(steps, every) == [0, 52, 104, 156, 208, 260, 312]  # 7 points
    # probe sizes: whole Latin squares of the 62 objects, half-width of an index about +-0.05 or less
    vocab = len(vocabulary("objects"))
    assert vocab == 62 and cb["items_per_probe"] == 13 * vocab == 806
    assert cb["eval_set_blocks"] == 4 and cb["itm_distractors"] == 1  # 4 x 62 x 3 settings = 744 images, n = 3
    assert cb["templates"] == ["and_chain", "photo", "there_is"]
    assert set(cb["templates"]) - set(HELD_OUT_TEMPLATES) == {"photo"}  # one in-distribution, two held out
    for n_items in (806, 744):  # TOR captions; IOR/I2TOR images. Shares 0.5 / 0.2 / 0.2 (+ none 0.1):
        x_var = (0.5 + 0.25 * 0.4) - (0.5 - 0.2) ** 2  # per-item score 1{pos1} - mean 1{pos k}
        assert 1.96 * (x_var / n_items) ** 0.5 <= 0.052
    # the header states the derived values
    for claim in ("40000 // 128 = 312 steps", "steps 156 and 312", "ceil(312 / 6) = 52", "7 points", "13 x 62",
                  "744 images"):
        assert claim in text, claim


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    from data_prep.comco import write_eval_set

    out = tmp_path_factory.mktemp("evalset") / "comco"
    write_eval_set(out, image_size=32, n_objects=(3,), progress=False)
    return out


def test_quickstart_cadence_in_a_real_run_of_a_small_corpus(tmp_path, eval_dir):
    """The quickstart through the real CLI on 96 rendered scenes at batch 8: the epoch is 96 // 8 = 12
    batches (= max_steps, one pass), validation at batch 6 and 12, bias at 0, 2, ..., 12."""
    cfg = yaml.safe_load(QUICKSTART.read_text())
    samples, batch = 96, 8
    steps = samples // batch
    cb = {**bias_args(cfg), "probes": ["tor"], "data_dir": str(eval_dir), "plots": False}
    cli = main([
        "fit", "--config", "quickstart.yaml", "--model.model_name=clip-micro", "--model.warmup_steps=2",
        f"--data.synthetic.num_samples={samples}", "--data.synthetic.val_num_samples=16",
        "--data.synthetic.image_size=32", f"--data.cache_dir={tmp_path / 'cache'}", f"--data.batch_size={batch}",
        "--data.num_workers=0", "--data.shuffle_buffer=16", f"--trainer.max_steps={steps}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1", f"--run.root={tmp_path}", "--run.name=small", "--run.wandb_mode=disabled",
        "--trainer.callbacks=" + json.dumps([{"class_path": "eval.callback.BiasEvalCallback", "init_args": cb}]),
    ])
    trainer = cli.trainer
    assert trainer.num_training_batches == steps == trainer.max_steps == trainer.global_step
    assert cli.model._total_steps == steps  # the cosine schedule's length
    assert trainer.val_check_batch == steps // 2 == 6
    callback = next(c for c in trainer.callbacks if isinstance(c, BiasEvalCallback))
    assert callback.every_n_steps == 2
    assert sorted({r["step"] for r in read_records(tmp_path / "small")}) == [0, 2, 4, 6, 8, 10, 12]
    with open(tmp_path / "small" / "metrics.csv") as f:
        val_steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("val/i2t_R@1")})
    assert len(val_steps) == 2, val_steps  # after batch 6 and batch 12


# ----------------------------------------------------------------------------- the callback option


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return register_tiny(tmp_path_factory.mktemp("model_configs"))


class StepRecorder(BiasEvalCallback):
    """Records the steps it would evaluate at (no probes run)."""

    def __init__(self, **kw):
        super().__init__(probes=["tor"], n_objects=[2], **kw)
        self.steps: list[int] = []

    def _evaluate_rank0(self, trainer, pl_module) -> None:
        self.steps.append(trainer.global_step)


@pytest.mark.parametrize("max_epochs, max_steps, run, every", [
    (1, -1, 12, 2),   # one pass over a 12-batch epoch
    (1, 5, 5, 1),     # max_steps stops earlier: the run is min(max_steps, epoch) = 5
    (-1, 7, 7, 2),    # steps only: ceil(7 / 6) = 2, the end (7) is the last point
    (2, -1, 24, 4),   # two passes
])
def test_evaluations_per_run_spaces_evaluations_over_the_run(tmp_path, tiny_name, max_epochs, max_steps, run, every):
    module = TinyCLIPModule(tiny_name)
    cb = StepRecorder(evaluations_per_run=6)
    assert cb.every_n_steps is None  # known once training starts
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator="cpu", callbacks=[cb], logger=False,
                        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, train_dataloaders=random_batches(module, 12))
    assert trainer.global_step == run and cb.every_n_steps == every
    assert cb.steps == bias_points(run, every)
    assert len(cb.steps) <= 1 + 6


def test_every_n_steps_still_works_and_defaults_to_500():
    assert StepRecorder(every_n_steps=52).every_n_steps == 52
    cb = StepRecorder()
    assert (cb.every_n_steps, cb.evaluations_per_run) == (BiasEvalCallback.DEFAULT_EVERY_N_STEPS, None) == (500, None)


def test_cadence_options_are_checked_in_one_line():
    with pytest.raises(ValueError) as err:
        BiasEvalCallback(every_n_steps=52, evaluations_per_run=6)
    msg = str(err.value)
    assert msg.startswith(f"BiasEvalCallback ({BiasEvalCallback.CONFIG_PATH}): ") and "\n" not in msg
    assert "give every_n_steps (52) or evaluations_per_run (6), not both" in msg
    with pytest.raises(ValueError) as err:
        BiasEvalCallback(evaluations_per_run=0, every_n_steps="x")
    msg = str(err.value)
    assert "evaluations_per_run must be an integer >= 1, got 0" in msg
    assert "every_n_steps must be an integer >= 1, got 'x'" in msg and "\n" not in msg
    assert BiasEvalCallback(evaluations_per_run="6").evaluations_per_run == 6


def test_evaluations_per_run_needs_a_known_run_length():
    class Endless:
        estimated_stepping_batches = float("inf")

    with pytest.raises(ValueError, match=r"BiasEvalCallback \(trainer.callbacks.*evaluations_per_run needs a known "
                                         r"run length.*got inf steps"):
        BiasEvalCallback(evaluations_per_run=6).resolve_every_n_steps(Endless())


def test_spacing():
    assert BiasEvalCallback.spacing(312, 6) == 52
    assert BiasEvalCallback.spacing(313, 6) == 53  # at most 6 evaluations after step 0, the end included
    assert BiasEvalCallback.spacing(3, 6) == 1


# ----------------------------------------------------------------------------- items_per_probe: null


def test_items_per_probe_null_is_one_per_vocabulary_object(tmp_path):
    from test_probes_suite import SIZES, FakeAdapter, write_fake_eval_set

    eval_set = load_eval_set(write_fake_eval_set(tmp_path / "es"))
    m = len(eval_set.vocabulary)
    assert SuiteConfig(items_per_probe=None).items_per_probe is None
    assert BiasEvalCallback(items_per_probe=None).suite.items_per_probe is None

    def prepared(items):
        return prepare_suite(FakeAdapter(), eval_set, probes=("tor", "ior", "claim1"), n_objects=(2,),
                             items_per_probe=items, size_classes=SIZES, progress=False).tasks

    every, explicit = prepared(None), prepared(m)
    assert len(every["tor"][2]["lists"]) == m
    assert every["tor"][2]["lists"] == explicit["tor"][2]["lists"]
    assert torch.equal(every["ior"][2]["image"], explicit["ior"][2]["image"])
    assert every["claim1"][2].keys() == explicit["claim1"][2].keys()


def test_paper_scale_overlay_derives_its_numbers_and_loads(capsys):
    """configs/scale/paper_scale.yaml, an overlay on the quickstart: three passes over its corpus,
    evaluations every 500 steps, the quickstart's probe sizes; the CLI reads the pair (its --help
    shows the merged values) and refuses the overlay alone with the command that works."""
    path = CONFIG_DIR / "scale" / "paper_scale.yaml"
    text, overlay = path.read_text(), yaml.safe_load(path.read_text())
    base = yaml.safe_load(QUICKSTART.read_text())
    assert overlay["trainer"]["max_steps"] == 3 * overlay["data"]["synthetic"]["num_samples"] // base["data"]["batch_size"] == 6000
    assert "batch_size" not in overlay["data"] and "probes" not in bias_args(overlay)  # the quickstart's, not a copy
    assert BiasEvalCallback.spacing(6000, bias_args(overlay)["evaluations_per_run"]) == 500
    for claim in ("3 x 256000 // 128 = 6000 steps", "ceil(6000 / 12) = 500"):
        assert claim in text, claim
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "quickstart.yaml", "--config", "scale/paper_scale.yaml", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Linear warmup length in optimizer steps. (type: int, default: 200)" in out and "'num_samples': 256000" in out
    with pytest.raises(SystemExit):
        main(["fit", "--config", "quickstart.yaml", "--config", "scale/paper_scale.yaml", "--print_config"])
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert len(callbacks) == 1  # merged into the quickstart's one callback, not a second one
    assert callbacks[0]["init_args"] == {**bias_args(base), "evaluations_per_run": 12} | {
        k: v for k, v in callbacks[0]["init_args"].items() if k not in bias_args(base)}
    with pytest.raises(ConfigError, match="--config quickstart.yaml --config scale/paper_scale.yaml"):
        main(["fit", "--config", "scale/paper_scale.yaml"])
