"""Operator settings come from the environment only and default to single-tenant behaviour."""

import pytest

from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.operator_policy import ALLOW_UNCONDITIONAL_STORE_ENV, OperatorPolicy


def test_defaults_allow_everything_but_local_prompt_files(tmp_path):
    policy = OperatorPolicy.from_env({})
    assert policy.allows_row_option("base_model")
    assert policy.allows_uri("s3://any/where/")
    assert policy.allows_host("http://pushgateway:9091")
    assert not policy.allows_prompt_file(tmp_path / "prompts.txt")


def test_lists_from_the_environment_restrict(tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "secret").write_text("token")
    (allowed / "escape").symlink_to(tmp_path / "secret")
    policy = OperatorPolicy.from_env({
        "DREAMBOOTH_OPERATOR_PROMPT_FILE_DIRS": str(allowed),
        "DREAMBOOTH_OPERATOR_BATCH_ROW_OPTIONS": "learning_rate,\nmax_train_steps",
        "DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES": "s3://bucket/tenant-a/",
        "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS": "Push.example"})
    assert policy.allows_prompt_file(allowed / "prompts.txt")
    assert not policy.allows_prompt_file(allowed / "escape")
    assert not policy.allows_prompt_file(allowed / ".." / "secret")
    assert policy.batch_row_options == ("learning_rate", "max_train_steps")
    assert not policy.allows_row_option("base_model")
    assert policy.allows_uri("s3://bucket/tenant-a/dog/")
    assert not policy.allows_uri("s3://bucket/tenant-ab/dog/")
    assert not policy.allows_uri("s3://bucket/tenant-a/../tenant-b/")
    assert policy.allows_host("https://push.example/metrics")
    assert not policy.allows_host("http://169.254.169.254/")


def test_only_the_operator_can_allow_a_store_without_conditional_writes():
    assert not OperatorPolicy.from_env({}).allow_store_without_conditional_writes
    allowed = {ALLOW_UNCONDITIONAL_STORE_ENV: "True"}
    assert OperatorPolicy.from_env(allowed).allow_store_without_conditional_writes
    with pytest.raises(InvalidInputError, match=f"{ALLOW_UNCONDITIONAL_STORE_ENV} must be true or false"):
        OperatorPolicy.from_env({ALLOW_UNCONDITIONAL_STORE_ENV: "sure"})
