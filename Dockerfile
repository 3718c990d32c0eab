# syntax=docker/dockerfile:1
# The training job as a CUDA image:
#
#   docker build -t registry.example.com/ml/dreambooth-job:0.1.0 .
#   docker run --gpus all --read-only --tmpfs /tmp -v cache:/cache \
#       registry.example.com/ml/dreambooth-job:0.1.0 train --instance-data s3://... --class-noun dog --output s3://...
#
# For linux/amd64: the lock is resolved for x86_64. PyPI's torch wheels bring their own CUDA
# libraries (nvidia-*-cu12), so the base is CUDA's slim `base` flavour: the driver-facing runtime
# and the NVIDIA container environment, nothing more. Another torch/CUDA variant: compile a lock
# against its index (as docker/lock.sh does against PyPI) and pass
#   --build-arg CUDA_VERSION=12.6.3 --build-arg REQUIREMENTS=docker/requirements-cu126.lock

ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---------------------------------------------------------------------------------------------
# build: Python, the locked dependencies and the package in /opt; uv and the build backend stay here.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS build
ARG PYTHON_VERSION=3.11.18
ARG REQUIREMENTS=docker/requirements.lock
COPY --from=uv /uv /usr/local/bin/uv
# A relocatable CPython (python-build-standalone) at a fixed path, so the runtime stage can copy
# it; bytecode is compiled here because the runtime filesystem is read-only.
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN uv python install "${PYTHON_VERSION}" \
 && uv venv --python "${PYTHON_VERSION}" /opt/venv
# Dependencies first: this layer is reused until the lock changes. `pip sync` installs exactly
# the lock, every file checked against its hash.
COPY ${REQUIREMENTS} /tmp/requirements.lock
RUN uv pip sync --python /opt/venv/bin/python --require-hashes /tmp/requirements.lock
COPY pyproject.toml README.md LICENSE /src/
COPY docker/build-constraints.txt /src/docker/
COPY dreambooth_job /src/dreambooth_job
# The package itself: built into a wheel with a pinned, hash-checked setuptools, then installed
# without dependencies, which the lock already provided.
RUN uv build --wheel --out-dir /tmp/dist --require-hashes \
        --build-constraints /src/docker/build-constraints.txt /src \
 && uv pip install --python /opt/venv/bin/python --no-deps /tmp/dist/*.whl

# ---------------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="dreambooth-job" \
      org.opencontainers.image.description="DreamBooth fine-tuning of Stable Diffusion, one Kubernetes Job per subject" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION}"

# A C and a C++ compiler, because --compile-unet compiles when the job runs: Triton builds its
# kernel launchers with gcc on CUDA, Inductor builds CPU kernels with g++ (the job checks for them
# at start-up, dreambooth_job/training/preflight.py). Then a fixed, numeric, non-root identity: the chart's
# default runAsUser/fsGroup (10001) and the kubelet's runAsNonRoot check (which cannot resolve
# user names) rely on it; any other UID works too (OpenShift), as every path it writes is /tmp
# or /cache.
# Ubuntu's packages follow the base image's release and its security updates: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 dreambooth \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin dreambooth

COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv

# Every writable path is /tmp or /cache, so the root filesystem can be read-only:
# the job's --cache-dir defaults to $XDG_CACHE_HOME/dreambooth-job, Hugging Face uses HF_HOME,
# and HOME=/tmp catches any library that writes under ~.
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME ["/cache", "/tmp"]

USER 10001:10001
WORKDIR /tmp
EXPOSE 9090
# Exec form: the job is PID 1 and receives SIGTERM itself; its handler checkpoints within
# --termination-grace-seconds. It starts no process it does not wait for, so no init is needed.
ENTRYPOINT ["dreambooth-job"]
CMD ["train"]
