"""The pipelines with a `vae` (latent diffusion): they denoise latents of `unet.config.sample_size`, decode them with
the VAE's scaling, encode the images they edit, inpaint on the latent grid and paste the known pixels back, and save
and load with the VAE, through diffkit and as remote code."""

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DiffusionPipeline, UNet2DConditionModel, UNet2DModel
from PIL import Image

from diffkit import (
    ClassConditionalImagePipeline,
    ClassConditionalImg2ImgPipeline,
    ClassConditionalInpaintPipeline,
    TextConditionalImagePipeline,
    TextConditionalInpaintPipeline,
    UnconditionalImagePipeline,
    UnconditionalImg2ImgPipeline,
    UnconditionalInpaintPipeline,
)

from .utils import (
    NUM_TEST_CLASSES,
    TINY_CONDITION_UNET_CONFIG,
    TINY_UNET2D_CONFIG,
    assert_local_remote_code_needs_opt_in,
)

LATENT_CHANNELS = 2
LATENT_SIDE = 8
# Two encoder blocks: the VAE halves each side once, so 8x8 latents decode to 16x16 images.
IMAGE_SIDE = 16
SCALING_FACTOR, SHIFT_FACTOR = 0.7, 0.1


def tiny_vae(in_channels=1, seed=0):
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=IMAGE_SIDE,
        scaling_factor=SCALING_FACTOR,
        shift_factor=SHIFT_FACTOR,
    ).eval()


def latent_config(config):
    return {**config, "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "sample_size": LATENT_SIDE}


@pytest.fixture
def class_pipe():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**latent_config(TINY_CONDITION_UNET_CONFIG)).eval()
    pipe = ClassConditionalImagePipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50), vae=tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def unconditional_pipe():
    torch.manual_seed(0)
    unet = UNet2DModel(**latent_config(TINY_UNET2D_CONFIG)).eval()
    pipe = UnconditionalImagePipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=50), vae=tiny_vae())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def digit(side=IMAGE_SIDE, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_a_latent_pipeline_decodes_its_final_latents_with_the_vae_scaling(class_pipe):
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    images = class_pipe(
        class_labels=[0, 2],
        num_inference_steps=3,
        generator=generator(),
        output_type="pt",
        callback_on_step_end=keep_latents,
    ).images
    # the UNet denoised latents of its own sample size, and the images are the VAE's decoding of them
    assert final["latents"].shape == (2, LATENT_CHANNELS, LATENT_SIDE, LATENT_SIDE)
    assert images.shape == (2, 1, IMAGE_SIDE, IMAGE_SIDE)
    with torch.no_grad():
        decoded = class_pipe.vae.decode(final["latents"] / SCALING_FACTOR + SHIFT_FACTOR).sample
    torch.testing.assert_close(images, (decoded / 2 + 0.5).clamp(0, 1))
    pil = class_pipe(class_labels=[1], num_inference_steps=2, generator=generator()).images[0]
    assert pil.size == (IMAGE_SIDE, IMAGE_SIDE) and pil.mode == "L"


def test_unconditional_and_text_pipelines_take_a_vae(unconditional_pipe, tiny_clip_folder):
    images = unconditional_pipe(batch_size=2, num_inference_steps=2, generator=generator(), output_type="np").images
    assert images.shape == (2, IMAGE_SIDE, IMAGE_SIDE, 1)
    from transformers import AutoTokenizer, CLIPTextModel

    text_encoder = CLIPTextModel.from_pretrained(tiny_clip_folder)
    torch.manual_seed(0)
    config = latent_config(TINY_CONDITION_UNET_CONFIG)
    config.update(cross_attention_dim=text_encoder.config.hidden_size, encoder_hid_dim=None, encoder_hid_dim_type=None)
    text_pipe = TextConditionalImagePipeline(
        unet=UNet2DConditionModel(**config).eval(),
        scheduler=DDPMScheduler(num_train_timesteps=50),
        text_encoder=text_encoder,
        tokenizer=AutoTokenizer.from_pretrained(tiny_clip_folder),
        max_text_length=8,
        vae=tiny_vae(),
    )
    text_pipe.set_progress_bar_config(disable=True)
    images = text_pipe(prompt=["a seven"], num_inference_steps=2, generator=generator(), output_type="pt").images
    assert images.shape == (1, 1, IMAGE_SIDE, IMAGE_SIDE)


def test_a_latent_pipeline_saves_and_loads_with_its_vae_through_diffkit_and_as_remote_code(class_pipe, tmp_path):
    expected = class_pipe(class_labels=[2], num_inference_steps=2, generator=generator(), output_type="np").images
    class_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = ClassConditionalImagePipeline.from_pretrained(tmp_path)
    assert loaded.vae.config.scaling_factor == SCALING_FACTOR and loaded.vae.config.shift_factor == SHIFT_FACTOR
    loaded.set_progress_bar_config(disable=True)
    images = loaded(class_labels=[2], num_inference_steps=2, generator=generator(), output_type="np").images
    np.testing.assert_array_equal(images, expected)
    assert_local_remote_code_needs_opt_in(tmp_path, ClassConditionalImagePipeline)
    remote = DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(remote) is not ClassConditionalImagePipeline and type(remote.vae) is AutoencoderKL
    remote.set_progress_bar_config(disable=True)
    images = remote(class_labels=[2], num_inference_steps=2, generator=generator(), output_type="np").images
    np.testing.assert_array_equal(images, expected)


def test_a_pixel_folder_saved_before_the_vae_component_existed_still_loads(tmp_path):
    torch.manual_seed(0)
    pipe = UnconditionalImagePipeline(unet=UNet2DModel(**TINY_UNET2D_CONFIG), scheduler=DDPMScheduler())
    pipe.save_pretrained(tmp_path)
    model_index = json.loads((tmp_path / "model_index.json").read_text())
    assert model_index["vae"] == [None, None] and not (tmp_path / "vae").exists()
    del model_index["vae"]  # as the folders of earlier releases were written
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    loaded = UnconditionalImagePipeline.from_pretrained(tmp_path)
    assert loaded.vae is None
    loaded.set_progress_bar_config(disable=True)
    assert loaded(num_inference_steps=2, generator=generator()).images[0].size == (8, 8)


def test_latent_img2img_encodes_the_image_and_refuses_pixel_denoising(class_pipe, unconditional_pipe):
    img2img = ClassConditionalImg2ImgPipeline.from_pipe(class_pipe)
    assert img2img.vae is class_pipe.vae and img2img.image_size() == (IMAGE_SIDE, IMAGE_SIDE)
    # strength 0 runs no step: the result is the VAE's reconstruction of the image
    kept = img2img(image=digit(), class_labels=[1], strength=0.0, output_type="pt").images
    with torch.no_grad():
        pixels = img2img.prepare_image(digit())
        reconstruction = img2img.decode_latents(img2img.encode_images(pixels))
    torch.testing.assert_close(kept, (reconstruction / 2 + 0.5).clamp(0, 1))
    edited = img2img(image=digit(), class_labels=[1], strength=0.6, num_inference_steps=5, generator=generator())
    assert edited.images[0].size == (IMAGE_SIDE, IMAGE_SIDE)
    # an image of another size is resized to the model's image size, not its latent size
    larger = img2img(image=digit(side=24), class_labels=[1], strength=0.0, output_type="pt").images
    assert larger.shape[-2:] == (IMAGE_SIDE, IMAGE_SIDE)
    with pytest.raises(ValueError, match="`noise_level` 0.1 removes noise from pixels, which this latent model"):
        img2img(image=digit(), class_labels=[1], noise_level=0.1)
    unconditional = UnconditionalImg2ImgPipeline.from_pipe(unconditional_pipe)
    images = unconditional(image=digit(), strength=0.5, num_inference_steps=4, generator=generator()).images
    assert images[0].size == (IMAGE_SIDE, IMAGE_SIDE)


@pytest.mark.parametrize("jump_n_sample", [1, 2])
def test_latent_inpainting_returns_the_known_pixels_exactly(class_pipe, jump_n_sample):
    inpaint = ClassConditionalInpaintPipeline.from_pipe(class_pipe)
    mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    mask[3:9, 5:12] = 255
    images = inpaint(
        image=digit(),
        mask_image=Image.fromarray(mask),
        class_labels=[0, 2],
        num_inference_steps=4,
        jump_length=2,
        jump_n_sample=jump_n_sample,
        generator=generator(),
        output_type="np",
    ).images
    original = np.asarray(digit(), dtype=np.float32)[:, :, None] / 255
    keep = mask == 0
    np.testing.assert_allclose(images[:, keep], np.broadcast_to(original[keep], images[:, keep].shape), atol=1e-6)
    # the filled part is generated, not the input
    assert np.abs(images[:, ~keep] - original[~keep]).mean() > 0.05


def test_the_latent_mask_fills_every_latent_cell_that_holds_a_pixel_to_fill(class_pipe):
    inpaint = ClassConditionalInpaintPipeline.from_pipe(class_pipe)
    mask = torch.zeros(1, 1, IMAGE_SIDE, IMAGE_SIDE)
    mask[0, 0, 5, 9] = 1  # one pixel: the latent cell (2, 4) of the 2x2 patches
    latent_mask = inpaint.latent_mask(mask)
    assert latent_mask.shape == (1, 1, LATENT_SIDE, LATENT_SIDE)
    assert latent_mask.sum() == 1 and latent_mask[0, 0, 2, 4] == 1


def test_latent_text_and_unconditional_inpainting_keep_the_known_pixels(unconditional_pipe):
    inpaint = UnconditionalInpaintPipeline.from_pipe(unconditional_pipe)
    mask = np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    mask[:, :6] = 255
    images = inpaint(
        image=digit(), mask_image=Image.fromarray(mask), num_inference_steps=3, generator=generator(), output_type="np"
    ).images
    original = np.asarray(digit(), dtype=np.float32) / 255
    np.testing.assert_allclose(images[0, :, 6:, 0], original[:, 6:], atol=1e-6)
    assert TextConditionalInpaintPipeline._optional_components == ["vae"]


def test_a_vae_does_not_change_a_pipeline_without_one(tiny_condition_unet):
    """The pixel path of every pipeline is the one without `vae`: registering none leaves its images unchanged."""
    scheduler = DDPMScheduler(num_train_timesteps=50)
    pipe = ClassConditionalImagePipeline(unet=tiny_condition_unet, scheduler=scheduler)
    assert pipe.vae is None
    pipe.set_progress_bar_config(disable=True)
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    images = pipe(
        class_labels=[0],
        num_inference_steps=2,
        generator=generator(),
        output_type="pt",
        callback_on_step_end=keep_latents,
    ).images
    torch.testing.assert_close(images, (final["latents"] / 2 + 0.5).clamp(0, 1))
    assert NUM_TEST_CLASSES == pipe.config.num_classes


def test_the_denoising_film_shows_decoded_images_of_a_latent_model(class_pipe):
    from diffkit import DenoisingFilm

    film = DenoisingFilm(frame_scale=1)
    images = class_pipe(
        class_labels=[0],
        num_inference_steps=3,
        generator=generator(),
        output_type="pt",
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    ).images
    assert [tuple(frame.shape) for frame in film.frames] == [(1, 1, IMAGE_SIDE, IMAGE_SIDE)] * 3
    assert film.strip().size == (3 * IMAGE_SIDE, IMAGE_SIDE)
    # DDPM's last estimate is the final sample: the last frame is the image itself
    torch.testing.assert_close(film.frames[-1], images)


def test_diffkit_edit_takes_a_latent_folder_and_refuses_to_denoise_before_loading(class_pipe, tmp_path, monkeypatch):
    from diffkit.cli.edit import main

    class_pipe.save_pretrained(tmp_path / "model")
    digit(side=12).save(tmp_path / "digit.png")  # another size: resized to the model's 16 px
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[6:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--pipeline", str(tmp_path / "model"), "--image", str(tmp_path / "digit.png"), "--steps", "2"]
    main(["inpaint", *common, "--mask", str(tmp_path / "mask.png"), "--class", "1", "--out", str(tmp_path / "out")])
    main(["img2img", *common, "--class", "1", "--strength", "0.5", "--out", str(tmp_path / "out")])
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == ["img2img-1-seed0-0.png", "inpaint-1-seed0-0.png"]
    assert Image.open(tmp_path / "out" / "inpaint-1-seed0-0.png").size == (IMAGE_SIDE, IMAGE_SIDE)
    loads = []
    monkeypatch.setattr(ClassConditionalImagePipeline, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match="`denoise` removes pixel noise, which `--model` .* is a latent model"):
        main(["denoise", *common, "--class", "1", "--noise_level", "0.2", "--out", str(tmp_path / "out")])
    assert loads == []


def test_the_web_demo_serves_a_latent_model_without_its_denoise_task(class_pipe, tmp_path):
    from gradio_client import Client, handle_file

    from diffkit.demo import SAVED_SAMPLER, build_demo

    from .utils import free_port

    demo = build_demo({"latent digits": class_pipe}, max_images=4).queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        job = client.submit(["1"], 2, 3.0, 3, SAVED_SAMPLER, 0, True, api_name="/generate_latent_digits")
        gallery, info = job.result()
        assert info.startswith("2 images of 16x16")
        first_preview = job.outputs()[0][0]  # the predicted clean images, decoded: pixels, not latents
        assert np.asarray(Image.open(first_preview[0]["image"])).shape == (IMAGE_SIDE, IMAGE_SIDE)
        digit().save(tmp_path / "digit.png")
        layer = np.zeros((IMAGE_SIDE, IMAGE_SIDE, 4), dtype=np.uint8)
        layer[8:] = 255
        Image.fromarray(layer, "RGBA").save(tmp_path / "painted.png")
        background = handle_file(str(tmp_path / "digit.png"))
        editor = {
            "background": background,
            "layers": [handle_file(str(tmp_path / "painted.png"))],
            "composite": background,
        }
        request = (["1"], 1, 3.0, 3, SAVED_SAMPLER, 0, False, editor)
        gallery, info = client.predict(*request, "inpaint", 0.6, 0.2, api_name="/edit_latent_digits")
        edited = np.asarray(Image.open(gallery[0]["image"]))
        np.testing.assert_array_equal(edited[:8], np.asarray(digit())[:8])
        with pytest.raises(
            Exception, match="Task: Value: 'denoise' .* is not in the list of choices: \\['inpaint', 'img2img'\\]"
        ):
            client.predict(*request, "denoise", 0.6, 0.2, api_name="/edit_latent_digits")
        config = client.view_api(print_info=False, return_format="dict")
        task_parameter = next(
            p for p in config["named_endpoints"]["/edit_latent_digits"]["parameters"] if p["parameter_name"] == "task"
        )
        assert task_parameter["type"]["enum"] == ["inpaint", "img2img"]
    finally:
        demo.close()
