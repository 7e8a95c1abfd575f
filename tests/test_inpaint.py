"""ClassConditionalInpaintPipeline: class-guided inpainting on a trained class pipeline's UNet and scheduler."""

import logging

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from diffkit import ClassConditionalInpaintPipeline, UnconditionalImagePipeline, UnconditionalInpaintPipeline

from .test_pipelines import count_unet_calls, make_class_pipeline
from .utils import assert_local_remote_code_needs_opt_in

STEPS = 4
SIZE = 8
# The schedulers a user swaps in (DPM-Solver++ and UniPC with the thresholding pixel-space sampling needs).
SCHEDULERS = {
    "ddpm": lambda config: DDPMScheduler.from_config(config, clip_sample=True),
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpm++": lambda config: DPMSolverMultistepScheduler.from_config(config, thresholding=True, sample_max_value=1.0),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config, thresholding=True, sample_max_value=1.0),
    "euler": lambda config: EulerDiscreteScheduler.from_config(config),
}


@pytest.fixture
def base(tiny_condition_unet):
    return make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100, clip_sample=True))


@pytest.fixture
def inpaint(base):
    pipe = ClassConditionalInpaintPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def digit_and_bottom_half_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[SIZE // 2 :] = 255
    return image, mask


def run(pipe, seed=0, **kwargs):
    kwargs = {"class_labels": ["dog", 2], "num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_from_pipe_shares_the_very_same_modules_and_settings(base, inpaint):
    assert inpaint.unet is base.unet and inpaint.scheduler is base.scheduler
    for key in ("num_classes", "null_class_id", "id2label", "guidance_scale"):
        assert inpaint.config[key] == base.config[key]


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_known_pixels_come_back_exactly_with_every_scheduler(inpaint, scheduler):
    inpaint.scheduler = SCHEDULERS[scheduler](inpaint.scheduler.config)
    image, mask = digit_and_bottom_half_mask()
    completed = run(inpaint, image=image, mask_image=mask)
    assert completed.shape == (2, SIZE, SIZE, 1) and np.isfinite(completed).all()
    as_uint8 = (completed[..., 0] * 255).round().astype(np.uint8)
    keep = mask == 0
    for output in as_uint8:
        np.testing.assert_array_equal(output[keep], image[keep])
    # the filled half is generated, not copied
    assert not np.array_equal(as_uint8[0][~keep], image[~keep])


def test_a_mask_of_zeros_returns_the_input_and_warns(inpaint, caplog):
    image, _ = digit_and_bottom_half_mask()
    with caplog.at_level(logging.WARNING):
        completed = run(inpaint, image=image, mask_image=np.zeros_like(image))
    assert "nothing is filled" in caplog.text
    np.testing.assert_array_equal((completed[..., 0] * 255).round().astype(np.uint8), np.stack([image, image]))


def test_a_mask_of_ones_is_the_base_pipelines_generation(base, inpaint, caplog):
    image, _ = digit_and_bottom_half_mask()
    with caplog.at_level(logging.WARNING):
        completed = run(inpaint, image=image, mask_image=np.full_like(image, 255))
    assert "plain class-conditional generation" in caplog.text
    # the same noise, the same steps: nothing of the image is kept, and no random number is drawn on top
    np.testing.assert_array_equal(completed, run(base))


def test_guidance_identities(inpaint):
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    # scale 0: the unconditional branch alone, whatever the label
    by_label = [
        run(inpaint, image=image, mask_image=mask, class_labels=[label], guidance_scale=0.0) for label in (0, 2)
    ]
    np.testing.assert_array_equal(*by_label)
    assert calls == [1] * (2 * STEPS)
    calls.clear()
    # scale 1: the conditional branch alone; above 1: both branches in one batched pass
    run(inpaint, image=image, mask_image=mask, guidance_scale=1.0)
    assert calls == [2] * STEPS
    calls.clear()
    run(inpaint, image=image, mask_image=mask, guidance_scale=3.0)
    assert calls == [4] * STEPS


def test_images_as_pil_numpy_and_torch_give_the_same_completion(inpaint):
    image, mask = digit_and_bottom_half_mask()
    expected = run(inpaint, image=image, mask_image=mask)
    np.testing.assert_array_equal(
        run(inpaint, image=Image.fromarray(image), mask_image=Image.fromarray(mask)), expected
    )
    as_tensor = torch.from_numpy(image / 255.0).float()[None]
    np.testing.assert_array_equal(
        run(inpaint, image=as_tensor, mask_image=torch.from_numpy(mask / 255.0)[None]), expected
    )
    # a soft mask is binarised at 0.5
    soft = np.where(mask > 0, 0.6, 0.4)
    np.testing.assert_array_equal(run(inpaint, image=image, mask_image=soft), expected)


def test_one_image_per_label(inpaint):
    image, mask = digit_and_bottom_half_mask()
    other = 255 - image
    completed = run(inpaint, image=[image, other], mask_image=mask)
    keep = mask == 0
    np.testing.assert_array_equal((completed[1, ..., 0] * 255).round().astype(np.uint8)[keep], other[keep])


def test_an_rgb_photo_for_a_grey_model_becomes_grey_with_a_note(inpaint, caplog):
    image, mask = digit_and_bottom_half_mask()
    rgb = np.stack([image] * 3, axis=-1)
    with caplog.at_level(logging.INFO):
        completed = run(inpaint, image=rgb, mask_image=mask)
    assert "the model takes 1 channel, so it becomes grey" in caplog.text
    np.testing.assert_array_equal(completed, run(inpaint, image=image, mask_image=mask))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mask_image": np.zeros((4, 4), np.uint8)}, "`mask_image` is 4x4 but `image` is 8x8"),
        (
            {"image": np.zeros((8, 8, 4), np.uint8)},
            r"`image` has shape \(8, 8, 4\): pass \(H, W\) grey or \(H, W, 3\)",
        ),
        ({"image": np.zeros((8, 8, 2), np.uint8)}, r"a 2-channel array cannot be read"),
        ({"image": np.full((8, 8), 2.0)}, r"float images must be in \[0, 1\]"),
        ({"image": None}, "`image` is required"),
        ({"image": "digit.png"}, "`image` is a str; pass a PIL image"),
        ({"mask_image": [np.zeros((8, 8), np.uint8)] * 3}, "`mask_image` is a list of 3, but `class_labels` has 2"),
        ({"class_labels": ["unicorn"]}, "unknown label name 'unicorn'"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer"),
        ({"jump_n_sample": 0}, "`jump_n_sample` must be a positive integer, but is 0"),
        ({"jump_length": 2.5}, "`jump_length` must be a positive integer, but is 2.5"),
        ({"jump_n_sample": 2, "jump_length": STEPS}, f"`jump_length` {STEPS} leaves no step to jump back from"),
    ],
)
def test_bad_input_is_rejected_before_any_denoising(inpaint, change, message):
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    with pytest.raises(ValueError, match=message):
        run(inpaint, **{"image": image, "mask_image": mask, **change})
    assert calls == []


def test_saved_inpainting_pipeline_loads_with_and_without_diffkit(inpaint, tmp_path):
    image, mask = digit_and_bottom_half_mask()
    expected = run(inpaint, image=image, mask_image=mask)
    inpaint.save_pretrained(tmp_path)
    assert (tmp_path / "pipeline_class_conditional_inpaint.py").is_file()
    loaded = ClassConditionalInpaintPipeline.from_pretrained(tmp_path)
    assert type(loaded) is ClassConditionalInpaintPipeline
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(loaded, image=image, mask_image=mask), expected)
    assert_local_remote_code_needs_opt_in(tmp_path, ClassConditionalInpaintPipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "ClassConditionalInpaintPipeline"
    assert type(remote) is not ClassConditionalInpaintPipeline
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(remote, image=image, mask_image=mask), expected)


def test_jump_schedule_follows_repaint():
    # 6 steps, jumps of 2, 3 passes: after steps 4 and 6 (not after the first block), two more runs of the last two
    order = ClassConditionalInpaintPipeline.jump_schedule(6, 2, 3)
    assert order == [0, 1, 2, 3, 2, 3, 2, 3, 4, 5, 4, 5, 4, 5]
    assert len(order) == 6 + (3 - 1) * (6 - 2)
    assert ClassConditionalInpaintPipeline.jump_schedule(6, 2, 1) == list(range(6))
    # RePaint's documented setting: 250 steps, jumps of 10, 10 passes
    assert len(ClassConditionalInpaintPipeline.jump_schedule(250, 10, 10)) == 250 + 9 * 240


def test_jump_back_draws_from_the_forward_process(inpaint):
    inpaint.scheduler.set_timesteps(STEPS)
    timesteps = inpaint.scheduler.timesteps
    clean = torch.full((1, 1, 256, 256), 0.5)
    generator = torch.Generator().manual_seed(0)
    # from the clean image (past the last step) to the first step's level: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
    noised = inpaint.jump_back(clean, timesteps, STEPS, 0, generator)
    alpha = inpaint.scheduler.alphas_cumprod[timesteps[0]]
    assert abs(noised.mean() - alpha**0.5 * 0.5) < 0.01
    assert abs(noised.std() - (1 - alpha) ** 0.5) < 0.01
    # between two noise levels the ratio of the cumulative alphas scales the signal
    partly = inpaint.jump_back(clean, timesteps, 2, 1, generator)
    ratio = inpaint.scheduler.alphas_cumprod[timesteps[1]] / inpaint.scheduler.alphas_cumprod[timesteps[2]]
    assert abs(partly.mean() - ratio**0.5 * 0.5) < 0.01
    assert abs(partly.std() - (1 - ratio) ** 0.5) < 0.01


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_resampling_keeps_the_known_pixels_and_runs_the_repeated_steps(inpaint, scheduler):
    inpaint.scheduler = SCHEDULERS[scheduler](inpaint.scheduler.config)
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    plain = run(inpaint, image=image, mask_image=mask, guidance_scale=1.0)
    np.testing.assert_array_equal(
        plain, run(inpaint, image=image, mask_image=mask, guidance_scale=1.0, jump_n_sample=1)
    )
    calls.clear()
    resampled = run(inpaint, image=image, mask_image=mask, guidance_scale=1.0, jump_length=2, jump_n_sample=3)
    assert len(calls) == STEPS + 2 * (STEPS - 2)
    keep = mask == 0
    for output in (resampled[..., 0] * 255).round().astype(np.uint8):
        np.testing.assert_array_equal(output[keep], image[keep])
    assert not np.array_equal(resampled, plain)


@pytest.mark.parametrize("scheduler", ["dpm++", "unipc", "euler"])
def test_resampling_with_a_multistep_scheduler_is_refused(inpaint, scheduler):
    inpaint.scheduler = SCHEDULERS[scheduler](inpaint.scheduler.config)
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    with pytest.raises(ValueError, match="keeps a history of its past steps.*`DDPMScheduler`"):
        run(inpaint, image=image, mask_image=mask, jump_length=2, jump_n_sample=2)
    assert calls == []


@pytest.fixture
def unconditional(tiny_unet2d):
    base = UnconditionalImagePipeline(
        unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100, clip_sample=True)
    )
    base.set_progress_bar_config(disable=True)
    inpaint = UnconditionalInpaintPipeline.from_pipe(base)
    inpaint.set_progress_bar_config(disable=True)
    return base, inpaint


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_unconditional_inpainting_keeps_the_known_pixels(unconditional, scheduler):
    base, inpaint = unconditional
    assert inpaint.unet is base.unet and inpaint.scheduler is base.scheduler
    inpaint.scheduler = SCHEDULERS[scheduler](inpaint.scheduler.config)
    image, mask = digit_and_bottom_half_mask()
    other = 255 - image
    completed = inpaint(
        image=[image, other],
        mask_image=mask,
        num_images_per_image=2,
        num_inference_steps=STEPS,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert completed.shape == (4, SIZE, SIZE, 1)
    as_uint8 = (completed[..., 0] * 255).round().astype(np.uint8)
    keep = mask == 0
    for output, source in zip(as_uint8, [image, image, other, other]):
        np.testing.assert_array_equal(output[keep], source[keep])


def test_unconditional_mask_of_ones_is_generation_and_zeros_the_input(unconditional):
    base, inpaint = unconditional
    image, _ = digit_and_bottom_half_mask()
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    full = inpaint(
        image=image, mask_image=np.full_like(image, 255), generator=torch.Generator().manual_seed(0), **kwargs
    )
    generated = base(batch_size=1, generator=torch.Generator().manual_seed(0), **kwargs)
    np.testing.assert_array_equal(full.images, generated.images)
    empty = inpaint(image=image, mask_image=np.zeros_like(image), **kwargs).images
    np.testing.assert_array_equal((empty[0, ..., 0] * 255).round().astype(np.uint8), image)


def test_unconditional_resampling_keeps_the_known_pixels(unconditional):
    _, inpaint = unconditional
    image, mask = digit_and_bottom_half_mask()
    calls = count_unet_calls(inpaint.unet)
    kwargs = dict(image=image, mask_image=mask, num_inference_steps=STEPS, output_type="np")
    plain = inpaint(generator=torch.Generator().manual_seed(0), **kwargs).images
    calls.clear()
    resampled = inpaint(generator=torch.Generator().manual_seed(0), jump_length=2, jump_n_sample=2, **kwargs).images
    assert len(calls) == STEPS + (STEPS - 2)
    keep = mask == 0
    np.testing.assert_array_equal((resampled[0, ..., 0] * 255).round().astype(np.uint8)[keep], image[keep])
    assert not np.array_equal(resampled, plain)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"mask_image": [np.zeros((8, 8), np.uint8)] * 3}, "`mask_image` is a list of 3, but `image` holds 2"),
        ({"num_images_per_image": 0}, "`num_images_per_image` must be a positive integer"),
        ({"image": None}, "`image` is required"),
        ({"output_type": "jpg"}, "`output_type` must be one of"),
        ({"jump_n_sample": 2, "jump_length": 25}, "`jump_length` 25 leaves no step to jump back from"),
    ],
)
def test_unconditional_bad_input(unconditional, change, message):
    _, inpaint = unconditional
    image, mask = digit_and_bottom_half_mask()
    with pytest.raises(ValueError, match=message):
        inpaint(**{"image": [image, image], "mask_image": mask, **change})


def test_saved_unconditional_inpainting_pipeline_loads_as_remote_code(unconditional, tmp_path):
    _, inpaint = unconditional
    image, mask = digit_and_bottom_half_mask()
    kwargs = dict(image=image, mask_image=mask, num_inference_steps=STEPS, output_type="np")
    expected = inpaint(generator=torch.Generator().manual_seed(0), **kwargs).images
    inpaint.save_pretrained(tmp_path)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "UnconditionalInpaintPipeline" and type(remote) is not UnconditionalInpaintPipeline
    remote.set_progress_bar_config(disable=True)
    # the weights come back from safetensors identical; the sampled images agree to float32 rounding
    np.testing.assert_allclose(
        remote(generator=torch.Generator().manual_seed(0), **kwargs).images, expected, atol=1e-6
    )
