"""`diffkit-generate --model OUT`: the front door samples a trained diffkit model from the shell, picked by the
model's own model_index.json, and refuses what does not fit before any weights load."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from PIL import Image

from diffkit import ClassConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.cli import PNG_METADATA_KEY
from diffkit.cli.generate import main, parse_args

from .test_edit_command import files, save_tiny_text_model, super_resolution_files  # noqa: F401 (fixtures)
from .test_text_pipeline import MAX_TEXT_LENGTH, clip_tokenizer, tiny_text_unet  # noqa: F401 (a fixture)
from .tiny_stable_diffusion import save_tiny_stable_diffusion


def generate(model, *argv, out):
    return main(["--model", str(model), "--steps", "2", "--out", str(out), *argv])


def test_a_class_model_samples_each_class_with_its_settings_in_the_png(files, capsys):  # noqa: F811
    generate(files / "model", "--class", "dog", "2", "--num_images", "2", "--seed", "3", out=files / "samples")
    written = sorted(p.name for p in (files / "samples").iterdir())
    assert written == [f"class_conditional-{label}-seed3-{i}.png" for label in ("2", "dog") for i in (0, 1)]
    assert capsys.readouterr().out.count(".png") == 4
    with Image.open(files / "samples" / "class_conditional-dog-seed3-1.png") as png:
        parameters = json.loads(png.text[PNG_METADATA_KEY])
        served = np.asarray(png)
    assert parameters["class_label"] == "dog" and parameters["image_index"] == 1 and parameters["seed"] == 3
    assert (
        parameters["image_seed"] == 4
        and parameters["num_inference_steps"] == 2
        and parameters["kind"] == "class_conditional"
    )
    # the pipeline's own images, image i (classes in turn) from the CPU generator of --seed + i, in one batch, at its
    # saved guidance scale
    pipe = ClassConditionalImagePipeline.from_pretrained(files / "model")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        class_labels=["dog", "dog", 2, 2],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(seed) for seed in (3, 4, 5, 6)],
    ).images
    np.testing.assert_array_equal(served, np.asarray(expected[1]))


def test_text_and_unconditional_models_sample_too(files, clip_tokenizer, tiny_unet2d):  # noqa: F811
    save_tiny_text_model(files / "text", clip_tokenizer)
    generate(files / "text", "--prompt", "a handwritten seven", "--negative_prompt", "a blur", out=files / "samples")
    with Image.open(files / "samples" / "text_conditional-prompt-seed0-0.png") as png:
        assert json.loads(png.text[PNG_METADATA_KEY])["prompt"] == "a handwritten seven"

    UnconditionalImagePipeline(unet=tiny_unet2d, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(
        files / "uncond"
    )
    generate(files / "uncond", "--num_images", "3", out=files / "samples")
    assert sorted(p.name for p in (files / "samples").iterdir() if p.name.startswith("unconditional")) == [
        f"unconditional-image-seed0-{i}.png" for i in range(3)
    ]
    with pytest.raises(ValueError, match="`--guidance_scale` needs a conditional model"):
        parse_args(["--model", str(files / "uncond"), "--guidance_scale", "2", "--out", "x"])


@pytest.mark.parametrize(
    "task, argv, message",
    [
        (None, [], "is class-conditional: pass `--class`"),
        (None, ["--class", "dog", "--prompt", "a dog"], "`--prompt` needs a text-conditional model"),
        (None, ["--class", "dog", "--negative_prompt", "x"], "`--negative_prompt` needs a text-conditional model"),
        (None, ["--class", "dog", "--width", "64"], "`--width` is for the Stable Diffusion family"),
        (None, ["--class", "dog", "--scheduler", "unipc"], "`--scheduler` is for the Stable Diffusion family"),
        (None, ["--class", "dog", "--guidance_scale", "-1"], "`--guidance_scale` must be >= 0"),
        ("img2img", ["--class", "dog"], "`img2img` on it is `diffkit-edit img2img --model"),
    ],
)
def test_what_does_not_fit_a_diffkit_model_is_refused_before_loading(files, task, argv, message, monkeypatch):  # noqa: F811
    monkeypatch.setattr(ClassConditionalImagePipeline, "from_pretrained", pytest.fail)
    with pytest.raises(ValueError, match=message):
        main([*([task] if task else []), "--model", str(files / "model"), "--out", str(files / "x"), *argv])


def test_a_super_resolution_stage_points_to_diffkit_edit_upscale(super_resolution_files):  # noqa: F811
    with pytest.raises(
        ValueError, match="super-resolution stage, which upscales a given image: `diffkit-edit upscale"
    ):
        parse_args(["--model", str(super_resolution_files / "sr"), "--out", "x"])


def test_without_a_task_a_stable_diffusion_folder_runs_as_sd(tmp_path):
    save_tiny_stable_diffusion(tmp_path / "sd")
    args = parse_args(["--model", str(tmp_path / "sd"), "--prompt", "a cat", "--out", str(tmp_path / "out")])
    assert (args.family, args.num_inference_steps, args.guidance_scale) == ("sd", 30, 7.5)
    with pytest.raises(ValueError, match="`sd` needs `--prompt`"):
        parse_args(["--model", str(tmp_path / "sd"), "--out", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="Name a task .* or pass `--model`"):
        parse_args(["--prompt", "a cat", "--out", str(tmp_path / "out")])


def test_the_same_seed_gives_the_same_images(files):  # noqa: F811
    for out in ("first", "second"):
        generate(files / "model", "--class", "cat", out=files / out)
    name = "class_conditional-cat-seed0-0.png"
    np.testing.assert_array_equal(
        np.asarray(Image.open(files / "first" / name)), np.asarray(Image.open(files / "second" / name))
    )
