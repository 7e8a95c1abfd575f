"""The web demo's Gradio app: a tab per model, the models loaded and run on one compute thread.

`diffkit-app` (`app.py` beside this file) checks its flags, then calls `load_models` and `build_demo` here. This file
needs only torch, diffusers and gradio for diffkit pipelines (the Stable Diffusion tabs import diffkit's loaders), so
`diffkit-push --space_id` uploads it unchanged, as `diffkit_demo.py`, to run a Hugging Face Space.
"""

import concurrent.futures
import contextlib
import html
import inspect
import logging
import math
import os
import queue
import re
import threading
import time
from typing import Dict, List, Optional

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image, ImageChops

try:
    import gradio as gr
except ImportError as error:  # gradio is an optional dependency of diffkit
    raise ImportError(
        "The web demo needs Gradio: install it with `pip install -e '.[app]'` in diffkit's folder (or `pip install "
        "'gradio>=6,<7'`)."
    ) from error

try:  # installed diffkit classes load a diffkit folder without running the code saved beside the weights
    from diffkit.pipelines import model_kinds

    DIFFKIT_INSTALLED = True
except ImportError:  # on a Hugging Face Space, where this file runs without diffkit, beside model_kinds.py and the
    import model_kinds  # editing pipelines' files that `diffkit-push --space_id` uploads

    DIFFKIT_INSTALLED = False

logger = logging.getLogger(__name__)

# The samplers a diffkit tab offers besides the saved one, built from the saved scheduler's config. DPM-Solver++ and
# UniPC threshold their clean-image estimate to the data range, as the bench's rows do (benchmarks/bench_sampling.py:
# on the default job of 2026-11-22 guided samples fell apart without it, 27-30% of digits recognised against 99%;
# on that of 2026-12-07 it changes little, 98.0% with and 98.5% without at 20 steps).
SAMPLERS = {
    "DDPM": (DDPMScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "DPM-Solver++ 2M": (DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}),
    "UniPC": (UniPCMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}),
}
SAVED_SAMPLER = "as saved"
MAX_GUIDANCE_SCALE = 20.0
# The app's LoRA scale slider reaches twice the --lora weights; beyond that LoRAs usually break the image.
MAX_LORA_SCALE = 2.0
# Requests share one queue slot so that two browser sessions never run models at once (they would split the cores).
MODEL_QUEUE = "models"
# The gallery shows a new set of predicted clean images at most this often while "Show the denoising" is on.
PREVIEW_INTERVAL_S = 0.2
CSS = """
.diffkit-gallery img, .diffkit-edited img { image-rendering: pixelated; }
.diffkit-error { color: var(--error-text-color); font-weight: 600; }
"""
EDIT_TASKS = ("inpaint", "img2img", "denoise")
# What the image editor's label asks for in each edit task.
EDITOR_LABELS = {
    "inpaint": "Image (paint over what to fill)",
    "img2img": "Image to redraw",
    "denoise": "Image to denoise",
}
# The inpainting brush: a see-through colour, so that the image shows through the paint and a white stroke of the
# image cannot be mistaken for it (the mask is wherever the paint layer is not transparent), and a radius of this
# fraction of the image's side (2 px on a 28 px digit; Gradio's own default covered a whole digit).
MASK_BRUSH_COLOUR = ("#ff3b30", 0.5)
MASK_BRUSH_FRACTION = 1 / 16
DEFAULT_STRENGTH = 0.6
DEFAULT_NOISE_LEVEL = 0.2
# The largest noise level the slider offers (images in [-1, 1]); the pipeline refuses one beyond its schedule.
MAX_NOISE_LEVEL = 4.0


def load_diffkit_pipeline(model: str, trust_remote_code: bool = False, device=None, dtype=None) -> DiffusionPipeline:
    r"""
    Load a diffkit pipeline from a folder or Hub repo for the demo, on `device` (CUDA when present) in `dtype`.

    The class named in `model_index.json` is taken from the installed diffkit when it is there, so no code from the
    folder runs; otherwise the code saved beside the weights is used, which `trust_remote_code=True` must allow.
    """
    try:
        model_index = DiffusionPipeline.load_config(model)
    except OSError as error:  # no model_index.json in the folder, or a repo that cannot be found or reached
        raise ValueError(f"`--model` {model!r} cannot be loaded as a pipeline: {error}") from None
    kind, task = model_kinds.saved_kind_and_task(model_index)
    class_name = model_kinds.saved_class_name(model_index)
    module_name = model_index["_class_name"][0] if isinstance(model_index.get("_class_name"), list) else None
    if kind not in model_kinds.DIFFKIT_KINDS:
        raise ValueError(
            f"`--model` {model!r} holds a {class_name}, not a diffkit pipeline; use `--sd` or `--sdxl` for Stable "
            "Diffusion models."
        )
    if DIFFKIT_INSTALLED:
        pipe = model_kinds.pipeline_class(kind, task).from_pretrained(model)
    elif not trust_remote_code:
        raise ValueError(
            f"`--model` {model!r} needs the code in its {module_name}.py, and diffkit is not installed here to "
            "load it instead: read that file, then pass `--trust_remote_code`."
        )
    else:
        pipe = DiffusionPipeline.from_pretrained(model, trust_remote_code=True)
    if task in (model_kinds.INPAINT, model_kinds.IMG2IMG):
        # a folder saved from an editing pipeline: its tab generates from the same weights
        pipe = model_kinds.pipeline_sharing_modules(model_kinds.pipeline_class(kind, model_kinds.GENERATE), pipe)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return pipe.to(device=device) if dtype is None else pipe.to(device=device, dtype=dtype)


def pipeline_kind(pipe) -> Optional[str]:
    """The kind of model a pipeline is (see `model_kinds`), from its class's name as a saved folder would give it."""
    return model_kinds.saved_kind_and_task({"_class_name": type(pipe).__name__})[0]


def editing_pipeline(pipe, task: str) -> DiffusionPipeline:
    """The inpainting (`task="inpaint"`) or img2img/denoising pipeline made from `pipe`, sharing its modules (and
    keeping their dtype, quantised or not): diffkit's installed class, or on a Space the pipeline file uploaded beside
    this app."""
    kind = pipeline_kind(pipe)
    task = model_kinds.INPAINT if task == model_kinds.INPAINT else model_kinds.IMG2IMG  # denoise is img2img
    try:
        pipeline_class = model_kinds.pipeline_class(kind, task)
    except ImportError:
        raise ValueError(
            f"Editing needs {model_kinds.pipeline_class_name(kind, task)}: install diffkit, or put its pipeline file "
            "beside this app."
        ) from None
    return model_kinds.pipeline_sharing_modules(pipeline_class, pipe)


def editor_image_and_mask(editor_value, task: str):
    """The uploaded image of the image editor, and for inpainting the mask: 255 wherever a layer was painted."""
    if not editor_value or editor_value.get("background") is None:
        raise ValueError("`image` is missing: upload the image to edit in the image editor.")
    image = editor_value["background"].convert("RGB")
    if task != "inpaint":
        return image, None
    mask = Image.new("L", image.size, 0)
    for layer in editor_value.get("layers") or []:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != image.size:
            raise ValueError(
                f"The painted mask is {alpha.size[0]}x{alpha.size[1]} but the image is {image.size[0]}x"
                f"{image.size[1]}: upload the image again and paint on it without resizing the canvas."
            )
        mask = ImageChops.lighter(mask, alpha)
    mask = mask.point(lambda value: 255 if value > 0 else 0)
    if mask.getbbox() is None:
        raise ValueError("Nothing is painted: paint over the part of the image to fill (the brush), then press Edit.")
    return image, mask


def pipeline_title(model: str) -> str:
    """The tab title: a folder's name, or a repo id."""
    return os.path.basename(os.path.normpath(model)) if os.path.isdir(model) else model


def api_name_for(title: str, taken: List[str], prefix: str = "generate_") -> str:
    """`generate_<title as an identifier>` (or another prefix), made unique among `taken`."""
    name = prefix + (re.sub(r"\W+", "_", title).strip("_").lower() or "pipeline")
    unique, index = name, 2
    while unique in taken:
        unique, index = f"{name}_{index}", index + 1
    taken.append(unique)
    return unique


@contextlib.contextmanager
def readable_errors():
    """Show a bad input (or a failed decode) as a message in the page rather than a server error."""
    try:
        yield
    except (ValueError, FloatingPointError) as error:
        raise gr.Error(str(error), print_exception=False) from None


def whole_number(value, argument: str, minimum: int = 1) -> int:
    """`value` from a slider or number box as an int; a `ValueError` names `argument` if it is not a whole number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if float(value).is_integer() and value >= minimum:
            return int(value)
    raise ValueError(f"`{argument}` must be a whole number >= {minimum}, but is {value!r}.")


def image_generators(seed, num_images: int) -> List[torch.Generator]:
    """Image i uses seed + i, so that any image of a request can be made again alone (CPU generators, the same
    images on any device)."""
    seed = whole_number(seed, "seed", minimum=0)
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]


def image_side(pipe) -> int:
    """The side of a diffkit pipeline's images: the UNet's sample size, times the VAE's down factor for a latent
    model."""
    sample_size = pipe.unet.config.sample_size
    side = min(sample_size) if isinstance(sample_size, (list, tuple)) else sample_size
    if getattr(pipe, "vae", None) is not None:
        side *= 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return side


def tensor_to_pil(images: torch.Tensor) -> List[Image.Image]:
    """(batch, channels, height, width) in [-1, 1] to PIL images (grey for one channel)."""
    pixels = ((images.float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]


class GenerationCancelled(Exception):
    """Raised in the denoising loop when the request that started it has gone away."""


# Every torch call of the app (loading the models, denoising, turning previews into images) runs on this one
# long-lived thread. Each thread that runs torch's CPU kernels gets its own OpenMP (libgomp) thread team; once the
# teams of two threads hold more threads than there are cores, libgomp stops spinning between parallel regions and
# every region waits for its sleeping threads to wake. A pipeline run on a new thread per request, or on another
# thread than the one that loaded it, took up to 2.3x as long as calling it directly (benchmarks/bench_app.py).
COMPUTE_THREAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffkit-compute")


def on_compute_thread(function, *args, **kwargs):
    """`function(*args, **kwargs)`, run on the app's compute thread (see `COMPUTE_THREAD`); waits for its result."""
    return COMPUTE_THREAD.submit(function, *args, **kwargs).result()


def stream_pipeline(pipe, call_kwargs: Dict, captions: List[str], show_denoising: bool, progress, summary: str):
    r"""
    Run `pipe(**call_kwargs)` on the app's compute thread and yield `(gallery, info)` while it denoises: the progress
    bar moves every step, and with `show_denoising` the gallery shows the predicted clean images (at most every
    `PREVIEW_INTERVAL_S`). The last item holds the final images. An error of the pipeline is raised here; if the
    request goes away, the loop is stopped before the next request may start.
    """
    events = queue.Queue()
    cancelled = threading.Event()
    last_preview = [0.0]  # when the compute thread last sent a preview
    preview_inputs = ["pred_original_sample"] if show_denoising else []

    def on_step_end(pipe, step_index, timestep, callback_kwargs):
        if cancelled.is_set():
            raise GenerationCancelled()
        # the steps this call runs (img2img runs the last part of the schedule), where the pipeline says
        num_steps = max(getattr(pipe, "num_timesteps", None) or len(pipe.scheduler.timesteps), step_index + 1)
        frames = None
        preview_due = time.perf_counter() - last_preview[0] >= PREVIEW_INTERVAL_S or step_index + 1 == num_steps
        if show_denoising and preview_due:
            last_preview[0] = time.perf_counter()
            prediction = callback_kwargs["pred_original_sample"]
            if getattr(pipe, "vae", None) is not None:  # a latent model predicts latents: show their decoding
                prediction = pipe.decode_latents(prediction)
            frames = tensor_to_pil(prediction)  # here, on the compute thread
        events.put(("step", step_index + 1, num_steps, frames))
        return {}

    def run():
        try:
            output = pipe(
                **call_kwargs,
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=preview_inputs or ["latents"],
            )
            events.put(("done", output.images))
        except BaseException as error:  # handed to the request's thread, which raises it
            events.put(("error", error))

    started = time.perf_counter()
    run_done = COMPUTE_THREAD.submit(run)
    try:
        while True:
            event = events.get()
            if event[0] == "error":
                raise event[1]
            if event[0] == "done":
                images = event[1]
                break
            _, step, num_steps, frames = event
            progress((step, num_steps), desc="Denoising", unit="steps")
            if frames is not None:
                yield list(zip(frames, captions)), f"Step {step}/{num_steps}: the clean images predicted so far."
    finally:
        cancelled.set()
        run_done.result()  # `run` reports its own errors through `events`
    elapsed = time.perf_counter() - started
    width, height = images[0].size
    num_threads = torch.get_num_threads()
    threads = f", {num_threads} CPU thread{'s' if num_threads > 1 else ''}" if pipe.device.type == "cpu" else ""
    count = f"{len(images)} image{'s' if len(images) > 1 else ''}"
    info = f"{count} of {width}x{height} in {elapsed:.1f} s on {pipe.device}{threads}. {summary}"
    yield list(zip(images, captions)), info


def scheduler_choice(saved_scheduler, sampler: str, samplers: Dict):
    """The saved scheduler, or the named sampler built from its config."""
    if sampler == SAVED_SAMPLER:
        return saved_scheduler
    if sampler not in samplers:
        raise ValueError(f"`sampler` {sampler!r} is not one of {[SAVED_SAMPLER, *samplers]}.")
    scheduler_class, settings = samplers[sampler]
    return scheduler_class.from_config(saved_scheduler.config, **settings)


def sampling_controls(saved_scheduler, default_steps: int):
    """The steps box, sampler dropdown, seed box and "Show the denoising" checkbox of a diffkit tab."""
    saved_name = type(saved_scheduler).__name__
    max_steps = saved_scheduler.config.num_train_timesteps
    # a number box: on a slider up to the schedule's length, the usual 10-50 steps would be a sliver at its left end
    num_inference_steps = gr.Number(
        default_steps,
        minimum=1,
        maximum=max_steps,
        step=1,
        precision=0,
        label="Steps",
        info=f"1-{max_steps}; {default_steps} is the model's default.",
    )
    sampler = gr.Dropdown(
        [SAVED_SAMPLER, *SAMPLERS],
        value=SAVED_SAMPLER,
        label="Sampler",
        info=f"'{SAVED_SAMPLER}' is the model's {saved_name}; the others are built from its config.",
    )
    seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="Image i uses seed + i.")
    show_denoising = gr.Checkbox(False, label="Show the denoising")
    return num_inference_steps, sampler, seed, show_denoising


def error_info(message: str) -> str:
    """The info line that shows an error in the page (in red, see `CSS`), where it stays until the next request."""
    return f'<span class="diffkit-error">Error: {html.escape(message)}</span>'


def kept_on_error(handler, num_outputs: int):
    """`handler` for the page: a readable error (`gr.Error`) keeps the images shown, skipping every output but the
    last, the info line, which shows the message."""

    def page_handler(*values):
        try:
            if inspect.isgeneratorfunction(handler):
                yield from handler(*values)
            else:
                yield handler(*values)
        except gr.Error as error:
            yield (*[gr.skip()] * (num_outputs - 1), error_info(error.message))

    page_handler.__signature__ = inspect.signature(handler)  # Gradio reads it for the progress tracker
    page_handler.__name__ = handler.__name__
    return page_handler


def report_bounds_to_the_client(control):
    """Make `control` report a value outside its range or choices, which only an API client can send (the page's
    controls keep to them), to that client with the control's label, and without a traceback in the server's log.
    A control that several events read (a tab's generate and edit buttons) is changed once."""
    check = control.preprocess
    if getattr(check, "reports_bounds_to_the_client", False):
        return

    def preprocess(payload):
        try:
            return check(payload)
        except gr.Error as error:
            raise gr.Error(f"{control.label}: {error.message}", print_exception=False) from None

    preprocess.reports_bounds_to_the_client = True
    control.preprocess = preprocess


def connect_button(button, function, controls: Dict, outputs: List, api_name: str):
    r"""
    Run `function(inputs, progress)` when `button` is pressed and as the API endpoint `api_name`, one request at a
    time across the app; `inputs` holds the request's values by the names of `controls` (see `named_handler`).

    In the page, a bad input keeps the images shown and puts its message in the info line (the last of `outputs`),
    where it stays; an API client gets it as the request's error (`gradio_client`'s `AppError`).
    """
    handler = named_handler(function, list(controls))
    for control in controls.values():
        report_bounds_to_the_client(control)
    inputs, queue = list(controls.values()), dict(concurrency_id=MODEL_QUEUE, concurrency_limit=1)
    button.click(kept_on_error(handler, len(outputs)), inputs, outputs, api_visibility="private", **queue)
    # the endpoint is the same handler on a button never shown: a client's request fails with its error
    gr.Button(visible=False).click(handler, inputs, outputs, api_name=api_name, **queue)


def named_handler(function, names: List[str]):
    """An event handler for Gradio that calls `function(inputs, progress)` with the event's inputs by name.

    Gradio passes the inputs in the order of the event's `inputs` list, and names the API's parameters after the
    handler's signature: the handler takes them in the order of `names` (the keys of the dict whose values are the
    `inputs`), so a control moved in the layout keeps its name, and `gradio_client` users call the endpoint with those
    names (`view_api()` lists them)."""

    # Gradio streams the results of a generator function, and appends the progress tracker that the signature asks for
    if inspect.isgeneratorfunction(function):

        def handler(*values):
            *inputs, progress = values
            yield from function(dict(zip(names, inputs)), progress)

    else:

        def handler(*values):
            *inputs, progress = values
            return function(dict(zip(names, inputs)), progress)

    parameters = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    progress = inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())
    handler.__signature__ = inspect.Signature([*parameters, progress])
    handler.__name__ = function.__name__
    return handler


def saved_default_steps(pipe) -> int:
    """The step count `pipe` samples with when none is given: its config's (a distilled student saves its few
    steps), else its `__call__`'s default, else its pipeline file's `DEFAULT_NUM_INFERENCE_STEPS`."""
    call_default = inspect.signature(pipe.__call__).parameters["num_inference_steps"].default
    module_default = getattr(inspect.getmodule(type(pipe)), "DEFAULT_NUM_INFERENCE_STEPS", None)
    return pipe.config.get("num_inference_steps") or call_default or module_default


def guidance_range(pipe) -> tuple:
    """The guidance scales the slider offers: a distilled student's trained range, else 0 to MAX_GUIDANCE_SCALE."""
    return tuple(pipe.config.get("guidance_scale_range") or (0, MAX_GUIDANCE_SCALE))


def diffkit_tab(pipe, title: str, api_name: str, max_images: int):
    """A tab that runs a diffkit pipeline: the controls its kind takes, a gallery, and the generate event."""
    kind = pipeline_kind(pipe)
    saved_scheduler = pipe.scheduler
    default_steps = saved_default_steps(pipe)
    saved_name = type(saved_scheduler).__name__
    with gr.Tab(title):
        gr.Markdown(f"**{title}**: {type(pipe).__name__}, {saved_name} saved with the model.")
        with gr.Row():
            with gr.Column():
                condition_inputs = {}
                if kind == model_kinds.CLASS_CONDITIONAL:
                    label_names = list(pipe.config.id2label.values())
                    condition_inputs["classes"] = gr.Dropdown(
                        label_names,
                        value=label_names[:1],
                        multiselect=True,
                        allow_custom_value=True,
                        label="Classes",
                        info="One or more labels; each gets the number of images below.",
                    )
                elif kind == model_kinds.TEXT_CONDITIONAL:
                    condition_inputs["prompt"] = gr.Textbox(label="Prompt", placeholder="a handwritten seven")
                    condition_inputs["negative_prompt"] = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                num_images = gr.Slider(1, max_images, value=min(4, max_images), step=1, precision=0, label="Images")
                guidance_scale = gr.Slider(
                    *guidance_range(pipe),
                    value=pipe.config.guidance_scale if kind != model_kinds.UNCONDITIONAL else 1,
                    step=0.5,
                    label="Guidance scale",
                    info="0: unconditional, 1: conditional only, higher: follow the condition more closely.",
                    visible=kind != model_kinds.UNCONDITIONAL,
                )
                num_inference_steps, sampler, seed, show_denoising = sampling_controls(saved_scheduler, default_steps)
                button = gr.Button("Generate", variant="primary")
                # A latent model cannot remove pixel noise in its latents: it inpaints and redraws only.
                tasks = [task for task in EDIT_TASKS if not (task == "denoise" and getattr(pipe, "vae", None))]
                with gr.Accordion(f"Edit an image: {', '.join(tasks)}", open=False):
                    edit_task = gr.Radio(
                        tasks,
                        value="inpaint",
                        label="Task",
                        info="inpaint: fill what you paint; img2img: redraw towards the condition above"
                        + ("; denoise: remove Gaussian noise of the given level." if "denoise" in tasks else "."),
                    )
                    side = image_side(pipe)
                    editor = gr.ImageEditor(
                        type="pil",
                        format="png",
                        label=EDITOR_LABELS["inpaint"],
                        sources=["upload", "clipboard"],
                        brush=gr.Brush(
                            default_size=max(1, round(side * MASK_BRUSH_FRACTION)),
                            colors=[MASK_BRUSH_COLOUR],
                            color_mode="fixed",
                        ),
                        layers=False,
                        transforms=(),
                    )
                    strength = gr.Slider(
                        0,
                        1,
                        value=DEFAULT_STRENGTH,
                        step=0.05,
                        label="Strength",
                        info="0 keeps the image, 1 redraws it from noise.",
                        visible=False,
                    )
                    noise_level = gr.Slider(
                        0,
                        MAX_NOISE_LEVEL,
                        value=DEFAULT_NOISE_LEVEL,
                        step=0.01,
                        label="Noise level",
                        info="The noise's standard deviation, images in [-1, 1] (sigma / 127.5 for 8-bit pixels).",
                        visible=False,
                    )
                    edit_button = gr.Button("Edit", variant="primary")
                    # beside the button that made them: the gallery at the top is out of view from here
                    edit_gallery = gr.Gallery(
                        label="Edited images", format="png", columns=4, elem_classes=["diffkit-edited"]
                    )
                    edit_info = gr.Markdown()
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png", columns=4, elem_classes=["diffkit-gallery"])
                info = gr.Markdown()

    def request_settings(inputs, count_argument):
        """The pipeline arguments the generate and edit requests share, the images' captions and a summary, from
        the request's `inputs` by name."""
        images_wanted = whole_number(inputs["num_images"], "num_images")
        steps = whole_number(inputs["num_inference_steps"], "num_inference_steps")
        guidance = inputs["guidance_scale"]
        call_kwargs = dict(num_inference_steps=steps, output_type="pil")
        if kind == model_kinds.CLASS_CONDITIONAL:
            labels = inputs["classes"] if isinstance(inputs["classes"], list) else [inputs["classes"]]
            # names (or ids typed as digits) to ids, with the pipeline's own message for an unknown one
            label_ids = pipe.get_label_ids([int(x) if str(x).isdigit() else x for x in labels])
            call_kwargs.update(class_labels=label_ids, num_images_per_label=images_wanted)
            captions = [pipe.config.id2label[str(i)] for i in label_ids for _ in range(images_wanted)]
        elif kind == model_kinds.TEXT_CONDITIONAL:
            prompt, negative_prompt = inputs["prompt"], inputs["negative_prompt"]
            call_kwargs.update(prompt=prompt, negative_prompt=negative_prompt or None)
            call_kwargs.update(num_images_per_prompt=images_wanted)
            captions = [prompt] * images_wanted
        else:
            call_kwargs[count_argument] = images_wanted
            captions = [""] * images_wanted
        if len(captions) > max_images:
            raise ValueError(
                f"{len(captions)} images were asked for ({len(captions) // images_wanted} classes x "
                f"{images_wanted}); this app makes at most {max_images} per request (--max_images)."
            )
        if kind != model_kinds.UNCONDITIONAL:
            call_kwargs["guidance_scale"] = float(guidance)
        generators = image_generators(inputs["seed"], len(captions))
        call_kwargs["generator"] = generators
        captions = [f"{c} · seed {g.initial_seed()}".lstrip(" ·") for c, g in zip(captions, generators)]
        pipe.scheduler = scheduler_choice(saved_scheduler, inputs["sampler"], SAMPLERS)
        summary = f"{type(pipe.scheduler).__name__}, {steps} steps"
        if kind != model_kinds.UNCONDITIONAL:
            summary += f", guidance {float(guidance):g}"
        return call_kwargs, captions, summary

    def generate(inputs, progress):
        with readable_errors():
            call_kwargs, captions, summary = request_settings(inputs, "batch_size")
            yield from stream_pipeline(pipe, call_kwargs, captions, inputs["show_denoising"], progress, summary + ".")

    def edit(inputs, progress):
        task, strength_value, noise_level_value = inputs["task"], inputs["strength"], inputs["noise_level"]
        with readable_errors():
            if task not in EDIT_TASKS:
                raise ValueError(f"`task` must be one of {list(EDIT_TASKS)}, but is {task!r}.")
            image, mask = editor_image_and_mask(inputs["image"], task)
            call_kwargs, captions, summary = request_settings(inputs, "num_images_per_image")
            # made after the sampler is chosen, so that the task pipeline shares the chosen scheduler
            task_pipe = editing_pipeline(pipe, task)
            call_kwargs["image"] = image
            if task == "inpaint":
                call_kwargs["mask_image"] = mask
            elif task == "img2img":
                call_kwargs["strength"] = float(strength_value)
                summary += f", strength {float(strength_value):g}"
            else:
                call_kwargs["noise_level"] = float(noise_level_value)
                summary += f", noise level {float(noise_level_value):g}"
            summary = f"{task}: {summary}."
            yield from stream_pipeline(task_pipe, call_kwargs, captions, inputs["show_denoising"], progress, summary)

    # The controls by the names the handlers read them by (and the API shows), in the order the API takes them.
    controls = {
        **condition_inputs,
        "num_images": num_images,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "sampler": sampler,
        "seed": seed,
        "show_denoising": show_denoising,
    }
    edit_controls = {**controls, "image": editor, "task": edit_task, "strength": strength, "noise_level": noise_level}
    connect_button(button, generate, controls, [gallery, info], api_name)
    connect_button(
        edit_button, edit, edit_controls, [edit_gallery, edit_info], api_name.replace("generate_", "edit_", 1)
    )

    def show_the_task_s_controls(task):
        return (
            gr.update(visible=task == "img2img"),
            gr.update(visible=task == "denoise"),
            gr.update(label=EDITOR_LABELS.get(task, EDITOR_LABELS["inpaint"])),
        )

    edit_task.change(
        show_the_task_s_controls,
        edit_task,
        [strength, noise_level, editor],
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )


def super_resolution_tab(pipe, title: str, api_name: str, max_images: int):
    """A tab that upscales an uploaded image with a super-resolution stage (`SuperResolutionPipeline`): its class
    for a class-conditional stage, the noise level, and the settings a generation tab has."""
    class_conditional = pipe.config.num_classes > 0
    saved_scheduler = pipe.scheduler
    saved_name = type(saved_scheduler).__name__
    default_steps = saved_default_steps(pipe)
    low, high = pipe.config.low_resolution, pipe.unet.config.sample_size
    label_names = list(pipe.config.id2label.values())
    with gr.Tab(title):
        gr.Markdown(f"**{title}**: {type(pipe).__name__}, {low}x{low} to {high}x{high}, {saved_name} saved with it.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="pil",
                    format="png",
                    sources=["upload", "clipboard"],
                    label=f"Image to upscale ({low}x{low}; another square size is resized first)",
                )
                class_label = gr.Dropdown(
                    label_names,
                    value=label_names[0] if label_names else None,
                    allow_custom_value=True,
                    label="Class",
                    info="What the image shows.",
                    visible=class_conditional,
                )
                num_images = gr.Slider(1, max_images, value=min(4, max_images), step=1, precision=0, label="Images")
                noise_level = gr.Slider(
                    0,
                    pipe.config.max_noise_level,
                    value=pipe.config.noise_level,
                    step=0.01,
                    label="Noise level",
                    info="Noise added to the input first: higher trusts its pixels less (e.g. a generated image).",
                )
                guidance_scale = gr.Slider(
                    0,
                    MAX_GUIDANCE_SCALE,
                    value=pipe.config.guidance_scale,
                    step=0.5,
                    label="Guidance scale",
                    info="On the class: 1 is the conditional prediction alone.",
                    visible=class_conditional,
                )
                num_inference_steps, sampler, seed, show_denoising = sampling_controls(saved_scheduler, default_steps)
                button = gr.Button("Upscale", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png", columns=4, elem_classes=["diffkit-gallery"])
                info = gr.Markdown()

    def upscale(inputs, progress):
        image_value, label, images_wanted = inputs["image"], inputs["class_label"], inputs["num_images"]
        noise, guidance, steps = inputs["noise_level"], inputs["guidance_scale"], inputs["num_inference_steps"]
        sampler_name, seed_value, show = inputs["sampler"], inputs["seed"], inputs["show_denoising"]
        with readable_errors():
            if image_value is None:
                raise ValueError("No image was given: upload the image to upscale.")
            images_wanted = whole_number(images_wanted, "num_images")
            if images_wanted > max_images:
                raise ValueError(f"{images_wanted} images were asked for; this app makes at most {max_images}.")
            steps = whole_number(steps, "num_inference_steps")
            call_kwargs = dict(
                image=image_value,
                num_images_per_image=images_wanted,
                num_inference_steps=steps,
                noise_level=float(noise),
                output_type="pil",
            )
            caption = ""
            if class_conditional:
                label_id = pipe.get_label_ids([int(label) if str(label).isdigit() else label])[0]
                call_kwargs.update(class_labels=[label_id], guidance_scale=float(guidance))
                caption = pipe.config.id2label[str(label_id)]
            generators = image_generators(seed_value, images_wanted)
            call_kwargs["generator"] = generators
            captions = [f"{caption} · seed {g.initial_seed()}".lstrip(" ·") for g in generators]
            pipe.scheduler = scheduler_choice(saved_scheduler, sampler_name, SAMPLERS)
            summary = f"upscale: {type(pipe.scheduler).__name__}, {steps} steps, noise level {float(noise):g}"
            if class_conditional:
                summary += f", guidance {float(guidance):g}"
            yield from stream_pipeline(pipe, call_kwargs, captions, show, progress, summary + ".")

    named_inputs = {
        "image": image,
        "class_label": class_label,
        "num_images": num_images,
        "noise_level": noise_level,
        "guidance_scale": guidance_scale,
        "num_inference_steps": num_inference_steps,
        "sampler": sampler,
        "seed": seed,
        "show_denoising": show_denoising,
    }
    connect_button(button, upscale, named_inputs, [gallery, info], api_name)


def lora_names(pipe) -> List[str]:
    """The LoRA adapters active on `pipe` (none when it has no LoRA support, no adapter, or fused them)."""
    return list(pipe.get_active_adapters()) if hasattr(pipe, "get_active_adapters") else []


def stable_diffusion_controls(saved_scheduler, max_images: int, pipe=None):
    """The images, steps, guidance, sampler and seed controls of the Stable Diffusion tabs, and a LoRA scale when
    `pipe` runs LoRA adapters."""
    from diffkit.pipelines.loaders import SCHEDULERS

    num_images = gr.Slider(1, max_images, value=1, step=1, precision=0, label="Images")
    num_inference_steps = gr.Slider(1, 150, value=30, step=1, precision=0, label="Steps")
    guidance_scale = gr.Slider(0, MAX_GUIDANCE_SCALE, value=7.5, step=0.5, label="Guidance scale")
    sampler = gr.Dropdown(
        [SAVED_SAMPLER, *SCHEDULERS],
        value=SAVED_SAMPLER,
        label="Sampler",
        info=f"'{SAVED_SAMPLER}' is the model's {type(saved_scheduler).__name__}.",
    )
    seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="Image i uses seed + i.")
    controls = {
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "sampler": sampler,
        "seed": seed,
    }
    if pipe is not None and lora_names(pipe):
        controls["lora_scale"] = gr.Slider(
            0, MAX_LORA_SCALE, value=1, step=0.05, label="LoRA scale", info="Multiplies each --lora weight."
        )
    return controls


def stable_diffusion_settings(pipe, saved_scheduler, inputs: Dict):
    """The call arguments the Stable Diffusion tabs share (with the chosen sampler set on `pipe`), the images'
    captions and a summary, from a request's `inputs` by name (the prompts and `stable_diffusion_controls`)."""
    from diffkit.pipelines.loaders import SCHEDULERS

    images_wanted = whole_number(inputs["num_images"], "num_images")
    steps = whole_number(inputs["num_inference_steps"], "num_inference_steps")
    guidance = inputs["guidance_scale"]
    if not inputs["prompt"]:
        raise ValueError("`prompt` is empty: describe the image to generate.")
    pipe.scheduler = scheduler_choice(saved_scheduler, inputs["sampler"], SCHEDULERS)
    call_kwargs = dict(
        prompt=inputs["prompt"],
        negative_prompt=inputs["negative_prompt"] or None,
        num_images_per_prompt=images_wanted,
        num_inference_steps=steps,
        guidance_scale=float(guidance),
        generator=image_generators(inputs["seed"], images_wanted),
    )
    summary = f"{type(pipe.scheduler).__name__}, {steps} steps, guidance {float(guidance):g}"
    if "lora_scale" in inputs:
        lora_scale = float(inputs["lora_scale"])
        if not 0 <= lora_scale <= MAX_LORA_SCALE:
            raise ValueError(f"`lora_scale` must be in [0, {MAX_LORA_SCALE}], but is {lora_scale}.")
        # the pipelines scale every LoRA layer by this for the call (diffusers' `scale_lora_layers`)
        call_kwargs["cross_attention_kwargs"] = {"scale": lora_scale}
        summary += f", LoRA scale {lora_scale:g}"
    captions = [f"seed {g.initial_seed()}" for g in call_kwargs["generator"]]
    return call_kwargs, captions, summary + "."


def stable_diffusion_tab(pipe, title: str, api_name: str, max_images: int, canny: bool = False):
    """A text-to-image tab for a Stable Diffusion or SDXL pipeline; with `canny`, a ControlNet-canny tab."""
    from diffkit.pipelines.canny import canny_edges, check_image_side

    saved_scheduler = pipe.scheduler
    default_side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    with gr.Tab(title):
        gr.Markdown(f"**{title}**: {type(pipe).__name__} on {pipe.device} in {pipe.unet.dtype}.")
        with gr.Row():
            with gr.Column():
                if canny:
                    photo = gr.Image(type="pil", label="Photo", sources=["upload", "clipboard"])
                    with gr.Row():
                        low_threshold = gr.Slider(0, 255, value=100, step=1, precision=0, label="Canny low threshold")
                        high_threshold = gr.Slider(
                            0, 255, value=200, step=1, precision=0, label="Canny high threshold"
                        )
                prompt = gr.Textbox(label="Prompt", placeholder="an astronaut riding a horse")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                if not canny:
                    with gr.Row():
                        width = gr.Slider(64, 2048, value=default_side, step=8, precision=0, label="Width")
                        height = gr.Slider(64, 2048, value=default_side, step=8, precision=0, label="Height")
                controls = stable_diffusion_controls(saved_scheduler, max_images, pipe)
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                if canny:
                    edges = gr.Image(type="pil", format="png", label="Canny edges", interactive=False)
                gallery = gr.Gallery(label="Images", format="png", columns=2)
                info = gr.Markdown()

    def edges_of(photo_image, low, high):
        if photo_image is None:
            raise ValueError("`image` is missing: upload a photo; its canny edges guide the image.")
        return canny_edges(photo_image.convert("RGB"), whole_number(low, "low_threshold", 0), int(high))

    if canny:

        def generate(inputs, progress):
            with readable_errors():
                control_image = edges_of(inputs["image"], inputs["low_threshold"], inputs["high_threshold"])
                call_kwargs, captions, summary = stable_diffusion_settings(pipe, saved_scheduler, inputs)
                call_kwargs.update(image=control_image, width=control_image.width, height=control_image.height)
                for images, text in stream_pipeline(pipe, call_kwargs, captions, False, progress, summary):
                    yield control_image, images, text

        def preview_edges(photo_image, low, high):
            if photo_image is None:
                return None
            with readable_errors():
                return edges_of(photo_image, low, high)

        named_inputs = {"image": photo, "low_threshold": low_threshold, "high_threshold": high_threshold}
        named_inputs.update(prompt=prompt, negative_prompt=negative_prompt)
        outputs = [edges, gallery, info]
        for control in (photo, low_threshold, high_threshold):
            control.change(preview_edges, [photo, low_threshold, high_threshold], edges, show_progress="hidden")
    else:

        def generate(inputs, progress):
            with readable_errors():
                call_kwargs, captions, summary = stable_diffusion_settings(pipe, saved_scheduler, inputs)
                for argument in ("width", "height"):
                    side = inputs[argument]
                    check_image_side(int(side) if float(side).is_integer() else side, argument)
                    call_kwargs[argument] = int(side)
                yield from stream_pipeline(pipe, call_kwargs, captions, False, progress, summary)

        named_inputs = {"prompt": prompt, "negative_prompt": negative_prompt, "width": width, "height": height}
        outputs = [gallery, info]
    named_inputs.update(controls)
    connect_button(button, generate, named_inputs, outputs, api_name)


def stable_diffusion_edit_tab(pipe, title: str, api_name: str, max_images: int, task: str):
    """An img2img (`task="img2img"`) or inpainting tab (`"inpaint"`, the mask painted over the image) for a Stable
    Diffusion or SDXL pipeline of that task."""
    from diffkit.pipelines.stable_diffusion_options import check_strength, image_at_multiple_of_8

    saved_scheduler = pipe.scheduler
    inpaint = task == "inpaint"
    with gr.Tab(title):
        gr.Markdown(f"**{title}**: {type(pipe).__name__} on {pipe.device} in {pipe.unet.dtype}.")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    type="pil",
                    format="png",
                    label="Image (paint over what to re-draw)" if inpaint else "Image",
                    sources=["upload", "clipboard"],
                    brush=gr.Brush(colors=[MASK_BRUSH_COLOUR], color_mode="fixed") if inpaint else False,
                    layers=False,
                    transforms=(),
                )
                prompt = gr.Textbox(label="Prompt", placeholder="a red scarf" if inpaint else "a watercolour")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                strength = gr.Slider(
                    0,
                    1,
                    value=1.0 if inpaint else 0.75,
                    step=0.05,
                    label="Strength",
                    info="How much of the schedule re-draws the image: 0.3 keeps the layout, 1 keeps nothing.",
                )
                mask_blur = gr.Slider(0, 64, value=0, step=1, precision=0, label="Mask blur (pixels)", visible=inpaint)
                controls = stable_diffusion_controls(saved_scheduler, max_images, pipe)
                button = gr.Button("Inpaint" if inpaint else "Edit", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png", columns=2)
                info = gr.Markdown()

    def edit(inputs, progress):
        strength_value, blur = inputs["strength"], inputs["mask_blur"]
        with readable_errors():
            image, mask = editor_image_and_mask(inputs["image"], task)
            call_kwargs, captions, _ = stable_diffusion_settings(pipe, saved_scheduler, inputs)
            check_strength(float(strength_value), call_kwargs["num_inference_steps"])
            image = image_at_multiple_of_8(image, "image")
            call_kwargs.update(image=image, strength=float(strength_value))
            if inpaint:
                mask = mask.resize(image.size, Image.NEAREST)
                blur = whole_number(blur, "mask_blur", minimum=0)
                call_kwargs.update(mask_image=pipe.mask_processor.blur(mask, blur) if blur else mask)
                call_kwargs.update(width=image.width, height=image.height)
            summary = (
                f"{task}: {type(pipe.scheduler).__name__}, {call_kwargs['num_inference_steps']} steps, strength "
                f"{float(strength_value):g}, guidance {call_kwargs['guidance_scale']:g}."
            )
            yield from stream_pipeline(pipe, call_kwargs, captions, False, progress, summary)

    named_inputs = {"image": editor, "prompt": prompt, "negative_prompt": negative_prompt, "strength": strength}
    named_inputs.update(mask_blur=mask_blur, **controls)
    connect_button(button, edit, named_inputs, [gallery, info], api_name)


def upscaler_tab(pipe, title: str, api_name: str, max_images: int):
    """A tab for the Stable Diffusion x4 upscaler: the image, a prompt describing it, the noise level, and tiles for
    large inputs."""
    from diffkit.pipelines.loaders import upscale_tiled
    from diffkit.pipelines.stable_diffusion_options import UPSCALER_TILE_SIZE, check_upscale_inputs

    max_noise_level = pipe.config.max_noise_level
    with gr.Tab(title):
        gr.Markdown(f"**{title}**: {type(pipe).__name__} (4x) on {pipe.device} in {pipe.unet.dtype}.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image to upscale", sources=["upload", "clipboard"])
                prompt = gr.Textbox(label="Prompt", placeholder="a photo of a cat", info="What the image shows.")
                negative_prompt = gr.Textbox(label="Negative prompt", placeholder="(optional)")
                noise_level = gr.Slider(
                    0,
                    max_noise_level,
                    value=20,
                    step=1,
                    precision=0,
                    label="Noise level",
                    info="Noise added to the input: higher re-invents more detail.",
                )
                tile_size = gr.Slider(
                    0,
                    512,
                    value=0,
                    step=8,
                    precision=0,
                    label="Tile size (input pixels)",
                    info=f"0: one piece; e.g. {UPSCALER_TILE_SIZE} upscales a large image in overlapping tiles.",
                )
                num_images = gr.Slider(1, max_images, value=1, step=1, precision=0, label="Images")
                num_inference_steps = gr.Slider(1, 150, value=30, step=1, precision=0, label="Steps")
                guidance_scale = gr.Slider(0, MAX_GUIDANCE_SCALE, value=7.5, step=0.5, label="Guidance scale")
                seed = gr.Number(0, precision=0, minimum=0, label="Seed", info="Image i uses seed + i.")
                button = gr.Button("Upscale", variant="primary")
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png", columns=2)
                info = gr.Markdown()

    def upscale(inputs, progress):
        photo, prompt_text, negative = inputs["image"], inputs["prompt"], inputs["negative_prompt"]
        noise, tile, images_wanted = inputs["noise_level"], inputs["tile_size"], inputs["num_images"]
        steps, guidance, seed_value = inputs["num_inference_steps"], inputs["guidance_scale"], inputs["seed"]
        with readable_errors():
            if photo is None:
                raise ValueError("`image` is missing: upload the image to upscale.")
            photo = photo.convert("RGB")
            images_wanted = whole_number(images_wanted, "num_images")
            steps = whole_number(steps, "num_inference_steps")
            tile = whole_number(tile, "tile_size", minimum=0)
            noise = int(noise) if float(noise).is_integer() else float(noise)
            check_upscale_inputs(max_noise_level, photo, noise, tiled=tile > 0)
            call_kwargs = dict(
                negative_prompt=negative or None,
                noise_level=noise,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
            )
            generators = image_generators(seed_value, images_wanted)
            seeds = [g.initial_seed() for g in generators]
            started = time.perf_counter()

            def run():  # on the compute thread, like every model call of the app
                if tile:
                    return [
                        upscale_tiled(pipe, prompt_text, photo, tile_size=tile, seed=s, **call_kwargs) for s in seeds
                    ]
                return pipe(
                    prompt_text, image=photo, num_images_per_prompt=images_wanted, generator=generators, **call_kwargs
                ).images

            images = on_compute_thread(run)
            width, height = images[0].size
            tiles = f", tiles of {tile} px" if tile else ""
            info = (
                f"{len(images)} image(s) of {width}x{height} in {time.perf_counter() - started:.1f} s on "
                f"{pipe.device}. noise level {noise}, {steps} steps, guidance {float(guidance):g}{tiles}."
            )
            return [(image, f"seed {s}") for image, s in zip(images, seeds)], info

    named_inputs = {
        "image": image,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "noise_level": noise_level,
        "tile_size": tile_size,
        "num_images": num_images,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "seed": seed,
    }
    connect_button(button, upscale, named_inputs, [gallery, info], api_name)


def build_demo(
    diffkit_pipelines: Optional[Dict[str, DiffusionPipeline]] = None,
    stable_diffusion=None,
    sdxl=None,
    controlnet=None,
    inpaint=None,
    upscaler=None,
    max_images: int = 16,
) -> "gr.Blocks":
    r"""
    The Gradio app: a tab per diffkit pipeline (`{title: pipeline}`), and Stable Diffusion, SDXL and ControlNet-canny
    tabs for the pipelines given. Each generate button is an API endpoint named `generate_<title>` (`generate_sd`,
    `generate_sdxl`, `generate_controlnet_canny`), each diffkit tab's edit button one named `edit_<title>`, and a
    super-resolution stage's upscale button one named `upscale_<title>`, all served one request at a time.

    Stable Diffusion and SDXL also get an img2img tab (`img2img_sd`, `img2img_sdxl`), sharing the modules (no
    second copy of the weights); `inpaint` (an SD or SDXL inpainting pipeline) gets an inpainting tab
    (`inpaint_sd` or `inpaint_sdxl`) and `upscaler` (the x4 upscaler) an upscaling tab (`upscale_x4`).

    Example:

    ```py
    >>> from diffkit import ClassConditionalImagePipeline
    >>> from diffkit.demo import build_demo
    >>> pipe = ClassConditionalImagePipeline.from_pretrained("out")  # doctest: +SKIP
    >>> build_demo({"digits": pipe}).queue().launch()  # doctest: +SKIP
    ```
    """
    api_names: List[str] = []
    with gr.Blocks(title="diffkit", analytics_enabled=False) as demo:
        gr.Markdown("# diffkit\nGenerate with the pipelines below; one request runs at a time, the others queue.")
        for title, pipe in (diffkit_pipelines or {}).items():
            if pipeline_kind(pipe) == model_kinds.SUPER_RESOLUTION:
                super_resolution_tab(pipe, title, api_name_for(title, api_names, "upscale_"), max_images)
            else:
                diffkit_tab(pipe, title, api_name_for(title, api_names), max_images)
        for pipe, title, name in ((stable_diffusion, "Stable Diffusion", "sd"), (sdxl, "SDXL", "sdxl")):
            if pipe is not None:
                from diffkit.pipelines.loaders import task_pipeline  # only with Stable Diffusion (not on a Space)

                stable_diffusion_tab(pipe, title, api_name_for(name, api_names), max_images)
                img2img = task_pipeline(pipe, "img2img")
                stable_diffusion_edit_tab(
                    img2img, f"{title} img2img", api_name_for(name, api_names, "img2img_"), max_images, "img2img"
                )
        if inpaint is not None:
            name = "sdxl" if pipeline_kind(inpaint) == model_kinds.SDXL else "sd"
            title = "SDXL inpainting" if name == "sdxl" else "Stable Diffusion inpainting"
            stable_diffusion_edit_tab(inpaint, title, api_name_for(name, api_names, "inpaint_"), max_images, "inpaint")
        if upscaler is not None:
            upscaler_tab(upscaler, "x4 upscaler", api_name_for("x4", api_names, "upscale_"), max_images)
        if controlnet is not None:
            name = api_name_for("controlnet_canny", api_names)
            stable_diffusion_tab(controlnet, "ControlNet canny", name, max_images, canny=True)
    return demo


def load_models(args) -> Dict:
    """The pipelines named by the arguments, as `build_demo` keywords."""
    diffkit_pipelines = {}
    for model in args.model:
        title = pipeline_title(model)
        while title in diffkit_pipelines:  # two folders with the same name
            title += "'"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype)
        diffkit_pipelines[title] = load_diffkit_pipeline(model, args.trust_remote_code, args.device, dtype)
    models = {"diffkit_pipelines": diffkit_pipelines}
    if args.sd or args.sdxl or args.controlnet or args.inpaint or args.upscaler:
        from diffkit.pipelines.loaders import (
            is_sdxl,
            load_controlnet_canny,
            load_sdxl,
            load_sdxl_inpaint,
            load_stable_diffusion,
            load_stable_diffusion_inpaint,
            load_upscaler,
        )
        from diffkit.pipelines.stable_diffusion_options import SD15_MODEL

        options = dict(device=args.device, dtype=args.dtype, quantize=args.quantize)
        lora = dict(lora=args.lora)  # not the upscaler's: no LoRA is made for it
        if args.sd:
            models["stable_diffusion"] = load_stable_diffusion(args.sd, **options, **lora)
        if args.sdxl:
            models["sdxl"] = load_sdxl(args.sdxl, vae=args.vae, **options, **lora)
        if args.controlnet:
            base = args.controlnet_base or args.sd or SD15_MODEL
            # the base model's own model_index.json says which ControlNet pipeline fits it
            sdxl = is_sdxl(base)
            models["controlnet"] = load_controlnet_canny(
                base, args.controlnet, sdxl=sdxl, vae=args.vae if sdxl else None, **options, **lora
            )
        if args.inpaint:
            if is_sdxl(args.inpaint):
                models["inpaint"] = load_sdxl_inpaint(args.inpaint, vae=args.vae, **options, **lora)
            else:
                models["inpaint"] = load_stable_diffusion_inpaint(args.inpaint, **options, **lora)
        if args.upscaler:
            models["upscaler"] = load_upscaler(args.upscaler, **options)
    return models
