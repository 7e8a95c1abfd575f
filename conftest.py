"""The working folder of the docstring examples, which pyproject's `--doctest-modules` runs in pipelines/, training/
and diffkit/ (the tests' own fixtures are in tests/conftest.py).

Each example runs in one temporary folder that holds what the examples load, as a user's runs would leave it: `out/`
(class-conditional MNIST, `accelerate launch training/train.py`), `out-text/` (text-conditional), `out-uncond/`
(unconditional), `sr/` (super-resolution from 14 to 28 px) and a 14-pixel `digit-14px.png`. The models are tiny and
random under a fixed seed: the examples run in seconds and check the calls and the shapes, not the pictures. What an
example writes lands there too, never in the checkout.
"""

import doctest

import numpy as np
import pytest

MNIST_SIZE = 28
# Steps saved with each pipeline, as train.py's --num_inference_steps would: the examples call with the defaults.
SAVED_INFERENCE_STEPS = 4


def save_example_runs(folder):
    """Save the runs that the docstring examples load into `folder` (a `pathlib.Path`)."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
    from PIL import Image

    from diffkit import (
        ClassConditionalImagePipeline,
        SuperResolutionPipeline,
        TextConditionalImagePipeline,
        UnconditionalImagePipeline,
    )
    from diffkit.training.dataset_loading import MNIST_LABEL_NAMES
    from tests.tiny_stable_diffusion import TEXT_HIDDEN, save_clip_tokenizer, tiny_text_encoder
    from tests.utils import TINY_CONDITION_UNET_CONFIG, TINY_SUPER_RESOLUTION_UNET_CONFIG, TINY_UNET2D_CONFIG

    torch.manual_seed(0)
    mnist_size = {"sample_size": MNIST_SIZE}
    ClassConditionalImagePipeline(
        unet=UNet2DConditionModel(
            **{**TINY_CONDITION_UNET_CONFIG, **mnist_size, "encoder_hid_dim": len(MNIST_LABEL_NAMES) + 1}
        ),
        scheduler=DDPMScheduler(),
        num_classes=len(MNIST_LABEL_NAMES),
        id2label=dict(enumerate(MNIST_LABEL_NAMES)),
        num_inference_steps=SAVED_INFERENCE_STEPS,
    ).save_pretrained(folder / "out")
    TextConditionalImagePipeline(
        unet=UNet2DConditionModel(**{**TINY_CONDITION_UNET_CONFIG, **mnist_size, "encoder_hid_dim": TEXT_HIDDEN}),
        scheduler=DDPMScheduler(),
        text_encoder=tiny_text_encoder(),
        tokenizer=save_clip_tokenizer(str(folder / "clip-tokenizer")),
        num_inference_steps=SAVED_INFERENCE_STEPS,
    ).save_pretrained(folder / "out-text")
    UnconditionalImagePipeline(
        unet=UNet2DModel(**{**TINY_UNET2D_CONFIG, **mnist_size}),
        scheduler=DDPMScheduler(),
        num_inference_steps=SAVED_INFERENCE_STEPS,
    ).save_pretrained(folder / "out-uncond")
    SuperResolutionPipeline(
        unet=UNet2DModel(**{**TINY_SUPER_RESOLUTION_UNET_CONFIG, **mnist_size}),
        scheduler=DDPMScheduler(),
        low_resolution=MNIST_SIZE // 2,
    ).save_pretrained(folder / "sr")
    pixels = np.random.default_rng(0).integers(0, 256, (MNIST_SIZE // 2, MNIST_SIZE // 2), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "digit-14px.png")


@pytest.fixture(scope="session")
def example_runs_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docstring-examples")
    save_example_runs(folder)
    return folder


@pytest.fixture(autouse=True)
def docstring_examples_run_in_the_example_runs_folder(request, monkeypatch):
    # A doctest item carries its stdlib DocTest; pytest's own item class is private.
    if isinstance(getattr(request.node, "dtest", None), doctest.DocTest):
        monkeypatch.chdir(request.getfixturevalue("example_runs_folder"))
