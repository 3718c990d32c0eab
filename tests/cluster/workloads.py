"""What the cluster scenarios train and how they wait: a tiny model and subject photos in the real
S3 server, the cluster settings of a Job whose pods the stand-in kubelet runs, the options that make
a run take seconds on CPU, and polling with a deadline."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

from dreambooth_job.k8s import ClusterSettings

S3_SECRET = "dreambooth-job-s3"
IMAGE = "dreambooth-job:test"
# A run of seconds on one CPU thread: the tiny model at 32 px, two steps, no class images.
QUICK_OPTIONS: dict[str, Any] = {
    "resolution": 32, "max_train_steps": 2, "prior_preservation": False,
    "num_validation_images": 1, "sample_steps": 2, "validation_prompts": ["a {identifier} {class_noun}"],
}
# The tiny model's pods need no GPU-sized memory; Kueue and the scheduler still count the GPU.
SMALL_POD_RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something truthy (returned); fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # polling interval, not synchronization


def create_s3_secret(api: client.ApiClient, namespace: str) -> str:
    """The Secret the Jobs read their S3 keys from, with the keys of the test's S3 server."""
    data = {key: base64.b64encode(os.environ[key].encode()).decode()
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    client.CoreV1Api(api).create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=S3_SECRET), data=data))
    return S3_SECRET


def cluster_settings(namespace: str, **overrides: Any) -> ClusterSettings:
    """Settings of Jobs run by the stand-in kubelet against the test's S3 server."""
    settings: dict[str, Any] = {
        "namespace": namespace, "image": IMAGE, "image_pull_policy": "Never", "gpus": 1,
        "sizing": "sd-lora", "resources": SMALL_POD_RESOURCES,
        "s3_credentials_secret": S3_SECRET, "s3_endpoint_url": os.environ["AWS_ENDPOINT_URL"],
        "s3_region": os.environ.get("AWS_REGION") or "us-east-1",
    }
    return ClusterSettings(**{**settings, **overrides})


def upload_subject(bucket: str, subject: str, photo_dir: Path) -> str:
    """The photos of `photo_dir` at s3://bucket/photos/<subject>/; returns that prefix."""
    from dreambooth_job.storage import places

    uri = f"s3://{bucket}/photos/{subject}/"
    places.upload_dir(photo_dir, uri)
    return uri


def job_condition(job: client.V1Job, kind: str) -> client.V1JobCondition | None:
    """The Job's condition of type `kind` when its status is True."""
    for condition in (job.status.conditions or []) if job.status else []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None
