"""A researcher's first hour (issue 13): what a run prints, what W&B receives, and errors as next steps.

One tiny fit runs through the real ``python -m train fit`` in a subprocess (as a user runs it); its
output, run directory and offline W&B run are read back. Error paths run in subprocesses too, since
"no traceback" is what the shell shows.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from train.cli import CONFIG_DIR, ConfigError, main
from train.run_dir import RunConfig, column_order
from eval.records import read_records
from train.summary import bias_table, eval_line, flatten_config, probe_cost_line

REPO = CONFIG_DIR.parent

# the happy path must print none of these (issue 13, "quiet happy path")
NOISE = (
    "Experiment logs directory", "No pretrained weights loaded", "anonymous setting has no effect", "litlogger",
    "Total FLOPs", "Total Flops", "is deprecated", "Epoch 0/-2", "Trainer already configured", "Traceback",
    "Images sizes do not match",
)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.pop("CLIP_BIAS_LAB_TRACEBACK", None)
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), WANDB_MODE="offline",
               NETRC=str(tmp / "no-netrc"), WANDB_CONFIG_DIR=str(tmp / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp / "wandb-cache"), WANDB_DATA_DIR=str(tmp / "wandb-data"),
               OMP_NUM_THREADS="1", **extra)
    return env


def _train(args: list[str], cwd: Path, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", *args], cwd=cwd, env=_env(cwd, **env),
                          capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- one tiny fit, read back


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """6 steps of clip-micro on 96 rendered scenes with caption shuffling, bias at steps 0, 3, 6."""
    from data_prep.comco import write_eval_set

    cwd = tmp_path_factory.mktemp("first_hour")
    write_eval_set(cwd / "evalset", image_size=32, n_objects=(3,), progress=False)
    callbacks = [{"class_path": "eval.callback.BiasEvalCallback", "init_args": {
        "probes": ["tor", "ior", "itm"], "n_objects": [3], "data_dir": str(cwd / "evalset"),
        "evaluations_per_run": 2, "itm_distractors": 1}}]
    proc = _train([
        "fit", "--config", "quickstart.yaml", "--config", "mitigation/caption_shuffle.yaml",
        "--model.model_name=clip-micro", "--model.warmup_steps=2", "--data.synthetic.num_samples=96",
        "--data.synthetic.val_num_samples=16", "--data.synthetic.image_size=32", "--data.cache_dir=cache",
        "--data.batch_size=16", "--data.num_workers=0", "--data.shuffle_buffer=16", "--trainer.max_steps=6",
        "--trainer.accelerator=cpu", "--trainer.log_every_n_steps=1", "--run.root=runs", "--run.name=first",
        "--run.wandb_group=sweep1", "--run.wandb_tags=[caption_shuffle]",
        "--trainer.callbacks=" + json.dumps(callbacks),
    ], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return cwd, proc.stdout + proc.stderr


def test_happy_path_prints_no_noise(tiny_run):
    _, out = tiny_run
    for noise in NOISE:
        assert noise not in out, f"{noise!r} printed:\n{out[-4000:]}"


def test_one_line_per_evaluation_and_an_end_of_run_summary(tiny_run):
    _, out = tiny_run
    lines = out.splitlines()
    for step, samples in ((0, 0), (3, 48), (6, 96)):
        head = f"bias @ step {step} ({samples} samples): "
        found = [ln for ln in lines if head in ln]
        assert len(found) == 1, (head, out[-3000:])
        assert "TOR order " in found[0] and "IOR size " in found[0] and "ITM gap " in found[0]
    summary = out[out.index("Run finished: runs/first/"):]
    assert "(6 steps, 96 samples" in summary
    assert "train loss " in summary and "val i2t R@1 " in summary and "val t2i R@1 " in summary
    assert "step 0" in summary and "step 6" in summary
    table = [ln for ln in summary.splitlines() if ln.strip().startswith(("TOR", "IOR", "ITM"))]
    assert any("order_bias " in ln and "N=" in ln and "[" in ln for ln in table), table  # value [95 % CI] N=
    assert "python -m eval report runs/first" in summary
    assert "wandb sync runs/first/wandb/offline-run-" in summary
    # every suggested eval command parses as written (eval comco requires --out)
    from eval.cli import build_parser
    for line in summary.splitlines():
        if line.strip().startswith("python -m eval "):
            build_parser().parse_args(shlex.split(line.split("#")[0])[3:])
    # the probes' cost: the evaluations' own seconds (bias.jsonl) as a share of the run, preparation apart
    cost = re.search(r"bias probes: (\d+) evaluations, ([\d.]+) s = ([\d.]+) % of the run "
                     r"\(\+ ([\d.]+) s preparing the inputs once\)", summary)
    assert cost, summary
    per_eval = {r["step"]: r["eval_seconds"] for r in read_records(tiny_run[0] / "runs" / "first" / "bias.jsonl")}
    assert int(cost[1]) == len(per_eval) == 3
    assert float(cost[2]) == pytest.approx(sum(per_eval.values()), abs=0.051)
    assert 0 < float(cost[3]) < 100


def test_probe_cost_line_names_the_one_off_render_only_when_it_happened():
    line = probe_cost_line(7, 6.3, 1.04, 0.01, 210.0)
    assert line == "  bias probes: 7 evaluations, 6.3 s = 3.0 % of the run (+ 1.0 s preparing the inputs once)"
    line = probe_cost_line(7, 6.3, 1.04, 3.2, None)
    assert line == ("  bias probes: 7 evaluations, 6.3 s (+ 1.0 s preparing the inputs once, "
                    "3.2 s rendering the eval set (cached for later runs))")


def test_progress_bar_counts_steps_to_max_steps(tiny_run):
    _, out = tiny_run
    assert "train: 100%" in out and "6/6" in out and "samples/s=" in out


def test_metrics_csv_puts_training_columns_first(tiny_run):
    cwd, _ = tiny_run
    with open(cwd / "runs" / "first" / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[0] == "step"
    first_bias = min(i for i, k in enumerate(header) if k.startswith("bias/"))
    for key in ("train/loss", "train/lr", "samples_seen", "val/i2t_R@1"):
        assert header.index(key) < first_bias, (key, header[:10])


def wandb_records(path: Path) -> list:
    """Every record of a ``run-<id>.wandb`` transaction log (LevelDB log format, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record, MIDDLE/LAST continue it
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


@pytest.fixture(scope="module")
def offline_run(tiny_run) -> tuple[Path, list]:
    cwd, _ = tiny_run
    run_dir = sorted((cwd / "runs" / "first" / "wandb").glob("offline-run-*"))[0]  # the fit's, not a resume's
    (log,) = run_dir.glob("run-*.wandb")
    return run_dir, wandb_records(log)


def test_wandb_run_holds_the_whole_config_group_and_tags(offline_run):
    _, records = offline_run
    config = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "config":
            config.update({u.key: json.loads(u.value_json) for u in rec.config.update})
    assert config["model/model_name"] == "clip-micro" and config["data/batch_size"] == 16
    assert config["trainer/max_steps"] == 6 and config["run/name"] == "first" and config["seed_everything"] == 0
    assert config["data/sample_transforms"] == "CaptionShuffle"  # one key to group runs by mitigation
    assert config["data/sample_transforms/0/init_args/p"] == 1.0
    assert config["data/synthetic/p_large_first"] == 0.9
    assert config["trainer/callbacks/0/class_path"] == "eval.callback.BiasEvalCallback"
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "sweep1" and list(run.tags) == ["caption_shuffle"]
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "bias/*" and m.summary.last and m.step_metric == "samples_seen" for m in metrics)


def test_wandb_run_holds_the_plots_and_the_init_final_table(offline_run):
    run_dir, _ = offline_run
    images = sorted(p.name for p in (run_dir / "files" / "media" / "images").rglob("*.png"))
    assert [i.rsplit("_", 2)[0] for i in images] == ["ior", "itm", "tor", "word_order", "zeroshot"], images
    (table,) = (run_dir / "files" / "media" / "table").rglob("bias_init_final*.table.json")
    content = json.loads(table.read_text())
    assert "init_ci_lo" in content["columns"] and "final_denominator" in content["columns"]
    indices = {row[content["columns"].index("index")] for row in content["data"]}
    assert {"order_bias", "size_bias", "gap", "top1", "precision_at_1"} <= indices


def test_loading_a_trained_checkpoint_says_nothing_about_random_init(tiny_run, caplog):
    from eval.models import load_checkpoint, model_from_checkpoint

    cwd, _ = tiny_run
    path = cwd / "runs" / "first" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.WARNING):
        model_from_checkpoint(load_checkpoint(path), path)
    assert "No pretrained weights" not in caplog.text


def test_resume_is_quiet_too(tiny_run):
    cwd, _ = tiny_run
    proc = _train(["fit", "--config", "runs/first/config.yaml", "--ckpt_path", "last", "--trainer.max_steps=7"], cwd)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for noise in NOISE + ("exists and is not empty",):
        assert noise not in out, f"{noise!r} printed:\n{out[-4000:]}"
    assert "bias @ step 7 (112 samples)" in out and "bias @ step 0 " not in out  # only the new evaluation
    assert "Run finished: runs/first/ (7 steps" in out


# ----------------------------------------------------------------------------- errors as next steps


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), proc.stderr
    return proc.stderr


def test_laion_config_without_data_names_the_download_command(tmp_path):
    err = _one_line_error(_train(["fit", "--config", "laion_small.yaml"], tmp_path, timeout=300))
    assert "data/laion_small/00000.tar" in err
    assert "python -m data_prep laion --parquet PARQUET --out data/laion_small --image-size 224" in err
    assert not (tmp_path / "runs").exists()


def test_laion_config_without_data_fails_before_the_model_is_built(tmp_path, monkeypatch):
    import train.module

    def boom(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(train.module, "build_model_and_transforms", boom)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)00000\.tar.*python -m data_prep laion --parquet"):
        main(["fit", "--config", "laion_small.yaml", "--run.wandb_mode=disabled"])


def test_missing_ckpt_path_is_one_line(tmp_path):
    err = _one_line_error(_train(["fit", "--ckpt_path", "nope.ckpt", "--run.root=runs"], tmp_path, timeout=300))
    assert "--ckpt_path nope.ckpt: no such file" in err and "'last'" in err


def test_traceback_on_request(tmp_path):
    proc = _train(["fit", "--ckpt_path", "nope.ckpt", "--run.root=runs"], tmp_path, timeout=300,
                  CLIP_BIAS_LAB_TRACEBACK="1")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["fit", "--config", "mitigation/caption_shuffle.yaml"], "add one first, e.g. --config quickstart.yaml"),
    (["fit", "--config", "quickstar"], "mitigation/caption_shuffle.yaml"),
])
def test_config_mistakes_are_one_line(tmp_path, args, expected):
    assert expected in _one_line_error(_train(args, tmp_path, timeout=300))


# ----------------------------------------------------------------------------- help


def test_fit_help_is_headed_by_its_command_and_shows_the_configs_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", "laion_small.yaml", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m train fit ")
    text = " ".join(out.split())  # help wraps to the terminal's width
    assert "or a config in ``configs/models/``. (type: str, default: ViT-B-32)" in text  # laion_small's
    assert "Per-device training batch size. (type: int, default: 256)" in text


def test_fit_help_without_config_shows_the_quickstart_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model.lr LR Peak learning rate. (type: float, default: 0.001)" in text  # the class default is 5e-4


# ----------------------------------------------------------------------------- units


def test_flatten_config_keeps_every_value_and_names_transforms():
    flat = flatten_config({"model": {"lr": 1e-3, "betas": [0.9, 0.98], "aux_losses": None}, "config": ["a.yaml"],
                           "data": {"sample_transforms": [], "synthetic": None},
                           "trainer": {"callbacks": [{"class_path": "a.B", "init_args": {"x": 1, "config": "c"}}]}})
    assert flat == {"model/lr": 1e-3, "model/betas": [0.9, 0.98], "model/aux_losses": "none",
                    "data/sample_transforms": "none", "data/synthetic": None, "trainer/callbacks": "B",
                    "trainer/callbacks/0/class_path": "a.B", "trainer/callbacks/0/init_args/x": 1,
                    "trainer/callbacks/0/init_args/config": "c"}  # only the top-level `config` (files given) goes


def test_metrics_columns_order():
    keys = ["bias/tor/n3/order_bias", "val/i2t_R@1", "train/loss", "samples_seen", "step", "data/bad", "epoch"]
    assert sorted(keys, key=column_order) == ["step", "epoch", "train/loss", "samples_seen", "val/i2t_R@1",
                                              "data/bad", "bias/tor/n3/order_bias"]


def _record(step: int, probe: str, summary: dict) -> dict:
    return {"step": step, "samples_seen": step * 128, "probe": probe, "n_objects": 3, "result": {"summary": summary}}


def test_eval_line_and_table_with_and_without_intervals():
    recs = [_record(0, "tor", {"order_bias": {"value": 0.31, "denominator": "N=62", "ci": [0.2, 0.4]},
                               "order_bias_conditional": {"value": None, "denominator": "N_cond=3/62"}}),
            _record(52, "tor", {"order_bias": {"value": 0.1, "denominator": "N=62"},
                                "order_bias_conditional": {"value": 0.05, "denominator": "N_cond=40/62"}})]
    assert eval_line(recs[:1]) == "bias @ step 0 (0 samples): TOR order +0.31 (N=62)"
    comp = {p: {"value": v, "denominator": "N=256"} for p, v in (("swap_att", 0.5), ("swap_obj", 0.61),
                                                                 ("replace_axis", 1.0))}
    assert eval_line([_record(9, "compositional", comp)]).endswith("COMPOSITIONAL swap_obj 0.61 (N=256)")
    del comp["swap_obj"]  # a set with no relation pairs: the shortest name again
    assert eval_line([_record(9, "compositional", comp)]).endswith("COMPOSITIONAL swap_att 0.50 (N=256)")
    table = bias_table(recs)
    assert table[0].split() == ["probe", "index", "step", "0", "step", "52", "denominator"]
    assert table[1].split() == ["TOR", "order_bias", "+0.31", "[+0.20,", "+0.40]", "+0.10", "N=62"]
    assert table[2].split() == ["TOR", "order_bias_conditional", "n/a", "+0.05", "N_cond=3/62", "->",
                                "N_cond=40/62"]


def test_table_names_each_rows_steps_when_probes_were_evaluated_at_different_steps():
    recs = [_record(0, "tor", {"order_bias": {"value": 0.3, "denominator": "N=62"}}),
            _record(52, "tor", {"order_bias": {"value": 0.1, "denominator": "N=62"}}),
            _record(10, "ior", {"size_bias": {"value": 0.2, "denominator": "N=186"}}),
            _record(52, "ior", {"size_bias": {"value": 0.4, "denominator": "N=186"}})]
    table = bias_table(recs)
    assert table[0].split()[2:6] == ["step", "first", "step", "last"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert "(steps 10->52)" in rows["IOR"] and "(steps 0->52)" in rows["TOR"]


def test_resumed_progress_bar_counts_rate_from_the_resume_step():
    from types import SimpleNamespace

    from train.progress import StepProgressBar

    bar = StepProgressBar()
    trainer = SimpleNamespace(global_step=5000, max_steps=6000, estimated_stepping_batches=6000,
                              is_global_zero=True, num_training_batches=float("inf"))
    try:
        bar.on_train_start(trainer, None)
    except AttributeError as e:  # a trainer attribute the bar needs that this stand-in lacks
        pytest.skip(f"stand-in trainer incomplete: {e}")
    assert bar.train_progress_bar.n == bar.train_progress_bar.initial == 5000
    bar.train_progress_bar.close()


def test_wandb_tags_are_checked():
    assert RunConfig(wandb_tags=["shuffle"]).wandb_tags == ["shuffle"]
    with pytest.raises(ValueError, match="wandb_tags"):
        RunConfig(wandb_tags=["x" * 65])
