"""Extra env (the chart's extraEnv, ClusterSettings.env) cannot override the operator's policy nor
the pod's own settings: a name starting with DREAMBOOTH_OPERATOR_, DREAMBOOTH_JOB_UID,
DREAMBOOTH_IMAGE or NVIDIA_ fails the install (one line) and the Python builder (exit 2), and extra
entries come before the pod's own, so that any name the pod sets itself wins. Other DREAMBOOTH_
names stay extra env's (the Pushgateway's credentials, docs/metrics.md). Rendered by the real Helm
engine."""

from __future__ import annotations

import helm_python as helm
import pytest
from deploy_support import NAMESPACE, RELEASE, assert_same, comparable, spec_from_values

from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, build_job

JOB = {"instanceData": "s3://photos/dog-42/", "classNoun": "dog", "output": "s3://runs/dog-42/"}
RESERVED = ["DREAMBOOTH_OPERATOR_ALLOWED_HOSTS", "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES",
            "DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY", "DREAMBOOTH_JOB_UID", "DREAMBOOTH_IMAGE",
            "NVIDIA_VISIBLE_DEVICES"]
REFUSAL = ("names starting with DREAMBOOTH_OPERATOR_, DREAMBOOTH_JOB_UID, DREAMBOOTH_IMAGE, NVIDIA_ "
           "are the operator's and the pod's own settings, never extra env")


def env_names(job: dict) -> list[str]:
    return [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]


@pytest.mark.parametrize("name", RESERVED)
def test_an_extra_env_name_of_the_pods_own_settings_fails_the_install(chart, name):
    values = {"job": JOB, "operator": {"allowedHosts": ["hooks.example"]},
              "extraEnv": [{"name": "HF_TOKEN", "value": "x"}, {"name": name, "value": ""}]}
    with pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    message = str(error.value)
    assert f"extraEnv {name}: {REFUSAL}" in message


@pytest.mark.parametrize("name", RESERVED)
def test_the_builder_refuses_the_same_names(name):
    train = cfg.TrainConfig(instance_data="s3://photos/dog-42/", class_noun="dog",
                            output="s3://runs/dog-42/")
    with pytest.raises(InvalidInputError) as error:
        build_job(JobSpec(train=train, cluster=ClusterSettings(env=({"name": name, "value": ""},))))
    assert error.value.message == f"env {name}: {REFUSAL}"


def test_extra_env_comes_first_so_the_charts_own_names_win(render):
    extra = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
             {"name": "AWS_REGION", "value": "elsewhere-1"},
             {"name": "DREAMBOOTH_PUSHGATEWAY_PASSWORD",
              "valueFrom": {"secretKeyRef": {"name": "push", "key": "password"}}}]
    rendered = render({"job": JOB, "s3": {"region": "eu-west-1"}, "extraEnv": extra})
    names = env_names(rendered.one("Job"))
    assert names[:3] == ["HF_TOKEN", "AWS_REGION", "DREAMBOOTH_PUSHGATEWAY_PASSWORD"]
    assert "AWS_REGION" in names[3:], "the chart's AWS_REGION comes later: it wins"
    assert_same(comparable(build_job(spec_from_values(rendered.values))),
                comparable(rendered.one("Job")))


def test_the_operator_allows_private_notify_receivers_only_by_its_own_value(render):
    def operator_env(values: dict) -> dict:
        job = render({"job": JOB, **values}).one("Job")
        return {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
                if e["name"].startswith("DREAMBOOTH_OPERATOR_")}

    assert operator_env({}) == {}
    assert operator_env({"operator": {"allowPrivateNotify": True}}) == {
        "DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY": "true"}
