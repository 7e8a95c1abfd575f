"""Stopping for preemption: on SIGTERM or SIGUSR1, every process stops at the same step boundary, a checkpoint is
written (atomically, as every checkpoint), and the run exits with `PREEMPTED_EXIT_STATUS` and a line saying how to
resume.

SLURM, Kubernetes and spot instances send SIGTERM (SLURM also SIGUSR1, with `--signal`) and kill some seconds later;
`accelerate launch` forwards its own SIGTERM to the processes and kills them 30 s later (torchrun, several
processes) or 5 s later (one process, accelerate 1.16). The signal handler only records the signal: the training
loop asks `StopSignals.agreed(accelerator)` at each step boundary, a sum over the processes (one float),
so that a signal that reached one process stops all of them at the same step.

Sampling and evaluation, which can take minutes between two step boundaries, run through
`StopSignals.interruptible`: there a signal cuts them short at once (the handler raises `Interrupted`, which the
method catches), and the loop stops at the boundary that follows.
"""

import contextlib
import logging
import signal
import threading
import time
from typing import Callable, Optional

from diffkit.training.process_group import count_processes

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# sysexits' EX_TEMPFAIL: "a temporary failure; the user is invited to retry" (1 is an error, 2 a usage error).
PREEMPTED_EXIT_STATUS = 75


class Preempted(Exception):
    """A script stopped on a signal after writing its checkpoint; `run_script` exits with PREEMPTED_EXIT_STATUS."""


class Interrupted(BaseException):
    """Raised by the signal handler inside `StopSignals.interruptible` (a BaseException, as KeyboardInterrupt is, so
    that no `except Exception` in a library swallows it)."""


class StopSignals:
    """Records SIGTERM and SIGUSR1 (their handlers are installed by `install`, put back by `restore` or by
    `signal_handlers_restored` around the script's `main`).

    Example:

    ```py
    >>> stop = StopSignals().install()
    >>> stop.received is None
    True
    >>> stop.restore()

    ```
    """

    def __init__(self):
        self.received: Optional[signal.Signals] = None
        self.received_at: Optional[float] = None
        self.stopping = False
        # True while `interruptible` runs: the handler then raises `Interrupted` (once) instead of only recording.
        self.raising = False
        self.previous_handlers = {}

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # Python runs signal handlers there only
            for signal_number in STOP_SIGNALS:
                self.previous_handlers[signal_number] = signal.signal(signal_number, self.record)
        return self

    def restore(self):
        for signal_number, handler in self.previous_handlers.items():
            signal.signal(signal_number, handler)
        self.previous_handlers = {}

    def record(self, signal_number, frame):
        if self.received is None:
            self.received, self.received_at = signal.Signals(signal_number), time.monotonic()
        if self.raising:
            self.raising = False  # one Interrupted per interruptible call, however many signals come
            raise Interrupted()

    def interruptible(self, what: str, function: Callable, *args, **kwargs):
        """`function(*args, **kwargs)` (sampling, evaluation), cut short by a stop signal that comes before or during
        it: its result, or None when a signal stopped it. Nothing it left half done may matter (the callers keep the
        weights' restore outside it).

        Example:

        ```py
        >>> stop = StopSignals()
        >>> stop.interruptible("adding", sum, [1, 2])
        3

        ```
        """
        if self.received is not None:
            return None
        try:
            self.raising = True
            try:
                return function(*args, **kwargs)
            finally:
                self.raising = False
        except Interrupted:  # the outer try also catches one raised in the inner `finally`, just before it ran
            logger.warning(f"{self.received.name} cut {what} short.")
            return None

    def agreed(self, accelerator) -> bool:
        """Whether any process received a stop signal: every process must ask at the same step boundary."""
        self.stopping = count_processes(accelerator, self.received is not None) > 0
        return self.stopping

    def seconds_since_signal(self) -> Optional[float]:
        return None if self.received_at is None else time.monotonic() - self.received_at

    def stop_message(self, what: str, step: int, checkpoint_dir: str) -> str:
        source = self.received.name if self.received is not None else "a stop signal on another process"
        since = self.seconds_since_signal()
        timing = f", {since:.1f} s after the signal" if since is not None else ""
        return (
            f"Stopped by {source} at step {step}: {what} saved to {checkpoint_dir}{timing}. Run the same command "
            "with --resume_from_checkpoint latest to go on; the result is the uninterrupted run's, bit for bit."
        )


@contextlib.contextmanager
def signal_handlers_restored():
    """Put SIGTERM's and SIGUSR1's handlers back as they were when the block ends, however it ends (a script's
    `main` installs `StopSignals`' for its training loop)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal_number: signal.getsignal(signal_number) for signal_number in STOP_SIGNALS}
    try:
        yield
    finally:
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)
