"""The lock file that `make install` uses agrees with pyproject.toml and with what is installed.

A dependency release must not change what the tests see: `make install` installs with
`pip -c requirements-lock.txt`; `make lock` (scripts/lock.sh) refreshes it.
"""
from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"every lock line pins one exact version, given {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = lock_pins()
    for req in declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in requirements-lock.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"lock pins {name}=={pins[name]}, outside {req}"


def test_lock_pins_torch_to_the_cpu_wheel_on_disk():
    assert lock_pins()["torch"] == Version("2.13.0")


@pytest.mark.skipif(Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
                    reason="checks the environment `make install` made (.venv)")
def test_installed_versions_are_the_locked_ones():
    pins = lock_pins()
    wrong = {}
    for name, version in pins.items():
        try:
            got = Version(md.version(name))
        except md.PackageNotFoundError:
            wrong[name] = "missing"
            continue
        if Version(got.base_version) != version and got != version:
            wrong[name] = str(got)
    assert not wrong, f"installed versions differ from requirements-lock.txt: {wrong}"
