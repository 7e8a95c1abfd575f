"""How well an autoencoder reconstructs images: PSNR, SSIM and the grid of inputs above their reconstructions."""

from typing import List

import torch
import torch.nn.functional as F
from diffusers.utils import make_image_grid
from PIL import Image

# SSIM as Wang et al. (2004) define it: an 11x11 Gaussian window of sigma 1.5 and these constants, over the positions
# where the window fits (scikit-image's `structural_similarity(..., gaussian_weights=True, sigma=1.5,
# use_sample_covariance=False)`, which the tests compare against).
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image against its reference, both in [0, 1] (N, C, H, W)."""
    mse = (images.double() - references.double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse.clamp_min(1e-12))


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each image to its reference, both in [0, 1] (N, C, H, W), averaged over channels."""
    if min(images.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, not {images.shape[-2:]}.")
    x, y = images.double(), references.double()
    channels = x.shape[1]
    offsets = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    weights = weights / weights.sum()
    window = (weights[:, None] * weights[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(tensor):
        return F.conv2d(tensor, window, groups=channels)

    mean_x, mean_y = blur(x), blur(y)
    variance_x = blur(x * x) - mean_x**2
    variance_y = blur(y * y) - mean_y**2
    covariance = blur(x * y) - mean_x * mean_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x**2 + mean_y**2 + c1) * (variance_x + variance_y + c2)
    return (numerator / denominator).mean(dim=(1, 2, 3))


def to_pil(images: torch.Tensor) -> List[Image.Image]:
    """(N, C, H, W) in [0, 1] to PIL images (grey for one channel)."""
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


def reconstruction_grid(images: torch.Tensor, reconstructions: torch.Tensor, columns: int) -> Image.Image:
    """Rows of `columns` inputs, each above a row of their reconstructions, both in [0, 1] (N, C, H, W); N must be
    a multiple of `columns`."""
    if len(images) % columns:
        raise ValueError(f"{len(images)} images do not fill rows of {columns}.")
    tiles = []
    for start in range(0, len(images), columns):
        tiles += to_pil(images[start : start + columns]) + to_pil(reconstructions[start : start + columns])
    return make_image_grid(tiles, rows=2 * len(images) // columns, cols=columns)
