"""Tutorial notebooks are executed with tiny settings, so they cannot rot."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from .conftest import REALDATA, REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: what each tutorial must print (its results), so a silently skipped step fails the test
EXPECTED_TEXT = {
    "remote_sensing": ["pretrained", "vs random", "nearest tiles are"],
    "medical": ["correlation of synthesised and real FLAIR", "validation Dice per class"],
    "nerf": ["pretraining loss reached", "voxel labelling Dice"],
    "pointcloud": ["pretraining loss reached", "linear SVM accuracy: pretrained", "fine-tuned accuracy with 5 votes"],
    "skeleton": ["linear probe accuracy: pretrained", "vs scratch"],
    "any_sensor": ["pretraining loss reached", "held-out sensor dove8, 5 labels/class: linear probe accuracy pretrained",
                   "EuroSAT RGB"],
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAEKIT_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MAEKIT_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("MAEKIT_REALDATA", str(REALDATA))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    for expected in EXPECTED_TEXT[path.stem]:
        assert expected in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
