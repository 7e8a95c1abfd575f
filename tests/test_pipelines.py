import math

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
)

from diffkit import ClassConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.pipelines.pipeline_class_conditional_image import one_hot_label_states

from .utils import NUM_TEST_CLASSES, assert_local_remote_code_needs_opt_in

STEPS = 3
ID2LABEL = {0: "cat", 1: "dog", 2: "bird"}


def count_unet_calls(unet):
    """Record the batch size of every UNet forward pass."""
    batch_sizes = []
    unet.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(args[0].shape[0]), with_kwargs=True)
    return batch_sizes


def make_class_pipeline(unet, scheduler=None, guidance_scale=3.0):
    pipe = ClassConditionalImagePipeline(
        unet=unet,
        scheduler=scheduler or DDPMScheduler(num_train_timesteps=100),
        num_classes=NUM_TEST_CLASSES,
        id2label=ID2LABEL,
        guidance_scale=guidance_scale,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def manual_sampling(unet, scheduler, class_ids, guidance_scale, steps, seed):
    """The guided sampling loop written out by hand, each branch in its own forward pass."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((len(class_ids), 1, 8, 8), generator=generator)
    cond = one_hot_label_states(torch.tensor(class_ids), NUM_TEST_CLASSES, torch.float32)
    uncond = one_hot_label_states(torch.full((len(class_ids),), NUM_TEST_CLASSES), NUM_TEST_CLASSES, torch.float32)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps_cond = unet(latents, t, encoder_hidden_states=cond).sample
            eps_uncond = unet(latents, t, encoder_hidden_states=uncond).sample
            if guidance_scale is None:  # unconditional
                eps = eps_uncond
            elif guidance_scale == "cond":
                eps = eps_cond
            else:
                eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents, generator=generator).prev_sample
    return (latents / 2 + 0.5).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------------------
# UnconditionalImagePipeline


def test_unconditional_matches_ddpm_pipeline(tiny_unet2d):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    ours = UnconditionalImagePipeline(unet=tiny_unet2d, scheduler=scheduler)
    reference = DDPMPipeline(unet=tiny_unet2d, scheduler=scheduler)
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=2, num_inference_steps=STEPS, output_type="np")
    expected = reference(generator=torch.Generator().manual_seed(0), **kwargs).images
    actual = ours(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert actual.shape == (2, 8, 8, 1)
    np.testing.assert_array_equal(actual, expected)
    # and a different seed gives different images, so the equality above is not vacuous
    other = ours(generator=torch.Generator().manual_seed(1), **kwargs).images
    assert np.abs(other - actual).max() > 1e-3


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
def test_unconditional_scheduler_swap_honours_steps(tiny_unet2d, scheduler_class):
    scheduler = scheduler_class.from_config(DDPMScheduler(num_train_timesteps=100).config)
    pipe = UnconditionalImagePipeline(unet=tiny_unet2d, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    calls = count_unet_calls(tiny_unet2d)
    images = pipe(
        batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert calls == [2, 2, 2, 2]
    assert np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1


def test_unconditional_save_load_round_trip(tiny_unet2d, tmp_path):
    pipe = UnconditionalImagePipeline(unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    before = pipe(
        batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UnconditionalImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(
        batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    np.testing.assert_array_equal(before.images, after.images)
    assert type(loaded) is UnconditionalImagePipeline  # the installed class, not the copy saved beside the weights

    # the saved folder also loads as remote code, which must be asked for
    assert_local_remote_code_needs_opt_in(tmp_path, UnconditionalImagePipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "UnconditionalImagePipeline" and type(remote) is not UnconditionalImagePipeline
    remote.set_progress_bar_config(disable=True)
    from_remote_code = remote(
        batch_size=2, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    np.testing.assert_array_equal(before.images, from_remote_code.images)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "`batch_size`"),
        ({"num_inference_steps": 0}, "`num_inference_steps`"),
        ({"generator": [torch.Generator()] * 3, "batch_size": 2}, "`generator`"),
        ({"output_type": "jpg"}, "`output_type`"),
    ],
)
def test_unconditional_check_inputs(tiny_unet2d, kwargs, message):
    pipe = UnconditionalImagePipeline(unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100))
    with pytest.raises(ValueError, match=message):
        pipe(**{"num_inference_steps": STEPS, **kwargs})


# ----------------------------------------------------------------------------------------------------------------
# ClassConditionalImagePipeline


def test_output_types_and_label_order(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    common = dict(class_labels=[2, "cat"], num_images_per_label=2, num_inference_steps=STEPS)
    pil = pipe(generator=torch.Generator().manual_seed(0), **common).images
    np_images = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **common).images
    pt_images = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **common).images
    assert len(pil) == 4 and pil[0].size == (8, 8) and pil[0].mode == "L"
    assert np_images.shape == (4, 8, 8, 1) and pt_images.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(pt_images.permute(0, 2, 3, 1).numpy(), np_images)
    # images come label by label: [bird, bird, cat, cat], identical to asking by id
    by_id = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **{**common, "class_labels": [2, 0]})
    np.testing.assert_array_equal(by_id.images, np_images)


def test_guidance_scale_one_is_the_conditional_branch_alone(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    calls = count_unet_calls(tiny_condition_unet)
    images = pipe(
        class_labels=[0, 1],
        guidance_scale=1.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert calls == [2] * STEPS  # the unconditional branch is skipped
    expected = manual_sampling(tiny_condition_unet, pipe.scheduler, [0, 1], "cond", STEPS, seed=0)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)


def test_guidance_scale_zero_is_the_unconditional_branch_alone(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    calls = count_unet_calls(tiny_condition_unet)
    images = pipe(
        class_labels=[0, 1],
        guidance_scale=0.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert calls == [2] * STEPS
    expected = manual_sampling(tiny_condition_unet, pipe.scheduler, [0, 1], None, STEPS, seed=0)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    # with no label information, the label asked for does not matter
    other = pipe(
        class_labels=[2, 2],
        guidance_scale=0.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    torch.testing.assert_close(images, other, rtol=0, atol=1e-6)


def test_guidance_combines_both_branches_in_one_batched_pass(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    calls = count_unet_calls(tiny_condition_unet)
    images = pipe(
        class_labels=[0, 1],
        guidance_scale=3.0,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert calls == [4] * STEPS  # [uncond, cond] in one forward pass of twice the batch
    expected = manual_sampling(tiny_condition_unet, pipe.scheduler, [0, 1], 3.0, STEPS, seed=0)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-5)
    conditional_only = manual_sampling(tiny_condition_unet, pipe.scheduler, [0, 1], "cond", STEPS, seed=0)
    assert (images - conditional_only).abs().max() > 1e-4


def test_default_guidance_scale_comes_from_the_config(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet, guidance_scale=1.0)
    calls = count_unet_calls(tiny_condition_unet)
    pipe(class_labels=[0], num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert calls == [1] * STEPS


def test_class_save_load_round_trip(tiny_condition_unet, tmp_path):
    pipe = make_class_pipeline(tiny_condition_unet, guidance_scale=2.5)
    kwargs = dict(class_labels=["dog", 2], num_inference_steps=STEPS, output_type="np")
    before = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.save_pretrained(tmp_path)
    loaded = ClassConditionalImagePipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    after = loaded(generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_array_equal(before, after)
    assert loaded.config.num_classes == NUM_TEST_CLASSES
    assert loaded.config.null_class_id == NUM_TEST_CLASSES
    assert loaded.config.guidance_scale == 2.5
    assert loaded.config.id2label == {"0": "cat", "1": "dog", "2": "bird"}
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert type(loaded) is ClassConditionalImagePipeline  # the installed class, not the copy saved beside the weights

    # the saved folder also loads as remote code, which must be asked for
    assert_local_remote_code_needs_opt_in(tmp_path, ClassConditionalImagePipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == "ClassConditionalImagePipeline"
    assert type(remote) is not ClassConditionalImagePipeline
    remote.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(before, remote(generator=torch.Generator().manual_seed(0), **kwargs).images)


@pytest.mark.parametrize(
    "scheduler_class", [DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler]
)
def test_class_scheduler_swap(tiny_condition_unet, scheduler_class):
    pipe = make_class_pipeline(tiny_condition_unet)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    calls = count_unet_calls(tiny_condition_unet)
    images = pipe(
        class_labels=[0], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    assert calls == [2] * 4
    assert np.isfinite(images).all()


def test_callback_on_step_end_sees_and_replaces_latents(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    seen = []

    def callback(pipeline, step, timestep, callback_kwargs):
        seen.append(step)
        return {"latents": torch.zeros_like(callback_kwargs["latents"])}

    images = pipe(class_labels=[0], num_inference_steps=STEPS, callback_on_step_end=callback, output_type="np").images
    assert seen == list(range(STEPS))
    np.testing.assert_array_equal(images, np.full_like(images, 0.5))  # zero latents decode to mid grey


def test_generator_list_gives_per_image_reproducibility(tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet)
    kwargs = dict(num_inference_steps=STEPS, output_type="np")
    pair = pipe(class_labels=[0, 1], generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **kwargs).images
    single = pipe(class_labels=[1], generator=[torch.Generator().manual_seed(6)], **kwargs).images
    np.testing.assert_allclose(pair[1], single[0], atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": ["horse"]}, "unknown label name 'horse'"),
        ({"class_labels": [3]}, "label id 3, which is out of range"),
        ({"class_labels": [-1]}, "label id -1, which is out of range"),
        ({"class_labels": [1.5]}, "`class_labels` contains 1.5"),
        ({"class_labels": []}, "`class_labels` must name at least one class"),
        ({"num_inference_steps": 0}, "`num_inference_steps` must be a positive integer, but is 0"),
        ({"guidance_scale": -1.0}, "`guidance_scale` must be a finite number >= 0, but is -1.0"),
        ({"guidance_scale": math.nan}, "`guidance_scale` must be a finite number >= 0, but is nan"),
        ({"guidance_scale": math.inf}, "`guidance_scale` must be a finite number >= 0, but is inf"),
        ({"generator": [torch.Generator()] * 3}, "`generator` is a list of 3 generators, but 2 images"),
        ({"output_type": "jpg"}, "`output_type` must be one of"),
        ({"num_images_per_label": 0}, "`num_images_per_label` must be a positive integer"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "`callback_on_step_end_tensor_inputs`"),
    ],
)
def test_class_check_inputs(tiny_condition_unet, kwargs, message):
    pipe = make_class_pipeline(tiny_condition_unet)
    calls = count_unet_calls(tiny_condition_unet)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pipe(**{"class_labels": [0, 1], "num_inference_steps": STEPS, **kwargs})
    assert calls == []  # rejected before any work


@pytest.mark.parametrize("use_clipped_model_output, same", [(True, True), (False, False)])
def test_ddim_steps_with_the_noise_that_matches_its_clipped_clean_image(
    tiny_condition_unet, use_clipped_model_output, same
):
    # A narrow clip range makes clipping bite at every step, so the two ways of stepping give different images.
    pipe = make_class_pipeline(tiny_condition_unet)
    pipe.scheduler = DDIMScheduler(num_train_timesteps=100, clip_sample=True, clip_sample_range=0.1)
    kwargs = dict(class_labels=[0, 1], num_inference_steps=STEPS, guidance_scale=3.0, output_type="np")
    images = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images

    step = pipe.scheduler.step
    pipe.scheduler.step = lambda *args, **step_kwargs: step(
        *args, **{**step_kwargs, "use_clipped_model_output": use_clipped_model_output}
    )
    forced = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.array_equal(images, forced) == same
