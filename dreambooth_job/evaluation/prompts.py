"""The evaluation prompts: the paper's 25 for objects or for live subjects, or a file of one's own.

The paper evaluates dogs and cats (its live subjects) on prompts that dress them up ("wearing a
santa hat") and objects on prompts that change their surroundings or material; `auto` picks the set
from the class noun the same way.

A prompt file is the tenant's: from s3:// it is always read, from the pod's own file system only
inside the directories the operator allows (DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS, none by
default), since a local path could name a mounted service-account or web-identity token. No
error message quotes the file: a bad line is named by its number.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dreambooth_job.config.operator_policy import ENV_PREFIX, OperatorPolicy
from dreambooth_job.config.subject_identifier import format_prompt
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.storage import places as storage

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
    if not storage.is_s3(setting) and not OperatorPolicy.from_env().allows_prompt_file(setting):
        # The same answer whether the file exists or not: no probing of the pod's file system.
        raise InvalidInputError(
            f"--prompt-set {setting} is neither auto, object, live, an s3:// URI nor a file in a "
            f"directory the operator allows ({ENV_PREFIX}PROMPT_FILE_DIRS)")
    try:
        raw = storage.read_bytes(setting) if storage.is_s3(setting) else Path(setting).read_bytes()
        text = raw.decode("utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise InvalidInputError(
            f"--prompt-set {setting} is neither auto, object, live nor a readable file") from None
    except UnicodeDecodeError:
        raise InvalidInputError(f"--prompt-set {setting} is not UTF-8 text") from None
    return PromptSet(setting, parse_templates(text, setting))


def parse_templates(text: str, source: str) -> tuple[str, ...]:
    """One template a line; blank lines and # comments are skipped; every template is checked.
    Errors name the line by number, never by content (see the module docs)."""
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
                if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InvalidInputError(f"--prompt-set {source} holds no prompts")
    for number, template in numbered:
        if "{identifier}" not in template:
            raise InvalidInputError(f"--prompt-set {source}: line {number} lacks {{identifier}}")
        try:
            format_prompt(template, "x", "y")  # an unknown placeholder fails now, not after training
        except InvalidInputError:
            raise InvalidInputError(
                f"--prompt-set {source}: line {number} has a placeholder other than "
                "{identifier} and {class_noun}") from None
    return tuple(template for _, template in numbered)


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
