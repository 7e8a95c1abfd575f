"""The fp16 CUDA path of the Stable Diffusion loaders: on the CPU, what a first GPU run would have met; on a GPU, the
same paths for real.

The CPU tests each failed before the fix they name (issue 36) and need no GPU: the fp16 weights load and run on the
CPU, and where a decision depends on the device (the dtype of quantised weights, the memory mode, the refiner's
placement), CUDA is faked (`torch.cuda.is_available`, `torch.cuda.mem_get_info`) and the calls that would move
weights to a GPU are recorded instead of made. The tests marked `cuda` at the end run the same paths on a real GPU
(`pytest -m cuda`, which `python -m benchmarks.gpu_check` runs first) and are skipped elsewhere with that reason.
"""

import subprocess
import sys
import textwrap
from copy import deepcopy

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, DiffusionPipeline, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file

from diffkit.pipelines import loaders
from diffkit.pipelines.loaders import (
    AUTO_MEMORY_HEADROOM,
    choose_memory_mode,
    decode_working_bytes,
    load_controlnet_canny,
    load_sdxl,
    load_sdxl_refiner,
    load_stable_diffusion,
    pipeline_modules,
    resolve_device_and_dtype,
    weights_bytes,
)
from diffkit.pipelines.quantization import INT4_DTYPE, pipeline_quantization_config, stored_bytes
from diffkit.pipelines.stable_diffusion_options import SDXL_CANNY_CONTROLNET

from .hub_server import HubServer
from .tiny_stable_diffusion import (
    blacken_decoder,
    save_tiny_controlnet,
    save_tiny_sdxl,
    save_tiny_sdxl_refiner,
    save_tiny_stable_diffusion,
    save_tiny_vae,
)
from .utils import REPO_ROOT, free_port

SIZE = 64
STEPS = 2
CUDA = torch.device("cuda")
pytestmark = pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")


class StopBeforeLoading(Exception):
    """Raised by a stand-in for `load_with_variant`: the test has seen what would have been loaded, and how."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    folders = {
        "sd": save_tiny_stable_diffusion(str(root / "sd")),
        "sd_fp16": save_tiny_stable_diffusion(str(root / "sd_fp16"), fp16_variant=True),
        "sdxl": save_tiny_sdxl(str(root / "sdxl")),
        "refiner": save_tiny_sdxl_refiner(str(root / "refiner")),
    }
    folders["controlnet"] = save_tiny_controlnet(str(root / "controlnet"), folders["sd"])
    folders["vae"] = save_tiny_vae(str(root / "vae"))
    # the same models with fp16 files whose weights differ from the full ones (another seed), so that a test can
    # tell which file a load read
    folders["controlnet_fp16"] = save_tiny_controlnet(str(root / "controlnet_fp16"), folders["sd"])
    torch.manual_seed(7)
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(folders["sd"], subfolder="unet")).to(
        torch.float16
    ).save_pretrained(folders["controlnet_fp16"], variant="fp16")
    folders["vae_fp16"] = save_tiny_vae(str(root / "vae_fp16"))
    torch.manual_seed(8)
    AutoencoderKL(**AutoencoderKL.load_config(folders["vae"])).to(torch.float16).save_pretrained(
        folders["vae_fp16"], variant="fp16"
    )
    folders["refiner_fp16"] = save_tiny_sdxl_refiner(str(root / "refiner_fp16"))
    refiner = DiffusionPipeline.from_pretrained(folders["refiner_fp16"])
    torch.manual_seed(9)
    with torch.no_grad():
        for parameter in refiner.unet.parameters():
            parameter.normal_(std=0.02)
    refiner.to(torch.float16).save_pretrained(folders["refiner_fp16"], variant="fp16")
    return folders


def generate(pipe, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    return pipe("a photo of a cat", generator=torch.Generator().manual_seed(0), **kwargs).images


def same_weights(module, safetensors_file):
    stored = load_file(safetensors_file)
    state = module.state_dict()
    return all(torch.equal(state[name], stored[name].to(state[name].dtype)) for name in stored)


def fake_cuda(monkeypatch, free_bytes=80 * 2**30, capability=(9, 0)):
    """Make torch report a GPU (with `free_bytes` free) without one; moving weights to it is not faked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 80 * 2**30))


def record_placement(monkeypatch):
    """Record the pipelines' `to`, `enable_model_cpu_offload` and `enable_sequential_cpu_offload` calls instead of
    making them (a faked CUDA device cannot hold weights)."""
    calls = []

    def recorder(name):
        def record(pipe, *args, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            calls.append((type(pipe).__name__, name, str(device)))
            return pipe

        return record

    monkeypatch.setattr(DiffusionPipeline, "to", recorder("to"))
    monkeypatch.setattr(DiffusionPipeline, "enable_model_cpu_offload", recorder("model_offload"))
    monkeypatch.setattr(DiffusionPipeline, "enable_sequential_cpu_offload", recorder("sequential_offload"))
    return calls


def stop_before_loading(monkeypatch):
    """Replace `load_with_variant` by a recorder that stops the loader: returns the list of (class, model, dtype,
    kwargs) it was asked for."""
    asked = []

    def record(model_class, model, dtype, **kwargs):
        asked.append((model_class, model, dtype, kwargs))
        raise StopBeforeLoading

    monkeypatch.setattr(loaders, "load_with_variant", record)
    return asked


# -- 1. fp16 weights: the variant by the files present, safetensors only ------------------------------------------


@pytest.mark.parametrize("with_fp16_files", [False, True], ids=["without_fp16_files", "with_fp16_files"])
def test_a_controlnet_loads_in_fp16_from_a_folder_with_or_without_fp16_files(models, with_fp16_files):
    folder = models["controlnet_fp16" if with_fp16_files else "controlnet"]
    pipe = load_controlnet_canny(models["sd"], folder, dtype=torch.float16)
    assert pipe.controlnet.dtype == torch.float16
    weights = "diffusion_pytorch_model.fp16.safetensors" if with_fp16_files else "diffusion_pytorch_model.safetensors"
    assert same_weights(pipe.controlnet, f"{folder}/{weights}")  # the fp16 file when there is one, else a cast
    edges = np.zeros((SIZE, SIZE, 3), np.uint8)
    edges[16:48, 30:34] = 255
    assert np.isfinite(generate(pipe, image=Image.fromarray(edges))).all()


@pytest.mark.parametrize("with_fp16_files", [False, True], ids=["without_fp16_files", "with_fp16_files"])
def test_a_pipeline_loads_in_fp16_from_a_folder_with_or_without_fp16_files(models, with_fp16_files):
    folder = models["sd_fp16" if with_fp16_files else "sd"]
    pipe = load_stable_diffusion(folder, dtype="fp16")
    assert pipe.unet.dtype == pipe.text_encoder.dtype == pipe.vae.dtype == torch.float16
    weights = "diffusion_pytorch_model.fp16.safetensors" if with_fp16_files else "diffusion_pytorch_model.safetensors"
    assert same_weights(pipe.unet, f"{folder}/unet/{weights}")
    assert np.isfinite(generate(pipe)).all()


@pytest.mark.parametrize("with_fp16_files", [False, True], ids=["without_fp16_files", "with_fp16_files"])
def test_a_named_vae_loads_in_fp16_from_a_folder_with_or_without_fp16_files(models, with_fp16_files, monkeypatch):
    folder = models["vae_fp16" if with_fp16_files else "vae"]
    vae_loads = []
    original = AutoencoderKL.from_pretrained.__func__

    def counting_from_pretrained(cls, *args, **kwargs):
        vae_loads.append(args[0])
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(counting_from_pretrained))
    pipe = load_sdxl(models["sdxl"], vae=folder, dtype="fp16")
    # item 8: the named VAE is passed to from_pretrained, so the stock one is never loaded
    assert vae_loads == [folder]
    assert pipe.vae.dtype == torch.float16 and not pipe.vae.config.force_upcast
    weights = "diffusion_pytorch_model.fp16.safetensors" if with_fp16_files else "diffusion_pytorch_model.safetensors"
    assert same_weights(pipe.vae, f"{folder}/{weights}")
    assert np.isfinite(generate(pipe)).all()


@pytest.mark.parametrize("with_fp16_files", [False, True], ids=["without_fp16_files", "with_fp16_files"])
def test_the_refiner_loads_in_fp16_from_a_folder_with_or_without_fp16_files(models, with_fp16_files):
    folder = models["refiner_fp16" if with_fp16_files else "refiner"]
    base = load_sdxl(models["sdxl"], dtype="fp16")
    refiner = load_sdxl_refiner(base, folder)
    assert refiner.unet.dtype == torch.float16
    weights = "diffusion_pytorch_model.fp16.safetensors" if with_fp16_files else "diffusion_pytorch_model.safetensors"
    assert same_weights(refiner.unet, f"{folder}/unet/{weights}")
    latents = base("a lion", num_inference_steps=4, denoising_end=0.5, height=SIZE, width=SIZE, output_type="latent")
    images = refiner("a lion", image=latents.images, num_inference_steps=4, denoising_start=0.5, output_type="np")
    assert np.isfinite(images.images).all()


def test_a_pickled_controlnet_is_never_unpickled(models, tmp_path, monkeypatch):
    ControlNetModel.from_pretrained(models["controlnet"]).save_pretrained(tmp_path / "bin", safe_serialization=False)
    monkeypatch.setattr(torch, "load", pytest.fail)  # unpickling would call it
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):
        load_controlnet_canny(models["sd"], str(tmp_path / "bin"), dtype=torch.float16)


@pytest.mark.slow
def test_a_hub_controlnet_without_fp16_files_loads_in_fp16(models, tmp_path):
    """The confirmed failure: `lllyasviel/sd-controlnet-canny` has no fp16 files. A Hub repo without them, served
    by the local Hub stand-in, loads in fp16; the variant is chosen from the repo's file list (`model_info`)."""
    script = f"""
        import torch, warnings
        warnings.simplefilter("ignore")
        from huggingface_hub import HfApi
        from diffkit.pipelines.loaders import load_controlnet_canny
        HfApi().create_repo("tester/canny")
        HfApi().upload_folder(repo_id="tester/canny", folder_path={models["controlnet"]!r})
        pipe = load_controlnet_canny({models["sd"]!r}, "tester/canny", dtype=torch.float16)
        print("controlnet", pipe.controlnet.dtype)
    """
    with HubServer() as hub:
        env = {"PATH": "/usr/bin:/bin", "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home")}
        env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_TOKEN="hf_test")
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(script)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-4000:]
        assert "controlnet torch.float16" in result.stdout
        downloads = [request for request in hub.requests if "/resolve/" in request]
    assert not any(".fp16." in request or request.endswith(".bin") for request in downloads), downloads


# -- 2. int4 without the mslk package ------------------------------------------------------------------------------


def test_int4_packs_weights_with_torchs_own_kernel_not_mslk(monkeypatch):
    config = pipeline_quantization_config("int4", INT4_DTYPE).quant_mapping["unet"].quant_type
    from torchao.quantization import quantize_

    linear = torch.nn.Linear(256, 64).to(INT4_DTYPE)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    # torchao's default packing raises ImportError("Requires mslk >= 1.0.0"); ours reaches torch's own int4 packing
    # op, which exists for CUDA only (so the CPU stops there)
    with pytest.raises(NotImplementedError, match="_convert_weight_to_int4pack"):
        quantize_(linear, config)


def test_int4_on_a_gpu_older_than_ampere_is_refused_before_loading(models, monkeypatch):
    fake_cuda(monkeypatch, capability=(7, 5))
    stop_before_loading(monkeypatch)
    with pytest.raises(ValueError, match="'int4' runs torch's tinygemm kernel, which needs .* 8.0"):
        load_stable_diffusion(models["sd"], device="cuda", quantize="int4")


# -- 3. quantised weights compute in bf16 and quantise on the GPU --------------------------------------------------


def test_quantised_weights_on_cuda_load_in_bf16_onto_the_gpu(models, monkeypatch):
    fake_cuda(monkeypatch)
    assert resolve_device_and_dtype("cuda", None, quantize="int8") == (CUDA, torch.bfloat16)
    assert resolve_device_and_dtype("cuda", None) == (CUDA, torch.float16)
    asked = stop_before_loading(monkeypatch)
    with pytest.raises(StopBeforeLoading):
        load_stable_diffusion(models["sd"], device="cuda", quantize="int8")
    (_, _, dtype, kwargs) = asked[-1]
    assert dtype == torch.bfloat16 and kwargs["device_map"] == "cuda" and "quantization_config" in kwargs
    # offloaded pipelines live on the CPU: no device map
    with pytest.raises(StopBeforeLoading):
        load_stable_diffusion(models["sd"], device="cuda", quantize="int8", memory="model_offload")
    assert "device_map" not in asked[-1][3]
    # full weights: no device map either (the pipeline moves as a whole)
    with pytest.raises(StopBeforeLoading):
        load_stable_diffusion(models["sd"], device="cuda")
    assert asked[-1][2] == torch.float16 and "device_map" not in asked[-1][3]


def test_quantised_weights_in_fp16_on_cuda_are_refused(models, monkeypatch):
    fake_cuda(monkeypatch)
    stop_before_loading(monkeypatch)
    with pytest.raises(ValueError, match="can overflow in float16: pass dtype='bf16'"):
        load_stable_diffusion(models["sd"], device="cuda", dtype="fp16", quantize="int8")


def test_a_device_mapped_quantised_pipeline_is_not_moved_again(models, monkeypatch):
    """diffusers 0.35 refuses `.to()` on a pipeline loaded with `device_map="cuda"`; the loader leaves it there, and
    moves only modules passed in (a ControlNet, a VAE), which from_pretrained does not place."""
    pipe = DiffusionPipeline.from_pretrained(models["sd"])
    pipe.hf_device_map = "cpu"  # what from_pretrained(device_map=...) records
    calls = record_placement(monkeypatch)
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda module, *args, **kwargs: moved.append(type(module).__name__))
    loaders.configure_pipeline(pipe, torch.device("cpu"), None, "none", False, False, False, False, False)
    assert calls == [] and moved == []


# -- 4. the SDXL refiner runs where the base runs -------------------------------------------------------------------


@pytest.mark.parametrize("memory", ["none", "model_offload", "sequential_offload"])
def test_the_refiner_takes_the_bases_device_and_memory_mode(models, monkeypatch, memory):
    fake_cuda(monkeypatch)
    calls = record_placement(monkeypatch)
    base = load_sdxl(models["sdxl"], device="cuda", memory=memory)
    refiner = load_sdxl_refiner(base, models["refiner"])
    placement = {"none": "to", "model_offload": "model_offload", "sequential_offload": "sequential_offload"}[memory]
    assert calls == [
        ("StableDiffusionXLPipeline", placement, "cuda"),
        ("StableDiffusionXLImg2ImgPipeline", placement, "cuda"),
    ]
    assert refiner.placement == base.placement == (CUDA, memory)


def test_the_refiner_of_a_pipeline_made_elsewhere_runs_on_its_execution_device(models):
    base = DiffusionPipeline.from_pretrained(models["sdxl"])
    refiner = load_sdxl_refiner(base, models["refiner"])
    assert refiner.placement.device == torch.device("cpu") and refiner.unet.device.type == "cpu"


# -- 5. compiling under sequential offload ---------------------------------------------------------------------


def test_compile_with_sequential_offload_is_refused_before_loading(models, monkeypatch):
    fake_cuda(monkeypatch)
    stop_before_loading(monkeypatch)
    with pytest.raises(ValueError, match="`compile_unet` compiles whole transformer blocks, but memory="):
        load_stable_diffusion(models["sd"], device="cuda", memory="sequential_offload", compile_unet=True)


def test_compile_when_auto_picks_sequential_offload_drops_fullgraph(models, monkeypatch):
    fake_cuda(monkeypatch, free_bytes=1)
    record_placement(monkeypatch)
    compiled = []
    monkeypatch.setattr(
        UNet2DConditionModel, "compile_repeated_blocks", lambda unet, **kwargs: compiled.append(kwargs)
    )
    pipe = load_stable_diffusion(models["sd"], device="cuda", compile_unet=True)
    assert pipe.placement.memory == "sequential_offload" and compiled == [{"fullgraph": False}]


# -- 6. memory="auto" compares with the largest model and the decode -------------------------------------------


def test_auto_memory_compares_free_memory_with_the_largest_model_and_the_decode(models, monkeypatch):
    pipe = load_sdxl(models["sdxl"])
    weights, decode = weights_bytes(pipe), decode_working_bytes(pipe)
    largest = max(stored_bytes(module) for module in pipeline_modules(pipe))
    # the tiny SDXL at its default size, 64 px: a 32-channel stage (block_out_channels[1] = 8) of 64x64 fp32 values
    assert decode == loaders.DECODE_WORKING_TENSORS * 8 * 64 * 64 * 4
    expected = {
        int(AUTO_MEMORY_HEADROOM * (weights + decode)) + 1: "none",
        int(AUTO_MEMORY_HEADROOM * (largest + decode)) + 1: "model_offload",
        # more than the average model (the old rule's bar), less than the largest one and the decode
        int(AUTO_MEMORY_HEADROOM * (largest + decode)) - 1: "sequential_offload",
    }
    assert weights / len(pipeline_modules(pipe)) < AUTO_MEMORY_HEADROOM * (largest + decode) - 1
    for free_bytes, choice in expected.items():
        fake_cuda(monkeypatch, free_bytes=free_bytes)
        assert choose_memory_mode(pipe, CUDA) == choice, free_bytes


def test_the_decode_estimate_scales_with_the_output_and_the_upcast(models):
    sd = load_stable_diffusion(models["sd"], dtype="fp16")
    sdxl = load_sdxl(models["sdxl"], dtype="fp16")  # the stock SDXL VAE decodes in fp32 (force_upcast)
    assert decode_working_bytes(sdxl) == 2 * decode_working_bytes(sd)


# -- 7. the black/NaN guard checks whole images, once --------------------------------------------------------------


def test_one_dark_tile_of_a_tiled_decode_is_no_error(models):
    pipe = load_stable_diffusion(models["sd"], vae_tiling=True)
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 32, 4  # 64 px in four tiles
    tiles = []

    def first_tile_black(module, inputs, output):
        tiles.append(output.shape)
        return torch.full_like(output, -1.0) if len(tiles) == 1 else output

    pipe.vae.decoder.register_forward_hook(first_tile_black, prepend=True)
    images = generate(pipe)
    assert len(tiles) > 1 and np.isfinite(images).all()
    assert images[0, :8, :8].max() == 0 and images.max() > 0  # a black corner in an image that is not black


def test_the_decoded_image_check_runs_once_per_decode_for_pipelines_sharing_the_vae(models, monkeypatch):
    base = load_sdxl(models["sdxl"])
    refiner = load_sdxl_refiner(base, models["refiner"])
    assert refiner.vae is base.vae
    checks = []
    check = loaders.check_decoded_images
    monkeypatch.setattr(loaders, "check_decoded_images", lambda images: checks.append(images.shape) or check(images))
    generate(base)
    assert checks == [(1, 3, SIZE, SIZE)]


def test_the_decoder_compiles_whole_with_the_check_on(models):
    pipe = load_stable_diffusion(models["sd"])
    pipe.vae.decoder.compile(fullgraph=True, backend="eager")  # dynamo's tracing alone: a graph break raises
    assert np.isfinite(generate(pipe)).all()


def test_a_copied_vae_checks_its_own_decode(models):
    pipe = load_stable_diffusion(models["sd"])
    copy = deepcopy(pipe.vae)
    blacken_decoder(copy)
    latents = torch.zeros(1, 4, SIZE // 8, SIZE // 8)
    pipe.vae.decode(latents)  # the original decodes as before
    with pytest.raises(FloatingPointError, match="all-black image"):
        copy.decode(latents)


def test_an_all_black_batch_image_is_still_refused(models):
    pipe = load_stable_diffusion(models["sd"])
    blacken_decoder(pipe.vae)
    with pytest.raises(FloatingPointError, match="all-black image in torch.float32 \\(image 0 of the batch\\)"):
        generate(pipe)
    loaders.remove_decoded_image_check(pipe.vae)
    assert generate(pipe).max() == 0  # the check removed (gpu_check's random weights), the image comes back


# -- 8. fuse_qkv with a LoRA, the SDXL ControlNet default, process groups --------------------------------------------


def test_fuse_qkv_with_an_unfused_lora_is_refused_before_loading(models, tmp_path, monkeypatch):
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")
    stop_before_loading(monkeypatch)
    with pytest.raises(ValueError, match="`fuse_qkv` concatenates .* which drops the LoRA adapters"):
        load_stable_diffusion(models["sd"], lora=str(lora), fuse_qkv=True)
    with pytest.raises(StopBeforeLoading):  # fused into the weights first, the LoRA survives: allowed
        load_stable_diffusion(models["sd"], lora=str(lora), fuse_lora=True, fuse_qkv=True)


def test_an_sdxl_base_takes_the_sdxl_canny_controlnet_by_default(models, monkeypatch):
    asked = stop_before_loading(monkeypatch)
    with pytest.raises(StopBeforeLoading):
        load_controlnet_canny(models["sdxl"], sdxl=True)
    assert asked[0][:2] == (ControlNetModel, SDXL_CANNY_CONTROLNET)


def test_the_generate_command_takes_the_sdxl_canny_controlnet_for_an_sdxl_base(models, tmp_path, monkeypatch):
    from diffkit.cli.generate import main as generate_main

    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "photo.png")
    asked = stop_before_loading(monkeypatch)
    command = ["controlnet-canny", "--model", models["sdxl"], "--image", str(tmp_path / "photo.png")]
    with pytest.raises(StopBeforeLoading):
        generate_main([*command, "--prompt", "a robot", "--out", str(tmp_path / "out")])
    assert asked[0][:2] == (ControlNetModel, SDXL_CANNY_CONTROLNET)


def test_process_groups_of_any_backend_are_destroyed(monkeypatch):
    from diffkit.training.process_group import release_process_group

    destroyed = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda group=None: destroyed.append("nccl"))
    release_process_group()
    assert destroyed == ["nccl"]


def test_the_commands_destroy_an_nccl_process_group_too(monkeypatch):
    import accelerate

    from diffkit.cli import launched_processes

    destroyed = []

    class TwoNcclProcesses:  # what PartialState is on two GPUs
        num_processes, backend = 2, "nccl"

        def __init__(self, cpu=False):
            pass

        def destroy_process_group(self):
            destroyed.append(self.backend)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(accelerate, "PartialState", TwoNcclProcesses)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda group=None: "nccl")  # nothing to settle for NCCL
    with launched_processes():
        pass
    assert destroyed == ["nccl"]


# -- on a real GPU (`pytest -m cuda`; skipped without one) -----------------------------------------------------------

GPU_REASON = "needs a CUDA GPU: runs in `python -m benchmarks.gpu_check` (this project's CI has none)"
needs_a_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_REASON)


@pytest.mark.cuda
@needs_a_gpu
@pytest.mark.parametrize("with_fp16_files", [False, True], ids=["without_fp16_files", "with_fp16_files"])
def test_controlnet_in_fp16_on_the_gpu(models, with_fp16_files):
    pipe = load_controlnet_canny(models["sd"], models["controlnet_fp16" if with_fp16_files else "controlnet"])
    assert pipe.controlnet.dtype == torch.float16 and pipe.controlnet.device.type == "cuda"
    assert np.isfinite(generate(pipe, image=Image.new("RGB", (SIZE, SIZE), "white"))).all()


@pytest.mark.cuda
@needs_a_gpu
def test_a_compiled_unet_on_the_gpu(models):
    pipe = load_stable_diffusion(models["sd"], compile_unet=True)
    first, second = generate(pipe), generate(pipe)  # compiles, then reuses
    np.testing.assert_allclose(first, second, atol=1e-3)


@pytest.mark.cuda
@needs_a_gpu
@pytest.mark.parametrize("mode", ["int8", "int4", "float8", "nf4"])
def test_every_quantisation_mode_on_the_gpu(models, mode):
    try:
        pipe = load_stable_diffusion(models["sd"], quantize=mode)
    except ValueError as refusal:  # this GPU or installation cannot run it: the loader says why, before loading
        pytest.skip(f"refused here: {refusal}")
    assert pipe.unet.dtype == torch.bfloat16 and np.isfinite(generate(pipe)).all()


@pytest.mark.cuda
@needs_a_gpu
@pytest.mark.parametrize("memory", ["none", "model_offload", "sequential_offload"])
def test_the_refiner_under_each_memory_mode_on_the_gpu(models, memory):
    base = load_sdxl(models["sdxl"], memory=memory)
    refiner = load_sdxl_refiner(base, models["refiner"])
    assert refiner.placement == base.placement == (torch.device("cuda"), memory)
    for _ in range(2):  # the shared text encoder and VAE still work for both after each call
        latents = base(
            "a lion", num_inference_steps=4, denoising_end=0.5, height=SIZE, width=SIZE, output_type="latent"
        )
        images = refiner("a lion", image=latents.images, num_inference_steps=4, denoising_start=0.5, output_type="np")
        assert np.isfinite(images.images).all()
    assert np.isfinite(generate(base)).all()


@pytest.mark.cuda
@needs_a_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs: runs in gpu_check on such a machine")
@pytest.mark.slow
def test_two_processes_on_two_gpus(models, tmp_path):
    # launched here rather than through test_generate_processes, whose imports (training data) the GPU image lacks
    args = ["sd", "--model", models["sd"], "--prompt", "a cat", "--num_images", "4", "--batch_size", "1"]
    args += ["--steps", "2", "--width", str(SIZE), "--height", str(SIZE), "--out", str(tmp_path / "out")]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--main_process_port", str(free_port()), "-m", "diffkit.cli.generate", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    written = [line for line in result.stdout.splitlines() if line.endswith(".png")]
    assert len(written) == len(set(written)) == 4 and len(list((tmp_path / "out").iterdir())) == 4
