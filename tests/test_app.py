"""The web demo in-process: every tab driven through Gradio's Python client against the app served on 127.0.0.1."""

import threading

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from skimage.data import astronaut

from diffkit import ClassConditionalInpaintPipeline, TextConditionalImagePipeline, UnconditionalImagePipeline
from diffkit.demo import SAVED_SAMPLER, build_demo
from diffkit.pipelines.loaders import (
    load_controlnet_canny,
    load_sdxl,
    load_stable_diffusion,
    load_stable_diffusion_inpaint,
    load_upscaler,
    task_pipeline,
)

from .test_pipelines import make_class_pipeline
from .test_super_resolution import make_stage
from .test_text_pipeline import MAX_TEXT_LENGTH, tiny_text_unet
from .tiny_stable_diffusion import (
    save_clip_tokenizer,
    save_tiny_controlnet,
    save_tiny_sdxl,
    save_tiny_stable_diffusion,
    save_tiny_upscaler,
    tiny_text_encoder,
)
from .utils import TINY_CONDITION_UNET_CONFIG, TINY_UNET2D_CONFIG, free_port

STEPS = 3
SD_SIZE = 64  # pixels; the tiny SD latents are 8x8
MAX_IMAGES = 6
pytestmark = pytest.mark.filterwarnings("ignore:Running diffusion on the CPU")


class ConcurrencyProbe:
    """Forward hooks on UNets that record how many forward passes run at the same moment."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.threads = set()  # the threads that ran a UNet

    def attach(self, unet):
        unet.register_forward_pre_hook(self.enter)
        unet.register_forward_hook(self.leave)

    def enter(self, module, args):
        with self.lock:
            self.threads.add(threading.get_ident())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        threading.Event().wait(0.01)  # widen the window in which an overlap would be seen

    def leave(self, module, args, output):
        with self.lock:
            self.running -= 1


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-models")
    torch.manual_seed(0)
    pipes = {"digits": make_class_pipeline(UNet2DConditionModel(**TINY_CONDITION_UNET_CONFIG).eval())}
    torch.manual_seed(0)
    pipes["captions"] = TextConditionalImagePipeline(
        unet=tiny_text_unet(),
        scheduler=DDPMScheduler(num_train_timesteps=100),
        text_encoder=tiny_text_encoder(),
        tokenizer=save_clip_tokenizer(str(root / "tokenizer")),
        max_text_length=MAX_TEXT_LENGTH,
    )
    torch.manual_seed(0)
    pipes["noise to digits"] = UnconditionalImagePipeline(
        UNet2DModel(**TINY_UNET2D_CONFIG).eval(), DDPMScheduler(num_train_timesteps=100)
    )
    pipes["upscaler"] = make_stage(class_conditional=True, id2label={0: "cat", 1: "dog", 2: "bird"})
    sd_folder = save_tiny_stable_diffusion(str(root / "sd"))
    stable_diffusion = {
        "stable_diffusion": load_stable_diffusion(sd_folder, device="cpu"),
        "sdxl": load_sdxl(save_tiny_sdxl(str(root / "sdxl")), device="cpu"),
        "controlnet": load_controlnet_canny(
            sd_folder, save_tiny_controlnet(str(root / "cn"), sd_folder), device="cpu"
        ),
        "inpaint": load_stable_diffusion_inpaint(
            save_tiny_stable_diffusion(str(root / "sd_inpaint"), inpainting=True), device="cpu"
        ),
        "upscaler": load_upscaler(save_tiny_upscaler(str(root / "upscaler")), device="cpu"),
    }
    for pipe in [*pipes.values(), *stable_diffusion.values()]:
        pipe.set_progress_bar_config(disable=True)
    return pipes, stable_diffusion


@pytest.fixture(scope="module")
def app(pipes, tmp_path_factory):
    diffkit_pipes, stable_diffusion = pipes
    probe = ConcurrencyProbe()
    for pipe in [*diffkit_pipes.values(), *stable_diffusion.values()]:
        probe.attach(pipe.unet)
    demo = build_demo(diffkit_pipes, **stable_diffusion, max_images=MAX_IMAGES).queue(default_concurrency_limit=1)
    _, url, _ = demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True, footer_links=["api"]
    )
    yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads"))), probe
    demo.close()


def gallery_arrays(gallery):
    return [np.asarray(Image.open(item["image"])) for item in gallery]


def class_request(labels, num_images=2, guidance=3.0, steps=STEPS, sampler=SAVED_SAMPLER, seed=0, show=False):
    return (labels, num_images, guidance, steps, sampler, seed, show)


def test_the_api_has_one_endpoint_per_tab(app):
    client, _ = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate_digits", "/generate_captions", "/generate_noise_to_digits", "/generate_sd"} <= set(endpoints)
    assert {"/generate_sdxl", "/generate_controlnet_canny"} <= set(endpoints)
    assert {"/edit_digits", "/edit_captions", "/edit_noise_to_digits", "/upscale_upscaler"} <= set(endpoints)
    assert "/generate_upscaler" not in endpoints and "/edit_upscaler" not in endpoints


def test_the_api_takes_every_input_by_name(app):
    client, _ = app
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    names = {endpoint: [p["parameter_name"] for p in info["parameters"]] for endpoint, info in endpoints.items()}
    settings = ["num_images", "guidance_scale", "num_inference_steps", "sampler", "seed", "show_denoising"]
    assert names["/generate_digits"] == ["classes", *settings]
    assert names["/generate_captions"] == ["prompt", "negative_prompt", *settings]
    assert names["/generate_noise_to_digits"] == settings
    assert names["/edit_digits"] == ["classes", *settings, "image", "task", "strength", "noise_level"]
    assert names["/generate_sd"][:4] == ["prompt", "negative_prompt", "width", "height"]
    assert names["/generate_controlnet_canny"][:3] == ["image", "low_threshold", "high_threshold"]
    assert not any(name.startswith("param_") for parameters in names.values() for name in parameters)
    # and a client may call by those names, in any order: the same images as by position
    by_name = client.predict(
        seed=5,
        classes=["dog"],
        num_images=1,
        guidance_scale=3.0,
        num_inference_steps=STEPS,
        sampler=SAVED_SAMPLER,
        show_denoising=False,
        api_name="/generate_digits",
    )
    by_position = client.predict(*class_request(["dog"], num_images=1, seed=5), api_name="/generate_digits")
    np.testing.assert_array_equal(gallery_arrays(by_name[0]), gallery_arrays(by_position[0]))


def test_class_tab_makes_the_pipelines_images_by_label_name(app, pipes):
    client, _ = app
    gallery, info = client.predict(*class_request(["dog", "bird"], seed=5), api_name="/generate_digits")
    images = gallery_arrays(gallery)
    assert len(images) == 4 and all(image.shape == (8, 8) for image in images)  # 2 labels x 2, one grey channel
    assert [item["caption"] for item in gallery] == ["dog · seed 5", "dog · seed 6", "bird · seed 7", "bird · seed 8"]
    assert info.startswith("4 images of 8x8") and "DDPMScheduler, 3 steps, guidance 3" in info
    assert f"{torch.get_num_threads()} CPU thread" in info
    # image i is the pipeline's image for its label with seed + i alone: a user can make any one of them again
    pipe = pipes[0]["digits"]
    again = pipe(
        class_labels=["bird"],
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(8),
        output_type="np",
    ).images[0]
    np.testing.assert_array_equal(images[3], (again[..., 0] * 255).round().astype(np.uint8))


def test_samplers_and_guidance_change_the_images(app):
    client, _ = app
    base = gallery_arrays(client.predict(*class_request(["cat"]), api_name="/generate_digits")[0])
    for sampler in ("DDIM", "DPM-Solver++ 2M", "UniPC"):
        gallery, info = client.predict(*class_request(["cat"], sampler=sampler), api_name="/generate_digits")
        assert not np.array_equal(gallery_arrays(gallery)[0], base[0]), sampler
        assert sampler.split()[0].replace("-", "").replace("+", "") in info.replace("-", "")
    other_guidance = client.predict(*class_request(["cat"], guidance=0.0), api_name="/generate_digits")[0]
    assert not np.array_equal(gallery_arrays(other_guidance)[0], base[0])
    # the saved scheduler comes back after another sampler was used
    np.testing.assert_array_equal(
        gallery_arrays(client.predict(*class_request(["cat"]), api_name="/generate_digits")[0]), base
    )


def test_show_the_denoising_streams_the_predicted_clean_images(app):
    client, _ = app
    job = client.submit(*class_request(["dog"], num_images=1, steps=4, show=True), api_name="/generate_digits")
    final_gallery, final_info = job.result()
    outputs = job.outputs()
    previews = [info for _, info in outputs[:-1]]
    # the first step is always shown, and the last one; steps between them only every PREVIEW_INTERVAL_S
    assert previews[0] == "Step 1/4: the clean images predicted so far." and previews[-1].startswith("Step 4/4")
    assert final_info.startswith("1 image of 8x8")
    first_preview = gallery_arrays(outputs[0][0])[0]
    assert first_preview.shape == (8, 8) and not np.array_equal(first_preview, gallery_arrays(final_gallery)[0])
    # streaming changes nothing in the result
    plain = client.predict(*class_request(["dog"], num_images=1, steps=4), api_name="/generate_digits")[0]
    np.testing.assert_array_equal(gallery_arrays(plain)[0], gallery_arrays(final_gallery)[0])


def test_text_tab(app):
    client, _ = app
    gallery, info = client.predict(
        "a handwritten seven", "", 3, 4.0, STEPS, SAVED_SAMPLER, 0, False, api_name="/generate_captions"
    )
    assert [image.shape for image in gallery_arrays(gallery)] == [(8, 8)] * 3
    assert gallery[0]["caption"] == "a handwritten seven · seed 0" and "guidance 4" in info
    negative = client.predict(
        "a handwritten seven", "a three", 3, 4.0, STEPS, SAVED_SAMPLER, 0, False, api_name="/generate_captions"
    )[0]
    assert not np.array_equal(gallery_arrays(negative)[0], gallery_arrays(gallery)[0])


def test_unconditional_tab(app):
    client, _ = app
    gallery, info = client.predict(5, 1.0, STEPS, SAVED_SAMPLER, 0, True, api_name="/generate_noise_to_digits")
    assert [image.shape for image in gallery_arrays(gallery)] == [(8, 8)] * 5
    assert [item["caption"] for item in gallery] == [f"seed {i}" for i in range(5)]
    assert "guidance" not in info


def test_stable_diffusion_and_sdxl_tabs(app):
    client, _ = app
    gallery, info = client.predict(
        "a cat", "", SD_SIZE, SD_SIZE + 16, 2, 2, 7.5, "euler_a", 0, api_name="/generate_sd"
    )
    assert [image.shape for image in gallery_arrays(gallery)] == [(SD_SIZE + 16, SD_SIZE, 3)] * 2
    assert "EulerAncestralDiscreteScheduler, 2 steps" in info
    gallery, _ = client.predict(
        "a cat", "blurry", SD_SIZE, SD_SIZE, 1, 2, 5.0, SAVED_SAMPLER, 0, api_name="/generate_sdxl"
    )
    assert [image.shape for image in gallery_arrays(gallery)] == [(SD_SIZE, SD_SIZE, 3)]


def test_controlnet_tab_shows_the_edges_beside_the_result(app, tmp_path):
    client, _ = app
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).resize((SD_SIZE + 5, SD_SIZE + 3)).save(photo)
    edges, gallery, _ = client.predict(
        handle_file(str(photo)),
        50,
        150,
        "a robot",
        "",
        1,
        2,
        7.5,
        SAVED_SAMPLER,
        0,
        api_name="/generate_controlnet_canny",
    )
    edge_pixels = np.asarray(Image.open(edges))
    assert edge_pixels.shape == (SD_SIZE, SD_SIZE, 3)  # cropped to multiples of 8
    assert set(np.unique(edge_pixels)) <= {0, 255} and edge_pixels.max() == 255
    assert [image.shape for image in gallery_arrays(gallery)] == [(SD_SIZE, SD_SIZE, 3)]
    # the thresholds reach canny: a higher low threshold keeps fewer edge pixels
    fewer = client.predict(
        handle_file(str(photo)),
        140,
        150,
        "a robot",
        "",
        1,
        2,
        7.5,
        SAVED_SAMPLER,
        0,
        api_name="/generate_controlnet_canny",
    )[0]
    assert (np.asarray(Image.open(fewer)) > 0).sum() < (edge_pixels > 0).sum()


@pytest.fixture(scope="module")
def edit_files(tmp_path_factory):
    """An 8x8 grey digit, and an editor layer painted (opaque white) over its bottom half."""
    folder = tmp_path_factory.mktemp("edit")
    digit = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(digit).save(folder / "digit.png")
    layer = np.zeros((8, 8, 4), dtype=np.uint8)
    layer[4:] = 255
    Image.fromarray(layer, "RGBA").save(folder / "painted.png")
    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8), "RGBA").save(folder / "unpainted.png")
    return folder, digit


def editor_value(folder, layer="painted.png"):
    background = handle_file(str(folder / "digit.png"))
    return {"background": background, "layers": [handle_file(str(folder / layer))], "composite": background}


def edit_request(
    condition,
    folder,
    task="inpaint",
    num_images=2,
    guidance=3.0,
    steps=STEPS,
    seed=0,
    show=False,
    strength=0.6,
    noise_level=0.2,
    layer="painted.png",
):
    return (
        *condition,
        num_images,
        guidance,
        steps,
        SAVED_SAMPLER,
        seed,
        show,
        editor_value(folder, layer),
        task,
        strength,
        noise_level,
    )


def test_class_tab_inpaints_what_was_painted_as_the_pipeline_does(app, pipes, edit_files):
    client, _ = app
    folder, digit = edit_files
    gallery, info = client.predict(*edit_request([["dog"]], folder, seed=3), api_name="/edit_digits")
    images = gallery_arrays(gallery)
    assert [item["caption"] for item in gallery] == ["dog · seed 3", "dog · seed 4"]
    assert info.startswith("2 images of 8x8") and "inpaint: DDPMScheduler, 3 steps, guidance 3" in info
    for image in images:
        np.testing.assert_array_equal(image[:4], digit[:4])  # the unpainted half is kept exactly
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[4:] = 255
    again = ClassConditionalInpaintPipeline.from_pipe(pipes[0]["digits"])(
        image=digit,
        mask_image=mask,
        class_labels=["dog"],
        num_images_per_label=2,
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="np",
    ).images
    np.testing.assert_array_equal(images, (again[..., 0] * 255).round().astype(np.uint8))


def test_edit_modes_of_the_text_and_unconditional_tabs_stream_the_denoising(app, edit_files):
    client, _ = app
    folder, digit = edit_files
    job = client.submit(
        *edit_request(["a handwritten seven", ""], folder, task="img2img", num_images=1, strength=0.67, show=True),
        api_name="/edit_captions",
    )
    gallery, info = job.result()
    previews = [text for _, text in job.outputs()[:-1]]
    # 0.67 of 3 steps: the last 2 run, and the progress counts those
    assert previews[0] == "Step 1/2: the clean images predicted so far." and "img2img:" in info
    assert "strength 0.67" in info and gallery_arrays(gallery)[0].shape == (8, 8)
    unchanged = client.predict(
        *edit_request(["a handwritten seven", ""], folder, task="img2img", num_images=1, strength=0.0),
        api_name="/edit_captions",
    )[0]
    np.testing.assert_array_equal(gallery_arrays(unchanged)[0], digit)
    gallery, info = client.predict(
        *edit_request([], folder, task="denoise", num_images=2, noise_level=0.3), api_name="/edit_noise_to_digits"
    )
    assert len(gallery) == 2 and "denoise: DDPMScheduler" in info and "noise level 0.3" in info
    gallery, _ = client.predict(*edit_request([], folder, num_images=1), api_name="/edit_noise_to_digits")
    np.testing.assert_array_equal(gallery_arrays(gallery)[0][:4], digit[:4])


@pytest.mark.parametrize(
    "api_name, request_values, message",
    [
        ("/generate_digits", class_request(["eleven"]), "unknown label name 'eleven'; known names are ['cat', "),
        ("/generate_digits", class_request(["cat", "dog", "bird"], num_images=3), "at most 6 per request"),
        ("/generate_digits", class_request([]), "`class_labels` must name at least one class"),
        # the sliders and dropdowns check their own ranges and choices, with Gradio's messages
        ("/generate_digits", class_request(["cat"], steps=0), "Value 0 is less than minimum value 1"),
        ("/generate_digits", class_request(["cat"], sampler="LMS"), "Value: LMS is not in the list of choices"),
        (
            "/generate_sd",
            ("a cat", "", 100, SD_SIZE, 1, 2, 7.5, SAVED_SAMPLER, 0),
            "`width` 100 must be a positive multiple of 8 (e.g. 96)",
        ),
        ("/generate_sd", ("", "", SD_SIZE, SD_SIZE, 1, 2, 7.5, SAVED_SAMPLER, 0), "`prompt` is empty"),
        (
            "/generate_controlnet_canny",
            (None, 100, 200, "a robot", "", 1, 2, 7.5, SAVED_SAMPLER, 0),
            "`image` is missing: upload a photo",
        ),
        (
            "/edit_digits",
            ([["cat"]], 1, 3.0, STEPS, SAVED_SAMPLER, 0, False, None, "inpaint", 0.6, 0.2),
            "`image` is missing: upload the image to edit",
        ),
        ("/edit_digits", "EDIT unpainted", "Nothing is painted: paint over the part of the image to fill"),
        ("/edit_digits", "EDIT strength 0.1", "`strength` 0.1 of 3 steps gives no denoising step"),
    ],
)
def test_bad_input_gets_a_message_and_the_app_keeps_serving(app, edit_files, api_name, request_values, message):
    client, _ = app
    if request_values == "EDIT unpainted":
        request_values = edit_request([["cat"]], edit_files[0], layer="unpainted.png")
    elif request_values == "EDIT strength 0.1":
        request_values = edit_request([["cat"]], edit_files[0], task="img2img", strength=0.1)
    with pytest.raises(AppError) as error:
        client.predict(*request_values, api_name=api_name)
    assert message in str(error.value) and "Traceback" not in str(error.value)
    gallery, _ = client.predict(*class_request(["cat"], num_images=1), api_name="/generate_digits")
    assert len(gallery) == 1


def upscale_request(image, label="dog", num_images=2, noise_level=0.2, guidance=1.0, steps=STEPS, seed=0, show=False):
    return (image, label, num_images, noise_level, guidance, steps, SAVED_SAMPLER, seed, show)


def test_upscale_tab_gives_the_pipelines_images_and_streams_the_denoising(app, pipes, tmp_path):
    client, _ = app
    small = np.random.default_rng(1).integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    gallery, info = client.predict(
        *upscale_request(handle_file(str(tmp_path / "small.png")), seed=3), api_name="/upscale_upscaler"
    )
    images = gallery_arrays(gallery)
    assert [item["caption"] for item in gallery] == ["dog · seed 3", "dog · seed 4"]
    assert info.startswith("2 images of 8x8") and "upscale: DDPMScheduler, 3 steps, noise level 0.2" in info
    again = pipes[0]["upscaler"](
        image=small,
        class_labels="dog",
        num_images_per_image=2,
        num_inference_steps=STEPS,
        noise_level=0.2,
        guidance_scale=1.0,
        generator=[torch.Generator().manual_seed(s) for s in (3, 4)],
        output_type="np",
    ).images
    np.testing.assert_array_equal(images, (again[..., 0] * 255).round().astype(np.uint8))
    job = client.submit(
        *upscale_request(handle_file(str(tmp_path / "small.png")), num_images=1, show=True),
        api_name="/upscale_upscaler",
    )
    job.result()
    assert job.outputs()[0][1] == "Step 1/3: the clean images predicted so far."


@pytest.mark.parametrize(
    "request_values, message",
    [
        (upscale_request(None), "No image was given: upload the image to upscale"),
        ("SMALL eleven", "unknown label name 'eleven'"),
        ("WIDE", "is 6x4, but this stage upscales square 4x4 images"),
    ],
)
def test_bad_upscale_input_gets_a_message(app, tmp_path, request_values, message):
    client, _ = app
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "wide.png")
    if request_values == "SMALL eleven":
        request_values = upscale_request(handle_file(str(tmp_path / "small.png")), label="eleven")
    elif request_values == "WIDE":
        request_values = upscale_request(handle_file(str(tmp_path / "wide.png")))
    with pytest.raises(AppError) as error:
        client.predict(*request_values, api_name="/upscale_upscaler")
    assert message in str(error.value) and "Traceback" not in str(error.value)


def test_every_request_runs_its_model_on_the_one_compute_thread(app):
    """One long-lived thread runs all model work (a new thread per request was up to 2.3x slower; the speed is in
    benchmarks/bench_app.py). This test runs after requests to every kind of tab; UNet calls the tests make
    themselves, on this thread, are left out."""
    client, probe = app
    for _ in range(2):
        client.predict(*class_request(["cat"], num_images=1), api_name="/generate_digits")
        client.predict("a cat", "", SD_SIZE, SD_SIZE, 1, 2, 7.5, SAVED_SAMPLER, 0, api_name="/generate_sd")
    app_threads = probe.threads - {threading.get_ident()}
    assert len(app_threads) == 1


def test_canny_thresholds_in_the_wrong_order_get_canny_s_message(app, tmp_path):
    client, _ = app
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).resize((SD_SIZE, SD_SIZE)).save(photo)
    with pytest.raises(AppError) as error:
        client.predict(
            handle_file(str(photo)),
            200,
            100,
            "a robot",
            "",
            1,
            2,
            7.5,
            SAVED_SAMPLER,
            0,
            api_name="/generate_controlnet_canny",
        )
    assert "0 <= low_threshold < high_threshold <= 255" in str(error.value)


def test_two_sessions_queue_instead_of_running_at_once(app):
    client, probe = app
    other_session = Client(client.src, verbose=False, download_files=client.download_files)
    probe.most_at_once = 0
    jobs = [
        client.submit(*class_request(["cat", "dog"], num_images=3, steps=8), api_name="/generate_digits"),
        other_session.submit(*class_request(["bird"], num_images=3, steps=8), api_name="/generate_digits"),
        other_session.submit(6, 1.0, 8, SAVED_SAMPLER, 0, False, api_name="/generate_noise_to_digits"),
        client.submit("a cat", "", SD_SIZE, SD_SIZE, 1, 4, 7.5, SAVED_SAMPLER, 0, api_name="/generate_sd"),
    ]
    assert [len(job.result()[0]) for job in jobs] == [6, 3, 6, 1]
    assert probe.most_at_once == 1


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """A photo at SD_SIZE, and an editor layer painted (opaque white) over its middle."""
    folder = tmp_path_factory.mktemp("sd-edit")
    Image.fromarray(astronaut()).resize((SD_SIZE, SD_SIZE)).save(folder / "photo.png")
    layer = np.zeros((SD_SIZE, SD_SIZE, 4), dtype=np.uint8)
    layer[16:48, 16:48] = 255
    Image.fromarray(layer, "RGBA").save(folder / "painted.png")
    return folder


def sd_edit_request(folder, prompt="a cat", strength=0.5, blur=0, num_images=1, steps=2, seed=0, layer=True):
    background = handle_file(str(folder / "photo.png"))
    editor = {
        "background": background,
        "layers": [handle_file(str(folder / "painted.png"))] if layer else [],
        "composite": background,
    }
    return (editor, prompt, "", strength, blur, num_images, steps, 7.5, SAVED_SAMPLER, seed)


def test_sd_img2img_tab_gives_the_img2img_pipelines_images(app, pipes, photo_files):
    client, _ = app
    gallery, info = client.predict(*sd_edit_request(photo_files, num_images=2, seed=4), api_name="/img2img_sd")
    assert [image.shape for image in gallery_arrays(gallery)] == [(SD_SIZE, SD_SIZE, 3)] * 2
    assert "img2img: DDIMScheduler, 2 steps, strength 0.5" in info
    pipe = task_pipeline(pipes[1]["stable_diffusion"], "img2img")
    with Image.open(photo_files / "photo.png") as photo:
        expected = pipe(
            "a cat",
            image=photo.convert("RGB"),
            strength=0.5,
            num_inference_steps=2,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(5)],
            output_type="np",
        ).images[0]
    np.testing.assert_allclose(gallery_arrays(gallery)[1] / 255, expected, atol=1 / 255 + 1e-6)


def test_inpaint_tab_redraws_what_was_painted(app, photo_files):
    client, _ = app
    gallery, info = client.predict(*sd_edit_request(photo_files, strength=1.0, blur=4), api_name="/inpaint_sd")
    assert gallery_arrays(gallery)[0].shape == (SD_SIZE, SD_SIZE, 3) and info.startswith("1 image of 64x64")
    with pytest.raises(AppError, match="Nothing is painted"):
        client.predict(*sd_edit_request(photo_files, layer=False), api_name="/inpaint_sd")


def test_upscaler_tab_upscales_four_times_in_one_piece_or_in_tiles(app, tmp_path):
    client, _ = app
    Image.fromarray(astronaut()).resize((24, 16)).save(tmp_path / "small.png")
    small = handle_file(str(tmp_path / "small.png"))
    whole, info = client.predict(small, "a cat", "", 20, 0, 1, 2, 7.5, 0, api_name="/upscale_x4")
    tiled, tiled_info = client.predict(small, "a cat", "", 20, 16, 1, 2, 7.5, 0, api_name="/upscale_x4")
    assert gallery_arrays(whole)[0].shape == gallery_arrays(tiled)[0].shape == (64, 96, 3)
    assert "noise level 20" in info and "tiles of 16 px" in tiled_info


@pytest.mark.parametrize(
    "api_name, request_values, message",
    [
        ("/img2img_sd", "strength 0.01", "runs no denoising step"),
        ("/img2img_sd", "no prompt", "`prompt` is empty"),
        ("/upscale_x4", "large", "larger than 256 px a side"),
        ("/upscale_x4", "no image", "`image` is missing: upload the image to upscale"),
    ],
)
def test_bad_image_task_input_gets_a_message(app, photo_files, tmp_path, api_name, request_values, message):
    client, _ = app
    Image.fromarray(astronaut()).resize((264, 64)).save(tmp_path / "large.png")
    request_values = {
        "strength 0.01": sd_edit_request(photo_files, strength=0.01),
        "no prompt": sd_edit_request(photo_files, prompt=""),
        "large": (handle_file(str(tmp_path / "large.png")), "a cat", "", 20, 0, 1, 2, 7.5, 0),
        "no image": (None, "a cat", "", 20, 0, 1, 2, 7.5, 0),
    }[request_values]
    with pytest.raises(AppError) as error:
        client.predict(*request_values, api_name=api_name)
    assert message in str(error.value) and "Traceback" not in str(error.value)
