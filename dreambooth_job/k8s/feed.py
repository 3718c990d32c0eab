"""Submit a whole batch: skip what is done or running, then create the rest, all at once or N at a time.

    from dreambooth_job.k8s import ClusterSettings, load_batch, submit_batch
    batch = load_batch("night-42.yaml")
    outcome = submit_batch(batch, ClusterSettings(image="registry/dreambooth-job:0.1.0"), max_parallel=8)

State lives in the cluster (the batch's Jobs, found by label) and in S3 (each output's completion
marker), never in this process: a feeder that is stopped and started again, or run twice by
mistake, skips what exists and continues. With a Kueue queue every Job is created at once,
suspended, and Kueue decides when each runs; `max_parallel` is for clusters without Kueue.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s.batch import Batch
from dreambooth_job.k8s.client import (
    Connection,
    JobStillRunningError,
    connect,
    is_finished,
    jobs_by_name,
    render,
    submit,
)
from dreambooth_job.k8s.cluster_settings import ClusterSettings
from dreambooth_job.k8s.manifest import BATCH_LABEL, JobSpec, job_name, label_value, subject_of
from dreambooth_job.outputs.result import is_complete


@dataclass
class BatchOutcome:
    """Subject ids by what `submit_batch` did with them."""

    created: list[str] = field(default_factory=list)
    skipped_succeeded: list[str] = field(default_factory=list)
    skipped_active: list[str] = field(default_factory=list)


def specs_of(batch: Batch, cluster: ClusterSettings) -> list[JobSpec]:
    return [JobSpec(train=config, cluster=cluster) for config in batch.subjects]


def render_batch(batch: Batch, cluster: ClusterSettings, namespace: str | None = None) -> list[dict]:
    """Every Job of the batch as a manifest; raises on the first invalid one."""
    return [render(spec, namespace or cluster.namespace) for spec in specs_of(batch, cluster)]


def submit_batch(batch: Batch, cluster: ClusterSettings, *, max_parallel: int | None = None,
                 connection: Connection | None = None, poll_seconds: float = 30.0,
                 log: Callable[[str], None] = lambda line: None,
                 sleep: Callable[[float], None] = time.sleep) -> BatchOutcome:
    """Create the batch's missing Jobs; with `max_parallel` (and no queue), wait and feed.

    A subject is skipped when its output holds a completed run, or when its Job exists and has
    not finished. A finished Job whose output is not complete (it failed) is replaced.
    """
    conn = connect(connection)
    namespace = cluster.namespace or conn.namespace
    cluster = dataclasses.replace(cluster, namespace=namespace)
    specs = specs_of(batch, cluster)
    for spec in specs:  # every manifest renders before the first one is created
        render(spec, namespace)

    outcome = BatchOutcome()
    selector = {BATCH_LABEL: label_value(batch.batch_id)}
    jobs = jobs_by_name(selector, namespace, connection=conn)
    todo: list[JobSpec] = []
    for spec in specs:
        subject = subject_of(spec.train)
        name = _name(spec.train)
        output = spec.train.output  # set: a batch row is validated with its inputs required
        if output and is_complete(output):  # not its result.json: the tenant may rewrite it
            outcome.skipped_succeeded.append(subject)
            log(f"{subject}: skipped, output already complete")
        elif name in jobs and not is_finished(jobs[name]):
            outcome.skipped_active.append(subject)
            log(f"{subject}: skipped, job {name} is queued or running")
        else:
            todo.append(spec)

    throttle = max_parallel if max_parallel and not cluster.queue else None
    while todo:
        free = len(todo)
        if throttle:
            active = [j for j in jobs_by_name(selector, namespace, connection=conn).values()
                      if not is_finished(j)]
            free = max(0, throttle - len(active))
        for spec in todo[:free]:
            subject = subject_of(spec.train)
            try:
                job = submit(spec, replace=True, connection=conn)
            except JobStillRunningError:  # another feeder of the same batch got there first
                outcome.skipped_active.append(subject)
                log(f"{subject}: skipped, its job was created meanwhile")
                continue
            outcome.created.append(subject)
            log(f"{subject}: {'replaced' if job.replaced else 'created'} job {job.name}")
        if todo[free:] and free:
            log(f"{len(todo) - free} subject(s) wait for a free slot (at most {throttle} at once)")
        todo = todo[free:]
        if todo:
            sleep(poll_seconds)
    return outcome


def _name(config: TrainConfig) -> str:
    return job_name(subject_of(config), config.batch_id)
