"""Soak test of multi-process launches: N consecutive two-process runs of train.py, train_vae.py and distill.py,
each of which must exit 0 within a time limit (issue 37: one launch in 12 to 20 hung after its work was done).

    python -m benchmarks.soak_launches [--runs 50] [--scripts train,train_vae,distill] [--limit_s 120]

Each launch is `accelerate launch --multi_gpu --num_processes 2` of a few optimisation steps on a handful of real
digits with a tiny model (joined over gloo on a machine without GPUs), as the tests run them. A launch still running
at `--limit_s` counts as hung: its processes' Python and native stacks are written beside the table (with py-spy,
when installed: `pip install py-spy`), then the process group is killed and the soak goes on. The table
(`benchmarks/results/soak.md`) is rewritten after every launch. Not part of the test suite: 150 launches take about
an hour on 2 CPU cores.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from tests.utils import REPO_ROOT, TINY_UNET2D_CONFIG, free_port

SCRIPTS = ("train", "train_vae", "distill")
RESOLUTION = 16
TRAIN_RUN = [
    "--conditioning", "unconditional", "--max_train_samples", "40", "--max_train_steps", "3",
    "--train_batch_size", "4", "--lr_warmup_steps", "1", "--resolution", str(RESOLUTION),
    "--num_inference_steps", "2", "--num_samples_per_class", "2", "--checkpointing_steps", "3",
]  # fmt: skip
VAE_RUN = [
    "--max_train_samples", "80", "--num_held_out", "16", "--train_batch_size", "8", "--max_train_steps", "3",
    "--block_out_channels", "8", "16", "16", "--norm_num_groups", "8", "--latent_channels", "2",
    "--disc_start", "2", "--checkpointing_steps", "3", "--lr_warmup_steps", "1",
]  # fmt: skip
DISTILL_RUN = [
    "--max_train_steps", "2", "--train_batch_size", "4", "--checkpointing_steps", "2",
    "--num_inference_steps", "2", "--num_samples_per_class", "1",
]  # fmt: skip


def launch_command(script, processes, args):
    return [
        sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if processes > 1 else []),
        "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
        os.path.join(REPO_ROOT, "training", f"{script}.py"), *args,
    ]  # fmt: skip


def dump_stacks(process_group_id, path):
    """Python and native stacks of every process of the hung launch (needs py-spy), to `path`."""
    py_spy = shutil.which("py-spy")
    with open(path, "w") as f:
        if py_spy is None:
            f.write("py-spy is not installed: `pip install py-spy` to record the stacks of a hung launch.\n")
            return
        pids = subprocess.run(["pgrep", "-g", str(process_group_id)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            f.write(f"== pid {pid}\n")
            dump = subprocess.run([py_spy, "dump", "--native", "--pid", pid], capture_output=True, text=True)
            f.write(dump.stdout + dump.stderr)


def run_once(command, limit_s, log_path, stacks_path):
    """(exit status or None when it hung, seconds)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            status = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            dump_stacks(process.pid, stacks_path)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = None
    return status, time.perf_counter() - start


def write_table(path, results, args, started):
    lines = [
        f"`python -m benchmarks.soak_launches --runs {args.runs} --limit_s {args.limit_s:.0f}` on {os.cpu_count()} "
        "CPU cores: two-process launches over gloo, one after the other.",
        "",
        "| script | launches | exit 0 | hung | failed | median s | slowest s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for script, runs in results.items():
        seconds = [s for _, s in runs]
        hung = sum(status is None for status, _ in runs)
        failed = sum(status not in (0, None) for status, _ in runs)
        ok = sum(status == 0 for status, _ in runs)
        median = f"{statistics.median(seconds):.1f}" if seconds else ""
        slowest = f"{max(seconds):.1f}" if seconds else ""
        lines.append(f"| {script} | {len(runs)} | {ok} | {hung} | {failed} | {median} | {slowest} |")
    lines += ["", f"Total {time.perf_counter() - started:.0f} s."]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".partial", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".partial", path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak_launches", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="Launches of each script.")
    parser.add_argument("--scripts", default=",".join(SCRIPTS), help=f"Comma-separated, of {list(SCRIPTS)}.")
    parser.add_argument("--limit_s", type=float, default=120, help="A launch still running after this has hung.")
    parser.add_argument("--out", default="benchmarks/results/soak.md", help="Where to write the table.")
    parser.add_argument("--logs", default=None, help="Folder for each launch's log (default: a temporary one).")
    args = parser.parse_args(argv)
    scripts = args.scripts.split(",")
    if args.runs < 1:
        parser.error(f"argument --runs: must be a positive integer, but is {args.runs}.")
    if set(scripts) - set(SCRIPTS):
        parser.error(f"argument --scripts: {sorted(set(scripts) - set(SCRIPTS))} are not among {list(SCRIPTS)}.")
    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="soak-")
    logs = args.logs or os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    unet_config = os.path.join(work, "unet.json")
    with open(unet_config, "w") as f:
        json.dump(
            {k: v for k, v in TINY_UNET2D_CONFIG.items() if k not in ("sample_size", "in_channels", "out_channels")}, f
        )
    script_args = {
        "train": [*TRAIN_RUN, "--model_config_name_or_path", unet_config],
        "train_vae": VAE_RUN,
        "distill": DISTILL_RUN,
    }
    if "distill" in scripts:  # the teacher: one process, once
        teacher = os.path.join(work, "teacher")
        status, _ = run_once(
            launch_command("train", 1, [*script_args["train"], "--output_dir", teacher]),
            args.limit_s * 3,
            os.path.join(logs, "teacher.log"),
            os.path.join(logs, "teacher.stacks"),
        )
        if status != 0:
            parser.exit(1, f"soak_launches: the teacher run failed; see {logs}/teacher.log\n")
        script_args["distill"] = [*DISTILL_RUN, "--teacher", teacher]
    results = {script: [] for script in scripts}
    for script in scripts:
        for run in range(1, args.runs + 1):
            output_dir = os.path.join(work, f"{script}-{run}")
            status, seconds = run_once(
                launch_command(script, 2, [*script_args[script], "--output_dir", output_dir]),
                args.limit_s,
                os.path.join(logs, f"{script}-{run}.log"),
                os.path.join(logs, f"{script}-{run}.stacks"),
            )
            shutil.rmtree(output_dir, ignore_errors=True)
            results[script].append((status, seconds))
            verdict = "HUNG" if status is None else f"exit {status}"
            print(f"{script} {run}/{args.runs}: {verdict} in {seconds:.1f} s", flush=True)
            write_table(args.out, results, args, started)
    print(open(args.out).read())
    print(f"Logs of each launch: {logs}")
    bad = sum(status != 0 for runs in results.values() for status, _ in runs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
