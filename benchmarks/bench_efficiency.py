"""Generation spread over processes: the same images made by one process that uses every core, and by several.

    python -m benchmarks.bench_efficiency --model out [--num_images 200] [--num_processes 2]

`diffkit-generate` makes `--num_images` images of the class model in `--model` (the default job's, by default: the
ten classes in turn, 20 steps at its guidance scale), once as `accelerate launch --num_processes 1
--num_cpu_threads_per_process C` (C = every core) and once as `accelerate launch --multi_gpu --num_processes P
--num_cpu_threads_per_process C/P` (joined over gloo on a machine without GPUs). Each row is the command's whole wall
time, start-up and model loading included, as a user sees it. The last column counts the PNGs that are byte-identical
between the runs: a process that runs with fewer threads can round a float's last bit differently on the CPU (the
tests compare runs at equal threads per process, where every byte matches).

Writes RESULTS_DIR/efficiency.md and prints the table. Run it on an otherwise idle machine.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

# The target: P processes make the images this much faster than one process on every core.
TARGET_SPEEDUP = 1.7


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (port 0 never rendezvouses with accelerate 1.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_generate(launch_flags, model: str, num_images: int, batch_size: int, out: str) -> float:
    """Seconds that `accelerate launch LAUNCH_FLAGS -m diffkit.cli.generate` takes to make the images into `out`."""
    num_classes = 10
    per_class = num_images // num_classes
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launch_flags, "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        "-m", "diffkit.cli.generate", "--model", model, "--class", *map(str, range(num_classes)),
        "--num_images", str(per_class), "--batch_size", str(batch_size), "--out", out,
    ]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_efficiency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="out", help="A class-conditional diffkit model (train.py --output_dir).")
    parser.add_argument("--num_images", type=int, default=200, help="Images per run, a multiple of 10.")
    parser.add_argument("--num_processes", type=int, default=2, help="Processes of the shared run.")
    parser.add_argument("--batch_size", type=int, default=20, help="Images per pipeline call (--batch_size).")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where results go.")
    args = parser.parse_args()
    if args.num_images % 10:
        raise ValueError(f"`--num_images` must be a multiple of 10 (the classes), but is {args.num_images}.")
    cores = os.cpu_count() or 1
    if cores % args.num_processes:
        raise ValueError(f"`--num_processes` {args.num_processes} must divide the {cores} cores.")

    with tempfile.TemporaryDirectory() as scratch:
        runs = {
            "one": ["--num_processes", "1", "--num_cpu_threads_per_process", str(cores)],
            "shared": [
                "--multi_gpu", "--num_processes", str(args.num_processes),
                "--num_cpu_threads_per_process", str(cores // args.num_processes),
            ],
        }  # fmt: skip
        seconds = {
            name: launch_generate(flags, args.model, args.num_images, args.batch_size, os.path.join(scratch, name))
            for name, flags in runs.items()
        }
        names = sorted(os.listdir(os.path.join(scratch, "one")))
        identical = sum(
            open(os.path.join(scratch, "one", n), "rb").read() == open(os.path.join(scratch, "shared", n), "rb").read()
            for n in names
        )
    speedup = seconds["one"] / seconds["shared"]
    lines = [
        f"{args.num_images} images of `{args.model}` (its saved steps and guidance), --batch_size {args.batch_size}, "
        f"{cores} CPU cores; wall time of the whole command, start-up and loading included.",
        "",
        "| run | processes x threads | seconds | images/s | speed-up | identical PNGs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        f"| one process | 1 x {cores} | {seconds['one']:.1f} | {args.num_images / seconds['one']:.2f} | 1.00x | - |",
        f"| shared | {args.num_processes} x {cores // args.num_processes} | {seconds['shared']:.1f} | "
        f"{args.num_images / seconds['shared']:.2f} | {speedup:.2f}x | {identical}/{len(names)} |",
        "",
        f"Target ({args.num_processes} processes at least {TARGET_SPEEDUP}x faster than one process on every core): "
        f"{'met' if speedup >= TARGET_SPEEDUP else 'not met'} ({speedup:.2f}x).",
    ]
    text = "\n".join(lines)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, "efficiency.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
