"""`make realdata` (maekit.realdata): its skip path, the commands it builds and the split check
that keeps the probe's test items out of pretraining. The long runs themselves are not run here."""

from __future__ import annotations

from pathlib import Path

import pytest

from maekit import realdata
from maekit.errors import ConfigError

from .conftest import REPO


def test_absent_data_skips_with_a_message_and_exit_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert realdata.main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 0
    assert "skipped: no real labelled data at" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_default_data_is_the_shared_folder_beside_the_repository() -> None:
    assert (REPO / realdata.DEFAULT_DATA).resolve() == (REPO.parent / "shared" / "realdata-labelled").resolve()


def test_commands_use_the_shipped_configs_and_keep_outputs_under_out(tmp_path: Path) -> None:
    sets = {s.name: s for s in realdata.SETS}
    data, out, weights = tmp_path / "data", tmp_path / "out", tmp_path / "w.ckpt"
    fit = realdata.fit_command(sets["eurosat_rgb"], data, out, python="PY")
    assert fit[:4] == ["PY", "-m", "maekit", "fit"]
    assert fit[fit.index("-c") + 1] == str(REPO / "configs/rgb/pretrain_small.yaml")
    assert fit[fit.index("--data.root") + 1] == str(data / "eurosat_rgb")
    assert fit[fit.index("--trainer.default_root_dir") + 1] == str(out / "eurosat_rgb")
    probe = realdata.probe_command(sets["eurosat_rgb"], data, out, weights, python="PY")
    assert probe[3] == "probe" and probe[probe.index("--model.pretrained") + 1] == str(weights)
    assert probe[probe.index("--labels_per_class") + 1] == "1,5,10,all"
    assert probe[probe.index("--out") + 1] == str(out / "eurosat_rgb_probe.json")
    hippo = realdata.fit_command(sets["hippocampus"], data, out, python="PY")
    assert hippo[hippo.index("--data.labels") + 1] == "[0,1,2]"  # the probe's labelled cases, split alike
    hprobe = realdata.probe_command(sets["hippocampus"], data, out, weights, python="PY")
    assert hprobe[hprobe.index("-c") + 1] == str(REPO / "configs/mri/probe.yaml")
    assert hprobe[hprobe.index("--labels_per_class") + 1] == "8,all"
    assert hprobe[hprobe.index("--random_inits") + 1] == "1" and "--random_inits" not in probe  # default 3
    for s in realdata.SETS:  # never a patch size, band or model override: the configs are the recipe
        for argv in (realdata.fit_command(s, data, out), realdata.probe_command(s, data, out, weights)):
            assert not [a for a in argv if a.startswith("--model.") and a != "--model.pretrained"]
            assert Path(argv[argv.index("-c") + 1]).is_file()


def _pairs(tmp_path: Path) -> tuple[Path, Path]:
    from maekit.domains.multispectral.samples import make_picture_dataset
    from maekit.domains.volume.samples import make_pairs_dataset

    data = tmp_path / "data"
    make_picture_dataset(data / "eurosat_rgb", per_class=6, size=16, seed=3)
    make_pairs_dataset(data / "hippocampus", cases=10, shape=(8, 8, 8), unlabelled=1, seed=4)
    return data, tmp_path / "out"


def test_pretraining_never_sees_the_probe_test_items(tmp_path: Path) -> None:
    data, out = _pairs(tmp_path)
    for s in realdata.SETS:
        counts = realdata.check_split(realdata.fit_command(s, data, out),
                                      realdata.probe_command(s, data, out, tmp_path / "w.ckpt"))
        assert counts["probe_test"] > 0 and counts["pretrain_train"] == counts["probe_train"]
        assert counts["probe_train_in_pretraining"] == counts["probe_train"]


@pytest.mark.parametrize("override", [["--data.val_fraction", "0.25"], ["--data.seed", "7"]])
def test_a_split_that_leaks_test_items_into_pretraining_is_refused(override: list[str], tmp_path: Path) -> None:
    data, out = _pairs(tmp_path)
    eurosat = realdata.SETS[0]
    with pytest.raises(ConfigError, match="pretraining would train on .* of the probe's .* test items"):
        realdata.check_split([*realdata.fit_command(eurosat, data, out), *override],
                             realdata.probe_command(eurosat, data, out, tmp_path / "w.ckpt"))


def test_hippocampus_pretraining_without_the_labelled_split_would_leak(tmp_path: Path) -> None:
    """Without `--data.labels`, the unlabelled case shifts the split: the reason the option is there."""
    data, out = _pairs(tmp_path)
    hippo = realdata.SETS[1]
    fit = realdata.fit_command(hippo, data, out)
    fit = fit[:fit.index("--data.labels")]
    with pytest.raises(ConfigError, match="pretraining would train on"):
        realdata.check_split(fit, realdata.probe_command(hippo, data, out, tmp_path / "w.ckpt"))


def test_headline_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    probe = {"metrics": ["dice"], "labels_per_class": {"8": {"pretrained": {"dice": 0.61, "dice_std": 0.01},
                                                             "random": {"dice": 0.58, "dice_std": 0.02}}}}
    h = realdata.headline(realdata.SETS[1], probe)
    assert h["met"] is False and h["gain"] == pytest.approx(0.03)
    table = realdata.format_results({"sets": {"hippocampus": {"probe": probe, "headline": h, "pretrain_seconds": 5,
                                                              "probe_seconds": 2}}})
    assert "0.610 ± 0.010" in table and "MISSED (+0.030)" in table


def test_finetune_commands_from_pretrained_and_scratch_on_the_probe_split(tmp_path: Path) -> None:
    data, out = _pairs(tmp_path)
    hippo = {s.name: s for s in realdata.SETS}["hippocampus"]
    weights = tmp_path / "w.ckpt"
    pre, scratch = (realdata.finetune_command(hippo, data, out, w, python="PY") for w in (weights, None))
    assert pre[pre.index("-c") + 1] == str(REPO / "configs/mri/segment.yaml")
    assert pre[pre.index("--model.pretrained") + 1] == str(weights)
    assert scratch[scratch.index("--model.pretrained") + 1] == "null"
    # the same run otherwise: same cases, steps and seed, outputs apart
    drop = lambda argv: [a for a in argv if a not in (str(weights), "null") and str(out) not in a]  # noqa: E731
    assert drop(pre) == drop(scratch)
    assert pre[pre.index("--data.labelled_cases") + 1] == hippo.headline == "8"
    assert pre[pre.index("--trainer.default_root_dir") + 1] == str(out / "hippocampus_finetune_pretrained")
    with pytest.raises(ConfigError, match="no fine-tuning config"):
        realdata.finetune_command(realdata.SETS[0], data, out, weights)
    # fine-tuning trains on probe training cases only and validates on exactly the probe's test cases
    fit = realdata.finetune_command(hippo, data, out, weights)
    fit[fit.index("--data.labelled_cases") + 1] = "3"  # the generated set has fewer than 8 training cases
    ft_train, ft_val = realdata.split_items(fit)
    probe_train, probe_test = realdata.split_items(realdata.probe_command(hippo, data, out, weights))
    assert ft_val == probe_test and len(ft_train) == 3 and set(ft_train) <= set(probe_train)


def test_validation_curve_reads_every_logged_dice(tmp_path: Path) -> None:
    import random

    values = [round(random.random(), 4) for _ in range(3)]
    rows = ["epoch,step,train/loss,val/dice"] + [f"{i},{i},0.5," for i in range(3)]
    rows += [f"{i},{10 * (i + 1)},,{v}" for i, v in enumerate(values)]
    (tmp_path / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert realdata.validation_curve(tmp_path / "metrics.csv") == [(10 * (i + 1), v) for i, v in enumerate(values)]
    (tmp_path / "none.csv").write_text("epoch,step,train/loss,val/dice\n0,0,0.5,\n")
    with pytest.raises(ConfigError, match="no val/dice logged"):
        realdata.validation_curve(tmp_path / "none.csv")


def test_finetune_row_in_the_table() -> None:
    probe = {"metrics": ["dice"], "labels_per_class": {"8": {"pretrained": {"dice": 0.61, "dice_std": 0.01},
                                                             "random": {"dice": 0.58, "dice_std": 0.02}}}}
    h = realdata.headline(realdata.SETS[1], probe)
    ft = {"pretrained": {"dice": 0.72, "seconds": 300}, "scratch": {"dice": 0.64, "seconds": 290}, "budget": "8",
          "gain": 0.08, "goal": "dice >= scratch + 0.05", "met": True}
    table = realdata.format_results({"sets": {"hippocampus": {"probe": probe, "headline": h, "pretrain_seconds": 5,
                                                              "probe_seconds": 2, "finetune": ft}}})
    assert "fine-tune @8 cases: Dice pretrained 0.720 (300 s), scratch 0.640 (290 s)" in table
    assert "scratch + 0.05: MET (+0.080)" in table
