"""Prometheus metrics of one job: scraped from `/metrics` while it runs, pushed to a Pushgateway so
that its outcome outlives the pod. Every metric is listed, one line each, in docs/metrics.md.

How the job uses it (the whole contract)::

    job = Job(config, observer)                # resolves job_id and subject_id first
    metrics = PrometheusObserver(job.config)   # those ids label every metric and the push group
    job.observer = ObserverGroup(metrics, job.observer)
    with metrics:                              # start() before the download, close() at the end
        return job.run()                       # events, ending with finished(exit_code=...)

- `start()` serves /metrics and /healthz on `config.metrics_port` (0: no server) on 0.0.0.0, and
  with `config.pushgateway` pushes once now and again at every `phase_started`, in the background.
- `finished(exit_code=...)` must be called once on every outcome (success, failure, SIGTERM): it
  sets the exit code, the failed gauge, the success timestamp and the done/failed phase, then pushes
  synchronously (at most `push_timeout`, 5 s, or twice that behind an in-flight push).
- `close()` stops the server after a final push if `finished` never came; idempotent, and also
  run at interpreter exit.

`PrometheusObserver(config, job_id=..., subject_id=...)` takes the ids explicitly too; without
them or the config's, the subject id is `config.resolved_subject_id` and the job id the subject
id. No method raises: metrics must never fail the job.

Pushgateway groups (one per subject, replaced by every push, kept until deleted with
``delete_batch_groups``) are described in exposition.py.

    >>> from dreambooth_job.config.train_config import TrainConfig
    >>> from dreambooth_job.metrics import PrometheusObserver
    >>> obs = PrometheusObserver(TrainConfig(metrics_port=0, job_id="j1", subject_id="dog"))
    >>> obs.phase_started("train")
    >>> b'dreambooth_phase{batch_id="",job_id="j1",phase="train",subject_id="dog"} 1.0' in obs.exposition()
    True

The package, like prometheus/client_python, keeps definitions apart from exposition:
`definitions.py` the registry and its documented metric objects, `observer.py` the events that
update them, `exposition.py` the HTTP server, the Pushgateway pushes and the batch tooling.
"""

from dreambooth_job.metrics.definitions import (
    CLASS_IMAGE_SOURCES,
    DIRECTIONS,
    ID_LABELS,
    LOSS_PARTS,
    JobMetrics,
    MemoryCollector,
    cuda_memory,
    process_memory,
)
from dreambooth_job.metrics.exposition import (
    DEFAULT_PUSH_TIMEOUT,
    PUSH_JOB,
    PUSH_PASSWORD_ENV,
    PUSH_USERNAME_ENV,
    MetricsServer,
    Pusher,
    delete_batch_groups,
    grouping_key,
    push_handler,
    pushed_groups,
)
from dreambooth_job.metrics.observer import BASELINE_PREFIX, PrometheusObserver

__all__ = [
    "BASELINE_PREFIX", "CLASS_IMAGE_SOURCES", "DEFAULT_PUSH_TIMEOUT", "DIRECTIONS", "ID_LABELS",
    "LOSS_PARTS", "PUSH_JOB", "PUSH_PASSWORD_ENV", "PUSH_USERNAME_ENV", "JobMetrics",
    "MemoryCollector", "MetricsServer", "PrometheusObserver", "Pusher", "cuda_memory",
    "delete_batch_groups", "grouping_key", "process_memory", "push_handler", "pushed_groups",
]
