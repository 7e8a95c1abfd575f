"""Faults a run meets: a full disk while a checkpoint or the outputs are written loses nothing (the previous
checkpoint and outputs stay intact, `latest` never picks a partial one, the message names the folder and the free
space), and a NaN or infinite loss stops the run before the weights take it, naming the last good checkpoint, or is
skipped with --skip_nonfinite (training/checkpointing.py, training/train.py)."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from diffkit import UnconditionalImagePipeline
from diffkit.training.arguments import MAX_NONFINITE_IN_A_ROW
from diffkit.training.checkpointing import (
    WriteFailed,
    list_checkpoints,
    load_checkpoint_extras,
    resolve_checkpoint,
    save_checkpoint,
)
from diffkit.training.preemption import PREEMPTED_EXIT_STATUS
from diffkit.training.train import staged_outputs

from .test_checkpointing import RESUME_RUN
from .test_preemption import SIGNAL_AFTER_STEP, STEPS, launch, two_process_command, wait_for_step, workers
from .utils import REPO_ROOT, TINY_UNET2D_CONFIG
from .write_faults import counted_writes, failing_write

NO_SPACE = "No space left on device [Errno 28]"

# A learning rate of 1e30 moves every weight by about 1e30 in the first AdamW step: the second step's loss is NaN.
DIVERGING_RUN = [
    "--conditioning", "unconditional", "--max_train_samples", "40", "--max_train_steps", "6", "--train_batch_size",
    "4", "--lr_warmup_steps", "0", "--learning_rate", "1e30", "--resolution", "16", "--num_inference_steps", "2",
    "--num_samples_per_class", "1", "--checkpointing_steps", "1",
]  # fmt: skip


def train(args):
    command = [sys.executable, os.path.join(REPO_ROOT, "training", "train.py"), *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def all_finite(checkpoint_dir):
    weights = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    return all(torch.isfinite(tensor).all() for tensor in weights.values())


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_before_the_weights_take_it(tmp_path):
    result = train([*DIVERGING_RUN, "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "The loss is NaN or infinite at step 2 (on 1 of 1 process(es))" in result.stderr
    assert f"The last good checkpoint is {tmp_path / 'out' / 'checkpoint-1'}" in result.stderr
    checkpoints = list_checkpoints(str(tmp_path / "out"))
    assert [step for step, _ in checkpoints] == [1] and all_finite(checkpoints[0][1])
    assert not (tmp_path / "out" / "model_index.json").exists()


@pytest.mark.slow
def test_skip_nonfinite_skips_until_the_run_has_diverged(tmp_path):
    result = train([*DIVERGING_RUN, "--skip_nonfinite", "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 1
    skipped = result.stderr.count("Skipped the batch of step 2: its loss is NaN or infinite")
    assert skipped == MAX_NONFINITE_IN_A_ROW - 1  # the step is not counted: each retry is step 2 again
    assert f"at {MAX_NONFINITE_IN_A_ROW} batches in a row up to step 2" in result.stderr
    checkpoints = list_checkpoints(str(tmp_path / "out"))
    assert [step for step, _ in checkpoints] == [1] and all_finite(checkpoints[0][1])


def folder_digest(folder) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    digest = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            digest[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return digest


@pytest.fixture
def prepared_training(tmp_path):
    """What a run checkpoints, prepared by a real Accelerator: a tiny UNet, AdamW, a scheduler, a dataloader, an
    EMA and a noise generator."""
    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    unet = UNet2DModel(**TINY_UNET2D_CONFIG)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    dataloader = torch.utils.data.DataLoader(torch.randn(8, 1, 8, 8), batch_size=4, shuffle=True)
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    ema = EMAModel(unet.parameters(), model_cls=UNet2DModel, model_config=unet.config)
    generator = torch.Generator().manual_seed(0)

    def checkpoint(step, checkpoints_total_limit=1):
        state = {"global_step": step}
        return save_checkpoint(
            accelerator, str(tmp_path / "out"), step, state, ema, generator, checkpoints_total_limit
        )

    return accelerator, unet, ema, generator, checkpoint


def test_a_full_disk_at_any_write_of_a_checkpoint_keeps_the_previous_one(tmp_path, prepared_training):
    accelerator, unet, ema, generator, checkpoint = prepared_training
    output_dir = tmp_path / "out"
    checkpoint(1)
    saved_weights = {k: v.clone() for k, v in unet.state_dict().items()}
    saved_generator = generator.get_state().clone()
    before = folder_digest(output_dir / "checkpoint-1")
    with counted_writes() as writes:
        checkpoint(2, checkpoints_total_limit=None)
    shutil.rmtree(output_dir / "checkpoint-2")
    # the model, optimizer, scheduler, sampler, random states, noise generator, EMA weights and config, the state
    assert writes.count >= 10

    # --checkpoints_total_limit 1: a checkpoint-2 that were written would replace checkpoint-1
    for index in range(writes.count):
        with failing_write(index) as fault, pytest.raises(WriteFailed) as failure:
            checkpoint(2)
        assert fault.failed_call is not None
        message = str(failure.value)
        assert message.startswith(f"Could not write checkpoint-2 to {output_dir}: {NO_SPACE}; "), (index, message)
        assert (
            " free there. The newest complete checkpoint, " in message and "--resume_from_checkpoint latest" in message
        )
        # nothing partial is left, the previous checkpoint is intact, and `latest` picks it
        assert sorted(os.listdir(output_dir)) == ["checkpoint-1"], (index, fault.failed_call)
        assert folder_digest(output_dir / "checkpoint-1") == before, (index, fault.failed_call)
        assert resolve_checkpoint(str(output_dir), "latest") == str(output_dir / "checkpoint-1")

    # and it still loads: the weights and the noise generator of step 1 come back
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(1.0)
    generator.manual_seed(123)
    accelerator.load_state(str(output_dir / "checkpoint-1"))
    load_checkpoint_extras(accelerator, str(output_dir / "checkpoint-1"), ema, generator)
    assert all(torch.equal(v, saved_weights[k]) for k, v in unet.state_dict().items())
    assert torch.equal(generator.get_state(), saved_generator)


def write_outputs(output_dir, pipeline, label: str):
    """What the scripts' final save writes, through the same staged_outputs: a pipeline, an image, a JSON file."""
    with staged_outputs(str(output_dir)) as staging_dir:
        pipeline.save_pretrained(staging_dir, safe_serialization=True)
        pipeline(batch_size=1, num_inference_steps=2, output_type="pil").images[0].save(
            os.path.join(staging_dir, "samples.png")
        )
        with open(os.path.join(staging_dir, "training_config.json"), "w") as f:
            json.dump({"label": label}, f)


def test_a_full_disk_at_any_write_of_the_outputs_keeps_the_previous_ones(tmp_path):
    torch.manual_seed(0)
    pipeline = UnconditionalImagePipeline(unet=UNet2DModel(**TINY_UNET2D_CONFIG), scheduler=DDPMScheduler())
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    write_outputs(output_dir, pipeline, "first")
    before = folder_digest(output_dir)
    (tmp_path / "counted").mkdir()
    with counted_writes() as writes:
        write_outputs(tmp_path / "counted", pipeline, "counted")
    assert writes.count >= 8  # the staging folder, the pipeline's configs and weights, the image, the JSON, the moves
    for index in range(writes.count):
        with failing_write(index) as fault, pytest.raises(WriteFailed) as failure:
            write_outputs(output_dir, pipeline, "second")
        message = str(failure.value)
        assert message.startswith(f"Could not write the outputs to {output_dir}: {NO_SPACE}; "), (index, message)
        assert f"What {output_dir} held before is untouched." in message
        # the first outputs, byte for byte, and no staging folder left behind
        assert folder_digest(output_dir) == before, (index, fault.failed_call)
        assert not [name for name in os.listdir(output_dir) if name.startswith(".")], (index, fault.failed_call)
    write_outputs(output_dir, pipeline, "second")  # with space again, the outputs are replaced
    assert json.loads((output_dir / "training_config.json").read_text()) == {"label": "second"}


SMALL_RUN = [
    "--conditioning", "unconditional", "--max_train_samples", "40", "--train_batch_size", "4", "--lr_warmup_steps",
    "0", "--resolution", "16", "--num_inference_steps", "2", "--num_samples_per_class", "1", "--checkpointing_steps",
    "1",
]  # fmt: skip


def in_bytes(size_text: str) -> float:
    """ "4.5 MB" -> 4.5e6, as training/checkpointing.py's size_text writes sizes."""
    number, unit = size_text.split()
    return float(number) * {"bytes": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]


def small_filesystem_shell(mount_point, size_kib: int) -> list:
    """`sh` in a new user and mount namespace (no root needed where the kernel allows unprivileged user namespaces)
    with a `size_kib` tmpfs mounted on `mount_point`: it runs its arguments, then lists the mount point into
    `mount_point`.listing and copies it to `mount_point`.copy, since the tmpfs goes with the namespace."""
    script = (
        'mount -t tmpfs -o size="$1"k tmpfs "$0" || exit 97; shift; "$@"; status=$?; '
        'ls -a "$0" > "$0.listing"; cp -r "$0" "$0.copy"; exit $status'
    )
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(mount_point), str(size_kib)]


def small_filesystems_available(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        result = subprocess.run([*small_filesystem_shell(probe, 64), "true"], capture_output=True, timeout=30)
    except FileNotFoundError:  # no unshare
        return False
    return result.returncode == 0


@pytest.mark.slow
def test_a_full_disk_in_a_two_process_run_stops_both_and_the_previous_checkpoint_resumes(tmp_path):
    if not small_filesystems_available(tmp_path):
        pytest.skip(
            "needs `unshare --user --map-root-user --mount` to mount a small tmpfs (unprivileged user namespaces); "
            "runs wherever the kernel allows them, as on the CI machine (the injected-ENOSPC tests above run always)"
        )
    # How much one checkpoint of this run takes, on the ordinary disk
    measured = tmp_path / "measured"
    assert train([*SMALL_RUN, "--max_train_steps", "1", "--output_dir", str(measured)]).returncode == 0
    checkpoint_kib = sum(f.stat().st_size for f in (measured / "checkpoint-1").rglob("*") if f.is_file()) // 1024
    # Room for checkpoint-1 and half of checkpoint-2
    output_dir = tmp_path / "small"
    output_dir.mkdir()
    run = [*SMALL_RUN, "--max_train_steps", "3", "--output_dir", str(output_dir)]
    command = small_filesystem_shell(output_dir, checkpoint_kib * 3 // 2) + two_process_command(run)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode not in (0, 97), log[-3000:]
    failures = re.findall(r"Process (\d): Could not write checkpoint-2 to (\S+): (.*?); ([\d.]+ \w+) free there", log)
    assert sorted({rank for rank, *_ in failures}) == ["0", "1"], log[-5000:]  # both processes stop, with the message
    assert {folder for _, folder, *_ in failures} == {str(output_dir)}
    # torch.save's writer names no cause ("unexpected pos"), safetensors and Python's writes do; the sizes tell
    newest = re.search(
        rf"The newest complete checkpoint, {output_dir / 'checkpoint-1'} \(([\d.]+ \w+)\), is intact", log
    )
    assert newest, log[-3000:]
    assert in_bytes(failures[0][3]) < in_bytes(newest.group(1))  # less room than a checkpoint takes
    assert "Traceback" not in log.split("Could not write checkpoint-2")[0]  # no traceback before the message
    # No partial checkpoint is left, and checkpoint-1 is complete: a run resumed from it finishes
    listing = (tmp_path / "small.listing").read_text().split()
    assert "checkpoint-1" in listing and not [name for name in listing if name.startswith(".checkpoint")], listing
    copy = tmp_path / "small.copy"
    assert resolve_checkpoint(str(copy), "latest") == str(copy / "checkpoint-1")
    resumed = train([*run[:-1], str(copy), "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from" in resumed.stderr and "Trained 3 steps" in resumed.stderr


@pytest.mark.slow
def test_a_hung_process_ends_a_two_process_run_naming_the_process_and_the_step(tmp_path):
    run = [*RESUME_RUN, "--max_train_steps", str(STEPS), "--ddp_timeout", "5", "--output_dir", str(tmp_path / "out")]
    launcher = launch(two_process_command(run), tmp_path / "run.log")
    try:
        wait_for_step(launcher, tmp_path / "run.log", SIGNAL_AFTER_STEP)
        hung = workers(launcher)[1]
        hung.suspend()  # SIGSTOP: the process hangs, as one stuck in a kernel call or a deadlock does
        deadline = time.monotonic() + 120
        while "gave up on the other processes" not in (tmp_path / "run.log").read_text():
            assert time.monotonic() < deadline and launcher.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.1)
        hung.resume()  # so that it sees the others gone at once, instead of torchrun killing it 30 s later
        launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    log = (tmp_path / "run.log").read_text()
    assert launcher.returncode != 0
    gave_up = re.search(r"Process 0 of 2 gave up on the other processes after step (\d+): a collective waited", log)
    assert gave_up and "more than --ddp_timeout (5 s)" in log, log[-3000:]
    assert SIGNAL_AFTER_STEP <= int(gave_up.group(1)) < STEPS
    # and the one that hung, once it runs again, finds the other gone
    assert "Process 1 of 2 gave up on the other processes after step" in log, log[-3000:]


@pytest.mark.slow
def test_a_signal_while_the_sample_grid_is_drawn_stops_at_once_with_the_last_checkpoint(tmp_path):
    # 3 steps, then a grid of 400 sampling steps: the signal comes while it is drawn
    run = [*SMALL_RUN[:-2], "--max_train_steps", "3", "--num_inference_steps", "400", "--output_dir", str(tmp_path)]
    command = [sys.executable, os.path.join(REPO_ROOT, "training", "train.py"), *run]
    log_path = tmp_path.parent / "grid.log"
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not re.search(r"Sampling:\s+\d+%.*?\| [1-9]\d*/400", log_path.read_text()):
        assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    log = log_path.read_text()
    assert process.returncode == PREEMPTED_EXIT_STATUS, log[-3000:]
    assert "SIGTERM cut the sample grid short." in log
    stopped = re.search(r"Stopped by SIGTERM at step 3: the checkpoint saved to \S+, ([\d.]+) s after the signal", log)
    assert stopped and float(stopped.group(1)) < 30, log[-3000:]
    assert [step for step, _ in list_checkpoints(str(tmp_path))] == [3]
    assert not (tmp_path / "model_index.json").exists()
    # the resumed run trains nothing more: it draws the grid and writes the outputs
    resumed = train([*run, "--resume_from_checkpoint", "latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Trained 3 steps" in resumed.stderr and (tmp_path / "model_index.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_vae", "distill"])
def test_a_nan_loss_stops_vae_training_and_distillation_too(script, tmp_path):
    from .test_distill import DISTILL_RUN, train_teacher
    from .test_train_vae import TINY_VAE_RUN

    if script == "train_vae":
        args = list(TINY_VAE_RUN)
    else:
        teacher = train_teacher(
            tmp_path / "teacher", tmp_path, TINY_UNET2D_CONFIG, ["--conditioning", "unconditional"]
        )
        args = [*DISTILL_RUN, "--teacher", str(teacher)]
    diverging = ["--learning_rate", "1e30", "--lr_warmup_steps", "0", "--checkpointing_steps", "1"]
    output_dir = tmp_path / "out"
    command = [sys.executable, os.path.join(REPO_ROOT, "training", f"{script}.py"), *args, *diverging]
    result = subprocess.run(
        [*command, "--output_dir", str(output_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    stopped = re.search(r"The loss is NaN or infinite at step (\d+) \(on 1 of 1 process\(es\)\)", result.stderr)
    assert stopped, result.stderr[-3000:]
    checkpoints = list_checkpoints(str(output_dir))
    assert [step for step, _ in checkpoints] == list(range(1, int(stopped.group(1))))
    assert checkpoints and all(all_finite(path) for _, path in checkpoints)
    assert f"The last good checkpoint is {checkpoints[-1][1]}" in result.stderr
