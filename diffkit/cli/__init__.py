"""diffkit's sampling and editing commands: `diffkit-generate` (`python -m diffkit.cli.generate`) and `diffkit-edit`
(`python -m diffkit.cli.edit`), and how both save their images."""

import json
import os

from PIL import Image, PngImagePlugin

# The PNG text chunk that holds an image's settings as JSON, as other diffusion tools write them.
PNG_METADATA_KEY = "parameters"


def save_png(image: Image.Image, path: str, parameters: dict):
    """Save `image` as a PNG whose text chunk `parameters` holds `parameters` as JSON, atomically."""
    metadata = PngImagePlugin.PngInfo()
    metadata.add_text(PNG_METADATA_KEY, json.dumps(parameters))
    partial = path + ".partial"
    image.save(partial, format="PNG", pnginfo=metadata)
    os.replace(partial, path)  # a reader never sees half a PNG
