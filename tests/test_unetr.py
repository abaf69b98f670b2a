"""The UNETR-style 3D decoder takes any patch size: one upsampling stage per prime factor."""

from __future__ import annotations

import pytest
import torch

from maekit.errors import ConfigError
from maekit.finetune.segmentation3d import UNETRDecoder, upsampling_factors


def test_factors() -> None:
    assert upsampling_factors(16) == [2, 2, 2, 2]
    assert upsampling_factors(12) == [2, 2, 3]
    assert upsampling_factors(18) == [2, 3, 3]
    assert upsampling_factors(7) == [7]
    with pytest.raises(ConfigError, match="at least 2"):
        upsampling_factors(1)


@pytest.mark.parametrize("patch", [12, 18, 4])
def test_any_patch_gives_full_resolution_logits_and_uses_every_skip(patch: int) -> None:
    torch.manual_seed(patch)
    stages = len(upsampling_factors(patch))
    grid = int(torch.randint(1, 3, ()))
    decoder = UNETRDecoder(2, 32, patch, num_classes=3, feature_size=4)
    image = torch.randn(1, 2, grid * patch, grid * patch, grid * patch)
    grids = [torch.randn(1, 32, grid, grid, grid, requires_grad=True) for _ in range(stages)]
    out = decoder(image, grids)
    assert out.shape == (1, 3, grid * patch, grid * patch, grid * patch)
    out.square().mean().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in grids)  # every depth reaches the output
    assert len(UNETRDecoder.skip_blocks(12, patch)) == stages


def test_power_of_two_keeps_unetr_parameter_names() -> None:
    """Checkpoints fine-tuned with patch 16 (MONAI's UnetrPrUpBlock names) still load."""
    keys = set(UNETRDecoder(4, 32, 16, 3, 8).state_dict())
    assert {"token_skips.0.transp_conv_init.conv.weight", "token_skips.2.blocks.1.conv.weight",
            "ups.3.transp_conv.conv.weight"} <= keys
