"""The real CLI: every config loads, overlays and overrides work, bad input fails early and clearly."""
from __future__ import annotations


import pytest
import yaml

from train.cli import CONFIG_DIR, ConfigError, main

CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
# configs in sub-folders (e.g. mitigation/) are overlays on a base config, as their headers say
OVERLAYS = sorted(str(p.relative_to(CONFIG_DIR)) for p in CONFIG_DIR.glob("*/**/*.yaml"))


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_through_the_cli(name, capsys):
    cfg = print_config(capsys, "--config", name)
    assert cfg["model"]["model_name"] and cfg["data"]["batch_size"] > 0
    assert isinstance(cfg["trainer"]["callbacks"], list)
    first = (CONFIG_DIR / name).read_text().splitlines()[0]
    assert first.startswith("# python -m train fit --config"), "each YAML starts with the command that runs it"


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_overlay_config_loads_on_quickstart(name, capsys):
    cfg = print_config(capsys, "--config", "quickstart.yaml", "--config", name)
    assert cfg["model"]["model_name"] and cfg["data"]["batch_size"] > 0
    first = (CONFIG_DIR / name).read_text().splitlines()[0]
    assert first.startswith("# python -m train fit --config"), "each YAML starts with the command that runs it"


def test_quickstart_is_the_default_and_overrides_apply(capsys):
    cfg = print_config(capsys, "--trainer.max_steps=7", "--model.lr=0.01")
    assert cfg["run"]["name"] == "quickstart" and cfg["model"]["model_name"] == "clip-tiny"
    assert cfg["trainer"]["max_steps"] == 7 and cfg["model"]["lr"] == 0.01
    assert cfg["data"]["synthetic"]["p_large_first"] == 0.9 and cfg["data"]["synthetic"]["num_samples"] == 40000


def test_second_config_overlays_the_first(tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  lr: 0.123\ndata:\n  batch_size: 7\n")
    cfg = print_config(capsys, "--config", "quickstart.yaml", "--config", str(overlay))
    assert cfg["model"]["lr"] == 0.123 and cfg["data"]["batch_size"] == 7
    assert cfg["model"]["model_name"] == "clip-tiny"  # untouched keys survive


def test_unknown_yaml_key_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  learning_rate: 0.1\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", "quickstart.yaml", "--config", str(bad)])
    assert exc.value.code != 0
    assert "learning_rate" in capsys.readouterr().err


def test_unknown_config_name_lists_available():
    with pytest.raises(FileNotFoundError, match="no_such.yaml.*quickstart.yaml"):
        main(["fit", "--config", "no_such.yaml"])


def _fit_quick(tmp_path, *extra):
    return main(["fit", "--config", "quickstart.yaml", "--data.synthetic=null", f"--run.root={tmp_path}",
                 "--run.wandb_mode=disabled", "--trainer.accelerator=cpu", *extra])


def test_unknown_model_fails_before_training(tmp_path, tiny_shards):
    with pytest.raises(ValueError, match="Unknown model_name 'ViT-Nope'.*clip-tiny"):
        _fit_quick(tmp_path, "--model.model_name=ViT-Nope", f"--data.train_shards={tiny_shards[0]}")
    assert not (tmp_path / "quickstart" / "checkpoints").exists()


def test_bad_batch_size_fails_before_training(tmp_path, tiny_shards):
    with pytest.raises(ValueError, match="batch_size must be > 0, got 0"):
        _fit_quick(tmp_path, "--data.batch_size=0", f"--data.train_shards={tiny_shards[0]}")


def test_more_micro_batches_than_samples_fails_before_training(tmp_path, tiny_shards):
    with pytest.raises(ConfigError, match=r"accumulate_contrastive=8 needs at least 8 samples per device batch, "
                                          r"got a batch of 4"):
        _fit_quick(tmp_path, "--model.accumulate_contrastive=8", "--data.batch_size=4",
                   f"--data.train_shards={tiny_shards[0]}")
    assert not (tmp_path / "quickstart").exists()


def test_laion_config_without_shards_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"(?s)data/laion_small/00000\.tar.*python -m data_prep laion --parquet"):
        main(["fit", "--config", "laion_small.yaml", "--trainer.accelerator=cpu", "--trainer.strategy=auto",
              "--trainer.devices=1", "--trainer.precision=32-true", f"--run.root={tmp_path}/runs",
              "--run.wandb_mode=disabled"])
    assert not (tmp_path / "runs").exists()


def test_wandb_offline_without_key_and_resume_keeps_run_id(tmp_path, tiny_shards, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    args = ["--model.model_name=clip-micro", f"--data.train_shards={tiny_shards[0]}", "--data.batch_size=16",
            "--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=0",
            "--run.wandb_mode=auto", "--run.name=wb", f"--run.root={tmp_path}/runs", "--model.total_steps=2", "--model.warmup_steps=1"]
    base = ["fit", "--config", "quickstart.yaml", "--data.synthetic=null", "--trainer.accelerator=cpu"]
    cli = main([*base, *args, "--trainer.max_steps=1"])
    run = tmp_path / "runs" / "wb"
    run_id = (run / "wandb_id").read_text().strip()
    assert cli.trainer.loggers[1].experiment.id == run_id
    assert cli.trainer.loggers[1].experiment.settings.mode in ("offline", "dryrun")
    cli.trainer.loggers[1].experiment.finish()
    offline_dirs = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline_dirs, list((run / "wandb").iterdir())
    cli = main([*base, *args, "--trainer.max_steps=2", "--ckpt_path=last"])
    assert cli.trainer.global_step == 2
    assert cli.trainer.loggers[1].experiment.id == run_id
    cli.trainer.loggers[1].experiment.finish()
