"""One live training run per output folder.

A run holds an exclusive `fcntl.flock` on `OUTPUT_DIR/.diffkit-run.lock` for its whole life. The operating system
releases it when the process ends, however it ends, so a lock left by a killed run never blocks a resume: only a
live process can hold it. The file itself stays (deleting it while another process has it open would let two runs
lock two different files); it holds the holder's pid, host and start time, which the error for a second run quotes.
In a multi-process run the main process holds the lock for every rank.

`flock` is advisory and local: it does not protect a folder on a network file system shared between machines.
"""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Optional

LOCK_NAME = ".diffkit-run.lock"
# A run that checks whether the folder is free holds a shared lock for an instant; the run that takes the folder
# retries for this long before it concludes that another run holds it.
ACQUIRE_RETRY_SECONDS = 2.0
ACQUIRE_RETRY_INTERVAL = 0.05


class OutputDirInUseError(ValueError):
    """Another live training run holds the output folder.

    A `ValueError`, as every check of a flag's value is: whether it is found while the flags are checked or when the
    run takes the folder, the command reports it as `SCRIPT: error: ...` with exit status 2 and no traceback.
    """


def lock_path(output_dir: str) -> str:
    return os.path.join(output_dir, LOCK_NAME)


def describe_holder(output_dir: str) -> str:
    """The holder as its lock file records it, e.g. 'pid 4242 on host gpu-3, started 2026-12-01 16:40:02 UTC'."""
    try:
        with open(lock_path(output_dir)) as f:
            holder = json.load(f)
        return f"pid {holder['pid']} on host {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError):  # written at this instant, or by something else
        return "a process whose details could not be read"


def in_use_error(output_dir: str) -> OutputDirInUseError:
    return OutputDirInUseError(
        f"`--output_dir` {output_dir!r} is in use by another training run ({describe_holder(output_dir)}). Two runs "
        "in one folder would overwrite each other's checkpoints and outputs: wait for that run to finish (or stop "
        "it, then resume with --resume_from_checkpoint latest), or choose another --output_dir."
    )


def check_output_dir_free(output_dir: str):
    """Raise `OutputDirInUseError` if a live run holds `output_dir`; takes nothing (used to validate flags)."""
    if not os.path.isfile(lock_path(output_dir)):
        return
    with open(lock_path(output_dir)) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise in_use_error(output_dir) from None
            raise
        fcntl.flock(f, fcntl.LOCK_UN)


def acquire_output_dir(output_dir: str) -> int:
    """Take the lock on `output_dir` (created if needed) for this process; return the file descriptor to keep open.

    Raises `OutputDirInUseError`, naming the holder, if another live process holds it.
    """
    os.makedirs(output_dir, exist_ok=True)
    fd = os.open(lock_path(output_dir), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + ACQUIRE_RETRY_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            if time.monotonic() >= deadline:
                os.close(fd)
                raise in_use_error(output_dir) from None
            time.sleep(ACQUIRE_RETRY_INTERVAL)
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    return fd


def release_output_dir(fd: Optional[int]):
    """Give the lock back (the OS does this anyway when the process ends)."""
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def hold_output_dir_for_run(accelerator, output_dir: str) -> Optional[int]:
    """The main process takes the lock on `output_dir` for all ranks; every rank raises if it is held elsewhere.

    Returns the lock's file descriptor on the main process (None on the others): keep it until the run ends.
    """
    from accelerate.utils import broadcast_object_list

    fd, problem = None, [None]
    if accelerator.is_main_process:
        try:
            fd = acquire_output_dir(output_dir)
        except OutputDirInUseError as error:
            problem = [str(error)]
    # The other ranks learn the outcome from the main process, so that all of them stop, not only the main one.
    problem = broadcast_object_list(problem)
    if problem[0] is not None:
        raise OutputDirInUseError(problem[0])
    return fd
