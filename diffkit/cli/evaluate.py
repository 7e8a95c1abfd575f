"""Sample quality of a trained diffkit pipeline, measured offline.

    diffkit-evaluate OUTPUT_DIR [--num_samples 500] [--num_inference_steps K] [--guidance_scale G]

Generates `--num_samples` images with the pipeline in OUTPUT_DIR (labels spread evenly over the classes), draws as
many real images from the data the run was trained on (read from its `training_config.json`), and reports the
metrics that `diffkit.training.evaluate` describes (FID/KID/precision/recall-MobileNetV2; class accuracy and
FD-classifier for class-conditional runs), each beside its real-vs-real floor. Results go to OUTPUT_DIR/metrics.json
(written atomically) and are printed as a table; the model card (OUTPUT_DIR/README.md, which `diffkit-push` uploads
too) gains them in its evaluation section, unless it is no longer the card rendered for the folder. The real sets'
features and the classifier are cached (`--cache_dir`). Asking with `--metrics` for an InceptionV3 metric that cannot
be computed here is an error.

`accelerate launch --num_processes N -m diffkit.cli.evaluate OUTPUT_DIR ...` shares the generation out between N
processes (whole batches of `--batch_size`, each image seeded by its index) and scores on the main process: the
figures are the one-process figures.

(`python -m diffkit.cli.evaluate` is the same command.) From Python, `diffkit.training.evaluate`'s `evaluate`,
`prepare_real_reference` and `score` do the same work; training uses them for `--eval_steps`.
"""

import argparse
import json
import logging
import os
from typing import Dict

from diffkit.pipelines import model_kinds
from diffkit.pipelines.model_kinds import conditioning_kind, model_training_args
from diffkit.training.command_line import usage_errors_reported
from diffkit.training.metrics import ALL_METRICS

# torch and the evaluation are imported once the arguments are parsed, so that `--help` answers at once.


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def print_table(results: Dict):
    print(f"{results['num_samples']} samples, {results['sampler']}, seed {results['seed']}")
    print("| metric | generated | real vs real |")
    print("| --- | --- | --- |")
    for key, value in results["generated"].items():
        reference = results["real_reference"].get(key)
        print(f"| {key} | {value:.4f} | {'' if reference is None else f'{reference:.4f}'} |")
    if "class-accuracy" in results:
        print(
            f"| class-accuracy | {results['class-accuracy']:.4f} | (classifier held-out "
            f"{results['classifier_held_out_accuracy']:.4f}) |"
        )
    if "InceptionV3" in results:
        print(f"| InceptionV3 metrics | {results['InceptionV3']} | |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="diffkit-evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "output_dir", nargs="?", default=None, help="The --output_dir of a finished training/train.py run."
    )
    parser.add_argument(
        "--model", default=None, help="The same folder, named as the other commands name a trained model."
    )
    parser.add_argument("--num_samples", type=int, default=500, help="Generated images, and real images per set.")
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="Sampling steps; the pipeline's default if unset."
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="Guidance; the pipeline's default.")
    parser.add_argument(
        "--batch_size",
        type=int,
        default=100,
        help="Images generated per pipeline call; several processes share whole batches.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples, the real draws and KID subsets.")
    parser.add_argument(
        "--feature_resolution", type=int, default=224, help="Size MobileNetV2 sees (ImageNet: 224; 64 is faster)."
    )
    parser.add_argument("--classifier_epochs", type=int, default=8, help="Epochs of the class-accuracy CNN.")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        metavar="METRIC",
        help=f"Compute only these, from {ALL_METRICS}; by default every one that applies, the InceptionV3 ones "
        "only when torch-fidelity and its weights are at hand (otherwise metrics.json says why not). A metric "
        "named here that cannot be computed is an error, raised before any work.",
    )
    parser.add_argument(
        "--cache_dir",
        type=str,
        default=None,
        help="Cache of real-image features and classifiers, keyed by the data and settings; defaults to "
        "$DIFFKIT_CACHE or ~/.cache/diffkit.",
    )
    args = parser.parse_args(argv)
    if (args.output_dir is None) == (args.model is None):
        raise ValueError(
            "Name the finished training run once: `diffkit-evaluate OUTPUT_DIR` or `diffkit-evaluate --model "
            f"OUTPUT_DIR` (given: {args.output_dir!r} and --model {args.model!r})."
        )
    args.output_dir = args.output_dir or args.model
    if not os.path.isfile(os.path.join(args.output_dir, "training_config.json")):
        raise ValueError(
            f"{args.output_dir!r} holds no training_config.json: pass the --output_dir of a finished training run."
        )
    with open(os.path.join(args.output_dir, "training_config.json"), encoding="utf-8") as f:
        # a distilled student's kind is its teacher's
        conditioning = conditioning_kind(model_training_args(json.load(f)).get("conditioning"))
    if conditioning == model_kinds.TEXT_CONDITIONAL:
        raise ValueError(
            f"{args.output_dir!r} holds a text-conditional run; `diffkit-evaluate` scores class-conditional "
            "and unconditional runs (benchmarks/bench_text_prompts.py checks prompts of text runs)."
        )
    for name in ("num_samples", "batch_size", "feature_resolution", "classifier_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    if args.num_samples <= 3:
        raise ValueError(f"`--num_samples` {args.num_samples} is too few: precision/recall needs more than 3.")
    if args.metrics is not None:
        from diffkit.training.evaluate import check_metrics

        check_metrics(args.metrics, conditioning == model_kinds.CLASS_CONDITIONAL)
    return args


def main(argv=None):
    args = parse_args(argv)
    from diffkit.cli import launched_processes

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    with launched_processes() as state:
        evaluate_and_record(args, state)


def evaluate_and_record(args, state):
    """Evaluate with the processes of `state`; the main process writes metrics.json and the card, and prints."""
    from diffkit.training.evaluate import METRICS_NAME, evaluate, write_metrics
    from diffkit.training.hub import MODEL_CARD_NAME, render_folder_card

    card_path = os.path.join(args.output_dir, MODEL_CARD_NAME)
    # The card is rendered again with the new figures only if it is still the one rendered for this folder: one
    # edited by hand is the user's and is kept (`diffkit-push` renders the Hub's card, figures included, anyway). It
    # is read before the evaluation, which may take hours, and only by the main process, which writes it.
    card_is_rendered = state.is_main_process and (
        not os.path.isfile(card_path)
        or read_text(card_path) == str(render_folder_card(args.output_dir, args.output_dir))
    )
    results = evaluate(
        args.output_dir,
        args.num_samples,
        args.num_inference_steps,
        args.guidance_scale,
        args.batch_size,
        args.seed,
        args.feature_resolution,
        args.classifier_epochs,
        args.metrics,
        args.cache_dir,
        state=state,
    )
    if not state.is_main_process:
        return
    previous_path = os.path.join(args.output_dir, METRICS_NAME)
    if os.path.isfile(previous_path):
        with open(previous_path, encoding="utf-8") as f:
            previous = json.load(f)
        # The evaluations made during training (--eval_steps) are kept beside the new figures.
        results.update({k: previous[k] for k in ("history", "best") if k in previous})
    path = write_metrics(args.output_dir, results)
    print_table(results)
    print(f"Wrote {path}")
    if card_is_rendered:
        card = str(render_folder_card(args.output_dir, args.output_dir))
        with open(card_path + ".partial", "w", encoding="utf-8", newline="") as f:
            f.write(card)
        os.replace(card_path + ".partial", card_path)
        print(f"Wrote {card_path} with these figures")
    else:
        print(
            f"Kept {card_path}: it is not the card rendered for this folder (edited by hand, or the folder moved), "
            "so these figures are only in metrics.json; `diffkit-push` puts them in the Hub's card."
        )


def command():
    """`diffkit-evaluate` on the command line: bad input ends it with `diffkit-evaluate: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-evaluate"):
        main()


if __name__ == "__main__":
    command()
