import json
import re
import subprocess
import sys

import pytest
import torch

from diffkit import ClassConditionalImagePipeline
from diffkit.training.evaluate import generate, prepare_real_reference, real_images, score

from .utils import REPO_ROOT

# Every test here launches two training processes.
pytestmark = pytest.mark.slow

LAUNCH_STYLES = {
    # as a user with two GPUs would type it; on this machine the script joins the processes over gloo
    "multi_gpu_flags": ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"],
    # the config file the README documents for machines without GPUs
    "multi_cpu_config": ["--config_file", "training/accelerate_configs/multi_cpu.yaml"],
}


def launch_two_processes(output_dir, launch_style, *extra_args):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *LAUNCH_STYLES[launch_style],
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", "0",
        "training/train.py", "--output_dir", str(output_dir),
        "--max_train_samples", "64", "--train_batch_size", "8", "--max_train_steps", "6", "--resolution", "16",
        "--checkpointing_steps", "2", "--checkpoints_total_limit", "2",
        "--num_inference_steps", "1", "--num_samples_per_class", "1", *extra_args,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("launch_style", sorted(LAUNCH_STYLES))
def test_two_process_run_trains_on_shards_saves_once_and_exits_cleanly(tmp_path, launch_style):
    for run in range(2):
        output_dir = tmp_path / f"run{run}"
        result = launch_two_processes(output_dir, launch_style)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-5000:]
        assert "terminate called" not in output
        assert "DistributedType.MULTI_CPU" in output

        # each process trained on its own shard of the data
        first_examples = dict(re.findall(r"Process (\d) starts on examples (\[[\d, ]+\])", output))
        assert set(first_examples) == {"0", "1"}
        assert not set(json.loads(first_examples["0"])) & set(json.loads(first_examples["1"]))

        run_figures = json.loads((output_dir / "training_config.json").read_text())["run"]
        assert run_figures["num_processes"] == 2 and run_figures["total_batch_size"] == 16
        assert run_figures["global_step"] == 6
        # rotation kept exactly the newest two complete checkpoints, each with both processes' random states
        checkpoints = sorted(p.name for p in output_dir.iterdir() if "checkpoint" in p.name)
        assert checkpoints == ["checkpoint-4", "checkpoint-6"]
        for name in checkpoints:
            assert {"random_states_0.pkl", "random_states_1.pkl", "noise_generator_1.safetensors"} <= {
                p.name for p in (output_dir / name).iterdir()
            }
        assert (output_dir / "model_index.json").is_file()


def test_two_process_run_that_fails_mid_training_exits_with_its_error(tmp_path):
    # A file where checkpoint-2 must go makes the main process fail while the process group is up and after the
    # loss gathers: the run must end with that error and exit code 1, not with a C++ abort at interpreter exit.
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "checkpoint-2").write_text("in the way")
    result = launch_two_processes(output_dir, "multi_gpu_flags", "--overwrite_output_dir")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-5000:]
    assert "NotADirectoryError" in output and "checkpoint-2" in output
    assert "terminate called" not in output and "SIGABRT" not in output
    assert not (output_dir / "model_index.json").exists()


def test_two_process_evaluation_gathers_each_sample_once(tmp_path):
    # 15 images on 2 processes: 8 each, the 16th dropped after the gather
    output_dir = tmp_path / "run"
    result = launch_two_processes(
        output_dir, "multi_gpu_flags", "--eval_steps", "6", "--eval_num_samples", "15", "--eval_batch_size", "4",
        "--eval_feature_resolution", "32",
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "terminate called" not in output
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["num_samples"] == 15 and [h["global_step"] for h in metrics["history"]] == [6]

    # One process making the same 15 images (same seeds and labels) from the saved weights scores the same: the
    # gathered set had every image once, in order, and nothing from the padding.
    training_config = json.loads((output_dir / "training_config.json").read_text())
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images, labels = generate(pipe, 15, 15, seed=0, num_inference_steps=1, guidance_scale=4.0)
    real, real_labels = real_images(training_config)
    reference = prepare_real_reference(real, real_labels, 10, 15, seed=0, feature_resolution=32)
    scores = score(reference, images, labels, pipe.config.id2label)
    assert scores["class-accuracy-per-class"] == metrics["class-accuracy-per-class"]
    for name in ("FID-MobileNetV2", "FD-classifier"):
        assert scores["generated"][name] == pytest.approx(metrics["generated"][name], rel=1e-4)
    # and a set with one image shifted by one place (what an off-by-one in the gather would give) does not
    shifted = score(reference, torch.cat([images[1:], images[:1]]), labels, pipe.config.id2label)
    assert shifted["class-accuracy-per-class"] != metrics["class-accuracy-per-class"] or shifted["generated"][
        "FD-classifier"
    ] != pytest.approx(metrics["generated"]["FD-classifier"], rel=1e-4)
