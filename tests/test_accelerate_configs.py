import glob
import os

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser

from .utils import REPO_ROOT

CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "training", "accelerate_configs", "*.yaml")))


def test_every_documented_config_is_shipped():
    names = {os.path.basename(path) for path in CONFIGS}
    assert names == {"multi_cpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "deepspeed_zero2.yaml", "fsdp.yaml"}
    # the multi-process section of the training guide gives the launch line of each
    with open(os.path.join(REPO_ROOT, "docs", "training.md")) as f:
        guide = f.read()
    for name in names:
        assert f"training/accelerate_configs/{name}" in guide


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_accelerate_config_is_valid(path):
    # accelerate's own loader rejects unknown top-level keys
    config = load_config_from_file(path)
    assert config.num_processes >= 2
    # the nested DeepSpeed / FSDP settings become `accelerate launch` arguments: each must be one it knows
    launch_arguments = set(vars(launch_command_parser().parse_args(["training/train.py"])))
    with open(path) as f:
        raw = yaml.safe_load(f)
    for section in ("deepspeed_config", "fsdp_config"):
        unknown = set(raw.get(section, {})) - launch_arguments
        assert not unknown, f"{section} keys unknown to accelerate launch: {unknown}"
