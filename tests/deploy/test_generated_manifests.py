"""manifests/job.yaml and manifests/batch/indexed-job.yaml are generated from the builders: the
sync script's --check finds any difference, and the Indexed Job builder on its own."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import CHART, MANIFESTS, REPO, assert_same, load_values, spec_from_values

from dreambooth_job.config import sources as config_sources
from dreambooth_job.config import train_config as cfg
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s import examples, pod
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.commented_yaml import commented_yaml
from dreambooth_job.k8s.manifest import (
    BATCH_LABEL,
    QUEUE_LABEL,
    SUBJECT_LABEL,
    IndexedJobSpec,
    JobSpec,
    build_indexed_job,
    build_job,
    pod_failure_policy,
)
from dreambooth_job.training import sizing

SYNC = REPO / "helm" / "sync_chart.py"
GENERATED = sorted(examples.EXAMPLES)
JOBS = ["manifests/batch/indexed-job.yaml", "manifests/job.yaml"]
SUBJECT_FILES = [path for path in GENERATED if path not in JOBS]


def load_sync_script():
    spec = importlib.util.spec_from_file_location("sync_chart", SYNC)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A copy of what the sync script reads and writes: the chart and manifests/."""
    for folder in ("helm", "manifests"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    return tmp_path


def test_sync_check_passes_on_the_checkout():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SYNC), "--check"], check=False, capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", GENERATED)
def test_sync_check_fails_when_a_manifest_was_edited_by_hand(checkout, capsys, path):
    sync = load_sync_script()
    assert sync.main(["--check"], root=checkout) == 0
    edited = checkout / path
    edited.write_text(edited.read_text().replace("readOnlyRootFilesystem: true",
                                                 "readOnlyRootFilesystem: false")
                      .replace("seed: 0", "seed: 1"))
    assert sync.main(["--check"], root=checkout) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"out of date: {path}; run helm/sync_chart.py without --check"]
    assert sync.main([], root=checkout) == 0  # writes it back
    assert sync.main(["--check"], root=checkout) == 0
    assert edited.read_text() == (MANIFESTS.parent / path).read_text()


def test_sync_check_fails_when_the_builder_changes(checkout, capsys, monkeypatch):
    sync = load_sync_script()
    changed = {**pod.container_security_context(), "privileged": False}
    monkeypatch.setattr(pod, "container_security_context", lambda: changed)
    assert sync.main(["--check"], root=checkout) == 1
    stale = {line.split(";")[0].removeprefix("out of date: ")
             for line in capsys.readouterr().err.splitlines()}
    # The chart's templates render the fixed parts of the pod from package.yaml: it follows too.
    assert stale == {*JOBS, "helm/dreambooth-job/files/package.yaml"}


def test_sync_check_fails_when_what_a_subject_file_states_changes(checkout, capsys, monkeypatch):
    sync = load_sync_script()
    monkeypatch.setattr(examples, "to_config_values", lambda config: {"subject_id": "changed"})
    assert sync.main(["--check"], root=checkout) == 1
    stale = {line.split(";")[0].removeprefix("out of date: ")
             for line in capsys.readouterr().err.splitlines()}
    assert stale == set(SUBJECT_FILES)


def test_sync_check_fails_when_a_manifest_is_missing(checkout, capsys):
    (checkout / "manifests" / "job.yaml").unlink()
    assert load_sync_script().main(["--check"], root=checkout) == 1
    assert "manifests/job.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("path, build", [("manifests/job.yaml", examples.plain_job),
                                         ("manifests/batch/indexed-job.yaml", examples.indexed_job)])
def test_generated_manifest_is_the_builders_object_and_says_so(path, build):
    text = (REPO / path).read_text()
    assert_same(build(), yaml.safe_load(text))
    assert text.startswith("# Generated: `.venv/bin/python helm/sync_chart.py` writes this file")


def test_batch_subject_files_are_the_configs_and_the_configmaps_indexes():
    """Each subject file states what to_config_values states for its example config, and
    kustomization.yaml maps completion index i to the i-th example subject."""
    kustomization = yaml.safe_load((MANIFESTS / "batch" / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    entries = [entry.split("=") for entry in generator["files"]]
    assert [key for key, _ in entries] == [f"subject-{i}.yaml" for i in range(len(entries))]
    assert [source for _, source in entries] == [path.removeprefix("manifests/batch/")
                                                  for path in examples.EXAMPLES
                                                  if path in SUBJECT_FILES]
    assert len(entries) == examples.indexed_job()["spec"]["completions"]
    for index, (subject_id, class_noun, options) in enumerate(examples.BATCH_SUBJECTS):
        text = (MANIFESTS / "batch" / "subjects" / f"{subject_id}.yaml").read_text()
        assert text.startswith("# Generated: `.venv/bin/python helm/sync_chart.py` writes this file")
        assert f"# Completion index {index}." in text
        config = cfg.TrainConfig(**config_sources.normalize_keys(yaml.safe_load(text), source=subject_id))
        assert config == examples.batch_subject(subject_id, class_noun, options)


# ----------------------------------------------------------------------------------------------
# The writer

def test_commented_yaml_refuses_a_comment_on_a_field_the_object_lacks():
    with pytest.raises(ValueError, match="spec.*backofLimit"):
        commented_yaml({"spec": {"backoffLimit": 3}}, {("spec", "backofLimit"): "typo'd"})


def test_commented_yaml_round_trips_values_yaml_would_misread():
    obj = {"a": ["true", "0.1.0", "1e3", "null", "#x", "x: y", "- z", "", "8Gi", 8, 1.5, None, True],
           "b": [{"name": "n", "value": "v"}, {"k": {}}], "c": {}, "d": []}
    text = commented_yaml(obj, {("b", "n"): "named item", ("b", 1): "indexed item"})
    assert yaml.safe_load(text) == obj
    assert "  # named item\n  - name: n\n" in text and "  # indexed item\n  - k: {}\n" in text


# ----------------------------------------------------------------------------------------------
# The Indexed Job builder

def batch(**cluster) -> IndexedJobSpec:
    return IndexedJobSpec(batch_id="night-42", completions=3, cluster=ClusterSettings(**cluster))


def test_indexed_job_runs_the_plain_jobs_pod_with_the_subject_file():
    indexed = build_indexed_job(batch())
    plain = build_job(JobSpec(train=cfg.TrainConfig(instance_data="s3://x/", class_noun="x",
                                                    output="s3://y/")))
    mine, theirs = indexed["spec"]["template"]["spec"], plain["spec"]["template"]["spec"]
    assert {k: v for k, v in mine.items() if k not in ("containers", "volumes")} == \
           {k: v for k, v in theirs.items() if k not in ("containers", "volumes")}
    assert mine["volumes"] == [*theirs["volumes"],
                               {"name": "subjects", "configMap": {"name": "dreambooth-subjects"}}]
    (container,), (reference,) = mine["containers"], theirs["containers"]
    assert container["args"] == ["train", "--config",
                                 "/etc/dreambooth/subjects/subject-$(SUBJECT_INDEX).yaml",
                                 "--batch-id", "night-42", "--termination-grace-seconds",
                                 str(sizing.PROFILES[sizing.UNDETECTED["full"]].job_grace_seconds)]
    assert container["env"][0]["name"] == "SUBJECT_INDEX" and container["env"][1:] == reference["env"]
    for key in ("image", "resources", "securityContext", "ports", "terminationMessagePolicy"):
        assert container[key] == reference[key], key


def test_indexed_job_fails_only_the_bad_subjects_index_and_retries_per_index():
    spec = build_indexed_job(batch(backoff_limit=2))["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert spec["backoffLimitPerIndex"] == 2 and "backoffLimit" not in spec
    assert spec["podFailurePolicy"] == pod_failure_policy(on_not_retryable="FailIndex")


def test_indexed_job_labels_name_the_batch_and_kueue_admits_it_whole():
    job = build_indexed_job(batch(queue="gpu-batch"))
    labels = job["metadata"]["labels"]
    assert labels[BATCH_LABEL] == "night-42" and SUBJECT_LABEL not in labels
    assert labels[QUEUE_LABEL] == "gpu-batch" and job["spec"]["suspend"] is True


@pytest.mark.parametrize("completions, parallelism", [(0, None), (3, 0), (-1, 2)])
def test_indexed_job_refuses_empty_batches(completions, parallelism):
    with pytest.raises(InvalidInputError, match="completions and parallelism"):
        build_indexed_job(IndexedJobSpec(batch_id="b", completions=completions,
                                         parallelism=parallelism))


# ----------------------------------------------------------------------------------------------
# What stays hand-written in the chart: values.yaml's cluster defaults (with their comments)

def test_chart_defaults_are_the_cluster_settings_defaults():
    values = load_values(CHART / "values.yaml")
    values["job"].update(instanceData="s3://x/", classNoun="x", output="s3://y/")
    from_chart = spec_from_values(values).cluster
    # Only what a Helm release sets itself differs: its namespace and the managed-by label.
    expected = dataclasses.replace(ClusterSettings(), namespace=from_chart.namespace, managed_by="Helm")
    for f in dataclasses.fields(ClusterSettings):
        assert getattr(from_chart, f.name) == getattr(expected, f.name), f"values.yaml: {f.metadata['help']}"
