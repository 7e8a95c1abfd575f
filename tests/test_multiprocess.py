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
    assert "Could not write checkpoint-2" in output and "Not a directory [Errno 20]" in output
    assert "terminate called" not in output and "SIGABRT" not in output
    assert not (output_dir / "model_index.json").exists()


def test_two_process_evaluation_gathers_each_sample_once(tmp_path):
    # 15 images on 2 processes: 8 each, the 16th dropped after the gather
    output_dir = tmp_path / "run"
    result = launch_two_processes(
        output_dir,
        "multi_gpu_flags",
        "--eval_steps",
        "6",
        "--eval_num_samples",
        "15",
        "--eval_batch_size",
        "4",
        "--eval_feature_resolution",
        "32",
    )
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


def test_two_process_super_resolution_evaluation_upscales_each_held_out_image_once(tmp_path):
    """7 held-out images on 2 processes: each upscales its 4 (the 8th wraps round and is dropped after the gather)."""
    from types import SimpleNamespace

    from diffkit import SuperResolutionPipeline
    from diffkit.training.conditioning import LowResolutionConditioning
    from diffkit.training.dataset_loading import hold_out, load_training_data
    from diffkit.training.evaluate import real_images_from_data

    output_dir = tmp_path / "run"
    result = launch_two_processes(
        output_dir,
        "multi_gpu_flags",
        "--conditioning",
        "low_resolution",
        "--low_resolution",
        "8",
        "--eval_steps",
        "6",
        "--eval_num_samples",
        "7",
        "--eval_batch_size",
        "3",
        "--eval_feature_resolution",
        "32",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["held_out_images"] == 7

    # One process upscaling the same held-out images (same seeds) with the saved weights gets the same PSNR: the
    # gathered set held every image once, in the order of the originals it is compared with.
    args = SimpleNamespace(cache_dir=None, **json.loads((output_dir / "training_config.json").read_text())["args"])
    args.eval_batch_size = 7  # not a run flag, so not in training_config.json; the batch size changes no image
    _, held_out = hold_out(load_training_data(args), 7, args.seed)
    originals, _ = real_images_from_data(held_out, 16)
    pipe = SuperResolutionPipeline.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)
    images = LowResolutionConditioning(args, []).upscale_for_evaluation(pipe, originals, None, torch.arange(7))
    psnr = (10 * torch.log10(1 / ((images - originals) ** 2).mean(dim=(1, 2, 3)))).mean().item()
    assert psnr == pytest.approx(metrics["generated"]["PSNR"], rel=1e-4)
    shifted = torch.cat([images[1:], images[:1]])
    shifted_psnr = (10 * torch.log10(1 / ((shifted - originals) ** 2).mean(dim=(1, 2, 3)))).mean().item()
    assert shifted_psnr != pytest.approx(metrics["generated"]["PSNR"], rel=1e-4)


def test_an_odd_number_of_batches_trains_on_two_processes_and_too_few_is_a_clear_error(tmp_path):
    # 56 images of batch 8: 7 batches, of which each process gets 3 (the last, incomplete round is dropped)
    result = launch_two_processes(tmp_path / "odd", "multi_gpu_flags", "--max_train_samples", "56")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert json.loads((tmp_path / "odd" / "training_config.json").read_text())["run"]["global_step"] == 6
    result = launch_two_processes(tmp_path / "few", "multi_gpu_flags", "--max_train_samples", "8")
    assert result.returncode != 0
    assert "give 1 batch(es) of --train_batch_size 8, fewer than the 2 processes" in result.stdout + result.stderr
