"""The pieces of the diffusion loss that flags switch on; the loop in `training/train.py` puts them together."""

from typing import Optional

import torch
from diffusers.training_utils import compute_snr


def min_snr_loss_weights(noise_scheduler, timesteps: torch.Tensor, snr_gamma: float) -> torch.Tensor:
    r"""Per-sample loss weights of Min-SNR-gamma weighting (Hang et al., 2023), one per timestep.

    With `snr = alpha_bar / (1 - alpha_bar)`, the weight is `min(snr, gamma) / snr` for epsilon prediction and
    `min(snr, gamma) / (snr + 1)` for v-prediction, which makes both equal to `min(snr, gamma)` on the x0 loss.
    """
    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=snr_gamma)
    if noise_scheduler.config.prediction_type == "epsilon":
        return clipped / snr
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    prediction_type = noise_scheduler.config.prediction_type
    raise ValueError(f"Min-SNR weighting is defined for 'epsilon' and 'v_prediction', not {prediction_type!r}.")


def offset_noise(noise: torch.Tensor, noise_offset: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    r"""Add `noise_offset * z` with one `z ~ N(0, 1)` per image and channel (Guttenberg, 2023).

    The constant shift lets the model learn to change an image's overall brightness, which plain Gaussian noise
    almost never asks of it.
    """
    shape = (noise.shape[0], noise.shape[1], 1, 1)
    return noise + noise_offset * torch.randn(shape, generator=generator, device=noise.device, dtype=noise.dtype)


def perturbed_input_noise(noise: torch.Tensor, input_perturbation: float, generator: Optional[torch.Generator]):
    r"""The noise that makes the model input under input perturbation: `noise + input_perturbation * z`.

    The loss target stays `noise`, so the model learns to undo slightly wrong inputs, as it meets them when sampling.
    """
    return noise + input_perturbation * torch.randn(
        noise.shape, generator=generator, device=noise.device, dtype=noise.dtype
    )
