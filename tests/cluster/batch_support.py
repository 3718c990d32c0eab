"""What the batch and RBAC scenarios share: the `dreambooth-job` CLI run as an operator runs it (a
kubeconfig, a subjects file, a --cluster-config file), subjects' photos in S3, and a record of how
many of a batch's pods ran at once, taken from the API server's own order of events."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner, Result
from kubernetes import client, watch
from workloads import QUICK_OPTIONS, upload_subject

from dreambooth_job.cli import main
from dreambooth_job.k8s import ClusterSettings
from dreambooth_job.storage import s3_client

CLASS_NOUNS = ("dog", "cat", "teapot", "vase", "backpack", "robot")


def cli(*args: Any, kubeconfig: Path) -> Result:
    """`dreambooth-job ARGS` in this process (cli.main, so through the one error boundary), with
    KUBECONFIG pointing at `kubeconfig`; stdout and stderr apart."""
    return CliRunner().invoke(main, [str(a) for a in args], env={"KUBECONFIG": str(kubeconfig)},
                              catch_exceptions=False)


def ok(result: Result) -> list[str]:
    """The lines a command that had to succeed printed."""
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.stdout}{result.stderr}"
    return result.stdout.splitlines()


def ok_json(result: Result) -> Any:
    """What a command that had to succeed printed with `-o json`."""
    ok(result)
    return json.loads(result.stdout)


def write_cluster_config(path: Path, settings: ClusterSettings) -> Path:
    """`settings` as the --cluster-config file an operator keeps: what differs from the defaults."""
    defaults = ClusterSettings()
    values = {field.name: _plain(getattr(settings, field.name))
              for field in dataclasses.fields(ClusterSettings)
              if getattr(settings, field.name) != getattr(defaults, field.name)}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def write_subjects_file(path: Path, rows: Iterable[Mapping[str, Any]], bucket: str,
                        base_model: str) -> Path:
    """A subjects file as the operator guide writes one: the quick options and the tiny model as
    defaults, each subject's output under s3://<bucket>/runs/<batch>/<id>/."""
    defaults = {"output": f"s3://{bucket}/runs/{path.stem}/{{id}}/", "base_model": base_model,
                **{k: _plain(v) for k, v in QUICK_OPTIONS.items()}}
    path.write_text(yaml.safe_dump({"defaults": defaults, "subjects": list(rows)}, sort_keys=False))
    return path


def write_train_config(path: Path, base_model: str) -> Path:
    """A `--config` file of train options: the quick options and the tiny model."""
    values = {"base_model": base_model, **{k: _plain(v) for k, v in QUICK_OPTIONS.items()}}
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def subject_rows(count: int, bucket: str) -> list[dict[str, str]]:
    return [{"id": f"subject-{i:02d}", "instance_data": f"s3://{bucket}/photos/subject-{i:02d}/",
             "class_noun": CLASS_NOUNS[i % len(CLASS_NOUNS)]} for i in range(count)]


def replace_photos(bucket: str, subject: str, photo_dir: Path) -> str:
    """s3://bucket/photos/<subject>/ holding exactly the photos of `photo_dir`."""
    s3 = s3_client.s3_client()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"photos/{subject}/").get("Contents", [])
    for item in listed:
        s3.delete_object(Bucket=bucket, Key=item["Key"])
    return upload_subject(bucket, subject, photo_dir)


class RunningPods:
    """The pods of `selector` in phase Running, followed through one watch of the API server.

    A watch delivers every change of every pod in the order etcd committed them, so the largest
    Running set seen is exact, not a sample: no overlap can fall between two polls. (A pod's
    process starts before the stand-in kubelet reports it Running and ends before it reports it
    finished; a queued Job's pod is only created after the Job it waits for has finished, which the
    Job controller sees after that pod's final status, so the order carries over to the processes.)
    """

    def __init__(self, api: client.ApiClient, namespace: str, selector: str):
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector = namespace, selector
        self.running: set[str] = set()
        self.peak = 0
        self.ever_ran: set[str] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="running-pods", daemon=True)

    def __enter__(self) -> RunningPods:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _follow(self) -> None:
        version = None
        try:
            while not self._stop.is_set():
                # Short server-side timeouts so that __exit__ is seen; the next watch resumes
                # from the last version seen, missing nothing.
                stream = watch.Watch()
                for event in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                           label_selector=self.selector, timeout_seconds=2,
                                           resource_version=version):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    self._record(event["type"], pod)
        except BaseException as exc:  # noqa: BLE001 - reported by the test through .error
            self.error = exc

    def _record(self, kind: str, pod: client.V1Pod) -> None:
        name = pod.metadata.name
        if kind != "DELETED" and pod.status and pod.status.phase == "Running":
            self.running.add(name)
            self.ever_ran.add(name)
        else:
            self.running.discard(name)
        self.peak = max(self.peak, len(self.running))
