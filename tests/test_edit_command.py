"""`diffkit-edit inpaint|img2img|denoise`: the command end to end on tiny saved class, text and unconditional
pipelines, and its errors."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffkit import ClassConditionalInpaintPipeline, TextConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.cli import PNG_METADATA_KEY
from diffkit.cli.edit import build_parser, main

from .test_inpaint import SIZE, digit_and_bottom_half_mask
from .test_pipelines import make_class_pipeline
from .test_text_pipeline import MAX_TEXT_LENGTH, clip_tokenizer, tiny_text_unet  # noqa: F401 (a fixture)
from .tiny_stable_diffusion import tiny_text_encoder


@pytest.fixture
def files(tmp_path, tiny_condition_unet):
    pipe = make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100, clip_sample=True))
    pipe.save_pretrained(tmp_path / "model")
    image, mask = digit_and_bottom_half_mask()
    Image.fromarray(image).save(tmp_path / "digit.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return tmp_path


def edit(files, *argv):
    return main(
        [
            *argv[:1],
            "--pipeline",
            str(files / "model"),
            "--image",
            str(files / "digit.png"),
            "--steps",
            "2",
            "--out",
            str(files / "edits"),
            *argv[1:],
        ]
    )


def test_inpaint_end_to_end_keeps_the_known_pixels_and_records_the_parameters(files, capsys):
    edit(files, "inpaint", "--mask", str(files / "mask.png"), "--class", "dog", "2", "--num_images", "2")
    written = sorted(p.name for p in (files / "edits").iterdir())
    assert written == [f"inpaint-{label}-seed0-{i}.png" for label in ("2", "dog") for i in (0, 1)]
    assert capsys.readouterr().out.count(".png") == 4
    image, mask = digit_and_bottom_half_mask()
    with Image.open(files / "edits" / "inpaint-dog-seed0-1.png") as png:
        parameters = json.loads(png.text[PNG_METADATA_KEY])
        pixels = np.asarray(png)
    assert pixels.shape == (SIZE, SIZE)
    np.testing.assert_array_equal(pixels[mask == 0], image[mask == 0])
    assert parameters["task"] == "inpaint" and parameters["class_label"] == "dog" and parameters["image_index"] == 1
    assert parameters["num_inference_steps"] == 2 and parameters["seed"] == 0


def test_img2img_and_denoise_end_to_end(files):
    edit(files, "img2img", "--class", "bird", "--strength", "1.0")
    edit(files, "denoise", "--class", "0", "--noise_level", "0.4")
    assert sorted(p.name for p in (files / "edits").iterdir()) == ["denoise-0-seed0-0.png", "img2img-bird-seed0-0.png"]
    # the same seed gives the same image again
    first = np.asarray(Image.open(files / "edits" / "img2img-bird-seed0-0.png"))
    edit(files, "img2img", "--class", "bird", "--strength", "1.0")
    np.testing.assert_array_equal(np.asarray(Image.open(files / "edits" / "img2img-bird-seed0-0.png")), first)


def test_help_explains_every_option():
    parser = build_parser()
    for action in parser._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inpaint", "--class", "dog"], "`--mask` is required for inpaint"),
        (["img2img", "--class", "dog", "--mask", "MASK"], "`--mask` only applies to inpaint, not to img2img"),
        (["inpaint", "--class", "dog", "--mask", "missing.png"], "`--mask` 'missing.png' is not a file"),
        (["inpaint", "--class", "dog", "--mask", "BROKEN"], "cannot be read as an image"),
        (["img2img", "--class", "dog", "--strength", "1.5"], r"`--strength` must be in \[0, 1\], but is 1.5"),
        (["denoise", "--class", "dog", "--strength", "0.5"], "`--strength` only applies to img2img"),
        (["denoise", "--class", "dog"], "`--noise_level` must be given for denoise"),
        (["denoise", "--class", "dog", "--noise_level", "-1"], "as a number >= 0"),
        (["img2img", "--class", "dog", "--noise_level", "0.2"], "`--noise_level` only applies to denoise"),
        (["img2img", "--class", "dog", "--steps", "0"], "`--num_inference_steps` must be a positive integer, but is"),
        (["img2img", "--class", "unicorn"], "`--class` 'unicorn' is not a class of this model"),
    ],
)
def test_bad_input_is_a_clear_error(files, argv, message):
    argv = [
        str(files / "mask.png") if a == "MASK" else str(files / "broken.png") if a == "BROKEN" else a for a in argv
    ]
    with pytest.raises(ValueError, match=message):
        edit(files, *argv)
    assert not (files / "edits").exists()


def test_a_pipeline_that_is_not_diffkits_is_refused(files):
    (files / "model" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="holds a StableDiffusionPipeline; diffkit-edit works on diffkit pipelines"):
        edit(files, "img2img", "--class", "dog")
    with pytest.raises(ValueError, match="cannot be loaded as a pipeline"):
        main(["img2img", "--pipeline", str(files / "nowhere"), "--image", str(files / "digit.png"), "--out", "x"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["img2img"], "is class-conditional: pass `--class`"),
        (["img2img", "--prompt", "a dog"], "is class-conditional: pass `--class`"),
        (["img2img", "--class", "dog", "--prompt", "a dog"], "`--class` and `--prompt` were both given"),
        (["img2img", "--class", "dog", "--jump_n_sample", "2"], "only apply to inpaint, not to img2img"),
        (["inpaint", "--class", "dog", "--mask", "MASK", "--jump_n_sample", "0"], "`--jump_n_sample` must be a pos"),
    ],
)
def test_condition_flags_must_fit_the_model(files, argv, message):
    argv = [str(files / "mask.png") if a == "MASK" else a for a in argv]
    with pytest.raises(ValueError, match=message):
        edit(files, *argv)


def test_unconditional_model_end_to_end(files, tiny_unet2d):
    UnconditionalImagePipeline(
        unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100, clip_sample=True)
    ).save_pretrained(files / "model")
    with pytest.raises(ValueError, match="`--class` needs a class-conditional model, but .* is unconditional"):
        edit(files, "img2img", "--class", "dog")
    edit(files, "inpaint", "--mask", str(files / "mask.png"), "--jump_length", "1", "--jump_n_sample", "2")
    edit(files, "img2img", "--strength", "1.0", "--num_images", "2")
    edit(files, "denoise", "--noise_level", "0.4")
    written = sorted(p.name for p in (files / "edits").iterdir())
    assert written == [
        "denoise-image-seed0-0.png", "img2img-image-seed0-0.png", "img2img-image-seed0-1.png",
        "inpaint-image-seed0-0.png",
    ]  # fmt: skip
    image, mask = digit_and_bottom_half_mask()
    with Image.open(files / "edits" / "inpaint-image-seed0-0.png") as png:
        assert json.loads(png.text[PNG_METADATA_KEY])["jump_n_sample"] == 2
        np.testing.assert_array_equal(np.asarray(png)[mask == 0], image[mask == 0])


def save_tiny_text_model(folder, tokenizer):
    """A tiny random text-conditional pipeline, saved to `folder`."""
    torch.manual_seed(0)
    TextConditionalImagePipeline(
        unet=tiny_text_unet(),
        scheduler=DDPMScheduler(num_train_timesteps=100),
        text_encoder=tiny_text_encoder(),
        tokenizer=tokenizer,
        max_text_length=MAX_TEXT_LENGTH,
    ).save_pretrained(folder)


def test_text_model_end_to_end(files, clip_tokenizer):  # noqa: F811
    save_tiny_text_model(files / "model", clip_tokenizer)
    with pytest.raises(ValueError, match="is text-conditional: pass `--prompt`"):
        edit(files, "img2img")
    edit(files, "img2img", "--prompt", "a handwritten seven", "the digit 3", "--negative_prompt", "a blurry digit")
    edit(files, "inpaint", "--mask", str(files / "mask.png"), "--prompt", "a handwritten seven")
    written = sorted(p.name for p in (files / "edits").iterdir())
    assert written == ["img2img-prompt0-seed0-0.png", "img2img-prompt1-seed0-0.png", "inpaint-prompt0-seed0-0.png"]
    with Image.open(files / "edits" / "img2img-prompt1-seed0-0.png") as png:
        parameters = json.loads(png.text[PNG_METADATA_KEY])
    assert parameters["prompt"] == "the digit 3" and parameters["negative_prompt"] == "a blurry digit"


def test_a_saved_inpainting_pipeline_folder_works_for_every_task(files, tiny_condition_unet):
    # the folder names ClassConditionalInpaintPipeline: it loads with that installed class, then from_pipe
    pipe = make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100, clip_sample=True))
    ClassConditionalInpaintPipeline.from_pipe(pipe).save_pretrained(files / "model")
    edit(files, "img2img", "--class", "dog", "--strength", "1.0")
    edit(files, "inpaint", "--mask", str(files / "mask.png"), "--class", "dog")
    assert sorted(p.name for p in (files / "edits").iterdir()) == [
        "img2img-dog-seed0-0.png",
        "inpaint-dog-seed0-0.png",
    ]


@pytest.fixture
def super_resolution_files(files):
    from .test_super_resolution import make_stage

    make_stage().save_pretrained(files / "sr")
    make_stage(class_conditional=True, id2label={0: "cat", 1: "dog", 2: "bird"}).save_pretrained(files / "sr-class")
    Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4) * 16).save(files / "small.png")
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(files / "wide.png")
    return files


def upscale(files, model, *argv):
    return main(["upscale", "--pipeline", str(files / model), "--steps", "2", "--out", str(files / "edits"), *argv])


def test_upscale_end_to_end_with_either_stage(super_resolution_files):
    files = super_resolution_files
    upscale(files, "sr", "--image", str(files / "small.png"), "--num_images", "2", "--noise_level", "0.2")
    upscale(files, "sr-class", "--image", str(files / "small.png"), "--class", "dog", "0")
    written = sorted(p.name for p in (files / "edits").iterdir())
    assert written == ["upscale-0-seed0-0.png", "upscale-dog-seed0-0.png"] + [
        f"upscale-image-seed0-{i}.png" for i in (0, 1)
    ]
    with Image.open(files / "edits" / "upscale-image-seed0-1.png") as png:
        assert png.size == (8, 8)
        parameters = json.loads(png.text[PNG_METADATA_KEY])
    assert parameters["task"] == "upscale" and parameters["noise_level"] == 0.2
    assert parameters["image_index"] == 1 and parameters["image_seed"] == 1
    # the command's images are the pipeline's own, image i from the CPU generator of --seed + i, in one batch
    from diffkit import SuperResolutionPipeline

    pipe = SuperResolutionPipeline.from_pretrained(files / "sr-class")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        image=[Image.open(files / "small.png")] * 2,
        class_labels=["dog", 0],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
    ).images
    np.testing.assert_array_equal(
        np.asarray(Image.open(files / "edits" / "upscale-dog-seed0-0.png")), np.asarray(expected[0])
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(files / "edits" / "upscale-0-seed0-0.png")), np.asarray(expected[1])
    )


@pytest.mark.parametrize(
    "model, argv, message",
    [
        ("model", ["--class", "dog"], "`upscale` needs a super-resolution stage .* ClassConditionalImagePipeline"),
        ("sr", ["--noise_level", "0.9"], "`--noise_level` 0.9 is above the stage's --max_noise_level 0.5"),
        ("sr", ["--noise_level", "-0.1"], "`--noise_level` must be >= 0"),
        ("sr", ["--class", "dog"], "`--class` needs a class-conditional model"),
        ("sr-class", [], "is class-conditional: pass `--class`"),
        ("sr", ["--image", "WIDE"], "is 6x4, but the stage upscales square 4x4 images"),
    ],
)
def test_bad_upscale_input_is_a_clear_error(super_resolution_files, model, argv, message):
    files = super_resolution_files
    argv = [str(files / "wide.png") if a == "WIDE" else a for a in argv]
    if "--image" not in argv:
        argv = ["--image", str(files / "small.png"), *argv]
    with pytest.raises(ValueError, match=message):
        upscale(files, model, *argv)
    assert not (files / "edits").exists()


def test_a_super_resolution_stage_only_upscales(super_resolution_files):
    files = super_resolution_files
    with pytest.raises(ValueError, match="is a super-resolution stage: it can only `upscale`, not img2img"):
        main(
            [
                "img2img",
                "--pipeline",
                str(files / "sr"),
                "--image",
                str(files / "small.png"),
                "--out",
                str(files / "e"),
            ]
        )
