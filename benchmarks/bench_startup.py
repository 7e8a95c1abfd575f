"""How fast each command answers `--help`, now and at an earlier commit, as a table.

    python -m benchmarks.bench_startup [--before 5f6d06c] [--repeats 5]     # from the repository root

Installs the `--before` commit's diffkit alone (no dependencies: they are this environment's) into a temporary folder
and puts it first on PYTHONPATH, so both versions run on the same torch, diffusers and gradio. Each command runs as
`python -m MODULE --help` in a fresh interpreter, the two versions alternating, and the table gives the median wall
time of each, what it printed on stderr (a warning about a package it does not use, say), and two floors:
`python -c pass` and `python -c "import torch"`. Run it on an idle machine: another process on the cores slows both
columns alike but not by the same amount.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# command: (module at --before, module now); the modules moved out of pipelines/ and training/ with issue 24.
COMMANDS = {
    "diffkit-train": ("diffkit.training.train", "diffkit.cli.train"),
    "diffkit-evaluate": ("diffkit.training.evaluate", "diffkit.cli.evaluate"),
    "diffkit-generate": ("diffkit.pipelines.generate", "diffkit.cli.generate"),
    "diffkit-edit": ("diffkit.pipelines.edit", "diffkit.cli.edit"),
    "diffkit-push": ("diffkit.pipelines.push", "diffkit.push"),
    "diffkit-app": ("diffkit.pipelines.app", "diffkit.app"),
}
# The last commit before issue 24 changed how the commands start.
DEFAULT_BEFORE = "5f6d06c"
TARGET_S = 2.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup", description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE, help="The git commit to compare with.")
    parser.add_argument("--repeats", type=int, default=5, help="Runs of each command per version (median shown).")
    parser.add_argument("--output", default=None, help="Also write the table to this Markdown file.")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise ValueError(f"`--repeats` must be a positive integer, but is {args.repeats}.")
    return args


def install_commit(commit: str, folder: str) -> str:
    """Install diffkit as of `commit` (without its dependencies) under `folder`; return the folder to put on
    PYTHONPATH."""
    source = os.path.join(folder, "source")
    subprocess.run(["git", "worktree", "add", "--detach", source, commit], check=True, capture_output=True)
    try:
        target = os.path.join(folder, "site")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", target, source],
            check=True,
            capture_output=True,
        )
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", source], check=True, capture_output=True)
    return target


def run_once(command, environment):
    """Seconds that `command` took, and its stderr; a failure stops the benchmark with its output."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tempfile.gettempdir())
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds, result.stderr.strip()


def cpu_name() -> str:
    """The processor's model name where Linux tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.machine()


def describe_stderr(text: str) -> str:
    """What a command printed on stderr, in a table cell: "none", or its line count and the start of its first line."""
    if not text:
        return "none"
    lines = text.splitlines()
    return f"{len(lines)} lines: {lines[0][:60].replace('|', '/')}..."


def main(argv=None):
    args = parse_args(argv)
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory() as folder:
        before_path = install_commit(args.before, folder)
        before_environment = {**environment, "PYTHONPATH": before_path}
        rows = [
            ("`python -c pass`", None, [sys.executable, "-c", "pass"]),
            ("`python -c 'import torch'`", None, [sys.executable, "-c", "import torch"]),
        ]
        for name, (before_module, now_module) in COMMANDS.items():
            rows.append((f"`{name} --help`", before_module, now_module))
        lines = [
            f"| command | {args.before} (s) | now (s) | now / before | stderr {args.before} | stderr now |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for label, before_module, now in rows:
            if before_module is None:  # a floor: the same command in both columns
                times = [run_once(now, environment)[0] for _ in range(args.repeats)]
                lines.append(f"| {label} | | {statistics.median(times):.2f} | | | |")
                continue
            times = {"before": [], "now": []}
            stderr = {}
            for index in range(args.repeats):
                order = ("before", "now") if index % 2 == 0 else ("now", "before")
                for which in order:
                    module = before_module if which == "before" else now
                    env = before_environment if which == "before" else environment
                    seconds, stderr[which] = run_once([sys.executable, "-m", module, "--help"], env)
                    times[which].append(seconds)
            before, after = statistics.median(times["before"]), statistics.median(times["now"])
            quote = {which: describe_stderr(text) for which, text in stderr.items()}
            lines.append(
                f"| {label} | {before:.2f} | {after:.2f} | {after / before:.2f} | {quote['before']} | {quote['now']} |"
            )
    table = "\n".join(lines)
    print(table)
    print(f"\nTarget: every command's --help in under {TARGET_S:g} s, with nothing on stderr.")
    if args.output:
        command = " ".join(["python -m benchmarks.bench_startup", *(argv if argv is not None else sys.argv[1:])])
        with open(args.output, "w") as f:
            f.write(f"`{command}` on {cpu_name()}, {os.cpu_count()} cores:\n\n")
            f.write(table + "\n")


if __name__ == "__main__":
    main()
