"""params.yaml handling as a user meets it: a bad key is named, --set overrides, and spd/ stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from spd.config import ConfigError


def _spd(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda p: p["prepare"].update(image_size=100), "prepare.image_size"),
        (lambda p: p["prepare"]["main"].update(val_fraction=1.5), "prepare.main.val_fraction"),
        (lambda p: p["prepare"].update(bad_data="ignore"), "prepare.bad_data"),
        (lambda p: p["synth"]["cross"].update(cuont=3), "synth.cross.cuont"),
        (lambda p: p["loss"].update(lambda_seg=-1), "loss.lambda_seg"),
        # the seed check needs seeds no search trial trained with (train.seed is 0)
        (lambda p: p["tune"].update(check_seeds=[0, 1]), "tune.check_seeds"),
        # an epoch is whole batches; the ablation packs its own data at a size the model takes
        (lambda p: p["train"].update(epoch_images=4), "train.epoch_images"),
        # a trial's batch is raised to one image per worker: 12 workers, batch 8, 10 images
        (lambda p: p["tune"].update(workers_per_trial=12, epoch_images=10), "tune.epoch_images"),
        (lambda p: p["ablation"].update(image_size=60), "ablation.image_size"),
    ],
)
def test_a_bad_params_file_names_the_key(tmp_path: Path, project_root: Path, edit, key: str) -> None:
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    edit(params)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    proc = _spd(["prepare", "--params", str(bad)], project_root)
    assert proc.returncode == 2
    assert key in proc.stderr and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr


def test_set_overrides_a_value_and_is_validated(tmp_path: Path, project_root: Path) -> None:
    params = load_params(project_root / "params.yaml", ["prepare.image_size=64", "prepare.cross=null"])
    assert params.prepare.image_size == 64 and params.prepare.cross is None
    with pytest.raises(ConfigError, match="prepare.image_size"):
        load_params(project_root / "params.yaml", ["prepare.image_size=60"])
    proc = _spd(["synth", "--set", "synth.image_size=8", "--out", str(tmp_path / "x")], project_root)
    assert proc.returncode == 2 and "synth.image_size" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_spd_imports_no_ray_mlflow_or_dvc(project_root: Path) -> None:
    code = (
        "import importlib, pkgutil, sys, spd\n"
        "for m in pkgutil.walk_packages(spd.__path__, 'spd.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = sorted(n for n in sys.modules if n.split('.')[0] in ('ray', 'mlflow', 'dvc'))\n"
        "print(len([n for n in sys.modules if n.startswith('spd.')]), heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=project_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.strip().split(" ", 1)
    assert int(count) >= 10 and heavy == "[]", proc.stdout


@pytest.mark.parametrize("name", ["params.yaml", "params-paper.yaml"])
def test_every_params_file_sets_every_key_and_the_parsed_config_pickles(
    project_root: Path, name: str
) -> None:
    import pickle

    params = load_params(project_root / name)
    assert pickle.loads(pickle.dumps(params)) == params  # what Ray hands workers and trials


def test_a_key_left_out_of_the_params_file_is_named_not_filled_in(tmp_path: Path, project_root: Path) -> None:
    # params.yaml is the one source of defaults: no dataclass default silently stands in for it.
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    del raw["train"]["lr"]
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"partial.yaml: train.lr: missing"):
        load_params(partial)


def test_the_old_train_num_workers_key_is_refused_with_its_new_name(project_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"train.num_workers: renamed to train.ray_workers"):
        load_params(project_root / "params.yaml", ["train.num_workers=2"])


def test_every_spd_subcommand_has_its_module() -> None:
    import importlib.util

    from pipeline.cli import STAGES

    assert [name for name, (module, _) in STAGES.items() if importlib.util.find_spec(module) is None] == []
