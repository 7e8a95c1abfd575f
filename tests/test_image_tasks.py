"""Stable Diffusion, SDXL and ControlNet-canny on the user's own images: the img2img, inpainting and x4-upscaler
loaders, `task_pipeline`, the input checks and tiled upscaling, on tiny random models saved in the Hub layout (see
tests/tiny_stable_diffusion.py) with CLIP's real tokenizer."""

import json

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.models.attention_processor import FusedAttnProcessor2_0
from PIL import Image
from skimage.data import astronaut

from diffkit.cli import PNG_METADATA_KEY
from diffkit.cli.generate import main as generate_main
from diffkit.pipelines.canny import canny_edges
from diffkit.pipelines.loaders import (
    load_controlnet_canny_img2img,
    load_sdxl,
    load_sdxl_img2img,
    load_sdxl_inpaint,
    load_stable_diffusion,
    load_stable_diffusion_img2img,
    load_stable_diffusion_inpaint,
    load_upscaler,
    task_pipeline,
    upscale_tiled,
)
from diffkit.pipelines.stable_diffusion_options import (
    UPSCALER_MAX_UNTILED_SIDE,
    check_strength,
    check_upscale_inputs,
    resized_mask,
)

from .tiny_stable_diffusion import (
    save_tiny_controlnet,
    save_tiny_sdxl,
    save_tiny_stable_diffusion,
    save_tiny_upscaler,
    save_tiny_vae,
)

SIZE = 64  # pixels; the latents are 8x8
STEPS = 2
CUDA_REASON = "needs a CUDA GPU; runs on any machine with one (python -m benchmarks.gpu_check); this CI has none"
pytestmark = pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_image_task_models")
    folders = {
        "sd": save_tiny_stable_diffusion(str(root / "sd")),
        "sd_inpaint": save_tiny_stable_diffusion(str(root / "sd_inpaint"), inpainting=True),
        "sdxl": save_tiny_sdxl(str(root / "sdxl")),
        "sdxl_inpaint": save_tiny_sdxl(str(root / "sdxl_inpaint"), inpainting=True),
        "upscaler": save_tiny_upscaler(str(root / "upscaler")),
        "vae": save_tiny_vae(str(root / "vae")),
    }
    folders["controlnet"] = save_tiny_controlnet(str(root / "controlnet"), folders["sd"])
    folders["controlnet_sdxl"] = save_tiny_controlnet(str(root / "controlnet_sdxl"), folders["sdxl"])
    return folders


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(astronaut()).resize((SIZE, SIZE))


@pytest.fixture(scope="module")
def mask():
    pixels = np.zeros((SIZE, SIZE), np.uint8)
    pixels[16:48, 16:48] = 255  # re-draw the middle
    return Image.fromarray(pixels)


def run(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "output_type": "np", **kwargs}
    return pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **kwargs).images


LOADERS = {
    "sd_img2img": (load_stable_diffusion_img2img, "sd", "StableDiffusionImg2ImgPipeline"),
    "sdxl_img2img": (load_sdxl_img2img, "sdxl", "StableDiffusionXLImg2ImgPipeline"),
    "sd_inpaint": (load_stable_diffusion_inpaint, "sd_inpaint", "StableDiffusionInpaintPipeline"),
    "sdxl_inpaint": (load_sdxl_inpaint, "sdxl_inpaint", "StableDiffusionXLInpaintPipeline"),
    "upscaler": (load_upscaler, "upscaler", "StableDiffusionUpscalePipeline"),
}


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_each_loader_returns_the_diffusers_pipeline_with_the_options_applied(models, name):
    loader, folder, class_name = LOADERS[name]
    pipe = loader(
        models[folder],
        dtype="bf16",
        scheduler="dpm++2m",
        vae_slicing=True,
        vae_tiling=True,
        channels_last=True,
        fuse_qkv=True,
    )
    assert type(pipe).__name__ == class_name
    assert pipe.unet.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {FusedAttnProcessor2_0}


@pytest.mark.parametrize("name", ["sd_img2img", "sdxl_img2img"])
def test_img2img_keeps_the_image_size_and_strength_sets_how_much_changes(models, photo, name):
    loader, folder, _ = LOADERS[name]
    pipe = loader(models[folder])
    wide = photo.resize((SIZE + 32, SIZE))
    light, heavy = run(pipe, image=wide, strength=0.5), run(pipe, image=wide, strength=1.0)
    assert light.shape == heavy.shape == (1, SIZE, SIZE + 32, 3)
    original = np.asarray(wide, np.float64) / 255
    assert np.abs(light[0] - original).mean() < np.abs(heavy[0] - original).mean()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_img2img_in_half_precision(models, photo, dtype):
    pipe = load_stable_diffusion_img2img(models["sd"], dtype=dtype)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == dtype
    images = run(pipe, image=photo, strength=0.75)
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_controlnet_canny_img2img(models, photo, sdxl):
    base, controlnet = (models["sdxl"], models["controlnet_sdxl"]) if sdxl else (models["sd"], models["controlnet"])
    pipe = load_controlnet_canny_img2img(base, controlnet, sdxl=sdxl)
    expected = "StableDiffusionXLControlNetImg2ImgPipeline" if sdxl else "StableDiffusionControlNetImg2ImgPipeline"
    assert type(pipe).__name__ == expected
    edges = canny_edges(photo)
    images = run(pipe, image=photo, control_image=edges, strength=0.8)
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
    blank = Image.new("RGB", (SIZE, SIZE))
    assert not np.allclose(images, run(pipe, image=photo, control_image=blank, strength=0.8))  # the edges steer


@pytest.mark.parametrize("name", ["sd_inpaint", "sdxl_inpaint"])
def test_a_nine_channel_inpainting_unet_inpaints_where_the_mask_is_white(models, photo, mask, name):
    loader, folder, _ = LOADERS[name]
    pipe = loader(models[folder])
    assert pipe.unet.config.in_channels == 9
    images = run(pipe, image=photo, mask_image=mask, height=SIZE, width=SIZE)
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
    other_mask = Image.fromarray(255 - np.asarray(mask))
    assert not np.allclose(images, run(pipe, image=photo, mask_image=other_mask, height=SIZE, width=SIZE))


def test_inpainting_options_padding_mask_crop_and_mask_blur(models, photo, mask):
    pipe = load_stable_diffusion_inpaint(models["sd_inpaint"])
    cropped = run(pipe, image=photo, mask_image=mask, padding_mask_crop=8, output_type="pil")  # as diffusers needs
    cropped = np.asarray(cropped[0], np.float64)[None] / 255
    assert cropped.shape == (1, SIZE, SIZE, 3)
    # the crop pastes the result back: far from the mask the photo is kept as it was
    assert np.abs(cropped[0, :8, :8] - np.asarray(photo, np.float64)[:8, :8] / 255).max() < 0.02
    blurred = pipe.mask_processor.blur(mask, blur_factor=4)
    assert 0 < np.asarray(blurred)[15, 32] < 255  # a soft edge
    soft = run(pipe, image=photo, mask_image=blurred, padding_mask_crop=8, output_type="pil")[0]
    assert not np.allclose(cropped[0], np.asarray(soft, np.float64) / 255)


def test_task_pipeline_shares_every_module_without_loading(models):
    for loader, folder in ((load_stable_diffusion, "sd"), (load_sdxl, "sdxl")):
        pipe = loader(models[folder], scheduler="euler_a")
        for task in ("img2img", "inpaint"):
            other = task_pipeline(pipe, task)
            assert task in type(other).__name__.lower().replace("image2image", "img2img")
            shared = {name: id(module) for name, module in pipe.components.items() if module is not None}
            assert {name: id(other.components[name]) for name in shared} == shared
            assert other.scheduler is pipe.scheduler
        assert task_pipeline(pipe, "text2img") is pipe


def test_task_pipeline_refuses_what_it_cannot_make(models):
    inpaint = load_stable_diffusion_inpaint(models["sd_inpaint"])
    with pytest.raises(ValueError, match="inpainting UNet .9 input channels., which cannot run 'img2img'"):
        task_pipeline(inpaint, "img2img")
    with pytest.raises(ValueError, match="`task` 'upscale' is not one of"):
        task_pipeline(inpaint, "upscale")
    with pytest.raises(ValueError, match="`pipe` is a StableDiffusionUpscalePipeline"):
        task_pipeline(load_upscaler(models["upscaler"]), "img2img")


def test_the_upscaler_makes_the_image_four_times_larger_with_its_low_res_scheduler(models, photo):
    pipe = load_upscaler(models["upscaler"])
    assert type(pipe.low_res_scheduler).__name__ == "DDPMScheduler" and pipe.config.max_noise_level == 350
    small = photo.resize((16, 24))
    images = run(pipe, image=small, noise_level=20)
    assert images.shape == (1, 96, 64, 3) and np.isfinite(images).all()
    assert not np.allclose(images, run(pipe, image=small, noise_level=300))  # the noise level reaches the UNet


def test_tiled_upscaling(models, photo):
    pipe = load_upscaler(models["upscaler"])
    pipe.set_progress_bar_config(disable=True)
    small = photo.resize((24, 16))
    # an image within one tile is upscaled exactly as by one call
    one_call = run(pipe, image=small, noise_level=20)[0]
    tiled = upscale_tiled(pipe, "a photo of a cat", small, tile_size=32, num_inference_steps=STEPS)
    assert tiled.size == (96, 64)
    assert np.abs(np.asarray(tiled, np.float64) / 255 - one_call).max() <= 1 / 255
    # a larger one in overlapping tiles: the size is right, and each tile was drawn by the model
    large = photo.resize((40, 24))
    calls = []
    pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[-2:]))
    result = upscale_tiled(pipe, "a photo of a cat", large, tile_size=16, tile_overlap=4, num_inference_steps=STEPS)
    assert result.size == (160, 96)
    # tiles start at 0, 12, 24 across (40 px) and 0, 8 down (24 px): 6 tiles, each run for every step
    assert len(calls) == 6 * STEPS and set(map(tuple, calls)) == {(16, 16)}
    with pytest.raises(ValueError, match="`tile_size` must be a multiple of 8"):
        upscale_tiled(pipe, "a cat", large, tile_size=20)
    with pytest.raises(ValueError, match=r"`tile_overlap` must be in \[0, tile_size / 2\)"):
        upscale_tiled(pipe, "a cat", large, tile_size=16, tile_overlap=8)


@pytest.mark.parametrize("name", ["sdxl_img2img", "sdxl_inpaint"])
def test_the_fp16_vae_guard_on_the_sdxl_image_paths(models, photo, mask, name):
    loader, folder, _ = LOADERS[name]
    kwargs = {"image": photo, "strength": 0.75}
    if "inpaint" in name:
        kwargs["mask_image"] = mask
    pipe = loader(models[folder], dtype="fp16")
    assert pipe.vae.config.force_upcast  # without a safe VAE, the decode runs in fp32
    assert np.isfinite(run(pipe, **kwargs)).all()

    with_vae = loader(models[folder], dtype="fp16", vae=models["vae"])  # a fp16 VAE, taken as safe
    assert with_vae.vae.dtype == torch.float16 and not with_vae.vae.config.force_upcast
    with torch.no_grad():  # near float16's largest value (65504), so that the decoder's activations overflow to inf
        with_vae.vae.decoder.conv_in.weight.mul_(3e4)
        with_vae.vae.decoder.conv_in.bias.fill_(65000)
    with pytest.raises(FloatingPointError, match="NaN or inf values in torch.float16"):
        run(with_vae, **kwargs)


@pytest.mark.parametrize(
    "loader, folder, message",
    [
        (load_stable_diffusion_img2img, "sd_inpaint", "9 input channels: it is an inpainting checkpoint"),
        (
            load_stable_diffusion_inpaint,
            "sd",
            "4 input channels: it is a text-to-image checkpoint.*needs an "
            "inpainting checkpoint such as 'stable-diffusion-v1-5/stable-diffusion-inpainting'",
        ),
        (load_sdxl_inpaint, "sdxl", "4 input channels.*'diffusers/stable-diffusion-xl-1.0-inpainting-0.1'"),
        (load_sdxl_img2img, "sdxl_inpaint", "9 input channels"),
        (load_upscaler, "sd", "4 input channels.*needs the x4 upscaler"),
        (load_stable_diffusion_img2img, "upscaler", "7 input channels: it is the x4 upscaler"),
    ],
)
def test_a_checkpoint_for_another_task_is_refused_before_its_weights_load(
    models, loader, folder, message, monkeypatch
):
    from diffkit.pipelines import loaders

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(loaders, "load_with_variant", no_loading)
    with pytest.raises(ValueError, match=message):
        loader(models[folder])


def test_inpainting_with_a_text_to_image_checkpoint_when_asked(models, photo, mask):
    pipe = load_stable_diffusion_inpaint(models["sd"], allow_text_to_image_checkpoint=True)
    assert pipe.unet.config.in_channels == 4
    assert run(pipe, image=photo, mask_image=mask).shape == (1, SIZE, SIZE, 3)


@pytest.mark.parametrize(
    "strength, steps, message",
    [
        (1.5, 10, r"`strength` must be in \[0, 1\], but is 1.5"),
        (-0.1, 10, r"`strength` must be in \[0, 1\]"),
        (0.05, 10, r"`strength` 0.05 with 10 steps runs no denoising step .*at least 0.1"),
        (0, 30, "runs no denoising step"),
    ],
)
def test_strength_is_checked(strength, steps, message):
    with pytest.raises(ValueError, match=message):
        check_strength(strength, steps)
    check_strength(0.1, 10)  # one step


def test_the_mask_is_resized_by_the_documented_rule(photo):
    half = Image.new("L", (SIZE // 2, SIZE // 2), 255)
    assert resized_mask(half, photo).size == photo.size
    assert set(np.unique(np.asarray(resized_mask(half.convert("RGB"), photo)))) == {255}
    with pytest.raises(ValueError, match="`mask_image` is 64x32 but `image` is 64x64: their aspect ratios differ"):
        resized_mask(Image.new("L", (SIZE, SIZE // 2)), photo)


def test_upscaler_inputs_are_checked(models, photo):
    pipe = load_upscaler(models["upscaler"])
    check_upscale_inputs(pipe.config.max_noise_level, photo, 20, tiled=False)
    for noise_level in (-1, 351, 20.5, True):
        with pytest.raises(ValueError, match=r"`noise_level` must be a whole number in \[0, 350\]"):
            check_upscale_inputs(pipe.config.max_noise_level, photo, noise_level, tiled=False)
    large = photo.resize((UPSCALER_MAX_UNTILED_SIDE + 8, 64))
    with pytest.raises(ValueError, match="larger than 256 px a side.*upscale_tiled.*--tile_size"):
        check_upscale_inputs(pipe.config.max_noise_level, large, 20, tiled=False)
    check_upscale_inputs(pipe.config.max_noise_level, large, 20, tiled=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("name", sorted(LOADERS))
def test_image_task_loaders_default_to_fp16_on_cuda(models, photo, mask, name):
    loader, folder, _ = LOADERS[name]
    pipe = loader(models[folder])
    assert pipe.unet.dtype == torch.float16 and pipe.device.type == "cuda"
    kwargs = {"image": photo.resize((16, 16))} if name == "upscaler" else {"image": photo}
    if "inpaint" in name:
        kwargs["mask_image"] = mask
    assert np.isfinite(run(pipe, **kwargs)).all()


def saved(folder):
    """The command's PNGs in `folder`: {name: (pixels, parameters)}."""
    result = {}
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            result[path.name] = (np.asarray(image), json.loads(image.text[PNG_METADATA_KEY]))
    return result


def test_generate_img2img_inpaint_and_upscale_end_to_end(models, photo, mask, tmp_path):
    photo_path, mask_path = tmp_path / "photo.png", tmp_path / "mask.png"
    photo.resize((SIZE + 4, SIZE)).save(photo_path)  # 68 px wide: rounded down to 64
    mask.resize((SIZE + 4, SIZE)).save(mask_path)
    common = ["--prompt", "a cat", "--steps", "2", "--seed", "3"]

    generate_main(
        [
            "img2img",
            "--model",
            models["sd"],
            "--image",
            str(photo_path),
            "--strength",
            "0.5",
            "--num_images",
            "2",
            *common,
            "--out",
            str(tmp_path / "img2img"),
        ]
    )
    images = saved(tmp_path / "img2img")
    assert sorted(images) == ["img2img-seed3-0.png", "img2img-seed3-1.png"]
    pixels, parameters = images["img2img-seed3-1.png"]
    assert pixels.shape == (SIZE, SIZE, 3) and parameters["strength"] == 0.5 and parameters["image_index"] == 1

    generate_main(
        [
            "img2img",
            "--model",
            models["sdxl"],
            "--image",
            str(photo_path),
            "--width",
            "72",
            *common,
            "--canny",
            "--controlnet",
            models["controlnet_sdxl"],
            "--out",
            str(tmp_path / "canny"),
        ]
    )
    pixels, parameters = saved(tmp_path / "canny")["img2img-seed3-0.png"]
    assert pixels.shape == (SIZE, 72, 3) and parameters["canny"] and parameters["strength"] == 0.75

    generate_main(
        [
            "inpaint",
            "--model",
            models["sd_inpaint"],
            "--image",
            str(photo_path),
            "--mask",
            str(mask_path),
            "--mask_blur",
            "4",
            "--padding_mask_crop",
            "8",
            *common,
            "--out",
            str(tmp_path / "inpaint"),
        ]
    )
    pixels, parameters = saved(tmp_path / "inpaint")["inpaint-seed3-0.png"]
    assert pixels.shape == (SIZE, SIZE, 3) and parameters["strength"] == 1.0 and parameters["mask_blur"] == 4

    small = tmp_path / "small.png"
    photo.resize((24, 16)).save(small)
    for name, extra in (("whole", []), ("tiled", ["--tile_size", "16"])):
        generate_main(
            [
                "upscale",
                "--model",
                models["upscaler"],
                "--image",
                str(small),
                "--noise_level",
                "50",
                *extra,
                *common,
                "--out",
                str(tmp_path / name),
            ]
        )
        pixels, parameters = saved(tmp_path / name)["upscale-seed3-0.png"]
        assert pixels.shape == (64, 96, 3) and parameters["noise_level"] == 50

    # the same seed gives the same image
    generate_main(
        [
            "img2img",
            "--model",
            models["sd"],
            "--image",
            str(photo_path),
            "--strength",
            "0.5",
            "--num_images",
            "2",
            *common,
            "--out",
            str(tmp_path / "again"),
        ]
    )
    np.testing.assert_array_equal(
        saved(tmp_path / "again")["img2img-seed3-1.png"][0], images["img2img-seed3-1.png"][0]
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["img2img"], "`img2img` needs `--image IMAGE`"),
        (["inpaint", "--image", "{photo}"], "`inpaint` needs `--mask MASK`"),
        (["inpaint", "--image", "{photo}", "--mask", "{text}"], "`--mask` .*text.png' cannot be read as an image"),
        (["img2img", "--image", "{missing}"], "`--image` .*missing.png' cannot be read as an image"),
        (["inpaint", "--image", "{photo}", "--mask", "{wide_mask}"], "`mask_image` is 64x32 but `image` is 64x64"),
        (["img2img", "--image", "{photo}", "--strength", "1.2"], r"`strength` must be in \[0, 1\]"),
        (["img2img", "--image", "{photo}", "--strength", "0.01"], "runs no denoising step"),
        (["img2img", "--image", "{photo}", "--width", "60"], "`--width` 60 must be a positive multiple of 8"),
        (["img2img", "--image", "{photo}", "--mask", "{photo}"], "`--mask` works with inpaint only"),
        (["upscale", "--image", "{photo}", "--canny"], "`--canny` works with img2img only"),
        (["upscale", "--image", "{photo}", "--strength", "0.5"], "--strength, --width and --height do not apply"),
        (["upscale", "--image", "{photo}", "--tile_size", "0"], "`--tile_size` must be a multiple of 8"),
        (
            ["upscale", "--model", "{upscaler}", "--image", "{photo}", "--noise_level", "400"],
            r"`noise_level` must be a whole number in \[0, 350\]",
        ),
        (["upscale", "--model", "{upscaler}", "--image", "{large}"], "larger than 256 px a side.*--tile_size"),
        (["upscale", "--model", "{sd}", "--image", "{photo}"], "is not an x4 upscaler"),
        (["img2img", "--model", "{sd_inpaint}", "--image", "{photo}"], "9 input channels: it is an inpainting"),
        (["inpaint", "--model", "{sd}", "--image", "{photo}", "--mask", "{photo}"], "4 input channels"),
    ],
)
def test_generate_rejects_bad_image_task_input_before_loading(models, photo, tmp_path, monkeypatch, argv, message):
    from diffkit.pipelines import loaders

    monkeypatch.setattr(loaders, "load_with_variant", pytest.fail)  # no weights may load
    files = {
        "photo": tmp_path / "photo.png",
        "text": tmp_path / "text.png",
        "missing": tmp_path / "missing.png",
        "wide_mask": tmp_path / "wide.png",
        "large": tmp_path / "large.png",
    }
    photo.save(files["photo"])
    files["text"].write_text("not an image")
    Image.new("L", (SIZE, SIZE // 2)).save(files["wide_mask"])
    photo.resize((UPSCALER_MAX_UNTILED_SIDE + 8, 64)).save(files["large"])
    values = {**{k: str(v) for k, v in files.items()}, **models}
    argv = [a.format(**values) for a in argv]
    with pytest.raises(ValueError, match=message):
        generate_main([*argv, "--prompt", "x", "--steps", "10", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
