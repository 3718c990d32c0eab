"""The CLI: submit, batch, status, report, cancel, through click's runner, against a real kube-apiserver."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from k8s_support import complete, dataset_subjects, start, write_completed_result
from workloads import wait_until

from dreambooth_job.cli import main
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.k8s import ClusterSettings, JobSpec, build_job, job_name
from dreambooth_job.training import sizing

DOG = ["--instance-data", "s3://photos/dog/", "--class-noun", "dog", "--output", "s3://runs/dog/",
       "--subject-id", "dog"]


def run(*args, expect=0):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


@pytest.fixture
def no_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))


def test_submit_dry_run_prints_the_builders_job_without_a_cluster(no_cluster):
    out = run("submit", *DOG, "--image", "reg/db:1", "--max-train-steps", 400, "--dry-run", "-o", "yaml")
    manifest = yaml.safe_load(out)
    train = TrainConfig(instance_data="s3://photos/dog/", class_noun="dog", output="s3://runs/dog/",
                        subject_id="dog", max_train_steps=400)
    assert manifest == build_job(JobSpec(train=train, cluster=ClusterSettings(image="reg/db:1")))
    kubernetes_validate.validate(manifest, "1.31.0", strict=True)
    assert json.loads(run("submit", *DOG, "--dry-run", "-o", "json")) == yaml.safe_load(
        run("submit", *DOG, "--dry-run"))


def test_cluster_options_and_cluster_config_file(no_cluster, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text("image: reg/db:2\npriority-class-name: night\n"
                      "tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]\n")
    manifest = yaml.safe_load(run(
        "submit", *DOG, "--cluster-config", config, "--queue", "gpu-night", "--namespace", "ml",
        "--node-selector", "gpu=a100", "--node-selector", "zone=b", "--gpus", 2,
        "--resources", '{"requests": {"cpu": "4", "memory": "16Gi"}}', "--dry-run"))
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["metadata"]["namespace"] == "ml" and manifest["spec"]["suspend"] is True
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-night"
    assert pod["nodeSelector"] == {"gpu": "a100", "zone": "b"}
    assert pod["priorityClassName"] == "night" and pod["tolerations"][0]["key"] == "gpu"
    assert pod["containers"][0]["image"] == "reg/db:2"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    # Over the sizing profile's, key by key (as Helm merges values): its local disk stays.
    assert pod["containers"][0]["resources"]["requests"] == {
        "cpu": "4", "memory": "16Gi",
        "ephemeral-storage":
            sizing.PROFILES[sizing.UNDETECTED["full"]].resources["requests"]["ephemeral-storage"]}


@pytest.mark.parametrize("args,message", [
    (["--instance-data", "s3://p/dog/", "--output", "s3://r/dog/"], "--class-noun"),
    ([*DOG, "--tolerations", "{key: gpu}"], "--tolerations must be a list"),
    ([*DOG, "--node-selector", "gpu"], "--node-selector takes KEY=VALUE"),
    ([*DOG, "--gpus", "-1"], "gpus must not be negative"),
])
def test_bad_submissions_exit_2(no_cluster, args, message):
    result = CliRunner().invoke(main, ["submit", *args, "--dry-run"])
    assert result.exit_code == 2 and message in result.output


def test_submit_then_submit_again(kubeconfig, namespace):
    name = job_name("dog")
    assert run("submit", *DOG).strip() == f"created job {namespace}/{name}"
    assert "already exists for this subject: not created" in run("submit", *DOG)


def test_unreachable_api_exits_75(kubeconfig, monkeypatch):
    from dreambooth_job.k8s import client

    monkeypatch.setattr(client.random, "uniform", lambda low, high: 0.0)  # no backoff waits
    data = yaml.safe_load(kubeconfig.read_text())
    data["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"  # discard port: refused
    kubeconfig.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["cancel", "some-job"])
    assert result.exit_code == 75 and "unreachable" in result.output


def subjects_file(tmp_path, output_root, rows=None):
    rows = rows or [
        {"id": "dog", "instance_data": "s3://photos/dog/", "class_noun": "dog"},
        {"id": "teapot", "instance_data": "s3://photos/teapot/", "class_noun": "teapot",
         "learning_rate": 2.0e-6},
        {"id": "vase", "instance_data": "s3://photos/vase/", "class_noun": "vase"}]
    path = tmp_path / "night-42.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"output": f"{output_root}/{{id}}/",
                                                 "max_train_steps": 800}, "subjects": rows}))
    return path


def test_batch_dry_run_prints_every_job(no_cluster, tmp_path):
    docs = list(yaml.safe_load_all(run("batch", subjects_file(tmp_path, "s3://runs/n42"),
                                       "--dry-run", "-o", "yaml")))
    assert [d["metadata"]["labels"]["dreambooth-job/subject"] for d in docs] == ["dog", "teapot", "vase"]
    listed = json.loads(run("batch", subjects_file(tmp_path, "s3://runs/n42"), "--dry-run", "-o", "json"))
    assert listed["kind"] == "List" and listed["items"] == docs


def test_thirty_row_csv_dry_run(no_cluster, tmp_path):
    path = tmp_path / "dreambooth.csv"
    path.write_text("id,instance_data,class_noun\n" + "".join(
        f"{subject},s3://dreambooth-dataset/{subject}/,{noun}\n" for subject, noun in dataset_subjects()))
    docs = list(yaml.safe_load_all(run("batch", path, "--set", "output=s3://runs/{id}/",
                                       "--set", "batch_id=night-43", "--dry-run", "-o", "yaml")))
    assert len(docs) == 30 and len({d["metadata"]["name"] for d in docs}) == 30
    assert {d["metadata"]["labels"]["dreambooth-job/batch"] for d in docs} == {"night-43"}
    for doc in docs:
        kubernetes_validate.validate(doc, "1.31.0", strict=True)


def test_batch_reports_every_bad_row_and_exits_2(kubeconfig, tmp_path, namespace):
    path = tmp_path / "night.csv"
    path.write_text("id,instance_data,class_noun,max_train_steps\n"
                    "dog,s3://p/dog/,dog,800\n"
                    "cat,s3://p/cat/,,800\n"
                    "can,s3://p/can/,can,lots\n"
                    "vase,,vase,\n")
    result = CliRunner().invoke(main, ["batch", str(path), "--set", "output=s3://r/{id}/"])
    assert result.exit_code == 2
    lines = [line.strip() for line in result.output.splitlines()]
    assert lines[0].endswith("3 problem(s), nothing was submitted:")
    assert [line.split(":")[0] for line in lines[1:]] == [
        "line 3 (id cat)", "line 4 (id can)", "line 5 (id vase)"]
    from dreambooth_job.k8s import Connection

    assert not Connection.from_environment().batch.list_namespaced_job(namespace).items


def test_batch_status_report_cancel(kubeconfig, namespace, tmp_path, bucket):
    root = f"s3://{bucket}/night-42"
    path = subjects_file(tmp_path, root)
    out = run("batch", path)
    assert out.splitlines()[-1] == ("batch night-42: 3 created, 0 already succeeded, "
                                    "0 already queued or running")
    assert "0 created, 0 already succeeded, 3 already queued or running" in run("batch", path)

    names = {s: job_name(s, "night-42") for s in ("dog", "teapot", "vase")}
    from dreambooth_job.k8s import Connection

    conn = Connection.from_environment()
    write_completed_result(f"{root}/dog/", "dog", dino=0.7, loss=0.0812, grid=b"\x89PNG dog")
    complete(conn, names["dog"])
    start(conn, names["teapot"])

    table = run("status", "--batch", path).splitlines()
    assert table[0].split() == ["SUBJECT", "PHASE", "RETRIES", "DURATION", "LOSS", "WEIGHTS", "OUTPUT",
                                "REASON"]
    assert table[1].split()[:6] == ["dog", "succeeded", "0", "20m00s", "0.0812", "full"]
    assert table[2].split()[:2] == ["teapot", "running"] and table[3].split()[:2] == ["vase", "pending"]
    assert table[-1] == "3 subject(s): 1 succeeded, 1 running, 1 pending"

    data = json.loads(run("status", "--batch", path, "-o", "json"))
    assert data["summary"] == {"succeeded": 1, "running": 1, "pending": 1}
    assert data["subjects"][0]["metrics"]["dino"] == 0.7
    assert json.loads(run("status", names["dog"], "-o", "json"))["subjects"][0]["phase"] == "succeeded"
    by_label = json.loads(run("status", "-l", "dreambooth-job/batch=night-42", "-o", "json"))
    assert sorted(s["subject_id"] for s in by_label["subjects"]) == ["dog", "teapot", "vase"]

    out = run("report", "--batch", path, "--output", f"s3://{bucket}/night-42/report/")
    assert "report: s3://" in out and "(1 sample grids)" in out
    from dreambooth_job.storage import places as storage

    report = json.loads(storage.read_bytes(f"s3://{bucket}/night-42/report/report.json"))
    assert [r["subject_id"] for r in report["subjects"]] == ["dog", "teapot", "vase"]
    assert storage.read_bytes(f"s3://{bucket}/night-42/report/images/dog.png") == b"\x89PNG dog"
    assert b"images/dog.png" in storage.read_bytes(f"s3://{bucket}/night-42/report/index.html")

    assert sorted(run("cancel", "--batch", path).split("\n")[:-1]) == sorted(
        f"deleted job {n}" for n in names.values())
    # Foreground deletion: the garbage collector removes each Job once its pods are gone.
    wait_until(lambda: not conn.batch.list_namespaced_job(namespace).items, 30, "the Jobs to go")
    after = json.loads(run("status", "--batch", path, "-o", "json"))["subjects"]
    # The Jobs are gone; the dog's outputs are not, so it still reads as succeeded.
    assert [s["phase"] for s in after] == ["succeeded", "not-submitted", "not-submitted"]


def test_watch_stops_once_everything_finished(kubeconfig, namespace):
    run("submit", *DOG)
    from dreambooth_job.k8s import Connection

    complete(Connection.from_environment(), job_name("dog"))
    out = run("status", job_name("dog"), "--watch", "--interval", 0.1)
    assert "succeeded" in out and out.strip().endswith("1 subject(s): 1 succeeded")


def test_status_needs_exactly_one_source(kubeconfig):
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 2 and "exactly one" in result.output


# ----------------------------------------------------------------------------------------------
# Issue 23: the operator's prefixes, ceilings and the pod's own options at `submit` and `batch`.

def error_line(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    [line] = result.output.strip().splitlines()
    return line


def test_submit_refuses_a_vae_outside_the_operators_prefixes(no_cluster, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES", "s3://photos/,s3://runs/")
    run("submit", *DOG, "--vae", "s3://runs/vae/", "--dry-run")
    line = error_line("submit", *DOG, "--vae", "s3://models/tenant-b/vae/", "--dry-run")
    assert "--vae s3://models/tenant-b/vae/ is outside the prefixes" in line


def test_submit_refuses_an_option_the_pod_sets(no_cluster, tmp_path):
    assert "--cache-dir is set by the pod" in error_line("submit", *DOG, "--cache-dir", "/etc",
                                                         "--dry-run")
    config = tmp_path / "job.yaml"
    config.write_text("cache_dir: /etc\n")
    assert "--cache-dir is set by the pod" in error_line("submit", *DOG, "--config", config,
                                                         "--dry-run")


@pytest.mark.parametrize("args, fragment", [
    (["--termination-grace-seconds", "31536000"],
     "--termination-grace-seconds 31536000 is above the operator's ceiling of 600"),
    (["--gradient-accumulation-steps", "100000"],
     "--gradient-accumulation-steps 100000 is above the operator's ceiling of 64"),
    (["--termination-grace-period-seconds", "31536005"],
     "the pod's grace period (31536005 s) is above the operator's ceiling of 600 s"),
    (["--gpus", "64"], "gpus 64 is above the operator's ceiling of 8 (DREAMBOOTH_OPERATOR_MAX_GPUS)"),
    (["--resources", '{"limits": {"memory": "4Ti"}}'],
     "resources.limits.memory 4Ti is above the operator's ceiling of 512Gi"),
    (["--resources", '{"requests": {"cpu": "1000"}}'],
     "resources.requests.cpu 1000 is above the operator's ceiling of 64"),
    (["--ceilings", "{max_gpus: 1}", "--gpus", "2"], "gpus 2 is above the operator's ceiling of 1"),
])
def test_submit_refuses_a_request_above_an_operator_ceiling(no_cluster, args, fragment):
    assert fragment in error_line("submit", *DOG, *args, "--dry-run")


def test_a_batch_row_cannot_set_the_pods_grace_period(no_cluster, tmp_path):
    subjects = tmp_path / "night.yaml"
    subjects.write_text("subjects:\n  - {id: dog, instance_data: s3://photos/dog/, class_noun: dog,"
                        " output: s3://runs/dog/, termination_grace_seconds: 31536000}\n")
    result = CliRunner().invoke(main, ["batch", str(subjects), "--dry-run"])
    assert result.exit_code == 2 and "terminationGracePeriodSeconds" not in result.output
    assert "--termination-grace-seconds 31536000 is above the operator's ceiling" in result.output


def test_the_job_carries_the_operators_prefixes_and_ceilings_to_the_pod(no_cluster, monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES", "s3://photos/,s3://runs/")
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS", "1000")
    manifest = yaml.safe_load(run("submit", *DOG, "--ceilings", "{max_lora_rank: 32}", "--dry-run"))
    env = {e["name"]: e.get("value")
           for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: v for k, v in env.items() if k.startswith("DREAMBOOTH_OPERATOR_")} == {
        "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES": "s3://photos/,s3://runs/",
        "DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS": "1000", "DREAMBOOTH_OPERATOR_MAX_LORA_RANK": "32"}


def test_the_cluster_settings_ceilings_hold_for_every_row_of_a_batch(no_cluster, tmp_path):
    subjects = tmp_path / "night.yaml"
    subjects.write_text("subjects:\n  - {id: dog, instance_data: s3://photos/dog/, class_noun: dog,"
                        " output: s3://runs/dog/, max_train_steps: 800}\n")
    run("batch", subjects, "--dry-run")
    result = CliRunner().invoke(main, ["batch", str(subjects), "--ceilings", "{max_train_steps: 500}",
                                       "--dry-run"])
    assert result.exit_code == 2
    assert "dog: --max-train-steps 800 is above the operator's ceiling of 500" in result.output
