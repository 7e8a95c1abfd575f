"""ClassConditionalImg2ImgPipeline: class-guided img2img (strength) and denoising (noise_level)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, EulerDiscreteScheduler

from diffkit import ClassConditionalImg2ImgPipeline, UnconditionalImagePipeline, UnconditionalImg2ImgPipeline

from .test_inpaint import SCHEDULERS, SIZE, digit_and_bottom_half_mask, run
from .test_pipelines import count_unet_calls, make_class_pipeline
from .utils import assert_local_remote_code_needs_opt_in

STEPS = 4


@pytest.fixture
def base(tiny_condition_unet):
    return make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100, clip_sample=True))


@pytest.fixture
def img2img(base):
    pipe = ClassConditionalImg2ImgPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digit():
    return digit_and_bottom_half_mask()[0]


def test_from_pipe_shares_the_very_same_modules_and_settings(base, img2img):
    assert img2img.unet is base.unet and img2img.scheduler is base.scheduler
    assert img2img.config.id2label == base.config.id2label and img2img.config.guidance_scale == 3.0


@pytest.mark.parametrize("strength, steps_run", [(1.0, 4), (0.5, 2), (0.25, 1)])
def test_strength_selects_the_last_part_of_the_schedule(img2img, strength, steps_run):
    calls = count_unet_calls(img2img.unet)
    images = run(img2img, image=digit(), strength=strength)
    assert calls == [4] * steps_run  # both guidance branches of both labels, batched
    assert images.shape == (2, SIZE, SIZE, 1) and np.isfinite(images).all()


def test_strength_0_and_noise_level_0_return_the_input(img2img):
    calls = count_unet_calls(img2img.unet)
    for kwargs in ({"strength": 0.0}, {"noise_level": 0.0}):
        images = run(img2img, image=digit(), **kwargs)
        np.testing.assert_array_equal((images[..., 0] * 255).round().astype(np.uint8), np.stack([digit(), digit()]))
    assert calls == []


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_edits(img2img, scheduler):
    img2img.scheduler = SCHEDULERS[scheduler](img2img.scheduler.config)
    images = run(img2img, image=digit(), strength=0.5)
    assert np.isfinite(images).all() and not np.array_equal(images[0], images[1])


def test_denoising_starts_at_the_step_of_the_noise_level_and_adds_no_noise(img2img):
    img2img.scheduler.set_timesteps(STEPS)
    timesteps = img2img.scheduler.timesteps
    # the noise-to-signal ratio of each step: an image x + sigma * noise is that step's sample scaled by 1 / a
    alphas = img2img.scheduler.alphas_cumprod[timesteps]
    ratios = ((1 - alphas) / alphas).sqrt()
    for start in range(STEPS):
        calls = count_unet_calls(img2img.unet)
        run(img2img, image=digit(), noise_level=float(ratios[start]), guidance_scale=1.0)
        assert len(calls) == STEPS - start
        img2img.unet._forward_pre_hooks.clear()
    # deterministic whatever the generator: denoising draws no noise before its steps (DDIM draws none at all)
    img2img.scheduler = DDIMScheduler.from_config(img2img.scheduler.config)
    first, second = run(img2img, image=digit(), noise_level=0.4), run(img2img, image=digit(), noise_level=0.4, seed=7)
    np.testing.assert_array_equal(first, second)


def test_denoising_with_a_sigma_scheduler(img2img):
    img2img.scheduler = EulerDiscreteScheduler.from_config(img2img.scheduler.config)
    images = run(img2img, image=digit(), noise_level=0.4)
    assert np.isfinite(images).all()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strength": 1.5}, r"`strength` must be a number in \[0, 1\], but is 1.5"),
        ({"strength": -0.1}, r"`strength` must be a number in \[0, 1\]"),
        ({"strength": 0.1}, "`strength` 0.1 of 4 steps gives no denoising step: raise `strength` to at least 0.25"),
        ({"strength": 0.5, "noise_level": 0.2}, "were both given"),
        ({"noise_level": -1.0}, "`noise_level` must be a number >= 0"),
        ({"noise_level": 1e6}, "is beyond the schedule's maximum"),
        ({"image": None}, "`image` is required"),
        ({"image": np.zeros((8, 8, 4), np.uint8)}, r"\(H, W\) grey or \(H, W, 3\) RGB"),
        ({"image": [digit()] * 3}, "`image` is a list of 3, but `class_labels` has 2"),
        ({"class_labels": []}, "`class_labels` must name at least one class"),
    ],
)
def test_bad_input_is_rejected_before_any_denoising(img2img, change, message):
    calls = count_unet_calls(img2img.unet)
    with pytest.raises(ValueError, match=message):
        run(img2img, **{"image": digit(), **change})
    assert calls == []


def test_saved_img2img_pipeline_loads_with_and_without_diffkit(img2img, tmp_path):
    expected = run(img2img, image=digit(), strength=0.5)
    img2img.save_pretrained(tmp_path)
    loaded = ClassConditionalImg2ImgPipeline.from_pretrained(tmp_path)
    assert type(loaded) is ClassConditionalImg2ImgPipeline
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(loaded, image=digit(), strength=0.5), expected)
    assert_local_remote_code_needs_opt_in(tmp_path, ClassConditionalImg2ImgPipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert (
        type(remote).__name__ == "ClassConditionalImg2ImgPipeline"
        and type(remote) is not ClassConditionalImg2ImgPipeline
    )
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(remote, image=digit(), strength=0.5), expected)


@pytest.fixture
def unconditional(tiny_unet2d):
    base = UnconditionalImagePipeline(
        unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100, clip_sample=True)
    )
    pipe = UnconditionalImg2ImgPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return base, pipe


def run_unconditional(pipe, seed=0, **kwargs):
    kwargs = {"image": [digit(), 255 - digit()], "num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_unconditional_img2img_strength_and_every_scheduler(unconditional, scheduler):
    base, pipe = unconditional
    assert pipe.unet is base.unet and pipe.scheduler is base.scheduler
    pipe.scheduler = SCHEDULERS[scheduler](pipe.scheduler.config)
    calls = count_unet_calls(pipe.unet)
    images = run_unconditional(pipe, strength=0.5, num_images_per_image=2)
    assert images.shape == (4, SIZE, SIZE, 1) and np.isfinite(images).all()
    assert len(calls) == 2 * pipe.scheduler.order and set(calls) == {4}


def test_unconditional_strength_0_noise_level_0_and_denoising(unconditional):
    _, pipe = unconditional
    for kwargs in ({"strength": 0.0}, {"noise_level": 0.0}):
        images = run_unconditional(pipe, **kwargs)
        np.testing.assert_array_equal((images[0, ..., 0] * 255).round().astype(np.uint8), digit())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    np.testing.assert_array_equal(
        run_unconditional(pipe, noise_level=0.4), run_unconditional(pipe, noise_level=0.4, seed=3)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strength": 2.0}, r"`strength` must be a number in \[0, 1\]"),
        ({"strength": 0.2, "noise_level": 0.1}, "were both given"),
        ({"noise_level": 1e6}, "beyond the schedule's maximum"),
        ({"num_images_per_image": 0}, "`num_images_per_image` must be a positive integer"),
        ({"generator": [torch.Generator()] * 3}, "`generator` is a list of 3 generators, but 2 images"),
    ],
)
def test_unconditional_img2img_bad_input(unconditional, change, message):
    _, pipe = unconditional
    with pytest.raises(ValueError, match=message):
        pipe(**{"image": [digit(), digit()], "num_inference_steps": STEPS, **change})


def test_saved_unconditional_img2img_loads_as_remote_code(unconditional, tmp_path):
    _, pipe = unconditional
    expected = run_unconditional(pipe, strength=0.5)
    pipe.save_pretrained(tmp_path)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "UnconditionalImg2ImgPipeline" and type(remote) is not UnconditionalImg2ImgPipeline
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run_unconditional(remote, strength=0.5), expected, atol=1e-6)
