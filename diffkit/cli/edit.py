"""Edit an image you already have with a trained diffkit pipeline: inpaint, img2img, denoise, upscale.

    diffkit-edit inpaint --model out --image digit.png --mask mask.png --class eight --output_dir edits
    diffkit-edit img2img --model out --image three.png --class eight --strength 0.6 --output_dir edits
    diffkit-edit denoise --model out --image noisy.png --class three --noise_level 0.4 --output_dir edits
    diffkit-edit img2img --model out-text --image three.png --prompt "a handwritten eight" --output_dir edits
    diffkit-edit inpaint --model out-uncond --image digit.png --mask mask.png --output_dir edits
    diffkit-edit upscale --model out-sr --image digit-14px.png --output_dir edits

Class-conditional models take `--class`, text-conditional ones `--prompt`, unconditional ones neither. `upscale` takes
a super-resolution stage (trained with `--conditioning super_resolution`), the other tasks a generation model.
(`python -m diffkit.cli.edit ...` is the same command.) Every image is saved atomically as a PNG whose text
chunk `parameters` holds the edit's settings as JSON. Files and flags are checked before the model is loaded.
"""

import argparse
import os

from PIL import Image, UnidentifiedImageError

from diffkit.cli import (
    DEFAULT_BATCH_SIZE,
    add_speed_flags,
    batches_of_this_process,
    check_class_labels,
    check_conditioning,
    conditioning_of,
    image_generators,
    label_argument,
    launched_processes,
    load_for_sampling,
    make_and_save,
)
from diffkit.pipelines.model_kinds import (
    CLASS_CONDITIONAL,
    DIFFKIT_KINDS,
    IMG2IMG,
    INPAINT,
    SUPER_RESOLUTION,
    TEXT_CONDITIONAL,
    UPSCALE,
    pipeline_class,
    pipeline_sharing_modules,
    saved_class_name,
    saved_kind_and_task,
)
from diffkit.pipelines.stable_diffusion_options import check_quantize
from diffkit.training.command_line import usage_errors_reported

# torch, diffusers and the pipelines are imported in the functions that use them, so that `--help` and a bad flag
# answer at once.

TASKS = ("inpaint", "img2img", "denoise", "upscale")
DEFAULT_STRENGTH = 0.6
DEFAULT_JUMP_LENGTH = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-edit",
        description="Inpaint, edit (img2img) or denoise an image with a trained diffkit pipeline (class-, "
        "text-conditional or unconditional), or upscale it with a super-resolution stage.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "task",
        choices=TASKS,
        help="inpaint: fill the mask; img2img: redraw towards a class or "
        "prompt (SDEdit); denoise: remove Gaussian noise of a known standard deviation; upscale: "
        "super-resolution with a stage trained by --conditioning super_resolution.",
    )
    parser.add_argument(
        "--model",
        "--pipeline",
        dest="model",
        required=True,
        help="A diffkit pipeline: a training --output_dir or a Hub repo (loaded with the installed diffkit code; "
        "`--pipeline` is its former name).",
    )
    parser.add_argument(
        "--image", required=True, help="The image to edit (PNG, JPEG, ...); resized to the model's size."
    )
    parser.add_argument(
        "--mask",
        default=None,
        help="inpaint only: white (or >= 50%% grey) where to fill, black where to keep; the image's size.",
    )
    parser.add_argument(
        "--class",
        dest="class_labels",
        nargs="+",
        default=None,
        help="Class-conditional models (required there): the class(es) to edit towards, by name (e.g. seven) or "
        "id; one output set per class.",
    )
    parser.add_argument(
        "--prompt",
        nargs="+",
        default=None,
        help="Text-conditional models (required there): the prompt(s) to edit towards; one output set per prompt.",
    )
    parser.add_argument(
        "--negative_prompt", default=None, help="Text-conditional models: what the images should not show."
    )
    parser.add_argument(
        "--jump_n_sample",
        type=int,
        default=1,
        help="inpaint only: RePaint-style resampling passes at every jump (1 = off); needs a DDPM or DDIM scheduler.",
    )
    parser.add_argument(
        "--jump_length",
        type=int,
        default=DEFAULT_JUMP_LENGTH,
        help="inpaint only: steps jumped back at each resampling.",
    )
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help=f"img2img only: how much of the schedule to run, in [0, 1] (default {DEFAULT_STRENGTH}); 0 keeps the "
        "image, 1 redraws it from noise.",
    )
    parser.add_argument(
        "--noise_level",
        type=float,
        default=None,
        help="denoise (required there): the noise's standard deviation, images in [-1, 1] (sigma/127.5 for 8-bit "
        "pixel values). upscale: the noise conditioning augmentation level (default: the stage's).",
    )
    parser.add_argument(
        "--num_inference_steps",
        "--steps",
        dest="num_inference_steps",
        type=int,
        default=None,
        help="Denoising steps of the whole schedule (`--steps` is its former name); by default the model's saved "
        "default (20 for a trained model, "
        "the few steps of a distilled student).",
    )
    parser.add_argument(
        "--guidance_scale", type=float, default=None, help="Classifier-free guidance scale; default: the pipeline's."
    )
    parser.add_argument("--num_images", type=int, default=1, help="Images per class or prompt.")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Edits per pipeline call. Edit i has its own generator seeded with --seed + i, and whole batches are "
        "shared out between the processes of `accelerate launch --num_processes N -m diffkit.cli.edit`, so each "
        "edit is the same however many processes make them.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the CPU generator, so a seed repeats anywhere.")
    parser.add_argument(
        "--device", default=None, help="Where to run: cpu or cuda; by default CUDA when a GPU is present."
    )
    add_speed_flags(parser)
    parser.add_argument(
        "--output_dir", "--out", dest="output_dir", required=True,
        help="Folder for the PNGs (created if needed; `--out` is its former name).",
    )  # fmt: skip
    return parser


def check_image_file(path: str, argument: str):
    if not os.path.isfile(path):
        raise ValueError(f"`{argument}` {path!r} is not a file: pass the path of an image.")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"`{argument}` {path!r} cannot be read as an image ({error}).") from None


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    check_quantize(args.quantize, "--quantize")
    check_image_file(args.image, "--image")
    if args.task == "inpaint":
        if args.mask is None:
            raise ValueError("`--mask` is required for inpaint: an image of the same size, white where to fill.")
        check_image_file(args.mask, "--mask")
    elif args.mask is not None:
        raise ValueError(f"`--mask` only applies to inpaint, not to {args.task}: drop it.")
    if args.strength is not None and args.task != "img2img":
        raise ValueError(f"`--strength` only applies to img2img, not to {args.task}: drop it.")
    if args.task == "img2img" and args.strength is None:
        args.strength = DEFAULT_STRENGTH
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise ValueError(f"`--strength` must be in [0, 1], but is {args.strength}.")
    if args.task == "denoise":
        if args.noise_level is None or args.noise_level < 0:
            raise ValueError(
                f"`--noise_level` must be given for denoise, as a number >= 0 (the noise's standard deviation with "
                f"images in [-1, 1]), but is {args.noise_level}."
            )
    elif args.noise_level is not None and args.task != "upscale":
        raise ValueError(f"`--noise_level` only applies to denoise and upscale, not to {args.task}: drop it.")
    elif args.noise_level is not None and args.noise_level < 0:
        raise ValueError(f"`--noise_level` must be >= 0, but is {args.noise_level}.")
    if args.task != "inpaint" and (args.jump_n_sample != 1 or args.jump_length != DEFAULT_JUMP_LENGTH):
        raise ValueError(
            f"`--jump_n_sample` and `--jump_length` only apply to inpaint, not to {args.task}: drop them."
        )
    if args.class_labels is not None and args.prompt is not None:
        raise ValueError("`--class` and `--prompt` were both given: a model is class- or text-conditional, not both.")
    if args.negative_prompt is not None and args.prompt is None:
        raise ValueError("`--negative_prompt` needs `--prompt` (a text-conditional model) beside it.")
    if args.prompt is not None and not all(prompt.strip() for prompt in args.prompt):
        raise ValueError(f"`--prompt` must not be empty, but is {args.prompt!r}: describe what to edit towards.")
    for name in ("num_inference_steps", "num_images", "batch_size", "jump_n_sample", "jump_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise ValueError(f"`--guidance_scale` must be >= 0, but is {args.guidance_scale}.")
    if args.device not in (None, "cpu"):
        import torch

        if not (args.device.startswith("cuda") and torch.cuda.is_available()):
            raise ValueError(f"`--device` {args.device!r} is not available here: pass cpu (or cuda on a GPU machine).")
    return args


def saved_pipeline(name_or_path: str):
    """`(kind, task, config)` of the diffkit pipeline in a folder or Hub repo, from its `model_index.json`, read
    before any weights load: the task is that of the class the folder names (a folder saved from an inpainting
    pipeline is of the kind of its base model, and its task is "inpaint")."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(name_or_path)
    except OSError as error:  # no model_index.json in the folder, or a repo that cannot be found or reached
        raise ValueError(f"`--model` {name_or_path!r} cannot be loaded as a pipeline: {error}") from None
    kind, task = saved_kind_and_task(config)
    if kind not in DIFFKIT_KINDS:
        raise ValueError(
            f"`--model` {name_or_path!r} holds a {saved_class_name(config)}; diffkit-edit works on diffkit "
            f"pipelines ({', '.join(DIFFKIT_KINDS)}); for Stable Diffusion use diffkit-generate."
        )
    return kind, task, config


def check_task(args, kind: str, config: dict):
    """`upscale` takes a super-resolution stage, and a stage takes nothing else; its noise level fits its training."""
    if args.task == UPSCALE and kind != SUPER_RESOLUTION:
        raise ValueError(
            f"`upscale` needs a super-resolution stage (trained with --conditioning super_resolution), but "
            f"`--model` {args.model!r} holds a {saved_class_name(config)}."
        )
    if args.task != UPSCALE and kind == SUPER_RESOLUTION:
        raise ValueError(
            f"`--model` {args.model!r} is a super-resolution stage: it can only `upscale`, not {args.task}."
        )
    if args.task == "denoise" and (config.get("vae") or [None])[0] is not None:
        raise ValueError(
            f"`denoise` removes pixel noise, which `--model` {args.model!r} cannot: it is a latent model (it "
            "has a `vae`), and pixel noise is not noise in its latents. Redraw the image with `img2img --strength "
            "0.3` instead."
        )
    if args.task == "upscale":
        with Image.open(args.image) as image:
            width, height = image.size
        if width != height:
            raise ValueError(
                f"`--image` {args.image!r} is {width}x{height}, but the stage upscales square "
                f"{config['low_resolution']}x{config['low_resolution']} images: crop it to a square first."
            )
    if args.task == "upscale" and args.noise_level is not None and args.noise_level > config["max_noise_level"]:
        raise ValueError(
            f"`--noise_level` {args.noise_level} is above the stage's --max_noise_level {config['max_noise_level']} "
            f"(the levels it was trained on); its default is {config['noise_level']}."
        )


def main(argv=None):
    args = parse_args(argv)
    kind, saved_task, config = saved_pipeline(args.model)
    check_task(args, kind, config)
    conditioning = conditioning_of(kind, config)
    check_conditioning(args, conditioning, "--model")
    check_class_labels(args.class_labels, config)
    with launched_processes(args.device) as state:
        edit(args, state, kind, saved_task, conditioning)


def edit(args, state, kind: str, saved_task: str, conditioning):
    """`--num_images` edits of `--image` per class or prompt (or in all); edit `i` (conditions in turn, then the
    images of each) from its own CPU generator seeded with `--seed + i`, in batches shared out between the
    processes."""
    if conditioning == CLASS_CONDITIONAL:
        conditions = args.class_labels
    elif conditioning == TEXT_CONDITIONAL:
        conditions = [f"prompt{index}" for index in range(len(args.prompt))]
    else:
        conditions = ["image"]
    batches = batches_of_this_process(state, len(conditions) * args.num_images, args.batch_size, "edits")
    # The installed class that the folder names, not the code saved beside the weights: no remote code runs. The
    # task's pipeline then shares its modules (as `from_pipe` would, without casting them to float32).
    device = args.device or state.device
    pipe = load_for_sampling(pipeline_class(kind, saved_task), args.model, device, args.quantize, args.compile)
    pipe.set_progress_bar_config(disable=not state.is_local_main_process)
    with Image.open(args.image) as opened:
        image = opened.copy()
    mask = None
    if args.task == "inpaint":
        with Image.open(args.mask) as opened:
            mask = opened.copy()
        task_pipe = pipeline_sharing_modules(pipeline_class(kind, INPAINT), pipe)
    elif args.task in ("img2img", "denoise"):
        task_pipe = pipeline_sharing_modules(pipeline_class(kind, IMG2IMG), pipe)
    else:
        task_pipe = pipe

    def make_batch(batch):
        kwargs = dict(
            image=[image] * len(batch),
            num_inference_steps=args.num_inference_steps,
            generator=image_generators(args.seed, batch),
        )
        condition_of = [index // args.num_images for index in batch]
        if conditioning == CLASS_CONDITIONAL:
            labels = [label_argument(args.class_labels[c]) for c in condition_of]
            kwargs.update(class_labels=labels, guidance_scale=args.guidance_scale)
        elif conditioning == TEXT_CONDITIONAL:
            negative = None if args.negative_prompt is None else [args.negative_prompt] * len(batch)
            prompts = [args.prompt[c] for c in condition_of]
            kwargs.update(prompt=prompts, negative_prompt=negative, guidance_scale=args.guidance_scale)
        if args.task == "upscale":
            return task_pipe(noise_level=args.noise_level, **kwargs).images
        if args.task == "inpaint":
            masks = [mask] * len(batch)
            return task_pipe(
                mask_image=masks, jump_length=args.jump_length, jump_n_sample=args.jump_n_sample, **kwargs
            ).images
        if args.task == "img2img":
            return task_pipe(strength=args.strength, **kwargs).images
        return task_pipe(noise_level=args.noise_level, **kwargs).images  # denoise: from the noise's level

    parameters = {k: v for k, v in vars(args).items() if k not in ("output_dir", "device")}

    def parameters_of(index):
        # the condition of this image: its class, or its one prompt in place of the list
        condition = {}
        if conditioning == CLASS_CONDITIONAL:
            condition = {"class_label": args.class_labels[index // args.num_images]}
        elif conditioning == TEXT_CONDITIONAL:
            condition = {"prompt": args.prompt[index // args.num_images]}
        return {**parameters, **condition, "image_index": index, "image_seed": args.seed + index}

    def path_of(index):
        condition = conditions[index // args.num_images]
        return os.path.join(args.output_dir, f"{args.task}-{condition}-seed{args.seed}-{index % args.num_images}.png")

    make_and_save(state, batches, make_batch, path_of, parameters_of, args.output_dir)


def command():
    """`diffkit-edit` on the command line: bad input ends it with `diffkit-edit: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-edit"):
        main()


if __name__ == "__main__":
    command()
