"""Captions per photo (training/captions.py): both file conventions, placeholders and ai-toolkit's
[trigger], the identifier prefixed where a caption lacks it, and bad captions refused in one line
naming their file (exit 2) before anything trains; the run page shows each photo's caption."""

from __future__ import annotations

import json

import jsonschema
import pytest

from dreambooth_job.config.choices import MAX_PROMPT_LENGTH
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.outputs import run_page
from dreambooth_job.storage.places import StoredFile
from dreambooth_job.training import captions, subject_photos
from dreambooth_job.training.captions import Caption


def write(directory, files: dict[str, bytes | str]):
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return directory


def jsonl(*entries) -> str:
    return "".join(json.dumps(e) + "\n" for e in entries)


def refused(directory, used=("dog1.jpg", "dog2.jpg"), rejected=()) -> str:
    with pytest.raises(InvalidInputError) as caught:
        captions.read_captions(directory, list(used), list(rejected))
    assert caught.value.exit_code == ExitCode.INVALID_INPUT
    assert "\n" not in caught.value.message
    return caught.value.message


def test_text_files_beside_photos_and_captions_jsonl_give_each_photo_its_caption(tmp_path):
    write(tmp_path, {"dog1.txt": "a {identifier} dog\n on  grass\n",
                     "sub/dog3.TXT": "\ufeffsleeping",  # a BOM, an upper-case suffix, a subfolder
                     captions.CAPTIONS_FILE: jsonl({"file": "dog2.jpg", "caption": "[trigger] running"})})
    found = captions.read_captions(
        tmp_path, ["dog1.jpg", "dog1.png", "dog2.jpg", "sub/dog3.png", "dog4.jpg"], [])
    assert found == {"dog1.jpg": Caption("a {identifier} dog on grass", "dog1.txt"),
                     "dog1.png": Caption("a {identifier} dog on grass", "dog1.txt"),
                     "sub/dog3.png": Caption("sleeping", "sub/dog3.TXT"),
                     "dog2.jpg": Caption("[trigger] running", "captions.jsonl line 1")}


def test_no_caption_files_no_captions(tmp_path):
    assert captions.read_captions(tmp_path / "absent", ["dog1.jpg"], []) == {}


def test_placeholders_and_trigger_are_filled_and_the_identifier_prefixed_where_missing():
    def fill(text):
        return captions.fill(Caption(text, "x.txt"), "sks", "dog")

    assert fill("a photo of {identifier} {class_noun} in snow") == "a photo of sks dog in snow"
    assert fill("[trigger] on a sofa") == "sks on a sofa"
    # No identifier as a word (a longer word holding it does not count): prefixed.
    assert fill("a {class_noun} on a beach") == "sks, a dog on a beach"
    assert fill("sksx tags, outdoors") == "sks, sksx tags, outdoors"
    assert fill("braces {{kept}}, sks") == "braces {kept}, sks"


def test_the_listing_downloads_captions_of_photos_and_skips_other_files():
    files = [StoredFile(name, size) for name, size in (
        ("dog1.jpg", 10), ("dog1.txt", 10), ("captions.jsonl", 10), ("notes.txt", 10),
        ("sub/captions.jsonl", 10))]
    listing = subject_photos.select_photos(files, TrainConfig(instance_data="s3://b/p/"))
    assert [f.relative_path for f in listing.photos] == ["dog1.jpg"]
    assert [f.relative_path for f in listing.captions] == ["dog1.txt", "captions.jsonl"]
    assert [r.file for r in listing.skipped] == ["notes.txt", "sub/captions.jsonl"]


@pytest.mark.parametrize(("name", "size"), [("dog1.txt", captions.MAX_CAPTION_BYTES + 1),
                                            ("captions.jsonl", 10**9)])
def test_caption_files_over_their_byte_bound_are_refused_before_download(name, size):
    files = [StoredFile("dog1.jpg", 10), StoredFile(name, size)]
    with pytest.raises(InvalidInputError, match=rf"^caption file {name} holds {size} bytes"):
        subject_photos.select_photos(files, TrainConfig(instance_data="s3://b/p/"))


def test_a_caption_too_long_is_refused_naming_its_file(tmp_path):
    write(tmp_path, {"dog1.txt": "x" * (MAX_PROMPT_LENGTH + 1)})
    assert refused(tmp_path).startswith(f"dog1.txt: the caption has {MAX_PROMPT_LENGTH + 1} characters")


def test_a_caption_not_utf8_is_refused_naming_its_file(tmp_path):
    write(tmp_path, {"dog2.txt": b"caf\xe9 sks"})
    assert refused(tmp_path) == "caption file dog2.txt is not UTF-8 (byte 3)"


def test_more_captions_than_photos_are_refused(tmp_path):
    write(tmp_path, {captions.CAPTIONS_FILE: jsonl(*[{"file": f"dog{i}.jpg", "caption": "c"}
                                                     for i in range(4)])})
    assert refused(tmp_path, rejected=["bad.jpg"]) == (
        "captions.jsonl has 4 captions, more than the 3 photos of --instance-data")


@pytest.mark.parametrize(("content", "message"), [
    ("{not json\n", "captions.jsonl line 1 is not JSON"),
    (jsonl({"file": "dog1.jpg"}), 'captions.jsonl line 1 is not {"file": "<photo>", "caption": "<text>"}'),
    (jsonl({"file": "dog1.jpg", "caption": 3}), "captions.jsonl line 1 is not {"),
    ("\n" + jsonl({"file": "cat.jpg", "caption": "c"}), "captions.jsonl line 2 names 'cat.jpg', not a photo"),
    (jsonl({"file": "dog1.jpg", "caption": " "}), "captions.jsonl line 1: the caption is empty"),
    (jsonl({"file": "dog1.jpg", "caption": "{identifier.__class__}"}), "captions.jsonl line 1: prompt"),
])
def test_bad_captions_jsonl_lines_are_refused_naming_the_line(tmp_path, content, message):
    write(tmp_path, {captions.CAPTIONS_FILE: content})
    assert refused(tmp_path).startswith(message)


def test_a_photo_captioned_twice_is_refused_and_a_rejected_photos_caption_ignored(tmp_path):
    write(tmp_path, {captions.CAPTIONS_FILE: jsonl({"file": "small.jpg", "caption": "c"}),
                     "dog1.txt": "a"})
    assert captions.read_captions(tmp_path, ["dog1.jpg"], ["small.jpg"]) == {
        "dog1.jpg": Caption("a", "dog1.txt")}
    write(tmp_path, {captions.CAPTIONS_FILE: jsonl({"file": "dog1.jpg", "caption": "b"})})
    assert refused(tmp_path) == "captions.jsonl line 1 captions dog1.jpg, which dog1.txt captions too"


def test_the_run_page_shows_each_photos_caption_escaped():
    result = {"photos": {"used": ["dog1.jpg", "dog2.jpg"]},
              "prompts": {"instance": "a sks dog", "class": "a dog",
                          "captions": {"dog1.jpg": "sks, <b>on grass</b>"}}}
    page = run_page.render(result, [])
    assert "dog1.jpg<br><q class='caption'>sks, &lt;b&gt;on grass&lt;/b&gt;</q>" in page
    assert "<figcaption>dog2.jpg</figcaption>" in page


def test_captions_are_redacted_in_result_json_like_prompts(tmp_path):
    from dreambooth_job.outputs import result as result_module
    from dreambooth_job.phases.context import new_result

    config = TrainConfig(instance_data=str(tmp_path / "photos"), class_noun="dog",
                         output=str(tmp_path / "out"), subject_id="rex", job_id="rex-1")
    result = new_result(config, "f" * 64)
    result.prompts.captions = {"a.jpg": "sks at https://host/x?X-Amz-Signature=c0ffee&a=1"}
    record = result.to_json()
    jsonschema.validate(record, result_module.schema())
    assert record["prompts"]["captions"] == {"a.jpg": "sks at https://host/x?X-Amz-Signature=[REDACTED]&a=1"}
    result.prompts.captions = None
    assert "captions" not in result.to_json()["prompts"]  # absent without captions


def test_caption_dropout_is_a_model_option_of_the_runs_identity():
    from dreambooth_job.config.run_identity import differing_model_fields

    def config(**overrides):
        return TrainConfig(instance_data="s3://b/p/", class_noun="dog", output="s3://b/o/", **overrides)

    old = config().to_dict()
    del old["caption_dropout"]  # recorded before the option existed: the default, the same run
    assert differing_model_fields(old, config()) == []
    assert differing_model_fields(old, config(caption_dropout=0.5)) == ["caption_dropout"]
    with pytest.raises(InvalidInputError, match="--caption-dropout must be between 0 and 1"):
        config(caption_dropout=1.5)
    del old["caption_dropout_prompt"]  # the same for what a dropped caption becomes
    assert differing_model_fields(old, config()) == []
    assert differing_model_fields(old, config(caption_dropout=0.5, caption_dropout_prompt="empty")
                                  ) == ["caption_dropout", "caption_dropout_prompt"]
    with pytest.raises(InvalidInputError, match="--caption-dropout-prompt empty has no effect "
                                                "without --caption-dropout"):
        config(caption_dropout_prompt="empty")
    with pytest.raises(InvalidInputError, match="--caption-dropout-prompt must be one of instance, empty"):
        config(caption_dropout=0.5, caption_dropout_prompt="none")
