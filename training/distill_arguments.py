"""The flags of `training/distill.py`, grouped by concern; the EMA, checkpoint, watching and Hub groups are
`train.py`'s own (`arguments.py`).

Like `arguments.py`, this module imports neither torch nor diffusers, so that `--help` answers at once.
"""

import argparse

from diffkit.training.arguments import (
    add_checkpoint_arguments,
    add_fault_arguments,
    add_hub_arguments,
    add_optimisation_arguments,
    add_watch_arguments,
)

# The methods of `--method`: consistency distillation (LCM) and guidance distillation (Meng et al. 2023, stage one).
CONSISTENCY, GUIDANCE = "consistency", "guidance"
METHODS = (CONSISTENCY, GUIDANCE)
# Guidance scales a guidance-distilled student learns by default: from the conditional prediction alone (1) to strong
# guidance (8), around the default job's 4.
DEFAULT_GUIDANCE_SCALE_RANGE = (1.0, 8.0)
# Points of the skipping-step solver's grid (`LCMScheduler`'s `original_inference_steps`): 1000 training timesteps
# give the grid 19, 39, ..., 959 (k = 20). At 50 the grid would end at t = 999, where the cosine schedule leaves
# sqrt(alpha_bar) = 5e-5, so that an epsilon error is multiplied 20,000-fold in the clean-image estimate that the
# consistency loss compares; at 959 it is 0.062, Stable Diffusion's own top level (0.068), where LCM was shown to work.
DEFAULT_NUM_DDIM_TIMESTEPS = 48
# The width of the guidance-scale embedding (diffusers' LCM examples: `--unet_time_cond_proj_dim 256`).
DEFAULT_TIME_COND_PROJ_DIM = 256
# The default run: the default job's teacher distilled in less than its own training time on 2 CPU cores (1,000
# steps of 32 images, about 460 s against the teacher's 474-499 s), measured in docs/distillation.md.
DEFAULT_MAX_TRAIN_STEPS = 1000
DEFAULT_TRAIN_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 3e-4
DEFAULT_NUM_INFERENCE_STEPS = 8
# Flags of distill.py that do not change what is trained, besides arguments.NON_RUN_FLAGS.
NON_RUN_DISTILL_FLAGS = ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-distill",
        description=(
            "Distil a trained diffkit pipeline (class-conditional, text-conditional or unconditional, in pixels or a "
            "VAE's latents) into a few-step student of the same architecture, initialised from the teacher, by "
            "latent consistency distillation (LCM): a skipping-step DDIM solver on the guided teacher, an EMA "
            "target network, and the guidance scale as an input of the student (timestep_cond), so that the "
            "student samples with one UNet evaluation per step at any scale of --guidance_scale_range. It trains on "
            "the teacher's own training data (from its training_config.json) and saves an ordinary diffkit "
            "pipeline folder with an LCMScheduler."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    teacher = parser.add_argument_group("teacher")
    teacher.add_argument(
        "--model",
        "--teacher",
        dest="teacher",
        metavar="MODEL",
        type=str,
        default=None,
        help="Required. The teacher, a trained model as the other commands' --model: the --output_dir of "
        "`training/train.py` (a folder, or a Hub repo of one pushed by diffkit), a diffkit pipeline with its "
        "training_config.json, whose data the student trains on (`--teacher` says the same).",
    )
    teacher.add_argument(
        "--cache_dir", type=str, default=None, help="Cache for a Hub teacher and the Hub datasets it trained on."
    )

    method = parser.add_argument_group("distillation method")
    method.add_argument(
        "--method",
        type=str,
        default=None,
        choices=METHODS,
        help="'guidance' (the default for a class or text teacher): guidance distillation (Meng et al. 2023, stage "
        "one), a student that predicts the guided teacher's output in one pass, sampled with LCMScheduler; it keeps "
        "the quality of the teacher's stochastic sampler. 'consistency' (the default, and the only method, for an "
        "unconditional teacher): latent consistency distillation (LCM), a student whose every step jumps to the "
        "end of the teacher's deterministic (DDIM) trajectory. docs/distillation.md compares them.",
    )
    method.add_argument(
        "--guidance_scale_range",
        type=float,
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="Guidance scales the student learns, drawn uniformly for each training image; the saved pipeline "
        "samples at any scale in this range with one UNet evaluation per step. Defaults to "
        f"{DEFAULT_GUIDANCE_SCALE_RANGE[0]:g} {DEFAULT_GUIDANCE_SCALE_RANGE[1]:g} for a guided (class or text) "
        "teacher; an unconditional teacher has no guidance.",
    )
    method.add_argument(
        "--num_ddim_timesteps",
        type=int,
        default=DEFAULT_NUM_DDIM_TIMESTEPS,
        help="Points of the skipping-step DDIM solver's timestep grid (the saved LCMScheduler's "
        "original_inference_steps): each training step moves the teacher one grid interval, "
        "num_train_timesteps // N timesteps. 48 ends the grid at t=959 for 1000 timesteps; 50 would end it at 999, "
        "where an epsilon-predicting teacher's clean-image estimate is too imprecise to learn from.",
    )
    method.add_argument(
        "--unet_time_cond_proj_dim",
        type=int,
        default=DEFAULT_TIME_COND_PROJ_DIM,
        help="Width of the guidance-scale embedding that the student's time embedding reads (UNet2DConditionModel's "
        "time_cond_proj_dim); its projection starts at zero, so the untrained student is the teacher's "
        "conditional prediction.",
    )
    method.add_argument(
        "--loss_type",
        type=str,
        default="huber",
        choices=["huber", "l2"],
        help="The consistency loss between the student's and the target network's clean-image estimates: "
        "pseudo-Huber (LCM's choice) or squared error.",
    )
    method.add_argument(
        "--huber_c", type=float, default=0.001, help="The pseudo-Huber loss's c: sqrt(d^2 + c^2) - c per value."
    )

    train = add_optimisation_arguments(parser, num_epochs=1, learning_rate=DEFAULT_LEARNING_RATE)
    parser.set_defaults(train_batch_size=DEFAULT_TRAIN_BATCH_SIZE, max_train_steps=DEFAULT_MAX_TRAIN_STEPS)
    train.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        help="Learning-rate schedule (diffusers.optimization.get_scheduler).",
    )
    train.add_argument("--lr_warmup_steps", type=int, default=50, help="Warm-up steps of the learning rate.")
    train.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    train.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    train.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    train.add_argument("--adam_epsilon", type=float, default=1e-08, help="AdamW epsilon.")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    train.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="DataLoader worker processes (0: the main process)."
    )
    train.add_argument("--seed", type=int, default=0, help="Seed for data order, noise, guidance scales and samples.")
    train.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the value in the accelerate config. fp16 needs a GPU.",
    )

    target = parser.add_argument_group("target network")
    target.add_argument(
        "--ema_decay",
        type=float,
        default=0.95,
        help="The target network is this EMA of the student (LCM's 0.95): it gives the consistency targets, and its "
        "weights are the saved student.",
    )

    add_checkpoint_arguments(parser)
    add_fault_arguments(parser)
    add_watch_arguments(parser, "sample a grid from the target network through the student's pipeline")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir",
        type=str,
        default=None,
        help="Required. Where the student pipeline, samples and configuration go.",
    )
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Allow writing into an --output_dir that holds a different run (its outputs are replaced).",
    )
    output.add_argument(
        "--num_inference_steps",
        type=int,
        default=DEFAULT_NUM_INFERENCE_STEPS,
        help="The student's default step count, registered in its pipeline and used for samples.png (8: the fewest "
        "with which the default job's student keeps its teacher's class accuracy and comes near its FID; see "
        "docs/distillation.md).",
    )
    output.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="The student's default guidance scale, within --guidance_scale_range; defaults to the teacher's.",
    )
    output.add_argument(
        "--num_samples_per_class",
        type=int,
        default=8,
        help="Columns of samples.png (one row per class or sample prompt; 8 rows for an unconditional teacher).",
    )
    output.add_argument(
        "--model_license",
        type=str,
        default=None,
        help="Licence of the student's weights in its model card; defaults to the teacher's.",
    )

    add_hub_arguments(parser, "the student pipeline, its code, samples.png and the model card")
    return parser
