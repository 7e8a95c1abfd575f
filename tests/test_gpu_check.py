"""`python -m benchmarks.gpu_check` where this project can run it: it refuses to run without a GPU, and the full-size
architectures it times on random weights are the published ones (checked by their parameter counts, built on the
meta device so that nothing is allocated). Its GPU half runs on a machine with a GPU."""

import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from benchmarks import gpu_check

from .utils import REPO_ROOT

# The parameter counts of the published checkpoints (diffusers' and transformers' model summaries of them).
PUBLISHED_PARAMETERS = [
    ("SD 1.5 UNet", lambda: UNet2DConditionModel(**gpu_check.SD15_UNET), 859_520_964),
    ("SDXL UNet", lambda: UNet2DConditionModel(**gpu_check.SDXL_UNET), 2_567_463_684),
    ("x4 upscaler UNet", lambda: UNet2DConditionModel(**gpu_check.UPSCALER_UNET), 473_398_020),
    ("SD VAE", lambda: AutoencoderKL(**gpu_check.SD_VAE), 83_653_863),
    ("x4 upscaler VAE", lambda: AutoencoderKL(**gpu_check.UPSCALER_VAE), 55_325_927),
    ("CLIP ViT-L/14 text", lambda: CLIPTextModel(CLIPTextConfig(**gpu_check.CLIP_L_TEXT)), 123_060_480),
    ("OpenCLIP bigG text", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**gpu_check.CLIP_BIG_G_TEXT)),
     694_659_840),
    ("OpenCLIP ViT-H text (SD 2)", lambda: CLIPTextModel(CLIPTextConfig(**gpu_check.OPEN_CLIP_H_TEXT)), 340_387_840),
]  # fmt: skip


@pytest.mark.parametrize("name, build, parameters", PUBLISHED_PARAMETERS, ids=[p[0] for p in PUBLISHED_PARAMETERS])
def test_the_random_architectures_are_the_published_ones(name, build, parameters):
    with torch.device("meta"):
        model = build()
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check runs instead of refusing")
def test_without_a_gpu_the_check_stops_loudly(tmp_path):
    out = tmp_path / "gpu_check.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == gpu_check.NO_GPU_EXIT_STATUS
    assert "gpu_check: no CUDA GPU" in result.stderr and "nothing was measured" in result.stderr
    assert not out.exists()
