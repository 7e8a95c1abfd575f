"""Import-time notices of torchao, torch and diffusers that no user can act on, kept out of the terminal.

With torchao installed (diffkit's `quantization` and `test` extras), `import diffusers` logs, on every run:

- `Failed to load .../torchao/_C_mxfp8...so` (torchao's kernels for other CUDA and Python builds),
- two `torch/utils/_pytree.py` warnings that torchao registers Enums in a way torch now deprecates,
- `Unable to import torchao Tensor objects` (diffusers, for torchao's older checkpoint classes),
- `Detected no triton, on systems without Triton certain kernels will not work` (torchao, on a CPU build of torch:
  Triton compiles CUDA kernels, and the CUDA builds of torch install it). It shows where logging is set up before
  diffusers loads, as in `diffkit-evaluate`.

They come from the libraries' versions, not from anything a user did or can change here. Each is dropped by a filter
on its own logger that matches its exact text, so every other message of those loggers still shows. The filters are
installed when this module is imported: first thing in the `diffkit` package and in each training script, before
diffusers loads.
"""

import logging
import re

NOTICES = {
    "torchao": re.compile(r"^Failed to load \S*torchao[/\\]_C\S*\.so"),
    "torch.utils._pytree": re.compile(r"is an Enum subclass and is now natively supported by torch\.compile"),
    "diffusers.quantizers.torchao.torchao_quantizer": re.compile(r"^Unable to import `torchao` Tensor objects"),
    "torchao.kernel.intmm": re.compile(r"Detected no triton, on systems without Triton certain kernels will not work"),
}


class DropNotice(logging.Filter):
    """Drops the records whose message matches `pattern`."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install_filters():
    """Add one `DropNotice` per logger of NOTICES (once, however often it is called)."""
    for name, pattern in NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNotice) for f in logger.filters):
            logger.addFilter(DropNotice(pattern))


install_filters()
