"""Everything that needs a CUDA GPU, in one command: the CUDA-only tests, then seconds per image and peak memory of
the Stable Diffusion family (text-to-image, ControlNet-canny, inpainting, x4 upscaling), written as one table.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu_check.md] [--repeats 3]   # from the repository root

Install as the README's test command does first (the tokenizer comes from the open_clip_torch wheel). Without a CUDA
GPU it stops at once with exit status 2. Each row times the configuration diffusers' docs start from
(`from_pretrained(...).to("cuda")`, fp32) against the `pipelines.loaders` defaults (fp16, SDPA, everything on the
GPU when it fits), one after the other on the same weights.

A GPU machine may have no Hub access, and speed and memory do not depend on the weights' values: a checkpoint found
in the local Hugging Face cache is used as it is; otherwise the full-size architecture is built from the published
configuration below with random weights and saved to a temporary folder. Random weights can decode to NaN or black
images, so for those timing runs only the loaders' NaN/black decode check is removed (the table says where). The
whole check is meant to finish within `--budget_s` (8 minutes); rows that would start after it are listed as skipped.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

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
from huggingface_hub.errors import LocalEntryNotFoundError
from PIL import Image
from skimage.data import astronaut
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffkit.pipelines.canny import canny_edges
from diffkit.pipelines.loaders import (
    load_controlnet_canny,
    load_sdxl,
    load_stable_diffusion,
    load_stable_diffusion_inpaint,
    load_upscaler,
)
from diffkit.pipelines.stable_diffusion_options import (
    SD15_CANNY_CONTROLNET,
    SD15_INPAINT_MODEL,
    SD15_MODEL,
    SDXL_MODEL,
    UPSCALER_MODEL,
)
from tests.tiny_stable_diffusion import save_clip_tokenizer

NO_GPU_EXIT_STATUS = 2
PROMPT = "an astronaut riding a horse"

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


def save_random_sd15(folder, inpainting=False):
    if os.path.exists(os.path.join(folder, "model_index.json")):  # built for an earlier row
        return folder
    unet_config = {**SD15_UNET, "in_channels": 9 if inpainting else 4}
    with torch.device("cuda"):  # random initialisation on the GPU: seconds instead of minutes
        components = dict(
            unet=UNet2DConditionModel(**unet_config),
            vae=AutoencoderKL(**SD_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        )
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipeline_class(
        **components,
        tokenizer=save_clip_tokenizer(os.path.join(folder, "tokenizer")),
        scheduler=PNDMScheduler(**SD_SCHEDULER, skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(folder)
    return folder


def save_random_controlnet(folder, base_folder):
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet")
        ControlNetModel.from_unet(unet).save_pretrained(folder)  # lllyasviel/sd-controlnet-canny's layout
    return folder


def save_random_sdxl(folder):
    with torch.device("cuda"):
        components = dict(
            unet=UNet2DConditionModel(**SDXL_UNET),
            vae=AutoencoderKL(**{**SD_VAE, "sample_size": 1024}, scaling_factor=0.13025, force_upcast=True),
            text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G_TEXT)),
        )
    tokenizer = save_clip_tokenizer(os.path.join(folder, "tokenizer"))
    StableDiffusionXLPipeline(
        **components,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="leading"),
    ).save_pretrained(folder)
    return folder


def save_random_upscaler(folder):
    with torch.device("cuda"):
        components = dict(
            unet=UNet2DConditionModel(**UPSCALER_UNET),
            vae=AutoencoderKL(**UPSCALER_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**OPEN_CLIP_H_TEXT)),
        )
    StableDiffusionUpscalePipeline(
        **components,
        tokenizer=save_clip_tokenizer(os.path.join(folder, "tokenizer")),
        low_res_scheduler=DDPMScheduler(),
        max_noise_level=350,
        scheduler=DDIMScheduler(
            **SD_SCHEDULER, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False
        ),
    ).save_pretrained(folder)
    return folder


def cached(repo):
    """The local folder of `repo` when the Hugging Face cache holds it (nothing is downloaded), else None."""
    try:
        return snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, OSError):
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
    return Image.fromarray(astronaut()).resize((side, side))


def square_mask(side):
    pixels = np.zeros((side, side), np.uint8)
    pixels[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
    return Image.fromarray(pixels)


# name, Hub repos (base first), how to build them at random, baseline class, our loader, call arguments
CASES = [
    ("SD 1.5 text-to-image", [SD15_MODEL], lambda root: [save_random_sd15(f"{root}/sd15")],
     StableDiffusionPipeline, load_stable_diffusion, lambda: dict(height=512, width=512, num_inference_steps=50)),
    ("SDXL text-to-image", [SDXL_MODEL], lambda root: [save_random_sdxl(f"{root}/sdxl")],
     StableDiffusionXLPipeline, load_sdxl, lambda: dict(height=1024, width=1024, num_inference_steps=30)),
    ("SD 1.5 ControlNet-canny", [SD15_MODEL, SD15_CANNY_CONTROLNET],
     lambda root: [save_random_sd15(f"{root}/sd15"), save_random_controlnet(f"{root}/controlnet", f"{root}/sd15")],
     StableDiffusionControlNetPipeline, load_controlnet_canny,
     lambda: dict(image=canny_edges(photo(512)), num_inference_steps=50)),
    ("SD 1.5 inpainting (9-channel UNet)", [SD15_INPAINT_MODEL],
     lambda root: [save_random_sd15(f"{root}/sd15_inpaint", inpainting=True)], StableDiffusionInpaintPipeline,
     load_stable_diffusion_inpaint,
     lambda: dict(image=photo(512), mask_image=square_mask(512), height=512, width=512, num_inference_steps=50)),
    ("x4 upscaler, 128 -> 512 px", [UPSCALER_MODEL], lambda root: [save_random_upscaler(f"{root}/upscaler")],
     StableDiffusionUpscalePipeline, load_upscaler,
     lambda: dict(image=photo(128), noise_level=20, num_inference_steps=50)),
]  # fmt: skip
# Quantised UNets (`quantize=`) measured on the first two CASES, against the fp16 loader's row; int4 runs in bf16.
QUANTIZED_CASES = ("SD 1.5 text-to-image", "SDXL text-to-image")
QUANTIZE_ROWS = ("int8", "int4", "nf4", "float8")
TRANSCRIBED_UNETS = {
    SD15_MODEL: SD15_UNET,
    SDXL_MODEL: SDXL_UNET,
    SD15_INPAINT_MODEL: {**SD15_UNET, "in_channels": 9},
    UPSCALER_MODEL: UPSCALER_UNET,
}


def seconds_and_peak_gib(pipe, call_kwargs, repeats):
    pipe.set_progress_bar_config(disable=True)
    pipe(PROMPT, **call_kwargs)  # warm-up: kernels, cuDNN autotuning, the allocator
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **call_kwargs)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def quantized_rows(measured, args, started):
    """The table of `quantize=` rows: each mode on the QUANTIZED_CASES, against the fp16 loader's figures; a mode this
    GPU or installation cannot run is listed with the loader's reason."""
    lines = [
        "",
        "| pipeline | quantize | s/image | vs fp16 | peak GiB | vs fp16 |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    cases = {case[0]: case for case in CASES}
    for name in QUANTIZED_CASES:
        if name not in measured:
            continue
        folders, weights, (fp16_s, fp16_gib) = measured[name]
        _, _, _, _, our_loader, call_kwargs = cases[name]
        for mode in QUANTIZE_ROWS:
            if time.perf_counter() - started > args.budget_s:
                lines.append(f"| {name} | {mode} | skipped: the {args.budget_s:.0f} s budget was spent | | | |")
                continue
            try:
                pipe = our_loader(*folders, quantize=mode, dtype="bf16" if mode == "int4" else None)
            except (ValueError, ImportError) as error:
                lines.append(f"| {name} | {mode} | refused: {str(error).splitlines()[0]} | | | |")
                continue
            if weights.startswith("random"):
                pipe.vae.broken_decode_check.remove()
            seconds, gib = seconds_and_peak_gib(pipe, call_kwargs(), args.repeats)
            del pipe
            torch.cuda.empty_cache()
            lines.append(
                f"| {name} | {mode} | {seconds:.2f} | {seconds / fp16_s:.2f}x | {gib:.1f} | {gib / fp16_gib:.2f}x |"
            )
            print(lines[-1], flush=True)
    return lines


def load_baseline(pipeline_class, folders):
    if pipeline_class is StableDiffusionControlNetPipeline:
        return pipeline_class.from_pretrained(folders[0], controlnet=ControlNetModel.from_pretrained(folders[1]))
    return pipeline_class.from_pretrained(folders[0])


def run_cuda_tests():
    """The tests marked `cuda`; returns (exit status, pytest's summary line)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"],
        capture_output=True,
        text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    print(result.stdout[-3000:])
    return result.returncode, lines[-1] if lines else "no output"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.md", help="Where to write the results table.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed generations per configuration (median shown).")
    parser.add_argument("--budget_s", type=float, default=480, help="Start no new row after this many seconds.")
    parser.add_argument("--skip_tests", action="store_true", help="Only the timings, not the CUDA-only tests.")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU. torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees none, so "
            "nothing was measured. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.",
            file=sys.stderr,
        )
        return NO_GPU_EXIT_STATUS
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be a positive integer, but is {args.repeats}.")
    started = time.perf_counter()
    lines = [
        f"`python -m benchmarks.gpu_check` on {torch.cuda.get_device_name()} "
        f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
        f"median of {args.repeats} after a warm-up; baseline: `from_pretrained(...).to('cuda')` (fp32); ours: the "
        "`pipelines.loaders` defaults (fp16).",
        "",
    ]
    tests_status = 0
    if not args.skip_tests:
        tests_status, summary = run_cuda_tests()
        lines += [f"CUDA-only tests (`pytest -m cuda`): {summary}", ""]
    lines += [
        "| pipeline | weights | baseline s/image | ours s/image | speed-up | baseline peak GiB | ours peak GiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    measured = {}  # case name -> (folders, weights, our fp16 figures), for the quantised rows
    with tempfile.TemporaryDirectory() as root:
        for name, repos, build_random, pipeline_class, our_loader, call_kwargs in CASES:
            if time.perf_counter() - started > args.budget_s:
                lines.append(f"| {name} | skipped: the {args.budget_s:.0f} s budget was spent | | | | | |")
                continue
            folders = [cached(repo) for repo in repos]
            if all(folders):
                weights = "cached checkpoint"
                differences = config_differences(folders[0], TRANSCRIBED_UNETS.get(repos[0], {}))
                if differences:
                    weights += f" (transcribed config differs in {differences})"
            else:
                folders = build_random(root)
                weights = "random, published config; decode check off"
            figures = []
            for side in ("baseline", "ours"):
                if side == "baseline":
                    pipe = load_baseline(pipeline_class, folders).to("cuda")
                else:
                    pipe = our_loader(*folders)
                    if weights.startswith("random"):
                        pipe.vae.broken_decode_check.remove()  # random weights may decode to NaN or black
                figures.append(seconds_and_peak_gib(pipe, call_kwargs(), args.repeats))
                del pipe
                torch.cuda.empty_cache()
            (base_s, base_gib), (ours_s, ours_gib) = figures
            measured[name] = (folders, weights, figures[1])
            lines.append(
                f"| {name} | {weights} | {base_s:.2f} | {ours_s:.2f} | {base_s / ours_s:.2f}x | {base_gib:.1f} "
                f"| {ours_gib:.1f} |"
            )
            print(lines[-1], flush=True)
        lines += quantized_rows(measured, args, started)
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".partial", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(args.out + ".partial", args.out)
    print("\n".join(lines))
    return tests_status


if __name__ == "__main__":
    sys.exit(main())
