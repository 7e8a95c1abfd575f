"""Load Stable Diffusion, SDXL and ControlNet-canny as configured diffusers pipelines.

Each loader returns the real diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
`StableDiffusionControlNetPipeline`, `StableDiffusionXLControlNetPipeline`, and for the user's own images the
img2img, inpainting and x4-upscaling pipelines), with the device, dtype, scheduler, memory and speed settings applied
and logged; nothing is wrapped or hidden, and everything can be changed afterwards with the usual diffusers calls.
`task_pipeline` turns a loaded pipeline into another task's without loading weights again.

Defaults: on CUDA, fp16 (the repo's `fp16` weight variant when it has one, else a cast) with everything on the
GPU when it fits; on CPU, fp32 with a warning that it is slow. An explicit `device=` or `dtype=` always wins.
"""

import functools
import importlib.util
import logging
import os
import types
import warnings
from typing import NamedTuple, Optional, Union

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import constants as hub_constants
from huggingface_hub import model_info, snapshot_download
from packaging import version
from PIL import Image

from diffkit.pipelines.model_kinds import SDXL, model_kind, pipeline_sharing_modules
from diffkit.pipelines.quantization import (
    QUANTIZED_COMPUTE_DTYPE,
    check_quantize_on_device,
    quantization_kwargs,
    stored_bytes,
)
from diffkit.pipelines.stable_diffusion_options import (
    MEMORY_MODES,
    SCHEDULER_CLASS_NAMES,
    SD15_CANNY_CONTROLNET,
    SD15_INPAINT_MODEL,
    SD15_MODEL,
    SDXL_CANNY_CONTROLNET,
    SDXL_INPAINT_MODEL,
    SDXL_MODEL,
    SDXL_REFINER_MODEL,
    UPSCALE_FACTOR,
    UPSCALER_MODEL,
    UPSCALER_TILE_OVERLAP,
    UPSCALER_TILE_SIZE,
    check_loras,
    check_model_id,
    check_scheduler,
    check_upscale_inputs,
)

logger = logging.getLogger(__name__)

# Scheduler names -> (class, settings over the model's own config), as the web UIs and diffusers' docs name them.
SCHEDULERS = {
    name: (getattr(diffusers, class_name), settings) for name, (class_name, settings) in SCHEDULER_CLASS_NAMES.items()
}

# A UNet's input channels tell the checkpoints apart before any weight is loaded: 4 latent channels for text-to-image
# and img2img; inpainting adds the mask and the masked image's latents (4 + 1 + 4); the x4 upscaler adds the RGB
# low-resolution image (4 + 3).
TEXT_TO_IMAGE_UNET_IN_CHANNELS = 4
INPAINT_UNET_IN_CHANNELS = 9
UPSCALER_UNET_IN_CHANNELS = 7
DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPES.update({"fp32": torch.float32, "float32": torch.float32})
# `memory="auto"` adds this share to what it needs on the GPU: the UNet's activations, the text encoders' and the
# allocator's slack beside the weights and the decode.
AUTO_MEMORY_HEADROOM = 1.2
# The VAE decode's working memory, estimated as this many tensors of the widest stage at the full output size (the
# last upsampling's output: 256 channels in SD's and SDXL's VAE, `block_out_channels[1]`): a resnet there holds its
# input, normalised copies and conv outputs at once. An estimate, not a measurement: benchmarks/gpu_check.py prints
# the measured peak of the decode beside it.
DECODE_WORKING_TENSORS = 6
# diffusers 0.40 renamed `from_pretrained`'s `torch_dtype` to `dtype` (the old name still works there, with a
# deprecation warning); the versions before, down to our floor 0.35, know only `torch_dtype` and ignore `dtype`.
DTYPE_ARGUMENT = "dtype" if version.parse(diffusers.__version__).release >= (0, 40) else "torch_dtype"
# A decoded image whose every pixel is at or below this value (of [-1, 1]) is black.
BLACK_IMAGE_LEVEL = -0.99
# The weight variant that half precision loads when a folder or repo has it (`*.fp16.safetensors`).
FP16_VARIANT = "fp16"
# `from_pretrained`'s arguments that say where a folder or repo's files come from (and not how to build the model).
HUB_FILE_ARGUMENTS = ("revision", "token", "cache_dir", "local_files_only")


class Placement(NamedTuple):
    """Where a loader put a pipeline: the device it runs on, and the memory mode (after `"auto"` chose one). Kept as
    `pipe.placement`, so that a pipeline sharing its modules (the SDXL refiner) runs where they are."""

    device: torch.device
    memory: str


def resolve_device_and_dtype(device=None, dtype=None, quantize: Optional[str] = None):
    """The device and dtype a loader uses: CUDA and fp16 when there is a GPU (bf16 with quantised weights, whose
    kernels compute in bf16: int8 weight-only matmuls can overflow in fp16), else CPU and fp32."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"`device` {str(device)!r} was requested, but torch {torch.__version__} sees no CUDA GPU "
            f"(built for CUDA {torch.version.cuda}); pass device='cpu', or install a CUDA build of torch on a GPU "
            "machine."
        )
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` {dtype!r} is not one of {sorted(DTYPES)} (or a torch.dtype).")
        dtype = DTYPES[dtype]
    if dtype is None and device.type == "cuda":
        dtype = QUANTIZED_COMPUTE_DTYPE if quantize is not None else torch.float16
    elif dtype is None:
        dtype = torch.float32
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"`dtype` {dtype} is not supported: use torch.float16, torch.bfloat16 or torch.float32.")
    if device.type == "cpu":
        warn_about_the_cpu_once(dtype)
    return device, dtype


@functools.cache
def warn_about_the_cpu_once(dtype: torch.dtype):
    """Said once per process and dtype, however many pipelines (a base, a refiner, a ControlNet) load."""
    warnings.warn(
        f"Running diffusion on the CPU in {dtype}: expect minutes per image at full resolution. A CUDA GPU with "
        "the default fp16 is 50-100 times faster.",
        stacklevel=5,
    )


def is_sdxl(model: str, **from_pretrained_kwargs) -> bool:
    """Whether `model` (a folder or Hub repo) is of the SDXL family, as its model_index.json says (a small file, read
    before any weight)."""
    return model_kind(DiffusionPipeline.load_config(model, **from_pretrained_kwargs)) == SDXL


def check_load_options(scheduler, memory, device, compile_unet: bool = False):
    check_scheduler(scheduler)
    if memory not in MEMORY_MODES:
        raise ValueError(f"`memory` {memory!r} is not one of {MEMORY_MODES}.")
    if memory in ("model_offload", "sequential_offload") and device.type != "cuda":
        raise ValueError(
            f"`memory` {memory!r} moves models between the CPU and a GPU, but the device is {device}: use "
            "memory='none' (or 'auto') on the CPU."
        )
    if memory == "sequential_offload" and compile_unet:
        raise ValueError(
            "`compile_unet` compiles whole transformer blocks, but memory='sequential_offload' moves each layer's "
            "weights in and out through accelerate hooks, which a compiled block cannot hold: use "
            "memory='model_offload' (or 'none') to compile, or leave compile_unet off."
        )


def repository_files(model: str, revision=None, token=None, cache_dir=None, local_files_only=False) -> list:
    """The files of a folder or Hub repo, as paths relative to it: the Hub's list (the request diffusers itself makes
    before downloading), else, offline, the cached snapshot's; empty when neither can be read."""
    if os.path.isdir(model):
        return [
            os.path.relpath(os.path.join(root, name), model).replace(os.sep, "/")
            for root, _, names in os.walk(model)
            for name in names
        ]
    if not (local_files_only or hub_constants.HF_HUB_OFFLINE):
        try:
            info = model_info(model, revision=revision, token=token)
            return [sibling.rfilename for sibling in info.siblings]
        except Exception as error:  # offline, unreachable or unknown: the cache may still hold it, else loading says
            logger.info(f"Could not list {model}'s files on the Hub ({type(error).__name__}); looking in the cache.")
    try:
        folder = snapshot_download(model, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached: `from_pretrained` reports what is missing
        return []
    return repository_files(folder)


def is_fp16_weight_file(path: str) -> bool:
    """`*.fp16.safetensors`, or a shard of it (`*.fp16-00001-of-00002.safetensors` or
    `*-00001-of-00002.fp16.safetensors`)."""
    name = os.path.basename(path)
    return name.endswith(".safetensors") and (f".{FP16_VARIANT}." in name or f".{FP16_VARIANT}-" in name)


def has_fp16_variant(model: str, subfolder: Optional[str] = None, **hub_kwargs) -> bool:
    """Whether the folder or Hub repo `model` (under `subfolder`) holds fp16 safetensors weights."""
    prefix = f"{subfolder.strip('/')}/" if subfolder else ""
    return any(path.startswith(prefix) and is_fp16_weight_file(path) for path in repository_files(model, **hub_kwargs))


def load_with_variant(model_class, model: str, dtype: torch.dtype, **kwargs):
    """`model_class.from_pretrained(model)` in `dtype`, from safetensors only (a pickled `.bin` is never tried):
    with half precision, the `fp16` weight files when the folder or repo has them, else its full weights cast.
    `model_class` is a pipeline or a single model (ControlNet, VAE); the choice is made from the files present."""
    hub_kwargs = {name: kwargs[name] for name in HUB_FILE_ARGUMENTS if name in kwargs}
    variant = None
    if dtype == torch.float16 and has_fp16_variant(model, kwargs.get("subfolder"), **hub_kwargs):
        variant = FP16_VARIANT
    loaded = model_class.from_pretrained(
        model, **{DTYPE_ARGUMENT: dtype}, variant=variant, use_safetensors=True, **kwargs
    )
    if variant is not None:
        logger.info(f"Loaded the fp16 weight variant of {model}.")
    elif dtype == torch.float16:
        logger.info(f"{model} has no fp16 weight variant: loaded its weights and cast them to fp16.")
    return loaded


def placement_kwargs(quantize: Optional[str], device: torch.device, memory: str) -> dict:
    """`from_pretrained`'s `device_map` for quantised weights that will live on the GPU: they are then quantised
    there, as they load, instead of on the CPU (minutes for SDXL) and moved. Whole-pipeline placement by device name
    is what diffusers takes (`device_map="cuda"`); offloaded pipelines load on the CPU."""
    if quantize is None or device.type != "cuda" or memory not in ("none", "auto") or device.index not in (None, 0):
        return {}
    return {"device_map": device.type}


def set_scheduler(pipe, scheduler: Optional[str]):
    """Replace the pipeline's scheduler by the named one, built from the model's own scheduler config."""
    check_scheduler(scheduler)
    if scheduler is not None:
        scheduler_class, settings = SCHEDULERS[scheduler]
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **settings)
    return pipe


def weights_bytes(pipe) -> int:
    return sum(stored_bytes(module) for module in pipeline_modules(pipe))


def pipeline_modules(pipe) -> list:
    return [component for component in pipe.components.values() if isinstance(component, torch.nn.Module)]


def decode_working_bytes(pipe) -> int:
    """An estimate of the VAE decode's working memory at the pipeline's default size (the UNet's `sample_size`
    times the VAE's downscaling: 512 px for SD 1.5, 1024 px for SDXL); see DECODE_WORKING_TENSORS."""
    vae = pipe.vae
    channels = vae.config.block_out_channels[min(1, len(vae.config.block_out_channels) - 1)]
    side = pipe.unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    # the SDXL pipelines (those with `upcast_vae`) decode a half-precision VAE with `force_upcast` in fp32
    upcast = hasattr(pipe, "upcast_vae") and getattr(vae.config, "force_upcast", False)
    element_bytes = torch.float32.itemsize if upcast else vae.dtype.itemsize
    return DECODE_WORKING_TENSORS * channels * side * side * element_bytes


def choose_memory_mode(pipe, device: torch.device) -> str:
    """What `memory="auto"` picks: everything on the device when all the weights and the decode fit; else model
    offload, which holds one model at a time, when the largest model (SDXL's UNet: 5.1 of its 6.9 GB in fp16) and
    the decode fit; else sequential offload, layer by layer."""
    if device.type != "cuda":
        return "none"
    free_bytes, _ = torch.cuda.mem_get_info(device)
    weights = weights_bytes(pipe)
    largest = max(stored_bytes(module) for module in pipeline_modules(pipe))
    decode = decode_working_bytes(pipe)
    if free_bytes >= AUTO_MEMORY_HEADROOM * (weights + decode):
        choice = "none"
    elif free_bytes >= AUTO_MEMORY_HEADROOM * (largest + decode):
        choice = "model_offload"
    else:
        choice = "sequential_offload"
    logger.warning(
        f'memory="auto" picked {choice!r}: {free_bytes / 2**30:.1f} GiB free on {device}; weights '
        f"{weights / 2**30:.1f} GiB, the largest model {largest / 2**30:.1f} GiB, the decode about "
        f"{decode / 2**30:.1f} GiB."
    )
    return choice


def check_decoded_images(images: torch.Tensor) -> None:
    """NaN, inf or an all-black decoded image is an error, not a result (`images` in [-1, 1], whole images)."""
    dtype = images.dtype
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            f"The VAE decoded NaN or inf values in {dtype}: it overflowed. The stock SDXL VAE does so in float16; "
            "load with vae='madebyollin/sdxl-vae-fp16-fix', or keep the default, which decodes in float32."
        )
    black = (images <= BLACK_IMAGE_LEVEL).flatten(1).all(dim=1)
    if black.any():
        raise FloatingPointError(
            f"The VAE decoded an all-black image in {dtype} (image {int(black.nonzero()[0])} of the batch), the "
            "usual sign of a float16 overflow: decode in float32 (the default for SDXL) or use an fp16-safe VAE "
            "such as 'madebyollin/sdxl-vae-fp16-fix'."
        )


def guard_decoded_images(vae) -> None:
    """Check every image `vae.decode` returns with `check_decoded_images`: whole images, after a tiled or sliced
    decode has put them together (a dark tile of a bright image is no error), outside the decoder (which stays
    compilable), and once per decode however many pipelines share the VAE. `remove_decoded_image_check` undoes it."""
    if "decode" not in vars(vae):  # else already guarded, through another pipeline sharing this VAE
        # bound to the VAE as a method, so that a copy of the VAE (copy.deepcopy) checks its own decode
        vae.decode = types.MethodType(decode_and_check, vae)


def decode_and_check(vae, *args, **kwargs):
    """`vae.decode` (the class's, in which diffusers' offload hooks run), then `check_decoded_images`."""
    output = type(vae).decode(vae, *args, **kwargs)
    check_decoded_images(output.sample if hasattr(output, "sample") else output[0])
    return output


def remove_decoded_image_check(vae) -> None:
    """Undo `guard_decoded_images` (a timing run on random weights, which may decode to NaN or black)."""
    vars(vae).pop("decode", None)


def configure_pipeline(
    pipe,
    device: torch.device,
    scheduler: Optional[str],
    memory: str,
    vae_slicing: bool,
    vae_tiling: bool,
    channels_last: bool,
    fuse_qkv: bool,
    compile_unet: bool,
):
    """Apply the options every loader shares; each is logged, and each is an ordinary diffusers call."""
    set_scheduler(pipe, scheduler)
    if fuse_qkv:
        pipe.fuse_qkv_projections()
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    guard_decoded_images(pipe.vae)
    if memory == "auto":
        memory = choose_memory_mode(pipe, device)
    if memory != "none" and pipe.hf_device_map is not None:
        pipe.reset_device_map()  # quantised on the GPU as it loaded, before "auto" chose to offload: back to the CPU
    if memory == "none" and pipe.hf_device_map is None:
        pipe.to(device)
    elif memory == "none":  # from_pretrained's device map put what it loaded there; modules passed in follow
        for module in pipeline_modules(pipe):
            if module.device.type != device.type:
                module.to(device)
    elif memory == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif memory == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    pipe.placement = Placement(device, memory)
    if compile_unet:
        # Regional compilation: each repeated transformer block is compiled once and reused, so compiling takes
        # seconds instead of minutes for the same steady-state speed (diffusers' `compile_repeated_blocks`). Under
        # sequential offload (which only "auto" reaches here: asked for, the pair is refused before loading),
        # accelerate's hooks move each layer's weights inside the blocks, which a full graph cannot hold.
        fullgraph = memory != "sequential_offload"
        if not fullgraph:
            logger.warning(
                'memory="auto" chose sequential offload: the UNet is compiled with graph breaks at each layer\'s '
                "offload hook (fullgraph=False), which gains little; free GPU memory to compile it whole."
            )
        pipe.unet.compile_repeated_blocks(fullgraph=fullgraph)
    logger.info(
        f"{type(pipe).__name__} on {device} in {pipe.unet.dtype}: scheduler {type(pipe.scheduler).__name__}, "
        f"memory {memory!r}, channels_last {channels_last}, fused QKV {fuse_qkv}, compiled UNet {compile_unet}."
    )
    return pipe


def load_stable_diffusion(
    model: str = SD15_MODEL,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionPipeline:
    r"""
    Load a Stable Diffusion 1.x/2.x checkpoint as a configured `StableDiffusionPipeline`.

    Args:
        model (`str`): a Hub repo id or a local folder in the diffusers layout.
        device (`str` or `torch.device`, *optional*): defaults to `"cuda"` when a GPU is present, else `"cpu"`.
        dtype (`torch.dtype` or `"fp16"|"bf16"|"fp32"`, *optional*): defaults to fp16 on CUDA, fp32 on CPU.
        scheduler (`str`, *optional*): a name from `SCHEDULERS` (e.g. `"dpm++2m_karras"`, `"euler_a"`, `"unipc"`),
            built from the model's scheduler config; `None` keeps the model's own scheduler.
        memory (`str`): `"none"` puts everything on the device; `"model_offload"` keeps each model on the GPU only
            while it runs; `"sequential_offload"` moves layers one by one (least memory, slowest); `"auto"` picks
            from free GPU memory and logs its choice.
        vae_slicing / vae_tiling (`bool`): decode a batch one image at a time / in tiles (large images).
        channels_last (`bool`): channels-last memory format for the UNet, often faster on recent GPUs.
        fuse_qkv (`bool`): fuse the attention Q, K and V projections into one matmul.
        compile_unet (`bool`): `torch.compile` the UNet's repeated blocks (regional compilation).
        quantize (`str`, *optional*): store the UNet's linear layers quantised, through diffusers'
            `PipelineQuantizationConfig`: `"int8"` (torchao weight-only; CPU and CUDA), `"int4"` (torchao, CUDA, with
            `dtype="bf16"`), `"float8"` (torchao, CUDA of compute capability 8.9+), `"nf4"` (bitsandbytes, CUDA).
        lora (`str`, `(str, float)` or a list of them, *optional*): LoRA adapters, each a `.safetensors` file, a
            folder or a Hub repo id, in the diffusers or the kohya/A1111 format, with an optional scale (default 1).
        fuse_lora (`bool`): add the adapters into the weights, so that they cost nothing per step.
        from_pretrained_kwargs: passed to `from_pretrained` (`revision`, `cache_dir`, `local_files_only`, `token`).

    Attention uses PyTorch's scaled-dot-product attention, diffusers' default. Raises `ValueError` for a bad
    option before anything is loaded.

    Example:

    ```py
    >>> import torch
    >>> from diffkit.pipelines.loaders import load_stable_diffusion
    >>> pipe = load_stable_diffusion(scheduler="dpm++2m_karras")  # doctest: +SKIP
    >>> image = pipe("an astronaut riding a horse", num_inference_steps=25).images[0]  # doctest: +SKIP
    >>> styled = load_stable_diffusion(lora=[("my-style.safetensors", 0.8)], fuse_lora=True)  # doctest: +SKIP
    >>> small = load_stable_diffusion(quantize="int8")  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        **from_pretrained_kwargs,
    )


def vae_kwargs(vae: Optional[str], dtype: torch.dtype, from_pretrained_kwargs: dict) -> dict:
    """`from_pretrained`'s `vae=`: the VAE named by `vae` (for SDXL, an fp16-safe one), loaded first, so that the
    pipeline's own VAE is never loaded; nothing when `vae` is None."""
    if vae is None:
        return {}
    hub_kwargs = {name: value for name, value in from_pretrained_kwargs.items() if name in HUB_FILE_ARGUMENTS}
    return {"vae": load_with_variant(AutoencoderKL, vae, dtype, **hub_kwargs)}


def upcast_stock_sdxl_vae(pipe, vae: Optional[str], dtype: torch.dtype):
    """SDXL's stock VAE overflows in fp16: without an fp16-safe `vae`, the pipeline decodes in fp32."""
    if vae is None and dtype == torch.float16:
        # The SDXL pipelines upcast a fp16 VAE to fp32 around the decode when its config says `force_upcast`.
        pipe.vae.register_to_config(force_upcast=True)
    return pipe


def load_sdxl(
    model: str = SDXL_MODEL,
    *,
    vae: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionXLPipeline:
    r"""
    Load an SDXL checkpoint as a configured `StableDiffusionXLPipeline`.

    Takes the options of [`load_stable_diffusion`], plus `vae`: a Hub id or folder of an fp16-safe VAE such as
    `"madebyollin/sdxl-vae-fp16-fix"`. Without one, a fp16 pipeline decodes in fp32 (the stock SDXL VAE overflows
    in fp16 to black or NaN images). A decode that still yields NaN or an all-black image raises
    `FloatingPointError` instead of returning it. For the two-stage flow, see [`load_sdxl_refiner`].

    Example:

    ```py
    >>> from diffkit.pipelines.loaders import load_sdxl
    >>> pipe = load_sdxl(vae="madebyollin/sdxl-vae-fp16-fix", scheduler="euler_a")  # doctest: +SKIP
    >>> image = pipe("a photo of an astronaut", num_inference_steps=30).images[0]  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionXLPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        sdxl=True,
        vae=vae,
        **from_pretrained_kwargs,
    )


def load_sdxl_refiner(
    base: StableDiffusionXLPipeline,
    model: str = SDXL_REFINER_MODEL,
    *,
    memory: Optional[str] = None,
    quantize: Optional[str] = None,
    **from_pretrained_kwargs,
) -> StableDiffusionXLImg2ImgPipeline:
    r"""
    Load the SDXL refiner for `base`, sharing its second text encoder and its VAE (one copy of each in memory),
    on `base`'s device and, unless `memory` says otherwise, in its memory mode (model or sequential offload too);
    `quantize` quantises its UNet as in [`load_stable_diffusion`].

    Run the base for the first part of the schedule and the refiner for the rest:

    ```py
    >>> from diffkit.pipelines.loaders import load_sdxl, load_sdxl_refiner
    >>> base = load_sdxl()  # doctest: +SKIP
    >>> refiner = load_sdxl_refiner(base)  # doctest: +SKIP
    >>> switch = 0.8  # the base denoises the first 80% of the schedule
    >>> latents = base("a lion", denoising_end=switch, output_type="latent")  # doctest: +SKIP
    >>> image = refiner("a lion", image=latents.images, denoising_start=switch).images[0]  # doctest: +SKIP
    ```
    """
    check_model_id(model)
    base_placement = base_device_and_memory(base)
    device, dtype = base_placement.device, base.unet.dtype
    memory = base_placement.memory if memory is None else memory
    if memory == "auto" and device.type != "cuda":
        memory = "none"
    check_load_options(None, memory, device)
    check_quantize_on_device(quantize, device, dtype)
    refiner = load_with_variant(
        StableDiffusionXLImg2ImgPipeline,
        model,
        dtype,
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
        **quantization_kwargs(quantize, dtype),
        **placement_kwargs(quantize, device, memory),
        **from_pretrained_kwargs,
    )
    return configure_pipeline(refiner, device, None, memory, False, False, False, False, False)


def base_device_and_memory(base) -> Placement:
    """Where `base` runs: as a loader placed it, else (a pipeline made otherwise) diffusers' execution device, which
    offloading hooks know, with "auto" memory. Not `base.unet.device`, which is the CPU under model offload and
    `meta` under sequential offload."""
    placement = getattr(base, "placement", None)
    if isinstance(placement, Placement):
        return placement
    return Placement(torch.device(base._execution_device), "auto")


def load_controlnet_canny(
    base: str = SD15_MODEL,
    controlnet: Optional[str] = None,
    *,
    sdxl: bool = False,
    vae: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
):
    r"""
    Load a canny-edge ControlNet with its base model: `StableDiffusionControlNetPipeline`, or with `sdxl=True`
    `StableDiffusionXLControlNetPipeline` (e.g. `base=SDXL_MODEL`). `controlnet` defaults to the canny ControlNet
    of the base's family: `SD15_CANNY_CONTROLNET`, or with `sdxl=True` `SDXL_CANNY_CONTROLNET`.

    Takes the options of [`load_stable_diffusion`] (and `vae` of [`load_sdxl`] for SDXL). Give the pipeline
    `image=canny_edges(photo)` as the control image.

    Example:

    ```py
    >>> from skimage.data import astronaut
    >>> from diffkit.pipelines.canny import canny_edges
    >>> from diffkit.pipelines.loaders import load_controlnet_canny
    >>> pipe = load_controlnet_canny()  # doctest: +SKIP
    >>> edges = canny_edges(astronaut())
    >>> image = pipe("a robot in space", image=edges, num_inference_steps=25).images[0]  # doctest: +SKIP
    ```
    """
    pipeline_class = StableDiffusionXLControlNetPipeline if sdxl else StableDiffusionControlNetPipeline
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_controlnet_with_base(
        pipeline_class,
        base,
        controlnet,
        sdxl,
        vae,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        **from_pretrained_kwargs,
    )


def load_controlnet_with_base(
    pipeline_class,
    base,
    controlnet,
    sdxl,
    vae,
    device,
    dtype,
    scheduler,
    memory,
    speed_options,
    weight_options,
    **from_pretrained_kwargs,
):
    """The ControlNet loaders' shared steps: the ControlNet's weights, then the base model's, as `pipeline_class`."""
    if controlnet is None:  # the canny ControlNet made for the base's family
        controlnet = SDXL_CANNY_CONTROLNET if sdxl else SD15_CANNY_CONTROLNET
    check_model_id(base, "base")
    check_model_id(controlnet, "controlnet")
    vae = vae if sdxl else None
    if vae is not None:
        check_model_id(vae, "vae")
    device, dtype = resolve_device_and_dtype(device, dtype, quantize=weight_options[0])
    check_load_options(scheduler, memory, device, compile_unet=speed_options[4])
    loras = check_weight_options(pipeline_class, weight_options, device, dtype, speed_options)
    check_unet_in_channels(base, TEXT_TO_IMAGE_UNET_IN_CHANNELS, pipeline_class, "base", from_pretrained_kwargs)
    controlnet_model = load_with_variant(ControlNetModel, controlnet, dtype, **from_pretrained_kwargs)
    pipe = load_with_variant(
        pipeline_class,
        base,
        dtype,
        controlnet=controlnet_model,
        **vae_kwargs(vae, dtype, from_pretrained_kwargs),
        **quantization_kwargs(weight_options[0], dtype),
        **placement_kwargs(weight_options[0], device, memory),
        **from_pretrained_kwargs,
    )
    if sdxl:
        upcast_stock_sdxl_vae(pipe, vae, dtype)
    load_loras(pipe, loras, fuse_lora=weight_options[2])
    return configure_pipeline(pipe, device, scheduler, memory, *speed_options)


def load_controlnet_canny_img2img(
    base: str = SD15_MODEL,
    controlnet: Optional[str] = None,
    *,
    sdxl: bool = False,
    vae: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
):
    r"""
    Load a canny-edge ControlNet with its base model for img2img: `StableDiffusionControlNetImg2ImgPipeline`, or
    with `sdxl=True` `StableDiffusionXLControlNetImg2ImgPipeline`. The photo is both the starting image (`image=`,
    re-drawn by `strength`) and, through its edges, the control (`control_image=canny_edges(photo)`), so that a
    restyled photo keeps its outlines. Takes the options of [`load_controlnet_canny`].

    ```py
    >>> from diffkit.pipelines.canny import canny_edges
    >>> from diffkit.pipelines.loaders import load_controlnet_canny_img2img
    >>> pipe = load_controlnet_canny_img2img()  # doctest: +SKIP
    >>> image = pipe("a pencil drawing", image=photo, control_image=canny_edges(photo), strength=0.8)  # doctest: +SKIP
    ```
    """
    pipeline_class = StableDiffusionXLControlNetImg2ImgPipeline if sdxl else StableDiffusionControlNetImg2ImgPipeline
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_controlnet_with_base(
        pipeline_class,
        base,
        controlnet,
        sdxl,
        vae,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        **from_pretrained_kwargs,
    )


def load_and_configure(
    pipeline_class,
    model: str,
    device,
    dtype,
    scheduler: Optional[str],
    memory: str,
    speed_options: tuple,
    weight_options: tuple,
    unet_in_channels: Optional[int] = None,
    sdxl: bool = False,
    vae: Optional[str] = None,
    **from_pretrained_kwargs,
):
    """What each single-model loader does: check the options (and, when `unet_in_channels` is given, that the
    checkpoint's UNet has that many input channels), load (quantised as `weight_options` = (quantize, lora,
    fuse_lora) says), guard an SDXL VAE in fp16 (`vae`: see `load_sdxl`), load the LoRA adapters, and apply the
    device, memory and speed settings (`speed_options`: see `configure_pipeline`)."""
    check_model_id(model)
    if vae is not None:
        check_model_id(vae, "vae")
    device, dtype = resolve_device_and_dtype(device, dtype, quantize=weight_options[0])
    check_load_options(scheduler, memory, device, compile_unet=speed_options[4])
    loras = check_weight_options(pipeline_class, weight_options, device, dtype, speed_options)
    if unet_in_channels is not None:
        check_unet_in_channels(model, unet_in_channels, pipeline_class, "model", from_pretrained_kwargs)
    pipe = load_with_variant(
        pipeline_class,
        model,
        dtype,
        **vae_kwargs(vae, dtype, from_pretrained_kwargs),
        **quantization_kwargs(weight_options[0], dtype),
        **placement_kwargs(weight_options[0], device, memory),
        **from_pretrained_kwargs,
    )
    if sdxl:
        upcast_stock_sdxl_vae(pipe, vae, dtype)
    load_loras(pipe, loras, fuse_lora=weight_options[2])
    return configure_pipeline(pipe, device, scheduler, memory, *speed_options)


def check_weight_options(pipeline_class, weight_options: tuple, device, dtype, speed_options: tuple) -> list:
    """Refuse, before any weight loads, a quantisation this device cannot run and a LoRA that is not there; returns
    the LoRA adapters as (source, scale) pairs."""
    quantize, lora, fuse_lora = weight_options
    fuse_qkv = speed_options[3]
    check_quantize_on_device(quantize, device, dtype, fuse_qkv=fuse_qkv)
    loras = check_loras(lora)
    if loras and not hasattr(pipeline_class, "load_lora_weights"):
        raise ValueError(
            f"`lora`: {pipeline_class.__name__} takes no LoRA adapters in diffusers {diffusers.__version__}."
        )
    if loras and importlib.util.find_spec("peft") is None:
        raise ValueError("`lora` loads adapters through peft, which is not installed: `pip install 'diffkit[lora]'`.")
    if fuse_lora and not loras:
        raise ValueError("`fuse_lora` fuses the adapters of `lora` into the weights, but no `lora` was given.")
    if fuse_qkv and loras and not fuse_lora:
        raise ValueError(
            "`fuse_qkv` concatenates the attention Q, K and V weights into one layer, which drops the LoRA adapters "
            "of `lora` on them: pass fuse_lora=True too (the adapters are added into the weights first), or leave "
            "fuse_qkv off."
        )
    if fuse_lora and quantize is not None:
        raise ValueError(
            f"`fuse_lora` adds the adapters into the weights, which quantize={quantize!r} stores packed: leave "
            "fuse_lora off (the adapters then run beside the quantised weights), or load full weights."
        )
    return loras


def load_loras(pipe, loras: list, fuse_lora: bool = False):
    """Load each (source, scale) LoRA adapter of `loras` into `pipe` with diffusers' `load_lora_weights` (which also
    reads the kohya/A1111 key format), weight them with `set_adapters`, and with `fuse_lora` add them into the
    weights (then unloaded, so that a fused LoRA costs nothing per step)."""
    if not loras:
        return pipe
    names = []
    for index, (source, _) in enumerate(loras):
        name = f"lora_{index}"
        if os.path.isfile(source):
            location, weight_name = os.path.dirname(source) or ".", os.path.basename(source)
        else:  # a folder or a Hub repo: diffusers finds the .safetensors file in it
            location, weight_name = source, None
        try:
            # use_safetensors=True: never fall back to unpickling a .bin file found in a folder or repo
            pipe.load_lora_weights(location, weight_name=weight_name, adapter_name=name, use_safetensors=True)
        except OSError as error:
            reason = str(error).strip().splitlines()[0]
            raise ValueError(
                f"`lora` {source!r} has no LoRA .safetensors file that loads ({reason}); pickled files (.bin) are "
                "not loaded: convert one to safetensors, or name the file."
            ) from None
        except (RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0]
            raise ValueError(
                f"`lora` {source!r} does not fit this {type(pipe).__name__}: it was made for another model (an SDXL "
                f"LoRA on SD 1.5, or the reverse); peft says: {reason}"
            ) from None
        if not any(name in adapters for adapters in pipe.get_list_adapters().values()):
            raise ValueError(
                f"`lora` {source!r} holds no key that fits a module of this {type(pipe).__name__}: it is not a LoRA "
                "for this model family, or not a LoRA file."
            )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    logger.info(f"Loaded LoRA adapters {[source for source, _ in loras]} with scales {[s for _, s in loras]}.")
    if fuse_lora:
        pipe.fuse_lora(adapter_names=names)
        pipe.unload_lora_weights()  # the fused weights stay; the adapter layers (and their per-step cost) go
    return pipe


def check_unet_in_channels(model: str, expected: int, pipeline_class, argument: str, from_pretrained_kwargs: dict):
    """Refuse a checkpoint made for another task, told apart by its UNet's input channels (only its config is read)."""
    config_kwargs = {k: v for k, v in from_pretrained_kwargs.items() if k in ("revision", "cache_dir", "token")}
    config_kwargs["local_files_only"] = from_pretrained_kwargs.get("local_files_only", False)
    in_channels = UNet2DConditionModel.load_config(model, subfolder="unet", **config_kwargs)["in_channels"]
    if in_channels == expected:
        return
    kinds = {
        TEXT_TO_IMAGE_UNET_IN_CHANNELS: "a text-to-image checkpoint (use it for text-to-image and img2img)",
        INPAINT_UNET_IN_CHANNELS: "an inpainting checkpoint (load it with load_stable_diffusion_inpaint or "
        "load_sdxl_inpaint)",
        UPSCALER_UNET_IN_CHANNELS: "the x4 upscaler (load it with load_upscaler)",
    }
    wanted = {
        StableDiffusionInpaintPipeline: f"an inpainting checkpoint such as {SD15_INPAINT_MODEL!r}",
        StableDiffusionXLInpaintPipeline: f"an inpainting checkpoint such as {SDXL_INPAINT_MODEL!r}",
        StableDiffusionUpscalePipeline: f"the x4 upscaler, {UPSCALER_MODEL!r}",
    }.get(pipeline_class, "a text-to-image checkpoint")
    raise ValueError(
        f"`{argument}` {model!r} has a UNet with {in_channels} input channels: it is "
        f"{kinds.get(in_channels, 'not a Stable Diffusion checkpoint this loader knows')}, but "
        f"{pipeline_class.__name__} needs {wanted} ({expected} input channels)."
    )


def load_stable_diffusion_img2img(
    model: str = SD15_MODEL,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionImg2ImgPipeline:
    r"""
    Load a Stable Diffusion 1.x/2.x checkpoint as a configured `StableDiffusionImg2ImgPipeline`: edit a photo or
    restyle it (`strength` sets how much of the schedule re-draws it; 0.3 keeps the layout, 0.8 keeps little).

    Takes the options of [`load_stable_diffusion`]. An inpainting or upscaler checkpoint is refused before its
    weights load. Example:

    ```py
    >>> from diffkit.pipelines.loaders import load_stable_diffusion_img2img
    >>> pipe = load_stable_diffusion_img2img()  # doctest: +SKIP
    >>> image = pipe("a watercolour painting", image=photo, strength=0.6).images[0]  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionImg2ImgPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        unet_in_channels=TEXT_TO_IMAGE_UNET_IN_CHANNELS,
        **from_pretrained_kwargs,
    )


def load_sdxl_img2img(
    model: str = SDXL_MODEL,
    *,
    vae: Optional[str] = None,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionXLImg2ImgPipeline:
    r"""
    Load an SDXL checkpoint as a configured `StableDiffusionXLImg2ImgPipeline`, with the fp16 VAE guard of
    [`load_sdxl`] (`vae=` an fp16-safe VAE, else the decode runs in fp32). Takes the options of [`load_sdxl`].

    ```py
    >>> from diffkit.pipelines.loaders import load_sdxl_img2img
    >>> pipe = load_sdxl_img2img(vae="madebyollin/sdxl-vae-fp16-fix")  # doctest: +SKIP
    >>> image = pipe("an oil painting", image=photo, strength=0.5).images[0]  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionXLImg2ImgPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        unet_in_channels=TEXT_TO_IMAGE_UNET_IN_CHANNELS,
        sdxl=True,
        vae=vae,
        **from_pretrained_kwargs,
    )


def load_stable_diffusion_inpaint(
    model: str = SD15_INPAINT_MODEL,
    *,
    allow_text_to_image_checkpoint: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionInpaintPipeline:
    r"""
    Load a Stable Diffusion inpainting checkpoint (a UNet with 9 input channels: latents, mask and masked image) as a
    configured `StableDiffusionInpaintPipeline`. White in `mask_image` is re-drawn, black kept; the pipeline's
    `padding_mask_crop=N` inpaints only a crop around the mask (N pixels of margin) at full resolution, and
    `pipe.mask_processor.blur(mask, blur_factor=radius)` softens the mask's edge.

    A text-to-image checkpoint (4 channels) is refused before loading, because it only blends its latents with the
    original outside the mask and leaves visible seams; `allow_text_to_image_checkpoint=True` loads it anyway. Takes
    the options of [`load_stable_diffusion`].

    ```py
    >>> from diffkit.pipelines.loaders import load_stable_diffusion_inpaint
    >>> pipe = load_stable_diffusion_inpaint()  # doctest: +SKIP
    >>> image = pipe("a red scarf", image=photo, mask_image=mask, padding_mask_crop=32).images[0]  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionInpaintPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        unet_in_channels=None if allow_text_to_image_checkpoint else INPAINT_UNET_IN_CHANNELS,
        **from_pretrained_kwargs,
    )


def load_sdxl_inpaint(
    model: str = SDXL_INPAINT_MODEL,
    *,
    vae: Optional[str] = None,
    allow_text_to_image_checkpoint: bool = False,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionXLInpaintPipeline:
    r"""
    Load an SDXL inpainting checkpoint as a configured `StableDiffusionXLInpaintPipeline`, with the fp16 VAE guard of
    [`load_sdxl`]. Takes the options of [`load_sdxl`] and `allow_text_to_image_checkpoint` of
    [`load_stable_diffusion_inpaint`] (the SDXL base model inpaints passably at `strength` below 1).

    ```py
    >>> from diffkit.pipelines.loaders import load_sdxl_inpaint
    >>> pipe = load_sdxl_inpaint(vae="madebyollin/sdxl-vae-fp16-fix")  # doctest: +SKIP
    >>> image = pipe("a tiger", image=photo, mask_image=mask).images[0]  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionXLInpaintPipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        unet_in_channels=None if allow_text_to_image_checkpoint else INPAINT_UNET_IN_CHANNELS,
        sdxl=True,
        vae=vae,
        **from_pretrained_kwargs,
    )


def load_upscaler(
    model: str = UPSCALER_MODEL,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[Union[str, torch.dtype]] = None,
    scheduler: Optional[str] = None,
    memory: str = "auto",
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    channels_last: bool = False,
    fuse_qkv: bool = False,
    compile_unet: bool = False,
    quantize: Optional[str] = None,
    lora=None,
    fuse_lora: bool = False,
    **from_pretrained_kwargs,
) -> StableDiffusionUpscalePipeline:
    r"""
    Load the Stable Diffusion x4 upscaler as a configured `StableDiffusionUpscalePipeline`: a prompt-guided 4x
    super-resolution whose `noise_level` (0 to the model's `max_noise_level`, 350) says how much of the input's
    detail to re-invent. Inputs larger than `UPSCALER_MAX_UNTILED_SIDE` go through [`upscale_tiled`]; `vae_tiling`
    decodes the 4x output in tiles. Takes the options of [`load_stable_diffusion`].

    ```py
    >>> from diffkit.pipelines.loaders import load_upscaler, upscale_tiled
    >>> pipe = load_upscaler()  # doctest: +SKIP
    >>> image = pipe("a photo of a cat", image=small_photo, noise_level=20).images[0]  # doctest: +SKIP
    >>> large = upscale_tiled(pipe, "a photo of a cat", large_photo)  # doctest: +SKIP
    ```
    """
    speed_options = (vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet)
    weight_options = (quantize, lora, fuse_lora)
    return load_and_configure(
        StableDiffusionUpscalePipeline,
        model,
        device,
        dtype,
        scheduler,
        memory,
        speed_options,
        weight_options,
        unet_in_channels=UPSCALER_UNET_IN_CHANNELS,
        **from_pretrained_kwargs,
    )


# For `task_pipeline`: the pipelines of one family share their components, so any of them makes the others.
TASK_PIPELINES = {
    "sd": {
        "text2img": StableDiffusionPipeline,
        "img2img": StableDiffusionImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,
    },
    "sdxl": {
        "text2img": StableDiffusionXLPipeline,
        "img2img": StableDiffusionXLImg2ImgPipeline,
        "inpaint": StableDiffusionXLInpaintPipeline,
    },
    "controlnet": {"text2img": StableDiffusionControlNetPipeline, "img2img": StableDiffusionControlNetImg2ImgPipeline},
    "controlnet_sdxl": {
        "text2img": StableDiffusionXLControlNetPipeline,
        "img2img": StableDiffusionXLControlNetImg2ImgPipeline,
    },
}


def task_pipeline(pipe, task: str):
    r"""
    The `task` (`"text2img"`, `"img2img"` or `"inpaint"`) pipeline of `pipe`'s family, made as diffusers'
    `from_pipe` makes it: it shares every module of `pipe` (no weights are loaded or copied), its scheduler and the
    loaders' settings (device, dtype, quantised weights, LoRA adapters, the VAE guard). Unlike `from_pipe`, it casts
    nothing: `from_pipe` casts the shared modules to float32 unless told a dtype, and cannot cast quantised ones.

    An inpainting UNet (9 input channels) only inpaints. A text-to-image UNet inpaints by blending its latents with
    the original outside the mask, which leaves seams at the mask's edge: `load_stable_diffusion_inpaint` loads the
    dedicated checkpoint.

    ```py
    >>> from diffkit.pipelines.loaders import load_stable_diffusion, task_pipeline
    >>> pipe = load_stable_diffusion()  # doctest: +SKIP
    >>> img2img = task_pipeline(pipe, "img2img")  # doctest: +SKIP
    >>> image = img2img("a watercolour", image=photo, strength=0.6).images[0]  # doctest: +SKIP
    ```
    """
    family = next((name for name, tasks in TASK_PIPELINES.items() if type(pipe) in tasks.values()), None)
    if family is None:
        known = sorted(cls.__name__ for tasks in TASK_PIPELINES.values() for cls in tasks.values())
        raise ValueError(f"`pipe` is a {type(pipe).__name__}; task_pipeline knows {known}.")
    if task not in TASK_PIPELINES[family]:
        raise ValueError(f"`task` {task!r} is not one of {sorted(TASK_PIPELINES[family])} for a {family} pipeline.")
    in_channels = pipe.unet.config.in_channels
    if in_channels == INPAINT_UNET_IN_CHANNELS and task != "inpaint":
        raise ValueError(
            f"`pipe` holds an inpainting UNet ({in_channels} input channels), which cannot run {task!r}: load a "
            "text-to-image checkpoint for it."
        )
    pipeline_class = TASK_PIPELINES[family][task]
    if isinstance(pipe, pipeline_class):
        return pipe
    return pipeline_sharing_modules(pipeline_class, pipe)


def tile_starts(length: int, tile_size: int, overlap: int):
    """Where tiles of `tile_size` start along a side of `length`, overlapping by at least `overlap`."""
    if length <= tile_size:
        return [0]
    stride = tile_size - overlap
    return list(range(0, length - tile_size, stride)) + [length - tile_size]


def upscale_tiled(
    pipe: StableDiffusionUpscalePipeline,
    prompt: str,
    image,
    *,
    tile_size: int = UPSCALER_TILE_SIZE,
    tile_overlap: Optional[int] = None,
    seed: int = 0,
    **call_kwargs,
):
    r"""
    Upscale `image` 4x in overlapping tiles of `tile_size` input pixels, so that any size fits in memory; the tiles
    overlap by `tile_overlap` pixels (default `UPSCALER_TILE_OVERLAP`, at most a quarter of a tile), cross-faded, and
    every tile starts from the same `seed`. `call_kwargs` go to each `pipe(...)` call
    (`noise_level`, `num_inference_steps`, `guidance_scale`, `negative_prompt`). Returns one PIL image.

    ```py
    >>> from diffkit.pipelines.loaders import load_upscaler, upscale_tiled
    >>> pipe = load_upscaler()  # doctest: +SKIP
    >>> large = upscale_tiled(pipe, "a photo of a cat", photo, tile_size=128)  # doctest: +SKIP
    ```
    """
    if not isinstance(tile_size, int) or tile_size < 8 or tile_size % 8:
        raise ValueError(f"`tile_size` must be a multiple of 8 of at least 8 pixels, but is {tile_size!r}.")
    if tile_overlap is None:
        tile_overlap = min(UPSCALER_TILE_OVERLAP, tile_size // 4)
    if not isinstance(tile_overlap, int) or not 0 <= tile_overlap < tile_size // 2:
        raise ValueError(f"`tile_overlap` must be in [0, tile_size / 2), but is {tile_overlap!r}.")
    image = image.convert("RGB")
    check_upscale_inputs(pipe.config.max_noise_level, image, call_kwargs.get("noise_level", 20), tiled=True)
    width, height = image.size
    output = np.zeros((height * UPSCALE_FACTOR, width * UPSCALE_FACTOR, 3))
    weights = np.zeros((height * UPSCALE_FACTOR, width * UPSCALE_FACTOR, 1))
    # each tile's weight rises linearly from its edge over the overlap, so neighbouring tiles cross-fade
    fade = max(tile_overlap * UPSCALE_FACTOR, 1)
    for top in tile_starts(height, tile_size, tile_overlap):
        for left in tile_starts(width, tile_size, tile_overlap):
            tile = image.crop((left, top, min(left + tile_size, width), min(top + tile_size, height)))
            generator = torch.Generator("cpu").manual_seed(seed)
            upscaled = pipe(prompt, image=tile, generator=generator, output_type="np", **call_kwargs).images[0]
            rows, columns = upscaled.shape[:2]
            ramp_rows = np.minimum(np.arange(rows) + 1, np.arange(rows)[::-1] + 1).clip(max=fade) / fade
            ramp_columns = np.minimum(np.arange(columns) + 1, np.arange(columns)[::-1] + 1).clip(max=fade) / fade
            weight = (ramp_rows[:, None] * ramp_columns[None, :])[..., None]
            y, x = top * UPSCALE_FACTOR, left * UPSCALE_FACTOR
            output[y : y + rows, x : x + columns] += upscaled * weight
            weights[y : y + rows, x : x + columns] += weight
    return Image.fromarray((output / weights * 255).round().clip(0, 255).astype(np.uint8))
