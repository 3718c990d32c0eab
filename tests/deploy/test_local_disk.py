"""Local disk and failure reasons in every form of the Job: the Python builder, the chart's
defaults, the plain manifests and the Kueue quota that admits them."""

from __future__ import annotations

import pytest
import yaml
from deploy_support import MANIFESTS
from kubernetes.utils import parse_quantity

from dreambooth_job import termination
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import cluster_settings
from dreambooth_job.k8s import pod as pod_module
from dreambooth_job.k8s.cluster_settings import DEFAULT_PROFILE, ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, build_job
from dreambooth_job.training import sizing

GB = 10**9
TRAIN = TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog", output="s3://runs/dog-42/")


def pod_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def disk_of(pod: dict) -> dict:
    """The local-disk settings of a pod spec, as numbers of bytes."""
    container = next(c for c in pod["containers"] if c["name"] == pod_module.CONTAINER_NAME)
    volumes = {v["name"]: v for v in pod["volumes"]}
    resources = container["resources"]
    return {"request": parse_quantity(resources["requests"]["ephemeral-storage"]),
            "limit": parse_quantity(resources["limits"]["ephemeral-storage"]),
            "tmp": parse_quantity(volumes["tmp"]["emptyDir"]["sizeLimit"])}


def builders_pod(**cluster) -> dict:
    return pod_of(build_job(JobSpec(train=TRAIN, cluster=ClusterSettings(**cluster))))


def test_requests_cover_the_documented_peak_and_limits_stay_above_it():
    disk = disk_of(builders_pod())
    peak = sum(sum(parts.values()) for parts in cluster_settings.PEAK_LOCAL_DISK_GB.values()) * GB
    tmp_peak = sum(cluster_settings.PEAK_LOCAL_DISK_GB[cluster_settings.TMP_MOUNT].values()) * GB
    assert peak <= disk["request"] < disk["limit"]
    # Going over either limit is an eviction with no time to checkpoint.
    assert tmp_peak < disk["tmp"] <= disk["limit"]


def test_the_kubelet_reports_the_jobs_termination_log():
    (container,) = builders_pod()["containers"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Where the kubelet reads the message is where the job writes it.
    path = container.get("terminationMessagePath", "/dev/termination-log")  # the API's default
    assert path == termination.DEFAULT_TERMINATION_LOG


def test_explicit_settings_replace_the_defaults():
    cluster = ClusterSettings(resources={"requests": {"ephemeral-storage": "80Gi"},
                                         "limits": {"ephemeral-storage": "100Gi"}},
                              tmp_size_limit="70Gi")
    disk = disk_of(pod_of(build_job(JobSpec(train=TRAIN, cluster=cluster))))
    assert disk == {"request": parse_quantity("80Gi"), "limit": parse_quantity("100Gi"),
                    "tmp": parse_quantity("70Gi")}
    unlimited = pod_of(build_job(JobSpec(train=TRAIN, cluster=ClusterSettings(tmp_size_limit=None))))
    assert next(v for v in unlimited["volumes"] if v["name"] == "tmp")["emptyDir"] == {}


def test_chart_defaults_are_the_builders(render):
    job = render({"job": {"instanceData": "s3://photos/dog-42/", "classNoun": "dog",
                          "output": "s3://runs/dog-42/"}}).one("Job")
    assert disk_of(pod_of(job)) == disk_of(builders_pod())
    assert pod_of(job)["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("path", ["job.yaml", "batch/indexed-job.yaml"])
def test_plain_manifests_request_the_same_disk(path):
    """The examples name the profile of their SD 1.5 base model (a hub id `auto` cannot read)."""
    (job,) = [d for d in yaml.safe_load_all((MANIFESTS / path).read_text()) if d and d["kind"] == "Job"]
    assert disk_of(pod_of(job)) == disk_of(builders_pod(sizing=DEFAULT_PROFILE.name))
    assert pod_of(job)["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize("profile", ["auto", *sizing.PROFILES])
def test_kueue_covers_every_resource_the_pod_requests(profile):
    """Kueue admits no workload requesting a resource its ClusterQueue does not cover, and its
    quota admits as many pods of every sizing profile as it has GPUs."""
    (queue,) = [d for d in yaml.safe_load_all((MANIFESTS / "kueue" / "base" / "kueue.yaml").read_text())
                if d and d["kind"] == "ClusterQueue"]
    covered = {name for group in queue["spec"]["resourceGroups"] for name in group["coveredResources"]}
    # A profile above the default grace ceiling (FLUX.2 [klein] full) runs where the operator raised it.
    grace = sizing.PROFILES[profile].job_grace_seconds if profile in sizing.PROFILES else 0
    default_ceiling = OperatorPolicy().max_termination_grace_seconds
    ceilings = {"max_termination_grace_seconds": grace} if grace > default_ceiling else {}
    job = build_job(JobSpec(train=TRAIN, cluster=ClusterSettings(sizing=profile, ceilings=ceilings)))
    resources = pod_of(job)["containers"][0]["resources"]
    assert {*resources["requests"], *resources["limits"]} <= covered
    quota = {r["name"]: parse_quantity(r["nominalQuota"]) for group in queue["spec"]["resourceGroups"]
             for flavor in group["flavors"] for r in flavor["resources"]}
    gpus_per_pod = parse_quantity(resources["limits"]["nvidia.com/gpu"])
    pods = quota["nvidia.com/gpu"] / gpus_per_pod
    for name, request in resources["requests"].items():
        assert quota[name] >= pods * parse_quantity(request), f"{name}: quota for fewer pods than GPUs"
