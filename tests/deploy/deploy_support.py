"""Helpers for the deployment tests: rendered charts, the values-to-JobSpec mapping, Job
comparison, Kubernetes schema validation and the package's own CLI parser.

No cluster and no Docker engine exist here. helm-python-sdk runs Helm v4 in-process,
kubernetes-validate holds the API schemas of every Kubernetes minor from 1.25, and crd_schemas.py
covers the custom resources we ship.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from crd_schemas import SCHEMAS as CRD_SCHEMAS

from dreambooth_job import cli
from dreambooth_job.cli_options import resolve_train_config
from dreambooth_job.config import introspection
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.operator_policy import CEILINGS
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, values_key

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dreambooth-job"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
MANIFESTS = REPO / "manifests"
RELEASE, NAMESPACE = "dog-42", "ml"
# The minimum supported Kubernetes (podFailurePolicy is GA from 1.31) and the newest schemas.
KUBE_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())
# Labels only a Helm release has; everything else in the Job is the Python builder's too.
HELM_ONLY_LABELS = ("helm.sh/chart",)


# ----------------------------------------------------------------------------------------------
# Helm

class Rendered:
    """One `helm install --dry-run` worth of output: the objects, the NOTES, the merged values."""

    def __init__(self, manifests: dict[str, str], values: dict[str, Any]):
        self.notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")), "")
        self.objects = [doc for path, text in sorted(manifests.items())
                        if not path.endswith("NOTES.txt")
                        for doc in yaml.safe_load_all(text) if doc]
        self.values = values

    def one(self, kind: str) -> dict[str, Any]:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, rendered {[o['kind'] for o in self.objects]}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def spec_from_values(values: dict[str, Any]) -> JobSpec:
    """The JobSpec that says in Python what merged chart `values` say: the same inputs."""
    by_key = {values_key(f.name): f.name for f in introspection.fields()}
    train = cfg.TrainConfig(**{by_key[k]: v for k, v in values["job"].items() if v is not None})
    image, account, s3 = values["image"], values["serviceAccount"], values["s3"]
    if image.get("digest"):
        reference = f"{image['repository']}@{image['digest']}"
    else:
        reference = f"{image['repository']}:{image.get('tag') or chart_app_version()}"
    # The Job is named after the release unless fullnameOverride is set; a created account
    # defaults to the Job's name; an existing one has no default.
    name = values["fullnameOverride"] or RELEASE
    account_name = account.get("name") or (name if account.get("create") else None)
    # A null id is absent from Helm's merged values: the platform chooses it.
    identity = values["podSecurityContext"]
    cluster = ClusterSettings(
        namespace=NAMESPACE,
        image=reference,
        image_pull_policy=image["pullPolicy"],
        image_pull_secrets=tuple(s["name"] for s in values["imagePullSecrets"]),
        gpus=values["gpu"]["count"],
        gpu_resource=values["gpu"]["resource"],
        sizing=values["sizing"],
        resources=values["resources"],
        node_selector=values["nodeSelector"],
        tolerations=tuple(values["tolerations"]),
        affinity=values["affinity"],
        priority_class_name=values["priorityClassName"] or None,
        service_account_name=account_name,
        s3_credentials_secret=s3["credentialsSecret"] or None,
        s3_endpoint_url=s3["endpointUrl"] or None,
        s3_region=s3["region"] or None,
        queue=values["kueue"]["queueName"] or None,
        backoff_limit=values["backoffLimit"],
        active_deadline_seconds=values.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=values.get("ttlSecondsAfterFinished"),
        termination_grace_period_seconds=values.get("terminationGracePeriodSeconds"),
        model_cache_claim=values["modelCache"]["existingClaim"] or None,
        model_cache_size_limit=values["modelCache"]["sizeLimit"] or None,
        tmp_size_limit=values["tmp"]["sizeLimit"] or None,  # "auto" as it is
        shm_size=values["shm"]["sizeLimit"],
        metrics_annotations=values["metrics"]["annotations"],
        labels=values["labels"],
        pod_annotations=values["podAnnotations"],
        env=tuple(values["extraEnv"]),
        managed_by="Helm",
        app_name=values["nameOverride"] or "dreambooth-job",
        run_as_user=identity.get("runAsUser"),
        run_as_group=identity.get("runAsGroup"),
        fs_group=identity.get("fsGroup"),
        prompt_file_dirs=tuple(values["operator"]["promptFileDirs"]),
        allowed_hosts=tuple(values["operator"]["allowedHosts"]),
        allowed_prefixes=tuple(values["operator"]["allowedPrefixes"]),
        ceilings={f.name: values["operator"][values_key(f.name)] for f in CEILINGS
                  if values["operator"].get(values_key(f.name)) is not None},
        notify_secret=values["notify"]["secretName"] or None,
    )
    return JobSpec(train=train, cluster=cluster, name=name, extra_args=tuple(values["extraArgs"]))


@functools.cache
def chart_app_version() -> str:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]


# ----------------------------------------------------------------------------------------------
# Comparing Jobs

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def comparable(job: dict[str, Any]) -> dict[str, Any]:
    """`job` without Helm-only labels, with numeric args as numbers.

    Helm spells 2e-06 as 0.000002 (Go's JSON) where Python writes 2e-06; the CLI reads both as
    the same float, so args are compared by value, flags and strings exactly.
    """
    job = copy.deepcopy(job)
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        for label in HELM_ONLY_LABELS:
            meta.get("labels", {}).pop(label, None)
    for container in job["spec"]["template"]["spec"]["containers"]:
        container["args"] = [float(a) if _NUMBER.fullmatch(a) else a for a in container["args"]]
    return job


def assert_same(expected: Any, actual: Any, path: str = "") -> None:
    """Deep equality that names the first differing path and tells 1 from 1.0 and "1"."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        missing, extra = expected.keys() - actual.keys(), actual.keys() - expected.keys()
        assert not missing and not extra, f"at {path or '/'}: missing {missing}, unexpected {extra}"
        for key in expected:
            assert_same(expected[key], actual[key], f"{path}/{key}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(expected) == len(actual), f"at {path}: {expected!r} != {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{path}[{i}]")
    else:
        assert type(expected) is type(actual) and expected == actual, (
            f"at {path}: {expected!r} ({type(expected).__name__}) != "
            f"{actual!r} ({type(actual).__name__})")


# ----------------------------------------------------------------------------------------------
# Kubernetes schemas and the CLI

def validate_object(obj: dict[str, Any], version: str = KUBE_VERSIONS[0]) -> None:
    """Raise unless `obj` is valid for Kubernetes `version`, unknown fields included."""
    crd = CRD_SCHEMAS.get((obj.get("apiVersion"), obj.get("kind")))
    if crd is not None:
        jsonschema.validate(obj, crd)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def kubelet_expanded(args: list[str]) -> list[str]:
    """What the container receives: the kubelet turns `$$` into `$` (and would expand `$(NAME)`
    of a declared env var, which doubled dollars keep it from)."""
    return [a.replace("$$", "$") for a in args]


def parse_train_args(args: list[str]) -> cfg.TrainConfig:
    """What `dreambooth-job <args>` would train, args as the kubelet passes them: the package's own
    click parser, no env."""
    assert args[0] == "train", args
    command = cli.main.commands["train"]
    context = command.make_context("train", kubelet_expanded(args[1:]))
    return resolve_train_config(context.params, env={})


def options_of(config: cfg.TrainConfig) -> dict[str, Any]:
    """The config's options, less the cache dir, which the pod sets through XDG_CACHE_HOME."""
    return {k: v for k, v in config.to_dict().items() if k != "cache_dir"}
