"""A Gradio web demo for trained diffkit pipelines and the Stable Diffusion, SDXL and ControlNet-canny wrappers.

    diffkit-app --model out
    diffkit-app --model out my-org/ddpm-mnist --sd stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --controlnet lllyasviel/sd-controlnet-canny

Each `--model` (a training `--output_dir`, a `save_pretrained` folder or a Hub repo) gets a tab: pick classes by
name (or write a prompt for a text model), set guidance, steps, sampler, seed and the number of images, and watch
the predicted clean images form with "Show the denoising". Its "Edit an image" section inpaints what you paint over
an uploaded image, redraws it towards the chosen condition (img2img) or denoises it, streamed the same way. `--sd`,
`--sdxl` and `--controlnet` add text-to-image and canny-edge tabs (and img2img tabs that share the weights),
`--inpaint` an inpainting tab and `--upscaler` the x4 upscaler's. One request runs the models at a time (a queue
serves the others in turn), all on one compute thread, with the CPU thread count of `--num_threads`. The app
listens on 127.0.0.1 only, unless `--host` or `--share` says otherwise.

This file is the command (its flags, checked before anything loads); `demo.py` beside it builds and serves the
Gradio app. Both need only torch, diffusers and gradio for diffkit pipelines (the Stable Diffusion tabs import
diffkit's loaders), so `diffkit-push --space_id` uploads them unchanged to run a Hugging Face Space.
"""

import argparse
import importlib
import ipaddress
import logging
import os

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

try:  # diffkit installed: its demo module
    import diffkit  # noqa: F401

    DEMO_MODULE = "diffkit.demo"
except ImportError:  # on a Hugging Face Space, where this file runs as diffkit_app.py beside diffkit_demo.py
    DEMO_MODULE = "diffkit_demo"

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def check_model_argument(model: str, argument: str) -> None:
    """Raise a `ValueError` naming `argument` unless `model` is an existing folder or a valid Hub repo id."""
    if os.path.isdir(model):
        return
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ValueError(
            f"`{argument}` {model!r} is neither a folder nor a Hub repo id: pass the --output_dir of a training run, "
            "a folder written by `save_pretrained`, or an id such as 'my-org/ddpm-mnist'."
        ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-app",
        description="A web demo (Gradio) for diffkit pipelines and Stable Diffusion, SDXL and ControlNet-canny.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        "--pipeline",
        dest="model",
        nargs="+",
        action="extend",
        default=[],
        metavar="OUTPUT_DIR_OR_REPO",
        help="diffkit pipelines to demo, one tab each: training --output_dir folders, save_pretrained folders or "
        "Hub repo ids (`--pipeline` is its former name).",
    )
    parser.add_argument("--sd", default=None, metavar="MODEL", help="Stable Diffusion model for a text-to-image tab.")
    parser.add_argument("--sdxl", default=None, metavar="MODEL", help="SDXL model for a text-to-image tab.")
    parser.add_argument(
        "--inpaint",
        default=None,
        metavar="MODEL",
        help="Stable Diffusion or SDXL inpainting model (e.g. stable-diffusion-v1-5/stable-diffusion-inpainting) "
        "for an inpainting tab; --sd and --sdxl also get an img2img tab.",
    )
    parser.add_argument(
        "--upscaler",
        default=None,
        metavar="MODEL",
        help="Stable Diffusion x4 upscaler (stabilityai/stable-diffusion-x4-upscaler) for an upscaling tab.",
    )
    parser.add_argument("--vae", default=None, help="fp16-safe VAE for SDXL, e.g. madebyollin/sdxl-vae-fp16-fix.")
    parser.add_argument(
        "--controlnet", default=None, metavar="MODEL", help="Canny ControlNet for a photo-to-image tab."
    )
    parser.add_argument(
        "--controlnet_base",
        default=None,
        metavar="MODEL",
        help="Base model of the ControlNet tab (SD 1.5 or SDXL); defaults to --sd, else SD 1.5.",
    )
    parser.add_argument(
        "--quantize",
        default=None,
        help="Quantise the Stable Diffusion family's UNets: int8, int4, float8 or nf4 (int8 runs on the CPU too; see "
        "diffkit-generate --help).",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=None,
        metavar="PATH[:SCALE]",
        help="A LoRA adapter (file, folder or Hub id, optional weight) for the --sd, --sdxl, --controlnet and "
        "--inpaint models, which must then be of the adapter's family; repeat for several. Each of their tabs gets "
        "a LoRA scale slider.",
    )
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="Run the pipeline code saved in a --model folder or repo. Without it, only pipelines whose class "
        "diffkit has installed load; read the code first.",
    )
    parser.add_argument("--device", default=None, help="'cuda', 'cuda:1' or 'cpu'; defaults to CUDA when present.")
    parser.add_argument(
        "--dtype",
        default=None,
        choices=["fp16", "bf16", "fp32"],
        help="Weights' dtype: by default as saved for diffkit pipelines, and fp16 on CUDA for Stable Diffusion.",
    )
    parser.add_argument(
        "--num_threads",
        type=int,
        default=None,
        help="CPU threads a request may use; by default torch's (one per core, or OMP_NUM_THREADS).",
    )
    parser.add_argument("--max_images", type=int, default=16, help="Most images one request may ask for.")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="Address to listen on; the default serves this machine only, 0.0.0.0 serves the whole network.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="Port to listen on.")
    parser.add_argument(
        "--share", action="store_true", help="Also open a public *.gradio.live link through Gradio's share servers."
    )
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if not (args.model or args.sd or args.sdxl or args.controlnet or args.inpaint or args.upscaler):
        raise ValueError(
            "Nothing to demo: pass `--model OUTPUT_DIR` (a training run), or a model with `--sd`, `--sdxl`, "
            "`--controlnet`, `--inpaint` or `--upscaler`."
        )
    for model in args.model:
        check_model_argument(model, "--model")
    for argument in ("sd", "sdxl", "vae", "controlnet", "controlnet_base", "inpaint", "upscaler"):
        if getattr(args, argument) is not None:
            check_model_argument(getattr(args, argument), f"--{argument}")
    if args.quantize is not None or args.lora is not None:  # Stable Diffusion options: diffkit is installed
        from diffkit.pipelines.stable_diffusion_options import check_loras, check_quantize, parse_lora

        check_quantize(args.quantize, "--quantize")
        if args.lora is not None:
            args.lora = check_loras([parse_lora(text) for text in args.lora], "--lora")
    if args.controlnet_base is not None and args.controlnet is None:
        raise ValueError("`--controlnet_base` is the base model of the ControlNet tab: pass `--controlnet` too.")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"`--port` {args.port} is not a TCP port: use 1-65535 (or 0 for any free port).")
    for argument in ("num_threads", "max_images"):
        if getattr(args, argument) is not None and getattr(args, argument) < 1:
            raise ValueError(f"`--{argument}` must be a positive integer, but is {getattr(args, argument)}.")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"`--device` {args.device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:1'.")
    return args


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None):
    logging.basicConfig(level=logging.INFO)
    args = parse_args(argv)
    # Gradio, torch and diffusers load once the flags are known to be right (and say so if Gradio is missing)
    web_demo = importlib.import_module(DEMO_MODULE)
    import torch

    if not is_loopback(args.host):
        logger.warning(f"Listening on {args.host}: anyone who can reach this machine can use the app.")
    # torch's thread count and the weights belong to the thread that will run the models
    if args.num_threads is not None:
        web_demo.on_compute_thread(torch.set_num_threads, args.num_threads)
    models = web_demo.on_compute_thread(web_demo.load_models, args)
    demo = web_demo.build_demo(**models, max_images=args.max_images)
    # The generate events share one queue slot (MODEL_QUEUE); the preview of canny edges does not wait for it.
    demo.queue(default_concurrency_limit=1)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=web_demo.CSS, footer_links=["api"])


def command():
    """`diffkit-app` on the command line: bad input ends it with `diffkit-app: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    # imported here: on a Space this file runs without diffkit, and only `main` is called there
    from diffkit.training.command_line import usage_errors_reported

    with usage_errors_reported("diffkit-app"):
        main()


if __name__ == "__main__":
    command()
