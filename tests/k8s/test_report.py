"""The batch report: worst subjects first, final grids copied beside a static page, JSON summary."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import urllib.parse

from k8s_support import write_completed_result

from dreambooth_job.k8s import JobStatus, Phase
from dreambooth_job.k8s.batch_report import final_grid, render_html, run_page, worst_first, write_report
from dreambooth_job.k8s.status import load_result
from dreambooth_job.outputs.result_reader import parse_record
from dreambooth_job.outputs.run_page import PAGE_FILE, render
from dreambooth_job.storage import places as storage

PNG = b"\x89PNG\r\n\x1a\n fake grid of "


def finished(tmp_path, subject, dino=None, phase=Phase.SUCCEEDED, reason=None):
    output = tmp_path / "runs" / subject
    status = JobStatus(name=f"night-{subject}", namespace="ml", phase=phase, subject_id=subject,
                       output=str(output), failure_reason=reason)
    if phase is Phase.SUCCEEDED:
        write_completed_result(output, subject, dino=dino, grid=PNG + subject.encode())
        load_result(status)
    return status


def test_failures_first_then_lowest_dino(tmp_path):
    statuses = [finished(tmp_path, "dog", 0.8), finished(tmp_path, "cat", 0.4),
                finished(tmp_path, "vase", phase=Phase.FAILED, reason="exit 2"),
                finished(tmp_path, "can", phase=Phase.RUNNING), finished(tmp_path, "clock", 0.6)]
    order = [s.subject_id for s in worst_first(statuses)]
    assert order == ["vase", "cat", "clock", "dog", "can"]


def test_without_metrics_the_file_order_stays(tmp_path):
    statuses = [finished(tmp_path, "dog"), finished(tmp_path, "cat"),
                finished(tmp_path, "vase", phase=Phase.FAILED)]
    assert [s.subject_id for s in worst_first(statuses)] == ["vase", "dog", "cat"]


def test_final_grid_is_the_last_step():
    samples = ["s3://r/dog/samples/step-000800.png", "s3://r/dog/samples/step-000200.png"]
    assert final_grid(samples, "s3://r/dog/") == samples[0]
    assert final_grid([], "s3://r/dog/") is None


def test_report_page_shows_every_grid_status_and_metrics(tmp_path):
    statuses = [finished(tmp_path, "dog", 0.8), finished(tmp_path, "cat", 0.4),
                finished(tmp_path, "vase", phase=Phase.FAILED, reason="exit 2 (bad input): <no photos>")]
    target = tmp_path / "report"
    write_report(statuses, str(target), batch_id="night-42")

    data = json.loads((target / "report.json").read_text())
    assert data["summary"] == {"failed": 1, "succeeded": 2} and data["sorted_by"] == "dino"
    assert [r["subject_id"] for r in data["subjects"]] == ["vase", "cat", "dog"]
    assert data["subjects"][1]["metrics"]["dino"] == 0.4
    assert data["subjects"][1]["grid_source"].endswith("samples/step-000800.png")
    assert (target / "images" / "cat.png").read_bytes() == PNG + b"cat"  # the final grid

    page = (target / "index.html").read_text()
    assert page.index(">vase<") < page.index(">cat<") < page.index(">dog<")
    assert "<img src='images/cat.png'" in page and "<img src='images/dog.png'" in page
    assert "&lt;no photos&gt;" in page  # escaped
    assert "<dt>dino</dt><dd>0.4</dd>" in page


def test_embedded_report_stands_alone(tmp_path):
    target = tmp_path / "report"
    write_report([finished(tmp_path, "dog", 0.8)], str(target), batch_id="b", embed_images=True)
    assert "src='data:image/png;base64," in (target / "index.html").read_text()
    assert not (target / "images").exists()
    assert json.loads((target / "report.json").read_text())["subjects"][0]["grid"] is None


def test_evaluated_results_sort_on_the_finetuned_dino_and_hide_the_protocol():
    from dreambooth_job.k8s.batch_report import numeric_metrics

    def evaluated(subject: str, dino: float) -> JobStatus:
        row = {"dino": dino, "clip_i": 0.5, "div": None, "unavailable": {"div": "no LPIPS"}}
        metrics = {"base": {**row, "dino": 0.1}, "finetuned": row, "protocol": {"seeds": [0, 1]}}
        return JobStatus(name=f"night-{subject}", namespace="ml", phase=Phase.SUCCEEDED,
                         subject_id=subject, output=f"/runs/{subject}",
                         result=parse_record({"metrics": metrics}))

    good, bad = evaluated("good", 0.8), evaluated("bad", 0.3)
    assert [s.subject_id for s in worst_first([good, bad])] == ["bad", "good"]
    assert numeric_metrics(good) == {"dino": 0.8, "clip_i": 0.5, "base_dino": 0.1, "base_clip_i": 0.5}


# --- result.json is tenant-written: a forged one copies nothing from elsewhere ---------------------

def forged(tmp_path, subject: str, samples: list[str]) -> JobStatus:
    """A completed run whose result.json lists `samples` instead of its own grids."""
    output = tmp_path / "runs" / subject
    write_completed_result(output, subject, grid=PNG + subject.encode())
    result = json.loads((output / "result.json").read_text())
    result["outputs"]["samples"] = samples
    (output / "result.json").write_text(json.dumps(result))
    status = JobStatus(name=f"night-{subject}", namespace="ml", phase=Phase.SUCCEEDED,
                       subject_id=subject, output=str(output))
    load_result(status)
    return status


def test_a_forged_result_copies_no_file_from_outside_the_subjects_output(tmp_path):
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(PNG + b"aws_secret_access_key = hunter2")  # even one that looks like a PNG
    other = finished(tmp_path, "other-tenant")
    other_grid = other.result.samples[-1]
    statuses = [
        forged(tmp_path, "abs", [str(secret)]),
        forged(tmp_path, "other", [other_grid]),
        forged(tmp_path, "dots", [str(tmp_path / "runs" / "dots" / "samples" / ".." / ".." /
                                      "other-tenant" / "samples" / "step-000800.png")]),
        forged(tmp_path, "nested", [str(tmp_path / "runs" / "nested" / "samples" / "x" / "y.png")]),
    ]
    link = tmp_path / "runs" / "linked" / "samples" / "step-000900.png"
    statuses.append(forged(tmp_path, "linked", [str(link)]))
    link.symlink_to(secret)
    linked_dir = tmp_path / "runs" / "linked-dir"
    statuses.append(forged(tmp_path, "linked-dir", [str(linked_dir / "samples" / "credentials.png")]))
    (linked_dir / "samples").rename(linked_dir / "own-samples")
    (linked_dir / "samples").symlink_to(secret.parent)
    (secret.parent / "credentials.png").write_bytes(secret.read_bytes())

    target = tmp_path / "report"
    report = write_report(statuses, str(target), batch_id="b")
    embedded = write_report(statuses, str(tmp_path / "embedded"), batch_id="b", embed_images=True)

    assert [r["grid"] for r in report["subjects"] + embedded["subjects"]] == [None] * 12
    assert not (target / "images").exists()
    for page in (target / "index.html", tmp_path / "embedded" / "index.html"):
        assert "hunter2" not in page.read_text()
    sources = {r["subject_id"]: r["grid_source"] for r in report["subjects"]}
    assert sources["abs"] is sources["other"] is sources["dots"] is sources["nested"] is None


def test_only_png_grids_within_the_size_cap_are_copied(tmp_path, monkeypatch):
    from dreambooth_job.k8s import batch_report as report_module

    monkeypatch.setattr(report_module, "MAX_GRID_BYTES", len(PNG) + 10)
    small, large = finished(tmp_path, "small"), finished(tmp_path, "large-subject-name")
    text = forged(tmp_path, "text", [])
    grid = tmp_path / "runs" / "text" / "samples" / "step-000800.png"
    grid.write_bytes(b"aws_secret_access_key = hunter2")
    text.result = dataclasses.replace(text.result, samples=(str(grid),))

    report = write_report([small, large, text], str(tmp_path / "report"), batch_id="b")
    grids = {r["subject_id"]: r["grid"] for r in report["subjects"]}
    assert grids == {"small": "images/small.png", "large-subject-name": None, "text": None}


def test_grids_are_read_from_the_rows_own_s3_prefix_only(bucket):
    run = f"s3://{bucket}/runs"
    write_completed_result(f"{run}/dog/", "dog", grid=PNG + b"dog")
    write_completed_result(f"{run}/cat/", "cat", grid=PNG + b"cat")
    result = json.loads(storage.read_bytes(f"{run}/cat/result.json"))
    result["outputs"]["samples"] = [f"{run}/dog/samples/step-000800.png",
                                    f"{run}/cat/samples/../../dog/samples/step-000800.png"]
    storage.write_bytes(f"{run}/cat/result.json", json.dumps(result).encode())
    statuses = []
    for subject in ("dog", "cat"):
        status = JobStatus(name=f"night-{subject}", namespace="ml", phase=Phase.SUCCEEDED,
                           subject_id=subject, output=f"{run}/{subject}/")
        load_result(status)
        statuses.append(status)

    report = write_report(statuses, f"s3://{bucket}/report/", batch_id="b")
    assert {r["subject_id"]: r["grid"] for r in report["subjects"]} == {
        "dog": "images/dog.png", "cat": None}
    assert storage.read_bytes(f"s3://{bucket}/report/images/dog.png") == PNG + b"dog"
    assert not storage.exists(f"s3://{bucket}/report/images/cat.png")


def test_the_report_names_each_subjects_weights_full_or_lora(tmp_path):
    dog = finished(tmp_path, "dog", 0.8)
    cat = JobStatus(name="night-cat", namespace="ml", phase=Phase.SUCCEEDED, subject_id="cat",
                    output=str(tmp_path / "runs" / "cat"))
    write_completed_result(cat.output, "cat", dino=0.5, grid=PNG + b"cat", lora=True)
    load_result(cat)
    target = tmp_path / "report"
    write_report([dog, cat], str(target), batch_id="night-42")
    rows = {r["subject_id"]: r for r in json.loads((target / "report.json").read_text())["subjects"]}
    assert (rows["dog"]["weights"], rows["cat"]["weights"]) == ("full", "lora")
    assert rows["cat"]["outputs"]["model"] is None and len(rows["cat"]["outputs"]["lora"]) == 2
    page = (target / "index.html").read_text()
    assert "<dt>weights</dt><dd>lora</dd>" in page and "<dt>weights</dt><dd>full</dd>" in page


def write_run_page(output: str) -> None:
    """The page a finished run leaves (outputs/run_page.py), rendered from its result.json."""
    result = json.loads(storage.read_bytes(storage.join(output, "result.json")))
    storage.write_bytes(storage.join(output, PAGE_FILE), render(result, [], versions={}).encode())


def linked_pages(report_page: str) -> list[str]:
    return re.findall(r"<a href='([^']+)'[^>]*>run page</a>", report_page)


def test_the_report_links_each_subjects_run_page_and_the_links_resolve_after_a_sync(bucket, tmp_path):
    night = f"s3://{bucket}/night-42"
    statuses = []
    for subject in ("dog", "cat #2", "vase"):
        output = f"{night}/runs/{subject}/"
        write_completed_result(output, subject, dino=0.5, grid=PNG + subject.encode())
        if subject != "vase":  # a run from before run pages: no link
            write_run_page(output)
        status = JobStatus(name=f"night-{len(statuses)}", namespace="ml", phase=Phase.SUCCEEDED,
                           subject_id=subject, output=output)
        load_result(status)
        statuses.append(status)
    report = write_report(statuses, f"{night}/report/", batch_id="night-42")
    assert {r["subject_id"]: r["page"] for r in report["subjects"]} == {
        "dog": "../runs/dog/index.html", "cat #2": "../runs/cat%20%232/index.html", "vase": None}

    synced = tmp_path / "night-42"
    storage.download_dir(night, synced)  # aws s3 sync s3://.../night-42/ night-42/
    links = linked_pages((synced / "report" / "index.html").read_text())
    assert len(links) == 2
    for link in links:
        target = (synced / "report" / urllib.parse.unquote(link)).resolve()
        assert target.is_file() and target.parent.parent == synced / "runs"
        assert "<h1>" + html.escape(target.parent.name) in target.read_text()


def test_a_local_report_links_local_run_pages(tmp_path):
    status = finished(tmp_path, "dog", 0.8)
    write_run_page(status.output)
    target = tmp_path / "report"
    write_report([status], str(target), batch_id="b")
    [link] = linked_pages((target / "index.html").read_text())
    assert (target / link).resolve() == (tmp_path / "runs" / "dog" / PAGE_FILE)


def test_a_page_in_another_bucket_or_with_dot_segments_is_named_not_linked(moto_bucket):
    # moto keeps keys verbatim ("./" included), as S3 does
    for output in (f"s3://{moto_bucket}/runs/./dog/", f"s3://{moto_bucket}/runs/cat/"):
        write_completed_result(output, "subject")
        write_run_page(output)
    assert run_page(f"s3://{moto_bucket}/runs/./dog/", f"s3://{moto_bucket}/report/") == (
        f"s3://{moto_bucket}/runs/./dog/index.html", None)
    link = run_page(f"s3://{moto_bucket}/runs/cat/", f"s3://{moto_bucket}/report/")[1]
    assert link == "../runs/cat/index.html"
    assert run_page(f"s3://{moto_bucket}/runs/cat/", "s3://other-bucket/report/")[1] is None
    assert run_page(f"s3://{moto_bucket}/runs/none/", f"s3://{moto_bucket}/report/") == (None, None)


def test_a_run_page_link_is_a_plain_relative_path_whatever_the_key(moto_bucket):
    """A tenant names its output's key: the link can still be no scheme (javascript:), host,
    query or fragment, only a relative path that opens the page apart from the report."""
    for output, expected in ((f"s3://{moto_bucket}/javascript:alert(1)/", "../javascript%3Aalert%281%29/"),
                             (f"s3://{moto_bucket}/runs/a?b#c'>x/", "../runs/a%3Fb%23c%27%3Ex/")):
        write_completed_result(output, "subject")
        write_run_page(output)
        assert run_page(output, f"s3://{moto_bucket}/report/")[1] == expected + PAGE_FILE
    status = JobStatus(name="night-x", namespace="ml", phase=Phase.SUCCEEDED, subject_id="x",
                       output=f"s3://{moto_bucket}/javascript:alert(1)/")
    load_result(status)
    page = render_html(write_report([status], f"s3://{moto_bucket}/report/", batch_id="b"))
    assert ("<a href='../javascript%3Aalert%281%29/index.html' target='_blank' "
            "rel='noopener noreferrer' referrerpolicy='no-referrer'>run page</a>") in page
