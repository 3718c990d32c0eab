"""Scenario 4 of issue 26: an overnight batch of 12 subjects under the project's Kueue queue with a
4-GPU quota, as docs/operator-guide.md ("Overnight batches with Kueue", "An overnight batch from the
CLI") runs it: `batch --queue gpu-batch`, `status --batch`, `report --batch`, and the same `batch`
again once a failed row's photos are fixed.

One row's photos are all too small (below --min-image-side), so its pod exits 2 and the Job fails
at once; the 11 others train the tiny model for real (QUICK_OPTIONS). Fixing the photos and
rerunning `batch` replaces that row's Job only: 12 tiny runs in all.
"""

from __future__ import annotations

import json

import pytest
from batch_support import (
    RunningPods,
    cli,
    ok,
    ok_json,
    replace_photos,
    subject_rows,
    write_cluster_config,
    write_subjects_file,
)
from helpers import make_photo
from kubernetes import client
from workloads import cluster_settings, create_s3_secret, job_condition, upload_subject, wait_until

from dreambooth_job.k8s import BATCH_LABEL, SUBJECT_LABEL
from dreambooth_job.storage import places

pytestmark = pytest.mark.cluster

SUBJECTS = 12
GPU_QUOTA = 4
BATCH = "night-12"
# Last in the file, so that Kueue (oldest first) admits it in the last wave.
BAD = f"subject-{SUBJECTS - 1:02d}"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Three waves of four tiny runs on a shared 2-core machine, then the replaced row.
BATCH_TIMEOUT = 360
RERUN_TIMEOUT = 150


@pytest.fixture
def small_photos(tmp_path):
    """Photos whose shorter side (64 px) is below --min-image-side (256): every one is rejected."""
    folder = tmp_path / "small-photos"
    for index in range(3):
        make_photo(folder / f"{index:02d}.jpg", seed=index, size=(64, 64))
    return folder


def batch_jobs(api: client.ApiClient, namespace: str) -> dict[str, client.V1Job]:
    """The batch's Jobs by subject, read by the admin."""
    jobs = client.BatchV1Api(api).list_namespaced_job(
        namespace, label_selector=f"{BATCH_LABEL}={BATCH}").items
    return {job.metadata.labels[SUBJECT_LABEL]: job for job in jobs}


def all_finished(api: client.ApiClient, namespace: str, count: int):
    """The Jobs when `count` of them have finished (Complete or Failed), else None."""
    jobs = batch_jobs(api, namespace)
    done = [j for j in jobs.values() if job_condition(j, "Complete") or job_condition(j, "Failed")]
    return jobs if len(done) == count else None


def batch_line(created: int, succeeded: int) -> str:
    """`batch`'s last line when nothing was queued or running."""
    return f"batch {BATCH}: {created} created, {succeeded} already succeeded, 0 already queued or running"


def status_table(kubeconfig, subjects) -> dict[str, list[str]]:
    """`status --batch`: the cells of each subject's row by subject, and the summary line."""
    lines = ok(cli("status", "--batch", subjects, kubeconfig=kubeconfig))
    assert lines[0].split()[:2] == ["SUBJECT", "PHASE"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    return {**rows, "summary": [lines[-1]]}


def check_status_and_report(kubeconfig, subjects, report_uri: str) -> None:
    """What `status` and `report` say the morning after the first night: 11 trained, BAD failed
    with the pod's one-line reason."""
    table = status_table(kubeconfig, subjects)
    assert table["summary"] == [f"{SUBJECTS} subject(s): 1 failed, {SUBJECTS - 1} succeeded"]
    good = [row for subject, row in table.items() if subject not in (BAD, "summary")]
    # phase, retries and weights of each trained subject, and a loss
    assert {(row[1], row[2], row[5]) for row in good} == {("succeeded", "0", "full")}
    assert all(float(row[4]) >= 0 for row in good)
    assert table[BAD][1:3] == ["failed", "0"]
    listed = ok_json(cli("status", "--batch", subjects, "-o", "json", kubeconfig=kubeconfig))
    reason = next(s for s in listed["subjects"] if s["subject_id"] == BAD)["failure_reason"]
    assert reason.startswith("PodFailurePolicy") and "exit 2" in reason, reason
    assert "has 0 valid photo(s), need at least 1" in reason, reason

    out = ok(cli("report", "--batch", subjects, "--output", report_uri, kubeconfig=kubeconfig))
    assert out == [f"{SUBJECTS} subject(s): 1 failed, {SUBJECTS - 1} succeeded",
                   f"report: {report_uri}index.html ({SUBJECTS - 1} sample grids)"]
    report = json.loads(places.read_bytes(f"{report_uri}report.json"))
    assert report["summary"] == {"failed": 1, "succeeded": SUBJECTS - 1}
    assert report["subjects"][0]["subject_id"] == BAD  # failures first


def test_an_overnight_batch_never_runs_more_than_the_gpu_quota_and_reruns_only_the_failed_row(
        cluster, namespace, kubeconfig, bucket, tiny_model_uri, photo_dir, small_photos, tmp_path):
    cluster.kueue.apply_project_queues(namespace, gpu_quota=GPU_QUOTA)
    create_s3_secret(cluster.api, namespace)
    rows = subject_rows(SUBJECTS, bucket)
    for row in rows:
        upload_subject(bucket, row["id"], small_photos if row["id"] == BAD else photo_dir)
    subjects = write_subjects_file(tmp_path / f"{BATCH}.yaml", rows, bucket, tiny_model_uri)
    config = write_cluster_config(tmp_path / "cluster.yaml", cluster_settings(namespace))
    batch = ("batch", subjects, "--cluster-config", config, "--queue", "gpu-batch")

    with RunningPods(cluster.plane.api_client(), namespace, f"{BATCH_LABEL}={BATCH}") as pods:
        out = ok(cli(*batch, kubeconfig=kubeconfig))
        assert out[-1] == batch_line(created=SUBJECTS, succeeded=0)
        # Created suspended: beyond the quota they wait, and `status` says so (a run takes seconds).
        early = ok_json(cli("status", "--batch", subjects, "-o", "json", kubeconfig=kubeconfig))
        assert early["summary"].get("queued", 0) >= SUBJECTS - GPU_QUOTA, early["summary"]
        assert set(early["summary"]) <= {"queued", "pending", "running"}, early["summary"]
        jobs = wait_until(lambda: all_finished(cluster.api, namespace, SUBJECTS), BATCH_TIMEOUT,
                          f"the {SUBJECTS} Jobs of the batch to finish")
    assert pods.error is None, f"the pod watch failed: {pods.error!r}"
    # The record is complete: it saw each Job's one pod run (no retries: exit 2 fails the Job).
    assert len(pods.ever_ran) == SUBJECTS, sorted(pods.ever_ran)
    # Kueue admits 4 at once and no more: 4 pods ran together, never 5.
    assert pods.peak == GPU_QUOTA, f"at most {pods.peak} pods ran at once, the quota is {GPU_QUOTA}"
    assert all(job.metadata.labels[QUEUE_LABEL] == "gpu-batch" for job in jobs.values())
    assert sorted(s for s, j in jobs.items() if job_condition(j, "Complete")) == sorted(
        r["id"] for r in rows if r["id"] != BAD)
    failed = job_condition(jobs[BAD], "Failed")
    assert failed is not None and failed.reason == "PodFailurePolicy", failed

    report_uri = f"s3://{bucket}/runs/{BATCH}/report/"
    check_status_and_report(kubeconfig, subjects, report_uri)

    # The morning after: fix the photos, run the same command again.
    uids = {subject: job.metadata.uid for subject, job in jobs.items()}
    replace_photos(bucket, BAD, photo_dir)
    with RunningPods(cluster.plane.api_client(), namespace, f"{BATCH_LABEL}={BATCH}") as rerun_pods:
        out = ok(cli(*batch, kubeconfig=kubeconfig))
        assert out[-1] == batch_line(created=1, succeeded=SUBJECTS - 1)
        assert any(line.startswith(f"{BAD}: replaced job ") for line in out), out
        jobs = wait_until(lambda: all_finished(cluster.api, namespace, SUBJECTS), RERUN_TIMEOUT,
                          f"the replaced Job of {BAD} to finish")
    assert rerun_pods.error is None and rerun_pods.peak == 1 and len(rerun_pods.ever_ran) == 1
    assert jobs[BAD].metadata.uid != uids[BAD] and job_condition(jobs[BAD], "Complete")
    assert {s: j.metadata.uid for s, j in jobs.items() if s != BAD} == {
        s: uid for s, uid in uids.items() if s != BAD}

    assert status_table(kubeconfig, subjects)["summary"] == [f"{SUBJECTS} subject(s): {SUBJECTS} succeeded"]
    out = ok(cli("report", "--batch", subjects, "--output", report_uri, kubeconfig=kubeconfig))
    assert out[-1] == f"report: {report_uri}index.html ({SUBJECTS} sample grids)"
