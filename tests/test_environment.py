"""environment.yml (for conda users) must describe the same pinned environment as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins_from_pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
        name, version = spec.split("==")
        pins[name.lower().replace("_", "-")] = version
    return pins


def _pins_from_environment_yml() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s+- ([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_environment_yml_matches_pyproject():
    env = _pins_from_environment_yml()
    env.pop("python", None)
    assert env == _pins_from_pyproject()


def test_torch_is_pinned_to_the_local_cpu_build():
    assert _pins_from_pyproject()["torch"] == "2.13.0"
