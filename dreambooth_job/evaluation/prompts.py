"""The evaluation prompts: the paper's 25 for objects or for live subjects, or a file of one's own.

The paper evaluates dogs and cats (its live subjects) on prompts that dress them up ("wearing a
santa hat") and objects on prompts that change their surroundings or material; `auto` picks the set
from the class noun the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dreambooth_job import storage
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.identifiers import format_prompt

BUILTIN_SETS = ("object", "live")
LIVE_CLASS_NOUNS = frozenset({"dog", "dogs", "puppy", "puppies", "cat", "cats", "kitten",
                              "kittens"})


@dataclass(frozen=True)
class PromptSet:
    name: str
    """"object", "live", or the file it was read from."""
    templates: tuple[str, ...]
    """All templates of the set, with {identifier} and {class_noun} placeholders."""


def is_live(class_noun: str) -> bool:
    """Dogs and cats, by the last word of the class noun ("golden retriever dog" is live too)."""
    words = class_noun.lower().split()
    return bool(words) and words[-1] in LIVE_CLASS_NOUNS


def load_prompt_set(setting: str, class_noun: str) -> PromptSet:
    """The set named by `setting` ("auto", "object", "live" or a file / s3:// URI)."""
    if setting == "auto":
        setting = "live" if is_live(class_noun) else "object"
    if setting in BUILTIN_SETS:
        asset = resources.files("dreambooth_job").joinpath(f"assets/eval_prompts/{setting}.txt")
        text = asset.read_text()
        return PromptSet(setting, parse_templates(text, setting))
    try:
        raw = storage.read_bytes(setting) if storage.is_s3(setting) else Path(setting).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise InvalidInputError(
            f"--prompt-set {setting} is neither auto, object, live nor a readable file") from None
    return PromptSet(setting, parse_templates(raw.decode("utf-8"), setting))


def parse_templates(text: str, source: str) -> tuple[str, ...]:
    """One template a line; blank lines and # comments are skipped; every template is checked."""
    templates = tuple(line.strip() for line in text.splitlines()
                      if line.strip() and not line.lstrip().startswith("#"))
    if not templates:
        raise InvalidInputError(f"--prompt-set {source} holds no prompts")
    for template in templates:
        if "{identifier}" not in template:
            raise InvalidInputError(
                f"--prompt-set {source}: prompt {template!r} lacks {{identifier}}")
        format_prompt(template, "x", "y")  # names an unknown placeholder now, not after training
    return templates


def select(templates: tuple[str, ...], max_prompts: int) -> tuple[str, ...]:
    """At most `max_prompts` templates spread evenly over the set (0: all).

    The paper's lists are grouped (backgrounds first, then accessories, then properties), so a
    quick run samples across the groups instead of taking the first few backgrounds.
    """
    if max_prompts <= 0 or max_prompts >= len(templates):
        return templates
    step = len(templates) / max_prompts
    return tuple(templates[int(i * step)] for i in range(max_prompts))


def subject_prompt(template: str, identifier: str, class_noun: str) -> str:
    """The prompt the model is sampled with: "a sks dog in the jungle"."""
    return format_prompt(template, identifier, class_noun)


def text_prompt(template: str, class_noun: str) -> str:
    """The prompt CLIP-T scores against, identifier removed: "a dog in the jungle"."""
    return " ".join(format_prompt(template, "", class_noun).split())
