"""NeRF radiance/density grids in the NeRF-MAE / NeRF-RPN `.npz` format, and their datamodule.

One `.npz` per scene holds `rgbsigma` (W, L, H, 4): RGB in [0, 1] and a raw density, and
`resolution` (the grid shape W, L, H). Optional entries this kit uses for fine-tuning:
`semantic` (W, L, H) integer voxel labels (0 = empty space) and `scene_class` (an integer).

Densities become opacities (alpha in [0, 1]) on reading, by the convention of the grids:
- `instant_ngp`: alpha = 1 - exp(-exp(sigma) / 100) (Instant-NGP grids, NeRF-RPN / NeRF-MAE);
- `relu`: alpha = 1 - exp(-relu(sigma) / 100);
- `alpha`: the fourth channel already is an opacity in [0, 1].

Grids are not cubic (NeRF-MAE: longest side 160). A batch pads every grid to one size with
zeros *after* the grid along each axis, and `valid` marks the padding False so that it is
never scored.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from maekit.domains.nerf.spec import NERF_CHANNELS, DensityMode, NerfTask
from maekit.errors import DataError

#: tolerance on RGB outside [0, 1] (rounding in exported grids); beyond it a file is refused
_RGB_TOLERANCE = 1e-3


def density_to_alpha(sigma: np.ndarray, mode: DensityMode = "instant_ngp") -> np.ndarray:
    """Opacity in [0, 1] (float32) from a raw density by the grid's convention (see the module doc)."""
    s = np.asarray(sigma, dtype=np.float64)
    if mode == "alpha":
        return s.astype(np.float32)
    with np.errstate(over="ignore"):  # exp of a large density is inf, and 1 - exp(-inf) = 1
        rate = np.exp(s) if mode == "instant_ngp" else np.maximum(s, 0.0)
        alpha = -np.expm1(-rate / 100.0)
    return np.clip(alpha, 0.0, 1.0).astype(np.float32)


def alpha_to_density(alpha: np.ndarray, mode: DensityMode = "instant_ngp") -> np.ndarray:
    """The raw density that `density_to_alpha` maps back to `alpha` (alpha clipped to [1e-6, 1 - 1e-6])."""
    a = np.clip(np.asarray(alpha, dtype=np.float64), 1e-6, 1.0 - 1e-6)
    if mode == "alpha":
        return np.asarray(alpha, dtype=np.float32)
    rate = -100.0 * np.log1p(-a)
    return (np.log(rate) if mode == "instant_ngp" else rate).astype(np.float32)


def read_nerf_grid(path: str | Path, density: DensityMode = "instant_ngp", with_semantic: bool = False,
                   with_scene_class: bool = False) -> dict[str, Any]:
    """Read one NeRF grid `.npz` and check it.

    Returns `image` (4, W, L, H) float32 tensor of [r, g, b, alpha], `resolution` (W, L, H),
    and when asked `semantic` (W, L, H) long and `scene_class` int. Every problem (unreadable
    file, no `rgbsigma`, wrong shape or channel count, NaN/inf, `resolution` disagreeing with the
    array, RGB outside [0, 1], labels of the wrong shape) raises a `DataError` naming the file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "rgbsigma" not in keys:
                raise DataError(path, f"has no 'rgbsigma' array (it holds {sorted(keys) or 'nothing'}); a NeRF "
                                      "grid .npz needs rgbsigma (W, L, H, 4) and resolution")
            rgbsigma = np.asarray(npz["rgbsigma"])
            resolution = np.asarray(npz["resolution"]) if "resolution" in keys else None
            semantic = np.asarray(npz["semantic"]) if with_semantic and "semantic" in keys else None
            scene_class = np.asarray(npz["scene_class"]) if with_scene_class and "scene_class" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataError(path, f"cannot be read as a NeRF grid .npz ({type(e).__name__}: {e})") from e
    if rgbsigma.ndim != 4:
        raise DataError(path, f"rgbsigma has shape {rgbsigma.shape}; expected (W, L, H, 4)")
    if rgbsigma.shape[-1] != 4:
        raise DataError(path, f"rgbsigma has {rgbsigma.shape[-1]} channels; expected 4 (r, g, b, sigma)")
    if not np.issubdtype(rgbsigma.dtype, np.number):
        raise DataError(path, f"rgbsigma has dtype {rgbsigma.dtype}; expected numbers")
    shape = tuple(int(s) for s in rgbsigma.shape[:3])
    if min(shape) < 1:
        raise DataError(path, f"rgbsigma is empty (shape {rgbsigma.shape})")
    if resolution is not None:
        declared = tuple(int(v) for v in resolution.reshape(-1))
        if declared != shape:
            raise DataError(path, f"resolution entry {list(declared)} disagrees with the rgbsigma grid {list(shape)}")
    grid = rgbsigma.astype(np.float32, copy=False)
    bad = ~np.isfinite(grid)
    if bad.any():
        in_density = int(bad[..., 3].sum())
        raise DataError(path, f"contains {int(bad.sum())} NaN/inf values ({in_density} in the density channel, "
                              f"{int(bad[..., :3].sum())} in RGB)")
    rgb = grid[..., :3]
    low, high = float(rgb.min()), float(rgb.max())
    if low < -_RGB_TOLERANCE or high > 1.0 + _RGB_TOLERANCE:
        raise DataError(path, f"RGB spans [{low:.4g}, {high:.4g}]; NeRF grids hold RGB in [0, 1] "
                              "(divide 8-bit colours by 255)")
    alpha = density_to_alpha(grid[..., 3], density)
    if density == "alpha" and (float(alpha.min()) < -_RGB_TOLERANCE or float(alpha.max()) > 1.0 + _RGB_TOLERANCE):
        raise DataError(path, f"density: alpha was set but the fourth channel spans [{float(alpha.min()):.4g}, "
                              f"{float(alpha.max()):.4g}]; use density: instant_ngp or relu for raw densities")
    image = np.concatenate([np.clip(rgb, 0.0, 1.0), np.clip(alpha, 0.0, 1.0)[..., None]], -1)
    out: dict[str, Any] = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(3, 0, 1, 2))),
                           "resolution": shape}
    if with_semantic:
        if semantic is None:
            raise DataError(path, "has no 'semantic' array (W, L, H) of voxel labels, needed for segmentation")
        if tuple(semantic.shape) != shape:
            raise DataError(path, f"semantic has shape {semantic.shape} but rgbsigma is {list(shape)}")
        if not np.issubdtype(semantic.dtype, np.integer) or (semantic.size and int(semantic.min()) < 0):
            raise DataError(path, f"semantic must hold non-negative integer labels (dtype {semantic.dtype})")
        out["semantic"] = torch.from_numpy(semantic.astype(np.int64))
    if with_scene_class:
        if scene_class is None or scene_class.size != 1 or not np.issubdtype(scene_class.dtype, np.integer):
            raise DataError(path, "has no integer 'scene_class' entry, needed for scene classification")
        out["scene_class"] = int(scene_class.reshape(-1)[0])
    return out
