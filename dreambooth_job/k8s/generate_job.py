"""The Kubernetes Job that runs `dreambooth-job generate`: the training Job's pod (same image,
security, volumes, exit codes and podFailurePolicy), its args `generate ...` from GenerateConfig.

    from dreambooth_job.generation import GenerateConfig
    from dreambooth_job.k8s import ClusterSettings, GenerateJobSpec, build_generate_job, submit

    gen = GenerateConfig(model="s3://runs/dog-42/", output="s3://gen/dog-42/", num_images=8)
    spec = GenerateJobSpec(generate=gen, cluster=ClusterSettings(image="registry/dreambooth-job:0.1.0"))
    build_generate_job(spec)    # the manifest; or submit(spec) to create it

Its name is a function of --model and --output (resubmitting finds the Job), and never the name
of a training Job, by construction (`generate_job_name`). The chart renders the same Job with
`mode: generate` (tests/deploy compares them), but for `sizing: auto` where the run can be read:
then this builder sizes the pod by the run's recorded family, train mode and base model's size
(`pod_sizing`), and the chart, which reads nothing, by the training pod's undetected profile.
Light on purpose: no torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from dreambooth_job.config import field_types
from dreambooth_job.config import train_config as cfg
from dreambooth_job.generation import generate_config as gen
from dreambooth_job.generation.generate_config import GenerateConfig, to_cli_args
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import _checked_name, _job, _labels, pod_failure_policy, values_key
from dreambooth_job.k8s.pod import escape_expansion, pod_annotations, pod_spec
from dreambooth_job.outputs.result import RESULT_FILE
from dreambooth_job.outputs.weight_files import LORA_DIR, MODEL_DIR
from dreambooth_job.storage import glance, places
from dreambooth_job.training import sized_model, sizing

log = logging.getLogger(__name__)

MODE_LABEL = "dreambooth-job/mode"
GENERATE_MODE = "generate"
# The pod's sizing: generate serves no metrics and keeps no checkpoint; SIGTERM ends it (143)
# within the training pod's grace period, which it keeps.
POD_SIZING = cfg.TrainConfig(metrics_port=0)
# A run's result.json is some KB; sizing reads no more (generation/recorded.py's own bound).
MAX_RESULT_BYTES = 4 * 2**20


@dataclass(frozen=True, kw_only=True)
class GenerateJobSpec:
    """One `generate` run on one cluster."""

    generate: GenerateConfig
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    name: str | None = None
    """The Job's name; None: `generate_job_name(model, output)`. The chart uses the release name."""
    extra_args: tuple[str, ...] = ()
    """Appended to the generate args verbatim (the chart's `extraArgs`)."""


def generate_job_name(model: str, output: str) -> str:
    """`<run>-generate-g<8 hex>`: readable, a function of --model and --output, at most 63
    characters. A training Job's name (manifest.job_name) always ends in `-<8 hex>` or is 8 hex:
    its last `-`-separated part is 8 characters, all hex. Here that part is `g` + 8 hex, 9
    characters with a `g`, so no generate Job can take a training Job's name, whatever the ids."""
    digest = "g" + hashlib.sha256(f"generate\0{model}\0{output}".encode()).hexdigest()[:8]
    run = re.sub(r"/(model|lora)/?$", "", model.rstrip("/")).rstrip("/").rsplit("/", 1)[-1]
    readable = re.sub(r"[^a-z0-9]+", "-", f"{run}-generate".lower()).strip("-")
    readable = readable[:63 - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else digest


def build_generate_job(spec: GenerateJobSpec) -> dict[str, Any]:
    """The batch/v1 Job for `spec`, as the dict the API (or `kubectl apply`) takes."""
    gen = spec.generate
    gen.validate(require_inputs=True)
    assert gen.model and gen.output, "validate(require_inputs=True) refuses a config without them"
    name = _checked_name(spec.name or generate_job_name(gen.model, gen.output))
    labels = {**_labels(name, spec.cluster), MODE_LABEL: GENERATE_MODE}
    args = [escape_expansion(a) for a in (*to_cli_args(gen), *spec.extra_args)]
    pod = pod_spec(*pod_sizing(gen.model, spec.cluster), args)
    return _job(name, spec.cluster, labels, pod_annotations(POD_SIZING, spec.cluster), pod,
                pod_failure_policy(), backoffLimit=spec.cluster.backoff_limit)


def pod_sizing(model: str, cluster: ClusterSettings) -> tuple[cfg.TrainConfig, ClusterSettings]:
    """What sizes the generate pod: with `auto`, the profile of the run's recorded family and
    train mode (and its base model's size, where that can be read: sized_model.detect), with a
    grace period no longer than the undetected pod's (generate saves no checkpoint); else, or
    when the run's result.json cannot be read at once, the training pod's sizing (POD_SIZING)."""
    recorded = _recorded_sizing(model) if cluster.sizing == sizing.AUTO else None
    if recorded is None:
        return POD_SIZING, cluster
    family, train_mode, base_model = recorded
    found = sized_model.detect(base_model)
    variant = found.variant if found and found.family.name == family else None
    profile = sizing.PROFILES.get(sizing.profile_name(family, train_mode, variant))
    if profile is None:
        return POD_SIZING, cluster
    grace = min(profile.job_grace_seconds, sizing.PROFILES[sizing.UNDETECTED["full"]].job_grace_seconds)
    return (dataclasses.replace(POD_SIZING, termination_grace_seconds=grace),
            dataclasses.replace(cluster, sizing=profile.name))


def _recorded_sizing(model: str) -> tuple[str, str, str | None] | None:
    """(family, train mode, base model) as the run's result.json records them; --model is the
    run or its model/ or lora/. None when it cannot be read at once or records no family (a run
    from before families were recorded)."""
    run = model.rstrip("/") or model
    parent, _, last = run.rpartition("/")
    for candidate in (run, parent) if parent and last in (MODEL_DIR, LORA_DIR) else (run,):
        data = glance.read_small(places.join(candidate, RESULT_FILE), MAX_RESULT_BYTES)
        if data is not None:
            return _sizing_fields(data, candidate)
    return None


def _sizing_fields(data: bytes, run: str) -> tuple[str, str, str | None] | None:
    """base_model.family, config.train_mode and base_model.source of a result.json (the
    tenant's to rewrite: anything of another shape is None)."""
    try:
        result = json.loads(data)
        base, config = result.get("base_model") or {}, result.get("config") or {}
        family, train_mode, source = base.get("family"), config.get("train_mode", "full"), base.get("source")
    except (ValueError, RecursionError, AttributeError) as exc:  # not the shape a run writes
        log.info("sizing: %s/%s is not a run's result (%s)", run, RESULT_FILE, exc)
        return None
    if isinstance(family, str) and train_mode in sizing.TRAIN_MODES:
        return family, train_mode, source if isinstance(source, str) else None
    return None


def chart_options() -> list[dict[str, Any]]:
    """files/package.yaml's `generateOptions`: the chart renders a generate Job's args from them
    in the order and spelling of `to_cli_args`, each when its `stated` says (generation.config.
    stated_when: every value; `always`, a null one as `auto`)."""
    rows = []
    for f in gen.fields():
        if f.name in gen.SET_BY_THE_POD:
            continue
        rows.append({"key": values_key(f.name), "stated": gen.stated_when(f),
                     "flag": f.metadata["flag"] or field_types.flag_name(f.name)})
    return rows
