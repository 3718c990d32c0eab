"""The paper's prompt sets, the live/object choice, and prompt files."""

from __future__ import annotations

import pytest

from dreambooth_job.evaluation import prompts
from dreambooth_job.exit_codes import InvalidInputError

FAKE_TOKEN = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImZha2UifQ.fake-service-account-token"


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


@pytest.fixture
def allowed_dir(tmp_path, monkeypatch):
    """tmp_path as the operator's prompt-file directory."""
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS", str(tmp_path))
    return tmp_path


def test_prompt_file(allowed_dir):
    tmp_path = allowed_dir
    path = tmp_path / "prompts.txt"
    path.write_text("# mine\n\na {identifier} {class_noun} on the moon\n")
    chosen = prompts.load_prompt_set(str(path), "dog")
    assert chosen.name == str(path)
    assert chosen.templates == ("a {identifier} {class_noun} on the moon",)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "a {class_noun} on the moon\n",
                                  "a {identifier} {noun}\n"])
def test_bad_prompt_files_are_invalid_input(allowed_dir, text):
    path = allowed_dir / "prompts.txt"
    path.write_text(text)
    with pytest.raises(InvalidInputError) as error:
        prompts.load_prompt_set(str(path), "dog")
    assert "moon" not in str(error.value)  # errors name lines by number, never quote them


def test_prompt_files_from_s3_need_no_operator_setting_and_errors_never_quote_them(bucket):
    from dreambooth_job.storage import places as storage

    good, bad = f"s3://{bucket}/prompts.txt", f"s3://{bucket}/token.txt"
    storage.write_bytes(good, b"a {identifier} {class_noun} on the moon\n")
    storage.write_bytes(bad, FAKE_TOKEN.encode() + b"\n")
    assert prompts.load_prompt_set(good, "dog").templates == ("a {identifier} {class_noun} on the moon",)
    with pytest.raises(InvalidInputError, match="line 1 lacks") as error:
        prompts.load_prompt_set(bad, "dog")
    assert FAKE_TOKEN not in str(error.value)


def test_unknown_prompt_set_is_invalid_input(allowed_dir):
    with pytest.raises(InvalidInputError, match="neither auto, object, live"):
        prompts.load_prompt_set(str(allowed_dir / "missing.txt"), "dog")


@pytest.mark.parametrize("exists", [True, False])
def test_local_prompt_files_are_refused_without_the_operator_setting(tmp_path, monkeypatch, exists):
    monkeypatch.delenv("DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS", raising=False)
    token = tmp_path / "token"
    if exists:  # a mounted service-account token: it must not be read, let alone echoed
        token.write_text("a {identifier} " + FAKE_TOKEN)
    with pytest.raises(InvalidInputError) as error:
        prompts.load_prompt_set(str(token), "dog")
    message = str(error.value)
    assert str(token) in message and "DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS" in message
    assert FAKE_TOKEN not in message and "\n" not in message


def test_only_the_operators_directories_are_readable(tmp_path, monkeypatch):
    allowed, secrets = tmp_path / "prompts", tmp_path / "secrets"
    allowed.mkdir()
    secrets.mkdir()
    (secrets / "token").write_text("a {identifier} " + FAKE_TOKEN)
    (allowed / "escape.txt").symlink_to(secrets / "token")  # resolved before the check
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS", str(allowed))
    for path in (secrets / "token", allowed / ".." / "secrets" / "token", allowed / "escape.txt"):
        with pytest.raises(InvalidInputError, match="PROMPT_FILE_DIRS") as error:
            prompts.load_prompt_set(str(path), "dog")
        assert FAKE_TOKEN not in str(error.value)
