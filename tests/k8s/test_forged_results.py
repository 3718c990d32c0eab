"""One subject's forged result.json (its tenant can rewrite it) must not stop `status` or `report`
for the batch: that subject reads as "result.json unreadable: <why>", the others as usual, and
both commands exit 0 (docs/run-page.md). Real CLI, a real kube-apiserver, the S3 server."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner
from k8s_support import complete, write_completed_result

from dreambooth_job.cli import main
from dreambooth_job.k8s import Connection, job_name
from dreambooth_job.outputs.result_reader import MAX_BYTES
from dreambooth_job.storage import places as storage


def _record(output: str) -> dict:
    return json.loads(storage.read_bytes(f"{output}result.json"))


def _edited(**changes):
    def forge(output: str) -> bytes:
        record = _record(output)
        for path, value in changes.items():
            section, key = path.split("__") if "__" in path else (None, path)
            (record[section] if section else record)[key] = value
        return json.dumps(record).encode()
    return forge


DEEP = 200_000
FORGERIES = {  # what the forged file holds -> what the row must say
    "invalid-json": (lambda output: b'{"training": {"final_loss": 0.1', "not JSON"),
    "top-level-list": (lambda output: json.dumps([_record(output)]).encode(),
                       "the top level is a list, not a mapping"),
    "loss-a-string": (_edited(training__final_loss="x"),
                      "training.final_loss is the string 'x', not a number"),
    "metrics-a-list": (_edited(metrics=[{"dino": 0.9}]), "metrics is a list, not a mapping"),
    "deep-array": (lambda output: b"[" * DEEP + b"]" * DEEP, "not JSON (nested too deep to parse)"),
    "over-the-size-cap": (lambda output: b" " * MAX_BYTES + json.dumps(_record(output)).encode(),
                          "larger than 4 MiB"),
    "score-too-large": (_edited(metrics={"dino": 10 ** 400}), "metrics.dino is a number too large"),
}


def run(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_result_is_one_unreadable_row_and_the_batch_is_reported(
        kubeconfig, namespace, tmp_path, bucket, forgery):
    root = f"s3://{bucket}/night"
    subjects = ["dog", "forged", "cat"]
    path = tmp_path / "night.yaml"
    path.write_text(yaml.safe_dump({
        "defaults": {"output": f"{root}/{{id}}/", "max_train_steps": 800},
        "subjects": [{"id": s, "instance_data": f"s3://photos/{s}/", "class_noun": "dog"}
                     for s in subjects]}))
    run("batch", path)
    conn = Connection.from_environment()
    for index, subject in enumerate(subjects):
        write_completed_result(f"{root}/{subject}/", subject, dino=0.5 + index / 10,
                               loss=0.0812, grid=b"\x89PNG " + subject.encode())
        complete(conn, job_name(subject, "night"))
    forge, reason = FORGERIES[forgery]
    storage.write_bytes(f"{root}/forged/result.json", forge(f"{root}/forged/"))

    table = run("status", "--batch", path).splitlines()
    rows = {line.split()[0]: line for line in table[1:-1]}
    assert rows["dog"].split()[:6] == ["dog", "succeeded", "0", "20m00s", "0.0812", "full"]
    assert rows["cat"].split()[:6] == ["cat", "succeeded", "0", "20m00s", "0.0812", "full"]
    assert f"result.json unreadable: {reason}" in rows["forged"]
    assert table[-1] == "3 subject(s): 3 succeeded"
    listed = json.loads(run("status", "--batch", path, "-o", "json"))["subjects"]
    listed = {s["subject_id"]: s for s in listed}
    assert listed["forged"]["result_error"].startswith(f"result.json unreadable: {reason}")
    assert listed["cat"]["metrics"]["dino"] == 0.7 and listed["forged"]["metrics"] is None

    out = run("report", "--batch", path, "--output", f"{root}/report/")
    assert "3 subject(s): 3 succeeded" in out and "(2 sample grids)" in out
    report = json.loads(storage.read_bytes(f"{root}/report/report.json"))
    by_subject = {r["subject_id"]: r for r in report["subjects"]}
    assert by_subject["forged"]["result_error"].startswith(f"result.json unreadable: {reason}")
    assert by_subject["forged"]["grid"] is None and by_subject["forged"]["metrics"] == {}
    assert by_subject["dog"]["metrics"]["dino"] == 0.5 and by_subject["dog"]["grid"] == "images/dog.png"
    page = storage.read_bytes(f"{root}/report/index.html").decode()
    assert "result.json unreadable: " in page and "images/cat.png" in page

    # The forged output still counts as complete: submitting the batch again skips it.
    assert "0 created, 3 already succeeded" in run("batch", path)
