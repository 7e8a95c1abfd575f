"""`python -m benchmarks.gpu_check` where this project can run it: it refuses to run without a GPU, and the full-size
architectures it times on random weights are the published ones (checked by their parameter counts, built on the
meta device so that nothing is allocated). Its GPU half runs on a machine with a GPU."""

import pathlib
import re
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from benchmarks import gpu_check

from .tiny_stable_diffusion import TINY_TEXT_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG
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


# -- the dry run: every row's code path on the CPU, and a table that survives a failing row --------------------------


@pytest.mark.slow
def test_the_dry_run_walks_every_row_on_the_cpu_and_writes_the_table(tmp_path):
    out = tmp_path / "gpu_check.md"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--dry_run", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    planned = gpu_check.plan(gpu_check.CASE_KEYS)
    assert [line.split(" | ")[1] for line in lines] == [row.label for row in planned]
    for line, row in zip(lines, planned):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if row.options.get("quantize") not in (None, "int8"):  # CUDA-only modes: the loaders' refusal
            assert cells[-1].startswith("refused: ValueError: `quantize`"), line
        elif row.decode_memory:
            assert "estimated by memory='auto'" in cells[-1], line
        else:  # ran: loaded, timed, compared with the baseline
            assert float(cells[5]) > 0 and cells[7].endswith("x"), line
    assert "0 row(s) failed" in out.read_text() and "diffusers' published figures" in out.read_text()


def test_a_failing_row_is_written_down_and_the_check_goes_on(tmp_path, monkeypatch):
    inpaint = next(case for case in gpu_check.CASES if case.key == "inpaint")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(inpaint, "loader", out_of_memory)
    snapshots = []
    write = gpu_check.Table.write

    def write_and_keep(table):
        write(table)
        snapshots.append(open(table.path).read())

    monkeypatch.setattr(gpu_check.Table, "write", write_and_keep)
    out = tmp_path / "gpu_check.md"
    status = gpu_check.main(["--dry_run", "--cases", "inpaint,upscaler", "--out", str(out)])
    table = out.read_text()
    assert status == 1 and "1 row(s) failed" in table
    assert "| ours: loader defaults | | | | | | | | failed: OutOfMemoryError: CUDA out of memory" in table
    # the baseline row is 1.00x by definition; ours is timed on its own, so its ratio is whatever the CPU gave
    upscaler_rows = [line for line in table.splitlines() if line.startswith("| x4 upscaler, 128 -> 512 px |")]
    assert len(upscaler_rows) == 2 and sum("| 1.00x |" in row for row in upscaler_rows) >= 1
    assert all(re.search(r"\| \d+\.\d\dx \|", row) for row in upscaler_rows), upscaler_rows
    # the file was rewritten after each of the 4 rows (and at the start and the end), each time with one more row
    assert len(snapshots) == 6
    assert [snapshot.count("\n| ") for snapshot in snapshots[:5]] == [2, 3, 4, 5, 6]


def test_the_arguments_are_checked(capsys):
    for argv, message in [(["--cases", "sd3"], "argument --cases: ['sd3'] are not among"), (["--repeats", "0"], "")]:
        with pytest.raises(SystemExit) as stopped:
            gpu_check.parse_args(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


# -- the random full-size models, built as on the GPU (with tiny configurations, on the CPU) -------------------------

TINY_UNET = {**TINY_UNET_CONFIG, "in_channels": 4}
# the tests' tiny models' configurations, in the roles of the published ones
TINY_CONFIGS = dict(
    SD15_UNET=TINY_UNET,
    SD_VAE=TINY_VAE_CONFIG,
    SDXL_VAE={**TINY_VAE_CONFIG, "force_upcast": True},
    CLIP_L_TEXT=TINY_TEXT_CONFIG,
    CLIP_BIG_G_TEXT=TINY_TEXT_CONFIG,
    SDXL_UNET={**TINY_UNET, "cross_attention_dim": 64, "addition_embed_type": "text_time",
               "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32},
    UPSCALER_UNET={**TINY_UNET, "in_channels": 7, "num_class_embeds": 1000},
    UPSCALER_VAE={**TINY_VAE_CONFIG, "block_out_channels": [8, 8, 16], "down_block_types": ["DownEncoderBlock2D"] * 3,
                  "up_block_types": ["UpDecoderBlock2D"] * 3},
    OPEN_CLIP_H_TEXT=TINY_TEXT_CONFIG,
)  # fmt: skip


@pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")
@pytest.mark.parametrize("key", gpu_check.CASE_KEYS)
def test_the_random_models_load_in_fp16_as_the_rows_load_them(tmp_path, monkeypatch, key):
    """The builders the GPU run uses when nothing is cached: saved in fp16 with the variant's names linked, they load
    through diffusers' fp16 + variant baseline and through our loader (here on the CPU, with tiny configurations)."""
    for name, config in TINY_CONFIGS.items():
        monkeypatch.setattr(gpu_check, name, config)
    models = gpu_check.random_models(str(tmp_path), torch.device("cpu"))
    folders = models[key]()
    if key == "sd15":
        assert (tmp_path / "sd15" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_symlink()
    case = next(case for case in gpu_check.CASES if case.key == key)
    settings = gpu_check.Settings(torch.device("cpu"), dry_run=True, repeats=1)
    baseline = gpu_check.load_baseline(case, folders, settings)
    assert baseline.unet.dtype == torch.float16
    ours = case.loader(*folders, device="cpu", dtype="fp16")
    assert ours.unet.dtype == torch.float16
    if key == "sdxl":
        fixed = gpu_check.load_sdxl(folders[0], vae=models["sdxl_vae"](), device="cpu", dtype="fp16")
        assert not fixed.vae.config.force_upcast and fixed.vae.dtype == torch.float16


def test_the_cuda_tests_it_runs_are_every_file_with_a_cuda_test():
    decorator = re.compile(r"^@pytest\.mark\.cuda$", re.MULTILINE)
    tests = pathlib.Path(REPO_ROOT) / "tests"
    marked = sorted(f"tests/{path.name}" for path in tests.glob("test_*.py") if decorator.search(path.read_text()))
    assert sorted(gpu_check.CUDA_TEST_FILES) == marked
