"""`make demo`, `make demo-medical` and `make demo-pointcloud` end to end at a reduced size: the
pipeline (data generation, pretraining, checkpoint, evaluation, report), not the numbers."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest


def _finite_fractions(values: list[float]) -> bool:
    return all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)


@pytest.mark.slow
def test_demo_pretrains_probes_and_draws_reconstructions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.demo import main

    result = main(["--out", str(tmp_path), "--epochs", "1", "--per-class", "4", "--val-per-class", "2",
                   "--labels-per-class", "2", "--probe-epochs", "1"])
    out = capsys.readouterr().out
    for stage in ("[1/4] sample data", "[2/4] pretraining loss: start", "[3/4] linear probe", "[4/4] reconstruction"):
        assert stage in out, out
    assert len(list((tmp_path / "data" / "train").rglob("*.tif"))) == 16
    checkpoint = Path(re.search(r"checkpoint (\S+\.ckpt)", out).group(1))  # type: ignore[union-attr]
    assert checkpoint.is_file()
    figure = Path(str(result["figure"]))
    assert figure.is_file() and figure.suffix == ".png" and figure.stat().st_size > 1000
    assert math.isfinite(float(result["loss_start"])) and math.isfinite(float(result["loss_end"]))
    assert _finite_fractions([float(result[k]) for k in ("probe_pretrained", "probe_random", "finetune")])


@pytest.mark.slow
def test_demo_medical_pretrains_and_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.demo_medical import main

    result = main(["--out", str(tmp_path), "--cases", "4", "--epochs", "1", "--labelled", "1",
                   "--finetune-epochs", "1", "--size", "32"])
    out = capsys.readouterr().out
    for stage in ("[1/3] 4 brain phantoms", "[2/3] pretrained 1 epochs", "[3/3] tumour Dice", "pretrained ",
                  "scratch "):
        assert stage in out, out
    assert len(list((tmp_path / "data").rglob("*.nii.gz"))) >= 4
    assert list((tmp_path / "pretrain").rglob("*.ckpt"))
    assert len(result["pretrained"]) == len(result["scratch"]) == 3
    assert _finite_fractions(result["pretrained"] + result["scratch"])


@pytest.mark.slow
def test_demo_pointcloud_pretrains_and_scores_frozen_features(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from maekit.demo_pointcloud import main

    result = main(["--out", str(tmp_path), "--per-class", "6", "--test-per-class", "2", "--epochs", "1"])
    out = capsys.readouterr().out
    for stage in ("[1/3] 6 shape classes x 6 training + 2 test", "[2/3] pretrained 1 epochs: Chamfer-L2",
                  "[3/3] frozen encoder", "pretrained", "random init"):
        assert stage in out, out
    assert list((tmp_path / "pretrain").rglob("*.ckpt"))
    for scores in (result["pretrained"], result["scratch"]):
        assert _finite_fractions([scores["svm_acc"], scores["fewshot_acc"]]) and scores["svm_c"] > 0
