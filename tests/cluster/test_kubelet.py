"""The stand-in kubelet (kubelet.py) against the real apiserver, with small shell commands as
containers: exit codes, termination messages, env resolution, graceful deletion, eviction.

Its pods are bound (spec.nodeName) to a Node of this module's own, which no other stand-in or
kwok manages, so nothing but this module's kubelet runs them, and no scheduler is needed."""

from __future__ import annotations

import base64
import os
import sys
import time
import uuid
from pathlib import Path

import pytest
from kubelet import StandInKubelet
from kubelet_api import ApiError, PodApi
from workloads import wait_until

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
# The image's ENTRYPOINT ["dreambooth-job"], from the environment the tests run in.
ENTRYPOINT = [str(Path(sys.executable).parent / "dreambooth-job")]
HOLD = "standin.test/hold"  # a finalizer that keeps a deleted pod readable, as the Job controller's does


@pytest.fixture(scope="module")
def node(control_plane):
    name = f"standin-{uuid.uuid4().hex[:8]}"
    with control_plane.api_client() as api_client:
        api = PodApi(api_client)
        # Schedulable (the scheduler needs allocatable pods), and not kwok's (no type=kwok label).
        allocatable = {"cpu": "8", "memory": "32Gi", "pods": "110"}
        api.request("POST", "/api/v1/nodes", body={
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"capacity": allocatable, "allocatable": allocatable}})
        yield name
        api.request("DELETE", f"/api/v1/nodes/{name}")


@pytest.fixture(scope="module")
def kubelet(control_plane, node, tmp_path_factory):
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with control_plane.api_client() as api_client:
        stand_in = StandInKubelet(api_client, [node], tmp_path_factory.mktemp("kubelet"),
                                  entrypoint=ENTRYPOINT, env=env, config_retry_seconds=0.5)
        stand_in.start()
        yield stand_in
        stand_in.stop()
    assert stand_in.errors == []


def make_pod(name: str, node: str, script: str, *, finalizers=(), grace: int = 30, **container) -> dict:
    """A bare pod bound to `node` running `sh -c script`, admitted by restricted Pod Security."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "standin-test"}, "finalizers": list(finalizers)},
        "spec": {
            "nodeName": node, "restartPolicy": "Never", "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": grace,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "main", "image": "dreambooth-job:test", "command": ["sh", "-c", script],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                **container}],
        },
    }


def create(kubelet: StandInKubelet, namespace: str, pod: dict) -> dict:
    return kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)


def read(kubelet: StandInKubelet, namespace: str, name: str) -> dict | None:
    try:
        return kubelet.api.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def wait_phase(kubelet, namespace: str, name: str, phase: str, timeout: float = 30) -> dict:
    return wait_until(lambda: (pod := read(kubelet, namespace, name)) and pod["status"].get("phase") == phase
                      and pod, timeout, f"pod {name} {phase}")


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def conditions(pod: dict) -> dict[str, dict]:
    return {c["type"]: c for c in pod["status"].get("conditions") or []}


def release(kubelet, namespace: str, name: str) -> None:
    """Remove the HOLD finalizer, as the Job controller removes its own; the pod then goes."""
    kubelet.api.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}",
                        body={"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json")
    wait_until(lambda: read(kubelet, namespace, name) is None, 30, f"pod {name} gone")


def wait_for_log(kubelet, namespace: str, name: str, text: str) -> None:
    def logged() -> bool:
        try:
            return text in kubelet.log_path(namespace, name, "main").read_text()
        except (KeyError, FileNotFoundError):
            return False
    wait_until(logged, 30, f"{text!r} in the log of {name}")


def test_exit_zero_succeeds_with_reason_completed(kubelet, node, namespace):
    create(kubelet, namespace, make_pod("ok", node, "echo hello from the stand-in"))
    pod = wait_phase(kubelet, namespace, "ok", "Succeeded")
    state = terminated(pod)
    assert (state["exitCode"], state["reason"]) == (0, "Completed")
    assert state["containerID"].startswith("standin://") and state["startedAt"] <= state["finishedAt"]
    status = pod["status"]["containerStatuses"][0]
    assert (status["ready"], status["restartCount"], status["image"]) == (False, 0, "dreambooth-job:test")
    assert "@sha256:" in status["imageID"] and pod["status"]["podIP"] == "127.0.0.1"
    ready = conditions(pod)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodCompleted")
    assert kubelet.log_path(namespace, "ok", "main").read_text() == "hello from the stand-in\n"


def test_a_pod_the_scheduler_binds_runs_and_keeps_its_pod_scheduled_condition(kubelet, node, namespace):
    pod = make_pod("scheduled", node, "echo scheduled")
    del pod["spec"]["nodeName"]
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    create(kubelet, namespace, pod)
    pod = wait_phase(kubelet, namespace, "scheduled", "Succeeded")
    assert pod["spec"]["nodeName"] == node
    assert conditions(pod)["PodScheduled"]["status"] == "True"


def test_non_zero_exit_fails_with_the_termination_log_as_message(kubelet, node, namespace):
    script = 'echo "all photos are bad" > "$DREAMBOOTH_TERMINATION_LOG"; exit 3'
    create(kubelet, namespace, make_pod("bad", node, script))
    state = terminated(wait_phase(kubelet, namespace, "bad", "Failed"))
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "all photos are bad\n")


def test_fallback_to_logs_on_error_takes_the_logs_last_80_lines(kubelet, node, namespace):
    script = 'i=1; while [ $i -le 100 ]; do echo "line $i"; i=$((i+1)); done; exit 1'
    pod = make_pod("crash", node, script, terminationMessagePolicy="FallbackToLogsOnError")
    create(kubelet, namespace, pod)
    state = terminated(wait_phase(kubelet, namespace, "crash", "Failed"))
    assert state["message"].splitlines() == [f"line {i}" for i in range(21, 101)]


def test_the_job_as_entrypoint_reports_its_error_through_the_termination_log(kubelet, node, namespace):
    pod = make_pod("job", node, "", args=["train", "--no-such-option"],
                   terminationMessagePolicy="FallbackToLogsOnError")
    del pod["spec"]["containers"][0]["command"]  # the image's entrypoint: dreambooth-job
    create(kubelet, namespace, pod)
    state = terminated(wait_phase(kubelet, namespace, "job", "Failed", timeout=60))
    assert state["exitCode"] == 2
    assert state["message"].startswith("No such option '--no-such-option'")
    assert "error: No such option" in kubelet.log_path(namespace, "job", "main").read_text()


def test_a_jobs_pod_runs_and_the_job_controller_completes_the_job(kubelet, node, namespace):
    template = make_pod("unused", node, "echo trained")
    template["metadata"] = {"labels": {"app": "standin-test"}}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "one"},
           "spec": {"backoffLimit": 0, "template": template}}
    kubelet.api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=job)

    def complete() -> dict | None:
        job = kubelet.api.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/one")
        done = any(c["type"] == "Complete" and c["status"] == "True"
                   for c in job.get("status", {}).get("conditions") or [])
        return done and job
    assert wait_until(complete, 60, "Job one Complete")["status"]["succeeded"] == 1
    pods = kubelet.api.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                               query={"labelSelector": "batch.kubernetes.io/job-name=one"})["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]
    # The Job controller has removed its tracking finalizer once it counted the pod.
    assert "batch.kubernetes.io/job-tracking" not in (pods[0]["metadata"].get("finalizers") or [])


def test_env_is_resolved_as_the_kubelet_does(kubelet, node, namespace):
    kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"},
        "data": {"key": base64.b64encode(b"s3cr3t").decode()}})
    kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", body={
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}})
    env = [{"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}},
           {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
           {"name": "GONE",
            "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k", "optional": True}}},
           {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "EXPANDED", "value": "$(POD)-$(UNDEFINED)-$$(POD)"},
           {"name": "CACHE", "value": "/cache/hf"}]
    script = ('echo "$SECRET|$MODE|${GONE-unset}|$S_key|$POD|$APP|$NODE|$EXPANDED|$1"; '
              'mkdir -p "$CACHE"; touch "$CACHE/marker"; '
              'touch "$TMPDIR/tmp-marker"')
    pod = make_pod("env", node, script, env=env, args=["$(POD)"],
                   volumeMounts=[{"name": "cache", "mountPath": "/cache"},
                                 {"name": "tmp", "mountPath": "/tmp"}])
    pod["spec"]["volumes"] = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", script, "sh"]
    pod["spec"]["containers"][0]["envFrom"] = [{"secretRef": {"name": "s3"}, "prefix": "S_"}]
    uid = create(kubelet, namespace, pod)["metadata"]["uid"]
    wait_phase(kubelet, namespace, "env", "Succeeded")
    assert kubelet.log_path(namespace, "env", "main").read_text() == (
        f"s3cr3t|fast|unset|s3cr3t|env|standin-test|{node}|env-$(UNDEFINED)-$(POD)|env\n")
    volumes = kubelet.pod_dir(namespace, "env", uid) / "volumes"
    assert (volumes / "cache" / "hf" / "marker").is_file() and (volumes / "tmp" / "tmp-marker").is_file()


def test_missing_secret_key_waits_in_create_container_config_error_until_it_exists(kubelet, node, namespace):
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"}, "data": {}}
    kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=secret)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    create(kubelet, namespace, make_pod("waits", node, 'test "$TOKEN" = now-here', env=env))

    def waiting() -> dict | None:
        pod = read(kubelet, namespace, "waits")
        return (pod["status"].get("containerStatuses") or [{}])[0].get("state", {}).get("waiting")
    assert wait_until(waiting, 30, "the container waiting") == {
        "reason": "CreateContainerConfigError",
        "message": f"couldn't find key token in Secret {namespace}/late"}
    assert read(kubelet, namespace, "waits")["status"]["phase"] == "Pending"
    kubelet.api.request("PATCH", f"/api/v1/namespaces/{namespace}/secrets/late",
                        body={"data": {"token": base64.b64encode(b"now-here").decode()}},
                        content_type="application/merge-patch+json")
    assert terminated(wait_phase(kubelet, namespace, "waits", "Succeeded"))["exitCode"] == 0


TRAP_TERM = ('trap \'echo term > "$MARK"; exit 143\' TERM; echo started; '
             'while :; do sleep 0.1; done')


def marked_pod(name: str, node: str, script: str, env=(), **kwargs) -> dict:
    """A pod whose MARK env names a file in its /tmp volume, kept by the HOLD finalizer."""
    pod = make_pod(name, node, script, finalizers=[HOLD], env=[{"name": "MARK", "value": "/tmp/mark"}, *env],
                   volumeMounts=[{"name": "tmp", "mountPath": "/tmp"}], **kwargs)
    pod["spec"]["volumes"] = [{"name": "tmp", "emptyDir": {}}]
    return pod


def test_graceful_deletion_sends_sigterm_then_deletes_the_pod(kubelet, node, namespace):
    uid = create(kubelet, namespace, marked_pod("graceful", node, TRAP_TERM))["metadata"]["uid"]
    wait_for_log(kubelet, namespace, "graceful", "started")
    kubelet.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/graceful",
                        body={"gracePeriodSeconds": 30})
    # The kubelet's own deletion (grace 0) leaves only the finalizer holding the pod.
    pod = wait_until(lambda: (p := read(kubelet, namespace, "graceful"))
                     and p["metadata"].get("deletionGracePeriodSeconds") == 0 and p, 30, "the final deletion")
    assert pod["status"]["phase"] == "Failed"
    assert (terminated(pod)["exitCode"], terminated(pod)["reason"]) == (143, "Error")
    assert (kubelet.pod_dir(namespace, "graceful", uid) / "volumes" / "tmp" / "mark").read_text() == "term\n"
    release(kubelet, namespace, "graceful")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(kubelet, node, namespace):
    script = "trap '' TERM; echo started; while :; do sleep 0.1; done"
    create(kubelet, namespace, marked_pod("stubborn", node, script))
    wait_for_log(kubelet, namespace, "stubborn", "started")
    began = time.monotonic()
    kubelet.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/stubborn",
                        body={"gracePeriodSeconds": 3})
    pod = wait_phase(kubelet, namespace, "stubborn", "Failed")
    assert time.monotonic() - began >= 3
    assert terminated(pod)["exitCode"] == 137
    release(kubelet, namespace, "stubborn")


def test_eviction_keeps_the_disruption_target_condition(kubelet, node, namespace):
    create(kubelet, namespace, marked_pod("evicted", node, TRAP_TERM))
    wait_for_log(kubelet, namespace, "evicted", "started")
    kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/pods/evicted/eviction", body={
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evicted"}})
    pod = wait_phase(kubelet, namespace, "evicted", "Failed")
    assert terminated(pod)["exitCode"] == 143
    target = conditions(pod)["DisruptionTarget"]
    assert (target["status"], target["reason"]) == ("True", "EvictionByEvictionAPI")
    release(kubelet, namespace, "evicted")


def test_a_pod_deleted_before_it_started_never_runs(kubelet, node, namespace):
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}]
    create(kubelet, namespace, marked_pod("never", node, "echo ran", env=env))
    wait_until(lambda: read(kubelet, namespace, "never")["status"].get("containerStatuses"), 30,
               "the container waiting")
    kubelet.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/never")
    pod = wait_phase(kubelet, namespace, "never", "Failed")
    assert "waiting" in pod["status"]["containerStatuses"][0]["state"]
    assert not kubelet.log_path(namespace, "never", "main").exists()
    release(kubelet, namespace, "never")


def test_active_deadline_fails_the_pod_with_deadline_exceeded(kubelet, node, namespace):
    pod = marked_pod("deadline", node, TRAP_TERM)
    pod["spec"]["activeDeadlineSeconds"] = 2
    create(kubelet, namespace, pod)
    pod = wait_phase(kubelet, namespace, "deadline", "Failed")
    assert (pod["status"]["reason"], terminated(pod)["exitCode"]) == ("DeadlineExceeded", 143)
    kubelet.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/deadline")
    release(kubelet, namespace, "deadline")  # a finished pod's deletion is the kubelet's too


def test_stop_kills_every_process_it_started(control_plane, node, namespace, tmp_path):
    env = {"PATH": os.environ["PATH"]}
    name = f"standin-stop-{uuid.uuid4().hex[:6]}"
    with control_plane.api_client() as api_client:
        stand_in = StandInKubelet(api_client, [name], tmp_path, entrypoint=[], env=env)
        create(stand_in, namespace, make_pod("long", name, "echo started; sleep 600"))
        stand_in.start()
        wait_for_log(stand_in, namespace, "long", "started")
        pid = container_pid(read(stand_in, namespace, "long"))
        stand_in.stop()
        stand_in.stop()  # idempotent
    assert process_gone(pid)
    assert stand_in.errors == []


def test_an_evicted_jobs_pod_is_ignored_by_the_pod_failure_policy_and_replaced(kubelet, node, namespace):
    # The first pod waits for SIGTERM (exit 143), the second finds its predecessor's file in the
    # claim's folder (shared by the namespace's pods naming it) and succeeds.
    script = ('if [ -f "$STATE/first" ]; then echo resumed; exit 0; fi; touch "$STATE/first"; '
              "trap 'exit 143' TERM; echo started; while :; do sleep 0.1; done")
    template = make_pod("unused", node, script, env=[{"name": "STATE", "value": "/state"}],
                        volumeMounts=[{"name": "state", "mountPath": "/state"}])
    template["metadata"] = {}
    template["spec"]["volumes"] = [{"name": "state", "persistentVolumeClaim": {"claimName": "state"}}]
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "preempted"},
           "spec": {"backoffLimit": 0, "template": template, "podFailurePolicy": {"rules": [
               {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}}
    kubelet.api.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", body=job)

    def job_pods() -> list[dict]:
        return kubelet.api.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                                   query={"labelSelector": "batch.kubernetes.io/job-name=preempted"})["items"]
    first = wait_until(job_pods, 30, "the Job's pod")[0]["metadata"]["name"]
    wait_for_log(kubelet, namespace, first, "started")
    kubelet.api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{first}/eviction", body={
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": first}})

    def job_status() -> dict:
        return kubelet.api.request("GET", f"/apis/batch/v1/namespaces/{namespace}/jobs/preempted")["status"]
    status = wait_until(lambda: (s := job_status()).get("succeeded") == 1 and s, 60, "the replacement")
    assert not status.get("failed")
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in status["conditions"])
    second = [p["metadata"]["name"] for p in job_pods() if p["metadata"]["name"] != first]
    assert kubelet.log_path(namespace, second[0], "main").read_text() == "resumed\n"


def container_pid(pod: dict) -> int:
    return int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("standin://"))


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_force_deleted_pods_process_is_killed(kubelet, node, namespace):
    script = "trap '' TERM; echo started; while :; do sleep 0.1; done"
    create(kubelet, namespace, make_pod("forced", node, script))
    wait_for_log(kubelet, namespace, "forced", "started")
    pid = container_pid(wait_phase(kubelet, namespace, "forced", "Running"))
    kubelet.api.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/forced",
                        body={"gracePeriodSeconds": 0})
    assert read(kubelet, namespace, "forced") is None
    wait_until(lambda: process_gone(pid), 15, "the force-deleted pod's process to die")


def test_each_container_runs_and_the_pod_fails_if_one_fails(kubelet, node, namespace):
    pod = make_pod("pair", node, "exit 0")
    second = {**pod["spec"]["containers"][0], "name": "second", "command": ["sh", "-c", "sleep 1; exit 4"]}
    pod["spec"]["containers"].append(second)
    create(kubelet, namespace, pod)
    pod = wait_phase(kubelet, namespace, "pair", "Failed")
    codes = {s["name"]: s["state"]["terminated"]["exitCode"] for s in pod["status"]["containerStatuses"]}
    assert codes == {"main": 0, "second": 4}


def test_a_command_that_cannot_run_fails_with_start_error(kubelet, node, namespace):
    pod = make_pod("missing", node, "")
    pod["spec"]["containers"][0]["command"] = ["/nonexistent/command"]
    create(kubelet, namespace, pod)
    state = terminated(wait_phase(kubelet, namespace, "missing", "Failed"))
    assert (state["exitCode"], state["reason"]) == (128, "StartError")
    assert "/nonexistent/command" in state["message"]
