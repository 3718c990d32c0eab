"""Start-up checks: every option the job was asked for can run where the job finds itself.

    from dreambooth_job.training.preflight import check_capabilities
    check_capabilities(config)          # InvalidInputError (exit 2) naming the option, or nothing

Run first, before the lease, any S3 access or any download: an option that this image or machine
cannot honour is bad input, one line and exit 2, which the Job's podFailurePolicy does not retry.
Found later it would be an ImportError after class-image generation, retried backoffLimit times.

Each check asks what the library itself will look for when the option is used:
- --use-8bit-adam: a CUDA device (the 8-bit optimizer runs there only) and bitsandbytes;
- --base-precision fp8 / nf4: a CUDA device and the library that quantizes (training/quantized_base.py);
- --compile-unet on CUDA: a C compiler for Triton's launcher stubs (Triton takes $CC, else gcc,
  else clang) and Python's headers, which those stubs include;
- --compile-unet on CPU: a C++ compiler for Inductor's CPU kernels ($CXX, else g++).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sysconfig
from pathlib import Path

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.training import devices, quantized_base

# What the libraries look for when $CC / $CXX are unset (the Dockerfile installs the first of each).
TRITON_C_COMPILERS = ("gcc", "clang")
INDUCTOR_CXX_COMPILER = "g++"


def check_capabilities(config: TrainConfig, device_type: str | None = None) -> None:
    """Raise InvalidInputError for the first requested option that cannot run here.

    `device_type` is "cuda" or "cpu"; None: the device the job will train on.
    """
    problems = missing_capabilities(config, device_type or devices.device_type())
    if problems:
        raise InvalidInputError(problems[0])


def missing_capabilities(config: TrainConfig, device_type: str) -> list[str]:
    """One line per requested option that cannot run on `device_type` here; empty when all can."""
    problems = []
    if config.resolved_optimizer == "adamw-8bit":
        flag = "--use-8bit-adam" if config.use_8bit_adam else "--optimizer adamw-8bit"
        # CUDA first: on a CPU machine installing bitsandbytes would not help.
        if device_type != "cuda":
            problems.append(f"{flag} needs a CUDA GPU and this machine has none: "
                            f"drop {flag} or request a GPU")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"{flag} needs bitsandbytes, which is not installed "
                            "(pip install 'dreambooth-job[bnb]'; the image has it)")
    problem = quantized_base.missing_capability(config.base_precision, device_type)
    if problem:
        problems.append(problem)
    if config.compile_unet:
        problems += _compile_problems(device_type)
    return problems


def _compile_problems(device_type: str) -> list[str]:
    if device_type == "cuda":
        if not c_compiler():
            return ["--compile-unet needs a C compiler on CUDA (Triton builds its kernel launchers "
                    "at run time) and none was found: set $CC or install gcc or clang, or drop "
                    "--compile-unet"]
        if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
            return ["--compile-unet needs Python's C headers (Python.h) for Triton's kernel "
                    "launchers and this Python has none: install them or drop --compile-unet"]
        return []
    if not cxx_compiler():
        return ["--compile-unet needs a C++ compiler on CPU (Inductor builds its kernels at run "
                "time) and none was found: set $CXX or install g++, or drop --compile-unet"]
    return []


def c_compiler() -> str | None:
    """The C compiler Triton will use: $CC, else gcc, else clang; None when there is none."""
    named = os.environ.get("CC")
    if named:
        return shutil.which(named)
    return next(filter(None, map(shutil.which, TRITON_C_COMPILERS)), None)


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor will use on CPU: $CXX, else g++; None when there is none."""
    return shutil.which(os.environ.get("CXX") or INDUCTOR_CXX_COMPILER)
