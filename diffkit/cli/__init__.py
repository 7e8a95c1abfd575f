"""diffkit's sampling and editing commands: `diffkit-generate` (`python -m diffkit.cli.generate`) and `diffkit-edit`
(`python -m diffkit.cli.edit`), and what both share: how they save images and check the condition flags."""

import json
import os

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
    is the value of `model_argument` (`--pipeline`, `--model`), which the messages name."""
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
