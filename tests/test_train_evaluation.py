"""Offline evaluation during training: `--eval_steps`, `--eval_num_samples`, `--save_best_by`."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffkit import ClassConditionalImagePipeline
from diffkit.training.evaluate import inception_unavailable_reason
from diffkit.training.train import main, parse_args

from .test_checkpointing import assert_same_weights
from .test_train import QUICK_RUN, write_unet_config
from .utils import TINY_CONDITION_UNET_CONFIG, assert_launch_succeeded, run_accelerate_launch

EVAL_FLAGS = [
    "--eval_steps", "2", "--eval_num_samples", "12", "--eval_batch_size", "5", "--eval_feature_resolution", "32",
    "--save_best_by", "FD-classifier",
]  # fmt: skip
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.slow
def test_evaluation_during_training_logs_keeps_the_best_and_leaves_training_unchanged(tmp_path):
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    common = [*QUICK_RUN, "--model_config_name_or_path", unet_config]
    evaluated, plain = tmp_path / "evaluated", tmp_path / "plain"
    result = run_accelerate_launch(
        [*common, *EVAL_FLAGS, "--report_to", "tensorboard", "--output_dir", str(evaluated)]
    )
    assert_launch_succeeded(result)
    assert_launch_succeeded(run_accelerate_launch([*common, "--output_dir", str(plain)]))
    # evaluating draws no random numbers from the training streams: the weights are those of a run without it
    assert_same_weights(evaluated / UNET_FILE, plain / UNET_FILE)

    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["num_samples"] == 12 and metrics["global_step"] == 3 and metrics["mobilenet_resolution"] == 32
    # step 2 by --eval_steps, step 3 because the final weights are always evaluated
    assert [h["global_step"] for h in metrics["history"]] == [2, 3]
    assert metrics["history"][-1]["FD-classifier"] == metrics["generated"]["FD-classifier"]
    best_step = min(metrics["history"], key=lambda h: h["FD-classifier"])["global_step"]
    assert metrics["best"]["global_step"] == best_step and metrics["best"]["metric"] == "FD-classifier"
    best = json.loads((evaluated / "best" / "metrics.json").read_text())
    assert best["global_step"] == best_step
    assert best["generated"]["FD-classifier"] == metrics["best"]["value"]
    ClassConditionalImagePipeline.from_pretrained(evaluated / "best")  # a complete pipeline
    assert set(metrics["class-accuracy-per-class"]) >= {"zero", "nine"}

    card = ModelCard.load(evaluated / "README.md")
    assert "## Evaluation" in card.text and "| FD-classifier |" in card.text and "in `best/`" in card.text
    assert "## Evaluation" not in ModelCard.load(plain / "README.md").text

    steps = {}
    for event_file in (evaluated / "logs").rglob("events.out.tfevents.*"):
        events = EventAccumulator(str(event_file))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            steps[tag] = [e.step for e in events.Scalars(tag)]
    assert steps["eval/FD-classifier"] == [2, 3] and steps["eval/class-accuracy"] == [2, 3]
    assert "eval/FID-MobileNetV2" in steps


@pytest.mark.slow
def test_a_run_resumed_from_its_final_checkpoint_keeps_its_last_evaluation(tmp_path):
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    # steps 2 and 4 evaluated, checkpoints at 2 and 4: the last checkpoint is the final step, just evaluated
    run = [
        *QUICK_RUN,
        "--max_train_steps",
        "4",
        "--model_config_name_or_path",
        unet_config,
        *EVAL_FLAGS,
        "--checkpointing_steps",
        "2",
    ]
    finished, resumed = tmp_path / "finished", tmp_path / "resumed"
    assert_launch_succeeded(run_accelerate_launch([*run, "--output_dir", str(finished)]))
    # the state a run killed right after writing checkpoint-4 leaves behind
    shutil.copytree(finished / "checkpoint-4", resumed / "checkpoint-4")
    result = run_accelerate_launch([*run, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert_launch_succeeded(result)
    assert "Trained 4 steps" in result.stderr and "Evaluation at step" not in result.stderr
    expected = json.loads((finished / "metrics.json").read_text())
    assert json.loads((resumed / "metrics.json").read_text()) == expected
    assert [h["global_step"] for h in expected["history"]] == [2, 4]
    assert_same_weights(resumed / UNET_FILE, finished / UNET_FILE)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--save_best_by", "FD-classifier"], "'FD-classifier' needs evaluations .* add --eval_steps"),
        (["--eval_steps", "2", "--save_best_by", "FID"], "`--save_best_by` 'FID' is not a metric diffkit computes"),
        (
            ["--eval_steps", "2", "--conditioning", "none", "--save_best_by", "class-accuracy"],
            "`--save_best_by` 'class-accuracy' needs a class-conditional model",
        ),
        (["--eval_steps", "2", "--eval_num_samples", "3"], "`--eval_num_samples` must be more than 3"),
        (["--eval_steps", "0"], "`--eval_steps` must be a positive integer, but is 0"),
    ],
)
def test_bad_evaluation_flags_are_rejected(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        parse_args(["--output_dir", str(tmp_path / "out"), *extra])


def test_asking_for_an_inception_metric_that_cannot_be_computed_is_an_error(tmp_path):
    args = ["--output_dir", str(tmp_path / "out"), "--eval_steps", "2", "--save_best_by", "FID-InceptionV3"]
    if inception_unavailable_reason() is None:  # torch-fidelity and its weights are here: the flag is accepted
        parse_args(args)
        return
    with pytest.raises(ValueError, match="'FID-InceptionV3' cannot be computed here: .* Offline, choose from"):
        parse_args(args)


def test_too_few_real_images_for_the_evaluation_is_an_error_before_training(tmp_path):
    output_dir = tmp_path / "out"
    args = ["--output_dir", str(output_dir), "--max_train_samples", "20", "--eval_steps", "1"]
    with pytest.raises(ValueError, match="`--eval_num_samples` 15 needs 30 real images .* holds 20: lower it"):
        main(parse_args([*args, "--eval_num_samples", "15", "--max_train_steps", "1"]))
    assert not output_dir.exists()
