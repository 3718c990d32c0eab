"""The Python Job builder on its own: names, policy, security, and that it stays light."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from deploy_support import KUBE_VERSIONS, options_of, parse_train_args, validate_object

from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.k8s import cluster_settings
from dreambooth_job.k8s import pod as pod_module
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import BATCH_LABEL, QUEUE_LABEL, SUBJECT_LABEL, JobSpec, build_job, job_name
from dreambooth_job.storage import lease
from dreambooth_job.training import sizing

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def dog(**options) -> cfg.TrainConfig:
    return cfg.TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog",
                           output="s3://runs/dog-42/", **options)


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def test_importing_the_k8s_package_loads_neither_torch_nor_diffusers():
    code = ("import sys, dreambooth_job.k8s, dreambooth_job.k8s.manifest; "
            "print(sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("subject, batch", [
    ("dog-42", None), ("Dog_42", "night-7"), ("ünïcødé subject/with slashes", None),
    ("x" * 200, "b" * 63), ("---", None), ("42", "2026-11-25"),
])
def test_job_name_is_a_short_dns_label_and_a_function_of_the_ids(subject, batch):
    name = job_name(subject, batch)
    assert name == job_name(subject, batch)
    assert len(name) <= 63
    assert re.match(DNS_LABEL, name), name


def test_job_names_keep_apart_what_sanitizing_would_merge():
    names = {job_name("dog-42"), job_name("Dog_42"), job_name("dog 42"), job_name("dog-42", "night-7"),
             job_name("dog-42", "night-8"), job_name("night-7-dog-42")}
    assert len(names) == 6
    assert job_name("dog-42", "night-7").startswith("night-7-dog-42-")


def test_defaults_build_a_valid_job_for_every_supported_kubernetes():
    job = build_job(JobSpec(train=dog()))
    for version in KUBE_VERSIONS:
        validate_object(job, version)
    assert job["metadata"]["name"] == job_name("dog-42")
    assert "namespace" not in job["metadata"]  # left to the caller's context
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_pod_failure_policy_comes_from_the_exit_code_table():
    rules = build_job(JobSpec(train=dog()))["spec"]["podFailurePolicy"]["rules"]
    fail, ignore = rules
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {"containerName": pod_module.CONTAINER_NAME, "operator": "In",
                                   "values": [ExitCode.INVALID_INPUT.value]}
    assert ignore == {"action": "Ignore",
                      "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    # Transient and internal failures, and SIGTERM without a disruption, count against backoffLimit.
    for code in (ExitCode.INTERNAL_ERROR, ExitCode.RETRYABLE, ExitCode.TERMINATED):
        assert code not in fail["onExitCodes"]["values"]


def test_security_defaults():
    spec = pod_spec(build_job(JobSpec(train=dog())))
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert spec["automountServiceAccountToken"] is False
    # With a read-only root, every path the job writes is a volume.
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts == {"/cache", "/tmp", "/dev/shm"}
    shm = next(v for v in spec["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_pod_ids_are_settings_and_none_leaves_them_to_the_platform():
    openshift = ClusterSettings(run_as_user=None, run_as_group=None, fs_group=None)
    spec = pod_spec(build_job(JobSpec(train=dog(), cluster=openshift)))
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    for version in KUBE_VERSIONS:
        validate_object(build_job(JobSpec(train=dog(), cluster=openshift)), version)
    chosen = ClusterSettings(run_as_user=1000700000, run_as_group=0, fs_group=1000700000)
    context = pod_spec(build_job(JobSpec(train=dog(), cluster=chosen)))["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (1000700000, 0, 1000700000)


@pytest.mark.parametrize("bad, match", [
    ({"run_as_user": 0}, "non-root"), ({"fs_group": -1}, "fs_group"),
    ({"app_name": "-dream-"}, "label value"), ({"app_name": "x" * 64}, "label value"),
])
def test_identity_settings_refuse_root_and_bad_labels(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        ClusterSettings(**bad)


def test_a_cpu_pod_sees_no_gpu_of_its_node():
    def env(cluster: ClusterSettings) -> dict:
        return {e["name"]: e.get("value") for e in pod_spec(build_job(JobSpec(
            train=dog(), cluster=cluster)))["containers"][0]["env"]}

    assert env(ClusterSettings(gpus=0))["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(ClusterSettings(gpus=1))


def test_termination_grace_covers_the_checkpoint_budget():
    spec = pod_spec(build_job(JobSpec(train=dog(termination_grace_seconds=40.2))))
    assert spec["terminationGracePeriodSeconds"] == 41 + cluster_settings.TERMINATION_MARGIN_SECONDS
    too_short = ClusterSettings(termination_grace_period_seconds=40)
    with pytest.raises(InvalidInputError, match="no time to checkpoint"):
        build_job(JobSpec(train=dog(termination_grace_seconds=40.2), cluster=too_short))


def test_gpu_count_and_resource_land_in_limits():
    def limits(cluster: ClusterSettings) -> dict:
        return pod_spec(build_job(JobSpec(train=dog(), cluster=cluster)))["containers"][0][
            "resources"]["limits"]

    assert limits(ClusterSettings())["nvidia.com/gpu"] == "1"
    assert limits(ClusterSettings(gpus=2, gpu_resource="amd.com/gpu"))["amd.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in limits(ClusterSettings(gpus=0))


def test_kueue_queue_suspends_the_job_and_labels_only_the_job():
    job = build_job(JobSpec(train=dog(batch_id="night-7"), cluster=ClusterSettings(queue="gpu-batch")))
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu-batch"
    assert QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]
    assert job["metadata"]["labels"][BATCH_LABEL] == "night-7"
    assert "suspend" not in build_job(JobSpec(train=dog()))["spec"]


def test_labels_name_the_subject_the_job_will_report():
    job = build_job(JobSpec(train=cfg.TrainConfig(
        instance_data="s3://photos/Some Dog!/", class_noun="dog", output="s3://runs/x/")))
    assert job["metadata"]["labels"][SUBJECT_LABEL] == "Some-Dog"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--subject-id") + 1] == "Some-Dog"


def test_container_args_parse_back_into_the_config():
    train = dog(max_train_steps=1200, learning_rate=2e-6, prior_preservation=False,
                validation_prompts=["a {identifier} {class_noun}, oil painting"], batch_id="night-7")
    args = pod_spec(build_job(JobSpec(train=train)))["containers"][0]["args"]
    budget = sizing.PROFILES[sizing.UNDETECTED["full"]].job_grace_seconds
    assert options_of(parse_train_args(args)) == options_of(dataclasses.replace(
        train, subject_id="dog-42", termination_grace_seconds=budget))


def test_s3_credentials_are_referenced_never_copied():
    cluster = ClusterSettings(s3_credentials_secret="keys", s3_region="eu-west-1",
                              s3_endpoint_url="https://minio:9000")
    env = {e["name"]: e for e in pod_spec(build_job(JobSpec(train=dog(), cluster=cluster)))[
        "containers"][0]["env"]}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": "keys", "key": key}}}
    assert env["AWS_REGION"]["value"] == env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://minio:9000"


def test_the_pod_knows_its_jobs_uid_for_the_lease_and_replaces_only_ended_pods():
    job = build_job(JobSpec(train=dog()))
    env = {e["name"]: e for e in pod_spec(job)["containers"][0]["env"]}
    # The label the Job controller puts on its pods, read by the lease (lease.pod_identity).
    assert env[lease.JOB_UID_ENV]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}}
    # Taking over a predecessor's lease at once is safe only if that pod has ended.
    assert job["spec"]["podReplacementPolicy"] == "Failed"


def test_every_cluster_setting_is_documented():
    for f in dataclasses.fields(ClusterSettings):
        assert f.metadata.get("help"), f"ClusterSettings.{f.name} has no help"


@pytest.mark.parametrize("bad", [{"gpus": -1}, {"backoff_limit": -1}, {"ttl_seconds_after_finished": -5}])
def test_cluster_settings_reject_negative_numbers(bad):
    with pytest.raises(InvalidInputError):
        ClusterSettings(**bad)


def test_an_explicit_name_must_be_a_dns_label():
    with pytest.raises(InvalidInputError, match="DNS-1123"):
        build_job(JobSpec(train=dog(), name="Dog_42"))


def test_operator_prompt_file_dirs_reach_the_pod_env_only_when_set():
    def env_of(cluster: ClusterSettings) -> dict:
        return {e["name"]: e.get("value") for e in pod_spec(build_job(JobSpec(
            train=dog(), cluster=cluster)))["containers"][0]["env"]}

    assert not any(name.startswith("DREAMBOOTH_OPERATOR_") for name in env_of(ClusterSettings()))
    env = env_of(ClusterSettings(prompt_file_dirs=("/etc/prompts", "/srv/shared")))
    assert env["DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS"] == "/etc/prompts,/srv/shared"


@pytest.mark.parametrize("bad", ["relative/dir", "/a,/b"])
def test_operator_prompt_file_dirs_must_be_absolute_and_comma_free(bad):
    with pytest.raises(InvalidInputError, match="prompt_file_dirs"):
        ClusterSettings(prompt_file_dirs=(bad,))


@pytest.mark.parametrize("option", ["pushgateway", "output", "base_model", "instance_data"])
def test_credentials_in_a_url_never_reach_job_args(option):
    values = {"instance_data": "s3://photos/dog-42/", "class_noun": "dog",
              "output": "s3://runs/dog-42/", option: "https://trainer:s3cr3t-pw@host.example:9091/"}
    with pytest.raises(InvalidInputError, match="credentials") as error:
        build_job(JobSpec(train=cfg.TrainConfig(**values)))
    assert "s3cr3t-pw" not in str(error.value)


def test_the_pod_knows_its_image_for_result_json():
    from dreambooth_job.outputs import result

    cluster = ClusterSettings(image="registry.example/dreambooth-job@sha256:" + "a" * 64)
    pod = pod_spec(build_job(JobSpec(train=dog(), cluster=cluster)))
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env[result.IMAGE_ENV]["value"] == pod["containers"][0]["image"] == cluster.image
