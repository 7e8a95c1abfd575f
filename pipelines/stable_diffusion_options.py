"""The Stable Diffusion family's checkpoints, samplers and memory modes, and the checks of what a user asks of them.

Only the standard library, Pillow and huggingface_hub's id check: the commands' and the web demo's arguments are
checked with these before torch and diffusers load (`loaders.py` holds the loading itself).
"""

import importlib.metadata
import importlib.util
import os
from typing import List, Optional, Sequence, Tuple, Union

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from PIL import Image

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_MODEL = "stabilityai/stable-diffusion-xl-refiner-1.0"
SD15_CANNY_CONTROLNET = "lllyasviel/sd-controlnet-canny"
SDXL_CANNY_CONTROLNET = "diffusers/controlnet-canny-sdxl-1.0"
SD15_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SDXL_INPAINT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
UPSCALER_MODEL = "stabilityai/stable-diffusion-x4-upscaler"

# The x4 upscaler denoises at the input's resolution, with self-attention over every input pixel: past this input
# side its memory grows fast, so larger inputs go through `upscale_tiled` (the side 128 px tiles are run at).
UPSCALER_MAX_UNTILED_SIDE = 256
UPSCALER_TILE_SIZE = 128
UPSCALER_TILE_OVERLAP = 32
UPSCALE_FACTOR = 4

# Scheduler names as the web UIs and diffusers' docs call them -> (diffusers class name, settings over the model's
# own config); `loaders.SCHEDULERS` holds the classes.
SCHEDULER_CLASS_NAMES = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms_karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "heun": ("HeunDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m_sde_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {}),
}
MEMORY_MODES = ("auto", "none", "model_offload", "sequential_offload")

# Quantised weights (`quantize=`, `--quantize`): mode -> (the package behind it, the devices it runs on). Each goes
# through diffusers' own quantisation API; `quantization.py` builds the configs.
QUANTIZE_MODES = {
    "int8": ("torchao", "CPU and CUDA"),
    "int4": ("torchao", "CUDA"),
    "float8": ("torchao", "CUDA with compute capability 8.9 or more (Ada, Hopper)"),
    "nf4": ("bitsandbytes", "CUDA"),
}
# The pyproject.toml extra that installs each backend.
QUANTIZE_EXTRAS = {"torchao": "quantization", "bitsandbytes": "nf4"}
# diffusers before 0.36 builds torchao configs from names that need a CUDA GPU even for int8 (and newer torchao
# releases dropped those names); from 0.36 on it takes torchao's config objects, which run on the CPU too.
QUANTIZE_MIN_DIFFUSERS = (0, 36)
# A LoRA's default weight when `--lora PATH` gives no `:SCALE`.
DEFAULT_LORA_SCALE = 1.0


def check_model_id(model: str, argument: str = "model") -> None:
    """Raise a `ValueError` naming `argument` unless `model` is an existing folder or a plausible Hub id."""
    if os.path.isdir(model):
        return
    try:
        validate_repo_id(model)
    except HFValidationError:
        raise ValueError(
            f"`{argument}` {model!r} is neither an existing folder nor a Hub repo id ('namespace/name'): check the "
            "path, or pass an id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5'."
        ) from None
    if model.count("/") == 0 and not os.path.exists(model):
        raise ValueError(
            f"`{argument}` {model!r} is not a folder, and Hub model ids have the form 'namespace/name'; check the "
            "spelling or the path."
        )


def check_scheduler(scheduler: Optional[str]) -> None:
    if scheduler is not None and scheduler not in SCHEDULER_CLASS_NAMES:
        raise ValueError(f"`scheduler` {scheduler!r} is not one of {sorted(SCHEDULER_CLASS_NAMES)}.")


def check_strength(strength: float, num_inference_steps: int) -> None:
    """img2img re-draws the last `int(num_inference_steps * strength)` steps of the schedule: at least one must run."""
    if not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"`strength` must be in [0, 1], but is {strength!r}: 0.3 keeps the layout, 0.8 keeps little.")
    if int(num_inference_steps * strength) < 1:
        raise ValueError(
            f"`strength` {strength:g} with {num_inference_steps} steps runs no denoising step "
            f"(int({num_inference_steps} x {strength:g}) = 0): raise `strength` to at least "
            f"{1 / num_inference_steps:.3g} or use more steps."
        )


def image_at_multiple_of_8(image, argument: str, width: Optional[int] = None, height: Optional[int] = None):
    """`image` at `width` x `height` when given, else at its own size rounded down to a multiple of 8 (the latents
    are 1/8 of the image); a `ValueError` naming `argument` for an image smaller than 8x8."""
    width = width or image.width // 8 * 8
    height = height or image.height // 8 * 8
    if width < 8 or height < 8:
        raise ValueError(f"`{argument}` is {image.width}x{image.height}: at least 8x8 pixels are needed.")
    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def resized_mask(mask, image):
    """The inpainting mask at the image's size, as a grey ('L') image; white is re-drawn.

    A mask of another size is resized (nearest neighbour, so it stays black and white) when its aspect ratio is the
    image's to within a pixel; another aspect ratio is an error, since stretching would move the masked region."""
    width, height = image.size
    if mask.size != image.size:
        if abs(mask.width * height / width - mask.height) > 1:
            raise ValueError(
                f"`mask_image` is {mask.width}x{mask.height} but `image` is {width}x{height}: their aspect ratios "
                "differ, so the mask cannot be resized onto the image. Draw the mask at the image's size."
            )
        mask = mask.resize(image.size, Image.NEAREST)
    return mask.convert("L")


def check_upscale_inputs(max_noise_level: int, image, noise_level: int, tiled: bool) -> None:
    """The x4 upscaler's limits: `noise_level` within the model's range (`pipe.config.max_noise_level`, 350 for
    stabilityai/stable-diffusion-x4-upscaler), and an input small enough to run untiled."""
    if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= max_noise_level:
        raise ValueError(
            f"`noise_level` must be a whole number in [0, {max_noise_level}] (the model's max_noise_level), but is "
            f"{noise_level!r}; 20 is the usual value, higher re-invents more detail."
        )
    if not tiled and max(image.size) > UPSCALER_MAX_UNTILED_SIDE:
        raise ValueError(
            f"`image` is {image.width}x{image.height}, larger than {UPSCALER_MAX_UNTILED_SIDE} px a side, which the "
            "x4 upscaler runs in one piece without running out of memory: upscale it with "
            f"`upscale_tiled` (tiles of {UPSCALER_TILE_SIZE} px; `--tile_size` in the command)."
        )


def check_quantize(quantize: Optional[str], argument: str = "quantize") -> None:
    """Refuse an unknown quantisation mode, or one whose backend is not installed, before anything loads (the
    device's own limits are checked by `quantization.check_quantize_on_device`, once the device is known)."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"`{argument}` {quantize!r} is not one of {sorted(QUANTIZE_MODES)} (or None for full weights)."
        )
    package, devices = QUANTIZE_MODES[quantize]
    if importlib.util.find_spec(package) is None:
        raise ValueError(
            f"`{argument}` {quantize!r} quantises with {package}, which is not installed: "
            f"`pip install 'diffkit[{QUANTIZE_EXTRAS[package]}]'` ({quantize} runs on {devices})."
        )
    if package == "torchao":
        installed = importlib.metadata.version("diffusers")
        if tuple(int(part) for part in installed.split(".")[:2]) < QUANTIZE_MIN_DIFFUSERS:
            raise ValueError(
                f"`{argument}` {quantize!r} needs diffusers >= {'.'.join(map(str, QUANTIZE_MIN_DIFFUSERS))} "
                f"(installed: {installed}), whose torchao configs run on {devices}: `pip install -U diffusers`."
            )


def parse_lora(text: str) -> Tuple[str, float]:
    """`PATH[:SCALE]` (a `.safetensors` file, a folder or a Hub repo id; optional weight) -> (source, scale)."""
    source, separator, scale = text.rpartition(":")
    if separator and source:
        try:
            return source, float(scale)
        except ValueError:
            pass  # a colon that is part of the path (e.g. a Windows drive)
    return text, DEFAULT_LORA_SCALE


def check_loras(
    lora: Union[None, str, Tuple[str, float], Sequence[Union[str, Tuple[str, float]]]], argument: str = "lora"
) -> List[Tuple[str, float]]:
    """The LoRA adapters asked for, as (source, scale) pairs, each source checked before any weight loads: an existing
    `.safetensors` file or folder, or a Hub repo id. `lora` is one source, one (source, scale) pair, or a list."""
    if lora is None:
        return []
    if isinstance(lora, str) or (isinstance(lora, tuple) and len(lora) == 2 and isinstance(lora[1], (int, float))):
        lora = [lora]
    loras = []
    for item in lora:
        source, scale = (item, DEFAULT_LORA_SCALE) if isinstance(item, str) else item
        if not isinstance(source, str) or not isinstance(scale, (int, float)):
            raise ValueError(f"`{argument}` {item!r} is neither a path or repo id nor a (path, scale) pair.")
        if os.path.isfile(source):
            if not source.endswith(".safetensors"):
                raise ValueError(
                    f"`{argument}` {source!r} is not a .safetensors file; pickled LoRA files (.bin, .pt, .ckpt) "
                    "can run code when loaded: convert it to safetensors first."
                )
        elif not os.path.isdir(source):
            looks_like_a_file = source.endswith((".safetensors", ".bin", ".pt", ".ckpt")) or os.sep in source[:1]
            if looks_like_a_file or source.count("/") != 1:
                raise ValueError(
                    f"`{argument}` {source!r} does not exist: give a .safetensors file, a folder holding one, or a "
                    "Hub repo id ('namespace/name'), with an optional ':SCALE'."
                )
            check_model_id(source, argument)
        loras.append((source, float(scale)))
    return loras
