"""Images from a trained diffkit model, or from text, edges or your own images with the Stable Diffusion family.

    python -m diffkit.cli.generate --model out --class seven --num_images 8 --output_dir images  # a diffkit run
    python -m diffkit.cli.generate --model out-text --prompt "a handwritten eight" --output_dir images
    python -m diffkit.cli.generate sd --prompt "an astronaut riding a horse" --output_dir images
    python -m diffkit.cli.generate sdxl --prompt "a lion" --vae madebyollin/sdxl-vae-fp16-fix --output_dir images
    python -m diffkit.cli.generate controlnet-canny --image photo.png --prompt "a robot" --output_dir images
    python -m diffkit.cli.generate img2img --image photo.png --prompt "a watercolour" --strength 0.6 --output_dir out
    python -m diffkit.cli.generate inpaint --image photo.png --mask mask.png --prompt "a red scarf" --output_dir images
    python -m diffkit.cli.generate upscale --image small.png --prompt "a photo of a cat" --output_dir images

Without a task, `--model`'s own model_index.json picks the pipeline: a diffkit class-, text-conditional or
unconditional model samples with its saved defaults (`--class`, `--prompt` or neither), a Stable Diffusion or SDXL
model runs as `sd` or `sdxl`. img2img and inpaint use SDXL when `--model` is an SDXL checkpoint. The same tasks on a
diffkit model (and denoise) are `diffkit-edit`'s, with the same flags.

Every image is saved as a PNG whose text metadata holds the generation parameters. All arguments are checked
before any model is loaded.
"""

import argparse
import os
import warnings
from typing import Optional

from PIL import Image

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
from diffkit.pipelines.canny import check_image_side
from diffkit.pipelines.model_kinds import (
    CLASS_CONDITIONAL,
    DIFFKIT_KINDS,
    GENERATE,
    SDXL,
    STABLE_DIFFUSION,
    SUPER_RESOLUTION,
    TEXT_CONDITIONAL,
    loads_as_stable_diffusion,
    model_kind,
    pipeline_class,
)
from diffkit.pipelines.stable_diffusion_options import (
    MEMORY_MODES,
    SCHEDULER_CLASS_NAMES,
    SD15_CANNY_CONTROLNET,
    SD15_INPAINT_MODEL,
    SD15_MODEL,
    SDXL_CANNY_CONTROLNET,
    SDXL_MODEL,
    UPSCALER_MODEL,
    check_loras,
    check_model_id,
    check_quantize,
    check_strength,
    check_upscale_inputs,
    image_at_multiple_of_8,
    parse_lora,
    resized_mask,
)
from diffkit.training.command_line import usage_errors_reported

# torch, diffusers and the loaders are imported by the functions that run a model, so that `--help` and a bad flag
# answer at once.

DEFAULT_MODELS = {
    "sd": SD15_MODEL,
    "sdxl": SDXL_MODEL,
    "controlnet-canny": SD15_MODEL,
    "img2img": SD15_MODEL,
    "inpaint": SD15_INPAINT_MODEL,
    "upscale": UPSCALER_MODEL,
}
IMAGE_TASKS = ("img2img", "inpaint", "upscale")  # the commands that start from the user's --image
# The Stable Diffusion family's defaults; a diffkit model samples with its own saved ones.
STABLE_DIFFUSION_STEPS = 30
STABLE_DIFFUSION_GUIDANCE_SCALE = 7.5
# Flags that only the Stable Diffusion family takes (a diffkit model refuses them when they differ from the default).
STABLE_DIFFUSION_ONLY_FLAGS = (
    "controlnet", "vae", "refiner", "refiner_switch", "image", "mask", "strength", "canny", "mask_blur",
    "padding_mask_crop", "allow_text_to_image_checkpoint", "noise_level", "tile_size", "low_threshold",
    "high_threshold", "width", "height", "scheduler", "memory", "dtype", "lora", "fuse_lora",
)  # fmt: skip
DEFAULT_STRENGTH = {"img2img": 0.75, "inpaint": 1.0}
DEFAULT_NOISE_LEVEL = 20  # the x4 upscaler's own default
# Arguments that say where and how the images are made, not what they are: left out of each PNG's settings.
NOT_IMAGE_SETTINGS = ("output_dir", "device")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-generate",
        description="Generate, edit, inpaint or upscale images with Stable Diffusion, SDXL or a canny ControlNet "
        "through diffusers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "family",
        nargs="?",
        choices=sorted(DEFAULT_MODELS),
        help="Which Stable Diffusion pipeline to run: text to image (sd, sdxl), edges to image (controlnet-canny), "
        "or the user's --image edited (img2img), partly re-drawn (inpaint) or upscaled 4x (upscale). Without it, "
        "--model's model_index.json picks: a diffkit model samples, a Stable Diffusion or SDXL one runs as sd or "
        "sdxl.",
    )
    parser.add_argument(
        "--model",
        default=None,
        help=f"Hub id or local folder of the model: a diffkit training run (--output_dir) or a Stable Diffusion "
        f"family model; defaults to {SD15_MODEL} (sd, controlnet-canny, img2img), {SDXL_MODEL} (sdxl), "
        f"{SD15_INPAINT_MODEL} (inpaint) or {UPSCALER_MODEL} (upscale).",
    )
    parser.add_argument(
        "--class",
        dest="class_labels",
        nargs="+",
        default=None,
        help="A class-conditional diffkit model: the class(es) to draw, by name (e.g. seven) or id; --num_images "
        "each.",
    )
    parser.add_argument(
        "--controlnet",
        default=None,
        help=f"Hub id or folder of the canny ControlNet; defaults to the one for the base's family: "
        f"{SD15_CANNY_CONTROLNET} (SD 1.5), {SDXL_CANNY_CONTROLNET} (SDXL).",
    )
    parser.add_argument("--vae", default=None, help="Hub id or folder of an fp16-safe VAE for SDXL.")
    parser.add_argument(
        "--refiner",
        default=None,
        help="sdxl: Hub id or folder of the SDXL refiner (e.g. stabilityai/stable-diffusion-xl-refiner-1.0); the "
        "base denoises the first --refiner_switch of the schedule and the refiner the rest.",
    )
    parser.add_argument(
        "--refiner_switch", type=float, default=0.8, help="Fraction of the steps the base runs before the refiner."
    )
    parser.add_argument(
        "--prompt",
        default=None,
        help="What to draw (the Stable Diffusion family, and text-conditional diffkit models); CLIP reads the "
        "first 77 tokens.",
    )
    parser.add_argument("--negative_prompt", default=None, help="What to steer away from (with guidance > 1).")
    parser.add_argument(
        "--image",
        default=None,
        help="controlnet-canny: the photo whose canny edges guide the image; img2img, inpaint, upscale: the image "
        "to work on.",
    )
    parser.add_argument("--mask", default=None, help="inpaint: the mask image; white is re-drawn, black kept.")
    parser.add_argument(
        "--strength",
        type=float,
        default=None,
        help="img2img, inpaint: how much of the schedule re-draws the image, in [0, 1] (0.3 keeps the layout, 1 "
        f"keeps nothing); defaults to {DEFAULT_STRENGTH['img2img']} (img2img) and {DEFAULT_STRENGTH['inpaint']} "
        "(inpaint).",
    )
    parser.add_argument(
        "--canny",
        action="store_true",
        help="img2img: also steer with the canny edges of --image through --controlnet, so the outlines stay.",
    )
    parser.add_argument(
        "--mask_blur", type=int, default=0, help="inpaint: blur the mask's edge over this many pixels (0: sharp)."
    )
    parser.add_argument(
        "--padding_mask_crop",
        type=int,
        default=None,
        help="inpaint: re-draw only a crop around the mask with this many pixels of margin, at full resolution.",
    )
    parser.add_argument(
        "--allow_text_to_image_checkpoint",
        action="store_true",
        help="inpaint: accept a --model without an inpainting UNet (it blends latents and leaves seams).",
    )
    parser.add_argument(
        "--noise_level",
        type=int,
        default=DEFAULT_NOISE_LEVEL,
        help="upscale: noise added to --image, 0 to the model's max_noise_level (350); higher re-invents detail.",
    )
    parser.add_argument(
        "--tile_size",
        type=int,
        default=None,
        help="upscale: upscale in overlapping tiles of this many input pixels (e.g. 128), for inputs too large to "
        "run in one piece; by default one piece.",
    )
    parser.add_argument("--low_threshold", type=int, default=100, help="Canny's lower hysteresis threshold.")
    parser.add_argument("--high_threshold", type=int, default=200, help="Canny's upper hysteresis threshold.")
    parser.add_argument(
        "--num_inference_steps",
        "--steps",
        dest="num_inference_steps",
        type=int,
        default=None,
        help=f"Denoising steps (`--steps` is its former name); by default {STABLE_DIFFUSION_STEPS} for the Stable "
        "Diffusion family and the saved "
        "default of a diffkit model.",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help=f"Classifier-free guidance scale; by default {STABLE_DIFFUSION_GUIDANCE_SCALE} for the Stable Diffusion "
        "family and the saved default of a diffkit model.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial noise; the same seed repeats images.")
    parser.add_argument("--num_images", type=int, default=1, help="Images to generate for the prompt (or class).")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Images per pipeline call. Image i has its own generator seeded with --seed + i, and whole batches are "
        "shared out between the processes of `accelerate launch --num_processes N -m diffkit.cli.generate`, so "
        "each image is the same however many processes make them.",
    )
    parser.add_argument(
        "--width",
        type=int,
        default=None,
        help="Image width, a multiple of 8; the model's default. img2img and inpaint resize --image to it (by "
        "default they keep its size, rounded down to a multiple of 8).",
    )
    parser.add_argument(
        "--height", type=int, default=None, help="Image height, a multiple of 8; the model's default (see --width)."
    )
    parser.add_argument(
        "--scheduler", default=None, choices=sorted(SCHEDULER_CLASS_NAMES), help="Sampler; by default the model's own."
    )
    parser.add_argument("--memory", default="auto", choices=MEMORY_MODES, help="GPU memory strategy.")
    parser.add_argument("--device", default=None, help="'cuda', 'cuda:1' or 'cpu'; defaults to CUDA when present.")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="Defaults to fp16 on CUDA.")
    add_speed_flags(parser)
    parser.add_argument(
        "--lora",
        action="append",
        type=parse_lora,
        default=None,
        metavar="PATH[:SCALE]",
        help="A LoRA adapter for the Stable Diffusion family: a .safetensors file (diffusers or kohya/A1111 keys), a "
        "folder or a Hub repo id, with an optional weight (default 1.0); repeat the flag to combine several. "
        "Needs `pip install 'diffkit[lora]'`.",
    )
    parser.add_argument(
        "--fuse_lora", action="store_true", help="Add the --lora adapters into the weights: no cost per step."
    )
    parser.add_argument(
        "--output_dir", "--out", dest="output_dir", required=True,
        help="Folder for the PNGs (created if missing; `--out` is its former name).",
    )  # fmt: skip
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("num_inference_steps", "num_images", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    if args.family is None and args.model is None:
        raise ValueError(
            "Name a task (sd, sdxl, controlnet-canny, img2img, inpaint, upscale) or pass `--model`: a diffkit "
            "training run or a Stable Diffusion family model, whose model_index.json picks the pipeline."
        )
    args.model = args.model or DEFAULT_MODELS[args.family]
    check_model_id(args.model, "--model")
    check_quantize(args.quantize, "--quantize")
    # a local folder says at once what it holds; a Hub repo is asked only when no task names the pipeline
    config = saved_model_config(args.model) if args.family is None or os.path.isdir(args.model) else None
    args.kind = None if config is None else model_kind(config)
    if args.kind == TEXT_CONDITIONAL and args.family in ("sd", "img2img") and loads_as_stable_diffusion(config):
        args.kind = STABLE_DIFFUSION  # a text-conditional latent run is also a Stable Diffusion folder: run it so
    if args.kind in DIFFKIT_KINDS:
        return check_diffkit_sampling(args, parser, config)
    if args.family is None:
        if args.kind not in (SDXL, STABLE_DIFFUSION):
            raise ValueError(
                f"`--model` {args.model!r} is neither a diffkit model nor a Stable Diffusion family model: name the "
                "task (e.g. `sd`) to run it anyway."
            )
        args.family = "sdxl" if args.kind == SDXL else "sd"
    if args.prompt is None:
        raise ValueError(f"`{args.family}` needs `--prompt`: what to draw.")
    if args.class_labels is not None:
        raise ValueError(f"`--class` needs a class-conditional diffkit model; `{args.family}` takes `--prompt`.")
    args.num_inference_steps = args.num_inference_steps or STABLE_DIFFUSION_STEPS
    if args.guidance_scale is None:
        args.guidance_scale = STABLE_DIFFUSION_GUIDANCE_SCALE
    for name in ("width", "height"):
        if getattr(args, name) is not None:
            check_image_side(getattr(args, name), f"--{name}")
    if args.family == "controlnet-canny":
        if args.controlnet is not None:
            check_model_id(args.controlnet, "--controlnet")
        if args.image is None:
            raise ValueError("`controlnet-canny` needs `--image PHOTO`: the photo whose edges guide the image.")
    if args.vae is not None:
        check_model_id(args.vae, "--vae")
    check_loras(args.lora, "--lora")
    if args.fuse_lora and not args.lora:
        raise ValueError("`--fuse_lora` fuses the --lora adapters into the weights, but no `--lora` was given.")
    if args.refiner is not None:
        if args.family != "sdxl":
            raise ValueError(f"`--refiner` works with the sdxl family only, not {args.family!r}.")
        check_model_id(args.refiner, "--refiner")
    if not 0 < args.refiner_switch < 1:
        raise ValueError(f"`--refiner_switch` must be in (0, 1), but is {args.refiner_switch}; 0.8 is usual.")
    given = [name for name in ("image", "mask") if getattr(args, name) is not None]
    images = {name: read_image(getattr(args, name), f"--{name}") for name in given}
    if args.family in IMAGE_TASKS:
        check_image_task_arguments(args, images)
    return args


def saved_model_config(model: str) -> Optional[dict]:
    """The model_index.json of `model` (its kind is `model_kind` of it), read before any weights load; None when there
    is none to read (the loaders then say more)."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model)
    except OSError:
        return None


def check_diffkit_sampling(args, parser, config: dict) -> argparse.Namespace:
    """A diffkit model samples from noise (`diffkit-edit` edits it, with the same task names): the condition flags
    must fit it, and the Stable Diffusion family's flags are refused."""
    if args.family is not None:
        task = "upscale" if args.kind == SUPER_RESOLUTION else args.family
        raise ValueError(
            f"`--model` {args.model!r} is a diffkit {args.kind} model: `{args.family}` on it is "
            f"`diffkit-edit {task} --model {args.model} ...`; without a task, diffkit-generate samples from it."
        )
    if args.kind == SUPER_RESOLUTION:
        raise ValueError(
            f"`--model` {args.model!r} is a super-resolution stage, which upscales a given image: "
            f"`diffkit-edit upscale --model {args.model} --image IMAGE ...`."
        )
    for name in STABLE_DIFFUSION_ONLY_FLAGS:
        if getattr(args, name) != parser.get_default(name):
            raise ValueError(f"`--{name}` is for the Stable Diffusion family; a diffkit model does not take it.")
    check_conditioning(args, conditioning_of(args.kind, {}), "--model")
    check_class_labels(args.class_labels, config)
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise ValueError(f"`--guidance_scale` must be >= 0, but is {args.guidance_scale}.")
    return args


def sample_diffkit_model(args, state):
    """Sample `--num_images` images per class (or for the prompt, or in all) from a diffkit model, with its saved
    defaults where a flag is not given, and save them as PNGs with their settings. Image `i` (classes in turn, then
    the images of each) has its own CPU generator seeded with `--seed + i`."""
    conditions = args.class_labels if args.kind == CLASS_CONDITIONAL else ["prompt" if args.prompt else "image"]
    num_images = len(conditions) * args.num_images
    batches = batches_of_this_process(state, num_images, args.batch_size)
    # The installed class for the kind, not the code saved beside the weights: no remote code runs.
    device = args.device or state.device
    pipe = load_for_sampling(pipeline_class(args.kind, GENERATE), args.model, device, args.quantize, args.compile)
    pipe.set_progress_bar_config(disable=not state.is_local_main_process)
    kwargs = {}
    if args.num_inference_steps is not None:
        kwargs["num_inference_steps"] = args.num_inference_steps
    if args.guidance_scale is not None:
        kwargs["guidance_scale"] = args.guidance_scale

    def make_batch(batch):
        generators = image_generators(args.seed, batch)
        if args.kind == CLASS_CONDITIONAL:
            labels = [label_argument(conditions[index // args.num_images]) for index in batch]
            return pipe(class_labels=labels, generator=generators, **kwargs).images
        if args.kind == TEXT_CONDITIONAL:
            negative = None if args.negative_prompt is None else [args.negative_prompt] * len(batch)
            prompts = [args.prompt] * len(batch)
            return pipe(prompt=prompts, negative_prompt=negative, generator=generators, **kwargs).images
        return pipe(batch_size=len(batch), generator=generators, **kwargs).images

    parameters = {k: v for k, v in vars(args).items() if k not in NOT_IMAGE_SETTINGS + STABLE_DIFFUSION_ONLY_FLAGS}

    def parameters_of(index):
        condition = {"class_label": conditions[index // args.num_images]} if args.kind == CLASS_CONDITIONAL else {}
        return {**parameters, **condition, "image_index": index, "image_seed": args.seed + index}

    def path_of(index):
        condition = conditions[index // args.num_images]
        return os.path.join(args.output_dir, f"{args.kind}-{condition}-seed{args.seed}-{index % args.num_images}.png")

    make_and_save(state, batches, make_batch, path_of, parameters_of, args.output_dir)


def read_image(path: str, argument: str) -> Image.Image:
    """The image at `path`, decoded (as RGB), or a `ValueError` naming `argument`."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as error:
        raise ValueError(f"`{argument}` {path!r} cannot be read as an image ({error}).") from None


def check_image_task_arguments(args, images: dict):
    """img2img, inpaint and upscale: the options each needs and allows, checked on the actual image and mask
    (`images`: those given, decoded, by argument name)."""
    if args.image is None:
        raise ValueError(f"`{args.family}` needs `--image IMAGE`: the image to work on.")
    if args.family == "inpaint" and args.mask is None:
        raise ValueError("`inpaint` needs `--mask MASK`: an image, white where the picture is re-drawn.")
    task_options = {
        "mask": "inpaint", "mask_blur": "inpaint", "padding_mask_crop": "inpaint",
        "allow_text_to_image_checkpoint": "inpaint", "canny": "img2img", "tile_size": "upscale",
    }  # fmt: skip
    for name, task in task_options.items():
        if getattr(args, name) not in (None, False, 0) and args.family != task:
            raise ValueError(f"`--{name}` works with {task} only, not {args.family}.")
    if args.family == "upscale":
        if args.strength is not None or args.width is not None or args.height is not None:
            raise ValueError("`upscale` makes the image 4x its size: --strength, --width and --height do not apply.")
        if args.tile_size is not None and (args.tile_size < 8 or args.tile_size % 8):
            raise ValueError(f"`--tile_size` must be a multiple of 8 of at least 8 pixels, but is {args.tile_size}.")
        return
    if args.strength is None:
        args.strength = DEFAULT_STRENGTH[args.family]
    check_strength(args.strength, args.num_inference_steps)
    if args.mask_blur < 0:
        raise ValueError(f"`--mask_blur` must be 0 or more pixels, but is {args.mask_blur}.")
    if args.padding_mask_crop is not None and args.padding_mask_crop < 0:
        raise ValueError(f"`--padding_mask_crop` must be 0 or more pixels, but is {args.padding_mask_crop}.")
    if args.mask is not None:
        resized_mask(images["mask"], images["image"])


def warn_if_truncated(tokenizer, prompt: str, argument: str):
    """CLIP reads at most `model_max_length` tokens; say which words it will not see."""
    token_ids = tokenizer(prompt, truncation=False).input_ids
    if len(token_ids) > tokenizer.model_max_length:
        kept = tokenizer.model_max_length - 2  # the start and end tokens take two places
        cut = tokenizer.decode(token_ids[1 + kept : -1])
        warnings.warn(
            f"`{argument}` is {len(token_ids) - 2} tokens long, but the text encoder reads {kept}: it will not see "
            f"{cut!r}. Shorten the prompt.",
            stacklevel=2,
        )


def main(argv=None):
    args = parse_args(argv)
    with launched_processes(args.device) as state:
        if args.kind in DIFFKIT_KINDS:
            return sample_diffkit_model(args, state)
        return run_stable_diffusion(args, state)


def run_stable_diffusion(args, state):
    """A Stable Diffusion family task: `--num_images` images, image `i` from its own CPU generator seeded with
    `--seed + i`, in batches shared out between the processes."""
    from diffkit.pipelines.canny import canny_edges
    from diffkit.pipelines.loaders import (
        is_sdxl,
        load_controlnet_canny,
        load_sdxl,
        load_sdxl_refiner,
        load_stable_diffusion,
    )

    batches = batches_of_this_process(state, args.num_images, args.batch_size)
    options = dict(
        device=args.device if state.num_processes == 1 else str(state.device),
        dtype=args.dtype,
        scheduler=args.scheduler,
        memory=args.memory,
        compile_unet=args.compile,
        quantize=args.quantize,
        lora=args.lora,
        fuse_lora=args.fuse_lora,
    )
    call_kwargs = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.num_inference_steps,
        guidance_scale=args.guidance_scale,
        width=args.width,
        height=args.height,
    )
    if args.family in IMAGE_TASKS:
        return run_image_task(args, state, batches, options, call_kwargs)
    refiner = None
    if args.family == "sd":
        pipe = load_stable_diffusion(args.model, **options)
    elif args.family == "sdxl":
        pipe = load_sdxl(args.model, vae=args.vae, **options)
        if args.refiner:
            refiner = load_sdxl_refiner(pipe, args.refiner, quantize=args.quantize)  # the base's device and memory
    else:
        # The base model's own model_index.json says which ControlNet pipeline fits it.
        pipe = load_controlnet_canny(args.model, args.controlnet, sdxl=is_sdxl(args.model), vae=args.vae, **options)
        with Image.open(args.image) as photo:
            call_kwargs["image"] = canny_edges(photo.convert("RGB"), args.low_threshold, args.high_threshold)
        if args.width is None and args.height is None:
            call_kwargs["width"], call_kwargs["height"] = call_kwargs["image"].size
    if state.is_main_process:
        warn_if_truncated(pipe.tokenizer, args.prompt, "--prompt")
        if args.negative_prompt:
            warn_if_truncated(pipe.tokenizer, args.negative_prompt, "--negative_prompt")

    def make_batch(batch):
        generators = image_generators(args.seed, batch)
        if refiner is None:
            return pipe(generator=generators, num_images_per_prompt=len(batch), **call_kwargs).images
        latents = pipe(
            generator=generators,
            num_images_per_prompt=len(batch),
            denoising_end=args.refiner_switch,
            output_type="latent",
            **call_kwargs,
        )
        # the refiner takes its size from the latents; num_images_per_prompt pairs each latent with the prompt
        refiner_kwargs = {k: v for k, v in call_kwargs.items() if k not in ("width", "height")}
        return refiner(
            image=latents.images,
            denoising_start=args.refiner_switch,
            generator=generators,
            num_images_per_prompt=len(batch),
            **refiner_kwargs,
        ).images

    save_images(state, batches, make_batch, args)


def save_images(state, batches, make_batch, args):
    parameters = {k: v for k, v in vars(args).items() if k not in NOT_IMAGE_SETTINGS}
    make_and_save(
        state,
        batches,
        make_batch,
        lambda index: os.path.join(args.output_dir, f"{args.family}-seed{args.seed}-{index}.png"),
        lambda index: {**parameters, "image_index": index, "image_seed": args.seed + index},
        args.output_dir,
    )


def run_image_task(args, state, batches, options: dict, call_kwargs: dict):
    """img2img, inpaint or upscale on --image: everything is checked (the upscaler's noise range from its config)
    before the weights load."""
    from diffusers import DiffusionPipeline
    from diffusers.image_processor import VaeImageProcessor

    from diffkit.pipelines.canny import canny_edges
    from diffkit.pipelines.loaders import (
        is_sdxl,
        load_controlnet_canny_img2img,
        load_sdxl_img2img,
        load_sdxl_inpaint,
        load_stable_diffusion_img2img,
        load_stable_diffusion_inpaint,
        load_upscaler,
        upscale_tiled,
    )

    original = read_image(args.image, "--image")
    if args.family == "upscale":
        image = original
        max_noise_level = DiffusionPipeline.load_config(args.model).get("max_noise_level")
        if max_noise_level is None:
            raise ValueError(f"`--model` {args.model!r} is not an x4 upscaler: its config has no max_noise_level.")
        check_upscale_inputs(max_noise_level, image, args.noise_level, tiled=args.tile_size is not None)
        pipe = load_upscaler(args.model, **options)
        for name in ("width", "height"):
            call_kwargs.pop(name)
        call_kwargs.update(noise_level=args.noise_level)

        def upscale_batch(batch):
            if args.tile_size is None:
                generators = image_generators(args.seed, batch)
                return pipe(image=image, generator=generators, num_images_per_prompt=len(batch), **call_kwargs).images
            tile_kwargs = {k: v for k, v in call_kwargs.items() if k != "prompt"}
            return [
                upscale_tiled(
                    pipe, args.prompt, image, tile_size=args.tile_size, seed=args.seed + index, **tile_kwargs
                )
                for index in batch
            ]

        return save_images(state, batches, upscale_batch, args)

    image = image_at_multiple_of_8(original, "--image", args.width, args.height)  # the size the pipeline runs at
    sdxl = is_sdxl(args.model)
    call_kwargs.update(image=image, strength=args.strength)
    for name in ("width", "height"):  # the image's size is the output's
        call_kwargs.pop(name)
    if args.family == "img2img" and args.canny:
        # no --controlnet: the loader takes the canny ControlNet of the base's family
        pipe = load_controlnet_canny_img2img(args.model, args.controlnet, sdxl=sdxl, vae=args.vae, **options)
        call_kwargs["control_image"] = canny_edges(image, args.low_threshold, args.high_threshold)
    elif args.family == "img2img":
        pipe = (
            load_sdxl_img2img(args.model, vae=args.vae, **options)
            if sdxl
            else load_stable_diffusion_img2img(args.model, **options)
        )
    else:
        # the mask fits --image as given; it then follows the image to the size it runs at
        mask = resized_mask(read_image(args.mask, "--mask"), original).resize(image.size, Image.NEAREST)
        if args.mask_blur:
            mask = VaeImageProcessor.blur(mask, blur_factor=args.mask_blur)
        allow = args.allow_text_to_image_checkpoint
        if sdxl:
            pipe = load_sdxl_inpaint(args.model, vae=args.vae, allow_text_to_image_checkpoint=allow, **options)
        else:
            pipe = load_stable_diffusion_inpaint(args.model, allow_text_to_image_checkpoint=allow, **options)
        call_kwargs.update(mask_image=mask, width=image.width, height=image.height)
        call_kwargs["padding_mask_crop"] = args.padding_mask_crop
    if state.is_main_process:
        warn_if_truncated(pipe.tokenizer, args.prompt, "--prompt")

    def make_batch(batch):
        generators = image_generators(args.seed, batch)
        return pipe(generator=generators, num_images_per_prompt=len(batch), **call_kwargs).images

    save_images(state, batches, make_batch, args)


def command():
    """`diffkit-generate` on the command line: bad input ends it with `diffkit-generate: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-generate"):
        main()


if __name__ == "__main__":
    command()
