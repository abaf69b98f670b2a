"""The built wheel works away from the source tree: configs by short name, the console script,
the version, and a one-batch pretraining run on generated chips."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from maekit import __version__
from maekit.cli import main
from maekit.config_files import resolve_config, resolve_config_args, shipped_configs
from maekit.errors import ConfigError

from .conftest import REPO


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_wheel_installed_away_from_the_source_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "maekit", src / "maekit", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "configs", src / "configs", ignore=ignore)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         tmp_path, dict(os.environ))
    (wheel,) = dist.glob("maekit-*.whl")
    assert wheel.name.startswith(f"maekit-{__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        packed = {n for n in zf.namelist() if n.startswith("maekit/configs/") and n.endswith(".yaml")}
    assert packed == {f"maekit/configs/{name}.yaml" for name in shipped_configs()}  # every config, as a file

    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)],
         tmp_path, dict(os.environ))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)  # dependencies come from the interpreter's own site-packages
    # one interpreter for the checks (each start imports torch and Lightning), then the console script
    script = """import sys
import maekit
from maekit.cli import main
print("FILE", maekit.__file__)
for argv in (["domains"], ["configs"], ["sample-data", "chips", "--per-class", "2", "--val-per-class", "1",
                                       "--size", "16"]):
    print("RUN", *argv, flush=True)
    assert main(argv) == 0, argv
print("RUN fit", flush=True)
sys.exit(main(sys.argv[1:]))
"""
    fit = ["fit", "-c", "naip/pretrain", "--data.root", "chips", "--data.crop_size", "16", "--data.batch_size", "4",
           "--data.num_workers", "0", "--model.size", "nano", "--model.adapter.init_args.patch_size", "8",
           "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
           "--trainer.default_root_dir", "run"]
    out = _run([sys.executable, "-c", script, *fit], work, env)
    where = out.split("FILE ")[1].splitlines()[0]
    assert Path(where).resolve().is_relative_to(site.resolve()), where  # not the checkout, not an editable install
    domains, configs = out.split("RUN domains\n")[1].split("RUN configs\n")
    assert "multispectral" in domains and "naip/pretrain" in domains
    assert re.search(r"^  naip/pretrain +NAIP \(R, G, B, NIR\) MAE pretraining", configs, re.M), configs
    assert (work / "chips" / "train").is_dir()
    ckpt = Path(out.split("maekit: checkpoint written: ")[1].splitlines()[0])
    assert ckpt.is_file() and ckpt.resolve().is_relative_to((work / "run").resolve())
    console = [str(site / "bin" / "maekit"), "--version"]  # the console script the wheel declares
    assert _run(console, work, env).strip() == f"maekit {__version__}"


def test_short_config_names_resolve_anywhere_in_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = shipped_configs()
    assert len(shipped) > 20 and all(p.is_file() for p in shipped.values())
    target = str(shipped["naip/pretrain"])
    for name in ("naip/pretrain", "naip/pretrain.yaml", "configs/naip/pretrain.yaml"):
        assert resolve_config(name) == target
    args = resolve_config_args(["fit", "--trainer.max_steps", "1", "-c", "naip/pretrain", "--config=ct/pretrain",
                                "--config", "skeleton/probe.yaml"])
    assert args == ["fit", "--trainer.max_steps", "1", "-c", target, f"--config={shipped['ct/pretrain']}",
                    "--config", str(shipped["skeleton/probe"])]
    own = tmp_path / "naip" / "pretrain.yaml"  # a real path wins over the shipped name
    own.parent.mkdir()
    own.write_text("seed_everything: 3\n")
    assert resolve_config("naip/pretrain.yaml") == "naip/pretrain.yaml"
    assert resolve_config("naip/pretrain") == target  # no such file: the shipped one
    inline = "{trainer: {max_steps: 1}}"
    assert resolve_config(inline) == inline  # inline YAML is jsonargparse's to read
    with pytest.raises(ConfigError, match=r"'naip/pretrian'.*naip/pretrain, naip/pretrain_rasters"):
        resolve_config("naip/pretrian")


def test_cli_commands_take_short_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--trainer.max_steps", "1", "-c", "naip/nope"]) == 2
    err = capsys.readouterr().err
    assert "config 'naip/nope': no such file" in err and "naip/pretrain" in err
    for command in (["stats", "-c", "naip/nope"], ["probe", "-c", "naip/nope", "--model.pretrained", "x"],
                    ["shard", "-c", "naip/nope", "--out", str(tmp_path / "s")]):
        assert main(command) == 2, command
        assert "config 'naip/nope': no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", "toa/pretrain", "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: maekit.pretrain.BlockMasking" in capsys.readouterr().out  # the TOA config was read


def test_version_and_configs_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"maekit {__version__}\n"
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(shipped_configs())
    assert any(re.fullmatch(r"  toa/pretrain +MODIS TOA \(14 bands.*", line) for line in lines)
