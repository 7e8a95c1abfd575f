"""diffkit's sampling and editing commands: `diffkit-generate` (`python -m diffkit.cli.generate`) and `diffkit-edit`
(`python -m diffkit.cli.edit`), and what both share: how they save images, check the condition flags and share the
images out between the processes that `accelerate launch` starts."""

import contextlib
import json
import math
import os
from typing import Callable, List, Sequence

from PIL import Image, PngImagePlugin

from diffkit.pipelines.model_kinds import CLASS_CONDITIONAL, SUPER_RESOLUTION, TEXT_CONDITIONAL

# The PNG text chunk that holds an image's settings as JSON, as other diffusion tools write them.
PNG_METADATA_KEY = "parameters"


def save_png(image: Image.Image, path: str, parameters: dict):
    """Save `image` as a PNG whose text chunk `parameters` holds `parameters` as JSON, atomically."""
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text(PNG_METADATA_KEY, json.dumps(parameters))
    partial = path + ".partial"
    image.save(partial, format="PNG", pnginfo=metadata)
    os.replace(partial, path)  # a reader never sees half a PNG


def conditioning_of(kind: str, config: dict):
    """What the model is conditioned on, as the kind that is conditioned so: `CLASS_CONDITIONAL` (a class model, or a
    stage trained with class labels), `TEXT_CONDITIONAL`, or None."""
    if kind == CLASS_CONDITIONAL or (kind == SUPER_RESOLUTION and config.get("num_classes")):
        return CLASS_CONDITIONAL
    return TEXT_CONDITIONAL if kind == TEXT_CONDITIONAL else None


def check_conditioning(args, conditioning, model_argument: str):
    """The condition flags that the model takes: `--class` for class models, `--prompt` for text models. The model
    is the value of `model_argument` (`--model`), which the messages name."""
    model = getattr(args, model_argument.lstrip("-"))
    if conditioning == CLASS_CONDITIONAL and args.class_labels is None:
        raise ValueError(f"`{model_argument}` {model!r} is class-conditional: pass `--class` (e.g. --class seven).")
    if conditioning == TEXT_CONDITIONAL and args.prompt is None:
        raise ValueError(
            f"`{model_argument}` {model!r} is text-conditional: pass `--prompt` (e.g. --prompt 'a handwritten eight')."
        )
    described = conditioning.replace("_", "-") if conditioning else "unconditional"
    if conditioning != CLASS_CONDITIONAL and args.class_labels is not None:
        raise ValueError(
            f"`--class` needs a class-conditional model, but `{model_argument}` {model!r} is {described}."
        )
    if conditioning != TEXT_CONDITIONAL and args.prompt is not None:
        raise ValueError(
            f"`--prompt` needs a text-conditional model, but `{model_argument}` {model!r} is {described}."
        )
    if getattr(args, "negative_prompt", None) is not None and conditioning != TEXT_CONDITIONAL:
        raise ValueError(
            f"`--negative_prompt` needs a text-conditional model, but `{model_argument}` {model!r} is not."
        )
    if conditioning is None and args.guidance_scale is not None:
        raise ValueError("`--guidance_scale` needs a conditional model; an unconditional one has no guidance.")


def label_argument(label: str):
    """A label given on the command line: a name, or an id when it is a number."""
    return int(label) if label.isdigit() else label


def check_class_labels(class_labels, config: dict):
    """`--class` values against the classes of the model (`num_classes` and `id2label` of its model_index.json),
    before any weights load."""
    num_classes, names = config.get("num_classes"), list((config.get("id2label") or {}).values())
    for label in class_labels or []:
        value = label_argument(label)
        in_range = num_classes is None or 0 <= value < num_classes if isinstance(value, int) else value in names
        if not in_range:
            ids = f"ids 0-{num_classes - 1}" if num_classes else "ids"
            known = f"a name of {names} or one of the {ids}" if names else f"one of the {ids}"
            raise ValueError(f"`--class` {label!r} is not a class of this model: pass {known}.")


# Images per pipeline call by default: whole batches are what the processes share, so this is also the finest split.
DEFAULT_BATCH_SIZE = 8


@contextlib.contextmanager
def launched_processes(device=None):
    """The `accelerate.PartialState` of the processes that `accelerate launch --num_processes N -m diffkit.cli....`
    started: one process when the command runs plainly. Each process uses its own GPU; processes without GPUs are
    joined over gloo (as `--multi_gpu` on a machine without GPUs would not join them). The group is released on the
    way out, whatever happens.

    `device` (the command's `--device`) is taken by one process only: several processes take theirs from accelerate.
    """
    import torch
    from accelerate import PartialState

    from diffkit.training.process_group import settle_process_group

    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and device is not None:
        raise ValueError(
            f"`--device` {device!r} would put all {launched} processes on one device: leave it out, and each process "
            "takes its own GPU (or the CPU) from `accelerate launch`."
        )
    state = PartialState(cpu=launched > 1 and not torch.cuda.is_available())
    if state.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched, but accelerate set up {state.num_processes} "
            f"({state.distributed_type}); check the accelerate config (`accelerate env`)."
        )
    try:
        yield state
        # after the last collective, on every process: gloo must hold no Python tensor when the group goes
        # (training/process_group.py says why a run could hang otherwise)
        settle_process_group()
    finally:
        if state.num_processes > 1 and torch.distributed.is_initialized():
            # any backend's: joins gloo's threads while Python is alive (see training/process_group.py's
            # release_process_group), and frees NCCL's communicators, which torch otherwise reports leaked at exit
            state.destroy_process_group()


def batches_of_this_process(state, num_images: int, batch_size: int, what: str = "images") -> List[range]:
    """The batches of image indices (0 to `num_images` - 1) that this process makes.

    The indices are cut into batches of `batch_size` the same way whatever the number of processes, and whole
    batches are shared out in order (`PartialState.split_between_processes`): with each image's generator seeded by
    its index, every image is the same whichever process makes it. Asking for more processes than there are images,
    or batches, is refused before any model loads.
    """
    batches = [range(start, min(start + batch_size, num_images)) for start in range(0, num_images, batch_size)]
    if state.num_processes > num_images:
        raise ValueError(
            f"`accelerate launch --num_processes {state.num_processes}` is more processes than the {num_images} "
            f"{what} to make: launch at most {num_images}, or ask for more {what}."
        )
    if state.num_processes > len(batches):
        raise ValueError(
            f"`--batch_size` {batch_size} cuts the {num_images} {what} into {len(batches)} batches, fewer than the "
            f"{state.num_processes} processes: pass `--batch_size {math.ceil(num_images / state.num_processes)}` "
            "or less, so that each process has a batch."
        )
    with state.split_between_processes(batches) as batches_here:
        return list(batches_here)


def image_generators(seed: int, batch: range) -> list:
    """One generator per image, seeded with `seed` plus the image's index, so an image does not depend on the batch
    or process that makes it. They live on the CPU so that a seed gives the same images on any device."""
    import torch

    return [torch.Generator("cpu").manual_seed(seed + index) for index in batch]


def make_and_save(
    state,
    batches: Sequence[range],
    make_batch: Callable[[range], list],
    path_of: Callable[[int], str],
    parameters_of: Callable[[int], dict],
    out: str,
):
    """Make this process's `batches` of images with `make_batch` (image indices to PIL images) and save image `i` to
    `path_of(i)` with `parameters_of(i)` in its metadata; print each path. Returns when every process is done."""
    for batch in batches:
        images = make_batch(batch)
        os.makedirs(out, exist_ok=True)  # once there is an image: a call refused by the pipeline leaves no folder
        for index, image in zip(batch, images):
            path = path_of(index)
            save_png(image, path, parameters_of(index))
            print(path, flush=True)
    state.wait_for_everyone()


def add_speed_flags(parser):
    """`--quantize` and `--compile`, as `diffkit-generate` and `diffkit-edit` take them for diffkit models."""
    from diffkit.pipelines.stable_diffusion_options import QUANTIZE_MODES

    parser.add_argument(
        "--quantize",
        default=None,
        choices=sorted(QUANTIZE_MODES),
        help="Store the UNet's linear layers quantised, through diffusers' PipelineQuantizationConfig: int8 "
        "(torchao weight-only, CPU and CUDA), int4 (torchao, CUDA, with --dtype bf16), float8 (torchao, CUDA of "
        "compute capability 8.9+) or nf4 (bitsandbytes, CUDA); `pip install 'diffkit[quantization]'`. See "
        "docs/efficiency.md for what each gains.",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the UNet: a slow first batch, then faster ones."
    )


def load_for_sampling(pipeline_class, model: str, device, quantize=None, compile_unet: bool = False):
    """`pipeline_class.from_pretrained(model)` on `device`, its UNet quantised as `quantize` says (checked against
    the device before any weight loads) and, with `compile_unet`, compiled with `torch.compile`."""
    import torch

    from diffkit.pipelines.loaders import DTYPE_ARGUMENT
    from diffkit.pipelines.quantization import check_quantize_on_device, quantization_kwargs

    device = torch.device(device)
    check_quantize_on_device(quantize, device, torch.float32, argument="--quantize")
    load_kwargs = quantization_kwargs(quantize, torch.float32)
    if load_kwargs:
        # diffkit pipelines sample in float32; torchao would otherwise load the rest of the model in bfloat16
        load_kwargs[DTYPE_ARGUMENT] = torch.float32
    pipe = pipeline_class.from_pretrained(model, **load_kwargs)
    pipe.to(device)
    if compile_unet:
        pipe.unet.compile()
    return pipe
