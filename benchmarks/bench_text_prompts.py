"""Do prompts that name a digit give that digit? For a text-conditional run on the embedded digits.

    python -m benchmarks.bench_text_prompts OUTPUT_DIR [--num_images_per_prompt 20] [--results_dir benchmarks/results]

For every digit and every caption phrasing the run was trained with (`MNIST_CAPTION_TEMPLATES`), plus one phrasing
it never saw, the pipeline in OUTPUT_DIR generates `--num_images_per_prompt` images at its default guidance scale
and step count (image i of a prompt has its own seed, `--seed + i`). The classifier of `training.evaluate` (a small
CNN trained on the real digits, held-out accuracy printed) then says which digit each image shows. Prints a table
of the share classified as the digit the prompt names, per phrasing and per digit, and writes RESULTS_DIR/
text_prompts.json and RESULTS_DIR/text_prompts.png (one row per digit, first phrasing).
"""

import argparse
import json
import os
import time

import torch
from diffusers.utils import make_image_grid

from diffkit import TextConditionalImagePipeline
from diffkit.pipelines import model_kinds
from diffkit.pipelines.model_kinds import conditioning_kind
from diffkit.training.dataset_loading import MNIST_CAPTION_TEMPLATES, MNIST_LABEL_NAMES
from diffkit.training.evaluate import real_images, train_classifier

UNSEEN_TEMPLATE = "a drawing of the number {name}"
CLASSIFIER_EPOCHS = 8


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_text_prompts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "output_dir", help="The --output_dir of a `--conditioning text_conditional` run on the embedded digits."
    )
    parser.add_argument("--num_images_per_prompt", type=int, default=20, help="Images per prompt.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of image i of each prompt is seed + i.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where results go.")
    args = parser.parse_args()

    with open(os.path.join(args.output_dir, "training_config.json"), encoding="utf-8") as f:
        training_config = json.load(f)
    conditioning = conditioning_kind(training_config["args"]["conditioning"])
    if conditioning != model_kinds.TEXT_CONDITIONAL or training_config["args"].get("dataset_name"):
        raise ValueError(f"{args.output_dir!r} is not a text-conditional run on the embedded digits.")
    images, labels = real_images(training_config)
    classifier, held_out = train_classifier(images, labels, len(MNIST_LABEL_NAMES), CLASSIFIER_EPOCHS)
    print(f"classifier: {held_out:.1%} on held-out real digits")

    pipe = TextConditionalImagePipeline.from_pretrained(args.output_dir)
    pipe.set_progress_bar_config(disable=True)
    templates = MNIST_CAPTION_TEMPLATES + [UNSEEN_TEMPLATE]
    results, grid_rows = {}, []
    start = time.time()
    for template in templates:
        per_digit = {}
        for digit, name in enumerate(MNIST_LABEL_NAMES):
            prompt = template.format(name=name, digit=digit)
            generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.num_images_per_prompt)]
            generated = pipe(
                prompt, num_images_per_prompt=args.num_images_per_prompt, generator=generators, output_type="pt"
            ).images
            with torch.no_grad():
                per_digit[name] = (classifier(generated).argmax(1) == digit).float().mean().item()
            if template == templates[0]:
                grid_rows.append(pipe.numpy_to_pil(generated.permute(0, 2, 3, 1).numpy()))
        results[template] = {"per_digit": per_digit, "overall": sum(per_digit.values()) / len(per_digit)}
    seconds = time.time() - start

    seen = [results[t]["overall"] for t in MNIST_CAPTION_TEMPLATES]
    summary = {
        "num_images_per_prompt": args.num_images_per_prompt,
        "guidance_scale": pipe.config.guidance_scale,
        "scheduler": type(pipe.scheduler).__name__,
        "classifier_held_out_accuracy": held_out,
        "trained_phrasings_accuracy": sum(seen) / len(seen),
        "unseen_phrasing": UNSEEN_TEMPLATE,
        "by_phrasing": results,
        "sampling_seconds": round(seconds, 1),
    }
    os.makedirs(args.results_dir, exist_ok=True)
    path = os.path.join(args.results_dir, "text_prompts.json")
    with open(path + ".partial", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    os.replace(path + ".partial", path)
    columns = min(args.num_images_per_prompt, 10)
    grid = make_image_grid([row[i] for row in grid_rows for i in range(columns)], rows=len(grid_rows), cols=columns)
    grid.save(os.path.join(args.results_dir, "text_prompts.png"))

    print(f"{args.num_images_per_prompt} images per prompt, guidance {pipe.config.guidance_scale}, {seconds:.0f}s")
    print("| phrasing | " + " | ".join(MNIST_LABEL_NAMES) + " | overall |")
    print("| --- |" + " ---: |" * (len(MNIST_LABEL_NAMES) + 1))
    for template, result in results.items():
        cells = " | ".join(f"{result['per_digit'][n]:.0%}" for n in MNIST_LABEL_NAMES)
        label = f"{template} (unseen)" if template == UNSEEN_TEMPLATE else template
        print(f"| {label} | {cells} | {result['overall']:.1%} |")
    print(f"Trained phrasings together: {summary['trained_phrasings_accuracy']:.1%}")


if __name__ == "__main__":
    main()
