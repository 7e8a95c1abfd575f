"""Quantised weights (`quantize=`, `--quantize`) and LoRA adapters (`lora=`, `--lora`) on a tiny random Stable
Diffusion, and `--quantize int8` / `--compile` on a diffkit model: the int8 mode that runs on the CPU is run, the
CUDA-only modes are refused before loading. The LoRA files are made here with peft, in diffusers' format and in the
kohya/A1111 key format that diffusers converts."""

import importlib.metadata
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file

from diffkit.cli import PNG_METADATA_KEY
from diffkit.cli.edit import main as edit_main
from diffkit.cli.generate import main as generate_main
from diffkit.pipelines import loaders
from diffkit.pipelines.loaders import load_stable_diffusion, task_pipeline
from diffkit.pipelines.quantization import stored_bytes
from diffkit.pipelines.stable_diffusion_options import check_loras, check_quantize, parse_lora

from .test_edit_command import files  # noqa: F401 (a fixture)
from .tiny_stable_diffusion import save_tiny_stable_diffusion

pytestmark = pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")
NEEDS_TORCHAO = pytest.mark.skipif(
    importlib.util.find_spec("torchao") is None,
    reason="torchao is not installed: the test command installs it (`pip install -e '.[test]'`), and CI runs this",
)
NEEDS_PEFT = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="peft is not installed: the test command installs it (`pip install -e '.[test]'`), and CI runs this",
)
LORA_RANK = 4
MIN_INT8_PSNR = 30  # dB against the fp32 image: the bar


def generate(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe("a photo of a cat", num_inference_steps=2, generator=generator, output_type="np").images


def psnr(a, b) -> float:
    return float(10 * np.log10(1 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_stable_diffusion(str(tmp_path_factory.mktemp("tiny_sd") / "sd"))


def kohya_keys(diffusers_state: dict) -> dict:
    """diffusers' LoRA keys (`unet.a.b.lora.down.weight`) as kohya/A1111 writes them (`lora_unet_a_b.lora_down.weight`,
    with an `.alpha` per module)."""
    converted = {}
    for key, value in diffusers_state.items():
        module, part = key[len("unet.") :].rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        converted[f"{name}.lora_{part}"] = value
        if part.startswith("down"):
            converted[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))
    return converted


@pytest.fixture(scope="module")
def lora_files(sd_folder, tmp_path_factory):
    """A LoRA trained by nobody: peft's adapter on the tiny UNet's attention, with random (non-zero) weights."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    root = tmp_path_factory.mktemp("loras")
    unet = StableDiffusionPipeline.from_pretrained(sd_folder).unet
    unet.add_adapter(
        LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.5 for k, v in get_peft_model_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(
        str(root / "diffusers"), unet_lora_layers=convert_state_dict_to_diffusers(state)
    )
    diffusers_file = str(root / "diffusers" / "pytorch_lora_weights.safetensors")
    saved = load_file(diffusers_file)
    save_file(kohya_keys(saved), str(root / "kohya.safetensors"))
    # made for a UNet whose attention is one channel wider: the usual SDXL-LoRA-on-SD-1.5 mistake, in small
    save_file({k: torch.randn(v.shape[0], v.shape[1] + 1) if ".down." in k else v for k, v in saved.items()},
              str(root / "wider.safetensors"))  # fmt: skip
    save_file({"unet.no_such_block.proj.lora.down.weight": torch.randn(LORA_RANK, 8),
               "unet.no_such_block.proj.lora.up.weight": torch.randn(8, LORA_RANK)},
              str(root / "unfitting.safetensors"))  # fmt: skip
    return {
        "folder": str(root / "diffusers"),
        "diffusers": diffusers_file,
        "kohya": str(root / "kohya.safetensors"),
        "wider": str(root / "wider.safetensors"),
        "unfitting": str(root / "unfitting.safetensors"),
    }


@NEEDS_TORCHAO
def test_int8_weights_take_less_memory_and_stay_close_to_full_precision(sd_folder):
    full = load_stable_diffusion(sd_folder, device="cpu")
    int8 = load_stable_diffusion(sd_folder, device="cpu", quantize="int8")
    linear = int8.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert type(linear.weight).__module__.startswith("torchao"), type(linear.weight)
    text_linear = next(m for m in int8.text_encoder.modules() if isinstance(m, torch.nn.Linear))
    assert type(text_linear.weight) is torch.nn.Parameter  # the text encoder keeps its weights
    assert stored_bytes(int8.unet) < 0.8 * stored_bytes(full.unet)
    assert int8.unet.dtype == torch.float32 and int8.vae.dtype == torch.float32
    full_image, int8_image = generate(full), generate(int8)
    assert not np.array_equal(full_image, int8_image)  # the weights did change
    assert psnr(full_image, int8_image) >= MIN_INT8_PSNR


@NEEDS_TORCHAO
@pytest.mark.parametrize(
    "options, message",
    [
        ({"quantize": "int3"}, "`quantize` 'int3' is not one of"),
        ({"quantize": "int4"}, "runs on CUDA only, and the device is cpu: use quantize='int8'"),
        ({"quantize": "float8"}, "runs on CUDA with compute capability 8.9"),
        ({"quantize": "nf4"}, "runs on CUDA only"),
        ({"quantize": "int8", "fuse_qkv": True}, "`fuse_qkv` concatenates the Q, K and V weights"),
        ({"quantize": "int8", "lora": "x.safetensors", "fuse_lora": True}, "does not exist"),
        ({"fuse_lora": True}, "`fuse_lora` fuses the adapters of `lora`"),
        ({"lora": "missing/dir/style.safetensors"}, "`lora` 'missing/dir/style.safetensors' does not exist"),
    ],
)
def test_bad_quantize_and_lora_options_are_refused_before_loading(sd_folder, monkeypatch, options, message):
    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the options were checked")

    monkeypatch.setattr(loaders, "load_with_variant", must_not_load)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_stable_diffusion(sd_folder, device="cpu", **options)


@NEEDS_TORCHAO
def test_fusing_a_lora_into_quantised_weights_is_refused(sd_folder, lora_files):
    with pytest.raises(ValueError, match="`fuse_lora` adds the adapters into the weights, which quantize='int8'"):
        load_stable_diffusion(sd_folder, device="cpu", quantize="int8", lora=lora_files["diffusers"], fuse_lora=True)


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed: nothing to refuse"
)
def test_a_backend_that_is_not_installed_is_named_with_its_extra():
    with pytest.raises(
        ValueError, match=r"'nf4' quantises with bitsandbytes, which is not installed: `pip install 'diffkit\[nf4\]'"
    ):
        check_quantize("nf4")


@NEEDS_TORCHAO
def test_torchao_modes_need_diffusers_0_36(monkeypatch):
    installed = importlib.metadata.version

    def old_diffusers(name):
        return "0.35.2" if name == "diffusers" else installed(name)

    monkeypatch.setattr(importlib.metadata, "version", old_diffusers)
    with pytest.raises(ValueError, match=r"'int8' needs diffusers >= 0.36 \(installed: 0.35.2\)"):
        check_quantize("int8")


def test_lora_arguments_parse_and_refuse_pickles(tmp_path):
    assert parse_lora("style.safetensors:0.7") == ("style.safetensors", 0.7)
    assert parse_lora("org/style-lora") == ("org/style-lora", 1.0)
    assert parse_lora(r"C:\loras\style.safetensors") == (r"C:\loras\style.safetensors", 1.0)
    pickled = tmp_path / "style.bin"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match="not a .safetensors file; pickled LoRA files"):
        check_loras(str(pickled))
    assert check_loras([("org/style-lora", 0.5), "org/other"]) == [("org/style-lora", 0.5), ("org/other", 1.0)]


@NEEDS_PEFT
def test_lora_in_diffusers_and_kohya_format_loads_alike_and_fuses(sd_folder, lora_files):
    base = generate(load_stable_diffusion(sd_folder, device="cpu"))
    adapted = load_stable_diffusion(sd_folder, device="cpu", lora=lora_files["diffusers"])
    assert adapted.get_active_adapters() == ["lora_0"]
    with_lora = generate(adapted)
    assert np.abs(with_lora - base).max() > 0.1  # the adapter changes the image
    for source in (lora_files["kohya"], lora_files["folder"]):
        np.testing.assert_allclose(generate(load_stable_diffusion(sd_folder, device="cpu", lora=source)), with_lora)
    half = generate(load_stable_diffusion(sd_folder, device="cpu", lora=[(lora_files["diffusers"], 0.5)]))
    assert np.abs(half - with_lora).max() > 0.05  # the scale is applied
    fused = load_stable_diffusion(sd_folder, device="cpu", lora=[(lora_files["diffusers"], 0.5)], fuse_lora=True)
    attention = fused.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert type(attention.to_q) is torch.nn.Linear  # no adapter layer is left to run each step
    np.testing.assert_allclose(generate(fused), half, atol=1e-4)
    # two adapters at once, each with its weight: the same LoRA twice at 0.25 is the LoRA at 0.5
    twice = load_stable_diffusion(
        sd_folder, device="cpu", lora=[(lora_files["diffusers"], 0.25), (lora_files["kohya"], 0.25)]
    )
    np.testing.assert_allclose(generate(twice), half, atol=1e-4)


@NEEDS_PEFT
@NEEDS_TORCHAO
def test_a_lora_runs_beside_int8_weights(sd_folder, lora_files):
    full = generate(load_stable_diffusion(sd_folder, device="cpu", lora=lora_files["diffusers"]))
    int8 = generate(load_stable_diffusion(sd_folder, device="cpu", quantize="int8", lora=lora_files["diffusers"]))
    assert psnr(full, int8) >= MIN_INT8_PSNR


@NEEDS_PEFT
def test_a_folder_with_only_a_pickled_lora_is_not_unpickled(sd_folder, tmp_path):
    folder = tmp_path / "pickled-lora"
    folder.mkdir()
    (folder / "pytorch_lora_weights.bin").write_bytes(b"a pickle would run code here")
    with pytest.raises(
        ValueError, match="has no LoRA .safetensors file that loads .*pickled files \\(.bin\\) are not"
    ):
        load_stable_diffusion(sd_folder, device="cpu", lora=str(folder))


@NEEDS_PEFT
@pytest.mark.parametrize(
    "name, message",
    [("wider", "does not fit this StableDiffusionPipeline: it was made for another model"), ("unfitting", "")],
)
def test_a_lora_for_another_model_is_a_clear_error(sd_folder, lora_files, name, message):
    with pytest.raises(ValueError, match=f"`lora` '{lora_files[name]}' (does not fit|holds no key)") as error:
        load_stable_diffusion(sd_folder, device="cpu", lora=lora_files[name])
    assert message in str(error.value)


@NEEDS_PEFT
@NEEDS_TORCHAO
def test_generate_command_takes_lora_and_quantize(sd_folder, lora_files, tmp_path):
    common = ["sd", "--model", sd_folder, "--prompt", "a cat", "--steps", "2", "--width", "64", "--height", "64"]
    generate_main([*common, "--out", str(tmp_path / "plain")])
    generate_main(
        [*common, "--lora", f"{lora_files['kohya']}:0.5", "--quantize", "int8", "--out", str(tmp_path / "styled")]
    )
    with Image.open(tmp_path / "styled" / "sd-seed0-0.png") as png:
        parameters = json.loads(png.text[PNG_METADATA_KEY])
        styled = np.asarray(png)
    assert parameters["lora"] == [[lora_files["kohya"], 0.5]] and parameters["quantize"] == "int8"
    with Image.open(tmp_path / "plain" / "sd-seed0-0.png") as png:
        assert np.abs(np.asarray(png).astype(int) - styled).max() > 0
    with pytest.raises(ValueError, match="`--fuse_lora` fuses the --lora adapters"):
        generate_main([*common, "--fuse_lora", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="`--lora` 'nowhere.safetensors' does not exist"):
        generate_main([*common, "--lora", "nowhere.safetensors:0.8", "--out", str(tmp_path / "x")])
    assert not os.path.exists(tmp_path / "x")


@NEEDS_TORCHAO
def test_a_diffkit_model_samples_with_int8_weights_and_compiled(files, tmp_path):  # noqa: F811
    common = ["--model", str(files / "model"), "--class", "dog", "--steps", "2", "--num_images", "2"]
    generate_main([*common, "--out", str(tmp_path / "full")])
    generate_main([*common, "--quantize", "int8", "--out", str(tmp_path / "int8")])
    generate_main([*common, "--compile", "--out", str(tmp_path / "compiled")])
    for index in (0, 1):
        name = f"class_conditional-dog-seed0-{index}.png"
        full, int8, compiled = (np.asarray(Image.open(tmp_path / run / name)) for run in ("full", "int8", "compiled"))
        assert psnr(full / 255, int8 / 255) >= MIN_INT8_PSNR
        assert np.abs(full.astype(int) - compiled).max() <= 1  # compiled kernels may round differently
    with pytest.raises(ValueError, match="`--quantize` 'int4' runs on CUDA only, and the device is cpu"):
        generate_main([*common, "--quantize", "int4", "--device", "cpu", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="`--lora` is for the Stable Diffusion family"):
        generate_main([*common, "--lora", "org/style", "--out", str(tmp_path / "x")])


@NEEDS_TORCHAO
def test_diffkit_edit_takes_quantize(files):  # noqa: F811
    def edit(out, *flags):
        common = ["--pipeline", str(files / "model"), "--image", str(files / "digit.png"), "--class", "dog"]
        edit_main(["inpaint", *common, "--mask", str(files / "mask.png"), "--steps", "2", "--out", str(out), *flags])
        with Image.open(out / "inpaint-dog-seed0-0.png") as png:
            return np.asarray(png), json.loads(png.text[PNG_METADATA_KEY])

    full, _ = edit(files / "full")
    int8, settings = edit(files / "int8", "--quantize", "int8")  # --compile: the same loader, tested with generate
    assert settings["quantize"] == "int8" and settings["compile"] is False
    assert psnr(full / 255, int8 / 255) >= MIN_INT8_PSNR
    with pytest.raises(SystemExit):  # argparse's "invalid choice: 'int2' (choose from float8, int4, int8, nf4)"
        edit(files / "x", "--quantize", "int2")


@NEEDS_PEFT
@NEEDS_TORCHAO
def test_the_app_loads_a_lora_and_scales_it_per_request(sd_folder, lora_files, tmp_path):
    from gradio_client import Client

    from diffkit.app import parse_args as parse_app_args
    from diffkit.demo import build_demo

    from .utils import free_port

    args = parse_app_args(["--sd", sd_folder, "--lora", f"{lora_files['kohya']}:0.5", "--quantize", "int8"])
    assert args.lora == [(lora_files["kohya"], 0.5)] and args.quantize == "int8"
    with pytest.raises(ValueError, match="`--lora` 'gone.safetensors' does not exist"):
        parse_app_args(["--sd", sd_folder, "--lora", "gone.safetensors"])
    with pytest.raises(ValueError, match="`--quantize` 'int3' is not one of"):
        parse_app_args(["--sd", sd_folder, "--quantize", "int3"])

    pipe = load_stable_diffusion(sd_folder, device="cpu", lora=lora_files["diffusers"])
    demo = build_demo({}, stable_diffusion=pipe, max_images=2).queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False, download_files=str(tmp_path))
        request = dict(prompt="a photo of a cat", negative_prompt="", width=64, height=64, num_images=1)
        request.update(num_inference_steps=2, guidance_scale=7.5, sampler="as saved", seed=0, api_name="/generate_sd")
        images = {}
        for scale in (0.0, 1.0):
            gallery, info = client.predict(**request, lora_scale=scale)
            images[scale] = np.asarray(Image.open(gallery[0]["image"]))
            assert f"LoRA scale {scale:g}" in info
    finally:
        demo.close()
    without = generate(load_stable_diffusion(sd_folder, device="cpu"))[0]
    with_lora = generate(load_stable_diffusion(sd_folder, device="cpu", lora=lora_files["diffusers"]))[0]
    assert np.abs(images[0.0].astype(int) - np.round(without * 255)).max() <= 1  # scale 0: the base model
    assert np.abs(images[1.0].astype(int) - np.round(with_lora * 255)).max() <= 1
    assert np.abs(images[0.0].astype(int) - images[1.0]).max() > 10


def test_task_pipelines_share_the_modules_without_casting_them(sd_folder):
    """diffusers' `from_pipe` casts the shared modules to float32 unless told a dtype (a float16 pipeline, and the one
    it was made from, would double in memory), and cannot cast quantised ones: `task_pipeline` casts nothing."""
    half = load_stable_diffusion(sd_folder, device="cpu", dtype="fp16")
    img2img = task_pipeline(half, "img2img")
    assert img2img.unet is half.unet and img2img.vae is half.vae
    assert {half.unet.dtype, half.vae.dtype, half.text_encoder.dtype} == {torch.float16}
    assert img2img.config.requires_safety_checker == half.config.requires_safety_checker


@NEEDS_TORCHAO
def test_a_quantised_pipeline_makes_its_task_pipelines(sd_folder):
    int8 = load_stable_diffusion(sd_folder, device="cpu", quantize="int8")
    img2img = task_pipeline(int8, "img2img")
    img2img.set_progress_bar_config(disable=True)
    photo = Image.fromarray((generate(int8)[0] * 255).astype(np.uint8))
    edited = img2img("a dog", image=photo, strength=0.5, num_inference_steps=2, output_type="np").images
    assert edited.shape == (1, 64, 64, 3) and np.isfinite(edited).all()
