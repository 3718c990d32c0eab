"""Captions per photo: the tenant's own prompt for each subject photo, in either of two forms
under --instance-data:

- a text file beside the photo, named as it with `.txt` (`dog1.jpg` + `dog1.txt`: kohya's and
  ai-toolkit's convention), holding the caption (whitespace runs, line breaks included, become
  one space);
- one `captions.jsonl` at the top of the prefix, one JSON object a line:
  `{"file": "dog1.jpg", "caption": "..."}`, `file` the photo's path under the prefix.

A caption is a prompt template like --instance-prompt: `{identifier}` and `{class_noun}` are
filled in, and so is ai-toolkit's `[trigger]` (the identifier); a caption that then does not hold
the identifier as a word gets it prefixed (`"<identifier>, <caption>"`), so every photo still
teaches the identifier. Photos without a caption train on the instance prompt.

Captions are tenant input: each at most MAX_PROMPT_LENGTH characters of UTF-8, at most one per
photo, files bounded in bytes before they are downloaded; any bad caption is exit 2 naming its
file. No torch here: the phases read it before the model loads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dreambooth_job.config import subject_identifier
from dreambooth_job.config.choices import IMAGE_SUFFIXES, MAX_PROMPT_LENGTH
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage.places import StoredFile

CAPTIONS_FILE = "captions.jsonl"
CAPTION_SUFFIX = ".txt"
TRIGGER = "[trigger]"
MAX_CAPTION_BYTES = 4 * MAX_PROMPT_LENGTH
"""A caption text file's byte bound: MAX_PROMPT_LENGTH characters of UTF-8 (at most 4 bytes each)."""
JSONL_LINE_OVERHEAD = 1024
"""Bytes a captions.jsonl line may take beyond its caption: the file name, keys, escapes."""


@dataclass(frozen=True)
class Caption:
    text: str
    """As the tenant wrote it, whitespace collapsed; placeholders not yet filled."""
    source: str
    """The file it came from (`dog1.txt`, or `captions.jsonl line 3`), for errors."""


def caption_files(files: Sequence[StoredFile], photos: Sequence[StoredFile],
                  max_photos: int) -> list[StoredFile]:
    """Which listed files are captions of the listed `photos` (a `.txt` beside one, and
    captions.jsonl at the top), each checked against its byte bound before any is downloaded."""
    stems = {_stem(p.relative_path) for p in photos}
    found = []
    for f in files:
        if f.relative_path == CAPTIONS_FILE:
            limit = max_photos * (MAX_CAPTION_BYTES + JSONL_LINE_OVERHEAD)
        elif f.relative_path.lower().endswith(CAPTION_SUFFIX) and _stem(f.relative_path) in stems:
            limit = MAX_CAPTION_BYTES
        else:
            continue
        if f.size > limit:
            raise InvalidInputError(f"caption file {f.relative_path} holds {f.size} bytes, more "
                                    f"than {limit}")
        found.append(f)
    return found


def is_caption_file(relative_path: str, photo_paths: Sequence[str]) -> bool:
    """Whether a listed file is a caption of one of `photo_paths` (it is then not 'skipped')."""
    return relative_path == CAPTIONS_FILE or (
        relative_path.lower().endswith(CAPTION_SUFFIX)
        and _stem(relative_path) in {_stem(p) for p in photo_paths})


def read_captions(directory: Path, used: Sequence[str], rejected: Sequence[str]) -> dict[str, Caption]:
    """Each used photo's caption, by photo name, from the caption files downloaded to `directory`.
    A captions.jsonl line naming no photo of --instance-data (neither used nor rejected), or a
    photo captioned twice, is exit 2."""
    if not directory.is_dir():
        return {}
    captions: dict[str, Caption] = {}
    by_stem: dict[str, list[str]] = {}
    for name in used:  # dog1.jpg and dog1.png both take dog1.txt
        by_stem.setdefault(_stem(name), []).append(name)
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() == CAPTION_SUFFIX):
        name = path.relative_to(directory).as_posix()
        photos = by_stem.get(_stem(name), [])
        if photos:
            caption = Caption(_caption_text(_utf8(path.read_bytes(), name), name), name)
            captions.update(dict.fromkeys(photos, caption))
    jsonl = directory / CAPTIONS_FILE
    if jsonl.is_file():
        for photo, caption in _jsonl_captions(jsonl.read_bytes(), len(used) + len(rejected)):
            if photo in captions:
                raise InvalidInputError(f"{caption.source} captions {photo}, which "
                                        f"{captions[photo].source} captions too")
            if photo in used:
                captions[photo] = caption
            elif photo not in rejected:
                raise InvalidInputError(f"{caption.source} names {photo!r}, not a photo of "
                                        "--instance-data")
    for caption in captions.values():
        fill(caption, "sks", "thing")  # placeholders are checked now, not after the model loads
    return captions


def _jsonl_captions(data: bytes, max_lines: int) -> list[tuple[str, Caption]]:
    lines = [(n, line) for n, line in enumerate(_utf8(data, CAPTIONS_FILE).splitlines(), 1)
             if line.strip()]
    if len(lines) > max_lines:
        raise InvalidInputError(f"{CAPTIONS_FILE} has {len(lines)} captions, more than the "
                                f"{max_lines} photos of --instance-data")
    found = []
    for number, line in lines:
        where = f"{CAPTIONS_FILE} line {number}"
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise InvalidInputError(f"{where} is not JSON ({exc})") from None
        if (not isinstance(entry, dict) or set(entry) != {"file", "caption"}
                or not all(isinstance(v, str) for v in entry.values())):
            raise InvalidInputError(f'{where} is not {{"file": "<photo>", "caption": "<text>"}}')
        found.append((entry["file"], Caption(_caption_text(entry["caption"], where), where)))
    return found


def _utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"caption file {name} is not UTF-8 (byte {exc.start})") from None


def _caption_text(raw: str, where: str) -> str:
    text = " ".join(raw.split())
    if not text:
        raise InvalidInputError(f"{where}: the caption is empty")
    if len(text) > MAX_PROMPT_LENGTH:
        raise InvalidInputError(f"{where}: the caption has {len(text)} characters, more than "
                                f"{MAX_PROMPT_LENGTH}")
    return text


def _stem(relative_path: str) -> str:
    """The path without its suffix: a photo's and its caption's are the same."""
    path = PurePosixPath(relative_path)
    return str(path.with_suffix("")) if path.suffix.lower() in (*IMAGE_SUFFIXES, CAPTION_SUFFIX) \
        else relative_path


def fill(caption: Caption, identifier: str, class_noun: str) -> str:
    """The caption as the photo's prompt: placeholders filled, the identifier prefixed when the
    caption does not hold it as a word."""
    try:
        text = subject_identifier.format_prompt(caption.text, identifier, class_noun)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{caption.source}: {exc.message}") from None
    text = text.replace(TRIGGER, identifier)
    if re.search(rf"(?<!\w){re.escape(identifier)}(?!\w)", text) is None:
        text = f"{identifier}, {text}"
    return text
