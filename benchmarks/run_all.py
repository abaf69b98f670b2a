"""Run every benchmark script, collect its targets and tables: what `make bench` does.

Each benchmarks/*.py with a `main` (this file and names starting with `_` aside) runs as its own
subprocess, with this checkout first on PYTHONPATH; its output is shown as it comes. By the
benchmark convention the LAST stdout line of a script is one JSON object, optionally with
`targets` ([{"target", "value", "goal", "met"}]) and `markdown` (the table it printed). A script
that fails (non-zero exit, no JSON last line, malformed targets) is reported and the others
still run; the exit code is then 1. `gpu_check.py` runs only where torch sees a CUDA device.

Writes benchmarks/results.json and benchmarks/RESULTS.md, prints one table of every target
(value, goal, met), and with `--update-readme` regenerates README's block between
`<!-- bench:begin -->` and `<!-- bench:end -->` (the prose around the block is left alone).

    python benchmarks/run_all.py                  # every script, full sizes
    python benchmarks/run_all.py --quick          # fewer steps/smaller data where a script has the option
    python benchmarks/run_all.py --only mae_step,mri_step
    python benchmarks/run_all.py --update-readme  # full run, then README's generated block
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
#: the order of the known scripts (the issue's targets first); any other script follows by name
ORDER = ["mae_step", "geotiff_chips", "mri_step", "pointcloud_ops", "tiled_memory", "gpu_check"]
#: fewer steps / smaller data for `--quick`, passed only where the script has the option
QUICK: dict[str, dict[str, list[str]]] = {
    "mae_step": {"--steps": ["5"], "--warmup": ["1"]},
    "geotiff_chips": {"--size": ["4096"], "--chips": ["50"], "--repeats": ["2"]},
    "mri_step": {"--steps": ["2"]},
    "pointcloud_ops": {"--repeats": ["3"]},
    "tiled_memory": {"--sizes": ["512", "2048"]},
}
#: scripts that need a GPU; skipped (with the reason) where torch sees none
GPU_ONLY = {"gpu_check"}


class BenchError(Exception):
    """A problem with the harness's own inputs (scripts folder, README markers): exit code 2."""


def discover(folder: Path) -> list[Path]:
    """The benchmark scripts of `folder`: Python files defining `main`, known ones in ORDER first."""
    if not folder.is_dir():
        raise BenchError(f"{folder}: no such folder of benchmark scripts")
    found = [p for p in folder.glob("*.py") if not p.name.startswith("_") and p.resolve() != Path(__file__).resolve()
             and re.search(r"^def main\(", p.read_text(), re.MULTILINE)]
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(found, key=lambda p: (rank.get(p.stem, len(ORDER)), p.stem))


def has_option(source: str, option: str) -> bool:
    """True when the script's source declares `option` with argparse."""
    return re.search(r"add_argument\(\s*['\"]" + re.escape(option) + r"['\"]", source) is not None


def arguments(script: Path, quick: bool, override: str | None, gpu_out: Path) -> list[str]:
    """The command-line arguments a script runs with."""
    if override is not None:
        return shlex.split(override)
    args: list[str] = []
    if script.stem == "gpu_check":
        args += ["--out", str(gpu_out)]
    if quick:
        source = script.read_text()
        for option, values in QUICK.get(script.stem, {}).items():
            if has_option(source, option):
                args += [option, *values]
    return args


def title(script: Path) -> str:
    """The first line of the script's docstring (its name when it has none)."""
    doc = ast.get_docstring(ast.parse(script.read_text()))
    return doc.strip().splitlines()[0].rstrip(".") if doc else script.stem


def check_targets(targets: Any) -> list[dict[str, Any]]:
    """The `targets` list, each entry checked for its four fields; ValueError naming what is off."""
    if not isinstance(targets, list):
        raise ValueError(f"`targets` is a {type(targets).__name__}, not a list")
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise ValueError(f"targets[{i}] is not an object")
        missing = [k for k in ("target", "value", "goal", "met") if k not in t]
        if missing:
            raise ValueError(f"targets[{i}] lacks {missing}")
        if not isinstance(t["met"], bool) or not isinstance(t["value"], (int, float)) or isinstance(t["value"], bool):
            raise ValueError(f"targets[{i}]: `value` must be a number and `met` true/false, got {t}")
    return targets


def run_script(script: Path, args: list[str], python: str, timeout: float) -> dict[str, Any]:
    """Run one script, echoing its output; its record (status, JSON, targets, markdown, error)."""
    cmd = [python, str(script), *args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               PYTHONUNBUFFERED="1")
    shown = " ".join(shlex.quote(c) for c in [f"benchmarks/{script.name}" if script.parent == HERE else str(script),
                                                *args])
    record: dict[str, Any] = {"script": script.stem, "command": f"python {shown}", "title": title(script)}
    print(f"\n=== {record['command']}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        # its own process group, so a timeout also ends the subprocesses it started
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        lines = []
        try:
            for line in proc.stdout:  # type: ignore[union-attr]
                print(line, end="", flush=True)
                lines.append(line.rstrip("\n"))
            proc.wait()
        finally:
            timed_out = not timer.is_alive() and proc.returncode != 0
            timer.cancel()
        err.seek(0)
        stderr = err.read()
    record.update(returncode=proc.returncode, seconds=round(time.perf_counter() - start, 1))
    printed = [line for line in lines if line.strip()]
    problems = []
    if timed_out:
        problems.append(f"killed after its time limit of {timeout:.0f} s")
    elif proc.returncode != 0:
        problems.append(f"exited with {proc.returncode}")
    data: Any = None
    if printed:
        try:
            data = json.loads(printed[-1])
        except json.JSONDecodeError:
            pass
    if not isinstance(data, dict):
        problems.append("its last stdout line is not a JSON object" + (f": {printed[-1][:200]!r}" if printed else
                                                                      " (it printed nothing)"))
        data = None
    record["json"] = data
    record["targets"] = []
    if data is not None and "targets" in data:
        try:
            record["targets"] = check_targets(data["targets"])
        except ValueError as e:
            problems.append(f"malformed targets: {e}")
    if data is not None and isinstance(data.get("markdown"), str):
        record["markdown"] = data["markdown"]
    else:  # no table of its own: what it printed, as printed
        body = printed[:-1] if data is not None else printed
        record["markdown"] = "```\n" + "\n".join(body) + "\n```" if body else ""
    if problems:
        record["status"] = "failed"
        record["error"] = "; ".join(problems)
        record["stderr_tail"] = stderr[-4000:]
        print(f"=== {script.stem} FAILED: {record['error']}\n{stderr[-2000:]}", file=sys.stderr, flush=True)
    else:
        record["status"] = "ok"
    return record


def cuda_available(python: str) -> tuple[bool, str]:
    """Whether torch (in the Python that runs the scripts) sees a CUDA device, and what it says."""
    probe = "import torch; print(torch.cuda.is_available(), torch.cuda.device_count())"
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return False, f"torch could not be imported: {done.stderr.strip()[-300:]}"
    available, count = done.stdout.split()
    return available == "True", f"torch.cuda.is_available() is {available}, {count} devices"


def machine() -> str:
    """A one-line description of this machine: CPU model, cores usable, torch version if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} usable cores, Python {platform.python_version()}"


def fmt_value(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def targets_table(records: list[dict[str, Any]], with_script: bool = True) -> str:
    head = "| target | value | goal | met |" + (" script |" if with_script else "")
    lines = [head, "|---|---|---|---|" + ("---|" if with_script else "")]
    for r in records:
        for t in r["targets"]:
            row = f"| {t['target']} | {fmt_value(t['value'])} | {t['goal']} | {'yes' if t['met'] else '**no**'} |"
            lines.append(row + (f" {r['script']} |" if with_script else ""))
    return "\n".join(lines) if len(lines) > 2 else "(no script reported targets)"


def status_table(records: list[dict[str, Any]]) -> str:
    lines = ["| script | status | seconds |", "|---|---|---|"]
    for r in records:
        status = r["status"] + (f": {r['error']}" if "error" in r else "")
        status += f": {r['reason']}" if "reason" in r else ""
        lines.append(f"| {r['script']} | {status.replace('|', '/')} | {r.get('seconds', '')} |")
    return "\n".join(lines)


def sections(records: list[dict[str, Any]]) -> str:
    """Each script's title, command and table."""
    out = []
    for r in records:
        if r["status"] == "skipped":
            out.append(f"**{r['title']}** (`{r['command']}`): not run here ({r['reason']}).")
        elif r["status"] == "failed":
            out.append(f"**{r['title']}** (`{r['command']}`): FAILED ({r['error']}).")
        else:
            out.append(f"**{r['title']}** (`{r['command']}`):\n\n{r['markdown']}")
    return "\n\n".join(out)


def readme_block(results: dict[str, Any]) -> str:
    records = results["scripts"]
    return (f"<!-- generated by `python benchmarks/run_all.py --update-readme` from one run; "
            f"edit the prose outside the markers -->\n"
            f"Measured {results['date']} on {results['machine']}"
            + (" (quick run: fewer steps, smaller data)" if results["quick"] else "") + ".\n\n"
            f"{targets_table(records, with_script=False)}\n\n{sections(records)}\n")


def check_markers(readme: Path) -> str:
    """README's text, once it is known to hold each marker exactly once and in order;
    BenchError naming the file and what is off."""
    if not readme.is_file():
        raise BenchError(f"{readme}: no such README")
    text = readme.read_text()
    begins, ends = text.count(BEGIN), text.count(END)
    if begins != 1 or ends != 1:
        raise BenchError(f"{readme}: needs exactly one {BEGIN} and one {END} around the generated benchmark "
                         f"tables; found {begins} and {ends}")
    if text.index(END) < text.index(BEGIN):
        raise BenchError(f"{readme}: {END} comes before {BEGIN}")
    return text


def update_readme(readme: Path, block: str) -> None:
    """Replace what lies between the markers in `readme` with `block`."""
    head, rest = check_markers(readme).split(BEGIN)
    tail = rest.split(END)[1]
    readme.write_text(f"{head}{BEGIN}\n{block}{END}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps / smaller data where a script has the option")
    p.add_argument("--only", default=None, help="comma-separated script names (stems) to run")
    p.add_argument("--scripts", default=str(HERE), help="folder of benchmark scripts (default: this one)")
    p.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                   help="run script NAME with ARGS instead of its defaults (repeatable)")
    p.add_argument("--python", default=sys.executable, help="the Python that runs the scripts")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per script before it is killed")
    p.add_argument("--results", default=str(HERE / "results.json"))
    p.add_argument("--markdown", default=str(HERE / "RESULTS.md"))
    p.add_argument("--update-readme", action="store_true", help="regenerate README's block between the markers")
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--gpu-out", default=str(HERE / "gpu_results"), help="where gpu_check.py writes its files")
    a = p.parse_args()
    try:
        return run(a)
    except BenchError as err:
        print(f"run_all: {err}", file=sys.stderr)
        return 2


def run(a: argparse.Namespace) -> int:
    scripts = discover(Path(a.scripts))
    overrides: dict[str, str] = {}
    for item in a.args:
        name, sep, value = item.partition("=")
        if not sep:
            raise BenchError(f"--args {item!r}: expected NAME=ARGS")
        overrides[name] = value
    names = {s.stem for s in scripts}
    wanted = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    unknown = sorted(set(wanted or []) - names) + sorted(set(overrides) - names)
    if unknown:
        raise BenchError(f"no benchmark scripts named {unknown} in {a.scripts}; there are {sorted(names)}")
    if wanted:
        scripts = [s for s in scripts if s.stem in wanted]
    if a.update_readme:  # the README's tables come from one full run of every script
        if wanted:
            raise BenchError("--update-readme regenerates every table from one run: drop --only")
        check_markers(Path(a.readme))  # before the long run, not after it
    records = []
    gpu: tuple[bool, str] | None = None
    for script in scripts:
        if script.stem in GPU_ONLY and script.stem not in overrides:
            gpu = gpu or cuda_available(a.python)
            if not gpu[0]:
                records.append({"script": script.stem, "title": title(script), "status": "skipped",
                                "command": "bash benchmarks/gpu_check.sh", "reason": f"no CUDA device ({gpu[1]})",
                                "targets": []})
                print(f"\n=== {script.stem}: skipped, no CUDA device ({gpu[1]})", flush=True)
                continue
        args = arguments(script, a.quick, overrides.get(script.stem), Path(a.gpu_out))
        records.append(run_script(script, args, a.python, a.timeout))
    failed = [r["script"] for r in records if r["status"] == "failed"]
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "quick": a.quick,
               "scripts": records, "failed": failed,
               "targets": [dict(t, script=r["script"]) for r in records for t in r["targets"]]}
    Path(a.results).write_text(json.dumps(results, indent=1))
    md = (f"# Benchmark results\n\n{results['date']}, {results['machine']}"
          + (", quick run" if a.quick else "") + "\n\n## Targets\n\n" + targets_table(records)
          + "\n\n## Scripts\n\n" + status_table(records) + "\n\n" + sections(records) + "\n")
    Path(a.markdown).write_text(md)
    print("\n## Targets\n\n" + targets_table(records) + "\n\n" + status_table(records))
    print(f"\nwrote {a.results} and {a.markdown}")
    if a.update_readme:
        if failed:
            print(f"README not updated: {', '.join(failed)} failed (its table would be lost)", file=sys.stderr)
        else:
            update_readme(Path(a.readme), readme_block(results))
            print(f"updated the generated block of {a.readme}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
