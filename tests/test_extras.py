"""Each optional extra works alone: a domain imports, builds its datamodule and loads weights
with the other extras' packages missing, and a missing extra is named by its `pip install`.

Every check runs in a fresh interpreter in which the blocked packages cannot be imported
(`sys.modules[name] = None`, which is how Python marks a module as unavailable).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEGACY = Path(__file__).resolve().parent / "data" / "legacy"

#: the packages of each extra (pyproject.toml's optional dependencies)
PACKAGES = {
    "geo": ["rasterio", "torchgeo", "requests"],
    "medical": ["monai", "nibabel", "pydicom"],
    "3d": ["open3d", "h5py", "sklearn"],
    "lidar": ["laspy"],
}
#: what each extra's domain must do with only that extra installed
USES = {
    "geo": """
        from maekit.domains.multispectral import ChipDataModule, MultispectralAdapter
        ChipDataModule(root, preset="naip")
        model = from_pretrained(legacy / "naip_nano_export")
        assert type(model.adapter) is MultispectralAdapter
    """,
    "medical": """
        from maekit.domains.volume import VolumeAdapter, VolumeDataModule
        VolumeDataModule(root)
        from_pretrained(legacy / "naip_nano_export")  # loading weights needs no geo package
        VolumeAdapter(patch_size=8).build(16)
    """,
    "3d": """
        from maekit.domains.pointcloud import PointCloudAdapter, PointCloudDataModule, read_points
        from maekit.finetune import PointCloudClassificationTask
        PointCloudDataModule(root)
        from_pretrained(legacy / "naip_nano_export")
        import numpy as np
        np.savetxt(f"{root}/cloud.xyz", np.random.default_rng(0).random((64, 3)))
        assert read_points(f"{root}/cloud.xyz").xyz.shape == (64, 3)
    """,
    "lidar": """
        from maekit.domains.pointcloud import PointCloudAdapter, PointCloudDataModule, read_points
        PointCloudDataModule(root)
        from_pretrained(legacy / "naip_nano_export")
        import laspy, numpy as np
        las = laspy.create(point_format=0, file_version="1.2")
        las.x, las.y, las.z = (np.random.default_rng(0).random((3, 64)) * 10)
        las.write(f"{root}/scan.las")
        assert read_points(f"{root}/scan.las").xyz.shape == (64, 3)
    """,
}
#: with the extra itself missing: the call that needs it, and the install hint it must name
MISSING = {
    "geo": ("from maekit.domains.multispectral import ChipDataModule", "maekit[geo]"),
    "medical": ("from maekit.domains.volume import load_case, Case\n"
                "load_case(Case('x', {'t1': Path(root) / 'x_t1.nii.gz'}), ['t1'])", "maekit[medical]"),
    "3d": ("from maekit.domains.pointcloud import read_points\n"
           "(Path(root) / 'm.off').write_text('OFF\\n3 1 0\\n0 0 0\\n1 0 0\\n0 1 0\\n3 0 1 2\\n')\n"
           "read_points(Path(root) / 'm.off')", "maekit[3d]"),
    "lidar": ("from maekit.domains.pointcloud import read_points\n"
              "(Path(root) / 's.las').write_bytes(b'LASF')\nread_points(Path(root) / 's.las')", "maekit[lidar]"),
}


def run_blocked(blocked: list[str], body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # not installed, as far as this interpreter can tell
        from pathlib import Path
        root, legacy = {str(tmp_path)!r}, Path({str(LEGACY)!r})
        from maekit.weights import from_pretrained
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})


@pytest.mark.parametrize("extra", sorted(PACKAGES))
def test_a_domain_works_with_only_its_extra(extra: str, tmp_path: Path) -> None:
    others = [p for name, packages in PACKAGES.items() if name != extra for p in packages]
    done = run_blocked(others, textwrap.dedent(USES[extra]) + "\nprint('ok')", tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


@pytest.mark.parametrize("extra", sorted(PACKAGES))
def test_a_missing_extra_names_its_pip_install(extra: str, tmp_path: Path) -> None:
    call, hint = MISSING[extra]
    body = f"""
from maekit.lazy import MissingExtraError
try:
{textwrap.indent(call, '    ')}
except MissingExtraError as err:
    print("MISSING:", err)
"""
    done = run_blocked(PACKAGES[extra], body, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MISSING:" in done.stdout and hint in done.stdout, done.stdout + done.stderr[-2000:]
