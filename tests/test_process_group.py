"""Ending a multi-process run: `settle_process_group` leaves gloo holding no Python tensor, so that tearing the group
down cannot deadlock on the GIL (training/process_group.py; the soak test, benchmarks/soak_launches.py, launches the
three training scripts on two processes 50 times each)."""

import subprocess
import sys
import textwrap

import pytest

from diffkit.training.process_group import settle_process_group

from .utils import REPO_ROOT, free_port

# Two processes train a DDP layer and gather the loss as the training scripts do, then settle: every tensor that the
# collectives touched must then be freed (gloo's threads needed the GIL for that, which settling lets them take).
TWO_PROCESS_SCRIPT = """
    import weakref
    import torch
    import torch.distributed as dist
    from diffkit.training.process_group import settle_process_group

    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))
    touched = []
    for _ in range(3):
        loss = model(torch.randn(8, 64)).pow(2).mean()
        loss.backward()
        gathered = [torch.zeros(1) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, loss.detach().reshape(1))
        touched += [weakref.ref(tensor) for tensor in gathered]
        del gathered
    dist.barrier()
    assert settle_process_group()
    alive = sum(ref() is not None for ref in touched)
    print(f"rank {dist.get_rank()}: {alive} tensors still held by gloo after settling", flush=True)
    assert alive == 0
    dist.destroy_process_group()
    del model  # the reducer's reference to the group goes last, as when a training script's main returns
"""


def test_one_process_has_nothing_to_settle():
    assert settle_process_group()


@pytest.mark.slow
def test_two_processes_settle_and_exit(tmp_path):
    script = tmp_path / "settle.py"
    script.write_text(textwrap.dedent(TWO_PROCESS_SCRIPT))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(script)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("0 tensors still held by gloo after settling") == 2
