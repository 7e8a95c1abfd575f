"""Ending a multi-process run without hanging: the process group is torn down only once gloo holds no Python tensor.

Why a two-process run could hang after its last line (issue 37; seen 1 launch in 12 to 20 here, under load): the
gloo backend runs each collective on a worker thread, which frees the work when it is done, and with it the
tensors the collective read and wrote. Tensors made in Python (the loss that `accelerator.gather` collects, DDP's
gradients once Python has touched them) have a Python object, and freeing it takes the GIL. When the run ends,
`destroy_process_group` drops the group from torch's tables, but DDP's reducer still holds it, so the group itself
is destroyed when `main` returns and the prepared model is freed: its destructor joins the worker threads while the
main thread holds the GIL. A worker thread still freeing the work of the last collective (the final
`wait_for_everyone`'s barrier, which holds the loss gather) waits for that GIL, and the main thread waits for the
worker: a deadlock, in the process that reaches the teardown first (the one that does not sample and save). The
launcher then waits for it forever. A native stack of the hung process (py-spy) shows exactly this:
`~ProcessGroupGloo -> std::thread::join` on the main thread, `~AsyncBarrierWork -> ~AsyncAllgatherWork ->
decref_pyobject -> gil_scoped_acquire` on a gloo thread.

`settle_process_group` closes the window: after a barrier, it runs one small all-reduce per gloo worker thread on
tensors it holds only weakly, and sleeps (which releases the GIL) until gloo has freed them all, so that every
worker thread has finished freeing what came before. Only then may the group be destroyed.
"""

import contextlib
import datetime
import logging
import time
import weakref
from typing import Callable

import torch
from accelerate.utils import InitProcessGroupKwargs

logger = logging.getLogger(__name__)

# gloo runs a process group's collectives on this many worker threads (torch's default for ProcessGroupGloo); one
# sentinel collective each. More sentinels than threads only cost a few microseconds.
GLOO_WORKER_THREADS = 2
# How long the sentinels may take to be freed before the teardown goes on regardless (and says so).
SETTLE_TIMEOUT_S = 30.0
SETTLE_POLL_S = 0.005
# What a failed gloo collective's message holds (torch raises a plain RuntimeError, not a DistError, for gloo).
GLOO_FAILURE_MARKER = "gloo/transport"


def process_group_kwargs(timeout_s: float) -> InitProcessGroupKwargs:
    """The process group's settings for `Accelerator(kwargs_handlers=[...])`: every collective (DDP's gradient
    all-reduce included) gives up after `timeout_s` seconds instead of waiting forever for a process that hangs."""
    return InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=timeout_s))


def count_processes(accelerator, flag: bool) -> int:
    """How many processes pass a true `flag` (a sum over the processes: every process must ask at the same point;
    a sum because accelerate's floor, 1.1, has no "max" reduction)."""
    count = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        count = accelerator.reduce(count, reduction="sum")
    return int(count.item())


class CollectiveFailure(RuntimeError):
    """A collective timed out or lost a process: `run_script` ends the run with its message, naming the process and
    the step, without a traceback."""


def is_collective_failure(error: BaseException) -> bool:
    dist_error = getattr(torch.distributed, "DistError", ())  # NCCL's and the store's errors (torch >= 2.2)
    return isinstance(error, dist_error) or GLOO_FAILURE_MARKER in str(error)


@contextlib.contextmanager
def collective_failures_named(accelerator, timeout_s: float, last_step: Callable[[], int]):
    """Turn a collective that timed out or lost a process inside the block into a `CollectiveFailure` saying which
    process gave up after which step (`last_step()`, the last step it finished) and what to do.

    Example:

    ```py
    >>> from types import SimpleNamespace
    >>> accelerator = SimpleNamespace(num_processes=2, process_index=1)
    >>> try:
    ...     with collective_failures_named(accelerator, 5, lambda: 7):
    ...         raise RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv")
    ... except CollectiveFailure as failure:
    ...     print(str(failure)[:59])
    Process 1 of 2 gave up on the other processes after step 7:

    ```
    """
    try:
        yield
    except RuntimeError as error:
        if accelerator.num_processes == 1 or isinstance(error, CollectiveFailure) or not is_collective_failure(error):
            raise
        if "timed out" in str(error).lower():
            cause = (
                f"a collective waited more than --ddp_timeout ({timeout_s:g} s) for them, so one of them hangs or is "
                "stopped (its log says where), or it is that much slower: raise --ddp_timeout if that is expected"
            )
        else:
            cause = "another process is gone: it stopped with an error or was killed (its log above says why)"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CollectiveFailure(
            f"Process {accelerator.process_index} of {accelerator.num_processes} gave up on the other processes after "
            f"step {last_step()}: {cause}. Run the same command with --resume_from_checkpoint latest to go on from "
            f"the newest checkpoint. ({first_line})"
        ) from None


def settle_process_group() -> bool:
    """Wait until gloo's worker threads hold no Python tensor; call it on every process, at the same point, after
    the last collective and before the process group is destroyed (`accelerator.end_training()`).

    Returns True when the group is settled (or there is nothing to settle: one process, or another backend), False
    after SETTLE_TIMEOUT_S, with a warning: the teardown may then hang as described above.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return True
    if torch.distributed.get_backend() != "gloo":
        return True
    torch.distributed.barrier()  # every earlier collective has completed, on every process
    sentinels = [torch.zeros(1) for _ in range(GLOO_WORKER_THREADS)]
    alive = [weakref.ref(sentinel) for sentinel in sentinels]
    for sentinel in sentinels:
        torch.distributed.all_reduce(sentinel)
    del sentinels, sentinel  # gloo's works now hold the only references
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any(ref() is not None for ref in alive):
        if time.monotonic() > deadline:
            logger.warning(
                f"gloo still held tensors {SETTLE_TIMEOUT_S:.0f} s after the last collective; ending the run anyway "
                "(if it hangs now, its outputs are already written)."
            )
            return False
        time.sleep(SETTLE_POLL_S)  # releases the GIL, which gloo's threads need to free the tensors
    time.sleep(SETTLE_POLL_S)  # and a last turn of the GIL for a thread that freed its work just before ours
    return True


def release_process_group():
    """Destroy the process group that `main` left behind because it stopped with an error, whatever its backend.

    A gloo worker thread that drops the last reference to a finished collective (say the `gather` of the loss) must
    take the GIL to free its tensors; if the interpreter is already shutting down, that thread is killed inside C++
    and the process aborts with "terminate called without an active exception" (SIGABRT) instead of exiting with the
    error. Destroying the group first joins those threads while Python is still alive. An NCCL group not destroyed
    leaks its communicators (torch warns so at exit). On success `accelerator.end_training()` has destroyed it
    already, after `settle_process_group`.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
