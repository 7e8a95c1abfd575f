import re

from .utils import REPO_ROOT


def quick_start_commands():
    with open(f"{REPO_ROOT}/README.md") as f:
        readme = f.read()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_the_readme_test_command_verbatim():
    commands = quick_start_commands()
    assert len(commands) == 2
    assert "training/train.py" in commands[0] and "pytest" in commands[1]
    with open(f"{REPO_ROOT}/.ci/run") as f:
        ci_lines = [line.strip() for line in f]
    assert commands[1] in ci_lines
