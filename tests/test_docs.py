"""The documentation site builds with warnings as errors, and its pages hold what they promise."""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

needs_mkdocs = pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                                  reason="mkdocs is not installed (pip install -e '.[docs]'; `make test` installs it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.mark.slow
@needs_mkdocs
def test_docs_build_strict_with_readme_pages_api_and_notebooks(site: Path) -> None:
    def read(page: str) -> str:
        return (site / page / "index.html").read_text()

    def text(page: str) -> str:  # what a reader sees: code blocks are split into highlighted spans
        return html.unescape(re.sub(r"<[^>]+>", "", read(page)))

    assert "make demo" in text("") and "make docs" in text("")  # the README's install section is the front page
    assert "maekit fit -c naip/pretrain --data.root DIR" in text("cli")
    assert "StreamingShardsDataModule" in text("data") and "Pretrained weights" in text("weights")
    tokens = read("api/tokens")
    assert 'id="maekit.tokens.Tokens"' in tokens and 'id="maekit.tokens.DomainAdapter"' in tokens
    assert 'id="maekit.domains.registry.register_domain"' in read("api/registry")
    for domain, name in (("multispectral", "MultispectralAdapter"), ("volume", "VolumeAdapter"),
                         ("pointcloud", "PointCloudAdapter"), ("nerf", "NerfAdapter"), ("skeleton", "SkeletonAdapter")):
        assert re.search(rf'id="maekit\.domains\.{domain}\.adapter\.{name}"', read(f"api/{domain}")), domain
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        page = read(f"notebooks/{notebook.stem}")
        assert "jp-Notebook" in page or "jupyter-wrapper" in page, notebook.name  # rendered, not linked
    assert not (site / "hooks.py").exists()


@pytest.mark.slow
@needs_mkdocs
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_front_page_and_an_api_page_render_in_a_browser_without_console_errors(site: Path, tmp_path: Path) -> None:
    for page in ("index.html", "api/tokens/index.html"):
        shot = tmp_path / (page.replace("/", "_") + ".png")
        done = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                               "--v=0", f"--screenshot={shot}", "--window-size=1280,900",
                               (site / page).as_uri()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
        errors = [line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
        assert not errors, errors
