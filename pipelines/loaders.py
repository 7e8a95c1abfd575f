"""Load Stable Diffusion, SDXL and ControlNet-canny as configured diffusers pipelines.

Each loader returns the real diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
`StableDiffusionControlNetPipeline`, `StableDiffusionXLControlNetPipeline`, and for the user's own images the
img2img, inpainting and x4-upscaling pipelines), with the device, dtype, scheduler, memory and speed settings applied
and logged; nothing is wrapped or hidden, and everything can be changed afterwards with the usual diffusers calls.
`task_pipeline` turns a loaded pipeline into another task's without loading weights again.

Defaults: on CUDA, fp16 (the repo's `fp16` weight variant when it has one, else a cast) with everything on the
GPU when it fits; on CPU, fp32 with a warning that it is slow. An explicit `device=` or `dtype=` always wins.
"""

import importlib.util
import logging
import os
import warnings
from typing import Optional, Union

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
from packaging import version
from PIL import Image

from diffkit.pipelines.model_kinds import SDXL, model_kind, pipeline_sharing_modules
from diffkit.pipelines.quantization import check_quantize_on_device, quantization_kwargs, stored_bytes
from diffkit.pipelines.stable_diffusion_options import (
    MEMORY_MODES,
    SCHEDULER_CLASS_NAMES,
    SD15_CANNY_CONTROLNET,
    SD15_INPAINT_MODEL,
    SD15_MODEL,
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
# "auto" keeps the whole pipeline on the GPU when free memory exceeds its weights by this factor (activations,
# VAE decode at full resolution); below that it offloads whole models, below the weights themselves layer by layer.
AUTO_MEMORY_HEADROOM = 1.5
# diffusers 0.40 renamed `from_pretrained`'s `torch_dtype` to `dtype` (the old name still works there, with a
# deprecation warning); the versions before, down to our floor 0.35, know only `torch_dtype` and ignore `dtype`.
DTYPE_ARGUMENT = "dtype" if version.parse(diffusers.__version__).release >= (0, 40) else "torch_dtype"
# A decoded image whose every pixel is at or below this value (of [-1, 1]) is black.
BLACK_IMAGE_LEVEL = -0.99


def resolve_device_and_dtype(device=None, dtype=None):
    """The device and dtype a loader uses: CUDA and fp16 when there is a GPU, else CPU and fp32."""
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
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"`dtype` {dtype} is not supported: use torch.float16, torch.bfloat16 or torch.float32.")
    if device.type == "cpu":
        warnings.warn(
            f"Running diffusion on the CPU in {dtype}: expect minutes per image at full resolution. A CUDA GPU with "
            "the default fp16 is 50-100 times faster.",
            stacklevel=4,
        )
    return device, dtype


def is_sdxl(model: str, **from_pretrained_kwargs) -> bool:
    """Whether `model` (a folder or Hub repo) is of the SDXL family, as its model_index.json says (a small file, read
    before any weight)."""
    return model_kind(DiffusionPipeline.load_config(model, **from_pretrained_kwargs)) == SDXL


def check_load_options(scheduler, memory, device):
    check_scheduler(scheduler)
    if memory not in MEMORY_MODES:
        raise ValueError(f"`memory` {memory!r} is not one of {MEMORY_MODES}.")
    if memory in ("model_offload", "sequential_offload") and device.type != "cuda":
        raise ValueError(
            f"`memory` {memory!r} moves models between the CPU and a GPU, but the device is {device}: use "
            "memory='none' (or 'auto') on the CPU."
        )


def load_with_variant(pipeline_class, model: str, dtype: torch.dtype, **kwargs):
    """Load the repo's `fp16` weights when half precision is asked for and it has them; else cast what it has."""
    if dtype == torch.float16:
        try:
            pipe = pipeline_class.from_pretrained(model, **{DTYPE_ARGUMENT: dtype}, variant="fp16", **kwargs)
            logger.info(f"Loaded the fp16 weight variant of {model}.")
            return pipe
        except (ValueError, OSError) as error:
            if "variant" not in str(error):
                raise
            logger.info(f"{model} has no fp16 weight variant: loading its weights and casting them to fp16.")
    return pipeline_class.from_pretrained(model, **{DTYPE_ARGUMENT: dtype}, **kwargs)


def set_scheduler(pipe, scheduler: Optional[str]):
    """Replace the pipeline's scheduler by the named one, built from the model's own scheduler config."""
    check_scheduler(scheduler)
    if scheduler is not None:
        scheduler_class, settings = SCHEDULERS[scheduler]
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **settings)
    return pipe


def weights_bytes(pipe) -> int:
    return sum(
        stored_bytes(component) for component in pipe.components.values() if isinstance(component, torch.nn.Module)
    )


def choose_memory_mode(pipe, device: torch.device) -> str:
    """What `memory="auto"` picks: everything on the device if it fits with headroom, else the least offloading."""
    if device.type != "cuda":
        return "none"
    free_bytes, _ = torch.cuda.mem_get_info(device)
    needed = weights_bytes(pipe)
    if free_bytes >= AUTO_MEMORY_HEADROOM * needed:
        choice = "none"
    elif free_bytes >= needed / len([c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]):
        choice = "model_offload"
    else:
        choice = "sequential_offload"
    logger.warning(
        f'memory="auto" picked {choice!r}: {free_bytes / 2**30:.1f} GiB free on {device}, '
        f"weights {needed / 2**30:.1f} GiB."
    )
    return choice


def raise_on_broken_decode(module, inputs, output):
    """Forward hook on the VAE decoder: NaN, inf or an all-black image is an error, not a result."""
    sample = output.sample if hasattr(output, "sample") else output
    dtype = sample.dtype
    if not torch.isfinite(sample).all():
        raise FloatingPointError(
            f"The VAE decoded NaN or inf values in {dtype}: it overflowed. The stock SDXL VAE does so in float16; "
            "load with vae='madebyollin/sdxl-vae-fp16-fix', or keep the default, which decodes in float32."
        )
    if (sample <= BLACK_IMAGE_LEVEL).all():
        raise FloatingPointError(
            f"The VAE decoded an all-black image in {dtype}, the usual sign of a float16 overflow: decode in "
            "float32 (the default for SDXL) or use an fp16-safe VAE such as 'madebyollin/sdxl-vae-fp16-fix'."
        )


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
    # kept on the VAE so that a timing run on random weights (benchmarks/gpu_check.py) can remove the check, and say so
    pipe.vae.broken_decode_check = pipe.vae.decoder.register_forward_hook(raise_on_broken_decode)
    if memory == "auto":
        memory = choose_memory_mode(pipe, device)
    if memory == "none":
        pipe.to(device)
    elif memory == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
    if compile_unet:
        # Regional compilation: each repeated transformer block is compiled once and reused, so compiling takes
        # seconds instead of minutes for the same steady-state speed (diffusers' `compile_repeated_blocks`).
        pipe.unet.compile_repeated_blocks(fullgraph=True)
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


def use_safe_sdxl_vae(pipe, vae: Optional[str], dtype: torch.dtype, from_pretrained_kwargs: dict):
    """SDXL's stock VAE overflows in fp16: swap in the named fp16-safe VAE, or make the pipeline decode in fp32."""
    if vae is not None:
        check_model_id(vae, "vae")
        pipe.vae = AutoencoderKL.from_pretrained(vae, **{DTYPE_ARGUMENT: dtype}, **from_pretrained_kwargs)
    elif dtype == torch.float16:
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
    memory: str = "auto",
    quantize: Optional[str] = None,
    **from_pretrained_kwargs,
) -> StableDiffusionXLImg2ImgPipeline:
    r"""
    Load the SDXL refiner for `base`, sharing its second text encoder and its VAE (one copy of each in memory);
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
    device, dtype = base.unet.device, base.unet.dtype
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
        **from_pretrained_kwargs,
    )
    return configure_pipeline(refiner, device, None, memory, False, False, False, False, False)


def load_controlnet_canny(
    base: str = SD15_MODEL,
    controlnet: str = SD15_CANNY_CONTROLNET,
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
    `StableDiffusionXLControlNetPipeline` (e.g. `base=SDXL_MODEL, controlnet=SDXL_CANNY_CONTROLNET`).

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
    check_model_id(base, "base")
    check_model_id(controlnet, "controlnet")
    device, dtype = resolve_device_and_dtype(device, dtype)
    check_load_options(scheduler, memory, device)
    loras = check_weight_options(pipeline_class, weight_options, device, dtype, speed_options)
    check_unet_in_channels(base, TEXT_TO_IMAGE_UNET_IN_CHANNELS, pipeline_class, "base", from_pretrained_kwargs)
    controlnet_model = load_with_variant(ControlNetModel, controlnet, dtype, **from_pretrained_kwargs)
    quantization = quantization_kwargs(weight_options[0], dtype)
    pipe = load_with_variant(
        pipeline_class, base, dtype, controlnet=controlnet_model, **quantization, **from_pretrained_kwargs
    )
    if sdxl:
        use_safe_sdxl_vae(pipe, vae, dtype, from_pretrained_kwargs)
    load_loras(pipe, loras, fuse_lora=weight_options[2])
    return configure_pipeline(pipe, device, scheduler, memory, *speed_options)


def load_controlnet_canny_img2img(
    base: str = SD15_MODEL,
    controlnet: str = SD15_CANNY_CONTROLNET,
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
    device, dtype = resolve_device_and_dtype(device, dtype)
    check_load_options(scheduler, memory, device)
    loras = check_weight_options(pipeline_class, weight_options, device, dtype, speed_options)
    if unet_in_channels is not None:
        check_unet_in_channels(model, unet_in_channels, pipeline_class, "model", from_pretrained_kwargs)
    quantization = quantization_kwargs(weight_options[0], dtype)
    pipe = load_with_variant(pipeline_class, model, dtype, **quantization, **from_pretrained_kwargs)
    if sdxl:
        use_safe_sdxl_vae(pipe, vae, dtype, from_pretrained_kwargs)
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
