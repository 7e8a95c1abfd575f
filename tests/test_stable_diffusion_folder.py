"""A text-conditional latent model is a Stable Diffusion folder: diffusers' `StableDiffusionPipeline` loads it
unchanged and makes the images diffkit's class makes, and so do this project's Stable Diffusion loaders and
commands; diffkit's own class and tools still load it as theirs."""

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel

from diffkit import TextConditionalImagePipeline, load_stable_diffusion
from diffkit.model_cards.card import render_model_card
from diffkit.pipelines import model_kinds

from .tiny_stable_diffusion import TEXT_HIDDEN, save_clip_tokenizer, tiny_text_encoder

MAX_TEXT_LENGTH = 8
PROMPTS = ["a handwritten seven", "the digit 3"]
# Just enough training for recognisable sevens on 2 CPU cores: the VAE's and the UNet's optimisation steps.
SLOW_VAE_STEPS, SLOW_UNET_STEPS = "150", "600"


def tiny_text_latent_pipeline(tokenizer_folder, latent_channels=4) -> TextConditionalImagePipeline:
    """A text-conditional latent pipeline as `train.py --vae` saves one: 8x8 latents of a VAE that halves, 16 px
    grey images, prompts padded to `MAX_TEXT_LENGTH` tokens with the attention mask, DDPM with steps_offset 1."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        scaling_factor=0.6,
    )
    text_encoder = tiny_text_encoder()
    text_encoder.config.use_attention_mask = True
    tokenizer = save_clip_tokenizer(str(tokenizer_folder))
    tokenizer.model_max_length = MAX_TEXT_LENGTH
    pipe = TextConditionalImagePipeline(
        unet=unet.eval(),
        scheduler=DDPMScheduler(num_train_timesteps=100, steps_offset=1, clip_sample=False),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        max_text_length=MAX_TEXT_LENGTH,
        vae=vae.eval(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, steps=3):
    return pipe(PROMPTS, num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(0),
                output_type="np").images  # fmt: skip


@pytest.fixture
def saved(tmp_path):
    pipe = tiny_text_latent_pipeline(tmp_path / "tokenizer")
    pipe.save_pretrained(tmp_path / "model")
    return pipe, tmp_path / "model"


def test_stable_diffusion_loads_the_folder_unchanged_and_makes_the_same_images(saved):
    pipe, folder = saved
    model_index = json.loads((folder / "model_index.json").read_text())
    assert model_index["_class_name"] == "StableDiffusionPipeline" and model_index["max_text_length"] == 8
    expected = sample(pipe)
    assert expected.shape == (2, 16, 16, 1)
    stable_diffusion = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    stable_diffusion.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(sample(stable_diffusion), expected, atol=1e-5)
    # plain diffusers needs no remote code: the folder names diffusers' own class
    assert type(DiffusionPipeline.from_pretrained(folder, safety_checker=None)) is StableDiffusionPipeline
    # diffkit's class still loads it as its own, with its settings
    ours = TextConditionalImagePipeline.from_pretrained(folder)
    assert type(ours) is TextConditionalImagePipeline and ours.config.max_text_length == MAX_TEXT_LENGTH
    ours.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(sample(ours), expected)


def test_the_projects_stable_diffusion_loader_runs_the_trained_weights(saved):
    pipe, folder = saved
    loaded = load_stable_diffusion(str(folder), device="cpu")
    assert type(loaded) is StableDiffusionPipeline
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(sample(loaded), sample(pipe), atol=1e-5)


def test_diffkit_tools_know_the_folder_as_a_text_model_and_the_sd_commands_run_it(saved, tmp_path):
    from diffkit.cli.edit import main as edit
    from diffkit.cli.generate import main as generate

    _, folder = saved
    config = DiffusionPipeline.load_config(folder)
    assert model_kinds.saved_kind_and_task(config) == (model_kinds.TEXT_CONDITIONAL, model_kinds.GENERATE)
    assert model_kinds.model_kind({"_class_name": "StableDiffusionPipeline"}) == model_kinds.STABLE_DIFFUSION
    generate(["--model", str(folder), "--prompt", "a seven", "--steps", "2", "--out", str(tmp_path / "ours")])
    generate(["sd", "--model", str(folder), "--prompt", "a seven", "--steps", "2", "--device", "cpu",
              "--out", str(tmp_path / "sd")])  # fmt: skip
    assert len(list((tmp_path / "ours").glob("*.png"))) == 1 and len(list((tmp_path / "sd").glob("*.png"))) == 1
    from PIL import Image

    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(tmp_path / "grey.png")
    edit(["img2img", "--pipeline", str(folder), "--image", str(tmp_path / "grey.png"), "--prompt", "a seven",
          "--strength", "0.5", "--steps", "2", "--out", str(tmp_path / "edits")])  # fmt: skip
    assert len(list((tmp_path / "edits").glob("*.png"))) == 1


def test_a_pipeline_that_stable_diffusion_would_read_otherwise_keeps_the_remote_code_form(tmp_path, caplog):
    pipe = tiny_text_latent_pipeline(tmp_path / "tokenizer")
    pipe.tokenizer.model_max_length = 77  # Stable Diffusion would pad prompts to 77 tokens, this class to 8
    with caplog.at_level(logging.INFO):
        pipe.save_pretrained(tmp_path / "model")
    model_index = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert model_index["_class_name"] == ["pipeline_text_conditional_image", "TextConditionalImagePipeline"]
    assert "not as a Stable Diffusion folder: the tokenizer pads to 77 tokens, not to max_text_length 8" in caplog.text


def test_the_model_card_of_a_stable_diffusion_folder_loads_it_without_remote_code():
    training_config = {
        "license": "mit",
        "args": {"conditioning": "text_conditional", "num_inference_steps": 20, "guidance_scale": 4.0, "seed": 0},
        "data": {"source": "digits", "num_images": 8, "resolution": 32, "num_channels": 1, "id2label": None,
                 "sample_prompts": PROMPTS},
        "run": {"global_step": 1, "images_seen": 8, "total_batch_size": 8, "num_processes": 1, "train_seconds": 1.0,
                "final_loss": 0.5},
    }  # fmt: skip
    arguments = (training_config, "TextConditionalImagePipeline", "pipeline_text_conditional_image", "me/model")
    card = render_model_card(*arguments, "samples.png", revision="abc", loads_as_stable_diffusion=True).content
    assert 'StableDiffusionPipeline.from_pretrained("me/model", revision="abc", safety_checker=None)' in card
    assert "trust_remote_code" not in card
    assert "trust_remote_code=True" in render_model_card(*arguments, "samples.png", revision="abc").content


@pytest.mark.slow
def test_a_trained_text_latent_run_draws_sevens_through_the_stable_diffusion_loader(tmp_path):
    """The whole chain on trained weights: a VAE and a text-conditional latent UNet trained here on the embedded
    digits (32 px, captions made from the labels, the default MiniLM text encoder), loaded by this project's Stable
    Diffusion loader as a `StableDiffusionPipeline`; a digit classifier trained on real digits recognises its
    sevens. About 4 minutes on 2 CPU cores, run in this process (with all its threads)."""
    from diffkit.training import train_vae
    from diffkit.training.dataset_loading import load_mnist_5k
    from diffkit.training.evaluate import real_images_from_data, train_classifier

    from .test_train import run_in_process

    vae_dir, out = tmp_path / "vae", tmp_path / "out"
    vae_args = ["--output_dir", str(vae_dir), "--resolution", "32", "--max_train_steps", SLOW_VAE_STEPS]
    train_vae.main(train_vae.parse_args([*vae_args, "--num_held_out", "16"]))
    run_in_process(
        [
            "--output_dir",
            str(out),
            "--vae",
            str(vae_dir),
            "--conditioning",
            "text_conditional",
            "--precompute_text_embeddings",
            "--resolution",
            "32",
            "--max_train_steps",
            SLOW_UNET_STEPS,
            "--num_samples_per_class",
            "1",
        ]  # fmt: skip
    )
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    pipe = load_stable_diffusion(str(out), device="cpu")
    assert type(pipe) is StableDiffusionPipeline
    pipe.set_progress_bar_config(disable=True)
    generated = pipe(
        ["a handwritten seven"] * 16,
        num_inference_steps=20,
        guidance_scale=4.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert generated.shape == (16, 1, 32, 32)

    class Data:  # the embedded digits, as real_images_from_data reads a training set
        dataset, image_mode = load_mnist_5k(), "L"

    real, labels = real_images_from_data(Data, 32)
    classifier, accuracy = train_classifier(real, labels, 10, epochs=2)
    assert accuracy > 0.9
    with torch.no_grad():
        predicted = classifier(generated.float()).argmax(1)
    sevens = (predicted == 7).float().mean().item()
    assert sevens >= 0.75, f"{sevens:.0%} of the generated images were classified as sevens: {predicted.tolist()}"


def test_the_documented_gpu_command_runs_on_a_tiny_stable_diffusion_folder(tmp_path):
    """docs/latent.md's command for Stable Diffusion's VAE, CLIP and UNet architecture with your captions, on a tiny
    random Stable Diffusion folder and 6 captioned RGB images (CPU, 2 steps): the result is a Stable Diffusion
    folder again."""
    from PIL import Image

    from .test_train import run_in_process
    from .tiny_stable_diffusion import save_tiny_stable_diffusion

    sd15 = save_tiny_stable_diffusion(str(tmp_path / "sd15"))
    images = tmp_path / "my_captioned_images"
    images.mkdir()
    lines = []
    for i in range(6):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"a photo of thing {i}"}))
    (images / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out-sd"
    run_in_process(
        [
            "--conditioning",
            "text_conditional",
            "--train_data_dir",
            str(images),
            "--caption_column",
            "text",
            "--vae",
            sd15,
            "--vae_subfolder",
            "vae",
            "--text_encoder",
            sd15,
            "--max_text_length",
            "77",
            "--model_config_name_or_path",
            sd15,
            "--resolution",
            "32",
            "--center_crop",
            "--random_flip",
            "--train_batch_size",
            "3",
            "--max_train_steps",
            "2",
            "--num_inference_steps",
            "2",
            "--num_samples_per_class",
            "1",
            "--output_dir",
            str(out),
        ]  # fmt: skip
    )
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    # Stable Diffusion's UNet architecture (the tiny one's) on 4x4 latents of its VAE, its CLIP at 77 tokens
    assert pipe.unet.config.block_out_channels == [8, 16] and pipe.unet.config.sample_size == 4
    assert pipe.tokenizer.model_max_length == 77 and pipe.vae_scale_factor == 8
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a photo of thing 1", num_inference_steps=2).images[0].size == (32, 32)
