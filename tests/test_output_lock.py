"""One live training run per output folder: an OS lock that a second run meets and a killed run never leaves held."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from accelerate import Accelerator

from diffkit.training.output_lock import (
    LOCK_NAME,
    OutputDirInUseError,
    acquire_output_dir,
    check_output_dir_free,
    hold_output_dir_for_run,
    release_output_dir,
)

from .test_multiprocess import launch_two_processes
from .test_train import QUICK_RUN, write_unet_config
from .utils import (
    REPO_ROOT,
    TINY_CONDITION_UNET_CONFIG,
    accelerate_launch_command,
    assert_launch_succeeded,
    run_accelerate_launch,
)


def start_holder(output_dir):
    """Another process that takes the lock on `output_dir` and keeps it until it is killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from diffkit.training.output_lock import acquire_output_dir
        acquire_output_dir({str(output_dir)!r})
        print("held", flush=True)
        time.sleep(600)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow
def test_a_held_folder_is_refused_with_the_holder_named_and_a_killed_holder_blocks_nothing(tmp_path):
    output_dir = tmp_path / "out"
    holder = start_holder(output_dir)
    try:
        expected = rf"in use by another training run \(pid {holder.pid} on host {socket.gethostname()}, started 20"
        with pytest.raises(OutputDirInUseError, match=expected):
            check_output_dir_free(str(output_dir))
        with pytest.raises(OutputDirInUseError, match=expected):
            acquire_output_dir(str(output_dir))
    finally:
        holder.kill()
        holder.wait()
    # the lock file is still there, but nothing holds it any more
    assert (output_dir / LOCK_NAME).is_file()
    check_output_dir_free(str(output_dir))
    fd = acquire_output_dir(str(output_dir))
    try:
        assert json.loads((output_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        release_output_dir(fd)


def test_the_main_process_holds_the_folder_for_the_run(tmp_path):
    accelerator = Accelerator(cpu=True)
    fd = hold_output_dir_for_run(accelerator, str(tmp_path / "out"))
    try:
        assert fd is not None
        # a second holder, even in the same process, is refused
        with pytest.raises(OutputDirInUseError, match=f"pid {os.getpid()} "):
            hold_output_dir_for_run(accelerator, str(tmp_path / "out"))
    finally:
        release_output_dir(fd)
    release_output_dir(hold_output_dir_for_run(accelerator, str(tmp_path / "out")))


@pytest.mark.slow
def test_a_second_run_on_a_live_runs_folder_stops_at_once(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    run = [
        *QUICK_RUN,
        "--max_train_steps",
        "100000",
        "--checkpointing_steps",
        "4",
        "--checkpoints_total_limit",
        "2",
        "--output_dir",
        str(output_dir),
        "--model_config_name_or_path",
        unet_config,
    ]
    first = subprocess.Popen(
        accelerate_launch_command(run),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not (output_dir / "checkpoint-4").is_dir():
            assert first.poll() is None and time.time() < deadline, "the first run did not reach checkpoint-4"
            time.sleep(0.05)
        holder = json.loads((output_dir / LOCK_NAME).read_text())
        for extra in (["--resume_from_checkpoint", "latest"], []):
            started = time.time()
            second = run_accelerate_launch([*run, *extra])
            assert second.returncode != 0
            assert f"is in use by another training run (pid {holder['pid']} on host {holder['host']}" in second.stderr
            assert "choose another --output_dir" in second.stderr
            assert "Running training" not in second.stderr  # it stopped before any work
            assert time.time() - started < 60
        assert first.poll() is None  # the first run was not disturbed
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def assert_refused_as_a_usage_error(result, script, holder_pid):
    """`SCRIPT: error: ...` naming the holder, as for any bad flag: no traceback through the script."""
    refusal = f"{script}: error: `--output_dir` "
    lines = [line for line in result.stderr.splitlines() if line.startswith(refusal)]
    assert lines and f"is in use by another training run (pid {holder_pid} " in lines[0], result.stderr[-5000:]
    assert "choose another --output_dir" in lines[0]
    assert f'training/{script}", line' not in result.stderr, result.stderr[-5000:]
    assert "You must initialize the accelerate state" not in result.stderr
    assert "Running training" not in result.stderr  # it stopped before any work


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train.py", "train_vae.py"])
def test_a_held_folder_is_a_usage_error_with_exit_status_2(tmp_path, script):
    output_dir = tmp_path / "out"
    holder = start_holder(output_dir)
    try:
        # run directly, as `accelerate launch` turns any failure of a single process into its own exit status 1
        command = [sys.executable, os.path.join(REPO_ROOT, "training", script), "--output_dir", str(output_dir)]
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 2, result.stderr[-5000:]
    assert_refused_as_a_usage_error(result, script, holder.pid)


@pytest.mark.slow
def test_two_process_run_holds_the_folder_once_and_every_rank_stops_when_it_is_taken(tmp_path):
    output_dir = tmp_path / "out"
    holder = start_holder(output_dir)
    try:
        refused = launch_two_processes(output_dir, "multi_gpu_flags")
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode != 0
    # Each rank refuses on its own, but torchrun stops the others as soon as one exits, so the second rank's line
    # may never be printed: one is what a person is sure to see.
    assert_refused_as_a_usage_error(refused, "train.py", holder.pid)
    assert "terminate called" not in refused.stderr
    # once the other holder is gone, the two processes share the main process's lock and finish
    assert_launch_succeeded(launch_two_processes(output_dir, "multi_gpu_flags"))
    assert (output_dir / "model_index.json").is_file()
