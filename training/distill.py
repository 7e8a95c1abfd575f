#!/usr/bin/env python
"""Distil a trained diffkit pipeline, with its classifier-free guidance, into a few-step student.

    accelerate launch --num_cpu_threads_per_process $(nproc) training/distill.py --model out --output_dir out-fast

trains a student of the teacher's architecture, initialised from it, on the teacher's own training data (named in its
`training_config.json`), at the timesteps of the grid that its `LCMScheduler` samples on. The student reads the
guidance scale w through `timestep_cond` (`UNet2DConditionModel(time_cond_proj_dim=...)`, as LCM does), so that it
samples with one UNet evaluation per step at the scale the user picks, within --guidance_scale_range. Two methods:

- `--method guidance` (the default for a guided teacher; Meng et al. 2023, stage one): the student's one pass learns
  the guided teacher's two, `uncond + w * (cond - uncond)`;
- `--method consistency` (LCM, Luo et al. 2023): one DDIM step of the guided teacher moves the noisy image from grid
  point t to s = t - k, and the student's clean-image estimate at t learns the target network's (an EMA of the
  student) at s, so that every step jumps to the end of the teacher's deterministic trajectory.

The output is an ordinary diffkit pipeline folder of the teacher's class; docs/distillation.md measures both methods,
and `python training/distill.py --help` lists every flag.
"""

# Before diffusers loads: its import-time notices that no user can act on stay out of the log.
import diffkit.training.library_notices  # noqa: F401

# isort: split
import argparse
import inspect
import itertools
import json
import math
import os
import time

import huggingface_hub
import torch
import torch.nn.functional as F
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from diffusers import LCMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from diffkit.model_cards.card import render_model_card
from diffkit.pipelines import model_kinds
from diffkit.pipelines.pipeline_class_conditional_image import guidance_scale_embedding, one_hot_label_states
from diffkit.pipelines.pipeline_text_conditional_image import encode_text
from diffkit.training.arguments import build_parser as build_train_parser
from diffkit.training.conditioning import ClassConditioning, TextConditioning, Unconditional
from diffkit.training.dataset_loading import INDEX_COLUMN, decode_once, load_training_data
from diffkit.training.distill_arguments import CONSISTENCY, DEFAULT_GUIDANCE_SCALE_RANGE, GUIDANCE, build_parser
from diffkit.training.hub import HubPushError, push_pipeline_folder
from diffkit.training.latents import encode_training_images
from diffkit.training.output_lock import check_output_dir_free, release_output_dir
from diffkit.training.preemption import StopSignals
from diffkit.training.process_group import collective_failures_named, count_processes, settle_process_group
from diffkit.training.train import (
    FINAL_LOSS_WINDOW,
    MODEL_CARD_NAME,
    SAMPLES_NAME,
    TRAINING_CONFIG_NAME,
    check_counts,
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
    staged_outputs,
    state_to_resume,
    step_counts,
    stop_for_preemption,
    stop_on_nonfinite_loss,
    training_dataloader,
)

logger = get_logger(__name__, log_level="INFO")

# The kinds of teacher distill.py takes, and whether each has a guidance to fold into the student.
GUIDED_KINDS = (model_kinds.CLASS_CONDITIONAL, model_kinds.TEXT_CONDITIONAL)
DISTILLABLE_KINDS = (*GUIDED_KINDS, model_kinds.UNCONDITIONAL)


def parse_args(input_args=None):
    args = build_parser().parse_args(input_args)
    validate_args(args)
    return args


def validate_args(args):
    """Reject flag values that cannot work, before any data or model is loaded (the teacher's config included)."""
    # Not argparse's `required`: the defaults of every flag must parse from an empty command line, as
    # `check_output_dir` reads them to compare this run with a stored one.
    for name, flag in (("teacher", "--model"), ("output_dir", "--output_dir")):
        if getattr(args, name) is None:
            raise ValueError(f"`{flag}` is required: e.g. `--model out --output_dir out-fast`.")
    positive = ["train_batch_size", "num_epochs", "gradient_accumulation_steps", "num_inference_steps"]
    positive += ["num_ddim_timesteps", "unet_time_cond_proj_dim", "num_samples_per_class"]
    optional_positive = ("max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "validation_steps")
    check_counts(args, positive, optional_positive)
    for name in ("learning_rate", "max_grad_norm", "huber_c"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise ValueError(f"`--{name}` must be a positive number, but is {getattr(args, name)}.")
    if not 0 < args.ema_decay < 1:
        raise ValueError(f"`--ema_decay` must be in (0, 1), but is {args.ema_decay}; LCM uses 0.95.")
    if args.unet_time_cond_proj_dim < 2:
        raise ValueError(f"`--unet_time_cond_proj_dim` must be at least 2, but is {args.unet_time_cond_proj_dim}.")
    teacher_dir = teacher_folder(args.teacher, args.cache_dir)
    model_index, training_config = read_teacher_configs(teacher_dir, args.teacher)
    kind = model_kinds.model_kind(model_index)
    num_train_timesteps = read_json(os.path.join(teacher_dir, "scheduler", "scheduler_config.json"))
    num_train_timesteps = num_train_timesteps["num_train_timesteps"]
    if args.num_ddim_timesteps > num_train_timesteps:
        raise ValueError(
            f"`--num_ddim_timesteps` {args.num_ddim_timesteps} exceeds the teacher's {num_train_timesteps} training "
            f"timesteps; use at most {num_train_timesteps} (48 suits 1000)."
        )
    if args.num_inference_steps > args.num_ddim_timesteps:
        raise ValueError(
            f"`--num_inference_steps` {args.num_inference_steps} is more than the {args.num_ddim_timesteps} points of "
            "the solver's grid (--num_ddim_timesteps), so the student cannot reach it: a consistency student takes "
            "1-8 steps; lower it, or raise --num_ddim_timesteps."
        )
    if args.method is None:
        args.method = GUIDANCE if kind in GUIDED_KINDS else CONSISTENCY
    if kind in GUIDED_KINDS:
        if args.guidance_scale_range is None:
            args.guidance_scale_range = list(DEFAULT_GUIDANCE_SCALE_RANGE)
        low, high = args.guidance_scale_range
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
            raise ValueError(
                f"`--guidance_scale_range` must be two finite scales MIN <= MAX with MIN >= 0, but is {low} {high}; "
                "e.g. 1 8."
            )
        if args.guidance_scale is None:
            args.guidance_scale = float(model_index.get("guidance_scale", 1.0))
            args.guidance_scale = min(max(args.guidance_scale, low), high)
        if not low <= args.guidance_scale <= high:
            raise ValueError(
                f"`--guidance_scale` {args.guidance_scale} is outside --guidance_scale_range {low} {high}: the "
                "student's default scale must be one it learns."
            )
    else:
        if args.method == GUIDANCE:
            raise ValueError(
                f"`--method guidance` folds classifier-free guidance into the student, but --teacher {args.teacher!r} "
                f"is {kind}, which has no guidance: use --method consistency."
            )
        for name in ("guidance_scale_range", "guidance_scale"):
            if getattr(args, name) is not None:
                raise ValueError(
                    f"`--{name}` applies to a guided (class- or text-conditional) teacher, but --teacher "
                    f"{args.teacher!r} is {kind}: drop --{name}."
                )
    check_hub_args(args)
    check_output_dir_free(args.output_dir)
    check_output_dir(args, build_parser())


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def teacher_folder(teacher: str, cache_dir=None) -> str:
    """The local folder of --teacher: the folder itself, or a snapshot of the Hub repo it names."""
    if os.path.isdir(teacher):
        return teacher
    if os.path.exists(teacher) or teacher.count("/") != 1:
        raise ValueError(
            f"`--teacher` {teacher!r} is neither a local folder nor a Hub repo id (namespace/name): pass the "
            "--output_dir of training/train.py."
        )
    try:
        return huggingface_hub.snapshot_download(teacher, cache_dir=cache_dir)
    except Exception as error:  # the Hub's errors differ by release; all mean the repo cannot be read
        raise ValueError(
            f"`--teacher` {teacher!r} is neither a local folder nor a Hub repo that could be downloaded ({error}); "
            "pass the --output_dir of training/train.py."
        ) from error


def read_teacher_configs(teacher_dir: str, teacher: str):
    """The teacher's `model_index.json` and `training_config.json`, refused unless they describe a diffkit model of a
    kind distill.py takes."""
    index_path = os.path.join(teacher_dir, "model_index.json")
    config_path = os.path.join(teacher_dir, TRAINING_CONFIG_NAME)
    if not os.path.isfile(index_path):
        raise ValueError(
            f"`--teacher` {teacher!r} holds no model_index.json, so it is not a diffusers pipeline; pass the "
            "--output_dir of training/train.py."
        )
    model_index = read_json(index_path)
    kind = model_kinds.model_kind(model_index)
    if kind not in DISTILLABLE_KINDS:
        raise ValueError(
            f"`--teacher` {teacher!r} is a {model_kinds.saved_class_name(model_index)} "
            f"({kind or 'not a diffkit model'}); distill.py distils diffkit's {', '.join(DISTILLABLE_KINDS)} "
            "pipelines."
        )
    if not os.path.isfile(config_path):
        raise ValueError(
            f"`--teacher` {teacher!r} has no {TRAINING_CONFIG_NAME}, which names the data it was trained on and the "
            "student trains on: pass the --output_dir of training/train.py, which writes it."
        )
    return model_index, read_json(config_path)


def teacher_training_args(training_config: dict) -> argparse.Namespace:
    """The teacher's train.py flags (a flag added since its run takes its default), to load its data as it did."""
    defaults = vars(build_train_parser().parse_args([]))
    return argparse.Namespace(**{**defaults, **training_config["args"]})


def load_teacher(teacher_dir: str, kind: str, device):
    """The teacher pipeline, through diffkit's class for its kind, on `device` and frozen."""
    pipeline_class = model_kinds.pipeline_class(kind, model_kinds.GENERATE)
    teacher = pipeline_class.from_pretrained(teacher_dir)
    teacher.to(device)
    for component in teacher.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
            component.eval()
    return teacher


def build_student(teacher_unet, guided: bool, time_cond_proj_dim: int):
    """A UNet of the teacher's architecture (plus the guidance-scale embedding, for a guided teacher) with the
    teacher's weights; the embedding's projection starts at zero, so that the student starts as the teacher."""
    # Private entries such as `_use_default_values` would make `from_config` ignore the new value.
    config = {k: v for k, v in teacher_unet.config.items() if not k.startswith("_")}
    if guided:
        config["time_cond_proj_dim"] = time_cond_proj_dim
    student = type(teacher_unet).from_config(config)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or any(not name.startswith("time_embedding.cond_proj") for name in missing):
        raise RuntimeError(f"The student does not take the teacher's weights: missing {missing}, extra {unexpected}")
    if guided:
        torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def student_scheduler(teacher_scheduler, num_ddim_timesteps: int) -> LCMScheduler:
    """The student's sampler: `LCMScheduler` on the teacher's noise schedule and the distillation's grid (its
    clipping and offset settings are the teacher's)."""
    # Only the settings LCMScheduler takes (DDPM's variance_type is not one of them)
    accepted = inspect.signature(LCMScheduler.__init__).parameters
    settings = {k: v for k, v in teacher_scheduler.config.items() if k in accepted}
    return LCMScheduler(**{**settings, "original_inference_steps": num_ddim_timesteps})


def solver_grid(num_train_timesteps: int, num_ddim_timesteps: int) -> torch.Tensor:
    """The skipping-step grid, as `LCMScheduler.set_timesteps` makes it: k-1, 2k-1, ..., N*k-1 with k = T // N."""
    step = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1) * step - 1


def guidance_inputs(teacher, kind: str, batch: dict, device, dtype, empty_caption_states=None):
    """The teacher's conditional and unconditional keyword arguments for a batch (None without guidance), as its
    pipeline builds them: the one-hot label and the null label, or the caption's and the empty caption's states (for
    a text teacher, `empty_caption_states`: `encode_text` of `[""]`, encoded once before training)."""
    if kind == model_kinds.CLASS_CONDITIONAL:
        labels = batch["labels"].to(device)
        num_classes = teacher.config.num_classes
        null_labels = torch.full_like(labels, teacher.config.null_class_id)
        return (
            {"encoder_hidden_states": one_hot_label_states(labels, num_classes, dtype)},
            {"encoder_hidden_states": one_hot_label_states(null_labels, num_classes, dtype)},
        )
    if kind == model_kinds.TEXT_CONDITIONAL:
        captions = list(batch["captions"])
        max_length = teacher.config.max_text_length
        states = encode_text(teacher.text_encoder, teacher.tokenizer, captions, max_length, device, False)
        empty = empty_caption_states.expand(len(captions), -1, -1)
        return {"encoder_hidden_states": states.to(dtype)}, {"encoder_hidden_states": empty.to(dtype)}
    return {}, None


def guided_teacher_output(teacher_unet, sample, timesteps, cond_inputs: dict, uncond_inputs, scales):
    """The teacher's guided prediction, one guidance scale per image, as the pipeline guides: both branches in one
    batched pass, `uncond + scale * (cond - uncond)`; without an unconditional input, the plain prediction."""
    if uncond_inputs is None:
        return teacher_unet(sample, timesteps, **cond_inputs).sample
    both = {k: torch.cat([uncond_inputs[k], cond_inputs[k]]) for k in cond_inputs}
    uncond_output, cond_output = teacher_unet(
        torch.cat([sample] * 2), torch.cat([timesteps] * 2), **both
    ).sample.chunk(2)
    scale = scales.view(-1, 1, 1, 1).to(sample.dtype)
    return uncond_output + scale * (cond_output - uncond_output)


def clean_estimate(model_output, timesteps, sample, alphas_cumprod, prediction_type: str):
    """x_0 of the variance-preserving forward process x_t = sqrt(a) x_0 + sqrt(1 - a) eps, from the UNet's output."""
    alpha = alphas_cumprod[timesteps].view(-1, 1, 1, 1).to(sample.dtype)
    if prediction_type == "epsilon":
        return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
    if prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    return model_output


def consistency_loss(prediction, target, loss_type: str, huber_c: float):
    if loss_type == "l2":
        return F.mse_loss(prediction.float(), target.float())
    return torch.mean(torch.sqrt((prediction.float() - target.float()) ** 2 + huber_c**2) - huber_c)


def build_student_pipeline(teacher, student_unet, scheduler, args, guided: bool):
    """The student's pipeline: the teacher's class, components and settings, with the student UNet, the LCM
    scheduler, its default step count, scale and (guided) the scale range it learnt."""
    components = {**teacher.components, "unet": student_unet, "scheduler": scheduler}
    settings = {k: v for k, v in teacher.config.items() if not k.startswith("_") and k not in components}
    settings["num_inference_steps"] = args.num_inference_steps
    if guided:
        settings.update(guidance_scale=args.guidance_scale, guidance_scale_range=list(args.guidance_scale_range))
    return type(teacher)(**components, **settings)


def grid_layout(teacher, kind: str, args, sample_prompts):
    """train.py's conditioning mode for the teacher's kind, whose `sample_grid` lays out samples.png and the
    validation grids as train.py does: a row per class or sample prompt (8 rows without a condition),
    --num_samples_per_class columns, --num_inference_steps steps."""
    if kind == model_kinds.CLASS_CONDITIONAL:
        return ClassConditioning(args, teacher.config.num_classes, teacher.config.id2label)
    if kind == model_kinds.TEXT_CONDITIONAL:
        return TextConditioning(args, teacher.text_encoder, teacher.tokenizer, sample_prompts)
    return Unconditional(args)


def log_validation(accelerator, teacher, target_unet, scheduler, args, guided: bool, layout, global_step: int, stop):
    """Sample a grid from the target network (the weights that will be saved), save it and send it to the
    trackers (unless a stop signal cuts the sampling short)."""
    pipeline = build_student_pipeline(teacher, target_unet, scheduler, args, guided)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=target_unet.device).manual_seed(args.seed)
    grid = stop.interruptible("the validation grid", layout.sample_grid, pipeline, generator)
    if grid is not None:
        save_validation_grid(accelerator, grid, args.output_dir, global_step)


def main(args):
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    hub_repo = create_hub_repo_first(args, accelerator, "The student")

    # 1. The teacher and its training data
    teacher_dir = teacher_folder(args.teacher, args.cache_dir)
    model_index, teacher_config = read_teacher_configs(teacher_dir, args.teacher)
    kind = model_kinds.model_kind(model_index)
    guided = kind in GUIDED_KINDS
    teacher = load_teacher(teacher_dir, kind, accelerator.device)
    teacher_args = teacher_training_args(teacher_config)
    # The teacher's data flags, with this run's batch size, seed and workers
    data_args = argparse.Namespace(
        **{
            **vars(teacher_args),
            "train_batch_size": args.train_batch_size,
            "seed": args.seed,
            "dataloader_num_workers": args.dataloader_num_workers,
            "cache_dir": args.cache_dir,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
        }
    )
    data = load_training_data(data_args)
    resolution = teacher_config["data"]["resolution"]
    with accelerator.main_process_first():
        decoded_dataset = decode_once(data.dataset, data.image_mode, resolution)

    output_dir_lock, resume_dir = claim_output_dir(accelerator, args)
    vae = getattr(teacher, "vae", None)
    latent_distributions = None
    if vae is not None:
        # A latent teacher: its training images, encoded once by its own VAE
        latent_distributions, encode_seconds = encode_training_images(
            accelerator, vae, decoded_dataset, resolution, data_args
        )
        logger.info(f"Encoded {len(decoded_dataset)} training images with the teacher's VAE in {encode_seconds:.1f}s")
    train_transform, train_dataloader = training_dataloader(
        data_args, decoded_dataset, resolution, with_pixels=vae is None
    )

    # 2. The student, its target network (an EMA of it), the solver's grid, the optimiser
    teacher_unet = teacher.unet
    noise_scheduler = teacher.scheduler
    prediction_type = noise_scheduler.config.prediction_type
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    grid = solver_grid(num_train_timesteps, args.num_ddim_timesteps).to(accelerator.device)
    skip = num_train_timesteps // args.num_ddim_timesteps
    scheduler = student_scheduler(noise_scheduler, args.num_ddim_timesteps)
    # The pixel teacher's sampler clips its clean-image estimates to the data range; so does its solver step here.
    clip_range = noise_scheduler.config.clip_sample_range if vae is None else None

    student = build_student(teacher_unet, guided, args.unet_time_cond_proj_dim)
    student.train()
    target_unet = build_student(teacher_unet, guided, args.unet_time_cond_proj_dim).to(accelerator.device)
    target_unet.requires_grad_(False)
    target_unet.eval()
    target_ema = EMAModel(
        student.parameters(),
        decay=args.ema_decay,
        use_ema_warmup=False,
        model_cls=type(student),
        model_config=student.config,
    )
    optimizer = torch.optim.AdamW(
        student.parameters(),
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
    student, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        student, optimizer, train_dataloader, lr_scheduler
    )
    target_ema.to(accelerator.device)
    noise_generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + accelerator.process_index)

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    low, high = args.guidance_scale_range if guided else (1.0, 1.0)
    logger.info(f"***** Running {args.method} distillation *****")
    logger.info(f"  Teacher = {args.teacher}: {type(teacher).__name__} ({kind}), {type(teacher_unet).__name__}")
    logger.info(f"  Data = {data.source}: {len(train_dataloader.dataset)} images at {resolution}px")
    if args.method == CONSISTENCY:
        logger.info(
            f"  Solver grid = {args.num_ddim_timesteps} points, {grid[0].item()}..{grid[-1].item()} step {skip}"
        )
    if guided:
        logger.info(f"  Guidance scales = uniform in [{low}, {high}], embedded in {args.unet_time_cond_proj_dim} dims")
    logger.info(f"  Num epochs = {num_epochs}, total optimisation steps = {max_train_steps}")
    logger.info(f"  Total batch size (parallel, distributed & accumulation) = {total_batch_size}")

    # 3. Resume
    training_state, first_epoch, batches_to_skip = resume_from(
        accelerator, resume_dir, target_ema, noise_generator, num_update_steps_per_epoch, args
    )
    target_ema.copy_to(target_unet.parameters())
    global_step, recent_losses = training_state["global_step"], training_state["recent_losses"]
    previous_train_seconds = training_state["train_seconds"]
    init_trackers(accelerator, args, "diffkit-distill")
    layout = grid_layout(teacher, kind, args, teacher_config["data"].get("sample_prompts"))
    # The unconditional branch of a text teacher: the empty caption, encoded once (the teacher is frozen)
    empty_caption_states = None
    if kind == model_kinds.TEXT_CONDITIONAL:
        max_length = teacher.config.max_text_length
        empty_caption_states = encode_text(teacher.text_encoder, teacher.tokenizer, [""], max_length, None, False)

    # 4. Distillation loop (a collective that times out or loses a process ends the run naming this process
    # and its last step: training/process_group.py)
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
        # Epochs until the steps are done (more than num_epochs only where --skip_nonfinite skipped batches)
        for epoch in itertools.count(first_epoch):
            if global_step >= max_train_steps:
                break
            student.train()
            batches = epoch_batches(
                accelerator, train_dataloader, train_transform, epoch, first_epoch, batches_to_skip
            )
            for batch in batches:
                if latent_distributions is not None:
                    clean_images = latent_distributions.sample(batch[INDEX_COLUMN], batch["flipped"], noise_generator)
                else:
                    clean_images = batch["pixel_values"]
                batch_size = clean_images.shape[0]
                device, dtype = clean_images.device, clean_images.dtype
                noise = torch.randn(clean_images.shape, generator=noise_generator, device=device, dtype=dtype)
                scales = low + (high - low) * torch.rand(batch_size, generator=noise_generator, device=device)
                # A point t of the grid for each image: the student's LCMScheduler samples at these timesteps only (for
                # consistency, s = t - k, one solver step before it, comes below)
                index = torch.randint(
                    0, args.num_ddim_timesteps, (batch_size,), generator=noise_generator, device=device
                )
                timesteps = grid[index]
                noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
                cond_inputs, uncond_inputs = guidance_inputs(teacher, kind, batch, device, dtype, empty_caption_states)
                unet_inputs = dict(cond_inputs)
                if guided:
                    unet_inputs["timestep_cond"] = guidance_scale_embedding(
                        scales, args.unet_time_cond_proj_dim, dtype
                    )

                with accelerator.accumulate(student):
                    student_output = student(noisy_images, timesteps, **unet_inputs).sample
                    with torch.no_grad():
                        # The guided teacher at each image's scale: both branches in one pass
                        teacher_output = guided_teacher_output(
                            teacher_unet, noisy_images, timesteps, cond_inputs, uncond_inputs, scales
                        )
                    if args.method == GUIDANCE:
                        # Guidance distillation: one pass of the student predicts what the teacher's two guided
                        # passes do
                        loss = F.mse_loss(student_output.float(), teacher_output.float())
                    else:
                        # Consistency distillation, with LCM's boundary condition f(x, t) = c_skip(t) x +
                        # c_out(t) x_0, the identity at t = 0: the student's estimate at t learns the target
                        # network's at s, the point one DDIM step of the guided teacher reaches from x_t
                        end_timesteps = (timesteps - skip).clamp(min=0)
                        c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(timesteps)
                        c_skip_end, c_out_end = scheduler.get_scalings_for_boundary_condition_discrete(end_timesteps)
                        student_x0 = clean_estimate(
                            student_output, timesteps, noisy_images, alphas_cumprod, prediction_type
                        )
                        prediction = c_skip.view(-1, 1, 1, 1) * noisy_images + c_out.view(-1, 1, 1, 1) * student_x0
                        with torch.no_grad():
                            teacher_x0 = clean_estimate(
                                teacher_output, timesteps, noisy_images, alphas_cumprod, prediction_type
                            )
                            if clip_range is not None:
                                teacher_x0 = teacher_x0.clamp(-clip_range, clip_range)
                            alpha_start = alphas_cumprod[timesteps].view(-1, 1, 1, 1).to(dtype)
                            alpha_end = alphas_cumprod[end_timesteps].view(-1, 1, 1, 1).to(dtype)
                            # the noise that the (clipped) clean image implies, carried to s
                            teacher_noise = (noisy_images - alpha_start.sqrt() * teacher_x0) / (1 - alpha_start).sqrt()
                            previous_images = alpha_end.sqrt() * teacher_x0 + (1 - alpha_end).sqrt() * teacher_noise
                            target_output = target_unet(previous_images, end_timesteps, **unet_inputs).sample
                            target_x0 = clean_estimate(
                                target_output, end_timesteps, previous_images, alphas_cumprod, prediction_type
                            )
                            target = (
                                c_skip_end.view(-1, 1, 1, 1) * previous_images
                                + c_out_end.view(-1, 1, 1, 1) * target_x0
                            )
                        loss = consistency_loss(prediction, target, args.loss_type, args.huber_c)
                    # Every process learns whether any loss is NaN or infinite before any gradient moves the weights
                    nonfinite_processes = processes_with_nonfinite_loss(accelerator, loss)
                    grad_norm = None
                    if nonfinite_processes == 0:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            grad_norm = accelerator.clip_grad_norm_(student.parameters(), args.max_grad_norm)
                        optimizer.step()
                        lr_scheduler.step()
                    optimizer.zero_grad()
                if nonfinite_processes:
                    nonfinite_in_a_row += 1
                    stop_on_nonfinite_loss(
                        args, nonfinite_processes, accelerator.num_processes, global_step + 1, nonfinite_in_a_row
                    )
                    continue  # --skip_nonfinite: this batch moves nothing and the step is not counted
                nonfinite_in_a_row = 0

                if accelerator.sync_gradients:
                    global_step += 1
                    target_ema.step(student.parameters())
                    target_ema.copy_to(target_unet.parameters())
                    progress_bar.update(1)
                    loss_value = accelerator.gather(loss.detach()).mean().item()
                    recent_losses = (recent_losses + [loss_value])[-FINAL_LOSS_WINDOW:]
                    logs = {"loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}
                    if grad_norm is not None:
                        logs["grad_norm"] = grad_norm.item()
                    progress_bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{logs['lr']:.2e}")
                    accelerator.log(logs, step=global_step)
                    if (
                        args.validation_steps
                        and global_step % args.validation_steps == 0
                        and accelerator.is_main_process
                    ):
                        log_validation(
                            accelerator, teacher, target_unet, scheduler, args, guided, layout, global_step, stop
                        )
                    checkpointed = args.checkpointing_steps and global_step % args.checkpointing_steps == 0
                    if checkpointed:
                        training_state = state_to_resume(args, global_step, recent_losses, seconds_trained())
                        checkpoint_and_push(
                            args, accelerator, global_step, training_state, target_ema, noise_generator, hub_repo
                        )
                    if stop.agreed(accelerator):  # SIGTERM or SIGUSR1 on any process: all stop at this step
                        break
                if global_step >= max_train_steps:
                    break
            if stop.stopping:
                break
        progress_bar.close()
        grid_image = None
        if not stop.stopping and accelerator.is_main_process:
            pipeline = build_student_pipeline(teacher, target_unet, scheduler, args, guided)
            pipeline.set_progress_bar_config(desc="Sampling")
            generator = torch.Generator(device=accelerator.device).manual_seed(args.seed)
            grid_image = stop.interruptible("the sample grid", layout.sample_grid, pipeline, generator)
        # A stop signal during distillation or the grid: every process stops with a checkpoint of the last step
        if stop.stopping or count_processes(accelerator, accelerator.is_main_process and grid_image is None):
            training_state = state_to_resume(args, global_step, recent_losses, seconds_trained())
            saved_state = (target_ema, noise_generator, hub_repo)
            stop_for_preemption(args, accelerator, stop, training_state, checkpointed, saved_state, output_dir_lock)
        train_seconds = seconds_trained()

        # 5. Save the student (the target network's weights), the sample grid, the configuration and the model card
        if accelerator.is_main_process:
            teacher_run = teacher_config.get("run", {})
            training_config = {
                "license": args.model_license or teacher_config.get("license"),
                "args": run_config(args),
                "teacher": {
                    "teacher": args.teacher,
                    "args": teacher_config["args"],
                    "train_seconds": teacher_run.get("train_seconds"),
                    "global_step": teacher_run.get("global_step"),
                },
                "data": teacher_config["data"],
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
                grid_image.save(os.path.join(staging_dir, SAMPLES_NAME))
                with open(os.path.join(staging_dir, TRAINING_CONFIG_NAME), "w") as f:
                    json.dump(training_config, f, indent=2)
                module_name = type(pipeline).__module__.rsplit(".", 1)[-1]
                card = render_model_card(
                    training_config, type(pipeline).__name__, module_name, args.output_dir, SAMPLES_NAME
                )
                card.save(os.path.join(staging_dir, MODEL_CARD_NAME))
            logger.info(
                f"Distilled {global_step} steps in {train_seconds:.0f}s (final loss "
                f"{training_config['run']['final_loss']:.4f}); saved the student, {SAMPLES_NAME}, "
                f"{TRAINING_CONFIG_NAME} and {MODEL_CARD_NAME} to {args.output_dir}"
            )
            if args.push_to_hub:
                try:
                    commit = push_pipeline_folder(args.output_dir, hub_repo, token=args.hub_token)
                except HubPushError:
                    logger.error(
                        f"Distillation finished and its outputs are saved in {args.output_dir}, but the push failed."
                    )
                    raise
                logger.info(f"Pushed the student to {hub_repo} at revision {commit.oid}: {commit.commit_url}")

        settle_process_group()  # every process: see training/process_group.py
        accelerator.end_training()
        release_output_dir(output_dir_lock)


def cli(args=None):
    """Distillation, as `accelerate launch training/distill.py` and `python -m diffkit.training.distill` run it."""
    run_script(main, parse_args, validate_args, args)


if __name__ == "__main__":
    cli()
