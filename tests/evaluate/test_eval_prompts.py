"""The paper's prompt sets, the live/object choice, and prompt files."""

from __future__ import annotations

import pytest

from dreambooth_job.evaluation import prompts
from dreambooth_job.exit_codes import InvalidInputError


def test_builtin_sets_are_the_papers_25_prompts():
    live = prompts.load_prompt_set("live", "dog").templates
    objects = prompts.load_prompt_set("object", "dog").templates
    assert len(live) == len(objects) == 25
    assert live[:10] == objects[:10] and live[-5:] == objects[-5:]
    assert "a {identifier} {class_noun} wearing a santa hat" in live
    assert "a {identifier} {class_noun} floating in an ocean of milk" in objects
    assert objects[-1] == "a cube shaped {identifier} {class_noun}"


@pytest.mark.parametrize("class_noun, expected", [
    ("dog", "live"), ("Cat", "live"), ("golden retriever dog", "live"),
    ("stuffed animal", "object"), ("backpack", "object"), ("cartoon", "object")])
def test_auto_picks_live_prompts_for_dogs_and_cats(class_noun, expected):
    assert prompts.load_prompt_set("auto", class_noun).name == expected


def test_text_prompt_drops_the_identifier():
    template = "a {identifier} {class_noun} in the jungle"
    assert prompts.subject_prompt(template, "sks", "dog") == "a sks dog in the jungle"
    assert prompts.text_prompt(template, "dog") == "a dog in the jungle"
    assert prompts.text_prompt("a red {identifier} {class_noun}", "dog") == "a red dog"


def test_select_spreads_over_the_set():
    templates = tuple(f"{i} {{identifier}}" for i in range(25))
    assert prompts.select(templates, 0) == templates
    assert prompts.select(templates, 30) == templates
    assert [t.split()[0] for t in prompts.select(templates, 5)] == ["0", "5", "10", "15", "20"]


def test_prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# mine\n\na {identifier} {class_noun} on the moon\n")
    chosen = prompts.load_prompt_set(str(path), "dog")
    assert chosen.name == str(path)
    assert chosen.templates == ("a {identifier} {class_noun} on the moon",)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "a {class_noun} on the moon\n",
                                  "a {identifier} {noun}\n"])
def test_bad_prompt_files_are_invalid_input(tmp_path, text):
    path = tmp_path / "prompts.txt"
    path.write_text(text)
    with pytest.raises(InvalidInputError):
        prompts.load_prompt_set(str(path), "dog")


def test_unknown_prompt_set_is_invalid_input(tmp_path):
    with pytest.raises(InvalidInputError, match="neither auto, object, live"):
        prompts.load_prompt_set(str(tmp_path / "missing.txt"), "dog")
