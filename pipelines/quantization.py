"""Quantised denoiser weights through diffusers' own quantisation API (`PipelineQuantizationConfig`).

`quantize="int8"` stores the UNet's linear layers (attention and feed-forward projections, time embeddings) as int8
with a float scale per output row (torchao weight-only: activations stay in the pipeline's dtype); convolutions, the
VAE and the text encoders keep their dtype. `"int4"` and `"float8"` (torchao) and `"nf4"` (bitsandbytes) are the
CUDA-only modes. Used by the Stable Diffusion loaders and by `diffkit-generate` / `diffkit-edit` for diffkit models.
"""

from typing import Optional, Sequence

import torch
from diffusers import PipelineQuantizationConfig

from diffkit.pipelines.stable_diffusion_options import QUANTIZE_MODES, check_quantize

# The components a pipeline quantises: its denoiser holds most of the weights (SD 1.5: 860M of 1.07B parameters;
# SDXL: 2.6B of 3.5B).
QUANTIZED_COMPONENTS = ("unet",)
# torchao's float8 kernels need Ada or Hopper tensor cores.
FLOAT8_MIN_CAPABILITY = (8, 9)
# torchao's int4 weight-only kernels (tile-packed) take bfloat16 activations.
INT4_DTYPE = torch.bfloat16
# The int4 packing torch runs itself (its tinygemm kernel, `aten::_weight_int4pack_mm`, Ampere and later). torchao's
# default packing ("plain", from 0.15 on) needs the separate `mslk` kernels package, which nothing installs.
INT4_PACKING_FORMAT = "tile_packed_to_4d"
INT4_MIN_CAPABILITY = (8, 0)
# The dtype quantised pipelines compute in on CUDA when none is asked for: torchao's and bitsandbytes' examples all
# use bfloat16, and an int8 weight-only matmul in float16 can overflow.
QUANTIZED_COMPUTE_DTYPE = torch.bfloat16
# The modes whose matmuls are torchao's, for which float16 activations are refused on CUDA.
TORCHAO_MODES = ("int8", "int4", "float8")


def stored_bytes(module: torch.nn.Module) -> int:
    """The bytes `module`'s parameters hold in memory. A quantised weight is a tensor subclass that reports the
    element size of the dtype it stands for; its inner tensors (torchao's int8 data and scales) are counted instead."""

    def tensor_bytes(tensor):
        if hasattr(tensor, "__tensor_flatten__"):
            names, _ = tensor.__tensor_flatten__()
            return sum(tensor_bytes(getattr(tensor, name)) for name in names)
        return tensor.numel() * tensor.element_size()

    return sum(tensor_bytes(parameter) for parameter in module.parameters())


def check_quantize_on_device(
    quantize: Optional[str], device: torch.device, dtype: torch.dtype, fuse_qkv: bool = False, argument="quantize"
) -> None:
    """Refuse, before any weight loads, a quantisation mode this device or dtype cannot run, naming the alternative."""
    if quantize is None or quantize not in QUANTIZE_MODES:
        return check_quantize(quantize, argument)  # None passes; an unknown mode is refused with the known ones
    _, devices = QUANTIZE_MODES[quantize]
    if quantize != "int8" and device.type != "cuda":
        raise ValueError(
            f"`{argument}` {quantize!r} runs on {devices} only, and the device is {device}: use {argument}='int8' "
            "(torchao int8 weight-only), which runs on the CPU too."
        )
    if quantize == "float8" and torch.cuda.get_device_capability(device) < FLOAT8_MIN_CAPABILITY:
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise ValueError(
            f"`{argument}` 'float8' needs a GPU of compute capability 8.9 or more; {device} has {capability}: use "
            f"{argument}='int8' (or 'nf4')."
        )
    if quantize == "int4" and torch.cuda.get_device_capability(device) < INT4_MIN_CAPABILITY:
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        raise ValueError(
            f"`{argument}` 'int4' runs torch's tinygemm kernel, which needs a GPU of compute capability 8.0 or more; "
            f"{device} has {capability}: use {argument}='int8' (or 'nf4')."
        )
    if quantize in TORCHAO_MODES and device.type == "cuda" and dtype == torch.float16:
        raise ValueError(
            f"`{argument}` {quantize!r} computes in the pipeline's dtype, and torchao's weight-only matmuls can "
            "overflow in float16: pass dtype='bf16' (the default with quantised weights on CUDA)."
        )
    if quantize == "int4" and dtype != INT4_DTYPE:
        raise ValueError(
            f"`{argument}` 'int4' runs torchao's bfloat16 kernels, but the dtype is {dtype}: pass dtype='bf16'."
        )
    if fuse_qkv:
        raise ValueError(
            f"`fuse_qkv` concatenates the Q, K and V weights, which {argument}={quantize!r} stores in a packed form: "
            "use one or the other."
        )
    check_quantize(quantize, argument)  # installed, in versions that run it here


def pipeline_quantization_config(
    quantize: str, dtype: torch.dtype, components: Sequence[str] = QUANTIZED_COMPONENTS
) -> PipelineQuantizationConfig:
    r"""
    The `quantization_config=` for `DiffusionPipeline.from_pretrained` that quantises `components` as `quantize`
    says (see `check_quantize_on_device` for what each mode needs), for any pipeline, diffkit's own included. Pass
    the pipeline's dtype as `dtype=` to `from_pretrained` too: torchao otherwise loads the other weights in bfloat16.

    Example:

    ```py
    >>> import torch
    >>> from diffkit import ClassConditionalImagePipeline, pipeline_quantization_config
    >>> config = pipeline_quantization_config("int8", torch.float32)  # doctest: +SKIP
    >>> pipe = ClassConditionalImagePipeline.from_pretrained(  # doctest: +SKIP
    ...     "out", quantization_config=config, dtype=torch.float32
    ... )
    >>> pipe.unet.compile()  # doctest: +SKIP
    >>> images = pipe(class_labels=["seven"] * 4).images  # doctest: +SKIP
    ```
    """
    check_quantize(quantize)
    if quantize == "nf4":
        from diffusers import BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    else:
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig

        torchao_config = {
            "int8": Int8WeightOnlyConfig,
            "int4": lambda: Int4WeightOnlyConfig(int4_packing_format=INT4_PACKING_FORMAT),
            "float8": Float8WeightOnlyConfig,
        }[quantize]()
        config = TorchAoConfig(torchao_config)
    return PipelineQuantizationConfig(quant_mapping={name: config for name in components})


def quantization_kwargs(quantize: Optional[str], dtype: torch.dtype) -> dict:
    """`from_pretrained`'s `quantization_config=` for `quantize` (see `pipeline_quantization_config`), or nothing."""
    return {} if quantize is None else {"quantization_config": pipeline_quantization_config(quantize, dtype)}
