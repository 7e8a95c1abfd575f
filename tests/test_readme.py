import os
import re
import subprocess

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


def test_readme_stays_short_and_every_local_link_resolves():
    with open(f"{REPO_ROOT}/README.md") as f:
        readme = f.read()
    # quick start, one short example per capability and the layout; measured tables and internals live in docs/
    assert len(readme.splitlines()) <= 250
    documents = {"README.md": readme}
    for name in sorted(os.listdir(f"{REPO_ROOT}/docs")):
        with open(f"{REPO_ROOT}/docs/{name}") as f:
            documents[f"docs/{name}"] = f.read()
    for name, text in documents.items():
        for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text):
            if "://" in target:
                continue
            path = os.path.normpath(os.path.join(REPO_ROOT, os.path.dirname(name), target))
            assert os.path.exists(path), f"{name} links to {target}, which does not exist"
    for name in documents:
        if name.startswith("docs/"):
            assert f"]({name})" in readme, f"the README does not link to {name}"


def test_layout_section_matches_the_tree():
    with open(f"{REPO_ROOT}/README.md") as f:
        block = re.search(r"## Layout\n+```\n(.*?)```", f.read(), re.S).group(1)
    named = [line.split()[0] for line in block.splitlines() if line and not line.startswith(" ")]
    for path in named:
        assert os.path.exists(os.path.join(REPO_ROOT, path)), f"the README's layout names {path}, which is not there"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    top_level = {name.split("/")[0] + ("/" if "/" in name else "") for name in tracked.split()}
    top_level -= {".gitignore", "README.md"}
    missing = sorted(name for name in top_level if not any(path.startswith(name) for path in named))
    assert not missing, f"the README's layout leaves out {missing}"
