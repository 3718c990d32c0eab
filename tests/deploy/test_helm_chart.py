"""The Helm chart, rendered by the real Helm v4 engine for every values file under ci/."""

from __future__ import annotations

import re
import shutil
import subprocess

import helm_python as helm
import pytest
import yaml
from deploy_support import (
    CHART,
    CI_VALUES,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    assert_same,
    comparable,
    load_values,
    options_of,
    parse_train_args,
    spec_from_values,
    validate_object,
)

import dreambooth_job
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.k8s.manifest import BATCH_LABEL, QUEUE_LABEL, SUBJECT_LABEL, build_job
from dreambooth_job.k8s.pod import job_grace_seconds

CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
MINIMAL = {"job": {"instanceData": "s3://photos/dog-42/", "classNoun": "dog",
                   "output": "s3://runs/dog-42/"}}


@pytest.fixture(params=CI_VALUES, ids=CI_IDS)
def ci(request, render):
    return render(load_values(request.param))


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def with_job(**job) -> dict:
    return {"job": {**MINIMAL["job"], **job}}


def test_ci_values_cover_the_cases_the_chart_promises():
    assert set(CI_IDS) >= {"minimal", "full", "kueue", "pvc-cache", "irsa", "openshift"}


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_object_is_valid_kubernetes(ci, version):
    assert ci.objects, "the chart rendered nothing"
    for obj in ci.objects:  # validate_object raises on the first invalid field
        validate_object(obj, version)


def test_job_is_the_python_builders_job_field_by_field(ci):
    expected = build_job(spec_from_values(ci.values))
    assert_same(comparable(expected), comparable(ci.one("Job")))


def test_rendered_args_parse_into_the_intended_config(ci):
    spec = spec_from_values(ci.values)
    expected = options_of(spec.train)
    expected["subject_id"] = ci.one("Job")["metadata"]["labels"][SUBJECT_LABEL]
    expected["termination_grace_seconds"] = job_grace_seconds(spec.train, spec.cluster)
    for flag, value in zip(ci.values["extraArgs"][::2], ci.values["extraArgs"][1::2]):
        expected[flag.removeprefix("--").replace("-", "_")] = value
    assert options_of(parse_train_args(container(ci.one("Job"))["args"])) == expected


def test_args_never_expand_a_tenants_env_var_reference(render):
    """The kubelet expands `$(NAME)` in args: a prompt naming the S3 secret's env var would put
    the secret into result.json and the grids. Chart and Python builder double every `$`."""
    values = load_values(CHART / "ci" / "full-values.yaml")
    prompts = [p for p in values["job"]["validationPrompts"] if "$(" in p]
    assert prompts, "the CI values should hold a prompt naming an env var"
    rendered = render(values)
    jobs = (rendered.one("Job"), build_job(spec_from_values(rendered.values)))
    for args in (container(job)["args"] for job in jobs):
        assert "$(" not in " ".join(args).replace("$$", ""), args
        assert parse_train_args(args).validation_prompts == values["job"]["validationPrompts"]


def test_security_context(ci):
    pod = ci.one("Job")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container(ci.one("Job"))["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]}}
    assert pod["restartPolicy"] == "Never"


def test_pod_failure_policy_follows_the_exit_code_table(ci):
    fail, ignore = ci.one("Job")["spec"]["podFailurePolicy"]["rules"]
    assert fail == {"action": "FailJob", "onExitCodes": {
        "containerName": "train", "operator": "In", "values": [int(ExitCode.INVALID_INPUT)]}}
    assert ignore == {"action": "Ignore",
                      "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_no_secret_value_is_ever_rendered(ci):
    assert "Secret" not in ci.kinds()
    for entry in container(ci.one("Job"))["env"]:
        if entry["name"].startswith("AWS_") and entry["name"] not in (
                "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
            assert "value" not in entry and "secretKeyRef" in entry["valueFrom"]


def test_termination_grace_covers_the_jobs_checkpoint_budget(ci):
    spec = spec_from_values(ci.values)
    budget = job_grace_seconds(spec.train, spec.cluster)
    assert ci.one("Job")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > budget


def test_one_gpu_by_default(render):
    resources = container(render(MINIMAL).one("Job"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"  # a quantity: the API types it as a string
    assert "nvidia.com/gpu" not in resources["requests"]


def test_cpu_run_requests_no_gpu_and_sees_none(render):
    job = render(load_values(CHART / "ci" / "pvc-cache-values.yaml")).one("Job")
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    # Where nvidia is the default runtime, only this keeps the node's GPUs out of the container.
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in container(job)["env"]
    gpu_env = container(render(MINIMAL).one("Job"))["env"]
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in gpu_env}


def test_pod_ids_default_to_the_images_user_and_can_be_left_to_openshift(render):
    pod = render(MINIMAL).one("Job")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}
    openshift = render(load_values(CHART / "ci" / "openshift-values.yaml")).one("Job")
    # restricted-v2 assigns the UID and fsGroup; the hardening stays.
    assert openshift["spec"]["template"]["spec"]["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert container(openshift)["securityContext"] == container(render(MINIMAL).one("Job"))[
        "securityContext"]
    one_id = render({**MINIMAL, "podSecurityContext": {"runAsUser": 1000700000}}).one("Job")
    assert one_id["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 1000700000


def test_name_overrides_rename_the_job_and_what_selects_it(render):
    values = {**load_values(CHART / "ci" / "full-values.yaml"), "nameOverride": "dreambooth",
              "fullnameOverride": "backpack-7-run"}
    rendered = render(values)
    job, monitor = rendered.one("Job"), rendered.one("PodMonitor")
    assert job["metadata"]["name"] == monitor["metadata"]["name"] == "backpack-7-run"
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "dreambooth"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "logs -f job/backpack-7-run" in rendered.notes
    assert render(MINIMAL).one("Job")["metadata"]["name"] == RELEASE


def test_kueue_queue_labels_the_job_and_creates_it_suspended(render):
    rendered = render(load_values(CHART / "ci" / "kueue-values.yaml"))
    job = rendered.one("Job")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][QUEUE_LABEL] == "gpu-batch"
    assert job["metadata"]["labels"][BATCH_LABEL] == "night-42"
    assert "suspend" not in render(MINIMAL).one("Job")["spec"]


def test_shared_model_cache_uses_the_existing_claim(render):
    job = render(load_values(CHART / "ci" / "pvc-cache-values.yaml")).one("Job")
    cache = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache")
    assert cache == {"name": "cache", "persistentVolumeClaim": {"claimName": "dreambooth-model-cache"}}


def test_irsa_creates_an_annotated_service_account_and_uses_it(render):
    rendered = render(load_values(CHART / "ci" / "irsa-values.yaml"))
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert account["automountServiceAccountToken"] is False
    pod = rendered.one("Job")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert not any(e["name"].startswith("AWS_ACCESS") for e in container(rendered.one("Job"))["env"])


def test_pod_monitor_selects_the_pod(render):
    rendered = render(load_values(CHART / "ci" / "full-values.yaml"))
    monitor, job = rendered.one("PodMonitor"), rendered.one("Job")
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in container(job)["ports"]}


@pytest.mark.parametrize("values, where", [
    ({"job": {"classNoun": "dog", "output": "s3://runs/x/"}}, "missing property 'instanceData'"),
    ({"job": {"instanceData": "s3://p/x/", "output": "s3://runs/x/"}}, "missing property 'classNoun'"),
    ({"job": {"instanceData": "", "classNoun": "dog", "output": "s3://runs/x/"}}, "/job/instanceData"),
    (with_job(maxTrainSteps=-100), "/job/maxTrainSteps"),
    (with_job(maxTrainSteps="many"), "/job/maxTrainSteps"),
    (with_job(learningRate=0), "/job/learningRate"),
    (with_job(mixedPrecision="fp8"), "/job/mixedPrecision"),
    (with_job(instancePrompt="a photo of a dog"), "/job/instancePrompt"),
    (with_job(maxTrainStep=100), "additional properties 'maxTrainStep' not allowed"),
    ({**MINIMAL, "gpu": {"count": -1}}, "/gpu/count"),
    ({**MINIMAL, "backoffLimit": "3"}, "/backoffLimit"),
    ({**MINIMAL, "nodeselector": {}}, "additional properties 'nodeselector' not allowed"),
    ({**MINIMAL, "podSecurityContext": {"runAsUser": 0}}, "/podSecurityContext/runAsUser"),
    ({**MINIMAL, "podSecurityContext": {"runAsUser": "10001"}}, "/podSecurityContext/runAsUser"),
    ({**MINIMAL, "podSecurityContext": {"runAsNonRoot": False}}, "'runAsNonRoot' not allowed"),
    ({**MINIMAL, "fullnameOverride": "Dog_42"}, "/fullnameOverride"),
    ({**MINIMAL, "nameOverride": "-x-"}, "/nameOverride"),
    (with_job(pushgateway="https://user:pass@pushgateway:9091"), "/job/pushgateway"),
    (with_job(output="s3://key:secret@runs/x/"), "/job/output"),
    ({**MINIMAL, "operator": {"promptFileDirs": ["prompts"]}}, "/operator/promptFileDirs/0"),
    ({**MINIMAL, "operator": {"promptFileDirs": ["/a,/b"]}}, "/operator/promptFileDirs/0"),
    ({**MINIMAL, "operator": {"promptFilesDirs": []}}, "additional properties"),
])
def test_schema_rejects_bad_values_with_helms_own_error(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where in str(error.value)


def test_operator_prompt_file_dirs_are_env_only_when_set(render):
    def operator_env(values: dict) -> dict:
        return {e["name"]: e.get("value") for e in container(render(values).one("Job"))["env"]
                if e["name"].startswith("DREAMBOOTH_OPERATOR_")}

    assert operator_env(MINIMAL) == {}
    assert operator_env({**MINIMAL, "operator": {"promptFileDirs": []}}) == {}
    assert operator_env({**MINIMAL, "operator": {"promptFileDirs": ["/etc/p", "/srv/q"]}}) == {
        "DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS": "/etc/p,/srv/q"}


def test_command_line_values_as_documented(render):
    values = helm.parse_set_string("job.maxTrainSteps=1000,job.priorPreservation=false")
    values["job"].update(helm.parse_set_json("job.learningRate=2e-6")["job"])
    values["job"].update(helm.parse_set_string_values("job.subjectId=42")["job"])
    config = parse_train_args(container(render({"job": {**MINIMAL["job"], **values["job"]}}).one(
        "Job"))["args"])
    assert (config.max_train_steps, config.prior_preservation, config.learning_rate,
            config.subject_id) == (1000, False, 2e-6, "42")


def test_a_grace_period_shorter_than_the_checkpoint_budget_fails_the_install(chart):
    values = {**with_job(terminationGraceSeconds=40), "terminationGracePeriodSeconds": 30}
    with pytest.raises(helm.HelmRenderError, match="no time to checkpoint"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


@pytest.mark.parametrize("values_file", CI_VALUES, ids=CI_IDS)
def test_helm_lint_is_clean(values_file):
    report = helm.lint(CHART, load_values(values_file), strict=True, kube_version="v1.31.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems


def test_notes_tell_how_to_follow_the_job(render):
    notes = render(load_values(CHART / "ci" / "full-values.yaml")).notes
    assert f"kubectl -n {NAMESPACE} logs -f job/{RELEASE}" in notes
    assert "wait --for=condition=complete" in notes
    assert "s3://runs/customers/backpack-7/" in notes
    assert "9400" in notes  # the metrics port
    for code in ExitCode:
        assert re.search(rf"\b{int(code)}\s+{code.name}\b", notes)
    assert "helm uninstall" in notes


def test_chart_metadata_follows_the_package():
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["apiVersion"] == "v2"
    assert chart_yaml["appVersion"] == dreambooth_job.__version__


def test_named_templates_are_chart_prefixed():
    for template in CHART.glob("templates/*"):
        for name in re.findall(r'define "([^"]+)"', template.read_text()):
            assert name.startswith("dreambooth-job."), f"{template.name}: {name}"


@pytest.mark.skipif(not shutil.which("helm"), reason="no helm binary on PATH (optional)")
def test_helm_binary_renders_what_the_sdk_renders(tmp_path, render):
    values = CHART / "ci" / "full-values.yaml"
    out = subprocess.run(["helm", "template", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values)],
                         capture_output=True, text=True, check=True).stdout
    job = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Job")
    assert_same(render(load_values(values)).one("Job"), job)


# ----------------------------------------------------------------------------------------------
# Issue 23: the operator's ceilings and prefixes in the chart.

@pytest.mark.parametrize("values, refusal", [
    (with_job(terminationGraceSeconds=31536000),
     "job.terminationGraceSeconds 3.1536e+07 is above the operator's ceiling of 600"),
    ({**MINIMAL, "terminationGracePeriodSeconds": 31536005},
     "terminationGracePeriodSeconds 31536005 is above the operator's ceiling of 600"),
    (with_job(gradientAccumulationSteps=100000),
     "job.gradientAccumulationSteps 100000 is above the operator's ceiling of 64"),
    ({**with_job(maxTrainSteps=2000), "operator": {"maxTrainSteps": 1000}},
     "job.maxTrainSteps 2000 is above the operator's ceiling of 1000 (operator.maxTrainSteps)"),
    ({**MINIMAL, "gpu": {"count": 64}}, "gpu.count 64 is above the operator's ceiling of 8"),
    ({**MINIMAL, "gpu": {"count": 2}, "operator": {"maxGpus": 1}},
     "gpu.count 2 is above the operator's ceiling of 1"),
    ({**MINIMAL, "resources": {"limits": {"memory": "4Ti"}}},
     "resources.limits.memory 4Ti is above the operator's ceiling of 512Gi (operator.maxMemory)"),
    ({**MINIMAL, "resources": {"requests": {"cpu": 1000}}},
     "resources.requests.cpu 1000 is above the operator's ceiling of 64 (operator.maxCpu)"),
    ({**MINIMAL, "resources": {"requests": {"cpu": "9"}}, "operator": {"maxCpu": "8000m"}},
     "resources.requests.cpu 9 is above the operator's ceiling of 8000m"),
])
def test_a_value_above_an_operator_ceiling_fails_the_install(chart, values, refusal):
    with pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert refusal in str(error.value)


@pytest.mark.parametrize("values, where", [
    (with_job(subjectId="x" * 1_000_000), "/job/subjectId"),
    (with_job(subjectId="dog 42"), "/job/subjectId"),
    (with_job(jobId="j" * 1_000), "/job/jobId"),
    (with_job(classNoun="n" * 65), "/job/classNoun"),
    (with_job(vae="ftp://user:pw@host/vae"), "/job/vae"),
    (with_job(validationPrompts=["a {identifier} {class_noun}"] * 33), "/job/validationPrompts"),
    (with_job(loraRank=50_000_000), "/job/loraRank"),
    ({**MINIMAL, "operator": {"maxMemory": "lots"}}, "/operator/maxMemory"),
    ({**MINIMAL, "operator": {"maxGpus": -1}}, "/operator/maxGpus"),
    ({**MINIMAL, "operator": {"allowedPrefixes": ["s3://a/,s3://b/"]}}, "/operator/allowedPrefixes/0"),
])
def test_schema_bounds_tenant_strings_and_the_operators_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where in str(error.value)


def test_the_operators_prefixes_and_ceilings_reach_the_pod_as_the_builder_passes_them(render):
    values = {**MINIMAL, "operator": {"allowedPrefixes": ["s3://photos/", "s3://runs/"],
                                      "maxTrainSteps": 1000, "maxMemory": "128Gi"}}
    rendered = render(values)
    job = rendered.one("Job")
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert {k: v for k, v in env.items() if k.startswith("DREAMBOOTH_OPERATOR_")} == {
        "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES": "s3://photos/,s3://runs/",
        "DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS": "1000", "DREAMBOOTH_OPERATOR_MAX_MEMORY": "128Gi"}
    assert_same(comparable(build_job(spec_from_values(rendered.values))), comparable(job))
