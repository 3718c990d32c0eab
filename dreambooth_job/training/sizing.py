"""Sizing profiles: the pod a run of each model family and train mode needs to survive preemption.

    from dreambooth_job import sizing
    profile = sizing.resolve("auto", "full", "s3://models/klein-9b/")  # reads its model_index.json
    profile.job_grace_seconds, profile.memory_request, profile.disk_request

On preemption the kubelet sends SIGTERM and, terminationGracePeriodSeconds later, SIGKILL; within
that time the job finishes its step, saves a checkpoint, hashes and uploads it (phases/fine_tune.py).
A checkpoint holds the trained weights in fp32 and AdamW's two moments (training/state.py): 12 bytes a
trained parameter, 10.3 GB for SD 1.5's UNet, 30.8 GB for SDXL's, and a few MB of LoRA adapters.
Every number here derives from each family's reference parameter counts
(`ModelFamily.reference`, and one profile pair per other published size in `ModelFamily.variants`,
e.g. flux2-klein-9b-full; families/reference.py; memory_estimate.checkpoint_bytes) and the
ASSUMED rates of the node's disk and of the S3 upload, with a safety factor: estimates, not
measurements (docs/benchmarks.md, "Preemption"). `Profile.rows` is docs/operator-guide.md's table, and
helm/sync_chart.py writes the same profiles into the chart (files/package.yaml's `sizing`).

A Job is built before the model loads, so it picks its profile from the train mode and the family
and size read from the base model's files where they can be read (`auto_profile`: a local
directory or an s3:// prefix, training/sized_model.py), never from its name: a model that cannot
be read there (a hub id: `submit` reads no network but S3) gets the train mode's largest
profile (UNDETECTED). Once the
model has loaded, the job checks that its grace budget covers its real checkpoint (`check_grace`)
and warns otherwise.

Light on purpose: no torch; the k8s builders import it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from dreambooth_job import families
from dreambooth_job.families import ModelFamily
from dreambooth_job.families.reference import ReferenceModel
from dreambooth_job.training import memory_estimate, sized_model

log = logging.getLogger(__name__)

GB, GIB = 10**9, 2**30


TRAIN_MODES = ("full", "lora")
# LoRA profiles cover adapters up to this rank (the default is 16); adapters scale with the rank.
LORA_SIZED_RANK = 128

# ASSUMED rates (estimates, not measured on a GPU node): the node's local disk writing the state
# (save_state), one core hashing it (sha256, training/checkpoint.py) and the upload to S3 from a GPU node in
# the store's region. The CPU machine of docs/benchmarks.md wrote SD 1.5's 10.3 GB state in 17 to
# 28 s (370-600 MB/s); a slower store or a cross-region bucket needs a larger budget
# (--termination-grace-seconds and terminationGracePeriodSeconds override the profile).
LOCAL_WRITE_BYTES_PER_SECOND = 400 * 10**6
HASH_BYTES_PER_SECOND = 500 * 10**6
UPLOAD_BYTES_PER_SECOND = 200 * 10**6
SAFETY_FACTOR = 1.5
# Never less than the job's budget before the profiles existed.
MIN_GRACE_SECONDS = 25
# The pod's terminationGracePeriodSeconds is the job's budget plus this (k8s/cluster_settings.py's
# TERMINATION_MARGIN_SECONDS): time to exit and push metrics before the SIGKILL.
POD_MARGIN_SECONDS = 5
# Host memory beyond the weights: libraries, the CUDA context, photos, class images, cached latents.
HOST_BASE_BYTES = 8 * GIB
# Loading holds the fp32 pipeline on the host (and a cast copy of it briefly); saving a checkpoint
# copies the trained weights to the host and serializes them (a second copy).
HOST_COPIES = 2
# /dev/shm (ClusterSettings.shm_size, the chart's shm.sizeLimit) counts against the memory limit.
SHM_BYTES = 8 * GIB
# Room on top of the local-disk peak: logs, photos, sample grids.
DISK_EXTRA_BYTES = 2 * GIB
# The kubelet evicts a pod over its ephemeral-storage limit (or a volume over its sizeLimit) with
# 1 s of grace, too short for any checkpoint: limits stay well above the estimate.
DISK_LIMIT_FACTOR = 1.5


@dataclass(frozen=True)
class Profile:
    name: str
    family: str
    train_mode: str
    checkpoint_bytes: int
    job_grace_seconds: int  # the job's --termination-grace-seconds
    memory_request_gib: int
    memory_limit_gib: int
    disk_parts: dict  # what is on local disk at the peak, bytes
    disk_request_gib: int
    disk_limit_gib: int
    tmp_limit_gib: int  # sizeLimit of /tmp: all of disk_parts but the base model (in /cache)
    reference: ReferenceModel  # the parameter counts it is sized for
    variant: str | None = None  # the family's published size (ModelFamily.variants); None: its reference

    @property
    def resources(self) -> dict:
        """The memory and ephemeral-storage of the container's requests and limits."""
        return {"requests": {"memory": f"{self.memory_request_gib}Gi",
                             "ephemeral-storage": f"{self.disk_request_gib}Gi"},
                "limits": {"memory": f"{self.memory_limit_gib}Gi",
                           "ephemeral-storage": f"{self.disk_limit_gib}Gi"}}

    @property
    def tmp_size_limit(self) -> str:
        return f"{self.tmp_limit_gib}Gi"


def profile_name(family: str, train_mode: str, variant: str | None = None) -> str:
    """`<family>-<mode>`, or `<family>-<variant>-<mode>` for a size in ModelFamily.variants."""
    return f"{family}-{variant}-{train_mode}" if variant else f"{family}-{train_mode}"


def trained_parameters(reference: ReferenceModel, train_mode: str) -> int:
    """The most a run of the profile trains: with --train-text-encoder (full), or the adapters at
    LORA_SIZED_RANK on the denoiser and the text encoders (LoRA)."""
    if train_mode == "lora":
        return reference.lora_adapters_rank16 * LORA_SIZED_RANK // 16
    return reference.denoiser + reference.text_encoders


def checkpoint_seconds(checkpoint_bytes: int) -> float:
    """Estimated seconds to save, hash and upload a checkpoint, safety factor included."""
    rates = (LOCAL_WRITE_BYTES_PER_SECOND, HASH_BYTES_PER_SECOND, UPLOAD_BYTES_PER_SECOND)
    return SAFETY_FACTOR * sum(checkpoint_bytes / rate for rate in rates)


def grace_seconds(checkpoint_bytes: int, step_seconds: int) -> int:
    """The job's budget: the step under way and the checkpoint, rounded up to 5 s."""
    needed = step_seconds + checkpoint_seconds(checkpoint_bytes)
    return max(MIN_GRACE_SECONDS, 5 * math.ceil(needed / 5))


def _gib(num_bytes: float, multiple: int = 8) -> int:
    """Bytes as GiB, rounded up to a multiple of `multiple` GiB."""
    return multiple * math.ceil(num_bytes / GIB / multiple)


def build_profile(family: ModelFamily, train_mode: str, variant: str | None = None) -> Profile:
    """The profile of `family`'s reference model, or of its published size `variant`."""
    params = family.variants[variant] if variant else family.reference
    ckpt = memory_estimate.checkpoint_bytes(trained_parameters(params, train_mode), "adamw")
    fp32_pipeline, fp16_pipeline = params.total * 4, params.total * 2
    # Outputs: full: model/ and --export-single-file at the default fp16; LoRA: --lora-merge's
    # fp16 pipeline (the LoRA files themselves are MBs).
    outputs = fp16_pipeline * (2 if train_mode == "full" else 1)
    disk_parts = {"base model (fp32)": fp32_pipeline, "class images": params.class_images_bytes,
                  "checkpoint being written": ckpt, "saved model": outputs}
    host = HOST_BASE_BYTES + HOST_COPIES * max(fp32_pipeline, memory_estimate.weight_bytes(
        trained_parameters(params, train_mode), 0, half_precision=False))
    memory_request = max(32, _gib(host + SHM_BYTES))
    disk_request = _gib(sum(disk_parts.values()) + DISK_EXTRA_BYTES)
    tmp_peak = sum(disk_parts.values()) - fp32_pipeline - params.class_images_bytes
    return Profile(
        name=profile_name(family.name, train_mode, variant), family=family.name, train_mode=train_mode,
        checkpoint_bytes=ckpt, job_grace_seconds=grace_seconds(ckpt, params.step_seconds),
        memory_request_gib=memory_request, memory_limit_gib=2 * memory_request,
        disk_parts=disk_parts, disk_request_gib=disk_request,
        disk_limit_gib=_gib(disk_request * GIB * DISK_LIMIT_FACTOR),
        tmp_limit_gib=_gib(tmp_peak * DISK_LIMIT_FACTOR + DISK_EXTRA_BYTES), reference=params,
        variant=variant)


PROFILES = {p.name: p for p in (build_profile(f, m, variant) for f in families.FAMILIES
                                for variant in (None, *f.variants) for m in TRAIN_MODES)}
AUTO = "auto"
CHOICES = (AUTO, *PROFILES)


def _largest(train_mode: str) -> Profile:
    """The profile of `train_mode` that every family sized when undetected fits
    (ModelFamily.sized_when_undetected): the one with the longest grace and the largest disk and
    memory (they grow together, with the parameter counts)."""
    covered = {f.name for f in families.FAMILIES if f.sized_when_undetected}
    return max((p for p in PROFILES.values() if p.train_mode == train_mode and p.family in covered),
               key=lambda p: (p.job_grace_seconds, p.disk_request_gib, p.memory_request_gib))


UNDETECTED = {mode: _largest(mode).name for mode in TRAIN_MODES}
"""The profile `auto` picks when the base model cannot be read where the Job is built (a hub id,
an s3:// prefix that does not answer at once, the chart): the train mode's largest, never a guess
from the model's name. It over-sizes the pod of
a smaller family; name its profile (--sizing, the chart's `sizing`) to size it exactly. Once the
model has loaded, the job checks its budget against its real checkpoint (check_grace)."""


def auto_profile(train_mode: str, base_model: str) -> str:
    """The profile `auto` picks for a Job, before the model is loaded: the train mode's and the
    family's and size, read from the base model's model_index.json and denoiser config where they
    can be read here (a local directory or an s3:// prefix, sized_model.detect); else the train
    mode's largest (UNDETECTED)."""
    found = sized_model.detect(base_model)
    return profile_name(found.family.name, train_mode, found.variant) if found else UNDETECTED[train_mode]


def resolve(sizing: str, train_mode: str, base_model: str) -> Profile:
    return PROFILES[auto_profile(train_mode, base_model) if sizing == AUTO else sizing]


def _profile_of_run(family: str, train_mode: str, variant: str | None = None) -> Profile:
    """The profile of a run whose model has loaded (family: ModelFamily.name, variant: its
    ModelFamily.variant); a family without profiles gets the train mode's largest."""
    return PROFILES.get(profile_name(family, train_mode, variant)) or PROFILES[UNDETECTED[train_mode]]


def _step_seconds(family: str, variant: str | None = None) -> int:
    known = {f.name: f for f in families.FAMILIES}
    if family not in known:
        return max(p.reference.step_seconds for p in PROFILES.values())
    return known[family].variants.get(variant, known[family].reference).step_seconds


def check_grace(budget_seconds: float, family: str, train_mode: str, trained_params: int,
                optimizer: str, variant: str | None = None, *, ema: bool = False) -> str | None:
    """Once the model has loaded: a warning (logged, and returned) when `budget_seconds`
    (--termination-grace-seconds) is shorter than this run's checkpoint needs by the estimate, e.g.
    a full fine-tune of a large family in a pod sized for a small one; None when it fits.

    A warning, not a failure: the run trains and publishes correctly unless it is preempted, the
    rates are assumptions that a fast store beats, and a run refused here would be refused again
    on every retry. Preempted with too little time, it loses the steps since its last periodic
    checkpoint, which is what the warning says."""
    ckpt = memory_estimate.checkpoint_bytes(trained_params, optimizer, ema)
    needed = grace_seconds(ckpt, _step_seconds(family, variant))
    if budget_seconds >= needed:
        return None
    message = (f"--termination-grace-seconds {budget_seconds:g} is shorter than the {needed} s "
               f"a checkpoint of this run needs by the estimate ({ckpt / GB:.1f} GB to save, hash "
               f"and upload; training/sizing.py): on preemption it would be killed mid-checkpoint and "
               f"resume from its last periodic one; run it with the sizing profile "
               f"{_profile_of_run(family, train_mode, variant).name!r} or a larger budget")
    log.warning(message)
    return message


def job_budget(configured: float | None, family: str, train_mode: str, trained_params: int,
               optimizer: str, variant: str | None = None, *, ema: bool = False) -> float:
    """The SIGTERM budget of a run whose model has loaded (family: ModelFamily.name, variant: its
    ModelFamily.variant):
    --termination-grace-seconds, checked against its checkpoint (check_grace); or, auto, its
    profile's, or more when the run trains more than the profile was sized for (a LoRA rank above
    LORA_SIZED_RANK)."""
    if configured is None:
        needed = grace_seconds(memory_estimate.checkpoint_bytes(trained_params, optimizer, ema),
                               _step_seconds(family, variant))
        return max(_profile_of_run(family, train_mode, variant).job_grace_seconds, needed)
    check_grace(configured, family, train_mode, trained_params, optimizer, variant, ema=ema)
    return configured


def rows() -> list[str]:
    """docs/operator-guide.md's table of the profiles (tests/unit/test_sizing.py checks that it is)."""
    lines = ["| profile | checkpoint | `--termination-grace-seconds` | terminationGracePeriodSeconds "
             "| memory request / limit | ephemeral-storage request / limit | /tmp sizeLimit |",
             "|---|---|---|---|---|---|---|"]
    for p in PROFILES.values():
        lines.append(f"| `{p.name}` | {_size(p.checkpoint_bytes)} | {p.job_grace_seconds} s "
                     f"| {p.job_grace_seconds + POD_MARGIN_SECONDS} s "
                     f"| {p.memory_request_gib} / {p.memory_limit_gib} GiB "
                     f"| {p.disk_request_gib} / {p.disk_limit_gib} GiB | {p.tmp_limit_gib} GiB |")
    return lines


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GB:.1f} GB" if num_bytes >= GB else f"{num_bytes / 10**6:.0f} MB"


if __name__ == "__main__":  # docs/operator-guide.md's table: python -m dreambooth_job.training.sizing
    print("\n".join(rows()))
