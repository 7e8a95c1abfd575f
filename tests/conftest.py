import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel

from .utils import TINY_CONDITION_UNET_CONFIG, TINY_UNET2D_CONFIG


@pytest.fixture
def tiny_unet2d():
    torch.manual_seed(0)
    return UNet2DModel(**TINY_UNET2D_CONFIG).eval()


@pytest.fixture
def tiny_condition_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).eval()
