"""`python -m training.evaluate` end to end on a tiny trained model, and its bad input."""

import json
import subprocess
import sys

import pytest

from training.evaluate import parse_args

from .test_train import QUICK_RUN, write_unet_config
from .utils import REPO_ROOT, TINY_CONDITION_UNET_CONFIG, assert_launch_succeeded, run_accelerate_launch


def test_evaluate_command_on_a_tiny_model(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    train_args = [*QUICK_RUN, "--output_dir", str(output_dir), "--model_config_name_or_path", unet_config]
    assert_launch_succeeded(run_accelerate_launch(train_args))
    result = subprocess.run(
        [sys.executable, "-m", "training.evaluate", str(output_dir), "--num_samples", "20", "--num_inference_steps",
         "2", "--feature_resolution", "32", "--classifier_epochs", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 20 and metrics["mobilenet_resolution"] == 32
    assert metrics["FID-InceptionV3"].startswith("not computed")  # said, not substituted
    assert "FID" not in {k for k in metrics["generated"]}  # only named feature spaces
    generated, reference = metrics["generated"], metrics["real_reference"]
    # three optimisation steps make noise, far further from the real digits than real digits are from each other
    assert generated["FID-MobileNetV2"] > 2 * reference["FID-MobileNetV2"] > 0
    assert generated["FD-classifier"] > 2 * reference["FD-classifier"] > 0
    assert set(metrics["class-accuracy-per-class"]) == {"zero", "one", "two", "three", "four", "five", "six",
                                                         "seven", "eight", "nine"}  # fmt: skip
    assert "| FID-MobileNetV2 |" in result.stdout


def test_evaluate_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="holds no training_config.json"):
        parse_args([str(tmp_path)])
    (tmp_path / "training_config.json").write_text("{}")
    with pytest.raises(ValueError, match="`--num_samples` must be a positive integer"):
        parse_args([str(tmp_path), "--num_samples", "0"])
    with pytest.raises(ValueError, match="precision/recall needs more than 3"):
        parse_args([str(tmp_path), "--num_samples", "3"])
