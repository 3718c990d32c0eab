"""Where a subject's Job stands: one small typed answer built from the Job, its pods and result.json.

    from dreambooth_job.k8s import get_status
    status = get_status("db-dog-3f2a1c9e")
    print(status.phase, status.retries, status.failure_reason, status.output)
    if status.result:                     # result.json's fields in use, read once the Job succeeded
        print(status.result.final_loss, status.result.scores)
    print(status.result_error)            # "result.json unreadable: ..." when it could not be used

`describe(job, pods)` is the pure part (plain dicts in, JobStatus out), so the rules below can be
read and tested without a cluster.
"""

from __future__ import annotations

import enum
import json
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from dreambooth_job.exit_codes import ExitCode, JobError
from dreambooth_job.k8s import client as k8s_client
from dreambooth_job.k8s.batch import Batch
from dreambooth_job.k8s.client import Connection, connect
from dreambooth_job.k8s.manifest import BATCH_LABEL, SUBJECT_LABEL, job_name, label_value, subject_of
from dreambooth_job.outputs.result_reader import MalformedResult, RunRecord, read_record, unreadable

JOB_NAME_LABEL = "job-name"  # set on every pod by the Job controller (all supported versions)


class Phase(enum.StrEnum):
    QUEUED = "queued"
    """Suspended: waiting for Kueue (or a person) to admit it."""
    PENDING = "pending"
    """Admitted; no pod running yet (scheduling, pulling the image)."""
    RUNNING = "running"
    RETRYING = "retrying"
    """The last pod failed or was preempted and a replacement is on its way."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_SUBMITTED = "not-submitted"
    """No Job exists (only in batch views; `get_status` raises JobNotFoundError instead)."""

    def __str__(self) -> str:
        return self.value


@dataclass
class JobStatus:
    name: str
    namespace: str
    phase: Phase
    subject_id: str | None = None
    batch_id: str | None = None
    retries: int = 0
    """Failed or preempted attempts that were followed by another attempt."""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure_reason: str | None = None
    """Why it failed, or why the last attempt ended when it is retrying."""
    output: str | None = None
    result: RunRecord | None = field(default=None, repr=False)
    """result.json's fields in use (outputs/result_reader.py), when the Job succeeded and the output holds
    a completed run."""
    result_error: str | None = None
    """"result.json unreadable: <why>" (missing S3 credentials, a malformed file), if it could not
    be read or used."""

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(UTC)
        return max(0.0, (end - self.started_at).total_seconds())

    @property
    def final_loss(self) -> float | None:
        return None if self.result is None else self.result.final_loss

    @property
    def outputs(self) -> dict[str, Any] | None:
        """What the run published (result.json schema 1 or 2): `model`, `lora`, `single_file`."""
        return None if self.result is None else self.result.outputs

    @property
    def weights(self) -> str | None:
        """"full" (a pipeline), "lora" (adapters), "lora+model" (adapters and the merged pipeline)."""
        outputs = self.outputs
        if not outputs:
            return None
        if outputs["lora"]:
            return "lora+model" if outputs["model"] else "lora"
        return "full" if outputs["model"] else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "namespace": self.namespace, "subject_id": self.subject_id,
            "batch_id": self.batch_id, "phase": self.phase.value, "retries": self.retries,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_seconds": self.duration_seconds, "final_loss": self.final_loss,
            "failure_reason": self.failure_reason, "output": self.output,
            "metrics": None if self.result is None else self.result.metrics,
            "result_error": self.result_error,
            "weights": self.weights, "outputs": self.outputs,
        }


def get_status(name: str, namespace: str | None = None, *, read_result: bool = True,
               connection: Connection | None = None) -> JobStatus:
    """The status of Job `name`; JobNotFoundError when there is none."""
    conn = connect(connection)
    namespace = namespace or conn.namespace
    job = k8s_client.read_job(name, namespace, connection=conn)
    pods = conn.call(f"pods of job {namespace}/{name}", conn.core.list_namespaced_pod, namespace,
                     label_selector=f"{JOB_NAME_LABEL}={name}").items
    to_dict = conn.api_client.sanitize_for_serialization
    status = describe(to_dict(job), [to_dict(p) for p in pods])
    if read_result:
        attach_result(status)
    return status


def batch_status(batch: Batch, namespace: str | None = None, *, read_result: bool = True,
                 connection: Connection | None = None) -> list[JobStatus]:
    """One status per subject of `batch`, in file order, from two list calls (Jobs, pods).

    A subject without a Job (never submitted, or deleted after it finished) is "succeeded" when
    its output holds a completed run, else "not-submitted".
    """
    conn = connect(connection)
    namespace = namespace or conn.namespace
    selector = {BATCH_LABEL: label_value(batch.batch_id)}
    jobs = k8s_client.jobs_by_name(selector, namespace, connection=conn)
    pods = conn.call(f"pods of batch {batch.batch_id}", conn.core.list_namespaced_pod, namespace,
                     label_selector=f"{BATCH_LABEL}={selector[BATCH_LABEL]}").items
    to_dict = conn.api_client.sanitize_for_serialization
    pods = [to_dict(p) for p in pods]
    statuses = []
    for config in batch.subjects:
        name = job_name(subject_of(config), config.batch_id)
        if name in jobs:
            status = describe(to_dict(jobs[name]), pods)
            status.output = status.output or config.output
            if read_result:
                attach_result(status)
        else:
            status = JobStatus(name=name, namespace=namespace, phase=Phase.NOT_SUBMITTED,
                               subject_id=config.subject_id, batch_id=config.batch_id,
                               output=config.output)
            if read_result and load_result(status):
                status.phase = Phase.SUCCEEDED
        statuses.append(status)
    return statuses


def attach_result(status: JobStatus) -> None:
    """Read result.json into `status` when the Job succeeded; errors are kept, not raised."""
    if status.phase is Phase.SUCCEEDED:
        load_result(status)


def load_result(status: JobStatus) -> bool:
    """Read the completed run's result.json under `status.output` into `status`, if there is one;
    True when the output holds a completed run. A file that cannot be read or used (a tenant may
    have rewritten it) is `result_error`, never raised: the other subjects of a batch are still
    shown."""
    if not status.output:
        return False
    try:
        status.result = read_record(status.output)
    except MalformedResult as exc:  # complete (the marker is there), its record unusable
        status.result_error = unreadable(exc)
        return True
    except (JobError, OSError) as exc:
        status.result_error = unreadable(exc)
        return False
    return status.result is not None


# ----------------------------------------------------------------------------------------------

def describe(job: dict[str, Any], pods: list[dict[str, Any]]) -> JobStatus:
    """JobStatus from the Job and its pods as API dicts (camelCase keys)."""
    meta, st = job.get("metadata", {}), job.get("status") or {}
    labels = meta.get("labels") or {}
    name = meta.get("name", "")
    pods = sorted((p for p in pods if (p["metadata"].get("labels") or {}).get(JOB_NAME_LABEL) == name),
                  key=lambda p: p["metadata"].get("creationTimestamp") or "")
    conditions = {c["type"]: c for c in st.get("conditions") or [] if c.get("status") == "True"}
    failed_pods = [p for p in pods if _pod_phase(p) == "Failed"]
    # A pod being deleted (evicted or preempted: checkpointing on SIGTERM) is no longer the Job's
    # active one; the Job controller replaces it once it has ended.
    leaving = [p for p in pods if p["metadata"].get("deletionTimestamp")
               and _pod_phase(p) not in ("Failed", "Succeeded")]
    phase = _phase(job, conditions, pods, failed_pods, leaving)

    failures = max(st.get("failed") or 0, len(failed_pods))
    if phase is Phase.FAILED:
        failures -= 1 if failures else 0
    finished = (st.get("completionTime") or
                (conditions.get("Failed") or {}).get("lastTransitionTime"))
    return JobStatus(
        name=name, namespace=meta.get("namespace", ""), phase=phase,
        subject_id=labels.get(SUBJECT_LABEL), batch_id=labels.get(BATCH_LABEL),
        retries=failures, started_at=_time(st.get("startTime")), finished_at=_time(finished),
        failure_reason=_failure_reason(phase, conditions, failed_pods, leaving), output=output_of(job))


def _pod_phase(pod: dict[str, Any]) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _phase(job: dict[str, Any], conditions: dict[str, Any], pods: list[dict[str, Any]],
           failed_pods: list[dict[str, Any]], leaving: list[dict[str, Any]]) -> Phase:
    st = job.get("status") or {}
    if "Complete" in conditions or "SuccessCriteriaMet" in conditions:
        return Phase.SUCCEEDED
    if "Failed" in conditions or "FailureTarget" in conditions:
        return Phase.FAILED
    if (job.get("spec") or {}).get("suspend"):
        return Phase.QUEUED
    # status.ready lags behind a deletion until the Job controller's next sync.
    if ((st.get("ready") or 0) > 0 and not leaving) or any(
            _pod_phase(p) == "Running" for p in pods if p not in leaving):
        return Phase.RUNNING
    # Once a disrupted pod has ended it is deleted, and the podFailurePolicy keeps it off
    # status.failed: until the replacement starts, only startTime without an active pod tells
    # that an attempt ended.
    succeeded = st.get("succeeded") or any(_pod_phase(p) == "Succeeded" for p in pods)
    between_attempts = bool(leaving or st.get("terminating")
                            or (st.get("startTime") and not st.get("active") and not succeeded))
    if failed_pods or (st.get("failed") or 0) > 0 or between_attempts:
        return Phase.RETRYING
    return Phase.PENDING


def _failure_reason(phase: Phase, conditions: dict[str, Any], failed_pods: list[dict[str, Any]],
                    leaving: list[dict[str, Any]]) -> str | None:
    if phase is Phase.FAILED:
        condition = conditions.get("Failed") or conditions.get("FailureTarget") or {}
        # The Job controller's message only restates the pod's exit ("Container train for pod ...
        # failed with exit code 2 matching FailJob rule at index 0"); the pod's own line says
        # why, so it follows the condition's reason, and the message only stands in without one.
        explained = pod_failure(failed_pods[-1]) if failed_pods else condition.get("message")
        return ": ".join(x for x in (condition.get("reason"), explained) if x) or None
    if failed_pods:
        return pod_failure(failed_pods[-1])
    disrupted = [p for p in leaving if disruption(p)]
    return pod_failure(disrupted[-1]) if disrupted else None


def pod_failure(pod: dict[str, Any]) -> str:
    """One line: eviction or preemption, or the exit code with its meaning and the container's
    termination message, as a kubelet reports them."""
    status = pod.get("status") or {}
    disrupted = disruption(pod)
    if status.get("reason") == "Evicted":  # e.g. over its ephemeral-storage limit
        return f"evicted: {(status.get('message') or 'by the kubelet').strip()}"
    if disrupted:
        return f"preempted ({disrupted.get('reason') or 'disruption'})"
    for container in status.get("containerStatuses") or []:
        state = (container.get("state") or {}).get("terminated") or \
            (container.get("lastState") or {}).get("terminated")
        if not state:
            continue
        code = state.get("exitCode")
        text = f"exit {code}"
        if code in ExitCode._value2member_map_:
            text += f" ({ExitCode(code).description})"
        elif isinstance(code, int) and 128 < code < 128 + 65:
            text += f" (killed by {_signal_name(code - 128)})"
        if state.get("reason") and state["reason"] not in ("Error", "Completed"):
            text += f" [{state['reason']}]"
        message = termination_message_line(state.get("message") or "")
        return text + (f": {message}" if message else "")
    return ": ".join(x for x in (status.get("reason"), status.get("message")) if x) or "pod failed"


def disruption(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's DisruptionTarget condition (preemption, eviction, node drain) when it is True."""
    return next((c for c in (pod.get("status") or {}).get("conditions") or []
                 if c.get("type") == "DisruptionTarget" and c.get("status") == "True"), None)


def termination_message_line(message: str) -> str | None:
    """The line that says why, from a container's termination message.

    With terminationMessagePolicy FallbackToLogsOnError the kubelet reports the job's termination
    log (one line, termination.py) or, when the job died before writing it (OOM kill, SIGKILL, a
    crash), the last 80 lines of its log, cut to 2048 bytes: then the last line, and of a JSON log
    line its "message".
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1]
    try:
        entry = json.loads(last)
    except ValueError:
        return last[:300]
    if isinstance(entry, dict) and entry.get("message"):
        return f"last log line: {str(entry['message'])[:300]}"
    return last[:300]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def output_of(job: dict[str, Any]) -> str | None:
    """The --output of the training container: its flag, or the DREAMBOOTH_OUTPUT variable."""
    containers = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    for container in containers:
        args = [*(container.get("command") or []), *(container.get("args") or [])]
        for i, arg in enumerate(args):
            if arg == "--output" and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith("--output="):
                return arg.split("=", 1)[1]
        for env in container.get("env") or []:
            if env.get("name") == "DREAMBOOTH_OUTPUT" and env.get("value"):
                return env["value"]
    return None


def format_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)
