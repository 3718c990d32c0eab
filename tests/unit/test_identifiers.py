import pytest

from dreambooth_job.config import subject_identifier
from dreambooth_job.devtools import tiny_models
from dreambooth_job.exit_codes import InvalidInputError


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.clip_tokenizer()


def test_tokenizer_matches_stable_diffusion(tokenizer):
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]


def test_auto_identifier_is_a_rare_single_token_without_known_meaning(tokenizer):
    chosen = subject_identifier.choose_identifier(tokenizer)
    assert chosen.chosen == "auto"
    assert len(chosen.token_ids) == 1
    assert chosen.token not in subject_identifier.KNOWN_MEANINGS
    # Rare: in the last quarter of the merge-ordered vocabulary, far from common words.
    assert chosen.token_ids[0] >= 0.75 * len(tokenizer)
    assert chosen.token_ids[0] > tokenizer.get_vocab()["dog</w>"]
    # Used in a prompt it stays one token between "a" and the class noun.
    ids = tokenizer(f"a {chosen.token} dog").input_ids
    assert ids[2] == chosen.token_ids[0] and len(ids) == 5


def test_auto_identifier_is_deterministic(tokenizer):
    fresh = tiny_models.clip_tokenizer()
    assert subject_identifier.choose_identifier(tokenizer) == subject_identifier.choose_identifier(fresh)


def test_user_identifier_records_its_tokens(tokenizer):
    chosen = subject_identifier.user_identifier(tokenizer, "sks")
    assert chosen.chosen == "user" and chosen.token_ids == [48136]


def test_format_prompt_fills_and_rejects_unknown_placeholders():
    assert subject_identifier.format_prompt("a {identifier} {class_noun} on the beach", "olis", "dog") \
        == "a olis dog on the beach"
    with pytest.raises(InvalidInputError, match="{colour}|colour"):
        subject_identifier.format_prompt("a {colour} {identifier}", "olis", "dog")


@pytest.mark.parametrize("template", [
    "a {identifier.foo} dog",            # attribute access: AttributeError, a crash (exit 1)
    "a {identifier.__class__} dog",      # attribute access that works: Python internals in a prompt
    "a {class_noun[0]} dog",             # item access
    "a {identifier:>99999999} dog",      # a format spec: a prompt of 100 MB
    "a {identifier!r} dog",              # a conversion
    "a {identifier",                     # unbalanced
])
def test_format_prompt_takes_only_the_two_plain_placeholders(template):
    """Prompts are a tenant's text (`generate --prompt`, validation prompts): str.format's
    attribute and item access, format specs and conversions are refused with one line."""
    with pytest.raises(InvalidInputError, match="placeholder"):
        subject_identifier.format_prompt(template, "olis", "dog")
    escaped = subject_identifier.format_prompt("{{identifier}} {identifier}", "olis", "dog")
    assert escaped == "{identifier} olis"


def test_a_byte_level_bpe_gets_a_rare_whole_word_too():
    """Qwen's BPE (FLUX.2 [klein]) spells a word after a space `Ġword`: the same rule picks from it."""
    tokenizer = tiny_models.qwen_tokenizer()
    identifier = subject_identifier.choose_identifier(tokenizer)
    assert identifier.chosen == "auto" and len(identifier.token_ids) == 1
    assert tokenizer.convert_ids_to_tokens(identifier.token_ids) == ["\u0120" + identifier.token]
    assert identifier.token_ids[0] >= 0.75 * len(tokenizer.get_vocab())
