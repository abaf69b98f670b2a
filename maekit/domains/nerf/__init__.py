"""NeRF radiance grids (NeRF-MAE): 4^3 patches of RGB + alpha.

Importing this package needs no extra; `maekit nerf-grid` on meshes needs open3d (`maekit[3d]`).
"""

from maekit.domains.registry import register_domain
from maekit.lazy import lazy_exports

_HERE = "maekit.domains.nerf"
__getattr__ = lazy_exports(__name__, {
    "NerfAdapter": f"{_HERE}.adapter", "NERF_CHANNELS": f"{_HERE}.spec",
    "read_nerf_grid": f"{_HERE}.readers",
    "NerfGridDataModule": f"{_HERE}.datamodule", "NerfGridDataset": f"{_HERE}.datamodule",
    "make_nerf_dataset": f"{_HERE}.samples",
})
__all__ = ["NERF_CHANNELS", "NerfAdapter", "NerfGridDataModule", "NerfGridDataset", "make_nerf_dataset",
           "read_nerf_grid"]

register_domain(
    "nerf",
    adapter=f"{_HERE}.adapter:NerfAdapter",
    datamodules=[f"{_HERE}.datamodule:NerfGridDataModule"],
    samples={"nerf": f"{_HERE}.samples:sample_data"},
    description="NeRF-MAE .npz grids (rgbsigma + resolution); `maekit nerf-grid` builds grids from coloured "
                "meshes / point clouds",
    example=f"{_HERE}.samples:example",
    commands={"nerf-grid": f"{_HERE}.samples:cmd_nerf_grid"},
    shard_kinds={"nerf": f"{_HERE}.datamodule:FinishNerf"},
)
