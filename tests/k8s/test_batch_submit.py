"""Overnight batches: the 30 DreamBooth subjects as 30 Jobs, reruns, bad rows, feeding, Kueue."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from k8s_support import DATASET, complete, dataset_subjects, fail, write_completed_result

from dreambooth_job.k8s import (
    BATCH_LABEL,
    SUBJECT_LABEL,
    BatchFileError,
    ClusterSettings,
    load_batch,
    submit_batch,
)
from dreambooth_job.k8s.client import is_finished, jobs_by_name
from dreambooth_job.k8s.feed import render_batch

CLUSTER = ClusterSettings(image="registry.example/dreambooth-job:0.1.0", gpus=1)


def write_subjects(path, output_root, bad_rows=()):
    """The subjects file an operator would write for the DreamBooth dataset, `bad_rows` broken."""
    rows = []
    for subject, noun in dataset_subjects():
        row = {"id": subject, "instance_data": f"s3://dreambooth-dataset/{subject}/", "class_noun": noun}
        if noun == "dog":
            row["learning_rate"] = 2.0e-6  # a per-subject override
        rows.append(row)
    broken = [{"max_train_steps": "a lot"}, {"class_noun": None}, {"learning_rat": 1e-6}]
    for index, change in zip(bad_rows, broken):
        rows[index] = {k: v for k, v in {**rows[index], **change}.items() if v is not None}
    path.write_text(yaml.safe_dump({
        "defaults": {"batch_id": "night-42", "output": f"{output_root}/{{id}}/",
                     "class_data": f"{output_root}/class-cache/{{class_noun}}/",
                     "max_train_steps": 800},
        "subjects": rows}, sort_keys=False))
    return path


def jobs_of(connection, batch_id="night-42"):
    return list(jobs_by_name({BATCH_LABEL: batch_id}, connection=connection).values())


def test_the_dataset_is_found_beside_the_repo():
    subjects = dataset_subjects()
    assert len(subjects) == 30 and ("bear_plushie", "stuffed animal") in subjects
    assert all((DATASET / subject).is_dir() for subject, _ in subjects)


def test_thirty_subjects_render_thirty_valid_jobs_with_unique_names(tmp_path):
    batch = load_batch(write_subjects(tmp_path / "night-42.yaml", "s3://runs/night-42"))
    manifests = render_batch(batch, CLUSTER)
    assert len(manifests) == 30
    assert len({m["metadata"]["name"] for m in manifests}) == 30
    for manifest, (subject, noun) in zip(manifests, dataset_subjects()):
        kubernetes_validate.validate(manifest, "1.31.0", strict=True)
        labels = manifest["metadata"]["labels"]
        assert labels[BATCH_LABEL] == "night-42" and labels[SUBJECT_LABEL] == subject
        assert labels["app.kubernetes.io/name"] == "dreambooth-job"
        args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--output") + 1] == f"s3://runs/night-42/{subject}/"
        assert args[args.index("--class-noun") + 1] == noun


def test_three_bad_rows_are_all_reported_and_nothing_is_created(tmp_path, connection, namespace):
    path = write_subjects(tmp_path / "night-42.yaml", "s3://runs/night-42", bad_rows=(3, 11, 27))
    with pytest.raises(BatchFileError) as caught:
        submit_batch(load_batch(path), CLUSTER, connection=connection)
    problems = caught.value.problems
    ids = [subject for subject, _ in dataset_subjects()]
    assert len(problems) == 3
    assert problems[0].startswith(f"subjects[3] (id {ids[3]})") and "max_train_steps" in problems[0]
    assert problems[1].startswith(f"subjects[11] (id {ids[11]})") and "--class-noun" in problems[1]
    assert problems[2].startswith(f"subjects[27] (id {ids[27]})") and "learning_rat" in problems[2]
    assert not connection.batch.list_namespaced_job(namespace).items


def test_rerun_after_ten_succeeded_creates_only_the_other_twenty(tmp_path, connection, bucket):
    root = f"s3://{bucket}/night-42"
    batch = load_batch(write_subjects(tmp_path / "night-42.yaml", root))
    first = submit_batch(batch, CLUSTER, connection=connection)
    assert len(first.created) == 30 and len(jobs_of(connection)) == 30

    # The night goes by: 10 succeed (Job complete, outputs published), 20 fail.
    jobs = {j.metadata.labels[SUBJECT_LABEL]: j.metadata.name for j in jobs_of(connection)}
    for index, subject in enumerate(batch.ids):
        if index < 10:
            write_completed_result(f"{root}/{subject}/", subject)
            complete(connection, jobs[subject])
        else:
            fail(connection, jobs[subject])

    second = submit_batch(batch, CLUSTER, connection=connection)
    assert second.skipped_succeeded == batch.ids[:10]
    assert second.created == batch.ids[10:]
    assert len(jobs_of(connection)) == 30
    assert sum(not is_finished(j) for j in jobs_of(connection)) == 20

    third = submit_batch(batch, CLUSTER, connection=connection)  # all running or done: a no-op
    assert (third.created, len(third.skipped_active)) == ([], 20)


def test_a_fresh_cluster_only_gets_the_unfinished_subjects(tmp_path, connection, bucket):
    # The finished Jobs are gone (ttlSecondsAfterFinished) but their outputs remain.
    root = f"s3://{bucket}/night-42"
    batch = load_batch(write_subjects(tmp_path / "night-42.yaml", root))
    for subject in batch.ids[5:15]:
        write_completed_result(f"{root}/{subject}/", subject)
    outcome = submit_batch(batch, CLUSTER, connection=connection)
    assert len(outcome.created) == 20 and outcome.skipped_succeeded == batch.ids[5:15]
    assert sorted(j.metadata.labels[SUBJECT_LABEL] for j in jobs_of(connection)) == \
        sorted(batch.ids[:5] + batch.ids[15:])


def small_batch(tmp_path, count=5):
    lines = ["id,instance_data,class_noun"] + [f"s{i},s3://p/s{i}/,toy" for i in range(count)]
    (tmp_path / "small.csv").write_text("\n".join(lines) + "\n")
    return load_batch(tmp_path / "small.csv", {"output": str(tmp_path / "out" / "{id}")})


def test_max_parallel_feeds_jobs_as_others_finish(tmp_path, connection):
    batch = small_batch(tmp_path)
    most_active = []

    def sleep(seconds):  # the cluster works while the feeder waits: finish what runs
        active = [j for j in jobs_of(connection, "small") if not is_finished(j)]
        most_active.append(len(active))
        for job in active:
            complete(connection, job.metadata.name)

    outcome = submit_batch(batch, CLUSTER, max_parallel=2, connection=connection, sleep=sleep,
                           poll_seconds=0)
    assert outcome.created == batch.ids
    assert most_active == [2, 2]  # created 2, waited, 2 more, waited, the last one
    assert len(jobs_of(connection, "small")) == 5


def test_a_restarted_feeder_resumes(tmp_path, connection):
    batch = small_batch(tmp_path)

    def interrupted(seconds):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        submit_batch(batch, CLUSTER, max_parallel=2, connection=connection, sleep=interrupted)
    assert len(jobs_of(connection, "small")) == 2

    def finish_all(seconds):
        for job in jobs_of(connection, "small"):
            complete(connection, job.metadata.name)

    outcome = submit_batch(batch, CLUSTER, max_parallel=2, connection=connection, sleep=finish_all)
    assert outcome.skipped_active == ["s0", "s1"] and outcome.created == ["s2", "s3", "s4"]


def test_with_a_kueue_queue_everything_is_created_suspended(tmp_path, connection):
    batch = small_batch(tmp_path)
    cluster = ClusterSettings(image=CLUSTER.image, queue="gpu-night")

    def never(seconds):
        raise AssertionError("with Kueue the feeder must not wait")

    outcome = submit_batch(batch, cluster, max_parallel=1, connection=connection, sleep=never)
    assert len(outcome.created) == 5
    for job in jobs_of(connection, "small"):
        assert job.spec.suspend is True
        assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-night"
