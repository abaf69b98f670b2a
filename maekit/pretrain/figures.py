"""Reconstruction figures: input / masked input / reconstruction, one row per sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maekit.files import atomic_output
from maekit.pretrain.mae import MaskedAutoencoder


@torch.no_grad()
def reconstruction_images(mae: MaskedAutoencoder, batch: dict[str, Any], max_samples: int = 4
                          ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(input, masked input, reconstruction) pictures (H, W, 3) in [0, 1] for a few samples.

    The reconstruction shows the decoder's prediction at masked tokens pasted beside the
    visible input; hidden areas of the masked input are grey, absent ones black.
    """
    was_training = mae.training
    mae.eval()
    try:
        out = mae(batch)
    finally:
        mae.train(was_training)
    adapter, tokens = mae.adapter, out.tokens
    values = tokens.values.float()
    predicted = adapter.values_from_prediction(out.pred, tokens)
    count = min(max_samples, values.shape[0])
    drawn = adapter.reconstruction_pictures(tokens, out.visible.mask, predicted)
    if drawn is not None:
        return [tuple(images[i].cpu() for images in drawn) for i in range(count)]  # type: ignore[misc]
    shown = out.visible.mask[..., None]
    recon_values = torch.where(shown, values, predicted)
    native_input = adapter.untokenize(values, tokens)
    native_recon = adapter.untokenize(recon_values, tokens)
    mask_native = adapter.untokenize(shown.expand_as(values).float(), tokens)
    present_native = adapter.untokenize(tokens.present[..., None].expand_as(values).float(), tokens)
    # one picture per sample; hidden pixels are where nothing shown in the picture is visible
    images_in = adapter.to_image(native_input)
    images_recon = adapter.to_image(native_recon, reference=native_input)
    hidden = adapter.picture(mask_native).amax(-1) < 0.5
    absent = adapter.picture(present_native).amax(-1) < 0.5
    images_masked = images_in.clone()
    images_masked[hidden] = 0.5
    images_masked[absent] = 0.0
    return [(images_in[i].cpu(), images_masked[i].cpu(), images_recon[i].cpu()) for i in range(count)]


def save_reconstruction_figure(mae: MaskedAutoencoder, batch: dict[str, Any], path: str | Path,
                               title: str = "", max_samples: int = 4) -> Path:
    """Write the figure of `reconstruction_images` as a PNG (atomically) and return its path."""
    return write_figure(reconstruction_images(mae, batch, max_samples), path, title)


def write_figure(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], path: str | Path,
                 title: str = "") -> Path:
    """A grid of (input, masked input, reconstruction) rows as a PNG, written atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global backend switch, works in notebooks

    fig = Figure(figsize=(7.5, 2.5 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False)
    for r, images in enumerate(rows):
        for c, (image, name) in enumerate(zip(images, ("input", "masked input", "reconstruction"))):
            axes[r][c].imshow(image.numpy())
            axes[r][c].set_axis_off()
            if r == 0:
                axes[r][c].set_title(name)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return path
