"""`training/train_vae.py`: an `AutoencoderKL` trained with accelerate, its measured scaling, figures, grid and card,
exact resume, bad input; and the loss terms and reconstruction metrics it uses."""

import importlib.util
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from skimage.metrics import structural_similarity

from diffkit.pipelines import model_kinds
from diffkit.training.dataset_loading import load_training_data
from diffkit.training.evaluate import real_images_from_data
from diffkit.training.feature_extractors import MobileNetV2Features
from diffkit.training.reconstruction import psnr, reconstruction_grid, ssim
from diffkit.training.train_vae import (
    GRID_COLUMNS,
    GRID_IMAGES,
    RECONSTRUCTIONS_NAME,
    SCALING_IMAGES,
    held_out_images,
    latent_statistics,
    parse_args,
)
from diffkit.training.vae_losses import MobileNetV2Perceptual, PatchDiscriminator, hinge_discriminator_loss

from .test_checkpointing import assert_same_weights
from .utils import REPO_ROOT, assert_launch_succeeded, free_port, run_accelerate_launch

# A VAE small enough to train in seconds on 2 CPU cores, on 64 digits with 16 held out; every loss term is on,
# the discriminator from step 2, and EMA, so that resume has every piece of state to restore.
TINY_VAE_RUN = [
    "--max_train_samples", "80", "--num_held_out", "16", "--train_batch_size", "16", "--max_train_steps", "6",
    "--block_out_channels", "8", "16", "16", "--norm_num_groups", "8", "--latent_channels", "2",
    "--disc_start", "2", "--checkpointing_steps", "3", "--random_flip", "--lr_warmup_steps", "1",
    "--ema_decay", "0.9", "--validation_steps", "3",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("vae") / "out"
    result = run_accelerate_launch([*TINY_VAE_RUN, "--output_dir", str(output_dir)], script="train_vae.py")
    assert_launch_succeeded(result)
    return output_dir, result


@pytest.mark.slow
def test_accelerate_launch_trains_a_vae_that_from_pretrained_loads(trained_vae):
    output_dir, result = trained_vae
    vae = AutoencoderKL.from_pretrained(output_dir)
    assert vae.config.in_channels == 1 and vae.config.latent_channels == 2 and vae.config.sample_size == 28
    assert (output_dir / "diffusion_pytorch_model.safetensors").is_file() and not list(output_dir.glob("*.bin"))
    config = json.loads((output_dir / "training_config.json").read_text())
    assert config["vae"]["down_factor"] == 4 and config["vae"]["latent_size"] == 7
    assert config["run"]["global_step"] == 6 and config["data"]["num_images"] == 64
    figures = config["figures"]
    assert figures["held_out_images"] == 16
    assert np.isfinite([figures["psnr"], figures["ssim"], figures["rfid_mobilenetv2"]]).all()
    assert figures["rfid_mobilenetv2_floor"] >= 0
    assert "PatchGAN from step 2" in result.stderr and "Trained 6 steps" in result.stderr
    # the grid: 16 held-out digits in rows of 8, each row above its reconstructions
    grid = Image.open(output_dir / RECONSTRUCTIONS_NAME)
    assert grid.size == (GRID_COLUMNS * 28, 2 * GRID_IMAGES // GRID_COLUMNS * 28)
    # --validation_steps 3: a grid of the same layout at step 3 and at step 6
    validation = sorted(p.name for p in (output_dir / "validation").iterdir())
    assert validation == ["step-3.png", "step-6.png"]
    assert Image.open(output_dir / "validation" / "step-3.png").size == grid.size
    card = (output_dir / "README.md").read_text()
    assert f"| {figures['psnr']} | {figures['ssim']} |" in card and "scaling_factor" in card


@pytest.mark.slow
def test_the_saved_scaling_factor_gives_the_training_latents_unit_variance(trained_vae):
    output_dir, _ = trained_vae
    vae = AutoencoderKL.from_pretrained(output_dir)
    args = parse_args([*TINY_VAE_RUN, "--output_dir", str(output_dir), "--overwrite_output_dir"])
    data = load_training_data(SimpleNamespace(**vars(args), conditioning=model_kinds.UNCONDITIONAL))
    training_data, held_out = held_out_images(args, data, 28)
    assert len(held_out) == 16 and len(training_data.dataset) == 64
    images = real_images_from_data(training_data, 28)[0]
    _, std = latent_statistics(vae, images[:SCALING_IMAGES], seed=1)  # another draw of the latents than training's
    assert abs(std * vae.config.scaling_factor - 1) < 0.05
    assert vae.config.scaling_factor != 0.18215  # measured, not diffusers' default


@pytest.mark.slow
def test_resume_from_a_checkpoint_gives_the_uninterrupted_weights(trained_vae, tmp_path):
    uninterrupted, _ = trained_vae
    # a run killed right after its checkpoint of step 3: the folder holds that checkpoint alone
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-3", output_dir / "checkpoint-3")
    result = run_accelerate_launch(
        [*TINY_VAE_RUN, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"], script="train_vae.py"
    )
    assert_launch_succeeded(result)
    assert "at step 3 " in result.stderr
    assert_same_weights(
        output_dir / "diffusion_pytorch_model.safetensors", uninterrupted / "diffusion_pytorch_model.safetensors"
    )
    # the discriminator and both optimisers resumed too: the raw weights of the last checkpoint match
    for name in ("model.safetensors", "model_1.safetensors"):
        assert_same_weights(output_dir / "checkpoint-6" / name, uninterrupted / "checkpoint-6" / name)
    resumed = json.loads((output_dir / "training_config.json").read_text())
    reference = json.loads((uninterrupted / "training_config.json").read_text())
    assert resumed["vae"] == reference["vae"] and resumed["figures"] == reference["figures"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--down_factor", "8"], "`--resolution (by default the images' size)` 28 is not divisible by the VAE's"),
        (["--resolution", "30"], "`--resolution` 30 is not divisible by the VAE's down factor 4"),
        (["--block_out_channels", "8", "16"], "gives 2 blocks, but --down_factor 4 needs 3"),
        (["--norm_num_groups", "32"], "`--norm_num_groups` 32 does not divide the block channels"),
        (["--vae_subfolder", "vae"], "`--vae_subfolder` only applies with --pretrained_vae"),
        (["--disc_start", "-1"], "`--disc_start` must be a step >= 0"),
        (["--kl_weight", "nan"], "`--kl_weight` must be a finite number >= 0"),
        (["--num_held_out", "4"], "`--num_held_out` must be at least 16"),
        (["--perceptual", "lpips"], "`--perceptual lpips` needs the `lpips` package"),
    ],
)
def test_bad_input_is_refused_before_any_work(tmp_path, extra, message):
    if extra[0] == "--perceptual" and importlib.util.find_spec("lpips") is not None:
        pytest.skip("lpips is installed here, so the message for its absence cannot show; it runs where it is not")
    args = ["--output_dir", str(tmp_path / "out"), "--block_out_channels", "8", "16", "16", "--norm_num_groups", "8"]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        if extra[0] == "--down_factor":
            from diffkit.training.train_vae import main

            main(parse_args([*args, "--block_out_channels", "8", "16", "16", "16", *extra[:2]]))
        else:
            parse_args([*args, *extra])
    assert not (tmp_path / "out").exists()


def test_a_pretrained_vae_of_other_channels_is_refused(tmp_path):
    folder = tmp_path / "rgb-vae"
    AutoencoderKL(block_out_channels=(8,), norm_num_groups=8, in_channels=3, out_channels=3).save_pretrained(folder)
    from diffkit.training.train_vae import build_vae

    args = parse_args(["--output_dir", str(tmp_path / "out"), "--pretrained_vae", str(folder)])
    with pytest.raises(ValueError, match="encodes 3-channel images, but the training images have 1"):
        build_vae(args, num_channels=1, resolution=28)


def test_ssim_and_psnr_agree_with_scikit_image():
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(3, 1, 28, 28, generator=generator)
    images = (references + 0.1 * torch.randn(3, 1, 28, 28, generator=generator)).clamp(0, 1)
    expected = [
        structural_similarity(
            a[0].numpy().astype(np.float64),
            b[0].numpy().astype(np.float64),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        for a, b in zip(images, references)
    ]
    np.testing.assert_allclose(ssim(images, references).numpy(), expected, atol=1e-6)
    assert torch.allclose(ssim(references, references), torch.ones(3, dtype=torch.float64))
    mse = ((images - references) ** 2).mean(dim=(1, 2, 3)).double()
    np.testing.assert_allclose(psnr(images, references).numpy(), (10 * torch.log10(1 / mse)).numpy(), rtol=1e-6)


def test_the_reconstruction_grid_puts_each_row_above_its_reconstructions():
    images = torch.zeros(4, 1, 2, 2)
    reconstructions = torch.ones(4, 1, 2, 2)
    grid = np.asarray(reconstruction_grid(images, reconstructions, columns=2))[..., 0]
    assert grid.shape == (8, 4)
    assert (grid[0:2] == 0).all() and (grid[2:4] == 255).all() and (grid[4:6] == 0).all() and (grid[6:8] == 255).all()
    with pytest.raises(ValueError, match="3 images do not fill rows of 2"):
        reconstruction_grid(images[:3], reconstructions[:3], columns=2)


def test_the_perceptual_distance_is_zero_for_equal_images_and_grows_with_the_difference():
    torch.manual_seed(0)
    perceptual = MobileNetV2Perceptual(MobileNetV2Features(resolution=64).eval())
    images = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(perceptual(images, images), torch.zeros(2), atol=1e-6)
    slightly = (images + 0.05 * torch.randn_like(images)).requires_grad_(True)
    much = images + 0.5 * torch.randn_like(images)
    near, far = perceptual(slightly, images), perceptual(much, images)
    assert (0 < near).all() and (near < far).all()
    near.sum().backward()  # differentiable in the reconstruction, the frozen network gets no gradient
    assert slightly.grad.abs().sum() > 0
    assert all(p.grad is None for p in perceptual.parameters())


def test_the_patch_discriminator_scores_patches_and_the_hinge_loss_is_zero_when_they_are_told_apart():
    scores = PatchDiscriminator(in_channels=1)(torch.zeros(2, 1, 28, 28))
    assert scores.shape[:2] == (2, 1) and scores.shape[-1] > 1  # one score per patch
    assert hinge_discriminator_loss(torch.full((2, 1, 5, 5), 2.0), torch.full((2, 1, 5, 5), -2.0)) == 0
    assert hinge_discriminator_loss(torch.zeros(1), torch.zeros(1)) == 1


def test_every_flag_has_help_and_the_shared_groups_are_train_py_s():
    from diffkit.training.arguments import build_parser as train_parser
    from diffkit.training.vae_arguments import build_parser

    parser = build_parser()
    flags = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert [a.option_strings[0] for a in flags if not (a.help and len(a.help) > 10)] == []
    shared = {"data", "EMA of the weights", "checkpoints", "watching a run"}
    groups = {group.title: [a.dest for a in group._group_actions] for group in parser._action_groups}
    train_groups = {group.title: [a.dest for a in group._group_actions] for group in train_parser()._action_groups}
    assert all(groups[title] == train_groups[title] for title in shared)


@pytest.mark.slow
def test_shift_factor_centres_the_latents_before_scaling(tmp_path):
    output_dir = tmp_path / "shifted"
    run = [*TINY_VAE_RUN, "--max_train_steps", "2", "--shift_factor", "--output_dir", str(output_dir)]
    assert_launch_succeeded(run_accelerate_launch(run, script="train_vae.py"))
    vae = AutoencoderKL.from_pretrained(output_dir)
    config = json.loads((output_dir / "training_config.json").read_text())["vae"]
    assert vae.config.shift_factor == config["shift_factor"] == round(config["latent_mean"], 5)
    # both figures are rounded to 5 decimals, the factor from the unrounded std: equal to within that rounding
    assert vae.config.scaling_factor == pytest.approx(1 / config["latent_std"], abs=2e-5)
    assert "`shift_factor`" in (output_dir / "README.md").read_text()


@pytest.mark.slow
def test_two_processes_train_one_vae_with_the_discriminator_over_gloo(tmp_path):
    output_dir = tmp_path / "two"
    # a free port of our own: with `--main_process_port 0` the floor version of accelerate (1.1) never rendezvouses
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        "training/train_vae.py", *TINY_VAE_RUN, "--train_batch_size", "8", "--output_dir", str(output_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "DistributedType.MULTI_CPU" in output and "terminate called" not in output
    run = json.loads((output_dir / "training_config.json").read_text())["run"]
    assert run["num_processes"] == 2 and run["total_batch_size"] == 16 and run["global_step"] == 6
    checkpoint = {p.name for p in (output_dir / "checkpoint-6").iterdir()}
    # both processes' states, and the discriminator's weights and optimiser beside the autoencoder's
    assert {"noise_generator_0.safetensors", "noise_generator_1.safetensors", "model_1.safetensors"} <= checkpoint
    assert {"optimizer.bin", "optimizer_1.bin"} <= checkpoint
    AutoencoderKL.from_pretrained(output_dir)
