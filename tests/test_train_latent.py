"""`train.py --vae`: latent diffusion through the real `accelerate launch`, with each image encoded once, exact resume,
the saved pipeline decoding with the VAE, and bad input refused before any work."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from diffkit import ClassConditionalImagePipeline, TextConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.training import latents
from diffkit.training.latents import LatentDistributions

from .test_checkpointing import assert_same_weights
from .test_latent_pipelines import IMAGE_SIDE, LATENT_CHANNELS, LATENT_SIDE, SCALING_FACTOR, SHIFT_FACTOR, tiny_vae
from .test_train import run_in_process, write_unet_config
from .utils import (
    TINY_CONDITION_UNET_CONFIG,
    TINY_UNET2D_CONFIG,
    assert_launch_succeeded,
    free_port,
    run_accelerate_launch,
)

# A few steps on 40 digits at 16 px, in the 8x8 latents of a tiny VAE; checkpoints at step 2 and flips on, so that
# resume has to restore the augmentation and the latent sampling.
LATENT_RUN = [
    "--max_train_samples", "40", "--max_train_steps", "4", "--train_batch_size", "8", "--lr_warmup_steps", "1",
    "--resolution", str(IMAGE_SIDE), "--num_inference_steps", "2", "--num_samples_per_class", "2",
    "--checkpointing_steps", "2", "--random_flip", "--use_ema", "--ema_decay", "0.9",
]  # fmt: skip


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-vae")
    tiny_vae().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def unet_config(tmp_path_factory):
    return write_unet_config(tmp_path_factory.mktemp("unet-config"), TINY_CONDITION_UNET_CONFIG, "unet.json")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, vae_folder, unet_config):
    output_dir = tmp_path_factory.mktemp("latent") / "out"
    args = [
        *LATENT_RUN,
        "--output_dir",
        str(output_dir),
        "--vae",
        vae_folder,
        "--model_config_name_or_path",
        unet_config,
    ]
    result = run_accelerate_launch(args)
    assert_launch_succeeded(result)
    return output_dir, result


@pytest.mark.slow
def test_accelerate_launch_trains_a_latent_pipeline_that_decodes_with_its_vae(latent_run):
    output_dir, result = latent_run
    assert "Encoded 40 training images into 2x8x8 latents" in result.stderr
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.unet.config.in_channels == LATENT_CHANNELS and pipe.unet.config.sample_size == LATENT_SIDE
    assert pipe.vae.config.scaling_factor == SCALING_FACTOR and pipe.vae.config.shift_factor == SHIFT_FACTOR
    # latents are not pixels: the saved sampler does not clip them to [-1, 1]
    assert pipe.scheduler.config.clip_sample is False
    config = json.loads((output_dir / "training_config.json").read_text())
    assert config["data"]["resolution"] == IMAGE_SIDE
    latent = config["data"]["latent"]
    assert latent["down_factor"] == 2 and latent["latent_size"] == LATENT_SIDE and latent["latent_channels"] == 2
    assert latent["scaling_factor"] == SCALING_FACTOR and latent["shift_factor"] == SHIFT_FACTOR
    card = (output_dir / "README.md").read_text()
    assert "- latent-diffusion" in card and "| space | latents of " in card
    assert "scaling_factor 0.7, shift_factor 0.1" in card
    # the grid and the pipeline's images are in pixels, at the data's resolution
    from PIL import Image

    assert Image.open(output_dir / "samples.png").size == (2 * IMAGE_SIDE, 10 * IMAGE_SIDE)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(class_labels=["seven"], num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (IMAGE_SIDE, IMAGE_SIDE) and image.mode == "L"


@pytest.mark.slow
def test_a_resumed_latent_run_ends_with_the_uninterrupted_weights(latent_run, tmp_path, vae_folder, unet_config):
    uninterrupted, _ = latent_run
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-2", output_dir / "checkpoint-2")
    args = [*LATENT_RUN, "--output_dir", str(output_dir), "--vae", vae_folder, "--model_config_name_or_path"]
    result = run_accelerate_launch([*args, unet_config, "--resume_from_checkpoint", "latest"])
    assert_launch_succeeded(result)
    assert "at step 2 " in result.stderr
    name = "unet/diffusion_pytorch_model.safetensors"
    assert_same_weights(output_dir / name, uninterrupted / name)
    assert_same_weights(
        output_dir / "checkpoint-4" / "model.safetensors", uninterrupted / "checkpoint-4" / "model.safetensors"
    )


@pytest.mark.slow
def test_two_processes_encode_their_shares_and_train_one_latent_model(tmp_path, vae_folder, unet_config):
    import subprocess
    import sys

    from .utils import REPO_ROOT

    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()), "training/train.py",
        "--output_dir", str(tmp_path / "out"), "--vae", vae_folder, "--model_config_name_or_path", unet_config,
        "--max_train_samples", "42", "--train_batch_size", "8", "--max_train_steps", "2", "--resolution", "16",
        "--num_inference_steps", "1", "--num_samples_per_class", "1", "--random_flip",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as error:
        # a run that normally takes seconds: say where the processes stood (one CI run hung here once, unreproduced)
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        pytest.fail(f"the two-process latent run did not finish in 300 s; its log ended with:\n{stderr[-6000:]}")
    assert_launch_succeeded(result)
    # 42 images in two shares of 21: every process holds all of them after the gather
    assert result.stderr.count("Encoded 42 training images") == 1  # logged by the main process
    assert ClassConditionalImagePipeline.from_pretrained(tmp_path / "out").vae is not None


def test_each_image_is_encoded_once_and_the_vae_never_runs_in_a_training_step(tmp_path, vae_folder, monkeypatch):
    calls = {"encode": 0, "decode": 0}
    encode, decode = AutoencoderKL.encode, AutoencoderKL.decode

    def counting_encode(self, *args, **kwargs):
        calls["encode"] += 1
        return encode(self, *args, **kwargs)

    def counting_decode(self, *args, **kwargs):
        calls["decode"] += 1
        return decode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting_encode)
    monkeypatch.setattr(AutoencoderKL, "decode", counting_decode)
    unet_config = write_unet_config(tmp_path, TINY_UNET2D_CONFIG, "unet.json")
    output_dir = tmp_path / "out"
    run_in_process(
        [
            "--conditioning",
            "unconditional",
            "--vae",
            vae_folder,
            "--model_config_name_or_path",
            unet_config,
            "--output_dir",
            str(output_dir),
            "--max_train_samples",
            "70",
            "--train_batch_size",
            "10",
            "--max_train_steps",
            "14",
            "--resolution",
            "16",
            "--num_inference_steps",
            "1",
            "--num_samples_per_class",
            "1",
        ]  # fmt: skip
    )
    # 70 images in batches of 64 (two encoder passes) for 14 steps, two epochs; one decode: the sample grid
    assert calls == {"encode": 2, "decode": 1}
    pipe = UnconditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.vae is not None and pipe.unet.config.in_channels == LATENT_CHANNELS


def test_a_text_run_on_latents(tmp_path, vae_folder, tiny_clip_folder):
    output_dir = tmp_path / "out"
    run_in_process(
        [
            "--conditioning",
            "text_conditional",
            "--text_encoder",
            tiny_clip_folder,
            "--vae",
            vae_folder,
            "--output_dir",
            str(output_dir),
            "--max_train_samples",
            "16",
            "--train_batch_size",
            "8",
            "--max_train_steps",
            "1",
            "--resolution",
            "32",
            "--num_inference_steps",
            "1",
            "--num_samples_per_class",
            "1",
        ]  # fmt: skip
    )
    pipe = TextConditionalImagePipeline.from_pretrained(output_dir)
    # the default UNet fits the latents: 32 px images in the tiny VAE's 16x16 latents of 2 channels
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == LATENT_CHANNELS
    pipe.set_progress_bar_config(disable=True)
    assert pipe(prompt="a handwritten seven", num_inference_steps=1).images[0].size == (32, 32)


def test_without_resolution_the_images_are_resized_up_to_a_side_the_latents_fit(tmp_path, vae_folder, caplog):
    output_dir = tmp_path / "out"
    with caplog.at_level("INFO"):
        run_in_process(
            [
                "--vae",
                vae_folder,
                "--output_dir",
                str(output_dir),
                "--max_train_samples",
                "8",
                "--train_batch_size",
                "8",
                "--max_train_steps",
                "1",
                "--num_inference_steps",
                "1",
                "--num_samples_per_class",
                "1",
            ]  # fmt: skip
        )
    # 28 px digits: the VAE halves them to 14, which the default UNet's 3 down blocks cannot halve twice; 32 fits
    assert "The 28px images give latents that the UNet cannot halve evenly, so they are resized to 32px" in caplog.text
    assert json.loads((output_dir / "training_config.json").read_text())["data"]["resolution"] == 32


def test_latents_are_sampled_from_each_images_posterior_with_the_vae_scaling():
    mean = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3, 1, 1)  # 2 images, 2 views, 3 channels
    logvar = torch.full_like(mean, -2.0)
    distributions = LatentDistributions(mean, logvar, torch.tensor([5, 9]), scaling_factor=0.5, shift_factor=1.0)
    indices, flipped = torch.tensor([9, 5, 9]), torch.tensor([False, True, True])
    sampled = distributions.sample(indices, flipped, torch.Generator().manual_seed(3))
    noise = torch.randn((3, 3, 1, 1), generator=torch.Generator().manual_seed(3))
    expected_mean = torch.stack([mean[1, 0], mean[0, 1], mean[1, 1]])
    torch.testing.assert_close(sampled, (expected_mean + np.exp(-1.0) * noise - 1.0) * 0.5)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unet_folder", "`--vae` .* holds a UNet2DConditionModel config, not an AutoencoderKL"),
        (
            "pipeline_folder",
            "holds no config.json, so it is not an AutoencoderKL folder. It is a pipeline folder: add ",
        ),
        ("resolution", "`--resolution` 20 does not fit the latent model: .* Pass --resolution 24"),
        ("channels", "`--model_config_name_or_path` .* is a UNet of 4 input channels, but the latents of `--vae`"),
        ("super_resolution", "`--vae` trains in a VAE's latent space, which --conditioning 'super_resolution' does"),
        ("subfolder_alone", "`--vae_subfolder` only applies with --vae"),
        ("rgb_vae", "`--vae` .* encodes 3-channel images, but the training images have 1 channel"),
    ],
)
def test_bad_latent_input_is_refused_before_any_work(tmp_path, vae_folder, case, message):
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--max_train_steps", "1", "--max_train_samples", "8", "--vae", vae_folder]
    if case == "unet_folder":
        torch.manual_seed(0)
        UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).save_pretrained(tmp_path / "unet")
        args[-1] = str(tmp_path / "unet")
    elif case == "pipeline_folder":
        shutil.copytree(vae_folder, tmp_path / "pipe" / "vae")
        (tmp_path / "pipe" / "model_index.json").write_text("{}")
        args[-1] = str(tmp_path / "pipe")
    elif case == "resolution":
        args += ["--resolution", "20"]  # the VAE halves, the default UNet halves twice: a multiple of 8
    elif case == "channels":
        config = {**TINY_CONDITION_UNET_CONFIG, "in_channels": 4, "out_channels": 4}
        args += ["--model_config_name_or_path", str(tmp_path / "unet.json")]
        (tmp_path / "unet.json").write_text(json.dumps(config))
    elif case == "super_resolution":
        args += ["--conditioning", "super_resolution", "--low_resolution", "8", "--resolution", "16"]
    elif case == "subfolder_alone":
        args = args[:-2] + ["--vae_subfolder", "vae"]
    elif case == "rgb_vae":
        tiny_vae(in_channels=3).save_pretrained(tmp_path / "rgb-vae")
        args[-1] = str(tmp_path / "rgb-vae")
    with pytest.raises(ValueError, match=message):
        run_in_process(args)
    assert not output_dir.exists()


def test_the_latent_flags_are_documented_as_diffusers_spells_them():
    from diffkit.training.train import build_parser

    args = build_parser().parse_args(["--pretrained_vae_model_name_or_path", "vae-out", "--vae_subfolder", "vae"])
    assert args.vae == "vae-out" and args.vae_subfolder == "vae"
    assert latents.LATENT_CONDITIONINGS == ("unconditional", "class_conditional", "text_conditional")


def test_evaluation_during_a_latent_run_scores_decoded_images_and_keeps_the_vae(tmp_path, vae_folder, unet_config):
    output_dir = tmp_path / "out"
    run_in_process(
        [
            "--vae",
            vae_folder,
            "--model_config_name_or_path",
            unet_config,
            "--output_dir",
            str(output_dir),
            "--max_train_samples",
            "40",
            "--train_batch_size",
            "8",
            "--max_train_steps",
            "2",
            "--resolution",
            "16",
            "--num_inference_steps",
            "2",
            "--num_samples_per_class",
            "1",
            "--eval_steps",
            "2",
            "--eval_num_samples",
            "12",
            "--eval_batch_size",
            "6",
            "--eval_feature_resolution",
            "32",
            "--save_best_by",
            "FD-classifier",
        ]  # fmt: skip
    )
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and np.isfinite(metrics["generated"]["FID-MobileNetV2"])
    # the images were scored in pixels: 16 px digits against the real ones at 16 px
    assert 0 <= metrics["class-accuracy"] <= 1
    best = ClassConditionalImagePipeline.from_pretrained(output_dir / "best")
    assert best.vae is not None and best.vae.config.scaling_factor == SCALING_FACTOR
