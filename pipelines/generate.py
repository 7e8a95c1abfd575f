"""Text (and edges) to images from the command line with Stable Diffusion, SDXL or a canny ControlNet.

    python -m diffkit.pipelines.generate sd --prompt "an astronaut riding a horse" --out images
    python -m diffkit.pipelines.generate sdxl --prompt "a lion" --vae madebyollin/sdxl-vae-fp16-fix --out images
    python -m diffkit.pipelines.generate controlnet-canny --image photo.png --prompt "a robot" --out images

Every image is saved as a PNG whose text metadata holds the generation parameters. All arguments are checked
before any model is loaded.
"""

import argparse
import json
import os
import warnings

import torch
from diffusers import DiffusionPipeline
from PIL import Image, PngImagePlugin

from diffkit.pipelines.canny import canny_edges, check_image_side
from diffkit.pipelines.loaders import (
    MEMORY_MODES,
    SCHEDULERS,
    SD15_CANNY_CONTROLNET,
    SD15_MODEL,
    SDXL_MODEL,
    check_model_id,
    load_controlnet_canny,
    load_sdxl,
    load_sdxl_refiner,
    load_stable_diffusion,
)

DEFAULT_MODELS = {"sd": SD15_MODEL, "sdxl": SDXL_MODEL, "controlnet-canny": SD15_MODEL}
PNG_METADATA_KEY = "parameters"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-generate",
        description="Generate images with Stable Diffusion, SDXL or a canny ControlNet through diffusers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("family", choices=sorted(DEFAULT_MODELS), help="Which kind of pipeline to run.")
    parser.add_argument(
        "--model",
        default=None,
        help=f"Hub id or local folder of the base model; defaults to {SD15_MODEL} (sd, controlnet-canny) or "
        f"{SDXL_MODEL} (sdxl).",
    )
    parser.add_argument(
        "--controlnet", default=SD15_CANNY_CONTROLNET, help="Hub id or folder of the canny ControlNet."
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
    parser.add_argument("--prompt", required=True, help="What to draw; CLIP reads the first 77 tokens.")
    parser.add_argument("--negative_prompt", default=None, help="What to steer away from (with guidance > 1).")
    parser.add_argument("--image", default=None, help="Photo whose canny edges guide the image (controlnet-canny).")
    parser.add_argument("--low_threshold", type=int, default=100, help="Canny's lower hysteresis threshold.")
    parser.add_argument("--high_threshold", type=int, default=200, help="Canny's upper hysteresis threshold.")
    parser.add_argument("--steps", type=int, default=30, help="Denoising steps.")
    parser.add_argument("--guidance_scale", type=float, default=7.5, help="Classifier-free guidance scale.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the initial noise; the same seed repeats images.")
    parser.add_argument("--num_images", type=int, default=1, help="Images to generate for the prompt.")
    parser.add_argument("--width", type=int, default=None, help="Image width, a multiple of 8; the model's default.")
    parser.add_argument("--height", type=int, default=None, help="Image height, a multiple of 8; the model's default.")
    parser.add_argument(
        "--scheduler", default=None, choices=sorted(SCHEDULERS), help="Sampler; by default the model's own."
    )
    parser.add_argument("--memory", default="auto", choices=MEMORY_MODES, help="GPU memory strategy.")
    parser.add_argument("--device", default=None, help="'cuda', 'cuda:1' or 'cpu'; defaults to CUDA when present.")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"], help="Defaults to fp16 on CUDA.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (slow first image).")
    parser.add_argument("--out", required=True, help="Folder for the PNGs (created if missing).")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.model = args.model or DEFAULT_MODELS[args.family]
    for name in ("width", "height"):
        if getattr(args, name) is not None:
            check_image_side(getattr(args, name), f"--{name}")
    for name in ("steps", "num_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    check_model_id(args.model, "--model")
    if args.family == "controlnet-canny":
        check_model_id(args.controlnet, "--controlnet")
        if args.image is None:
            raise ValueError("`controlnet-canny` needs `--image PHOTO`: the photo whose edges guide the image.")
    if args.vae is not None:
        check_model_id(args.vae, "--vae")
    if args.refiner is not None:
        if args.family != "sdxl":
            raise ValueError(f"`--refiner` works with the sdxl family only, not {args.family!r}.")
        check_model_id(args.refiner, "--refiner")
    if not 0 < args.refiner_switch < 1:
        raise ValueError(f"`--refiner_switch` must be in (0, 1), but is {args.refiner_switch}; 0.8 is usual.")
    if args.image is not None:
        try:
            with Image.open(args.image) as image:
                image.verify()
        except (OSError, SyntaxError) as error:
            raise ValueError(f"`--image` {args.image!r} cannot be read as an image ({error}).") from None
    return args


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


def save_png(image: Image.Image, path: str, parameters: dict):
    """Save `image` as a PNG whose text chunk `parameters` holds `parameters` as JSON, atomically."""
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text(PNG_METADATA_KEY, json.dumps(parameters))
    partial = path + ".partial"
    image.save(partial, format="PNG", pnginfo=metadata)
    os.replace(partial, path)  # a reader never sees half a PNG


def main(argv=None):
    args = parse_args(argv)
    options = dict(
        device=args.device, dtype=args.dtype, scheduler=args.scheduler, memory=args.memory, compile_unet=args.compile
    )
    call_kwargs = dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        num_images_per_prompt=args.num_images,
        width=args.width,
        height=args.height,
    )
    if args.family == "sd":
        pipe = load_stable_diffusion(args.model, **options)
    elif args.family == "sdxl":
        pipe = load_sdxl(args.model, vae=args.vae, **options)
        refiner = load_sdxl_refiner(pipe, args.refiner, memory=args.memory) if args.refiner else None
    else:
        # The base model's own model_index.json says which ControlNet pipeline fits it.
        sdxl = "XL" in DiffusionPipeline.load_config(args.model)["_class_name"]
        pipe = load_controlnet_canny(args.model, args.controlnet, sdxl=sdxl, vae=args.vae, **options)
        with Image.open(args.image) as photo:
            call_kwargs["image"] = canny_edges(photo.convert("RGB"), args.low_threshold, args.high_threshold)
        if args.width is None and args.height is None:
            call_kwargs["width"], call_kwargs["height"] = call_kwargs["image"].size
    warn_if_truncated(pipe.tokenizer, args.prompt, "--prompt")
    if args.negative_prompt:
        warn_if_truncated(pipe.tokenizer, args.negative_prompt, "--negative_prompt")

    # The generator lives on the CPU so that a seed gives the same images on any device.
    generator = torch.Generator("cpu").manual_seed(args.seed)
    if args.family == "sdxl" and refiner is not None:
        latents = pipe(generator=generator, denoising_end=args.refiner_switch, output_type="latent", **call_kwargs)
        # the refiner takes its size from the latents; num_images_per_prompt pairs each latent with the prompt
        refiner_kwargs = {k: v for k, v in call_kwargs.items() if k not in ("width", "height")}
        images = refiner(
            image=latents.images, denoising_start=args.refiner_switch, generator=generator, **refiner_kwargs
        ).images
    else:
        images = pipe(generator=generator, **call_kwargs).images

    os.makedirs(args.out, exist_ok=True)
    parameters = {k: v for k, v in vars(args).items() if k != "out"}
    for index, image in enumerate(images):
        path = os.path.join(args.out, f"{args.family}-seed{args.seed}-{index}.png")
        save_png(image, path, {**parameters, "image_index": index})
        print(path)


if __name__ == "__main__":
    main()
