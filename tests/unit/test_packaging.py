"""The package installs quietly: `pip install -e .` takes setuptools' plain path entry.

With the packages at the repository's top and no package root named, setuptools installs an
editable copy through an import finder and prints a `BuildBackendWarning` on every install
(`make install`, the first `make run`). `package-dir = {"" = "."}` in pyproject.toml names the
root, so the install is one `.pth` line and nothing is printed.
"""

from __future__ import annotations

import importlib.metadata
import json
import sysconfig
import tomllib

import pytest

from workers.dev.servers import PROJECT_ROOT


def test_pyproject_names_the_repository_as_the_package_root() -> None:
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["package-dir"] == {"": "."}
    found = pyproject["tool"]["setuptools"]["packages"]["find"]
    assert found["include"] == ["cache*", "jobs*", "workers*"], "only the three packages go in the wheel"


def test_the_editable_install_is_a_plain_path_entry_not_an_import_finder() -> None:
    # The site's record of the install, not the build's egg-info the repository root also holds.
    site = sysconfig.get_paths()["purelib"]
    (dist,) = importlib.metadata.distributions(name="kryonix-workers", path=[site])
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if not direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("installed from a wheel (the image), not with `pip install -e`")
    files = dist.files or []
    finders = [str(file) for file in files if file.name.endswith("_finder.py")]
    assert not finders, f"setuptools installed an import finder (and warned): {finders}"
    entries = [file.read_text(encoding="utf-8").strip() for file in files if file.name.endswith(".pth")]
    assert entries == [str(PROJECT_ROOT)]
