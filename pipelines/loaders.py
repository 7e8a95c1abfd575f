"""Load Stable Diffusion, SDXL and ControlNet-canny as configured diffusers pipelines.

Each loader returns the real diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`,
`StableDiffusionControlNetPipeline`, `StableDiffusionXLControlNetPipeline`), with the device, dtype, scheduler,
memory and speed settings applied and logged; nothing is wrapped or hidden, and everything can be changed
afterwards with the usual diffusers calls.

Defaults: on CUDA, fp16 (the repo's `fp16` weight variant when it has one, else a cast) with everything on the
GPU when it fits; on CPU, fp32 with a warning that it is slow. An explicit `device=` or `dtype=` always wins.
"""

import logging
import os
import warnings
from typing import Optional, Union

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

logger = logging.getLogger(__name__)

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REFINER_MODEL = "stabilityai/stable-diffusion-xl-refiner-1.0"
SD15_CANNY_CONTROLNET = "lllyasviel/sd-controlnet-canny"
SDXL_CANNY_CONTROLNET = "diffusers/controlnet-canny-sdxl-1.0"

# Scheduler names as the web UIs and diffusers' docs call them -> (class, settings over the model's own config).
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "lms_karras": (LMSDiscreteScheduler, {"use_karras_sigmas": True}),
    "heun": (HeunDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm++2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m_sde_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),
}
MEMORY_MODES = ("auto", "none", "model_offload", "sequential_offload")
DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
DTYPES.update({"fp32": torch.float32, "float32": torch.float32})
# "auto" keeps the whole pipeline on the GPU when free memory exceeds its weights by this factor (activations,
# VAE decode at full resolution); below that it offloads whole models, below the weights themselves layer by layer.
AUTO_MEMORY_HEADROOM = 1.5
# A decoded image whose every pixel is at or below this value (of [-1, 1]) is black.
BLACK_IMAGE_LEVEL = -0.99


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
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise ValueError(f"`scheduler` {scheduler!r} is not one of {sorted(SCHEDULERS)}.")


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
            stacklevel=3,
        )
    return device, dtype


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
            pipe = pipeline_class.from_pretrained(model, dtype=dtype, variant="fp16", **kwargs)
            logger.info(f"Loaded the fp16 weight variant of {model}.")
            return pipe
        except (ValueError, OSError) as error:
            if "variant" not in str(error):
                raise
            logger.info(f"{model} has no fp16 weight variant: loading its weights and casting them to fp16.")
    return pipeline_class.from_pretrained(model, dtype=dtype, **kwargs)


def set_scheduler(pipe, scheduler: Optional[str]):
    """Replace the pipeline's scheduler by the named one, built from the model's own scheduler config."""
    check_scheduler(scheduler)
    if scheduler is not None:
        scheduler_class, settings = SCHEDULERS[scheduler]
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **settings)
    return pipe


def weights_bytes(pipe) -> int:
    return sum(
        p.numel() * p.element_size()
        for component in pipe.components.values()
        if isinstance(component, torch.nn.Module)
        for p in component.parameters()
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
    pipe.vae.decoder.register_forward_hook(raise_on_broken_decode)
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
        from_pretrained_kwargs: passed to `from_pretrained` (`revision`, `cache_dir`, `local_files_only`, `token`).

    Attention uses PyTorch's scaled-dot-product attention, diffusers' default. Raises `ValueError` for a bad
    option before anything is loaded.

    Example:

    ```py
    >>> import torch
    >>> from diffkit.pipelines.loaders import load_stable_diffusion
    >>> pipe = load_stable_diffusion(scheduler="dpm++2m_karras")  # doctest: +SKIP
    >>> image = pipe("an astronaut riding a horse", num_inference_steps=25).images[0]  # doctest: +SKIP
    ```
    """
    check_model_id(model)
    device, dtype = resolve_device_and_dtype(device, dtype)
    check_load_options(scheduler, memory, device)
    pipe = load_with_variant(StableDiffusionPipeline, model, dtype, **from_pretrained_kwargs)
    return configure_pipeline(
        pipe, device, scheduler, memory, vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet
    )


def use_safe_sdxl_vae(pipe, vae: Optional[str], dtype: torch.dtype, from_pretrained_kwargs: dict):
    """SDXL's stock VAE overflows in fp16: swap in the named fp16-safe VAE, or make the pipeline decode in fp32."""
    if vae is not None:
        check_model_id(vae, "vae")
        pipe.vae = AutoencoderKL.from_pretrained(vae, dtype=dtype, **from_pretrained_kwargs)
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
    check_model_id(model)
    device, dtype = resolve_device_and_dtype(device, dtype)
    check_load_options(scheduler, memory, device)
    pipe = load_with_variant(StableDiffusionXLPipeline, model, dtype, **from_pretrained_kwargs)
    use_safe_sdxl_vae(pipe, vae, dtype, from_pretrained_kwargs)
    return configure_pipeline(
        pipe, device, scheduler, memory, vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet
    )


def load_sdxl_refiner(
    base: StableDiffusionXLPipeline, model: str = SDXL_REFINER_MODEL, *, memory: str = "auto", **from_pretrained_kwargs
) -> StableDiffusionXLImg2ImgPipeline:
    r"""
    Load the SDXL refiner for `base`, sharing its second text encoder and its VAE (one copy of each in memory).

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
    refiner = load_with_variant(
        StableDiffusionXLImg2ImgPipeline,
        model,
        dtype,
        text_encoder_2=base.text_encoder_2,
        vae=base.vae,
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
    check_model_id(base, "base")
    check_model_id(controlnet, "controlnet")
    device, dtype = resolve_device_and_dtype(device, dtype)
    check_load_options(scheduler, memory, device)
    controlnet_model = load_with_variant(ControlNetModel, controlnet, dtype, **from_pretrained_kwargs)
    pipeline_class = StableDiffusionXLControlNetPipeline if sdxl else StableDiffusionControlNetPipeline
    pipe = load_with_variant(pipeline_class, base, dtype, controlnet=controlnet_model, **from_pretrained_kwargs)
    if sdxl:
        use_safe_sdxl_vae(pipe, vae, dtype, from_pretrained_kwargs)
    return configure_pipeline(
        pipe, device, scheduler, memory, vae_slicing, vae_tiling, channels_last, fuse_qkv, compile_unet
    )
