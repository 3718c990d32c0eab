"""Property tests of the parsers a tenant writes into: a config file and a batch row. Whatever
they hold, the outcome is a valid config or bad input (exit 2) in short single lines, never
another exception (a traceback, exit 1, retried)."""

from __future__ import annotations

import json

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dreambooth_job.config import introspection
from dreambooth_job.config import sources as config_sources
from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.k8s.batch import BatchFileError, parse_rows

NAMES = [f.name for f in introspection.fields()] + ["id", "subject_id", "bogus", "instance-data"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=80), st.sampled_from(
                        ["s3://b/p/", "s3://", "../x", "{id}", "{class_noun}", "a {identifier}",
                         "ftp://u:p@h/x", "auto", "x" * 5000, "org/model", "/etc/passwd"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
mappings = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=12), values, max_size=8)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_short_lines(messages: list[str]) -> None:
    for message in messages:
        assert "\n" not in message and len(message) < 6000, message[:200]


@SETTINGS
@given(row=mappings, defaults=mappings)
@example(row={}, defaults={"instance_prompt": None})  # found by this test: a TypeError
@example(row={}, defaults={"subject_id": "cat"})  # found by this test: a TypeError
@example(row={"subject_id": "x" * 1_000_000}, defaults={})
@example(row={"termination_grace_seconds": 31536000}, defaults={})
def test_any_batch_row_is_a_config_or_exit_2_in_short_lines(row, defaults):
    base = {"id": "dog", "instance_data": "s3://p/dog/", "class_noun": "dog", "output": "s3://r/{id}/"}
    try:
        batch = parse_rows("b.yaml", defaults, [("subjects[0]", {**base, **row})], {}, "night",
                           policy=OperatorPolicy(allowed_prefixes=("s3://p/", "s3://r/")))
    except BatchFileError as error:
        assert error.exit_code == ExitCode.INVALID_INPUT
        assert_short_lines(error.problems)
        return
    [config] = batch.subjects
    assert config.output.startswith("s3://r/") and config.instance_data.startswith("s3://p/")


@SETTINGS
@given(values=mappings)
@example(values={"instance_prompt": None})  # found by this test: a TypeError
@example(values={"validation_prompts": None})
def test_any_config_file_is_a_config_or_exit_2_in_one_short_line(tmp_path_factory, values):
    path = tmp_path_factory.mktemp("config") / "job.yaml"
    try:
        text = yaml.safe_dump(values)
    except yaml.YAMLError:
        text = json.dumps(values, default=str)
    path.write_text(text)
    try:
        config_sources.resolve_config(env={}, config_file=path).validate(require_inputs=True)
    except InvalidInputError as error:
        assert error.exit_code == ExitCode.INVALID_INPUT
        assert_short_lines([error.message])
