"""The chart renders from the package's descriptions: the pod's env and volumes that the settings
feed are tables (k8s/wiring.py) that the Python builder and the chart's template both render, the
templates name no variable of their own, and every package name they cite exists."""

from __future__ import annotations

import importlib
import re

import pytest
from deploy_support import CHART, assert_same, comparable, spec_from_values

from dreambooth_job.config.operator_policy import ALLOW_PRIVATE_NOTIFY_ENV, CEILINGS
from dreambooth_job.config.pod_env import IMAGE_ENV
from dreambooth_job.k8s.manifest import build_job
from dreambooth_job.k8s.wiring import CEILING, SETTINGS_ENV, UNSET, VOLUMES, values_key

JOB = {"instanceData": "s3://photos/dog-42/", "classNoun": "dog", "output": "s3://runs/dog-42/",
       "notifyUrl": "https://hooks.example/dog", "notifySecretEnv": "NOTIFY_KEY"}
# A value for every row's setting: each row's variable is in the pod.
EVERY_SETTING = {
    "job": JOB,
    "image": {"repository": "registry.example/dreambooth-job", "tag": "1.2.3"},
    "gpu": {"count": 0},
    "s3": {"endpointUrl": "https://minio.example:9000", "region": "eu-west-1",
           "credentialsSecret": "s3-keys"},
    "operator": {"promptFileDirs": ["/prompts", "/more-prompts"], "allowedHosts": ["hooks.example"],
                 "allowedPrefixes": ["s3://photos/", "s3://runs/"], "allowPrivateNotify": True,
                 **{values_key(f.name): f.default for f in CEILINGS}},
    "notify": {"secretName": "hook-key"},
}
# None: only the rows that are there while their setting is unset.
NO_SETTING = {"job": {k: JOB[k] for k in ("instanceData", "classNoun", "output")}}


def env_names(job: dict) -> list[str]:
    return [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]


@pytest.mark.parametrize("values", [EVERY_SETTING, NO_SETTING], ids=["every setting", "none"])
def test_the_chart_renders_the_rows_as_the_builder_builds_them(render, values, monkeypatch):
    rendered = render(values)
    if rendered.values["operator"]["allowPrivateNotify"]:  # no setting: the building process's
        monkeypatch.setenv(ALLOW_PRIVATE_NOTIFY_ENV, "true")
    expected = build_job(spec_from_values(rendered.values))
    assert_same(comparable(expected), comparable(rendered.one("Job")))
    assert env_names(rendered.one("Job")) == env_names(expected)


def test_every_row_reaches_the_pod_when_its_setting_is_set(render):
    names = env_names(render(EVERY_SETTING).one("Job"))
    wanted = [wire.named_by and JOB["notifySecretEnv"] or wire.env
              for wire in SETTINGS_ENV if wire.form != UNSET]
    assert [name for name in names if name in wanted] == wanted
    assert "NVIDIA_VISIBLE_DEVICES" in names  # gpu.count 0: the UNSET row


def test_without_settings_only_the_unset_rows_are_there(render):
    names = set(env_names(render(NO_SETTING).one("Job")))
    rows = {wire.env for wire in SETTINGS_ENV if wire.form != UNSET and wire.form != CEILING}
    assert names & rows == {IMAGE_ENV}  # the image always has a reference
    assert "NVIDIA_VISIBLE_DEVICES" not in names  # one GPU by default


def test_the_templates_name_no_variable_the_table_holds():
    """A variable of the table written into a template would be a second copy of its wiring."""
    templates = re.sub(r"\{\{-? */\*.*?\*/ *-?\}\}", "", "".join(
        p.read_text() for p in (CHART / "templates").iterdir()), flags=re.DOTALL)
    named = {wire.env for wire in SETTINGS_ENV if wire.env} & set(re.findall(r"[A-Z][A-Z0-9_]{3,}",
                                                                            templates))
    assert not named, f"the chart's templates write the table's variables: {sorted(named)}"


def test_every_package_name_the_templates_cite_exists():
    """A comment citing a function that no longer exists tells the next reader a false story."""
    text = "".join(p.read_text() for p in (CHART / "templates").iterdir())
    cited = set(re.findall(r"dreambooth_job(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    assert cited, "the templates cite the package"
    missing = []
    for name in sorted(cited):
        parts = name.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                found = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for attribute in parts[split:]:
                found = getattr(found, attribute, None)
            if found is None:
                missing.append(name)
            break
    assert not missing, f"the chart's templates cite what does not exist: {missing}"


@pytest.mark.parametrize("volumes", [
    {"modelCache": {"sizeLimit": "50Gi"}, "tmp": {"sizeLimit": "20Gi"}, "shm": {"sizeLimit": "16Gi"}},
    {"modelCache": {"existingClaim": "models"}, "tmp": {"sizeLimit": ""}, "shm": {"sizeLimit": 2e9}},
    {"tmp": {"sizeLimit": "auto"}, "job": {**NO_SETTING["job"], "baseModel": "org/some-xl-model"}},
], ids=["sizes", "claim, no tmp limit, a number", "auto"])
def test_the_chart_renders_the_volume_rows_as_the_builder_builds_them(render, volumes):
    rendered = render({**NO_SETTING, **volumes})
    expected = build_job(spec_from_values(rendered.values))["spec"]["template"]["spec"]["volumes"]
    actual = rendered.one("Job")["spec"]["template"]["spec"]["volumes"]
    assert_same(expected, actual)
    assert [v["name"] for v in actual] == [w.name for w in VOLUMES]
