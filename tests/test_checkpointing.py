import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from diffkit import ClassConditionalImagePipeline
from diffkit.training.checkpointing import (
    TRAINING_STATE_NAME,
    list_checkpoints,
    remove_partial_checkpoints,
    resolve_checkpoint,
)
from diffkit.training.train import parse_args

from .utils import REPO_ROOT, accelerate_launch_command, assert_launch_succeeded, run_accelerate_launch

# Long enough (~0.1 s a step with the default UNet) for a test to kill it in the middle; crosses an epoch boundary
# (64 images / batch 8 = 8 steps an epoch) and uses every source of randomness: flips, condition dropout, EMA.
RESUME_RUN = [
    "--max_train_samples", "64", "--train_batch_size", "8", "--max_train_steps", "30", "--checkpointing_steps", "5",
    "--use_ema", "--ema_decay", "0.99", "--random_flip", "--lr_warmup_steps", "2",
    "--num_inference_steps", "2", "--num_samples_per_class", "1",
]  # fmt: skip


def assert_same_weights(path_a, path_b):
    a, b = load_file(path_a), load_file(path_b)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert_launch_succeeded(run_accelerate_launch([*RESUME_RUN, "--output_dir", str(output_dir)]))
    return output_dir


def launch_and_kill(output_dir, should_kill, timeout=240):
    """Start a training run and SIGKILL it (launcher and training process) as soon as `should_kill()` holds."""
    process = subprocess.Popen(
        accelerate_launch_command([*RESUME_RUN, "--output_dir", str(output_dir)]),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        if should_kill():
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    return process.wait()


def resume_and_compare(output_dir, uninterrupted_dir):
    """Resume from the latest checkpoint; the run must end as the uninterrupted one did, with a complete folder."""
    latest_step = list_checkpoints(str(output_dir))[-1][0]
    result = run_accelerate_launch(
        [*RESUME_RUN, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]
    )
    assert_launch_succeeded(result)
    # it continued from the checkpoint rather than starting over (which would also reproduce the weights)
    assert f"checkpoint-{latest_step} at step {latest_step} " in result.stderr
    assert "Trained 30 steps" in result.stderr
    # a complete, loadable output folder, with nothing half-written left beside it
    for name in ("model_index.json", "samples.png", "training_config.json", "README.md"):
        assert (output_dir / name).is_file(), name
    assert not [p.name for p in output_dir.iterdir() if p.name.startswith((".staging-", ".checkpoint-"))]
    pipe = ClassConditionalImagePipeline.from_pretrained(output_dir)
    assert pipe.config.num_classes == 10
    np.testing.assert_array_equal(
        np.asarray(Image.open(output_dir / "samples.png")), np.asarray(Image.open(uninterrupted_dir / "samples.png"))
    )
    # the saved pipeline holds the EMA weights; the last checkpoint holds the raw weights
    unet_file = os.path.join("unet", "diffusion_pytorch_model.safetensors")
    assert_same_weights(output_dir / unet_file, uninterrupted_dir / unet_file)
    assert_same_weights(
        output_dir / "checkpoint-30" / "model.safetensors", uninterrupted_dir / "checkpoint-30" / "model.safetensors"
    )
    resumed = json.loads((output_dir / "training_config.json").read_text())["run"]
    reference = json.loads((uninterrupted_dir / "training_config.json").read_text())["run"]
    assert resumed["global_step"] == reference["global_step"] == 30
    assert resumed["final_loss"] == reference["final_loss"]


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_weights_bit_for_bit(tmp_path, uninterrupted_run):
    output_dir = tmp_path / "out"
    returncode = launch_and_kill(output_dir, lambda: (output_dir / "checkpoint-10").is_dir())
    assert returncode == -signal.SIGKILL
    assert not (output_dir / "training_config.json").exists()  # killed before the end, so the test is not vacuous
    latest_step = list_checkpoints(str(output_dir))[-1][0]
    assert 10 <= latest_step < 30
    resume_and_compare(output_dir, uninterrupted_run)


@pytest.mark.slow
def test_resume_after_a_kill_right_after_the_last_checkpoint_trains_nothing_more(tmp_path, uninterrupted_run):
    # the kill lands while the final sample grid is drawn: the checkpoint of the last step exists, the outputs do not
    output_dir = tmp_path / "out"
    returncode = launch_and_kill(output_dir, lambda: (output_dir / "checkpoint-30").is_dir())
    assert returncode == -signal.SIGKILL
    assert not (output_dir / "training_config.json").exists()
    assert list_checkpoints(str(output_dir))[-1][0] == 30
    resume_and_compare(output_dir, uninterrupted_run)


@pytest.mark.slow
def test_resume_after_a_kill_during_the_final_save(tmp_path, uninterrupted_run):
    # the kill lands while the pipeline is written to the staging folder (the outputs are half written)
    output_dir = tmp_path / "out"
    returncode = launch_and_kill(output_dir, lambda: any(output_dir.glob(".staging-*/unet")))
    assert returncode == -signal.SIGKILL
    assert not (output_dir / "training_config.json").exists() and list(output_dir.glob(".staging-*"))
    resume_and_compare(output_dir, uninterrupted_run)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, uninterrupted_run):
    output_dir = tmp_path / "out"
    partial = output_dir / ".checkpoint-10.partial"
    returncode = launch_and_kill(output_dir, partial.is_dir)
    assert returncode == -signal.SIGKILL
    # whether or not the kill landed before the rename, `latest` is a complete checkpoint
    latest = resolve_checkpoint(str(output_dir), "latest")
    assert os.path.isfile(os.path.join(latest, TRAINING_STATE_NAME))
    if partial.is_dir():
        assert latest.endswith("checkpoint-5")
    resume_and_compare(output_dir, uninterrupted_run)
    assert not partial.exists()  # the resumed run cleaned it up


def test_latest_ignores_partial_and_incomplete_checkpoints(tmp_path):
    for step in (5, 10):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / TRAINING_STATE_NAME).write_text("{}")
    (tmp_path / "checkpoint-15").mkdir()  # no training_state.json: not complete
    (tmp_path / ".checkpoint-20.partial").mkdir()
    assert resolve_checkpoint(str(tmp_path), "latest") == str(tmp_path / "checkpoint-10")
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [5, 10]
    remove_partial_checkpoints(str(tmp_path))
    assert not (tmp_path / ".checkpoint-20.partial").exists() and (tmp_path / "checkpoint-15").exists()


def test_naming_an_incomplete_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-15").mkdir()
    with pytest.raises(ValueError, match="holds no training_state.json, so it is not a complete diffkit checkpoint"):
        parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", str(tmp_path / "checkpoint-15")])
    with pytest.raises(ValueError, match="`--resume_from_checkpoint` 'checkpoint-99' is not a folder"):
        parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "checkpoint-99"])


def test_resuming_with_other_flags_is_refused(tmp_path):
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    made_with = parse_args(["--output_dir", str(tmp_path / "elsewhere"), "--learning_rate", "1e-3"])
    from diffkit.training.train import run_config

    (checkpoint / TRAINING_STATE_NAME).write_text(json.dumps({"args": run_config(made_with)}))
    with pytest.raises(ValueError, match=r"was made by a different run \(--learning_rate 0.001 -> 0.002\)"):
        parse_args(["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest", "--learning_rate", "2e-3"])
    # flags that do not change the run may differ
    parse_args(
        [
            "--output_dir",
            str(tmp_path),
            "--resume_from_checkpoint",
            "latest",
            "--learning_rate",
            "1e-3",
            "--checkpointing_steps",
            "7",
        ]
    )


@pytest.mark.parametrize(
    "flag, value",
    [("--checkpoints_total_limit", "0"), ("--checkpoints_total_limit", "-2"), ("--checkpointing_steps", "0")],
)
def test_non_positive_checkpoint_settings_are_rejected(tmp_path, flag, value):
    with pytest.raises(ValueError, match=f"`{flag}` must be a positive integer, but is {value}"):
        parse_args(["--output_dir", str(tmp_path), flag, value])


@pytest.mark.slow
def test_rotation_keeps_exactly_the_newest_complete_checkpoints(tmp_path):
    output_dir = tmp_path / "out"
    result = run_accelerate_launch(
        [
            "--max_train_samples",
            "16",
            "--train_batch_size",
            "8",
            "--max_train_steps",
            "7",
            "--checkpointing_steps",
            "2",
            "--checkpoints_total_limit",
            "2",
            "--resolution",
            "16",
            "--num_inference_steps",
            "1",
            "--num_samples_per_class",
            "1",
            "--output_dir",
            str(output_dir),
        ]
    )
    assert_launch_succeeded(result)
    assert sorted(p.name for p in output_dir.iterdir() if p.name.startswith(("checkpoint", ".checkpoint"))) == [
        "checkpoint-4",
        "checkpoint-6",
    ]
