"""Everything that needs a CUDA GPU, in one command that a short GPU window cannot waste: the CUDA-only tests, then
seconds per image and peak memory of the Stable Diffusion family against diffusers' own fp16 loading, row by row.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu_check.md] [--cases sd15,sdxl] [--repeats 2]
    python -m benchmarks.gpu_check --dry_run      # on the CPU: every row's code path on tiny models, nothing timed

Each row runs in its own try/except: a row that fails is written with its error and the check goes on. The results
file is rewritten (atomically) after every row, and each row is printed as it ends, so that a run cut short keeps
what it measured; `gc.collect()` and `torch.cuda.empty_cache()` run between rows. Rows are ordered by what matters
most (the loaders' defaults against diffusers' baseline for every pipeline first, then the speed options, then each
quantisation mode with and without compiling), and none starts after the time budget: it is listed as skipped
(`--budget_s`, 400 s, leaves the last row time to end within 8 minutes). The exit status is 0 when every row and the
CUDA tests passed, 1 otherwise, and 2 without a GPU.

The baseline is what a diffusers user starts from on a GPU: `from_pretrained(..., torch_dtype=torch.float16,
variant="fp16")` (the variant where the repo has the files) and `.to("cuda")`. Compiled rows report the first call
(which compiles) apart from the steady state. A GPU machine may have no Hub access, and speed and memory do not
depend on the weights' values: a checkpoint found in the local Hugging Face cache is used as it is; otherwise the
full-size architecture is built from the published configuration below with random weights, saved in fp16 with the
fp16 variant's file names beside it. Random weights can decode to NaN or black images, so for those rows only the
loaders' decoded-image check is removed (the table says so).

`--dry_run` runs the same plan on the CPU with the tiny models of the tests (64 px, 2 steps, one repeat): the modes
that need CUDA are listed with the loaders' refusal, and everything else runs, so that no line of this script first
runs on the GPU. On the GPU machine, install the wheels that its image lacks first (docs/efficiency.md, "The GPU
check").
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from huggingface_hub import snapshot_download
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffkit.pipelines.canny import canny_edges
from diffkit.pipelines.loaders import (
    DTYPE_ARGUMENT,
    decode_working_bytes,
    has_fp16_variant,
    is_fp16_weight_file,
    load_controlnet_canny,
    load_sdxl,
    load_stable_diffusion,
    load_stable_diffusion_inpaint,
    load_upscaler,
    remove_decoded_image_check,
)
from diffkit.pipelines.stable_diffusion_options import (
    SD15_CANNY_CONTROLNET,
    SD15_INPAINT_MODEL,
    SD15_MODEL,
    SDXL_MODEL,
    UPSCALER_MODEL,
)

NO_GPU_EXIT_STATUS = 2
PROMPT = "an astronaut riding a horse"
SDXL_FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"
# The CUDA-only tests get this long; a hang there must not eat the window.
CUDA_TESTS_TIMEOUT_S = 180
# The test files that hold tests marked `cuda` (tests/test_gpu_check.py checks the list): only these are collected,
# since the GPU machine's image lacks what other test files import (gradio, mlxtend, datasets).
CUDA_TEST_FILES = ["tests/test_cuda_path.py", "tests/test_image_tasks.py", "tests/test_inference.py"]
# Figures published by diffusers (its docs' optimisation pages, an A100 80GB): printed beside ours, not compared,
# since the GPU differs.
PUBLISHED_FIGURES = [
    "diffusers' published figures (A100, for scale; another GPU): SDXL 1024 px, 30 steps, bf16 + SDPA: 3.31 s/image, "
    "compiled 2.54 s; SD 1.5 512 px fp16: 21.7 it/s eager, 44 it/s compiled.",
    "Our steps/s divides the steps by the whole call (text encoding and the decode included), so it is below the "
    "progress bar's it/s that those figures quote.",
]

# The published configurations (the `config.json` files of the Hub repos named beside them), transcribed; keys left
# out take diffusers' defaults. When a checkpoint is cached, `config_differences` compares it with these.
SD15_UNET = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5, unet/
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD_VAE = dict(  # stable-diffusion-v1-5/stable-diffusion-v1-5, vae/
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=512,
)
CLIP_L_TEXT = dict(  # openai/clip-vit-large-patch14's text tower (SD 1.5's and SDXL's first text encoder)
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SDXL_VAE = {**SD_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}  # SDXL base, vae/
SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
SDXL_UNET = dict(  # stabilityai/stable-diffusion-xl-base-1.0, unet/
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[5, 10, 20],
    transformer_layers_per_block=[1, 2, 10],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
CLIP_BIG_G_TEXT = dict(  # laion/CLIP-ViT-bigG-14's text tower (SDXL's text_encoder_2)
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)
UPSCALER_UNET = dict(  # stabilityai/stable-diffusion-x4-upscaler, unet/
    sample_size=128,
    in_channels=7,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[256, 512, 512, 1024],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    only_cross_attention=[True, True, True, False],
    cross_attention_dim=1024,
    attention_head_dim=8,
    num_class_embeds=1000,
    use_linear_projection=True,
)
UPSCALER_VAE = dict(  # stabilityai/stable-diffusion-x4-upscaler, vae/: three blocks, so 4x and not 8x
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=[128, 256, 512],
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    scaling_factor=0.08333,
)
OPEN_CLIP_H_TEXT = dict(  # laion/CLIP-ViT-H-14's text tower, its penultimate layer as SD 2 uses it (23 layers)
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)

# -- the models: cached checkpoints, else the published architectures with random weights ---------------------------


def link_fp16_variant(folder):
    """Give every weight file of `folder` (saved in fp16) its fp16 variant's name too, as a link: diffusers'
    `variant="fp16"` then finds the files a Hub repo's fp16 variant has, without a second copy on disk."""
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".safetensors") and not is_fp16_weight_file(name) and "-of-" not in name:
                variant_name = name[: -len(".safetensors")] + ".fp16.safetensors"
                os.symlink(name, os.path.join(root, variant_name))


def save_random(pipe, folder):
    # fp16 on disk: half the writing, and what the fp16 rows load; max_shard_size keeps every model in one file
    pipe.to(torch.float16).save_pretrained(folder, max_shard_size="100GB")
    link_fp16_variant(folder)
    return folder


def random_sd15(folder, device, inpainting=False):
    if os.path.exists(os.path.join(folder, "model_index.json")):  # built for an earlier row
        return folder
    unet_config = {**SD15_UNET, "in_channels": 9 if inpainting else 4}
    with torch.device(device):  # random initialisation on the GPU: seconds instead of minutes
        components = dict(
            unet=UNet2DConditionModel(**unet_config),
            vae=AutoencoderKL(**SD_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        )
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = pipeline_class(
        **components,
        tokenizer=clip_tokenizer(os.path.join(folder, "tokenizer")),
        scheduler=PNDMScheduler(**SD_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save_random(pipe, folder)


def random_controlnet(folder, base_folder, device):
    if not os.path.exists(os.path.join(folder, "config.json")):
        with torch.device(device):
            unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
            # lllyasviel/sd-controlnet-canny's layout, and like it without fp16 files
            ControlNetModel.from_unet(unet).to(torch.float16).save_pretrained(folder)
    return folder


def random_sdxl(folder, device):
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return folder
    with torch.device(device):
        components = dict(
            unet=UNet2DConditionModel(**SDXL_UNET),
            vae=AutoencoderKL(**SDXL_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G_TEXT)),
        )
    tokenizer = clip_tokenizer(os.path.join(folder, "tokenizer"))
    pipe = StableDiffusionXLPipeline(
        **components,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="leading"),
    )
    return save_random(pipe, folder)


def random_sdxl_vae(folder, device):
    """An SDXL VAE that does not force the fp32 decode, as madebyollin/sdxl-vae-fp16-fix (random weights)."""
    if not os.path.exists(os.path.join(folder, "config.json")):
        with torch.device(device):
            AutoencoderKL(**{**SDXL_VAE, "force_upcast": False}).to(torch.float16).save_pretrained(folder)
    return folder


def random_upscaler(folder, device):
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return folder
    with torch.device(device):
        components = dict(
            unet=UNet2DConditionModel(**UPSCALER_UNET),
            vae=AutoencoderKL(**UPSCALER_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H_TEXT)),
        )
    pipe = StableDiffusionUpscalePipeline(
        **components,
        tokenizer=clip_tokenizer(os.path.join(folder, "tokenizer")),
        low_res_scheduler=DDPMScheduler(),
        max_noise_level=350,
        scheduler=DDIMScheduler(
            **SD_SCHEDULER, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False
        ),
    )
    return save_random(pipe, folder)


def clip_tokenizer(folder):
    from tests.tiny_stable_diffusion import save_clip_tokenizer  # CLIP's real vocabulary, from the open_clip wheel

    return save_clip_tokenizer(folder)


def tiny_models(root):
    """The tests' tiny models (tests/tiny_stable_diffusion.py), in the same roles, for `--dry_run`."""
    from tests import tiny_stable_diffusion as tiny

    def once(name, build, *args, **kwargs):
        folder = os.path.join(root, name)
        return folder if os.path.exists(folder) else build(folder, *args, **kwargs)

    return {
        "sd15": lambda: [once("sd15", tiny.save_tiny_stable_diffusion, fp16_variant=True)],
        "sdxl": lambda: [once("sdxl", tiny.save_tiny_sdxl)],
        "sdxl_vae": lambda: once("sdxl_vae", tiny.save_tiny_vae),
        "controlnet": lambda: [
            once("sd15", tiny.save_tiny_stable_diffusion, fp16_variant=True),
            once("controlnet", tiny.save_tiny_controlnet, os.path.join(root, "sd15")),
        ],
        "inpaint": lambda: [once("sd15_inpaint", tiny.save_tiny_stable_diffusion, inpainting=True)],
        "upscaler": lambda: [once("upscaler", tiny.save_tiny_upscaler)],
    }


def random_models(root, device):
    return {
        "sd15": lambda: [random_sd15(f"{root}/sd15", device)],
        "sdxl": lambda: [random_sdxl(f"{root}/sdxl", device)],
        "sdxl_vae": lambda: random_sdxl_vae(f"{root}/sdxl_vae", device),
        "controlnet": lambda: [
            random_sd15(f"{root}/sd15", device),
            random_controlnet(f"{root}/controlnet", f"{root}/sd15", device),
        ],
        "inpaint": lambda: [random_sd15(f"{root}/sd15_inpaint", device, inpainting=True)],
        "upscaler": lambda: [random_upscaler(f"{root}/upscaler", device)],
    }


def cached(repo):
    """The local folder of `repo` when the Hugging Face cache holds it (nothing is downloaded), else None."""
    try:
        return snapshot_download(repo, local_files_only=True)
    except Exception:  # not cached (the error class differs between huggingface_hub releases)
        return None


def config_differences(folder, transcribed, subfolder="unet"):
    """The keys where a cached checkpoint's config differs from the transcribed one (checks the transcription)."""
    real = UNet2DConditionModel.load_config(folder, subfolder=subfolder)
    return sorted(
        key for key, value in transcribed.items() if key in real and list_like(real[key]) != list_like(value)
    )


def list_like(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def photo(side):
    try:
        from skimage.data import astronaut

        pixels = astronaut()
    except ImportError:  # a GPU image without scikit-image: a gradient with edges for canny is as good for timing
        ramp = np.linspace(0, 255, 512, dtype=np.uint8)
        pixels = np.stack([np.add.outer(ramp, ramp) // 2, np.tile(ramp, (512, 1)), (ramp[:, None] > 128) * 255 + 0])
        pixels = pixels.transpose(1, 2, 0).astype(np.uint8)
    return Image.fromarray(pixels).resize((side, side))


def square_mask(side):
    pixels = np.zeros((side, side), np.uint8)
    pixels[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
    return Image.fromarray(pixels)


# -- the plan: pipelines (cases) and what is measured on each (rows) -------------------------------------------------


@dataclass
class Case:
    key: str  # for --cases
    name: str
    repos: List[str]  # Hub repos, base first: used when cached
    baseline_class: type
    loader: Callable
    call_kwargs: Callable  # side -> the pipeline call's arguments besides the prompt
    side: int  # the output side of a real run (the dry run uses 64 px)
    steps: int


@dataclass
class Row:
    case: Case
    label: str
    options: dict = field(default_factory=dict)  # our loader's options
    baseline: bool = False
    decode_memory: bool = False  # measure the VAE decode's peak against the loaders' estimate


def canny_kwargs(side):
    return dict(image=canny_edges(photo(side)))


def inpaint_kwargs(side):
    return dict(image=photo(side), mask_image=square_mask(side), height=side, width=side)


def upscale_kwargs(side):
    return dict(image=photo(side // 4), noise_level=20)


CASES = [
    Case("sd15", "SD 1.5 text-to-image", [SD15_MODEL], StableDiffusionPipeline, load_stable_diffusion,
         lambda side: dict(height=side, width=side), 512, 50),
    Case("sdxl", "SDXL text-to-image", [SDXL_MODEL], StableDiffusionXLPipeline, load_sdxl,
         lambda side: dict(height=side, width=side), 1024, 30),
    Case("controlnet", "SD 1.5 ControlNet-canny", [SD15_MODEL, SD15_CANNY_CONTROLNET],
         StableDiffusionControlNetPipeline, load_controlnet_canny, canny_kwargs, 512, 50),
    Case("inpaint", "SD 1.5 inpainting (9-channel UNet)", [SD15_INPAINT_MODEL], StableDiffusionInpaintPipeline,
         load_stable_diffusion_inpaint, inpaint_kwargs, 512, 50),
    Case("upscaler", "x4 upscaler, 128 -> 512 px", [UPSCALER_MODEL], StableDiffusionUpscalePipeline, load_upscaler,
         upscale_kwargs, 512, 50),
]  # fmt: skip
CASE_KEYS = [case.key for case in CASES]
# The speed options and the quantised UNets are measured on the two text-to-image pipelines.
OPTION_CASES = ("sd15", "sdxl")
QUANTIZE_ROWS = ("int8", "int4", "float8", "nf4")
TRANSCRIBED_UNETS = {
    SD15_MODEL: SD15_UNET,
    SDXL_MODEL: SDXL_UNET,
    SD15_INPAINT_MODEL: {**SD15_UNET, "in_channels": 9},
    UPSCALER_MODEL: UPSCALER_UNET,
}


def plan(case_keys):
    """The rows, most important first: every pipeline's baseline and defaults, then the speed options and the fp16
    VAE, then each quantisation mode, eager and compiled."""
    cases = [case for case in CASES if case.key in case_keys]
    rows = []
    for case in cases:
        rows += [Row(case, "diffusers fp16 (baseline)", baseline=True), Row(case, "ours: loader defaults")]
    for case in cases:
        if case.key in OPTION_CASES:
            rows += [
                Row(case, "ours + channels_last", {"channels_last": True}),
                Row(case, "ours + fused QKV", {"fuse_qkv": True}),
                Row(case, "ours + compiled UNet", {"compile_unet": True}),
            ]
        if case.key == "sdxl":
            rows += [
                Row(case, "ours + fp16-fix VAE (no fp32 decode)", {"vae": "sdxl_vae"}),
                Row(case, "VAE decode working memory", decode_memory=True),
            ]
    for case in cases:
        if case.key in OPTION_CASES:
            for mode in QUANTIZE_ROWS:
                rows += [
                    Row(case, f"ours + {mode}", {"quantize": mode}),
                    Row(case, f"ours + {mode}, compiled", {"quantize": mode, "compile_unet": True}),
                ]
    return rows


# -- measuring ------------------------------------------------------------------------------------------------------


@dataclass
class Settings:
    device: torch.device
    dry_run: bool
    repeats: int

    def synchronize(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> Optional[float]:
        return torch.cuda.max_memory_allocated() / 2**30 if self.device.type == "cuda" else None


def timed_calls(pipe, call_kwargs, settings: Settings):
    """(first call's seconds, the median of `repeats` calls after it, peak GiB): the first call warms up (kernels,
    cuDNN autotuning, the allocator) and compiles what is compiled."""
    pipe.set_progress_bar_config(disable=True)
    settings.synchronize()
    start = time.perf_counter()
    pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call_kwargs)
    settings.synchronize()
    first = time.perf_counter() - start
    settings.reset_peak()
    times = []
    for _ in range(settings.repeats):
        start = time.perf_counter()
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call_kwargs)
        settings.synchronize()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), settings.peak_gib()


def load_baseline(case: Case, folders, settings: Settings):
    """diffusers' own fp16 loading: `variant="fp16"` where the folder has the files, then `.to(device)`."""
    dtype = {DTYPE_ARGUMENT: torch.float16}

    def variant(folder):
        return {"variant": "fp16"} if has_fp16_variant(folder) else {}

    extra = {}
    if case.baseline_class is StableDiffusionControlNetPipeline:
        extra["controlnet"] = ControlNetModel.from_pretrained(folders[1], **dtype, **variant(folders[1]))
    pipe = case.baseline_class.from_pretrained(folders[0], **dtype, **variant(folders[0]), **extra)
    return pipe.to(settings.device)


def load_ours(row: Row, folders, models, settings: Settings):
    options = dict(row.options)
    if options.get("vae") == "sdxl_vae":
        options["vae"] = cached(SDXL_FP16_FIX_VAE) or models["sdxl_vae"]()
    if settings.dry_run:
        options["device"] = settings.device
    return row.case.loader(*folders, **options)


def decode_memory(pipe, side, settings: Settings):
    """The VAE decode's measured peak (GiB above what was allocated before it) against the loaders' estimate."""
    estimate = decode_working_bytes(pipe) / 2**30
    latent_side = side // pipe.vae_scale_factor
    latents = torch.randn(1, pipe.vae.config.latent_channels, latent_side, latent_side, device=settings.device)
    decode_dtype = torch.float32 if getattr(pipe.vae.config, "force_upcast", False) else pipe.vae.dtype
    pipe.vae.to(decode_dtype)
    settings.synchronize()
    before = torch.cuda.memory_allocated() if settings.device.type == "cuda" else 0
    settings.reset_peak()
    with torch.no_grad():
        pipe.vae.decode(latents.to(decode_dtype) / pipe.vae.config.scaling_factor)
    peak = settings.peak_gib()
    measured = "not measured on the CPU" if peak is None else f"{peak - before / 2**30:.2f} GiB measured"
    return f"decode at {side} px in {decode_dtype}: {measured}, {estimate:.2f} GiB estimated by memory='auto'"


@dataclass
class Table:
    """The results file, rewritten whole (atomically) after every row."""

    path: str
    header: List[str]
    rows: List[str] = field(default_factory=list)
    footer: List[str] = field(default_factory=list)

    def add(self, line: str):
        self.rows.append(line)
        print(line, flush=True)
        self.write()

    def write(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path + ".partial", "w") as f:
            f.write("\n".join(self.header + self.rows + self.footer) + "\n")
        os.replace(self.path + ".partial", self.path)


COLUMNS = [
    "| pipeline | configuration | weights | load s | first call s | s/image | steps/s | speed-up | peak GiB | note |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
]


def run_row(row: Row, folders, weights: str, models, settings: Settings, baselines: dict) -> str:
    case = row.case
    side = 64 if settings.dry_run else case.side
    steps = 2 if settings.dry_run else case.steps
    call_kwargs = {**case.call_kwargs(side), "num_inference_steps": steps}
    start = time.perf_counter()
    try:
        pipe = load_baseline(case, folders, settings) if row.baseline else load_ours(row, folders, models, settings)
    except ValueError as error:  # the loaders' refusals (a mode this GPU or installation cannot run)
        return f"| {case.name} | {row.label} | {weights} | | | | | | | refused: {first_line(error)} |"
    load_s = time.perf_counter() - start
    try:
        random_weights = weights.startswith("random")
        if random_weights and not row.baseline:
            remove_decoded_image_check(pipe.vae)  # random weights may decode to NaN or black
        if row.decode_memory:
            note = decode_memory(pipe, side, settings)
            return f"| {case.name} | {row.label} | {weights} | {load_s:.1f} | | | | | | {note} |"
        first, seconds, peak = timed_calls(pipe, call_kwargs, settings)
    finally:
        del pipe
    if row.baseline:
        baselines[case.key] = seconds
    ratio = f"{baselines[case.key] / seconds:.2f}x" if case.key in baselines else ""
    compiled = row.options.get("compile_unet")
    note = f"compiling: {first - seconds:.1f} s of the first call" if compiled else ""
    peak_text = "" if peak is None else f"{peak:.1f}"
    return (
        f"| {case.name} | {row.label} | {weights} | {load_s:.1f} | {first:.2f} | {seconds:.2f} | "
        f"{steps / seconds:.1f} | {ratio} | {peak_text} | {note} |"
    )


def first_line(error) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def case_folders(case: Case, models, settings: Settings, built: dict):
    """(folders, what the weights are) for `case`: cached checkpoints, else the random (or, dry, tiny) models; built
    once per case, and a failure to build is kept, so that it fails each of the case's rows at once."""
    if case.key not in built:
        folders = None if settings.dry_run else [cached(repo) for repo in case.repos]
        try:
            if folders and all(folders):
                weights = "cached checkpoint"
                differences = config_differences(folders[0], TRANSCRIBED_UNETS.get(case.repos[0], {}))
                if differences:
                    weights += f" (transcribed config differs in {differences})"
            else:
                folders = models[case.key]()
                weights = "tiny random (dry run)" if settings.dry_run else "random, published config"
            built[case.key] = (folders, weights)
        except Exception as error:
            built[case.key] = error
    if isinstance(built[case.key], Exception):
        raise built[case.key]
    return built[case.key]


def run_cuda_tests():
    """The tests marked `cuda`; returns (exit status, pytest's summary line)."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", *CUDA_TEST_FILES]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=CUDA_TESTS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 1, f"stopped after {CUDA_TESTS_TIMEOUT_S} s"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print(result.stdout[-3000:], result.stderr[-2000:], flush=True)
    return result.returncode, lines[-1] if lines else "no output"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.md", help="Where to write the results table.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed generations per row after a warm-up (median).")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=400,
        help="Start no new row after this many seconds (the CUDA tests included), so that the default run, its "
        "last row included, ends within 8 minutes on an H100.",
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASE_KEYS),
        help=f"Comma-separated pipelines to run, of {CASE_KEYS} (the speed options and quantised rows run on "
        f"{list(OPTION_CASES)}).",
    )
    parser.add_argument("--skip_tests", action="store_true", help="Only the table, not the CUDA-only tests.")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="On the CPU, with the tests' tiny models: walk every row's code path and write the table (no timing "
        "is meaningful, and the CUDA-only modes show the loaders' refusal).",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"argument --repeats: must be a positive integer, but is {args.repeats}.")
    unknown = sorted(set(args.cases.split(",")) - set(CASE_KEYS))
    if unknown:
        parser.error(f"argument --cases: {unknown} are not among {CASE_KEYS}.")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU. torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees none, so "
            "nothing was measured. Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass "
            "--dry_run to walk its code on the CPU.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT_STATUS
    settings = Settings(
        torch.device("cpu" if args.dry_run else "cuda"), args.dry_run, 1 if args.dry_run else args.repeats
    )
    started = time.perf_counter()
    where = (
        "a dry run on the CPU (tiny models, 64 px, 2 steps; the times mean nothing)"
        if args.dry_run
        else f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    )
    header = [
        f"`python -m benchmarks.gpu_check` on {where}, torch {torch.__version__}; median of {settings.repeats} "
        "after a warm-up. Baseline: diffusers' `from_pretrained(torch_dtype=torch.float16, variant='fp16')` and "
        "`.to('cuda')`; ours: the `pipelines.loaders` functions.",
        "",
    ]
    tests_status = 0
    if not (args.skip_tests or args.dry_run):
        tests_status, summary = run_cuda_tests()
        header += [f"CUDA-only tests (`pytest -m cuda`): {summary}", ""]
    table = Table(args.out, header + COLUMNS, footer=["", *PUBLISHED_FIGURES])
    table.write()
    failures = 0
    baselines, built = {}, {}
    with tempfile.TemporaryDirectory() as root:
        models = tiny_models(root) if args.dry_run else random_models(root, settings.device)
        for row in plan(args.cases.split(",")):
            if time.perf_counter() - started > args.budget_s:
                table.add(
                    f"| {row.case.name} | {row.label} | | | | | | | | skipped: the {args.budget_s:.0f} s budget |"
                )
                continue
            try:
                folders, weights = case_folders(row.case, models, settings, built)
                table.add(run_row(row, folders, weights, models, settings, baselines))
            except Exception as error:  # one row's failure is written down and the check goes on
                failures += 1
                traceback.print_exc()
                table.add(f"| {row.case.name} | {row.label} | | | | | | | | failed: {first_line(error)} |")
            finally:
                gc.collect()
                if settings.device.type == "cuda":
                    torch.cuda.empty_cache()
    table.footer += [f"Total {time.perf_counter() - started:.0f} s; {failures} row(s) failed."]
    table.write()
    return 1 if failures or tests_status else 0


if __name__ == "__main__":
    sys.exit(main())
