"""Fault injection for writes: `failing_write(n)` makes the n-th write of the block (0-based) raise
`OSError(ENOSPC)`, as a full disk does; `counted_writes()` counts the writes a block makes.

A write is any call that creates or changes something on disk through the paths diffkit, accelerate, diffusers,
safetensors and PIL take: `open` in a writing mode, `torch.save`, safetensors' `save_file` (under each name it is
imported as), and the folder operations `os.makedirs`, `os.mkdir`, `os.replace`, `os.rename` and
`tempfile.mkdtemp`.
"""

import builtins
import contextlib
import errno
import os
import tempfile
from unittest import mock

import accelerate.utils.other
import safetensors.torch
import torch

import diffkit.training.checkpointing

WRITING_MODES = set("wax+")


class WriteCounter:
    def __init__(self, fail_at=None):
        self.count = 0
        self.fail_at = fail_at
        self.failed_call = None

    def wrap(self, name, function, is_write=lambda *args, **kwargs: True):
        def patched(*args, **kwargs):
            if is_write(*args, **kwargs):
                index = self.count
                self.count += 1
                if index == self.fail_at:
                    self.failed_call = f"{name}{args[:1]}"
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]) if args else None)
            return function(*args, **kwargs)

        return patched


def opens_for_writing(file, mode="r", *args, **kwargs):
    return bool(WRITING_MODES & set(mode))


def creates_a_folder(path, *args, **kwargs):
    return not os.path.exists(path)  # `makedirs(exist_ok=True)` of an existing folder writes nothing


@contextlib.contextmanager
def _patched_writes(counter: WriteCounter):
    real_open, real_save_file = builtins.open, safetensors.torch.save_file
    patched_open = counter.wrap("open", real_open, opens_for_writing)
    patched_save_file = counter.wrap("save_file", real_save_file)
    with contextlib.ExitStack() as stack:
        for target, value in [
            ("builtins.open", patched_open),
            ("io.open", patched_open),
            ("torch.save", counter.wrap("torch.save", torch.save)),
            ("safetensors.torch.save_file", patched_save_file),
            ("os.makedirs", counter.wrap("makedirs", os.makedirs, creates_a_folder)),
            ("os.mkdir", counter.wrap("mkdir", os.mkdir, creates_a_folder)),
            ("os.replace", counter.wrap("replace", os.replace)),
            ("os.rename", counter.wrap("rename", os.rename)),
            ("tempfile.mkdtemp", counter.wrap("mkdtemp", tempfile.mkdtemp)),
        ]:
            stack.enter_context(mock.patch(target, value))
        # the modules that imported safetensors' save_file under their own name
        stack.enter_context(mock.patch.object(accelerate.utils.other, "safe_save_file", patched_save_file))
        stack.enter_context(mock.patch.object(diffkit.training.checkpointing, "save_file", patched_save_file))
        yield counter


def counted_writes():
    return _patched_writes(WriteCounter())


def failing_write(index: int):
    return _patched_writes(WriteCounter(fail_at=index))
