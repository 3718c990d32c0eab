"""Helpers of the Kubernetes tests: the emulated API server and a stand-in for the Job controller.

No kube-apiserver can run here. kmock serves the Jobs and Pods APIs over real HTTP with proper
Status bodies, so the code under test uses the official client exactly as against a cluster.
What kmock does not do (label selectors, uids, the Job controller) is listed in
docs/developer-guide.md ("How the Kubernetes side is tested"); tests play the Job controller by
writing Job status through the API.
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


def set_job_status(connection, name: str, status: dict, namespace: str | None = None) -> None:
    """Play the Job controller: write `status` (camelCase) onto the Job through the API."""
    connection.batch.patch_namespaced_job_status(name, namespace or connection.namespace,
                                                 {"status": status})


def complete(connection, name: str, namespace: str | None = None) -> None:
    set_job_status(connection, name, {
        "startTime": "2026-11-25T01:00:00Z", "completionTime": "2026-11-25T01:20:00Z",
        "succeeded": 1, "conditions": [
            {"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-25T01:20:00Z"}]},
        namespace)


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
