"""The Stable Diffusion, SDXL and ControlNet-canny loaders, canny_edges and the generate command, on tiny random
models saved in the Hub layout (see tests/tiny_stable_diffusion.py), with CLIP's real tokenizer."""

import json
import logging
import warnings

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, UniPCMultistepScheduler
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0
from PIL import Image
from skimage.data import astronaut, coffee

from diffkit.cli import PNG_METADATA_KEY
from diffkit.cli.generate import build_parser, warn_if_truncated
from diffkit.cli.generate import main as generate_main
from diffkit.cli.generate import parse_args as parse_generate_args
from diffkit.pipelines.canny import canny_edges
from diffkit.pipelines.loaders import (
    SCHEDULERS,
    load_controlnet_canny,
    load_sdxl,
    load_sdxl_refiner,
    load_stable_diffusion,
    resolve_device_and_dtype,
    warn_about_the_cpu_once,
)

from .tiny_stable_diffusion import (
    blacken_decoder,
    save_tiny_controlnet,
    save_tiny_sdxl,
    save_tiny_sdxl_refiner,
    save_tiny_stable_diffusion,
    save_tiny_vae,
)

SIZE = 64  # pixels; the latents are 8x8
STEPS = 2
CUDA_REASON = "offloading needs a CUDA GPU; these run on any machine with one (this project's CI has none)"
pytestmark = pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    folders = {
        "sd": save_tiny_stable_diffusion(str(root / "sd"), fp16_variant=True),
        "sdxl": save_tiny_sdxl(str(root / "sdxl")),
        "vae": save_tiny_vae(str(root / "vae")),
    }
    folders["controlnet"] = save_tiny_controlnet(str(root / "controlnet"), folders["sd"])
    folders["controlnet_sdxl"] = save_tiny_controlnet(str(root / "controlnet_sdxl"), folders["sdxl"])
    folders["refiner"] = save_tiny_sdxl_refiner(str(root / "refiner"))
    return folders


def generate(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    return pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **kwargs).images


def test_tokenizer_is_clips_real_vocabulary(models):
    pipe = load_stable_diffusion(models["sd"])
    assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(pipe.tokenizer) == 49408


def test_stable_diffusion_dtypes_and_the_fp16_variant(models, caplog):
    with caplog.at_level(logging.INFO, logger="diffkit.pipelines.loaders"):
        fp32 = load_stable_diffusion(models["sd"])
        fp16 = load_stable_diffusion(models["sd"], dtype="fp16")
        bf16 = load_stable_diffusion(models["sd"], dtype=torch.bfloat16)
    assert "Loaded the fp16 weight variant" in caplog.text  # the folder has *.fp16.safetensors files
    assert (fp32.unet.dtype, fp16.unet.dtype, bf16.unet.dtype) == (torch.float32, torch.float16, torch.bfloat16)
    assert fp16.vae.dtype == torch.float16 and fp16.text_encoder.dtype == torch.float16
    # the fp16 weights on disk are the fp32 ones rounded: same images up to half precision
    fp32_images, fp16_images = generate(fp32), generate(fp16)
    assert fp32_images.shape == fp16_images.shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(fp16_images).all() and np.isfinite(generate(bf16)).all()
    assert np.abs(fp32_images - fp16_images).max() < 0.05


def test_device_and_dtype_defaults_and_errors():
    warn_about_the_cpu_once.cache_clear()
    with pytest.warns(UserWarning, match="on the CPU") as warned:
        device, dtype = resolve_device_and_dtype()
        resolve_device_and_dtype()  # a second pipeline (a refiner, a ControlNet): said once
    assert len([w for w in warned if "on the CPU" in str(w.message)]) == 1
    if not torch.cuda.is_available():
        assert (device.type, dtype) == ("cpu", torch.float32)
        with pytest.raises(ValueError, match="`device` 'cuda' was requested, but torch .* sees no CUDA GPU"):
            resolve_device_and_dtype("cuda")
    with pytest.raises(ValueError, match="`dtype` 'half' is not one of"):
        resolve_device_and_dtype("cpu", "half")


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_name_builds_from_the_models_config_and_samples(models, name):
    pipe = load_stable_diffusion(models["sd"], scheduler=name)
    scheduler_class, settings = SCHEDULERS[name]
    assert type(pipe.scheduler) is scheduler_class
    for key, value in settings.items():
        assert pipe.scheduler.config[key] == value
    # the model's training schedule is kept
    assert pipe.scheduler.config.beta_schedule == "scaled_linear" and pipe.scheduler.config.beta_end == 0.012
    assert np.isfinite(generate(pipe, num_inference_steps=4)).all()  # PNDM's warm-up needs more than 2 steps


def test_scheduler_mapping_for_the_usual_names():
    assert SCHEDULERS["dpm++2m_karras"] == (DPMSolverMultistepScheduler, {"use_karras_sigmas": True})
    assert SCHEDULERS["euler_a"][0] is EulerAncestralDiscreteScheduler
    assert SCHEDULERS["unipc"][0] is UniPCMultistepScheduler


def test_speed_and_memory_options(models):
    pipe = load_stable_diffusion(models["sd"], channels_last=True, vae_slicing=True, vae_tiling=True)
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}  # SDPA, diffusers' default
    images = generate(pipe, num_images_per_prompt=2)
    assert images.shape == (2, SIZE, SIZE, 3)

    fused = load_stable_diffusion(models["sd"], fuse_qkv=True)
    assert {type(p) for p in fused.unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    np.testing.assert_allclose(generate(fused), generate(load_stable_diffusion(models["sd"])), atol=1e-4)


def test_compile_unet_compiles_the_repeated_blocks(models):
    pipe = load_stable_diffusion(models["sd"], compile_unet=True)
    block = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0]
    assert block._compiled_call_impl is not None  # compiled lazily, on the first call
    assert pipe.unet.down_blocks[0].resnets[0]._compiled_call_impl is None  # only the repeated blocks


def test_memory_modes_on_cpu(models, caplog):
    with caplog.at_level(logging.INFO, logger="diffkit.pipelines.loaders"):
        pipe = load_stable_diffusion(models["sd"], memory="auto")
    assert "memory 'none'" in caplog.text and pipe.unet.device.type == "cpu"
    for memory in ("model_offload", "sequential_offload"):
        with pytest.raises(ValueError, match=f"`memory` '{memory}' moves models between the CPU and a GPU"):
            load_stable_diffusion(models["sd"], memory=memory, device="cpu")
    with pytest.raises(ValueError, match="`memory` 'low' is not one of"):
        load_stable_diffusion(models["sd"], memory="low")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("memory", ["none", "model_offload", "sequential_offload", "auto"])
def test_memory_modes_on_cuda(models, memory):
    pipe = load_stable_diffusion(models["sd"], memory=memory)
    assert pipe.unet.dtype == torch.float16
    assert np.isfinite(generate(pipe)).all()


def test_sdxl_decodes_in_fp32_unless_given_a_safe_vae(models):
    pipe = load_sdxl(models["sdxl"], dtype="fp16")
    assert pipe.unet.dtype == torch.float16 and pipe.vae.config.force_upcast
    assert np.isfinite(generate(pipe)).all()
    assert pipe.vae.dtype == torch.float16  # upcast only around the decode

    with_vae = load_sdxl(models["sdxl"], dtype="fp16", vae=models["vae"])
    assert with_vae.vae.dtype == torch.float16 and not with_vae.vae.config.force_upcast
    assert np.isfinite(generate(with_vae)).all()


def test_overflowing_vae_raises_instead_of_returning_nan(models, tmp_path):
    pipe = load_sdxl(models["sdxl"], dtype="fp16", vae=models["vae"])
    with torch.no_grad():  # weights large enough that float16 activations overflow to inf
        pipe.vae.decoder.conv_in.weight.mul_(3e4)
    with pytest.raises(FloatingPointError, match="NaN or inf values in torch.float16.*sdxl-vae-fp16-fix"):
        generate(pipe)


def test_all_black_decode_raises(models):
    pipe = load_stable_diffusion(models["sd"])
    blacken_decoder(pipe.vae)
    with pytest.raises(FloatingPointError, match="all-black image"):
        generate(pipe)


def test_sdxl_refiner_shares_the_second_text_encoder_and_vae(models):
    base = load_sdxl(models["sdxl"])
    refiner = load_sdxl_refiner(base, models["refiner"])
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
    latents = base("a lion", num_inference_steps=4, denoising_end=0.5, height=SIZE, width=SIZE, output_type="latent")
    images = refiner("a lion", image=latents.images, num_inference_steps=4, denoising_start=0.5, output_type="np")
    assert images.images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images.images).all()


@pytest.mark.parametrize("sdxl", [False, True], ids=["sd15", "sdxl"])
def test_controlnet_canny(models, sdxl):
    base, controlnet = (models["sdxl"], models["controlnet_sdxl"]) if sdxl else (models["sd"], models["controlnet"])
    pipe = load_controlnet_canny(base, controlnet, sdxl=sdxl)
    expected_class = "StableDiffusionXLControlNetPipeline" if sdxl else "StableDiffusionControlNetPipeline"
    assert type(pipe).__name__ == expected_class
    edges = canny_edges(astronaut()).resize((SIZE, SIZE))
    images = generate(pipe, image=edges)
    assert images.shape == (1, SIZE, SIZE, 3) and np.isfinite(images).all()
    # the control image steers the result
    assert not np.allclose(images, generate(pipe, image=Image.new("RGB", (SIZE, SIZE))))


def test_canny_edges_on_real_photos():
    edges = np.asarray(canny_edges(astronaut()))
    assert edges.shape == (512, 512, 3) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 1] == edges[..., 2]).all()
    assert 0.05 < (edges[..., 0] > 0).mean() < 0.25  # the assets note 8-14% at 256x256
    # any size in, multiples of 8 out; PIL and grey inputs too
    odd = canny_edges(Image.fromarray(coffee()[:333, :509]))
    assert odd.size == (504, 328)
    assert canny_edges(astronaut()[..., 0]).size == (512, 512)
    # higher thresholds keep fewer edges
    assert (np.asarray(canny_edges(astronaut(), 200, 250)) > 0).mean() < (edges > 0).mean()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"low_threshold": 200, "high_threshold": 100}, "0 <= low_threshold < high_threshold <= 255"),
        ({"low_threshold": -1}, "0 <= low_threshold"),
        ({"high_threshold": 300}, "high_threshold <= 255"),
        ({"low_threshold": 0.5}, "must be integers"),
    ],
)
def test_canny_thresholds_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        canny_edges(astronaut(), **kwargs)


def test_canny_rejects_images_it_cannot_use():
    with pytest.raises(ValueError, match="uint8 array"):
        canny_edges(astronaut().astype(np.float32) / 255)
    with pytest.raises(ValueError, match="PIL image or a numpy array"):
        canny_edges("photo.png")


def test_generate_command_end_to_end(models, tmp_path):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    out = tmp_path / "images"
    generate_main(
        [
            "controlnet-canny",
            "--model",
            models["sd"],
            "--controlnet",
            models["controlnet"],
            "--image",
            str(photo),
            "--prompt",
            "a robot",
            "--steps",
            "2",
            "--num_images",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--scheduler",
            "unipc",
            "--seed",
            "7",
            "--out",
            str(out),
        ]
    )
    files = sorted(p.name for p in out.iterdir())
    assert files == ["controlnet-canny-seed7-0.png", "controlnet-canny-seed7-1.png"]
    with Image.open(out / files[1]) as image:
        assert image.size == (64, 64)
        parameters = json.loads(image.text[PNG_METADATA_KEY])
    assert parameters["prompt"] == "a robot" and parameters["seed"] == 7 and parameters["scheduler"] == "unipc"
    assert parameters["image_index"] == 1

    # the same seed gives the same image
    generate_main(
        [
            "sdxl",
            "--model",
            models["sdxl"],
            "--prompt",
            "a lion",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    generate_main(
        [
            "sdxl",
            "--model",
            models["sdxl"],
            "--prompt",
            "a lion",
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    first, second = (np.asarray(Image.open(tmp_path / d / "sdxl-seed0-0.png")) for d in "ab")
    np.testing.assert_array_equal(first, second)

    # the two-stage SDXL flow
    generate_main(
        [
            "sdxl",
            "--model",
            models["sdxl"],
            "--refiner",
            models["refiner"],
            "--prompt",
            "a lion",
            "--steps",
            "4",
            "--num_images",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    refined = np.asarray(Image.open(tmp_path / "c" / "sdxl-seed0-1.png"))
    assert refined.shape == (64, 64, 3) and not np.array_equal(refined, first)


def test_generate_help_explains_every_option():
    for action in build_parser()._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sd", "--width", "65"], "`--width` 65 must be a positive multiple of 8 \\(e.g. 64\\)"),
        (["sd", "--height", "0"], "`--height` 0 must be a positive multiple of 8"),
        (["sd", "--steps", "0"], "`--num_inference_steps` must be a positive integer"),
        (["sd", "--steps", "-3"], "`--num_inference_steps` must be a positive integer"),
        (["controlnet-canny"], "needs `--image PHOTO`"),
        (["sd", "--refiner", "a/b"], "`--refiner` works with the sdxl family only"),
        (["sdxl", "--refiner_switch", "1.0"], "`--refiner_switch` must be in \\(0, 1\\)"),
        (["sd", "--model", "no-such-folder"], "`--model` 'no-such-folder' is not a folder"),
        (["sd", "--model", "not a/model id"], "is neither an existing folder nor a Hub repo id"),
    ],
)
def test_generate_rejects_bad_input_before_loading(argv, message, tmp_path, monkeypatch):
    monkeypatch.setattr("diffkit.pipelines.loaders.load_stable_diffusion", pytest.fail)
    with pytest.raises(ValueError, match=message):
        generate_main([*argv, "--prompt", "x", "--out", str(tmp_path)])


def test_generate_rejects_unknown_scheduler_and_unreadable_image(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_generate_args(["sd", "--prompt", "x", "--out", str(tmp_path), "--scheduler", "dpm3"])
    assert "invalid choice: 'dpm3'" in capsys.readouterr().err
    not_an_image = tmp_path / "photo.png"
    not_an_image.write_text("not an image")
    with pytest.raises(ValueError, match="`--image` .*photo.png' cannot be read as an image"):
        parse_generate_args(
            ["controlnet-canny", "--prompt", "x", "--image", str(not_an_image), "--out", str(tmp_path)]
        )


def test_a_prompt_longer_than_clip_reads_warns_with_the_cut_words(models):
    tokenizer = load_stable_diffusion(models["sd"]).tokenizer
    prompt = " ".join(["cat"] * 80) + " zebra giraffe"
    with pytest.warns(UserWarning, match="`--prompt` is 82 tokens long, but the text encoder reads 75.*zebra giraffe"):
        warn_if_truncated(tokenizer, prompt, "--prompt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_truncated(tokenizer, "a short prompt", "--prompt")
