import os

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


@pytest.fixture(autouse=True, scope="session")
def real_feature_cache(tmp_path_factory):
    """Real-image features cached by the evaluation go to a temporary folder, also for launched subprocesses."""
    previous = os.environ.get("DIFFKIT_CACHE")
    os.environ["DIFFKIT_CACHE"] = str(tmp_path_factory.mktemp("diffkit-cache"))
    yield os.environ["DIFFKIT_CACHE"]
    if previous is None:
        del os.environ["DIFFKIT_CACHE"]
    else:
        os.environ["DIFFKIT_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
    """A tiny random CLIP text encoder (32-d) with CLIP's real tokenizer, saved as a transformers folder."""
    from .tiny_stable_diffusion import save_clip_tokenizer, tiny_text_encoder

    folder = tmp_path_factory.mktemp("tiny-clip")
    save_clip_tokenizer(str(folder))
    torch.manual_seed(0)
    tiny_text_encoder().save_pretrained(folder)
    return str(folder)
