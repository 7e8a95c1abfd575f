"""Checkpoints that are complete or absent, and that resume a run exactly.

A checkpoint `OUTPUT_DIR/checkpoint-STEP/` holds what `accelerator.save_state` writes (model weights as
safetensors, optimizer, learning-rate scheduler, gradient scaler, the random states of every library, the data
sampler), plus the EMA weights, each process's noise generator and `training_state.json`. It is written into a
hidden `.checkpoint-STEP.partial/` folder that is renamed only once everything is on disk, so a run killed while
writing leaves the previous checkpoint as the newest complete one, and `--resume_from_checkpoint latest` never picks
a partial one.

A write that fails (a full disk, a lost mount) on any process fails the checkpoint on every process together
(`count_processes` after the writes, so that none waits for the others): the partial folder is removed, the previous
checkpoints are untouched, and `WriteFailed` names the folder, the free space and what to do.
"""

import json
import os
import re
import shutil
from typing import List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffkit.training.process_group import count_processes

CHECKPOINT_PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
TRAINING_STATE_NAME = "training_state.json"
EMA_FOLDER = "unet_ema"
NOISE_GENERATOR_NAME = "noise_generator_{process_index}.safetensors"
CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


# What a write that fails raises (a full disk, say): Python's own writes an OSError, safetensors a SafetensorError
# ("I/O error: No space left on device (os error 28)"), and torch.save's C++ writer a RuntimeError ("[enforce fail
# at inline_container.cc] unexpected pos ..."), which names no cause: the free space in the message does.
WRITE_ERRORS = (OSError, SafetensorError, RuntimeError)


class WriteFailed(RuntimeError):
    """A checkpoint or the final outputs could not be written; what was written before is intact. `run_script` ends
    the run with its message, without a traceback."""


def size_text(size: float) -> str:
    """A size in bytes as a person reads it ("12.4 MB")."""
    if size < 1000:
        return f"{size:.0f} bytes"
    for unit in ("KB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


def free_space_text(folder: str) -> str:
    """The space left on `folder`'s filesystem (or its nearest existing parent's)."""
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return size_text(shutil.disk_usage(folder or ".").free)


def folder_size(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def write_failure_message(
    what: str, folder: str, error: Optional[Exception], kept: str, failed_elsewhere: int = 0
) -> str:
    """What a failed write says: `what` could not be written to `folder` (here, with `error`, one of WRITE_ERRORS,
    or by `failed_elsewhere` other processes), the free space there, `kept` (what is intact), and what to do."""
    if isinstance(error, OSError) and error.strerror:
        cause = f"{error.strerror} [Errno {error.errno}]"
    elif error is not None:
        lines = str(error).strip().splitlines()
        cause = lines[0] if lines else type(error).__name__
    else:
        cause = f"{failed_elsewhere} other process(es) could not write their part (their log says why)"
    return (
        f"Could not write {what} to {folder}: {cause}; {free_space_text(folder)} free there. {kept} Free some space "
        "(or lower --checkpoints_total_limit, or pick another --output_dir), then run the same command with "
        "--resume_from_checkpoint latest."
    )


def newest_checkpoint_text(output_dir: str) -> str:
    checkpoints = list_checkpoints(output_dir)
    if not checkpoints:
        return "No complete checkpoint was written before this one."
    newest = checkpoints[-1][1]
    size = size_text(folder_size(newest))
    return f"The newest complete checkpoint, {newest} ({size}), is intact: `latest` resumes from it."


def list_checkpoints(output_dir: str) -> List[Tuple[int, str]]:
    """The complete checkpoints in `output_dir` as `(step, path)`, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    checkpoints = []
    for name in os.listdir(output_dir):
        match = CHECKPOINT_PATTERN.match(name)
        path = os.path.join(output_dir, name)
        if match and os.path.isfile(os.path.join(path, TRAINING_STATE_NAME)):
            checkpoints.append((int(match.group(1)), path))
    return sorted(checkpoints)


def resolve_checkpoint(output_dir: str, resume_from_checkpoint: str) -> Optional[str]:
    """The checkpoint folder that `--resume_from_checkpoint` names; `None` for `latest` when there is none yet."""
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = resume_from_checkpoint
    if not os.path.isdir(path) and os.path.isdir(os.path.join(output_dir, path)):
        path = os.path.join(output_dir, path)
    if not os.path.isdir(path):
        raise ValueError(
            f"`--resume_from_checkpoint` {resume_from_checkpoint!r} is not a folder (nor one in --output_dir "
            f"{output_dir!r}); pass 'latest' or a checkpoint folder such as {output_dir}/{CHECKPOINT_PREFIX}500."
        )
    if not os.path.isfile(os.path.join(path, TRAINING_STATE_NAME)):
        raise ValueError(
            f"`--resume_from_checkpoint` {path!r} holds no {TRAINING_STATE_NAME}, so it is not a complete diffkit "
            "checkpoint (it may be partial or corrupt); pass 'latest' to use the newest complete one."
        )
    return path


def read_training_state(checkpoint_dir: str) -> dict:
    with open(os.path.join(checkpoint_dir, TRAINING_STATE_NAME)) as f:
        return json.load(f)


def save_checkpoint(
    accelerator,
    output_dir: str,
    global_step: int,
    training_state: dict,
    ema_model,
    noise_generator: torch.Generator,
    checkpoints_total_limit: Optional[int],
) -> List[str]:
    """Write `checkpoint-{global_step}` atomically, then keep only the newest `checkpoints_total_limit`.

    Every process must call this (each saves its own random states); only the main process renames and deletes.
    Returns the checkpoint folders that rotation removed. A write that fails on any process raises `WriteFailed` on
    every process, with the partial folder removed and the older checkpoints intact.
    """
    final_dir = os.path.join(output_dir, f"{CHECKPOINT_PREFIX}{global_step}")
    partial_dir = os.path.join(output_dir, f".{CHECKPOINT_PREFIX}{global_step}{PARTIAL_SUFFIX}")
    what = f"{CHECKPOINT_PREFIX}{global_step}"

    def agree_on(error: Optional[Exception]):
        """Every process at the same point (this replaces a barrier): raise on all if a write failed on any."""
        failed = count_processes(accelerator, error is not None)
        if not failed:
            return
        if accelerator.is_main_process:
            shutil.rmtree(partial_dir, ignore_errors=True)
        message = write_failure_message(what, output_dir, error, newest_checkpoint_text(output_dir), failed)
        if accelerator.num_processes > 1:
            message = f"Process {accelerator.process_index}: {message}"
        raise WriteFailed(message) from error

    error = None
    if accelerator.is_main_process:
        try:
            shutil.rmtree(partial_dir, ignore_errors=True)
            os.makedirs(partial_dir)
        except WRITE_ERRORS as failure:
            error = failure
    agree_on(error)

    try:
        accelerator.save_state(partial_dir)
        save_file(
            {"state": noise_generator.get_state()},
            os.path.join(partial_dir, NOISE_GENERATOR_NAME.format(process_index=accelerator.process_index)),
        )
    except WRITE_ERRORS as failure:
        error = failure
    agree_on(error)

    removed = []
    if accelerator.is_main_process:
        try:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(partial_dir, EMA_FOLDER))
            # Written last: its presence is what marks a checkpoint as complete.
            with open(os.path.join(partial_dir, TRAINING_STATE_NAME), "w") as f:
                json.dump(training_state, f, indent=2)
            if os.path.isdir(final_dir):
                shutil.rmtree(final_dir)
            os.replace(partial_dir, final_dir)
        except WRITE_ERRORS as failure:
            error = failure
    agree_on(error)
    if accelerator.is_main_process:
        removed = rotate_checkpoints(output_dir, checkpoints_total_limit)
    accelerator.wait_for_everyone()
    return removed


def load_checkpoint_extras(accelerator, checkpoint_dir: str, ema_model, noise_generator):
    """Restore what `accelerator.load_state` does not: the EMA weights and this process's noise generator."""
    generator_file = os.path.join(checkpoint_dir, NOISE_GENERATOR_NAME.format(process_index=accelerator.process_index))
    if not os.path.isfile(generator_file):
        raise ValueError(
            f"Checkpoint {checkpoint_dir!r} has no noise generator state for process {accelerator.process_index} "
            f"({os.path.basename(generator_file)}): it was written by a run with fewer processes; resume with the "
            "same number of processes."
        )
    noise_generator.set_state(load_file(generator_file)["state"])
    if ema_model is not None:
        ema_dir = os.path.join(checkpoint_dir, EMA_FOLDER)
        if not os.path.isdir(ema_dir):
            raise ValueError(
                f"Checkpoint {checkpoint_dir!r} holds no EMA weights ({EMA_FOLDER}/): it was written without "
                "--use_ema; resume without --use_ema or start a new run."
            )
        loaded = type(ema_model).from_pretrained(ema_dir, model_cls=ema_model.model_cls)
        ema_model.load_state_dict(loaded.state_dict())


def is_partial_checkpoint(name: str) -> bool:
    return name.startswith(f".{CHECKPOINT_PREFIX}") and name.endswith(PARTIAL_SUFFIX)


def remove_partial_checkpoints(output_dir: str):
    """Delete the `.checkpoint-N.partial` folders that runs killed while writing a checkpoint left behind."""
    if not os.path.isdir(output_dir):
        return
    for name in os.listdir(output_dir):
        if is_partial_checkpoint(name):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


def rotate_checkpoints(output_dir: str, checkpoints_total_limit: Optional[int]) -> List[str]:
    """Keep the newest `checkpoints_total_limit` complete checkpoints; return the folders removed."""
    if checkpoints_total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    removed = [path for _, path in checkpoints[: max(0, len(checkpoints) - checkpoints_total_limit)]]
    for path in removed:
        shutil.rmtree(path)
    return removed
