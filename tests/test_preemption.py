"""Preemption: a real SIGTERM or SIGUSR1, through `accelerate launch`, stops the run at the next step with a
checkpoint and a line saying how to resume, and the resumed run ends with the uninterrupted run's weights, bit for
bit (training/preemption.py)."""

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
import torch

from diffkit.training.checkpointing import list_checkpoints
from diffkit.training.preemption import PREEMPTED_EXIT_STATUS, StopSignals, signal_handlers_restored

from .test_checkpointing import RESUME_RUN, assert_same_weights
from .utils import REPO_ROOT, accelerate_launch_command, assert_launch_succeeded, free_port

UNET_WEIGHTS = os.path.join("unet", "diffusion_pytorch_model.safetensors")
STEPS = 30
# The first step at which the signal may come: the run has then trained, and has STEPS - 3 steps left.
SIGNAL_AFTER_STEP = 3


def two_process_command(args):
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        os.path.join(REPO_ROOT, "training", "train.py"), *args,
    ]  # fmt: skip


def launch(command, log_path):
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_step(process, log_path, step, timeout=240):
    """Block until the run's progress bar shows `step` done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [int(n) for n in re.findall(rf"(\d+)/{STEPS} \[", open(log_path).read())]
        if done and max(done) >= step:
            return max(done)
        assert process.poll() is None, open(log_path).read()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step} in {timeout} s")


def workers(launcher):
    """The training processes under `launcher`, as {rank: process}."""
    children = psutil.Process(launcher.pid).children(recursive=True)
    found = {}
    for child in children:
        try:
            if "train.py" in " ".join(child.cmdline()) and "accelerate" not in " ".join(child.cmdline()):
                found[int(child.environ().get("RANK", "0"))] = child
        except psutil.NoSuchProcess:
            pass
    return found


def run_to_end(command, log_path):
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    open(log_path, "w").write(result.stdout + result.stderr)
    assert_launch_succeeded(result)
    return result


def run_uninterrupted_then_start_another(command_for, tmp_path):
    """Run the STEPS-step run to its end in tmp_path/uninterrupted, then start the same run in tmp_path/preempted
    and wait until it has trained SIGNAL_AFTER_STEP steps; returns (its flags, its folder, its launcher)."""
    args = [*RESUME_RUN, "--max_train_steps", str(STEPS)]
    run_to_end(command_for([*args, "--output_dir", str(tmp_path / "uninterrupted")]), tmp_path / "a.log")
    output_dir = tmp_path / "preempted"
    launcher = launch(command_for([*args, "--output_dir", str(output_dir)]), tmp_path / "b.log")
    wait_for_step(launcher, tmp_path / "b.log", SIGNAL_AFTER_STEP)
    return args, output_dir, launcher


def test_a_signal_is_recorded_and_the_handlers_come_back():
    accelerator = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    before = signal.getsignal(signal.SIGUSR1)
    with signal_handlers_restored():
        stop = StopSignals().install()
        assert not stop.agreed(accelerator)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1 and stop.agreed(accelerator) and stop.stopping
        message = stop.stop_message("the checkpoint", 7, "out/checkpoint-7")
        assert message.startswith("Stopped by SIGUSR1 at step 7: the checkpoint saved to out/checkpoint-7, ")
        assert "--resume_from_checkpoint latest" in message
    assert signal.getsignal(signal.SIGUSR1) == before


@pytest.mark.slow
def test_sigterm_through_accelerate_launch_checkpoints_and_resumes_exactly(tmp_path):
    args, output_dir, launcher = run_uninterrupted_then_start_another(accelerate_launch_command, tmp_path)
    launcher.send_signal(signal.SIGTERM)  # as Kubernetes or a spot instance stops the launcher
    launcher.wait(timeout=120)
    log = open(tmp_path / "b.log").read()
    stopped = re.search(r"Stopped by SIGTERM at step (\d+): the checkpoint saved to (\S+), ([\d.]+) s after", log)
    assert stopped, log[-3000:]
    step = int(stopped.group(1))
    assert SIGNAL_AFTER_STEP <= step < STEPS and list_checkpoints(str(output_dir))[-1][0] == step
    # accelerate's one-process launcher exits with its own signal's status once the worker is done
    assert launcher.returncode == 128 + signal.SIGTERM
    assert not (output_dir / "model_index.json").exists()  # stopped before the end: no final outputs

    resumed = run_to_end(
        accelerate_launch_command([*args, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]),
        tmp_path / "c.log",
    )
    assert f"at step {step} " in resumed.stderr and f"Trained {STEPS} steps" in resumed.stderr
    assert_same_weights(tmp_path / "uninterrupted" / UNET_WEIGHTS, output_dir / UNET_WEIGHTS)


@pytest.mark.slow
def test_sigusr1_to_one_of_two_processes_stops_both_at_one_step_and_resumes_exactly(tmp_path):
    args, output_dir, launcher = run_uninterrupted_then_start_another(two_process_command, tmp_path)
    processes = workers(launcher)
    assert sorted(processes) == [0, 1]
    processes[1].send_signal(signal.SIGUSR1)  # SLURM's --signal reaches the tasks; here only the second one
    launcher.wait(timeout=120)
    log = open(tmp_path / "b.log").read()
    stopped = re.search(r"Stopped by (.+?) at step (\d+): the checkpoint saved to", log)
    assert stopped, log[-3000:]
    # rank 0 logs, and it got no signal itself: it stopped because rank 1 did, at the same step
    assert stopped.group(1) == "a stop signal on another process"
    step = int(stopped.group(2))
    assert list_checkpoints(str(output_dir))[-1][0] == step
    assert f"failed (exitcode: {PREEMPTED_EXIT_STATUS})" in log  # torchrun reports the workers' status

    resumed = run_to_end(
        two_process_command([*args, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest"]),
        tmp_path / "c.log",
    )
    assert f"Trained {STEPS} steps" in resumed.stdout + resumed.stderr
    assert_same_weights(tmp_path / "uninterrupted" / UNET_WEIGHTS, output_dir / UNET_WEIGHTS)


@pytest.mark.slow
def test_the_script_itself_exits_with_the_preempted_status(tmp_path):
    """Run without a launcher (`python training/train.py`, `diffkit-train`), the process's own status says it."""
    args = [*RESUME_RUN, "--max_train_steps", str(STEPS), "--output_dir", str(tmp_path / "out")]
    script = launch([sys.executable, os.path.join(REPO_ROOT, "training", "train.py"), *args], tmp_path / "log")
    wait_for_step(script, tmp_path / "log", SIGNAL_AFTER_STEP)
    script.send_signal(signal.SIGUSR1)
    assert script.wait(timeout=120) == PREEMPTED_EXIT_STATUS
    assert "Traceback" not in open(tmp_path / "log").read()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_vae", "distill"])
def test_vae_training_and_distillation_stop_with_a_checkpoint_too(script, tmp_path):
    from .test_distill import DISTILL_RUN, TINY_UNET2D_CONFIG, train_teacher
    from .test_train_vae import TINY_VAE_RUN

    if script == "train_vae":
        args = [*TINY_VAE_RUN, "--max_train_steps", str(STEPS)]
    else:
        teacher = train_teacher(
            tmp_path / "teacher", tmp_path, TINY_UNET2D_CONFIG, ["--conditioning", "unconditional"]
        )
        args = [*DISTILL_RUN, "--max_train_steps", str(STEPS), "--teacher", str(teacher)]
    output_dir = tmp_path / "out"
    command = [sys.executable, os.path.join(REPO_ROOT, "training", f"{script}.py"), *args]
    process = launch([*command, "--output_dir", str(output_dir)], tmp_path / "log")
    wait_for_step(process, tmp_path / "log", SIGNAL_AFTER_STEP)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == PREEMPTED_EXIT_STATUS
    stopped = re.search(r"Stopped by SIGTERM at step (\d+): the checkpoint saved to", open(tmp_path / "log").read())
    assert stopped and list_checkpoints(str(output_dir))[-1][0] == int(stopped.group(1)) < STEPS


def test_a_signal_cuts_interruptible_work_short_and_only_that():
    def sampling(steps_done):
        for step in range(1000):
            if step == 10:
                os.kill(os.getpid(), signal.SIGUSR1)  # as SLURM's --signal arrives mid-way
            steps_done.append(step)
            time.sleep(0.001)
        return "grid"

    with signal_handlers_restored():
        stop = StopSignals().install()
        steps_done = []
        assert stop.interruptible("the grid", sampling, steps_done) is None
        assert 10 <= len(steps_done) < 20  # stopped at once, not at the end
        assert stop.received == signal.SIGUSR1 and not stop.raising
        steps_done = []
        assert stop.interruptible("the grid", sampling, steps_done) is None and steps_done == []  # not even started
        # outside interruptible work, a signal is only recorded
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == signal.SIGUSR1
