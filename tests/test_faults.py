"""Faults a run meets: a NaN or infinite loss stops it before the weights take it, naming the last good checkpoint,
or is skipped with --skip_nonfinite (training/train.py)."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from diffkit.training.arguments import MAX_NONFINITE_IN_A_ROW
from diffkit.training.checkpointing import list_checkpoints

from .utils import REPO_ROOT

# A learning rate of 1e30 moves every weight by about 1e30 in the first AdamW step: the second step's loss is NaN.
DIVERGING_RUN = [
    "--conditioning", "unconditional", "--max_train_samples", "40", "--max_train_steps", "6", "--train_batch_size",
    "4", "--lr_warmup_steps", "0", "--learning_rate", "1e30", "--resolution", "16", "--num_inference_steps", "2",
    "--num_samples_per_class", "1", "--checkpointing_steps", "1",
]  # fmt: skip


def train(args):
    command = [sys.executable, os.path.join(REPO_ROOT, "training", "train.py"), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def all_finite(checkpoint_dir):
    weights = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    return all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_before_the_weights_take_it(tmp_path):
    result = train([*DIVERGING_RUN, "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "The loss is NaN or infinite at step 2 (on 1 of 1 process(es))" in result.stderr
    assert f"The last good checkpoint is {tmp_path / 'out' / 'checkpoint-1'}" in result.stderr
    checkpoints = list_checkpoints(str(tmp_path / "out"))
    assert [step for step, _ in checkpoints] == [1] and all_finite(checkpoints[0][1])
    assert not (tmp_path / "out" / "model_index.json").exists()


@pytest.mark.slow
def test_skip_nonfinite_skips_until_the_run_has_diverged(tmp_path):
    result = train([*DIVERGING_RUN, "--skip_nonfinite", "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1
    skipped = result.stderr.count("Skipped the batch of step 2: its loss is NaN or infinite")
    assert skipped == MAX_NONFINITE_IN_A_ROW - 1  # the step is not counted: each retry is step 2 again
    assert f"at {MAX_NONFINITE_IN_A_ROW} batches in a row up to step 2" in result.stderr
    checkpoints = list_checkpoints(str(tmp_path / "out"))
    assert [step for step, _ in checkpoints] == [1] and all_finite(checkpoints[0][1])
