"""The package's declared license: the file, the SPDX expression, and a backend that writes both."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import tomllib

from deploy_support import REPO
from packaging.requirements import Requirement
from test_dockerfile import BUILD_CONSTRAINTS, stages

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_license_file_is_the_license_the_package_declares():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a notice
    labels = " ".join(a for i, a in stages()["runtime"] if i == "LABEL")
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels


def test_build_requirement_supports_the_spdx_license_expression():
    # An SPDX `license` string and `license-files` (PEP 639) need setuptools 77 or newer.
    (requirement,) = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    assert requirement.name == "setuptools"
    assert not requirement.specifier.contains("76.1.0") and requirement.specifier.contains("77.0.0")
    pinned = next(line.split("==")[1].split()[0] for line in BUILD_CONSTRAINTS.read_text().splitlines()
                  if line.startswith("setuptools=="))
    assert requirement.specifier.contains(pinned)


def test_built_metadata_carries_the_license_expression_and_file(tmp_path):
    # The backend builds from what the image's build stage copies: pyproject, README, LICENSE.
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, tmp_path / name)
    (tmp_path / "dreambooth_job").mkdir()
    (tmp_path / "dreambooth_job" / "__init__.py").write_text("")
    (tmp_path / "meta").mkdir()
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
                               "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))",
         str(tmp_path / "meta")], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True)
    dist_info = tmp_path / "meta" / out.stdout.strip().splitlines()[-1]
    metadata = email.message_from_string((dist_info / "METADATA").read_text())
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert (dist_info / "licenses" / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
