"""Talk to the Kubernetes API: connect, submit one Job, cancel it, list a batch's Jobs.

    from dreambooth_job.k8s import ClusterSettings, JobSpec, submit, cancel
    from dreambooth_job.config.train_config import TrainConfig

    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output="s3://runs/dog/")
    job = submit(JobSpec(train=train, cluster=ClusterSettings(image="registry/dreambooth-job:0.1.0")))
    print(job.name, job.uid, job.created)       # created=False: the subject's Job already existed
    cancel(job.name)                            # deletes the Job and its pods, never the S3 outputs

Every call goes through `Connection.call`, which retries 429 and 5xx answers and unreachable
servers with exponential backoff, then raises one of the typed errors of `errors.py`. Only the official
`kubernetes` client is used, configured from kubeconfig or from the pod's service account, so
the same code runs against any conformant API server.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.k8s.errors import (
    ApiUnreachableError,
    ClusterConfigError,
    InvalidSpecError,
    JobExistsError,
    JobNotFoundError,
    JobStillRunningError,
    translate,
)
from dreambooth_job.k8s.generate_job import MODE_LABEL, GenerateJobSpec, build_generate_job
from dreambooth_job.k8s.manifest import BATCH_LABEL, SUBJECT_LABEL, JobSpec, build_job

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# ----------------------------------------------------------------------------------------------

@dataclass
class Connection:
    """An API client, the namespace of its context, and the retry policy of every call."""

    api_client: client.ApiClient
    namespace: str = "default"
    attempts: int = 6
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None, context: str | None = None,
                         **retry: Any) -> Connection:
        """kubeconfig when one is given or present (like kubectl), else the pod's service account.

        The namespace is the kubeconfig context's namespace, the pod's own namespace in-cluster,
        or "default".
        """
        configuration = client.Configuration()
        path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        use_kubeconfig = kubeconfig or context or os.environ.get("KUBECONFIG") or os.path.exists(path)
        try:
            if use_kubeconfig:
                config.load_kube_config(config_file=path, context=context,
                                        client_configuration=configuration, persist_config=False)
                contexts, current = config.list_kube_config_contexts(path)
                active = next((c for c in contexts if c["name"] == context), current) if context else current
                namespace = (active or {}).get("context", {}).get("namespace") or "default"
            else:
                config.load_incluster_config(client_configuration=configuration)
                namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except (config.ConfigException, OSError, TypeError, ValueError) as exc:
            where = f"kubeconfig {path}" if use_kubeconfig else "in-cluster service account"
            raise ClusterConfigError(f"cannot load Kubernetes configuration from {where}: {exc}") from None
        # Retries are Connection.call's (backoff, jitter, Retry-After), not urllib3's own.
        configuration.retries = 0
        return cls(client.ApiClient(configuration), namespace=namespace, **retry)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)`, retried on 429/5xx and connection failures with backoff.

        A create whose answer was lost is retried too: the retry then meets the Job it created
        (409), which `submit` reads back, so creation stays idempotent.
        """
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            last = attempt == self.attempts
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                error = translate(exc, what)
                if not isinstance(error, ApiUnreachableError) or last:
                    raise error from None
                wait = _retry_after(exc) or delay
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if last:
                    host = self.api_client.configuration.host
                    reason = str(getattr(exc, "reason", None) or exc)[:200]
                    raise ApiUnreachableError(
                        f"API server {host} unreachable after {attempt} attempts ({what}): "
                        f"{reason}") from None
                wait = delay
            # Jitter keeps the many clients of a batch from retrying in lockstep.
            self.sleep(random.uniform(wait / 2, wait))
            delay = min(delay * 2, self.max_backoff_seconds)
        raise AssertionError("unreachable")


def _retry_after(exc: ApiException) -> float | None:
    value = (exc.headers or {}).get("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None


_default: Connection | None = None


def connect(connection: Connection | None = None) -> Connection:
    """`connection`, or one loaded from the environment once per process."""
    global _default
    if connection is not None:
        return connection
    if _default is None:
        _default = Connection.from_environment()
    return _default


# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SubmittedJob:
    name: str
    namespace: str
    uid: str | None
    created: bool
    """False when the subject's Job already existed and was reported instead of created."""
    replaced: bool = False


def render(spec: JobSpec | GenerateJobSpec, namespace: str | None) -> dict[str, Any]:
    """The Job manifest for `spec` (a training or a generate Job) in `namespace` (None: left to
    `kubectl apply`'s context); InvalidSpecError when the spec is incomplete or invalid."""
    try:
        if isinstance(spec, GenerateJobSpec):
            manifest = build_generate_job(spec)
        else:
            spec.train.validate(require_inputs=True)
            manifest = build_job(spec)
    except InvalidInputError as exc:
        raise InvalidSpecError(exc.message) from None
    if namespace:
        manifest["metadata"]["namespace"] = namespace
    return manifest


def submit(spec: JobSpec | GenerateJobSpec, *, replace: bool = False, connection: Connection | None = None,
           delete_timeout_seconds: float = 300.0) -> SubmittedJob:
    """Create the subject's Job (or the generate Job), or report the one that exists.

    The name is a function of the subject (and batch) id, so a second submission finds the first
    Job. With `replace=True` a finished (succeeded or failed) Job is deleted and created anew; a
    Job still queued or running is never replaced: cancel it first.
    """
    conn = connect(connection)
    namespace = spec.cluster.namespace or conn.namespace
    manifest = render(spec, namespace)
    name = manifest["metadata"]["name"]
    what = f"job {namespace}/{name}"
    try:
        return _create(conn, namespace, manifest, what)
    except JobExistsError:
        pass
    existing = conn.call(what, conn.batch.read_namespaced_job, name, namespace)
    _check_same_subject(existing, manifest, what)
    if not replace:
        return SubmittedJob(name, namespace, existing.metadata.uid, created=False)
    if not is_finished(existing):
        raise JobStillRunningError(f"{what} is still queued or running; cancel it before replacing it",
                                   409)
    cancel(name, namespace, connection=conn)
    _wait_until_gone(conn, name, namespace, delete_timeout_seconds)
    return dataclasses.replace(_create(conn, namespace, manifest, what), replaced=True)


def cancel(name: str, namespace: str | None = None, *, connection: Connection | None = None) -> None:
    """Delete the Job and, before it disappears, its pods (foreground). S3 outputs stay."""
    conn = connect(connection)
    namespace = namespace or conn.namespace
    conn.call(f"job {namespace}/{name}", conn.batch.delete_namespaced_job, name, namespace,
              propagation_policy="Foreground")


def read_job(name: str, namespace: str | None = None, *,
             connection: Connection | None = None) -> client.V1Job:
    conn = connect(connection)
    namespace = namespace or conn.namespace
    return conn.call(f"job {namespace}/{name}", conn.batch.read_namespaced_job, name, namespace)


def jobs_by_name(selector: dict[str, str], namespace: str | None = None, *,
                 connection: Connection | None = None) -> dict[str, client.V1Job]:
    """Jobs carrying every label in `selector`, by name, in the server's order.

    The labels are checked again here, not only by the server: a list must never return a
    Job of another batch, and the check costs nothing.
    """
    conn = connect(connection)
    namespace = namespace or conn.namespace
    text = ",".join(f"{k}={v}" for k, v in selector.items())
    listed: list[client.V1Job] = conn.call(f"jobs in {namespace} ({text})", conn.batch.list_namespaced_job,
                                           namespace, label_selector=text).items
    jobs: dict[str, client.V1Job] = {}
    for job in listed:
        # A listed Job always has a name; the client's models type metadata and name optional.
        if job.metadata and job.metadata.name and all(
                (job.metadata.labels or {}).get(k) == v for k, v in selector.items()):
            jobs[job.metadata.name] = job
    return jobs


def is_finished(job: client.V1Job) -> bool:
    conditions = (job.status and job.status.conditions) or []
    return any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)


# ----------------------------------------------------------------------------------------------

def _create(conn: Connection, namespace: str, manifest: dict[str, Any], what: str) -> SubmittedJob:
    try:
        created = conn.call(what, conn.batch.create_namespaced_job, namespace, manifest)
    except JobExistsError:
        raise
    except Exception as exc:
        # The client (v35+) validates bodies with pydantic before sending them; older clients
        # have no pydantic to import its ValidationError from.
        errors = getattr(exc, "errors", None)
        if type(exc).__name__ != "ValidationError" or not callable(errors):
            raise
        first = errors()[0]
        where = ".".join(str(part) for part in first["loc"][2:])
        raise InvalidSpecError(f"invalid manifest for {what}: {where}: {first['msg']}") from None
    return SubmittedJob(manifest["metadata"]["name"], namespace, created.metadata.uid, created=True)


def _check_same_subject(existing: client.V1Job, manifest: dict[str, Any], what: str) -> None:
    # Names are hashed ids, so a mismatch means a foreign Job holds the name: never adopt it.
    wanted = manifest["metadata"].get("labels", {})
    have = (existing.metadata and existing.metadata.labels) or {}
    for key in (SUBJECT_LABEL, BATCH_LABEL, MODE_LABEL):
        if wanted.get(key) != have.get(key):
            raise JobExistsError(
                f"{what} exists but belongs to {key}={have.get(key)!r}, not {wanted.get(key)!r}", 409)


def _wait_until_gone(conn: Connection, name: str, namespace: str, timeout: float) -> None:
    # Foreground deletion keeps the Job until its pods are gone; a create before that is a 409.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn.call(f"job {namespace}/{name}", conn.batch.read_namespaced_job, name, namespace)
        except JobNotFoundError:
            return
        conn.sleep(1.0)
    raise JobExistsError(f"job {namespace}/{name} still deleting after {timeout:.0f} s", 409)
