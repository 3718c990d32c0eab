"""The run page's parts without a run: escaping and redaction of tenant strings, the grids it links,
the scores table, the loss curve, and the loss history a checkpoint keeps."""

from __future__ import annotations

import json
import re

from PIL import Image

from dreambooth_job.events import TrainProgress
from dreambooth_job.generation.sampling import image_grid
from dreambooth_job.outputs import loss_history
from dreambooth_job.outputs.loss_history import HISTORY_FILE, LossHistory, LossPoint
from dreambooth_job.outputs.result import (
    BaseModelInfo,
    Identifier,
    Outputs,
    Photos,
    Prompts,
    Rejection,
    RunResult,
    Training,
)
from dreambooth_job.outputs.run_page import MAX_DRAWN_POINTS, loss_svg, render, thumbnail_uri

HOSTILE = "<img src=x onerror=alert(1)>'\"&"
SECRET_URL = "https://bob:hunter2@example.com/x?X-Amz-Signature=abc123"


def hostile_result() -> dict:
    result = RunResult(
        job_id=HOSTILE, subject_id=f"dog{HOSTILE}", config={"instance_data": SECRET_URL, "note": HOSTILE},
        config_fingerprint="f", identifier=Identifier(token=HOSTILE, chosen="user"),
        prompts=Prompts(instance=f"a {HOSTILE} dog", class_prompt="a dog", validation=[SECRET_URL]),
        base_model=BaseModelInfo(source=SECRET_URL, family="flux2-klein", license=HOSTILE),
        training=Training(max_train_steps=4),
        photos=Photos(used=[f"{HOSTILE}.jpg"], rejected=[Rejection(file=f"{HOSTILE}.txt", reason=HOSTILE)]),
        outputs=Outputs(result="s3://b/r/result.json"))
    result.failed(2, f"bad photo {HOSTILE} at {SECRET_URL}")
    return result.to_json()  # what publish renders: result.json's redacted record


def test_tenant_strings_are_escaped_and_redacted():
    page = render(hostile_result(), [], thumbnails=["data:image/jpeg;base64,AAAA"],
                  grids=["step-000002.png"], versions={"torch": "2"})
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;&#x27;&quot;&amp;") >= 8
    assert "<tr><th>licence</th><td>&lt;img src=x onerror=alert(1)&gt;&#x27;&quot;&amp;</td></tr>" in page
    assert "<tr><th>family</th><td>flux2-klein</td></tr>" in page
    assert "hunter2" not in page and "abc123" not in page
    # The only images: the thumbnail and the grid; the only link targets: the grid and result.json.
    assert re.findall(r"<img src='([^']*)'", page) == ["data:image/jpeg;base64,AAAA",
                                                       "samples/step-000002.png"]
    assert re.findall(r"href='([^']*)'", page) == ["samples/step-000002.png", "result.json"]


def test_only_plain_grid_names_are_linked_in_step_order():
    names = ["step-000010.png", "step-000002.png", "../x.png", "step-000004.png' onerror='x.png",
             "other.png", "step-000003.jpg"]
    page = render(hostile_result(), [], grids=names, versions={})
    assert re.findall(r"<img src='samples/([^']*)'", page) == ["step-000002.png", "step-000010.png"]


def test_a_thumbnail_that_is_not_an_image_data_uri_is_left_out():
    page = render(hostile_result(), [], thumbnails=["javascript:alert(1)"], versions={})
    assert "javascript:" not in page


def test_scores_against_the_base_model():
    result = hostile_result()
    result["metrics"] = {"base": {"dino": 0.25, "clip_t": 0.3}, "finetuned": {"dino": 0.75, "clip_t": 0.25},
                         "protocol": {"seed": 0}}
    page = render(result, [], versions={})
    assert ("<tr><td>dino</td><td class='num'>0.2500</td><td class='num'>0.7500</td>"
            "<td class='num'>0.5000</td></tr>") in page
    assert "<td>clip_t</td>" in page and "<td>pres</td>" not in page
    assert "Evaluation" not in render(hostile_result(), [], versions={})


def test_loss_curve_draws_instance_and_prior_loss_per_logged_step():
    points = [LossPoint(step, 1.0 / step, 1.0 / step, 0.5) for step in (2, 4, 6)]
    svg = loss_svg(points)
    lines = re.findall(r"<polyline points='([^']*)'", svg)
    assert [len(line.split()) for line in lines] == [3, 3]
    assert "instance loss" in svg and "prior loss" in svg and "step 2<" in svg and "step 6<" in svg
    without_prior = loss_svg([LossPoint(1, 1.0, 1.0, 0.0)])
    assert len(re.findall("<polyline", without_prior)) == 1 and "prior loss" not in without_prior
    assert "no loss logged" in loss_svg([])


def test_a_long_curve_is_thinned_to_what_a_page_can_show():
    points = [LossPoint(step, 1.0, 1.0, 0.0) for step in range(1, 100_001)]
    [line] = re.findall(r"<polyline points='([^']*)'", loss_svg(points))
    assert 1000 < len(line.split()) <= MAX_DRAWN_POINTS + 1
    assert "step 1<" in loss_svg(points) and "step 100000<" in loss_svg(points)


def test_thumbnail_is_a_small_jpeg():
    uri = thumbnail_uri(Image.new("RGB", (640, 320), "red"))
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 10_000


def progress(step: int, loss: float) -> TrainProgress:
    return TrainProgress(step=step, max_steps=10, loss=loss, instance_loss=loss, prior_loss=loss / 2,
                         learning_rate=1e-4, steps_per_second=1.0, images_per_second=1.0, eta_seconds=1.0)


def test_loss_history_round_trips_through_a_checkpoint_up_to_its_step(tmp_path):
    history = LossHistory()
    for step in (1, 2, 3, 4):
        history.train_progress(progress(step, 1.0 / step))
    history.save(tmp_path)
    resumed = LossHistory()
    resumed.load(tmp_path, up_to_step=3)
    assert resumed.points == history.points[:3]


def test_a_forged_or_missing_loss_history_gives_an_empty_or_partial_curve(tmp_path):
    resumed = LossHistory()
    resumed.load(tmp_path, up_to_step=10)  # a checkpoint from before the history was kept
    assert resumed.points == []
    (tmp_path / HISTORY_FILE).write_text("{not json")
    resumed.load(tmp_path, up_to_step=10)
    assert resumed.points == []
    (tmp_path / HISTORY_FILE).write_text(json.dumps([
        {"step": 1, "loss": 1.0, "instance_loss": 1.0, "prior_loss": 0.0}, {"step": "2"}, 7,
        {"step": 3, "loss": "NaN", "instance_loss": 1.0, "prior_loss": 0.0},
        {"step": 4, "loss": 0.5, "instance_loss": 0.5, "prior_loss": True}]))
    resumed.load(tmp_path, up_to_step=10)
    assert resumed.points == [LossPoint(1, 1.0, 1.0, 0.0)]


def test_an_oversized_loss_history_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(loss_history, "MAX_BYTES", 100)
    point = {"step": 1, "loss": 1.0, "instance_loss": 1.0, "prior_loss": 0.0}
    (tmp_path / HISTORY_FILE).write_text(json.dumps([point] + [{"pad": "x" * 200}]))
    resumed = LossHistory()
    resumed.load(tmp_path, up_to_step=10)
    assert resumed.points == []
    (tmp_path / HISTORY_FILE).write_text(json.dumps([point]))
    resumed.load(tmp_path, up_to_step=10)
    assert resumed.points == [LossPoint(1, 1.0, 1.0, 0.0)]


def test_grid_labels_are_redacted():
    rows = [[Image.new("RGB", (8, 8), "blue")]]
    assert image_grid(rows, [SECRET_URL]).tobytes() == image_grid(
        rows, ["https://[REDACTED]@example.com/x?X-Amz-Signature=[REDACTED]"]).tobytes()
    assert image_grid(rows, [SECRET_URL]).tobytes() != image_grid(rows, ["a dog"]).tobytes()
