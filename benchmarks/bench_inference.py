"""Seconds per image and peak memory of the Stable Diffusion loaders against plain diffusers, as one table.

    python -m benchmarks.bench_inference [--repeats 5]          # from the repository root

With a CUDA GPU (and the checkpoints in the Hugging Face cache or reachable): SD 1.5 at 512x512 / 50 steps, SDXL
at 1024x1024 / 30 steps and SD 1.5 ControlNet-canny at 512x512 / 50 steps, each loaded the way diffusers' docs
start (`from_pretrained(...).to("cuda")`, fp32) and with `pipelines.loaders`' defaults (fp16, SDPA, everything on
the GPU when it fits). Without one it says so, and measures what can be measured here: the overhead of our
loaders against calling the same diffusers pipeline directly (`from_pretrained(folder, dtype=torch.float32)`, the
same weights and scheduler), on the tiny random SD model the tests use.
"""

import argparse
import statistics
import tempfile
import time
import warnings

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from skimage.data import astronaut

from diffkit.pipelines.canny import canny_edges
from diffkit.pipelines.loaders import load_controlnet_canny, load_sdxl, load_stable_diffusion
from diffkit.pipelines.stable_diffusion_options import SD15_CANNY_CONTROLNET, SD15_MODEL, SDXL_MODEL
from tests.tiny_stable_diffusion import save_tiny_stable_diffusion

GPU_CASES = [
    # name, resolution, steps, baseline loader, our loader
    ("SD 1.5", 512, 50, lambda: StableDiffusionPipeline.from_pretrained(SD15_MODEL), lambda: load_stable_diffusion()),
    ("SDXL", 1024, 30, lambda: StableDiffusionXLPipeline.from_pretrained(SDXL_MODEL), lambda: load_sdxl()),
    (
        "SD 1.5 ControlNet-canny",
        512,
        50,
        lambda: StableDiffusionControlNetPipeline.from_pretrained(
            SD15_MODEL, controlnet=ControlNetModel.from_pretrained(SD15_CANNY_CONTROLNET)
        ),
        lambda: load_controlnet_canny(),
    ),
]
TINY_RESOLUTION, TINY_STEPS = 64, 50


def seconds_per_image(pipe, resolution, steps, repeats, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    call = dict(prompt="an astronaut riding a horse", height=resolution, width=resolution, num_inference_steps=steps)
    pipe(**call, **kwargs)  # warm-up: kernels, allocator, compilation
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        pipe(**call, generator=torch.Generator().manual_seed(0), **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpu_table(repeats):
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    header = "| model | resolution, steps | baseline s/image | ours s/image | speed-up | baseline GiB | ours GiB |"
    print(header)
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, resolution, steps, load_baseline, load_ours in GPU_CASES:
        kwargs = {"image": canny_edges(astronaut())} if "ControlNet" in name else {}
        figures = []
        for loader, to_cuda in ((load_baseline, True), (load_ours, False)):
            try:
                pipe = loader()
            except OSError as error:  # not cached and no Hub access
                print(f"| {name} | {resolution}, {steps} | could not load the checkpoint: {error} |")
                break
            if to_cuda:
                pipe.to("cuda")
            torch.cuda.reset_peak_memory_stats()
            seconds = seconds_per_image(pipe, resolution, steps, repeats, **kwargs)
            figures.append((seconds, torch.cuda.max_memory_allocated() / 2**30))
            del pipe
            torch.cuda.empty_cache()
        if len(figures) == 2:
            (base_s, base_mem), (ours_s, ours_mem) = figures
            print(
                f"| {name} | {resolution}, {steps} | {base_s:.2f} | {ours_s:.2f} | {base_s / ours_s:.2f}x "
                f"| {base_mem:.1f} | {ours_mem:.1f} |"
            )


def cpu_overhead_table(repeats):
    print(f"No CUDA GPU here (torch {torch.__version__}): the GPU figures need one. Measuring the loaders'")
    print(
        f"overhead on the CPU instead: tiny random SD model, {TINY_RESOLUTION}x{TINY_RESOLUTION}, {TINY_STEPS} "
        f"steps, fp32, median of {repeats} rounds of 3 images, the two pipelines interleaved."
    )
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_tiny_stable_diffusion(folder)
        direct = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32)
        ours = load_stable_diffusion(folder)
        times = {"diffusers directly": [], "pipelines.loaders": []}
        pairs = [("diffusers directly", direct), ("pipelines.loaders", ours)]
        for round_index in range(repeats):
            # alternate which goes first, so that neither always runs on a warmer cache
            for label, pipe in pairs if round_index % 2 == 0 else pairs[::-1]:
                times[label].append(seconds_per_image(pipe, TINY_RESOLUTION, TINY_STEPS, 3))
    baseline = statistics.median(times["diffusers directly"])
    print("| pipeline | s/image | ratio to diffusers |")
    print("| --- | --- | --- |")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.4f} | {statistics.median(values) / baseline:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="Timed generations per configuration (after warm-up).")
    args = parser.parse_args()
    if torch.cuda.is_available():
        gpu_table(args.repeats)
    else:
        cpu_overhead_table(args.repeats)


if __name__ == "__main__":
    main()
