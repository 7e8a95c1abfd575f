"""diffusers' own pipeline checks, written here for every diffkit pipeline (diffusers' `PipelineTesterMixin` lives in
its repository's tests, not in the package): `output_type="latent"`, the starting noise as `latents=`,
`num_images_per_prompt`, a callback that changes the guidance scale, `num_timesteps`, every output form taken back
as an input image, the text encoder alone, return_dict and save/load.

Each pipeline is built from tiny random components under a fixed seed (tests/conftest.py, tests/utils.py) and run
for a few steps on the CPU.
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from diffkit import (
    ClassConditionalImagePipeline,
    ClassConditionalImg2ImgPipeline,
    ClassConditionalInpaintPipeline,
    SuperResolutionPipeline,
    TextConditionalImagePipeline,
    TextConditionalImg2ImgPipeline,
    TextConditionalInpaintPipeline,
    UnconditionalImagePipeline,
    UnconditionalImg2ImgPipeline,
    UnconditionalInpaintPipeline,
)

from .test_text_pipeline import MAX_TEXT_LENGTH, tiny_text_unet
from .tiny_stable_diffusion import save_clip_tokenizer, tiny_text_encoder
from .utils import (
    NUM_TEST_CLASSES,
    TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG,
    TINY_CONDITION_UNET_CONFIG,
    TINY_LOW_RESOLUTION,
    TINY_UNET2D_CONFIG,
)

STEPS = 3
SIZE = 8
GUIDANCE_SCALE = 3.0

GENERATION = ["unconditional", "class", "text"]
EDITING = [f"{condition}_{task}" for condition in GENERATION for task in ("img2img", "inpaint")]
KINDS = [*GENERATION, *EDITING, "super_resolution"]
GUIDED = [kind for kind in KINDS if kind.startswith(("class", "text")) or kind == "super_resolution"]
PER_PROMPT = [kind for kind in KINDS if kind.startswith(("class", "unconditional"))]
TEXT = [kind for kind in KINDS if kind.startswith("text")]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    return save_clip_tokenizer(str(tmp_path_factory.mktemp("clip-tokenizer")))


def input_image_and_mask():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[SIZE // 2 :] = 255
    return image, mask


def build(kind, tokenizer_dir):
    """A tiny pipeline of `kind` and the arguments of one call (two images where the kind takes a condition)."""
    torch.manual_seed(0)
    scheduler = DDPMScheduler(num_train_timesteps=100, clip_sample=True)
    condition = kind.split("_")[0]
    if kind == "super_resolution":
        pipe = SuperResolutionPipeline(
            UNet2DConditionModel(**TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG),
            scheduler,
            low_resolution=TINY_LOW_RESOLUTION,
            num_classes=NUM_TEST_CLASSES,
            guidance_scale=GUIDANCE_SCALE,
        )
        low = np.random.default_rng(0).integers(0, 256, (TINY_LOW_RESOLUTION, TINY_LOW_RESOLUTION), dtype=np.uint8)
        call = {"image": low, "class_labels": [1]}
    elif condition == "unconditional":
        pipe = UnconditionalImagePipeline(unet=UNet2DModel(**TINY_UNET2D_CONFIG), scheduler=scheduler)
        call = {}
    elif condition == "class":
        pipe = ClassConditionalImagePipeline(
            unet=UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG),
            scheduler=scheduler,
            num_classes=NUM_TEST_CLASSES,
            guidance_scale=GUIDANCE_SCALE,
        )
        call = {"class_labels": [0, 2]}
    else:
        pipe = TextConditionalImagePipeline(
            unet=tiny_text_unet(),
            scheduler=scheduler,
            text_encoder=tiny_text_encoder(),
            tokenizer=tokenizer_dir,
            max_text_length=MAX_TEXT_LENGTH,
            guidance_scale=GUIDANCE_SCALE,
        )
        call = {"prompt": ["a seven", "a three"]}
    task = kind.split("_")[-1]
    image, mask = input_image_and_mask()
    if task == "img2img":
        pipe = {
            "unconditional": UnconditionalImg2ImgPipeline,
            "class": ClassConditionalImg2ImgPipeline,
            "text": TextConditionalImg2ImgPipeline,
        }[condition].from_pipe(pipe)
        call = {**call, "image": image, "strength": 0.8}
    elif task == "inpaint":
        pipe = {
            "unconditional": UnconditionalInpaintPipeline,
            "class": ClassConditionalInpaintPipeline,
            "text": TextConditionalInpaintPipeline,
        }[condition].from_pipe(pipe)
        call = {**call, "image": image, "mask_image": mask}
    pipe.set_progress_bar_config(disable=True)
    return pipe, {"num_inference_steps": STEPS, **call}


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def run(pipe, call, seed=0, **kwargs):
    return pipe(**{**call, "generator": torch.Generator().manual_seed(seed), **kwargs}).images


def test_output_type_latent_is_the_final_sample_before_post_processing(kind, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)
    latent = run(pipe, call, output_type="latent")
    pt = run(pipe, call, output_type="pt")
    assert isinstance(latent, torch.Tensor) and latent.shape == pt.shape
    # an image-space model's sample is in [-1, 1]: "pt" is the same sample mapped to [0, 1]
    torch.testing.assert_close((latent / 2 + 0.5).clamp(0, 1), pt)


@pytest.mark.parametrize("kind", GENERATION)
def test_latents_are_the_starting_noise(kind, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # deterministic steps: only the noise varies
    batch_size = len(run(pipe, call, output_type="pt"))
    shape = (batch_size, pipe.unet.config.in_channels, SIZE, SIZE)
    noise = randn_tensor(shape, generator=torch.Generator().manual_seed(0))
    from_generator = run(pipe, call, seed=0, output_type="np")
    from_latents = run(pipe, call, seed=123, latents=noise, output_type="np")
    np.testing.assert_array_equal(from_generator, from_latents)
    with pytest.raises(ValueError, match="`latents` has shape"):
        run(pipe, call, latents=noise[:, :, :4])


@pytest.mark.parametrize("kind", PER_PROMPT)
def test_num_images_per_prompt_is_taken_as_in_diffusers(kind, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)
    one = run(pipe, call, output_type="np")
    two = run(pipe, call, output_type="np", num_images_per_prompt=2)
    assert len(two) == 2 * len(one)


@pytest.mark.parametrize("kind", GUIDED)
def test_a_callback_that_changes_the_guidance_scale_changes_the_images(kind, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)

    def set_guidance(scale):
        def callback(pipeline, step_index, timestep, callback_kwargs):
            if step_index == 0:
                pipeline._guidance_scale = scale  # diffusers' documented recipe for dynamic guidance
            return callback_kwargs

        return callback

    plain = run(pipe, call, output_type="np")
    unchanged = run(pipe, call, output_type="np", callback_on_step_end=set_guidance(GUIDANCE_SCALE))
    changed = run(pipe, call, output_type="np", callback_on_step_end=set_guidance(GUIDANCE_SCALE * 3))
    np.testing.assert_array_equal(plain, unchanged)
    assert np.abs(plain - changed).max() > 1e-3
    assert pipe.guidance_scale == GUIDANCE_SCALE * 3


def test_num_timesteps_and_the_callback_tensor_inputs(kind, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)
    seen = []

    def callback(pipeline, step_index, timestep, callback_kwargs):
        assert set(callback_kwargs) == set(pipeline._callback_tensor_inputs)
        seen.append(step_index)
        return callback_kwargs

    run(pipe, call, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    assert isinstance(pipe.num_timesteps, int) and pipe.num_timesteps >= len(set(seen)) > 0


@pytest.mark.parametrize("kind", EDITING)
@pytest.mark.parametrize("output_type", ["np", "pt", "pil"])
def test_every_output_form_is_taken_back_as_the_input_image(kind, output_type, clip_tokenizer):
    pipe, call = build(kind, clip_tokenizer)
    base, base_call = build(kind.rsplit("_", 1)[0], clip_tokenizer)
    produced = run(base, {**base_call, **({"class_labels": [1]} if "class_labels" in base_call else {})},
                   output_type=output_type)  # fmt: skip
    image = produced[:1] if output_type != "pil" else produced[0]
    reference = run(base, {**base_call, **({"class_labels": [1]} if "class_labels" in base_call else {})},
                    output_type="pt")[:1]  # fmt: skip
    edited = run(pipe, {**call, "image": image}, output_type="np")
    from_tensor = run(pipe, {**call, "image": reference}, output_type="np")
    np.testing.assert_allclose(edited, from_tensor, atol=1 / 255)


@pytest.mark.parametrize("kind", [kind for kind in TEXT if kind == "text"])
def test_encode_prompt_works_with_the_text_encoder_alone(kind, clip_tokenizer):
    pipe, _ = build(kind, clip_tokenizer)
    encoder_only = TextConditionalImagePipeline(
        unet=None,
        scheduler=pipe.scheduler,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        max_text_length=MAX_TEXT_LENGTH,
    )
    embeds, negative = encoder_only.encode_prompt(["a seven"], torch.device("cpu"), 1, True)
    assert embeds.dtype == pipe.text_encoder.dtype and negative.shape == embeds.shape


def test_return_dict_and_save_load(kind, clip_tokenizer, tmp_path):
    pipe, call = build(kind, clip_tokenizer)
    images = run(pipe, call, output_type="np")
    (as_tuple,) = pipe(**{**call, "generator": torch.Generator().manual_seed(0)}, output_type="np", return_dict=False)
    np.testing.assert_array_equal(images, as_tuple)
    pipe.save_pretrained(tmp_path)
    loaded = type(pipe).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    # diffusers' own tolerance for a save/load round trip (the loaded weights' memory layout may differ)
    np.testing.assert_allclose(images, run(loaded, call, output_type="np"), atol=1e-4)
