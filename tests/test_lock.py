"""The lock (packaging/constraints.txt): it pins every requirement within pyproject.toml's ranges, and the
environment the suite runs in is the locked one, so a fresh set-up gets what the suite last passed with."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "packaging" / "constraints.txt"
EXTRAS = ("offline", "test", "export", "bundle")  # what packaging/lock resolves


def pins() -> dict[str, str]:
    lines = LOCK.read_text(encoding="utf-8").splitlines()
    pairs = (line.split("==", 1) for line in lines if "==" in line and not line.startswith((" ", "#")))
    return {canonicalize_name(name): version.strip() for name, version in pairs}


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    return [Requirement(text) for text in [*project["dependencies"], *(r for e in EXTRAS for r in extras[e])]]


def test_every_requirement_is_pinned_within_its_range():
    locked = pins()
    assert "torch" in locked and locked["torch"].endswith("+cpu"), "the lock must hold torch's CPU build"
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {LOCK.name}: run packaging/lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={locked[name]}, outside pyproject.toml's {requirement}: run packaging/lock")


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="the lock is for Linux x86_64; elsewhere the set-up installs within pyproject's ranges")
def test_the_environment_runs_the_locked_versions():
    drifted = []
    for name, version in pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # an extra not installed here (the bundle's, before packaging/build)
        if installed != version:
            drifted.append(f"{name} {installed} (locked {version})")
    assert not drifted, "installed versions differ from the lock: " + ", ".join(drifted)
