"""`diffkit-evaluate` (`python -m diffkit.cli.evaluate`) end to end on a tiny trained model, and its bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffkit import ClassConditionalImagePipeline
from diffkit.cli.evaluate import parse_args
from diffkit.training.evaluate import (
    generate,
    inception_unavailable_reason,
    prepare_real_reference,
    real_images,
    score,
)

from .test_command_line import NOTICES
from .test_train import QUICK_RUN, write_unet_config
from .utils import REPO_ROOT, TINY_CONDITION_UNET_CONFIG, assert_launch_succeeded, run_accelerate_launch


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluate")
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    train_args = [*QUICK_RUN, "--output_dir", str(output_dir), "--model_config_name_or_path", unet_config]
    assert_launch_succeeded(run_accelerate_launch(train_args))
    return output_dir


@pytest.mark.slow
def test_evaluate_command_on_a_tiny_model(tiny_run):
    output_dir = tiny_run
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffkit.cli.evaluate",
            str(output_dir),
            "--num_samples",
            "20",
            "--num_inference_steps",
            "2",
            "--feature_resolution",
            "32",
            "--classifier_epochs",
            "1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # diffkit-evaluate sets up logging before diffusers imports torchao: only library_notices' filters keep them out
    assert not [line for line in result.stderr.splitlines() if any(notice in line for notice in NOTICES)], (
        result.stderr
    )
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 20 and metrics["mobilenet_resolution"] == 32
    if inception_unavailable_reason() is not None:
        assert metrics["InceptionV3"].startswith("not computed: ")  # said, not substituted
        assert "FID-InceptionV3" not in metrics["generated"]
    assert "FID" not in {k for k in metrics["generated"]}  # only named feature spaces
    generated, reference = metrics["generated"], metrics["real_reference"]
    # three optimisation steps make noise, far further from the real digits than real digits are from each other
    assert generated["FID-MobileNetV2"] > 2 * reference["FID-MobileNetV2"] > 0
    assert generated["FD-classifier"] > 2 * reference["FD-classifier"] > 0
    assert set(metrics["class-accuracy-per-class"]) == {
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    }
    assert "| FID-MobileNetV2 |" in result.stdout
    # the model card, still the rendered one, gains the figures; one edited by hand is kept
    card = (output_dir / "README.md").read_text()
    assert f"| FID-MobileNetV2 | {generated['FID-MobileNetV2']:.4f} | {reference['FID-MobileNetV2']:.4f} |" in card
    assert "20 samples of the final weights (step 3), DDPMScheduler with 2 steps" in card
    (output_dir / "README.md").write_text(card + "\nMy notes.\n")
    again = subprocess.run(result.args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (output_dir / "README.md").read_text() == card + "\nMy notes.\n"
    assert "it is not the card rendered for this folder" in again.stdout


def test_evaluate_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="holds no training_config.json"):
        parse_args([str(tmp_path)])
    (tmp_path / "training_config.json").write_text("{}")
    with pytest.raises(ValueError, match="`--num_samples` must be a positive integer"):
        parse_args([str(tmp_path), "--num_samples", "0"])
    with pytest.raises(ValueError, match="precision/recall needs more than 3"):
        parse_args([str(tmp_path), "--num_samples", "3"])
    (tmp_path / "training_config.json").write_text(json.dumps({"args": {"conditioning": "none"}}))
    with pytest.raises(ValueError, match="`--metrics` 'FID' is not a metric diffkit computes"):
        parse_args([str(tmp_path), "--metrics", "FID"])
    with pytest.raises(ValueError, match="'FD-classifier' needs a class-conditional model"):
        parse_args([str(tmp_path), "--metrics", "FID-MobileNetV2", "FD-classifier"])
    if inception_unavailable_reason() is not None:
        with pytest.raises(ValueError, match="`--metrics` 'IS-InceptionV3' cannot be computed here: "):
            parse_args([str(tmp_path), "--metrics", "IS-InceptionV3"])


@pytest.mark.slow
def test_real_features_are_cached_per_data_and_settings(tmp_path, tiny_run):
    images, labels = real_images(json.loads((tiny_run / "training_config.json").read_text()))
    settings = {"feature_resolution": 32, "classifier_epochs": 1, "cache_dir": tmp_path}
    first = prepare_real_reference(images, labels, 10, 10, **settings)
    (entry,) = (tmp_path / "real_features").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["classifier.safetensors", "features.npz", "info.json"]
    second = prepare_real_reference(images, labels, 10, 10, **settings)
    for name in ("mobilenet_real", "mobilenet_reference", "classifier_real", "classifier_reference"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.classifier_held_out_accuracy == second.classifier_held_out_accuracy
    with torch.no_grad():
        torch.testing.assert_close(first.classifier(images), second.classifier(images), rtol=0, atol=0)
    # other settings, or other pixels, are another entry
    prepare_real_reference(images, labels, 10, 10, **{**settings, "feature_resolution": 64})
    prepare_real_reference(1 - images, labels, 10, 10, **settings)
    assert len(list((tmp_path / "real_features").iterdir())) == 3


@pytest.mark.slow
def test_generated_images_do_not_depend_on_the_batch_size_or_the_split(tiny_run):
    pipe = ClassConditionalImagePipeline.from_pretrained(tiny_run)
    pipe.set_progress_bar_config(disable=True)
    whole, labels = generate(pipe, 7, 7, seed=3, num_inference_steps=2, guidance_scale=2.0)
    batched, _ = generate(pipe, 7, 2, seed=3, num_inference_steps=2, guidance_scale=2.0)
    tail, tail_labels = generate(pipe, 3, 2, seed=3, num_inference_steps=2, guidance_scale=2.0, start=4)
    torch.testing.assert_close(whole, batched)
    torch.testing.assert_close(whole[4:], tail)
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6] and tail_labels.tolist() == [4, 5, 6]
    assert not torch.equal(whole[0], whole[1])


@pytest.mark.slow
def test_score_orders_real_above_noise(tiny_run):
    images, labels = real_images(json.loads((tiny_run / "training_config.json").read_text()))
    reference = prepare_real_reference(images, labels, 10, 10, feature_resolution=32, classifier_epochs=1)
    noise = torch.rand(10, *images.shape[1:], generator=torch.Generator().manual_seed(0))
    scores = score(reference, noise, torch.arange(10), metrics=["FID-MobileNetV2", "FD-classifier"])
    assert set(scores["generated"]) == {"FID-MobileNetV2", "FD-classifier"}  # only what was asked for
    assert scores["generated"]["FD-classifier"] > scores["real_reference"]["FD-classifier"]
    assert scores["generated"]["FID-MobileNetV2"] > scores["real_reference"]["FID-MobileNetV2"]


@pytest.mark.slow
def test_inception_metrics_go_through_torch_fidelity_when_it_is_there(monkeypatch, tiny_run):
    # torch-fidelity needs torchvision, which cannot be installed beside this torch, so a stand-in module with its
    # API checks what diffkit hands it (8-bit RGB tensors, one dataset per side) and how the results are named.
    import sys
    import types

    calls = []

    def calculate_metrics(input1, input2, fid, kid, isc, **kwargs):
        calls.append((input1, input2, kwargs))
        names = ("frechet_inception_distance", "kernel_inception_distance_mean", "inception_score_mean")
        return dict(zip(names, (12.5, 0.01, 2.0)))

    fake = types.SimpleNamespace(
        FeatureExtractorInceptionV3=lambda name, features: None,
        calculate_metrics=calculate_metrics,
        KEY_METRIC_FID="frechet_inception_distance",
        KEY_METRIC_KID_MEAN="kernel_inception_distance_mean",
        KEY_METRIC_ISC_MEAN="inception_score_mean",
    )
    monkeypatch.setitem(sys.modules, "torch_fidelity", fake)
    inception_unavailable_reason.cache_clear()
    try:
        assert inception_unavailable_reason() is None
        images, labels = real_images(json.loads((tiny_run / "training_config.json").read_text()))
        reference = prepare_real_reference(images, labels, 10, 10, feature_resolution=32, classifier_epochs=1)
        generated = torch.rand(10, *images.shape[1:], generator=torch.Generator().manual_seed(0))
        scores = score(reference, generated, torch.arange(10), metrics=["FID-InceptionV3", "IS-InceptionV3"])
    finally:
        inception_unavailable_reason.cache_clear()
    assert scores["generated"] == {"FID-InceptionV3": 12.5, "IS-InceptionV3": 2.0}
    (generated_set, real_set, kwargs) = calls[0]
    assert len(generated_set) == len(real_set) == 10 and kwargs["kid_subset_size"] == 10
    first = generated_set[0]
    assert first.dtype == torch.uint8 and first.shape == (3, *images.shape[2:])
    assert torch.equal(first[0], (generated[0, 0] * 255).round().to(torch.uint8))
