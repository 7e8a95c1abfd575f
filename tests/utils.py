"""Shared test configuration: tiny UNet configs and a real `accelerate launch` runner."""

import os
import socket
import subprocess
import sys

import diffusers
import pytest
from diffusers import DiffusionPipeline
from packaging import version

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_TEST_CLASSES = 3

# The smallest UNets that still have a down/up path and (for the conditional one) cross-attention to the label.
TINY_UNET2D_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "attention_head_dim": 8,
}
TINY_CONDITION_UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "cross_attention_dim": 16,
    "attention_head_dim": 8,
    "encoder_hid_dim": NUM_TEST_CLASSES + 1,
    "encoder_hid_dim_type": "text_proj",
}

# Super-resolution stages (4 -> 8 px): the noisy image and the upsampled input side by side, and the noise level
# through the "timestep" class embedding; the second also reads the label.
TINY_SUPER_RESOLUTION_UNET_CONFIG = {**TINY_UNET2D_CONFIG, "in_channels": 2, "class_embed_type": "timestep"}
TINY_CLASS_SUPER_RESOLUTION_UNET_CONFIG = {
    **TINY_CONDITION_UNET_CONFIG,
    "in_channels": 2,
    "class_embed_type": "timestep",
}
TINY_LOW_RESOLUTION = 4


# diffusers refuses to run a local folder's pipeline code without `trust_remote_code=True` from 0.38 on; 0.35-0.37
# ask for it only when the code comes from a Hub repo (tests/test_hub.py checks that on every version).
DIFFUSERS_GUARDS_LOCAL_REMOTE_CODE = version.parse(diffusers.__version__).release >= (0, 38)


def assert_local_remote_code_needs_opt_in(folder, installed_class):
    """`DiffusionPipeline.from_pretrained(folder)` refuses the folder's own code unless it is asked for."""
    if DIFFUSERS_GUARDS_LOCAL_REMOTE_CODE:
        with pytest.raises(ValueError, match="trust_remote_code=True"):
            DiffusionPipeline.from_pretrained(folder)
    else:
        # The older releases run it without asking: the class is the folder's copy, not the installed one.
        loaded_class = type(DiffusionPipeline.from_pretrained(folder))
        assert loaded_class.__name__ == installed_class.__name__ and loaded_class is not installed_class


def accelerate_launch_command(args, script="train.py"):
    """`accelerate launch training/SCRIPT ARGS` as a user would type it, on one CPU process."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1",
        os.path.join(REPO_ROOT, "training", script), *args,
    ]  # fmt: skip


def run_accelerate_launch(args, cwd=REPO_ROOT, timeout=300, env=None, script="train.py"):
    return subprocess.run(
        accelerate_launch_command(args, script), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def assert_launch_succeeded(result):
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
