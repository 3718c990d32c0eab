"""Operator settings come from the environment only and default to single-tenant behaviour."""

import pytest

from dreambooth_job.config.operator_policy import ALLOW_UNCONDITIONAL_STORE_ENV, OperatorPolicy
from dreambooth_job.exit_codes import InvalidInputError


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


# Issue 23: the ceilings, declared once.

def test_the_default_ceilings_allow_every_sizing_profiles_run():
    from dreambooth_job import families
    from dreambooth_job.config.operator_policy import LARGEST_PROFILE_GRACE_SECONDS
    from dreambooth_job.training import sizing

    policy = OperatorPolicy.from_env({})
    # FLUX.2 [klein]'s full profile (1,375 s) is above it: an operator who runs it raises the ceiling.
    covered = {f.name for f in families.FAMILIES if f.sized_when_undetected}
    assert max(p.job_grace_seconds for p in sizing.PROFILES.values()
               if p.family in covered) == LARGEST_PROFILE_GRACE_SECONDS
    assert policy.max_termination_grace_seconds == LARGEST_PROFILE_GRACE_SECONDS
    assert policy.max_lora_rank == sizing.LORA_SIZED_RANK


def test_every_ceiling_a_train_option_declares_is_an_operator_setting():
    from dreambooth_job.config import introspection
    from dreambooth_job.config.operator_policy import CEILINGS

    declared = {f.metadata["ceiling"] for f in introspection.fields() if f.metadata["ceiling"]}
    assert declared <= {f.name for f in CEILINGS}
    assert {"max_termination_grace_seconds", "max_gradient_accumulation_steps", "max_train_steps",
            "max_resolution", "max_lora_rank"} == declared


def test_ceilings_from_the_environment():
    policy = OperatorPolicy.from_env({"DREAMBOOTH_OPERATOR_MAX_TRAIN_STEPS": "1e3",
                                      "DREAMBOOTH_OPERATOR_MAX_TERMINATION_GRACE_SECONDS": "120.5",
                                      "DREAMBOOTH_OPERATOR_MAX_MEMORY": "64Gi"})
    assert (policy.max_train_steps, policy.max_termination_grace_seconds, policy.max_memory) == (
        1000, 120.5, "64Gi")


@pytest.mark.parametrize("name, raw", [("MAX_TRAIN_STEPS", "-1"), ("MAX_TRAIN_STEPS", "1.5"),
                                       ("MAX_LORA_RANK", "many"), ("MAX_GPUS", "inf"),
                                       ("MAX_MEMORY", "lots"), ("MAX_CPU", "1" * 100)])
def test_a_bad_ceiling_is_exit_2_naming_its_variable(name, raw):
    with pytest.raises(InvalidInputError) as caught:
        OperatorPolicy.from_env({f"DREAMBOOTH_OPERATOR_{name}": raw})
    assert f"DREAMBOOTH_OPERATOR_{name}" in caught.value.message and "\n" not in caught.value.message
