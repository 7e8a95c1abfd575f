"""Edit an image you already have with a trained class-conditional diffkit pipeline: inpaint, img2img, denoise.

    diffkit-edit inpaint --pipeline out --image digit.png --mask mask.png --class eight --out edits
    diffkit-edit img2img --pipeline out --image three.png --class eight --strength 0.6 --out edits
    diffkit-edit denoise --pipeline out --image noisy.png --class three --noise_level 0.4 --out edits

(`python -m diffkit.pipelines.edit ...` is the same command.) Every image is saved atomically as a PNG whose text
chunk `parameters` holds the edit's settings as JSON. Files and flags are checked before the model is loaded.
"""

import argparse
import os

import torch
from diffusers import DiffusionPipeline
from PIL import Image, UnidentifiedImageError

from diffkit.pipelines.generate import save_png
from diffkit.pipelines.pipeline_class_conditional_image import ClassConditionalImagePipeline
from diffkit.pipelines.pipeline_class_conditional_img2img import ClassConditionalImg2ImgPipeline
from diffkit.pipelines.pipeline_class_conditional_inpaint import ClassConditionalInpaintPipeline

TASKS = ("inpaint", "img2img", "denoise")
DEFAULT_STRENGTH = 0.6


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-edit",
        description="Inpaint, edit (img2img) or denoise an image with a trained class-conditional diffkit pipeline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("task", choices=TASKS, help="inpaint: fill the mask; img2img: redraw towards a class "
                        "(SDEdit); denoise: remove Gaussian noise of a known standard deviation.")  # fmt: skip
    parser.add_argument(
        "--pipeline",
        required=True,
        help="A class-conditional diffkit pipeline: a training --output_dir or a Hub repo.",
    )
    parser.add_argument(
        "--image", required=True, help="The image to edit (PNG, JPEG, ...); resized to the model's size."
    )
    parser.add_argument(
        "--mask", default=None, help="inpaint only: white (or >= 50%% grey) where to fill, black where to keep; the "
        "image's size."
    )  # fmt: skip
    parser.add_argument(
        "--class", dest="class_labels", nargs="+", required=True,
        help="The class(es) to edit towards, by name (e.g. seven) or id; one output set per class.",
    )  # fmt: skip
    parser.add_argument(
        "--strength", type=float, default=None,
        help=f"img2img only: how much of the schedule to run, in [0, 1] (default {DEFAULT_STRENGTH}); 0 keeps the "
        "image, 1 redraws it from noise.",
    )  # fmt: skip
    parser.add_argument(
        "--noise_level", type=float, default=None,
        help="denoise only (required there): the noise's standard deviation, images in [-1, 1] (sigma/127.5 for "
        "8-bit pixel values).",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps of the whole schedule.")
    parser.add_argument(
        "--guidance_scale", type=float, default=None, help="Classifier-free guidance scale; default: the pipeline's."
    )
    parser.add_argument("--num_images", type=int, default=1, help="Images per class.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the CPU generator, so a seed repeats anywhere.")
    parser.add_argument(
        "--device", default=None, help="Where to run: cpu or cuda; by default CUDA when a GPU is present."
    )
    parser.add_argument("--out", required=True, help="Folder for the PNGs (created if needed).")
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
    elif args.noise_level is not None:
        raise ValueError(f"`--noise_level` only applies to denoise, not to {args.task}: drop it.")
    for name in ("steps", "num_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise ValueError(f"`--guidance_scale` must be >= 0, but is {args.guidance_scale}.")
    if args.device not in (None, "cpu") and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise ValueError(f"`--device` {args.device!r} is not available here: pass cpu (or cuda on a GPU machine).")
    return args


def load_class_pipeline(name_or_path: str) -> ClassConditionalImagePipeline:
    """The class-conditional pipeline in a folder or Hub repo, with diffkit's installed class (no remote code)."""
    class_name = DiffusionPipeline.load_config(name_or_path).get("_class_name")
    class_name = class_name[1] if isinstance(class_name, list) else class_name
    if class_name != ClassConditionalImagePipeline.__name__:
        raise ValueError(
            f"`--pipeline` {name_or_path!r} holds a {class_name}; diffkit-edit works on class-conditional pipelines "
            "(ClassConditionalImagePipeline, the output of `--conditioning class` training) so far."
        )
    return ClassConditionalImagePipeline.from_pretrained(name_or_path)


def label_argument(label: str):
    """A label given on the command line: a name, or an id when it is a number."""
    return int(label) if label.isdigit() else label


def main(argv=None):
    args = parse_args(argv)
    pipe = load_class_pipeline(args.pipeline)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device)
    labels = [label_argument(label) for label in args.class_labels]
    kwargs = dict(
        class_labels=labels,
        num_images_per_label=args.num_images,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        # The generator lives on the CPU so that a seed gives the same images on any device.
        generator=torch.Generator("cpu").manual_seed(args.seed),
    )
    with Image.open(args.image) as opened:
        image = opened.copy()
    if args.task == "inpaint":
        with Image.open(args.mask) as opened:
            mask = opened.copy()
        images = ClassConditionalInpaintPipeline.from_pipe(pipe)(image=image, mask_image=mask, **kwargs).images
    elif args.task == "img2img":
        images = ClassConditionalImg2ImgPipeline.from_pipe(pipe)(image=image, strength=args.strength, **kwargs).images
    else:
        images = ClassConditionalImg2ImgPipeline.from_pipe(pipe)(
            image=image, noise_level=args.noise_level, **kwargs
        ).images

    os.makedirs(args.out, exist_ok=True)
    parameters = {k: v for k, v in vars(args).items() if k not in ("out", "device")}
    for index, edited in enumerate(images):
        label = args.class_labels[index // args.num_images]
        path = os.path.join(args.out, f"{args.task}-{label}-seed{args.seed}-{index % args.num_images}.png")
        save_png(edited, path, {**parameters, "class_label": label, "image_index": index})
        print(path)


if __name__ == "__main__":
    main()
