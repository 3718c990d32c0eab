"""The subject's identifier [V]: a rare token with little prior meaning (DreamBooth, section 3.2).

CLIP's BPE vocabulary lists merges in the order they were learned, most frequent first, so a
whole-word token near the end of the vocabulary is one the text encoder rarely saw: a weak prior.
Among those we keep short lowercase letter strings that tokenize to exactly one token and are not
known to mean something (the community default "sks" is also a rifle).

A whole word is spelt `word</w>` in CLIP's vocabulary (SD, SDXL) and `Ġword` (a word after a
space) in a byte-level BPE such as Qwen's (FLUX.2 [klein]); the rule is the same for both, and a
word's ids are those it has after a space, as in "a [V] dog".
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Protocol

from dreambooth_job.exit_codes import InvalidInputError

# Tokens with a known meaning that rarity alone does not rule out.
KNOWN_MEANINGS = frozenset({
    "sks",  # a rifle, and the most used DreamBooth token: strong prior from fine-tunes in the wild
    "ohwx", "zwx",  # popular community tokens: models trained on web data may have seen them
    "xxx", "ufc", "nsfw", "wtf", "omg", "lol", "nra", "ak", "gun", "kkk", "isis",
})
RARE_FRACTION = 0.25
"""Candidates come from the last quarter of the vocabulary's merges."""
_CANDIDATE = re.compile(r"^[a-z]{3,4}</w>$|^\u0120[a-z]{3,4}$")
"""A whole short lowercase word: CLIP's `abc</w>` or byte-level BPE's `Ġabc` (U+0120 is the space)."""


@dataclass(frozen=True)
class Identifier:
    token: str
    token_ids: list[int]
    chosen: str
    """"auto" when picked by `choose_identifier`, "user" when given."""


class _Encoding(Protocol):
    @property
    def input_ids(self) -> list[int]: ...


class Tokenizer(Protocol):
    """What is used of a transformers tokenizer (CLIPTokenizer): its vocabulary, and encoding."""

    def get_vocab(self) -> dict[str, int]: ...

    def __call__(self, text: str, *, add_special_tokens: bool) -> _Encoding: ...


def choose_identifier(tokenizer: Tokenizer) -> Identifier:
    """Deterministically pick the rarest eligible whole-word token of `tokenizer`'s vocabulary."""
    vocab = tokenizer.get_vocab()
    cutoff = int(len(vocab) * (1 - RARE_FRACTION))
    candidates = sorted(((i, t.removesuffix("</w>").removeprefix("\u0120")) for t, i in vocab.items()
                         if i >= cutoff and _CANDIDATE.match(t)), reverse=True)
    for _, word in candidates:
        if word in KNOWN_MEANINGS or not _has_vowel(word):
            continue
        ids = word_token_ids(tokenizer, word)
        if len(ids) == 1:
            return Identifier(word, ids, "auto")
    raise InvalidInputError("the base model's tokenizer has no rare single-token word; pass --identifier")


def user_identifier(tokenizer: Tokenizer, token: str) -> Identifier:
    """The identifier the user chose, with its token ids (more than one id works, but is weaker)."""
    return Identifier(token, word_token_ids(tokenizer, token), "user")


def word_token_ids(tokenizer: Tokenizer, word: str) -> list[int]:
    """`word`'s ids after a space (CLIP drops the space; a byte-level BPE spells it `Ġword`)."""
    return tokenizer(" " + word, add_special_tokens=False).input_ids


def _has_vowel(word: str) -> bool:
    # Pronounceable tokens read as names, the role [V] plays in "a [V] dog".
    return any(c in "aeiouy" for c in word)


PLACEHOLDERS = ("identifier", "class_noun")


def format_prompt(template: str, identifier: str, class_noun: str) -> str:
    """Fill `{identifier}` and `{class_noun}` into a prompt template (`{{` and `}}` are braces),
    naming any other placeholder. Templates are a tenant's text: only the two plain placeholders
    are taken, never str.format's attribute or item access, format specs or conversions
    (`{identifier.__class__}`, `{identifier:>99999999}`)."""
    try:
        fields = [(name, spec, conversion)
                  for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise InvalidInputError(f"prompt {template[:120]!r} has a bad placeholder ({exc}); "
                                "use {identifier} and {class_noun}") from None
    for name, spec, conversion in fields:
        if name not in PLACEHOLDERS:
            raise InvalidInputError(f"prompt {template[:120]!r} has an unknown placeholder "
                                    f"{name[:60]!r}; use {{identifier}} and {{class_noun}}")
        if spec or conversion:
            raise InvalidInputError(f"prompt {template[:120]!r}: placeholder {{{name}}} takes no "
                                    "format spec or conversion (! or :)")
    return template.format(identifier=identifier, class_noun=class_noun)
