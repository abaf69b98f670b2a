"""Progress bars of the kit's long commands: shown on a terminal, silent otherwise."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import random
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from maekit.cli import main
from maekit.progress import progress

from .conftest import REPO

BAR = re.compile(r"\d+%\||\d+(\.\d+)?(it|chip|case|scene|action|class|file)s?/s|\r")


class _Terminal(io.StringIO):
    """A text stream that says it is a terminal, as a console's stderr does."""

    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    n = random.randint(3, 40)
    for stream, drawn in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert sum(progress(range(n), desc="items", mininterval=0)) == n * (n - 1) // 2  # items pass through
        with progress(total=n, desc="steps", mininterval=0) as bar:
            bar.update(n)
        text = stream.getvalue()
        assert bool(BAR.search(text)) is drawn, text
        assert (f"{n}/{n}" in text) is drawn


@pytest.mark.parametrize("preset", ["naip", "brats", "nerf", "skeleton"])
def test_commands_print_nothing_progress_like_when_stderr_is_not_a_terminal(
        preset: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    per_class = "4" if preset == "skeleton" else "2"  # the skeleton splits need 4 per class
    assert main(["sample-data", str(tmp_path / "d"), "--preset", preset, "--per-class", per_class,
                 "--val-per-class", "1", "--size", "16"]) == 0
    if preset == "naip":
        assert main(["stats", "-c", "naip/pretrain", "--data.root", str(tmp_path / "d"), "--data.crop_size", "16"]) == 0
    out, err = capfd.readouterr()
    assert not BAR.search(err) and not BAR.search(out), err
    assert "wrote" in out


def test_sample_data_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    """The same command with stderr on a pseudo-terminal shows the bar (so the test above can fail)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "maekit", "sample-data", str(tmp_path / "d"), "--per-class", "3",
                             "--val-per-class", "1", "--size", "16"], stderr=slave, stdout=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    drawn = b"".join(chunks).decode(errors="replace")
    assert "train chips" in drawn and BAR.search(drawn), drawn
    assert proc.stdout is not None and "wrote" in proc.stdout.read().decode()
