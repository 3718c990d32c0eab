"""The completion call in a Job: the operator's allowed hosts and the signing key's Secret reach the
pod's env, the same from the chart and from the Python builder; the key's value never is rendered."""

from __future__ import annotations

import helm_python as helm
import pytest
from deploy_support import NAMESPACE, RELEASE, assert_same, comparable, spec_from_values

from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import JobSpec, build_job

JOB = {"instanceData": "s3://photos/dog-42/", "classNoun": "dog", "output": "s3://runs/dog-42/"}
NOTIFY = {**JOB, "notifyUrl": "https://hooks.example/dog", "notifySecretEnv": "NOTIFY_KEY"}


def env_of(job: dict) -> dict:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_allowed_hosts_and_the_signing_secret_reach_the_pod_from_the_chart(render):
    values = {"job": NOTIFY, "operator": {"allowedHosts": ["hooks.example", "push.monitoring"]},
              "notify": {"secretName": "hook-key"}}
    rendered = render(values)
    env = env_of(rendered.one("Job"))
    assert env["DREAMBOOTH_OPERATOR_ALLOWED_HOSTS"]["value"] == "hooks.example,push.monitoring"
    assert env["NOTIFY_KEY"] == {"name": "NOTIFY_KEY", "valueFrom": {"secretKeyRef": {
        "name": "hook-key", "key": "NOTIFY_KEY"}}}
    assert_same(comparable(build_job(spec_from_values(rendered.values))),
                comparable(rendered.one("Job")))
    args = rendered.one("Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--notify-url") + 1] == "https://hooks.example/dog"


def test_without_them_nothing_is_rendered(render):
    env = env_of(render({"job": JOB}).one("Job"))
    assert "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS" not in env
    assert not any("valueFrom" in e and e["name"] != "DREAMBOOTH_JOB_UID" for e in env.values())


def test_a_signing_secret_without_its_variable_fails_the_install_and_the_builder(chart):
    with pytest.raises(helm.HelmRenderError, match="notify.secretName needs job.notifySecretEnv"):
        chart.render({"job": JOB, "notify": {"secretName": "hook-key"}}, name=RELEASE,
                     namespace=NAMESPACE, is_install=True)
    train = cfg.TrainConfig(**{cfg_name(k): v for k, v in JOB.items()})
    with pytest.raises(InvalidInputError, match="notify_secret needs --notify-secret-env"):
        build_job(JobSpec(train=train, cluster=ClusterSettings(notify_secret="hook-key")))


@pytest.mark.parametrize(("values", "where"), [
    ({"operator": {"allowedHosts": ["a.example,b.example"]}}, "/operator/allowedHosts/0"),
    ({"operator": {"allowedHosts": ["https://a.example/"]}}, "/operator/allowedHosts/0"),
    ({"notify": {"secretKey": "x"}}, "additional properties"),
    ({"job": {**JOB, "notifyUrl": "https://u:pw@hooks.example/"}}, "/job/notifyUrl"),
])
def test_schema_rejects_bad_notify_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError) as error:
        chart.render({"job": JOB, **values}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    assert where in str(error.value)


@pytest.mark.parametrize("bad", ["a.example,b.example", "https://a.example/", "", "a b"])
def test_cluster_settings_refuse_what_is_not_a_host(bad):
    with pytest.raises(InvalidInputError, match="allowed_hosts"):
        ClusterSettings(allowed_hosts=(bad,))


def cfg_name(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def test_a_batch_checks_every_rows_notify_host_and_its_id_segment(tmp_path, monkeypatch):
    from dreambooth_job.k8s.batch import BatchFileError, load_batch

    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_HOSTS", "hooks.example")
    path = tmp_path / "night.yaml"
    path.write_text("""\
defaults: {output: "s3://runs/{id}/", notify_url: "https://hooks.example/dreambooth/{class_noun}"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
  - {id: cat, instance_data: "s3://photos/cat/", class_noun: cat,
     notify_url: "http://169.254.169.254/latest/"}
  - {id: vase, instance_data: "s3://photos/vase/", class_noun: "evil.example/x"}
""")
    with pytest.raises(BatchFileError) as caught:
        load_batch(path)
    cat, vase = caught.value.problems
    assert cat.startswith("subjects[1] (id cat):") and "--notify-url" in cat
    assert "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS" in cat
    assert vase.startswith("subjects[2] (id vase):") and "not one path segment" in vase
