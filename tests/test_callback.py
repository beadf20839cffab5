"""BiasEvalCallback on real 2-step Lightning runs: records, loggers (offline W&B), modes, plots."""
from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from _clip_fixtures import TinyCLIPModule, random_batches, register_tiny
from eval import probes
from eval.callback import BiasEvalCallback
from eval.records import read_records
from eval.suite import SuiteConfig


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    return register_tiny(tmp_path_factory.mktemp("model_configs"))


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    from data_prep.comco import write_eval_set

    out = tmp_path_factory.mktemp("evalset") / "comco"
    write_eval_set(out, image_size=32, n_objects=(2, 3), progress=False)
    return out


class RecordingModule(TinyCLIPModule):
    """Remembers the train/eval mode of its CLIP at every training step."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.modes: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.modes.append(self.model.training)
        return super().training_step(batch, batch_idx)


def read_eval_vocabulary(eval_dir) -> list[str]:
    from eval.manifest import load_eval_set

    return load_eval_set(eval_dir).vocabulary


class FakeSuiteCallback(BiasEvalCallback):
    """The callback with a small suite (a real TOR on 4 captions) and a log of what it saw."""

    seen: list[dict]

    def __init__(self, *args, zeroshot: bool = False, word_order: bool = False, **kw):
        super().__init__(*args, zeroshot=zeroshot, word_order=word_order, **kw)  # the suite alone unless asked

    def _suite(self):
        self.seen = getattr(self, "seen", [])
        names = ["dog", "cat", "pizza", "car"]
        captions = ["dog and cat", "cat and pizza", "pizza and car", "car and dog"]
        targets = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0]])

        def prepare(adapter, eval_set, **kw):
            self.seen.append({"prepare": kw, "n_items": len(eval_set.items)})
            return {"names": adapter.tokenizer(names), "captions": adapter.tokenizer(captions)}

        def run(adapter, prepared):
            self.seen.append({"training": adapter.model.training, "grad": torch.is_grad_enabled()})
            res = probes.tor(adapter.encode_text(prepared["captions"]), adapter.encode_text(prepared["names"]),
                             targets)
            return {"tor": {2: res}}

        return prepare, run


def _trainer(tmp_path, callbacks, loggers, max_steps=2) -> L.Trainer:
    return L.Trainer(max_steps=max_steps, accelerator="cpu", callbacks=callbacks, logger=loggers,
                     default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False)


def test_two_step_run_writes_records_logs_wandb_and_plots(tmp_path, tiny_name, eval_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))  # nothing W&B writes leaves tmp_path
    module = RecordingModule(tiny_name)
    cb = FakeSuiteCallback(probes=["tor"], n_objects=[2], items_per_probe=8, every_n_steps=2,
                           data_dir=str(eval_dir), zeroshot=True, word_order=True)
    wandb_logger = WandbLogger(project="evaltest", save_dir=str(tmp_path), offline=True)
    csv_logger = CSVLogger(tmp_path, name="csv")
    trainer = _trainer(tmp_path, [cb], [wandb_logger, csv_logger])
    trainer.fit(module, train_dataloaders=random_batches(module, 2))

    # prepared once, evaluated at step 0 and step 2 (the end-of-training eval is the same step)
    assert sum("prepare" in s for s in cb.seen) == 1
    assert cb.seen[0]["prepare"] == {"config": SuiteConfig(probes=("tor",), n_objects=(2,), items_per_probe=8),
                                     "progress": False}
    runs = [s for s in cb.seen if "training" in s]
    assert runs == [{"training": False, "grad": False}] * 2
    assert module.modes == [True, True]  # train mode restored after the step-0 evaluation

    every = read_records(tmp_path)
    # beside the paper's probes, zero-shot and the word-order probe (on by default), n_objects null
    assert [(r["step"], r["probe"], r["n_objects"]) for r in every] == [
        (s, p, n) for s in (0, 2) for p, n in (("tor", 2), ("word_order", None), ("zeroshot", None))]
    zs = [r for r in every if r["probe"] == "zeroshot"][-1]["result"]
    assert zs["n_classes"] == len(read_eval_vocabulary(eval_dir)) and zs["top1"]["total"] == zs["n_images"] > 0
    records = [r for r in every if r["probe"] == "tor"]
    assert [(r["step"], r["samples_seen"]) for r in records] == [(0, 0), (2, 8)]
    shares = records[0]["result"]["unconditional"]
    assert shares["pos1"]["total"] == 4 and set(shares) == {"pos1", "pos2", "none"}
    assert records[0]["result"]["summary"]["order_bias"]["value"] == pytest.approx(shares["pos1"]["share"] - shares["pos2"]["share"])

    # W&B: offline run with the bias scalars, samples_seen as their x-axis
    run = wandb_logger.experiment
    key = "bias/tor/n2/unconditional/pos1"
    run_dir = run.dir
    wandb_logger.experiment.finish()
    import wandb

    wandb.teardown()  # waits for the W&B service to flush and close the offline run file
    wandb_files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    blob = wandb_files[0].read_bytes()
    assert key.encode() in blob and b"samples_seen" in blob and b"bias/*" in blob
    # (values are read back from metrics.csv below: W&B's in-process summary object sometimes hands
    # back a nested view for a key while its service catches up, on any key)
    assert b"zeroshot/*" in blob and b"zeroshot/rendered/top1" in blob and b"word_order/rendered/precision_at_1" in blob
    assert run_dir.startswith(str(tmp_path))

    # CSV: the same numbers at both evaluation steps
    with open(csv_logger.log_dir + "/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get(key)]
    assert [float(r["samples_seen"]) for r in rows] == [0.0, 8.0]
    assert [float(r[key]) for r in rows] == pytest.approx(
        [r["result"]["unconditional"]["pos1"]["share"] for r in records])
    wo = [r["result"]["precision_at_1"] for r in every if r["probe"] == "word_order"]
    assert [float(r["word_order/rendered/precision_at_1"]) for r in rows] == pytest.approx(wo)
    top1 = [r["result"]["top1"]["share"] for r in every if r["probe"] == "zeroshot"]
    assert [float(r["zeroshot/rendered/top1"]) for r in rows] == pytest.approx(top1)

    assert (tmp_path / "plots" / "tor.png").stat().st_size > 1000


def test_steps_between_evaluations_and_end_eval(tmp_path, tiny_name, eval_dir):
    module = TinyCLIPModule(tiny_name)
    cb = FakeSuiteCallback(probes=["tor"], n_objects=[2], every_n_steps=2, data_dir=str(eval_dir),
                           run_dir=str(tmp_path / "elsewhere"), plots=False)
    _trainer(tmp_path, [cb], False, max_steps=3).fit(module, train_dataloaders=random_batches(module, 3))
    steps = [r["step"] for r in read_records(tmp_path / "elsewhere")]
    assert steps == [0, 2, 3]  # init, every 2 steps, and the final step at the end
    assert not (tmp_path / "bias.jsonl").exists()


def test_evaluation_error_stops_training_with_message(tmp_path, tiny_name, eval_dir):
    class Broken(FakeSuiteCallback):
        def _suite(self):
            def boom(*a, **k):
                raise KeyError("no such probe input")
            return boom, boom

    module = TinyCLIPModule(tiny_name)
    cb = Broken(probes=["tor"], n_objects=[2], data_dir=str(eval_dir))
    with pytest.raises(RuntimeError, match="BiasEvalCallback failed at step 0.*no such probe input"):
        _trainer(tmp_path, [cb], False).fit(module, train_dataloaders=random_batches(module, 2))
    assert module.model.training  # mode restored even when the evaluation fails


def test_bad_configuration_lists_every_problem(tmp_path):
    with pytest.raises(ValueError) as err:
        BiasEvalCallback(probes=["tor", "nope"], n_objects=[1, 3], items_per_probe=0, every_n_steps=0,
                         data_dir=str(tmp_path))
    msg = str(err.value)
    for part in ("'nope'", "n_objects must be a list of integers >= 2", "items_per_probe", "every_n_steps",
                 "no manifest.jsonl"):
        assert part in msg
    with pytest.raises(ValueError, match=r"text_encodings: unknown \['bpe'\]"):
        BiasEvalCallback(text_encodings=["bpe"])


def test_default_eval_set_rendered_once_into_cache(tmp_path, tiny_name):
    module = TinyCLIPModule(tiny_name)
    cb = BiasEvalCallback(probes=["tor"], n_objects=[2], cache_dir=str(tmp_path))
    first = cb._default_set(module)
    manifest = first / "manifest.jsonl"
    stamp = manifest.stat().st_mtime_ns
    assert first.parent == tmp_path / "eval_sets" and "px32" in first.name  # the model's input size
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert {x["n_objects"] for x in lines if x["kind"] == "multi"} == {2, 3, 4, 5}
    assert cb._default_set(module) == first and manifest.stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "eval_sets").iterdir()] == [first.name]


def _approx_equal(a, b, path=""):
    """Nested equality with float tolerance (JSON turns int keys and tuples into str keys / lists)."""
    if isinstance(a, dict):
        assert set(map(str, a)) == set(map(str, b)), path
        bb = {str(k): v for k, v in b.items()}
        for k, v in a.items():
            _approx_equal(v, bb[str(k)], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _approx_equal(x, y, f"{path}/{i}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-6), path
    else:
        assert a == b, path


def test_real_suite_callback_matches_cli_on_checkpoint(tmp_path, tiny_name, eval_dir):
    """The issue's acceptance check: callback numbers == ``python -m eval comco --checkpoint``."""
    from eval.cli import main

    module = TinyCLIPModule(tiny_name)
    probes_ = ["tor", "ior", "i2tor", "itm"]
    cb = BiasEvalCallback(probes=probes_, n_objects=[2, 3], items_per_probe=24, itm_distractors=8,
                          templates=["and_chain", "photo"], every_n_steps=100, data_dir=str(eval_dir), plots=False)
    trainer = _trainer(tmp_path, [cb], False)
    trainer.fit(module, train_dataloaders=random_batches(module, 2))
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    records = read_records(tmp_path)
    assert sorted({r["step"] for r in records}) == [0, 2]  # init + end of training
    final = {(r["probe"], r["n_objects"]): r["result"] for r in records if r["step"] == 2}
    assert set(final) == {(p, n) for p in probes_ for n in (2, 3)} | {("zeroshot", None), ("word_order", None)}
    initial = {(r["probe"], r["n_objects"]): r["result"] for r in records if r["step"] == 0}
    assert initial[("tor", 2)] != final[("tor", 2)]  # two SGD steps at lr 0.1 move the embeddings

    out = tmp_path / "cli.json"
    assert main(["comco", "--checkpoint", str(ckpt), "--data", str(eval_dir), "--probes", ",".join(probes_),
                 "--n-objects", "2", "3", "--items", "24", "--itm-distractors", "8", "--templates",
                 "and_chain,photo", "--out", str(out), "--no-progress"]) == 0
    cli = json.loads(out.read_text())["results"]
    for (probe, n), result in final.items():
        if n is not None:
            _approx_equal(result, cli[probe][str(n)], f"{probe}/n{n}")
    # the probes beyond the paper's: the callback's numbers == `python -m eval zeroshot / word-order`
    for command, probe, extra in (("zeroshot", "zeroshot", []), ("word-order", "word_order", ["--items", "128"])):
        out = tmp_path / f"{command}.json"
        assert main([command, "--checkpoint", str(ckpt), "--data", str(eval_dir), "--out", str(out),
                     "--no-progress", *extra]) == 0
        _approx_equal(final[(probe, None)], json.loads(out.read_text())["results"][probe], probe)


def test_with_the_real_clip_module(tmp_path, eval_dir):
    """train.module.CLIPModule (clip-tiny) + the real suite: samples_seen from the module's property."""
    module_mod = pytest.importorskip("train.module")
    from torch.utils.data import DataLoader, TensorDataset

    module = module_mod.CLIPModule("clip-tiny", warmup_steps=1, total_steps=2)
    size = module.model.visual.image_size[0]
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    tokens = module.tokenizer([f"a photo of thing {i}" for i in range(8)])
    loader = DataLoader(TensorDataset(images, tokens), batch_size=4)
    cb = BiasEvalCallback(probes=["tor", "ior"], n_objects=[2], items_per_probe=8, every_n_steps=1,
                          data_dir=str(eval_dir), plots=False)
    _trainer(tmp_path, [cb], False).fit(module, train_dataloaders=loader)
    records = read_records(tmp_path)
    assert [(r["step"], r["samples_seen"]) for r in records if r["probe"] == "tor"] == [(0, 0), (1, 4), (2, 8)]
    assert {r["probe"] for r in records} == {"tor", "ior", "zeroshot", "word_order"}
    assert cb.n_evaluations == 3 and cb.total_seconds > 0


_DDP_SCRIPT = r'''
import sys, torch, lightning as L
sys.path[:0] = [{repo!r}, {tests!r}]
torch.set_num_threads(1)
from _clip_fixtures import TinyCLIPModule, random_batches, register_tiny
from pathlib import Path
from test_callback import FakeSuiteCallback

class Broken(FakeSuiteCallback):
    def _suite(self):
        def boom(*a, **k):
            raise KeyError("rank-0 failure")
        return boom, boom

out = Path({out!r}); fail = sys.argv[1] == "fail"
name = register_tiny(out / "cfg")
module = TinyCLIPModule(name)
cls = Broken if fail else FakeSuiteCallback
cb = cls(probes=["tor"], n_objects=[2], every_n_steps=1, data_dir={data!r}, plots=False)
trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp", callbacks=[cb], logger=False,
                    default_root_dir=out, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False)
try:
    trainer.fit(module, train_dataloaders=random_batches(module, 4))
except RuntimeError as e:
    (out / f"error_rank{{trainer.global_rank}}.txt").write_text(str(e))
    raise
(out / f"done_rank{{trainer.global_rank}}.txt").write_text(str(len(getattr(cb, "seen", []))))
'''


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_ddp_two_cpu_ranks_rank0_only_and_no_deadlock(tmp_path, eval_dir, mode):
    """2 gloo ranks: only rank 0 evaluates and writes; a rank-0 failure stops both ranks (no hang)."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT.format(repo=str(tests.parent), tests=str(tests), out=str(tmp_path),
                                         data=str(eval_dir)))
    env = {**__import__("os").environ, "WANDB_MODE": "disabled", "PYTHONPATH": f"{tests.parent}:{tests}"}
    proc = subprocess.run([sys.executable, str(script), mode], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=240)
    if mode == "ok":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "done_rank0.txt").read_text() == "4"  # prepare + evaluations at steps 0, 1, 2
        assert (tmp_path / "done_rank1.txt").read_text() == "0"  # rank 1 never touched the suite
        recs = read_records(tmp_path)
        assert [(r["step"], r["samples_seen"]) for r in recs] == [(0, 0), (1, 8), (2, 16)]  # 2 ranks x 4
    else:
        assert proc.returncode != 0
        for rank in (0, 1):
            assert "rank-0 failure" in (tmp_path / f"error_rank{rank}.txt").read_text()


def test_itm_with_every_absent_object_as_distractor(tmp_path, tiny_name, eval_dir):
    """``itm_distractors: null`` (the paper's ITM) reaches the suite: one pair per image and absent object."""
    module = TinyCLIPModule(tiny_name)
    cb = BiasEvalCallback(probes=["itm"], n_objects=[2], items_per_probe=8, itm_distractors=None,
                          every_n_steps=100, data_dir=str(eval_dir), plots=False, zeroshot=False, word_order=False)
    assert cb.suite.itm_distractors is None
    _trainer(tmp_path, [cb], False, max_steps=1).fit(module, train_dataloaders=random_batches(module, 1))
    records = read_records(tmp_path)
    assert [r["step"] for r in records] == [0, 1]
    vocab, images = len(cb._prepared.vocabulary), len(cb._prepared.tasks["itm"][2]["s1"]["image"].unique())
    for rec in records:
        res = rec["result"]
        assert res["s1"]["total"] == res["s2"]["total"] == images * (vocab - 2)
        gap = res["summary"]["gap"]
        assert gap["ci"][0] <= gap["value"] <= gap["ci"][1]


def test_training_help_shows_suite_config_s_help_for_the_probe_options(capsys):
    """``python -m train fit --trainer.callbacks.help BiasEvalCallback``: jsonargparse reads the
    callback's docstring, whose probe-option entries are SuiteConfig's declaration (eval.suite)."""
    import re

    from eval.suite import suite_options
    from train.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "quickstart.yaml", "--trainer.callbacks.help", "eval.callback.BiasEvalCallback"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    flat = re.sub(r"\s+", "", out)
    for opt in suite_options():
        assert f"--trainer.callbacks.{opt.name}" in out, opt.name
        assert re.sub(r"\s+", "", opt.describe("null")) in flat, opt.name
    assert "null=allofthem(thepaper'sITM)" in flat  # how a config says None
    assert re.sub(r"\s+", "", "evaluate after every N optimizer steps") in flat  # the callback's own help stays
