"""The benchmark harness: `make bench` (benchmarks/run_all.py) and the GPU check's CPU dry run.

No test asserts a timing: these pin that the scripts run, report every part, and that the
collection and README logic fails loudly on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
ENV = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_all(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "run_all.py"), *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=600)


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- GPU check
def test_gpu_check_dry_run_reports_every_part(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    parts = result["parts"]
    assert set(parts) == {"matmul", "mae", "mri", "pointmae", "chips", "ddp"}
    for name, part in parts.items():
        assert "error" not in part, (name, part.get("error"))
    assert parts["matmul"]["tflops"] > 0
    for variant in ("eager", "compiled"):
        row = parts["mae"][variant]
        assert row["images_per_s"] > 0 and row["ms"] > 0 and 0 < row["mfu"]
    assert parts["mae"]["gflop_per_step"] > 0
    assert parts["mri"]["maekit"]["ms"] > 0
    assert parts["pointmae"]["ms"] > 0 and parts["pointmae"]["grouping_ms"] > 0
    runs = parts["chips"]["runs"]
    assert [r["workers"] for r in runs] == [0, 1] and all(r["chips_per_s"] > 0 for r in runs)
    assert parts["chips"]["demand_images_per_s"] == parts["mae"]["best_images_per_s"]
    ddp = parts["ddp"]
    assert ddp.get("images_per_s", 0) > 0 or ddp.get("skipped")
    env = result["env"]
    assert env["dry_run"] is True and env["torch"] == torch.__version__ and env["cpu_count"] >= 1
    table = (out / "gpu_check.md").read_text()
    for name in ("matmul", "mae", "mri", "pointmae", "chips", "ddp"):
        assert f"| {name} |" in table
    summary = last_json(done.stdout)
    assert summary["markdown"] in table and summary["failed_parts"] == []
    assert {t["target"] for t in summary["targets"]} >= {"GPU check wall time (s)", "chip loader vs MAE step demand"}


def test_gpu_check_records_a_failing_part_and_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    # 40^3 volumes do not divide into 16^3 patches: the MRI part fails with the kit's error
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--out", str(out), "--parts",
                           "mri,pointmae", "--set", "mri_image=40"], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    parts = json.loads((out / "gpu_check.json").read_text())["parts"]
    assert set(parts) == {"mri", "pointmae"}
    assert "not a multiple of the patch size" in parts["mri"]["error"]
    assert parts["pointmae"]["ms"] > 0
    assert last_json(done.stdout)["failed_parts"] == ["mri"]
    assert "| mri | 4 modalities x 40^3" in (out / "gpu_check.md").read_text()


def test_gpu_check_refuses_bad_options_and_a_missing_gpu(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--set", "mae_bacth=4"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2 and "mae_bacth" in done.stderr and "mae_batch" in done.stderr
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run", "--parts", "mae,gpu"],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 2 and "unknown parts ['gpu']" in done.stderr
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), "--out", str(tmp_path)], capture_output=True,
                              text=True, env=ENV, timeout=300)
        assert done.returncode == 2 and "no CUDA device" in done.stderr
        assert not (tmp_path / "gpu_check.json").exists()


def test_script_args_reads_a_scripts_own_defaults(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from gpu_check import script_args
    finally:
        sys.path.remove(str(BENCH))
    default = random.randint(3, 99)
    (tmp_path / "fake_bench.py").write_text(textwrap.dedent(f"""
        import argparse
        def main():
            p = argparse.ArgumentParser()
            p.add_argument("--steps", type=int, default={default})
            p.add_argument("--decoder-width", type=int, default=96)
            a = p.parse_args()
            raise AssertionError("main ran past parse_args")
    """))
    spec = importlib.util.spec_from_file_location("fake_bench", tmp_path / "fake_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    a = script_args(module, decoder_width=default + 1)
    assert (a.steps, a.decoder_width) == (default, default + 1)
    with pytest.raises(KeyError, match="decoder_depth"):
        script_args(module, decoder_depth=2)


# ---------------------------------------------------------------------------------------- run_all
def write_script(folder: Path, name: str, body: str, doc: str = "A fake benchmark.") -> None:
    (folder / f"{name}.py").write_text(f'"""{doc}"""\nimport json, sys\n\n\ndef main():\n'
                                       + textwrap.indent(textwrap.dedent(body), "    ")
                                       + '\n\nif __name__ == "__main__":\n    main()\n')


def fake_scripts(folder: Path, value: float) -> None:
    folder.mkdir()
    table = "| case | ms |\\n|---|---|\\n| a | 1 |"
    write_script(folder, "good", f"""
        print("{table}")
        print(json.dumps({{"targets": [{{"target": "speed", "value": {value}, "goal": ">= 1.4x",
                                         "met": {value} >= 1.4}}], "markdown": "{table}"}}))
    """, doc="Good: a target and a table.")
    write_script(folder, "plain", """
        print("fps 3.2 ms")
        print(json.dumps({"ms": 3.2}))
    """, doc="Plain: no targets yet.")
    (folder / "helpers.py").write_text("X = 1\n")  # no main: not a benchmark


def test_run_all_collects_targets_and_reports_failures(tmp_path: Path) -> None:
    value = round(random.uniform(0.5, 3.0), 3)
    scripts = tmp_path / "scripts"
    fake_scripts(scripts, value)
    write_script(scripts, "broken", """
        print("half a table")
        sys.exit("broken: out of memory")
    """)
    write_script(scripts, "malformed", """
        print(json.dumps({"targets": [{"target": "x", "value": "fast", "goal": "big", "met": True}]}))
    """)
    results, md = tmp_path / "results.json", tmp_path / "RESULTS.md"
    done = run_all("--scripts", str(scripts), "--results", str(results), "--markdown", str(md))
    assert done.returncode == 1  # two scripts failed, the others still ran
    data = json.loads(results.read_text())
    by_name = {r["script"]: r for r in data["scripts"]}
    assert set(by_name) == {"good", "plain", "broken", "malformed"}
    assert by_name["good"]["status"] == "ok" and by_name["plain"]["status"] == "ok"
    assert by_name["broken"]["status"] == "failed" and "exited with 1" in by_name["broken"]["error"]
    assert "broken: out of memory" in by_name["broken"]["stderr_tail"]
    assert "malformed targets" in by_name["malformed"]["error"]
    assert data["targets"] == [{"target": "speed", "value": value, "goal": ">= 1.4x", "met": value >= 1.4,
                                "script": "good"}]
    assert data["failed"] == ["broken", "malformed"]
    assert "| speed |" in done.stdout and ("| yes |" if value >= 1.4 else "| **no** |") in done.stdout
    assert "```\nfps 3.2 ms\n```" in by_name["plain"]["markdown"]  # no table of its own: its printout
    report = md.read_text()
    assert "| a | 1 |" in report and "Plain: no targets yet" in report and "FAILED" in report


def test_run_all_quick_passes_only_options_a_script_has(tmp_path: Path) -> None:
    module = load_run_all()
    script = tmp_path / "mae_step.py"
    script.write_text('def main():\n    p.add_argument("--steps", type=int)\n')
    assert module.arguments(script, True, None, tmp_path) == ["--steps", "5"]
    assert module.arguments(script, False, None, tmp_path) == []
    assert module.arguments(script, True, "--steps 9 --x 'a b'", tmp_path) == ["--steps", "9", "--x", "a b"]


def test_run_all_regenerates_only_the_readme_block(tmp_path: Path) -> None:
    value = round(random.uniform(0.5, 3.0), 3)
    scripts = tmp_path / "scripts"
    fake_scripts(scripts, value)
    readme = tmp_path / "README.md"
    before, after = "# Title\n\nProse before the tables.\n\n", "\n\nProse after the tables.\n"
    readme.write_text(f"{before}<!-- bench:begin -->\nold table\n<!-- bench:end -->{after}")
    outputs = ["--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "R.md")]
    done = run_all("--scripts", str(scripts), "--update-readme", "--readme", str(readme), *outputs)
    assert done.returncode == 0, done.stderr
    text = readme.read_text()
    assert text.startswith(before + "<!-- bench:begin -->\n") and text.endswith("<!-- bench:end -->" + after)
    assert "old table" not in text and f"| speed | {value:.3g} | >= 1.4x |" in text
    assert "**Good: a target and a table** (`python " in text and "| a | 1 |" in text
    # run again: the block is replaced, not duplicated
    assert run_all("--scripts", str(scripts), "--update-readme", "--readme", str(readme), *outputs).returncode == 0
    assert readme.read_text().count("| a | 1 |") == 1

    for broken in (f"{before}no markers{after}", f"{before}<!-- bench:end -->\n<!-- bench:begin -->{after}",
                   f"<!-- bench:begin -->{before}<!-- bench:begin -->\n<!-- bench:end -->{after}"):
        readme.write_text(broken)
        (tmp_path / "r.json").unlink(missing_ok=True)
        done = run_all("--scripts", str(scripts), "--update-readme", "--readme", str(readme), *outputs)
        assert done.returncode == 2 and str(readme) in done.stderr and "bench:" in done.stderr
        assert readme.read_text() == broken and not (tmp_path / "r.json").exists()  # refused before running

    write_script(scripts, "broken", 'sys.exit("broken")')
    readme.write_text(f"{before}<!-- bench:begin -->\nold table\n<!-- bench:end -->{after}")
    done = run_all("--scripts", str(scripts), "--update-readme", "--readme", str(readme), *outputs)
    assert done.returncode == 1 and "README not updated" in done.stderr and "old table" in readme.read_text()
    done = run_all("--scripts", str(scripts), "--only", "good,nope", *outputs)
    assert done.returncode == 2 and "nope" in done.stderr


def test_readme_has_the_generated_benchmark_block() -> None:
    text = load_run_all().check_markers(REPO / "README.md")
    benchmarks = text.split("## Benchmarks", 1)[1].split("\n## ", 1)[0]
    assert "<!-- bench:begin -->" in benchmarks and "<!-- bench:end -->" in benchmarks
    assert "bash benchmarks/gpu_check.sh" in benchmarks


def test_chips_and_tiled_memory_report_targets_and_tables(tmp_path: Path) -> None:
    done = run_all("--only", "geotiff_chips,tiled_memory",
                   "--args", f"geotiff_chips=--size 1024 --chips 8 --repeats 1 --data {tmp_path / 'data'}",
                   "--args", f"tiled_memory=--sizes 512 1024 --model conv --workdir {tmp_path / 'scenes'}",
                   "--results", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "R.md"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = {r["script"]: r for r in json.loads((tmp_path / "r.json").read_text())["scripts"]}
    chips, tiled = data["geotiff_chips"], data["tiled_memory"]
    assert [t["target"] for t in chips["targets"]] == ["GeoTIFF chips/s vs torchgeo (cold cache)",
                                                       "GeoTIFF chips/s vs torchgeo (warm cache)"]
    assert all(t["value"] > 0 for t in chips["targets"]) and "| cold |" in chips["markdown"]
    assert tiled["targets"][0]["target"] == "tiled prediction peak memory, 4x the pixels"
    assert tiled["targets"][0]["value"] > 0 and "| 1024 x 1024 x 4 |" in tiled["markdown"]
