"""The batch report: worst subjects first, final grids copied beside a static page, JSON summary."""

from __future__ import annotations

import json

from k8s_support import write_completed_result

from dreambooth_job.k8s import JobStatus, Phase
from dreambooth_job.k8s.report import final_grid, worst_first, write_report
from dreambooth_job.k8s.status import load_result

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
    assert final_grid({"outputs": {"samples": samples}}) == samples[0]
    assert final_grid({"outputs": {"samples": []}}) is None


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
    from dreambooth_job.k8s.report import numeric_metrics

    def evaluated(subject: str, dino: float) -> JobStatus:
        row = {"dino": dino, "clip_i": 0.5, "div": None, "unavailable": {"div": "no LPIPS"}}
        metrics = {"base": {**row, "dino": 0.1}, "finetuned": row, "protocol": {"seeds": [0, 1]}}
        return JobStatus(name=f"night-{subject}", namespace="ml", phase=Phase.SUCCEEDED,
                         subject_id=subject, output=f"/runs/{subject}", result={"metrics": metrics})

    good, bad = evaluated("good", 0.8), evaluated("bad", 0.3)
    assert [s.subject_id for s in worst_first([good, bad])] == ["bad", "good"]
    assert numeric_metrics(good) == {"dino": 0.8, "clip_i": 0.5, "base_dino": 0.1, "base_clip_i": 0.5}
