"""The floors that pyproject.toml declares are the versions that .ci/lowest-versions.txt installs for CI."""

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .utils import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")


def test_lowest_versions_file_pins_exactly_the_declared_floors():
    with open(f"{REPO_ROOT}/pyproject.toml", "rb") as f:
        dependencies = [Requirement(line) for line in tomllib.load(f)["project"]["dependencies"]]
    floors = {
        canonicalize_name(req.name): spec.version
        for req in dependencies
        for spec in req.specifier
        if spec.operator == ">="
    }
    with open(f"{REPO_ROOT}/.ci/lowest-versions.txt") as f:
        pins = [Requirement(line.strip()) for line in f if line.strip() and not line.startswith("#")]
    pinned = {canonicalize_name(req.name): next(iter(req.specifier)).version for req in pins}
    tested = ["diffusers", "transformers", "accelerate", "datasets", "huggingface-hub", "safetensors"]
    assert sorted(pinned) == sorted(tested)
    for name in tested:
        assert Version(pinned[name]) == Version(floors[name]), (name, pinned[name], floors[name])
