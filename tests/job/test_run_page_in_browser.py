"""The run page, `<output>/index.html`, of real tiny runs against the S3 server, as headless
Chromium renders it: every image loaded, no console error, tenant strings escaped and redacted
(a run of each family), and a resumed run's loss curve whole."""

from __future__ import annotations

import re

import pytest
from browser import chromium, open_page
from click.testing import CliRunner
from helpers import JobProcess, every_family, upload_photos
from PIL import Image

from dreambooth_job.cli import main
from dreambooth_job.exit_codes import ExitCode
from dreambooth_job.outputs.loss_history import HISTORY_FILE
from dreambooth_job.storage import places as storage
from dreambooth_job.storage import s3_client
from dreambooth_job.training.checkpoint import CheckpointStore


@pytest.fixture
def needs_chromium():
    if chromium() is None:
        pytest.fail("chromium is missing and scripts/install-system-deps.sh could not install it "
                    "(Debian package chromium)")
HOSTILE_PROMPT = "a <b>{identifier}</b> {class_noun} & \"<script>alert(1)</script>\" https://bob:hunter2@example.com/x"
TINY = ["--resolution", "64", "--num-class-images", "2", "--sample-steps", "2",
        "--num-validation-images", "1", "--log-every", "1", "--learning-rate", "1e-3",
        "--metrics-port", "0"]


def polyline_points(page: str) -> list[list[str]]:
    """The points of each line of the loss curve, in drawing order (instance loss first)."""
    return [points.split() for points in re.findall(r"<polyline points='([^']*)'", page)]


@every_family
@pytest.mark.usefixtures("needs_chromium")
def test_run_page_shows_photos_grids_loss_and_loads_in_chromium(bucket, photo_dir, family_model, tmp_path):
    (photo_dir / "notes.txt").write_text("not a photo")
    Image.new("RGB", (8, 8)).save(photo_dir / "tiny.png")  # rejected: too small
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    run = f"s3://{bucket}/runs/page-dog/"
    outcome = CliRunner().invoke(main, [
        "train", *TINY, "--max-train-steps", "4", "--sample-every", "2", "--instance-data", photos,
        "--class-noun", "dog", "--base-model", str(family_model.path), "--output", run,
        "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache"),
        "--validation-prompt", HOSTILE_PROMPT], catch_exceptions=False)
    assert outcome.exit_code == ExitCode.OK, outcome.output

    local = tmp_path / "published"
    storage.download_dir(run, local)
    page = (local / "index.html").read_text()
    bucket_name, key = storage.split_s3(storage.join(run, "index.html"))
    head = s3_client.s3_client().head_object(Bucket=bucket_name, Key=key)
    assert head["ContentType"] == "text/html; charset=utf-8"  # rendered when served from the bucket
    assert "hunter2" not in page and "<script>" not in page and "&lt;script&gt;" in page
    seen = open_page((local / "index.html").as_uri(), screenshot=tmp_path / "page.png")

    assert seen.console_errors == []
    assert seen.images, "no image on the page"
    not_loaded = [i["src"][:80] for i in seen.images
                  if not (i["complete"] and i["width"] > 0 and i["height"] > 0)]
    assert not_loaded == []
    grids = [i for i in seen.images if "/samples/step-" in i["src"]]
    assert [i["src"].rsplit("/", 1)[1] for i in grids] == ["step-000002.png", "step-000004.png"]
    assert all(i["shown_width"] > 0 and i["shown_height"] > 0 for i in grids)  # on screen, not hidden
    thumbnails = [i for i in seen.images if i["src"].startswith("data:image/jpeg")]
    assert len(thumbnails) == 4  # photo_dir's four photos
    assert "notes.txt" in seen.text and "tiny.png" in seen.text  # rejected, with reasons
    assert '"<script>alert(1)</script>"' in seen.text  # shown as text, not run
    assert "instance loss" in seen.text and "prior loss" in seen.text
    assert [len(line) for line in polyline_points(page)] == [4, 4]  # --log-every 1, 4 steps
    for phase in ("download", "train", "sample", "upload"):
        assert re.search(rf"\b{phase}\b", seen.text)
    assert "diffusers" in seen.text and "torch" in seen.text
    assert re.search(rf"family\s+{re.escape(family_model.family)}\b", seen.text)
    with Image.open(tmp_path / "page.png") as shot:
        assert shot.width >= 1000 and shot.height > 900  # the whole page, grids included
        assert shot.convert("L").getextrema() != (255, 255)  # not a blank page


STEPS = 8


@pytest.mark.usefixtures("needs_chromium")
def test_resumed_run_page_draws_the_whole_loss_curve(bucket, photo_dir, tiny_model, tmp_path):
    photos = upload_photos(photo_dir, f"s3://{bucket}/photos/dog/")
    run = f"s3://{bucket}/runs/page-resumed/"
    args = ["train", *TINY, "--max-train-steps", str(STEPS), "--checkpoint-every", "2",
            "--progress-interval-seconds", "0", "--log-format", "json", "--instance-data", photos,
            "--class-noun", "dog", "--base-model", str(tiny_model), "--output", run,
            "--class-data", f"s3://{bucket}/class-cache/", "--cache-dir", str(tmp_path / "cache")]
    first = JobProcess(args)
    first.wait_for(rf"step 5/{STEPS}\b")
    first.process.terminate()
    assert first.wait() == ExitCode.TERMINATED, first.output[-3000:]
    checkpoint = CheckpointStore(run, keep=1).list()[0]
    assert any(f["path"] == HISTORY_FILE for f in checkpoint.manifest["files"])
    # The stopped run has a page too: its error and its curve so far.
    stopped = storage.read_bytes(storage.join(run, "index.html")).decode()
    assert "terminated by SIGTERM" in stopped
    assert len(polyline_points(stopped)[0]) == checkpoint.step

    resumed = JobProcess(args)
    assert resumed.wait() == ExitCode.OK, resumed.output[-3000:]
    assert f"at step {checkpoint.step}" in resumed.output
    local = tmp_path / "published"
    storage.download_dir(run, local)
    page = (local / "index.html").read_text()
    assert [len(line) for line in polyline_points(page)] == [STEPS, STEPS]
    assert "step 1<" in page and f"step {STEPS}<" in page  # the axis runs from the first step
    seen = open_page((local / "index.html").as_uri())
    assert seen.console_errors == []
    assert all(i["complete"] and i["width"] > 0 for i in seen.images)
