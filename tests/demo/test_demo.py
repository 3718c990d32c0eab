"""`dreambooth-job demo`: the README's first command shows DreamBooth learning the toy world's
subject through the real job (local S3 server, prior preservation), and runs the same path on a
user's own photos with the tiny random model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from browser import chromium, open_page
from click.testing import CliRunner
from helpers import make_photo
from PIL import Image

from dreambooth_job.cli import main
from dreambooth_job.devtools import demo
from dreambooth_job.toyworld import bases, before_after, features, measure

# At least half the smallest gain measured over seeds 0-2 (docs/toy-world.md, the demo's section).
FIDELITY_MARGIN = 0.4
FLOW_FIDELITY_MARGIN = 0.2
"""The same for the flow-matching base (docs/toy-world.md, its section)."""


def _subject_match(figure: Image.Image, layout: before_after.Layout, row: int, column: int) -> float:
    tiles = [figure.crop(layout.tile_box(row, column, i)) for i in range(layout.per_cell)]
    return float(np.mean([features.features(tile).subject_match for tile in tiles]))


@pytest.mark.slow
def test_demo_learns_the_toy_subject_and_shows_it_before_and_after(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output

    record = json.loads((tmp_path / demo.RECORD).read_text())
    before, after = record["before"]["subject_fidelity"], record["after"]["subject_fidelity"]
    assert after > before + FIDELITY_MARGIN
    printed = re.search(r"subject fidelity .*: base (\d\.\d\d) -> fine-tuned (\d\.\d\d)", result.output)
    assert printed and printed.groups() == (f"{before:.2f}", f"{after:.2f}")
    assert f"before/after picture: {tmp_path / demo.PICTURE}" in result.output

    # The job went through the object store and trained with prior preservation.
    run = json.loads((tmp_path / "run" / "result.json").read_text())
    assert run["status"] == "succeeded" and run["config"]["prior_preservation"]
    assert run["config"]["instance_data"].startswith("s3://")

    # 3 rows (the prompts) x 2 columns (base, fine-tuned), and the fine-tuned column is the one
    # that draws the subject.
    token = run["identifier"]["token"]
    prompts = measure.subject_prompts(token)
    assert record["rows"] == [f"a {token} ball", f"a {token} ball on a green background", "a ball"]
    assert record["rows"] == [prompts[key] for key in before_after.ROWS]
    assert record["columns"] == ["base", "fine-tuned"]
    layout = before_after.Layout(**record["layout"])
    figure = Image.open(tmp_path / demo.PICTURE)
    assert figure.size == layout.size(rows=3, columns=2)
    figure = figure.convert("RGB")
    assert _subject_match(figure, layout, 0, 1) > _subject_match(figure, layout, 0, 0) + FIDELITY_MARGIN

    # The run's page, as a newcomer opens it: in a real browser, every picture drawn.
    page = tmp_path / "run" / "index.html"
    assert f"run page            {page}" in result.output
    assert chromium(), "chromium is missing: scripts/install-system-deps.sh installs it"
    seen = open_page(page.as_uri())
    assert seen.console_errors == []
    grids = [i for i in seen.images if "/samples/step-" in i["src"]]
    assert grids and all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in seen.images)
    assert token in seen.text and "prior loss" in seen.text


@pytest.mark.slow
def test_demo_on_the_flow_matching_base_learns_the_toy_subject(tmp_path):
    """The FLUX.2 [klein]-shaped toy base through the same job: its transformer learns the subject."""
    result = CliRunner().invoke(main, ["demo", "--base", "flow", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / demo.RECORD).read_text())
    assert record["base"] == "flow"
    assert record["after"]["subject_fidelity"] > record["before"]["subject_fidelity"] + FLOW_FIDELITY_MARGIN
    run = json.loads((tmp_path / "run" / "result.json").read_text())
    assert run["status"] == "succeeded" and run["config"]["prior_preservation"]
    assert run["config"]["base_model"] == str(bases.ASSET_FLOW_BASE_MODEL)
    assert (tmp_path / "run" / "model" / "transformer").is_dir()


@pytest.mark.slow
def test_demo_on_your_photos_runs_the_job_and_says_its_pictures_are_noise(tmp_path):
    photos = tmp_path / "my photos"
    for i in range(3):
        make_photo(photos / f"p{i}.jpg", seed=i)
    (photos / "notes.txt").write_text("not a photo")
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path / "out"), "--photos",
                                       str(photos), "--class-noun", "mug", "--max-train-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "noise by design" in result.output
    run = json.loads((tmp_path / "out" / "run" / "result.json").read_text())
    assert run["status"] == "succeeded"
    assert run["config"]["class_noun"] == "mug" and run["config"]["instance_data"].startswith("s3://")
    assert len(run["photos"]["used"]) == 3


@pytest.mark.parametrize("case", ["missing", "a file", "no photos", "no class noun", "no photos flag",
                                  "empty class noun"])
def test_demo_refuses_bad_photos_options_with_one_line_before_writing_anything(tmp_path, case):
    directory = tmp_path / "photos"
    if case == "a file":
        directory.write_text("x")
    elif case != "missing":
        directory.mkdir()
        (directory / "readme.txt").write_text("x")
        if case == "empty class noun":
            make_photo(directory / "p.jpg", seed=0)
    args, named = {
        "missing": (["--photos", str(directory), "--class-noun", "mug"], [str(directory), "not a directory"]),
        "a file": (["--photos", str(directory), "--class-noun", "mug"], [str(directory), "not a directory"]),
        "no photos": (["--photos", str(directory), "--class-noun", "mug"], [str(directory), "no photos"]),
        "no class noun": (["--photos", str(directory)], ["--photos", "--class-noun", "together"]),
        "no photos flag": (["--class-noun", "mug"], ["--photos", "--class-noun", "together"]),
        "empty class noun": (["--photos", str(directory), "--class-noun", ""], ["--class-noun"]),
    }[case]
    result = CliRunner().invoke(main, ["demo", "--output", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(part in errors[0] for part in named), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything was written
