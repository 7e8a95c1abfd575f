"""TextConditionalInpaintPipeline and TextConditionalImg2ImgPipeline on a tiny random CLIP text encoder with CLIP's
real tokenizer."""

import logging

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from diffkit import TextConditionalImagePipeline, TextConditionalImg2ImgPipeline, TextConditionalInpaintPipeline

from .test_inpaint import SCHEDULERS, SIZE, digit_and_bottom_half_mask
from .test_pipelines import count_unet_calls
from .test_text_pipeline import MAX_TEXT_LENGTH, STEPS, clip_tokenizer, tiny_text_unet  # noqa: F401 (a fixture)
from .tiny_stable_diffusion import tiny_text_encoder
from .utils import assert_local_remote_code_needs_opt_in

PROMPTS = ["a handwritten seven", "the digit 3"]


def run(pipe, seed=0, **kwargs):
    kwargs = {"prompt": PROMPTS, "num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def as_uint8(images):
    return (images[..., 0] * 255).round().astype(np.uint8)


@pytest.fixture
def base(clip_tokenizer):  # noqa: F811
    torch.manual_seed(0)
    base = TextConditionalImagePipeline(
        unet=tiny_text_unet(),
        scheduler=SCHEDULERS["ddpm"]({"num_train_timesteps": 100}),
        text_encoder=tiny_text_encoder(),
        tokenizer=clip_tokenizer,
        max_text_length=MAX_TEXT_LENGTH,
        guidance_scale=3.0,
    )
    base.set_progress_bar_config(disable=True)
    return base


@pytest.fixture
def inpaint(base):
    inpaint = TextConditionalInpaintPipeline.from_pipe(base)
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


@pytest.fixture
def img2img(base):
    img2img = TextConditionalImg2ImgPipeline.from_pipe(base)
    img2img.set_progress_bar_config(disable=True)
    return img2img


def test_from_pipe_shares_the_very_same_modules_and_settings(base, inpaint, img2img):
    for task in (inpaint, img2img):
        for name in ("unet", "scheduler", "text_encoder", "tokenizer"):
            assert getattr(task, name) is getattr(base, name)
        assert task.config.max_text_length == base.config.max_text_length
        assert task.config.guidance_scale == base.config.guidance_scale


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_inpainting_keeps_the_known_pixels_with_every_scheduler(inpaint, scheduler):
    inpaint.scheduler = SCHEDULERS[scheduler](inpaint.scheduler.config)
    image, mask = digit_and_bottom_half_mask()
    completed = as_uint8(run(inpaint, image=image, mask_image=mask))
    keep = mask == 0
    for output in completed:
        np.testing.assert_array_equal(output[keep], image[keep])
    assert not np.array_equal(completed[0][~keep], image[~keep])


def test_inpainting_mask_of_ones_is_generation_and_zeros_the_input(base, inpaint, caplog):
    image, _ = digit_and_bottom_half_mask()
    with caplog.at_level(logging.WARNING):
        full = run(inpaint, image=image, mask_image=np.full_like(image, 255))
    assert "plain text-to-image generation" in caplog.text
    np.testing.assert_array_equal(full, run(base))
    with caplog.at_level(logging.WARNING):
        empty = run(inpaint, image=image, mask_image=np.zeros_like(image))
    assert "nothing is filled" in caplog.text
    np.testing.assert_array_equal(as_uint8(empty), np.stack([image, image]))


def test_inpainting_guidance_identities_and_negative_prompt(inpaint):
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    # scale 0: the empty prompt alone, whatever the prompt
    by_prompt = [run(inpaint, image=image, mask_image=mask, prompt=[p], guidance_scale=0.0) for p in PROMPTS]
    np.testing.assert_array_equal(*by_prompt)
    assert calls == [1] * (2 * STEPS)
    calls.clear()
    run(inpaint, image=image, mask_image=mask, guidance_scale=1.0)
    assert calls == [2] * STEPS
    calls.clear()
    guided = run(inpaint, image=image, mask_image=mask, guidance_scale=3.0)
    assert calls == [4] * STEPS
    negative = run(inpaint, image=image, mask_image=mask, guidance_scale=3.0, negative_prompt="a blurry digit")
    assert not np.array_equal(guided, negative)


def test_inpainting_with_resampling_keeps_the_known_pixels(inpaint):
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    completed = run(inpaint, image=image, mask_image=mask, guidance_scale=1.0, jump_length=1, jump_n_sample=2)
    assert len(calls) == STEPS + (STEPS - 1)
    for output in as_uint8(completed):
        np.testing.assert_array_equal(output[mask == 0], image[mask == 0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image": None}, "`image` is required"),
        ({"mask_image": [np.zeros((SIZE, SIZE), np.uint8)] * 3}, "`mask_image` is a list of 3, but `prompt` has 2"),
        ({"mask_image": np.zeros((4, 4), np.uint8)}, "`mask_image` is 4x4 but `image` is 8x8"),
        ({"image": np.zeros((SIZE, SIZE, 2), np.uint8)}, "a 2-channel array cannot be read"),
        ({"prompt": []}, "`prompt` must be a string or a non-empty list of strings"),
        ({"jump_n_sample": 2, "jump_length": STEPS}, "leaves no step to jump back from"),
    ],
)
def test_inpainting_bad_input_is_rejected_before_any_denoising(inpaint, change, message):
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    with pytest.raises(ValueError, match=message):
        run(inpaint, **{"image": image, "mask_image": mask, **change})
    assert calls == []


@pytest.mark.parametrize("task_class", [TextConditionalInpaintPipeline, TextConditionalImg2ImgPipeline])
def test_saved_text_editing_pipelines_load_with_and_without_diffkit(base, task_class, tmp_path):
    image, mask = digit_and_bottom_half_mask()
    task = task_class.from_pipe(base)
    task.set_progress_bar_config(disable=True)
    kwargs = {"image": image, "mask_image": mask} if task_class is TextConditionalInpaintPipeline else {"image": image}
    expected = run(task, **kwargs)
    task.save_pretrained(tmp_path)
    loaded = task_class.from_pretrained(tmp_path)
    assert type(loaded) is task_class
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded, **kwargs), expected, atol=1e-6)
    assert_local_remote_code_needs_opt_in(tmp_path, task_class)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == task_class.__name__ and type(remote) is not task_class
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(remote, **kwargs), expected, atol=1e-6)
    # and back to text-to-image, sharing the loaded modules
    text_to_image = TextConditionalImagePipeline.from_pipe(loaded)
    assert text_to_image.unet is loaded.unet and text_to_image.text_encoder is loaded.text_encoder


@pytest.mark.parametrize("strength, steps_run", [(1.0, STEPS), (0.67, 2), (0.34, 1)])
def test_img2img_strength_selects_the_last_part_of_the_schedule(img2img, strength, steps_run):
    image, _ = digit_and_bottom_half_mask()
    calls = count_unet_calls(img2img.unet)
    edited = run(img2img, image=image, strength=strength)
    assert calls == [4] * steps_run  # both guidance branches of both prompts, batched
    assert edited.shape == (2, SIZE, SIZE, 1) and np.isfinite(edited).all()


def test_img2img_strength_0_and_noise_level_0_return_the_input(img2img):
    image, _ = digit_and_bottom_half_mask()
    calls = count_unet_calls(img2img.unet)
    for kwargs in ({"strength": 0.0}, {"noise_level": 0.0}):
        np.testing.assert_array_equal(as_uint8(run(img2img, image=image, **kwargs)), np.stack([image, image]))
    assert calls == []


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_img2img_every_scheduler_edits_and_denoises(img2img, scheduler):
    img2img.scheduler = SCHEDULERS[scheduler](img2img.scheduler.config)
    image, _ = digit_and_bottom_half_mask()
    edited = run(img2img, image=image, strength=0.67)
    assert np.isfinite(edited).all() and not np.array_equal(edited[0], edited[1])
    assert np.isfinite(run(img2img, image=image, noise_level=0.4)).all()


def test_img2img_guidance_scale_zero_ignores_the_prompt(img2img):
    image, _ = digit_and_bottom_half_mask()
    by_prompt = [run(img2img, image=image, prompt=[p], guidance_scale=0.0, strength=0.67) for p in PROMPTS]
    np.testing.assert_array_equal(*by_prompt)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"strength": 1.5}, r"`strength` must be a number in \[0, 1\], but is 1.5"),
        ({"strength": 0.1}, f"`strength` 0.1 of {STEPS} steps gives no denoising step"),
        ({"strength": 0.5, "noise_level": 0.2}, "were both given"),
        ({"noise_level": -1.0}, "`noise_level` must be a number >= 0"),
        ({"noise_level": 1e6}, "is beyond the schedule's maximum"),
        ({"image": None}, "`image` is required"),
        ({"image": [np.zeros((SIZE, SIZE), np.uint8)] * 3}, "`image` is a list of 3, but `prompt` has 2"),
        ({"prompt": None}, "Pass `prompt`"),
    ],
)
def test_img2img_bad_input_is_rejected_before_any_denoising(img2img, change, message):
    image, _ = digit_and_bottom_half_mask()
    calls = count_unet_calls(img2img.unet)
    with pytest.raises(ValueError, match=message):
        run(img2img, **{"image": image, **change})
    assert calls == []
