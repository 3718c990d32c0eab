"""Helpers of the Kubernetes tests: stand-ins for the Job controller and the kubelet, which write
status through a real kube-apiserver (conftest.py) as those would, and the emulated API server
(kmock) that test_injected_errors.py alone uses for answers a real server does not give on demand.

The apiserver validates status writes as it does the Job controller's: a Complete Job carries
SuccessCriteriaMet, a Failed one FailureTarget, a finished one a startTime and no active pods, and
a startTime once set never changes (pkg/apis/batch/validation, JobManagedBy's strict rules).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO.parent / "shared" / "dreambooth-dataset"


class EmulatedApiServer:
    """kmock's Kubernetes emulator on 127.0.0.1, served from its own event loop thread."""

    def __init__(self) -> None:
        import kmock

        self._kmock = kmock
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emulator, self.server = self._run(self._start())
        self.url = str(self.server.url).rstrip("/")

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _start(self):
        kmock = self._kmock
        emulator = kmock.KubernetesEmulator()
        emulator.resources["batch/v1/jobs"] = kmock.ResourceInfo(
            kind="Job", singular="job", namespaced=True, subresources={"status"})
        emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", singular="pod", namespaced=True,
                                                             subresources={"status"})
        await emulator.__aenter__()
        server = kmock.Server(emulator)
        await server.__aenter__()
        return emulator, server

    def requests(self, method: str | None = None, path_contains: str = "") -> list:
        return [r for r in list(self.emulator)
                if (method is None or str(r.method).upper().endswith(method.upper()))
                and path_contains in r.url.path]

    def stop(self) -> None:
        async def stop():
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


T_START, T_END = "2026-11-25T01:00:00Z", "2026-11-25T01:20:00Z"


def set_job_status(connection, name: str, status: dict, namespace: str | None = None) -> None:
    """Play the Job controller: merge `status` (camelCase) into the Job's status subresource."""
    connection.batch.patch_namespaced_job_status(name, namespace or connection.namespace,
                                                 {"status": status})


def start(connection, name: str, namespace: str | None = None) -> None:
    """The Job controller's status of a Job whose one pod runs and is ready."""
    set_job_status(connection, name, {"active": 1, "ready": 1, "startTime": T_START}, namespace)


def complete(connection, name: str, namespace: str | None = None) -> None:
    """The Job controller's status of a Job whose pod succeeded: SuccessCriteriaMet, then Complete."""
    conditions = [{"type": kind, "status": "True", "reason": "CompletionsReached",
                   "message": "Reached expected number of succeeded pods", "lastTransitionTime": T_END}
                  for kind in ("SuccessCriteriaMet", "Complete")]
    set_job_status(connection, name, {
        "startTime": T_START, "completionTime": T_END, "active": 0, "ready": 0, "succeeded": 1,
        "conditions": conditions}, namespace)


def fail(connection, name: str, failed: int = 4, reason: str = "BackoffLimitExceeded",
         message: str = "Job has reached the specified backoff limit", namespace: str | None = None) -> None:
    """The Job controller's status of a failed Job: FailureTarget, then Failed."""
    conditions = [{"type": kind, "status": "True", "reason": reason, "message": message,
                   "lastTransitionTime": T_END} for kind in ("FailureTarget", "Failed")]
    set_job_status(connection, name, {
        "startTime": T_START, "active": 0, "ready": 0, "failed": failed, "conditions": conditions},
        namespace)


def create_job_pod(connection, job_name: str, pod_name: str, status: dict | None = None,
                   namespace: str | None = None) -> dict:
    """Play the Job controller, then the kubelet: create a pod from the Job's template (its labels,
    owned by the Job), then write `status` (camelCase) through the pod's status subresource."""
    namespace = namespace or connection.namespace
    to_dict = connection.api_client.sanitize_for_serialization
    job = to_dict(connection.batch.read_namespaced_job(job_name, namespace))
    template = job["spec"]["template"]
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": job["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    metadata = {"name": pod_name, "labels": template["metadata"]["labels"], "ownerReferences": [owner]}
    connection.core.create_namespaced_pod(namespace, {"metadata": metadata, "spec": template["spec"]})
    if status:
        connection.core.patch_namespaced_pod_status(pod_name, namespace, {"status": status})
    return to_dict(connection.core.read_namespaced_pod(pod_name, namespace))


def dataset_subjects() -> list[tuple[str, str]]:
    """(subject, class noun) of the 30 DreamBooth subjects, from prompts_and_classes.txt."""
    lines = (DATASET / "prompts_and_classes.txt").read_text().splitlines()
    start = lines.index("subject_name,class") + 1
    rows = []
    for line in lines[start:]:
        if not line.strip():
            break
        subject, noun = line.split(",", 1)
        rows.append((subject.strip(), noun.strip()))
    return rows


def write_completed_result(output: Path | str, subject: str, *, dino: float | None = None,
                           loss: float = 0.1, grid: bytes | None = None, lora: bool = False) -> None:
    """What a finished job leaves in its output: samples, result.json, then the marker."""
    from dreambooth_job.outputs import result as result_module
    from dreambooth_job.storage import places as storage

    output = str(output)
    samples = []
    if grid is not None:
        samples = [storage.join(output, "samples/step-000400.png"),
                   storage.join(output, "samples/step-000800.png")]
        storage.write_bytes(samples[0], b"not the final grid")
        storage.write_bytes(samples[1], grid)
    result = result_module.RunResult(
        job_id=subject, subject_id=subject, config={}, config_fingerprint="",
        identifier=result_module.Identifier(token="sks", chosen="auto"),
        prompts=result_module.Prompts(instance="a photo of sks dog", class_prompt="a photo of dog"),
        base_model=result_module.BaseModelInfo(source="tiny"),
        training=result_module.Training(steps_done=800, max_train_steps=800, final_loss=loss),
        durations_seconds={"train": 600.0},
        outputs=result_module.Outputs(
            model=None if lora else storage.join(output, "model"), samples=samples,
            lora=[storage.join(output, "lora/pytorch_lora_weights.safetensors"),
                  storage.join(output, f"lora/{subject}.safetensors")] if lora else None,
            result=storage.join(output, "result.json")),
        metrics=None if dino is None else {"dino": dino, "clip_i": 0.8, "clip_t": 0.3})
    result.succeeded()
    result.write(output)
    result_module.mark_complete(output)
