"""Every option declares its role and bounds on the option itself, and everything that used to keep
a list of option names reads them (docs/options.md)."""

from __future__ import annotations

import dataclasses

import pytest

from dreambooth_job.config import field_types, introspection
from dreambooth_job.config import train_config as cfg
from dreambooth_job.config.option_fields import MODEL, OPERATIONAL, Role, option, role_of
from dreambooth_job.config.run_identity import config_fingerprint, differing_model_fields
from dreambooth_job.config.sources import bool_flags, to_cli_args, to_config_values
from dreambooth_job.evaluation.command import CONFIG_FIELDS
from dreambooth_job.exit_codes import InvalidInputError

REQUIRED = {"instance_data": "s3://photos/dog/", "class_noun": "dog", "output": "s3://runs/dog/"}


def test_every_field_declares_a_role():
    undeclared = [f.name for f in introspection.fields() if not isinstance(f.metadata.get("role"), Role)]
    assert not undeclared


def test_a_field_without_a_role_cannot_be_declared():
    with pytest.raises(TypeError):
        option(5, help="no role")  # a default where the role belongs
    with pytest.raises(TypeError):
        dataclasses.make_dataclass("C", [("x", int, option(help="no role at all"))])


def test_the_borderline_options_have_their_documented_roles():
    roles = {f.name: role_of(f) for f in introspection.fields()}
    for name in ("max_train_steps", "num_class_images", "sample_steps", "guidance_scale",
                 "use_8bit_adam", "learning_rate", "mixed_precision", "save_precision",
                 "export_single_file", "lora_merge", "base_precision"):
        assert roles[name] is MODEL, name
    for name in ("validation_prompts", "num_validation_images", "sample_batch_size", "evaluate",
                 "gradient_checkpointing", "adam_impl", "output", "cache_dir", "max_photos"):
        assert roles[name] is OPERATIONAL, name


def test_every_model_option_has_an_explicit_value():
    """A Job states every model option; an unset (None) one is resolved at run time and stated as
    `auto`, which only numbers take (a boolean's flags have no `auto`); the required inputs aside,
    which validation never leaves unset. --vae aside: unset, it means the base model's own VAE,
    which no release will change."""
    unset = [f for f in introspection.model_fields()
             if field_types.default_of(f) is None and not f.metadata["required"] and f.name != "vae"]
    assert {f.name for f in unset} == {"learning_rate", "lora_alpha", "resolution", "guidance_scale"}
    assert all(introspection.accepts_auto(f) and introspection.base_type(f) in (int, float) for f in unset)


def test_jobs_state_unset_model_options_as_auto():
    config = cfg.TrainConfig(**REQUIRED)
    args = to_cli_args(config)
    assert args[args.index("--learning-rate") + 1] == "auto"
    assert args[args.index("--lora-alpha") + 1] == "auto"
    assert args[args.index("--resolution") + 1] == "auto"
    assert args[args.index("--guidance-scale") + 1] == "auto"
    assert args[args.index("--save-precision") + 1] == "auto"
    assert args[args.index("--train-mode") + 1] == "full"
    values = to_config_values(config)
    assert values["learning_rate"] == "auto" and values["lora_alpha"] == "auto"
    # What a Job states reads back as the same config, whatever the image's defaults.
    assert cfg.TrainConfig(**values) == config
    assert cfg.TrainConfig(**{**values, "learning_rate": 2e-6}).learning_rate == 2e-6


def test_jobs_state_every_model_option_at_its_default_and_operational_ones_only_when_changed():
    config = cfg.TrainConfig(**REQUIRED, log_every=3)
    args = to_cli_args(config)
    for f in introspection.model_fields():
        if f.name == "vae":  # unset: the base model's own VAE (see above)
            assert "--vae" not in args
        elif introspection.base_type(f) is bool:
            on, _, off = bool_flags(f).partition("/")
            assert on in args or off in args, f.name
        else:
            assert field_types.flag_name(f.name) in args, f.name
    assert "--log-every" in args and "--metrics-port" not in args and "--cache-dir" not in args
    assert args[args.index("--identifier") + 1] == "auto"
    assert args[args.index("--mixed-precision") + 1] == "auto"
    assert args[args.index("--learning-rate") + 1] == "auto"
    values = to_config_values(config)
    assert {f.name for f in introspection.model_fields()} - {"vae"} <= values.keys()
    assert values["log_every"] == 3 and "metrics_port" not in values


@pytest.mark.parametrize("f", [f for f in introspection.fields() if f.metadata["bounds"]],
                         ids=lambda f: f.name)
def test_validate_enforces_each_declared_bound(f):
    bounds = f.metadata["bounds"]
    kind = introspection.base_type(f)
    outside = []
    if "minimum" in bounds:
        outside.append(kind(bounds["minimum"] - 1))
    if "maximum" in bounds:
        outside.append(kind(bounds["maximum"] + 1))
    if "exclusiveMinimum" in bounds:
        outside.append(kind(bounds["exclusiveMinimum"]))
    if "exclusiveMaximum" in bounds:
        outside.append(kind(bounds["exclusiveMaximum"]))
    if "multipleOf" in bounds:
        outside.append(kind(bounds["multipleOf"] * 10 + 1))
    for value in outside:
        with pytest.raises(InvalidInputError, match=f"^--{f.name.replace('_', '-')} must "):
            cfg.TrainConfig(**{f.name: value})
    inside = bounds.get("minimum", bounds.get("exclusiveMinimum", 0) + 1)
    if "multipleOf" in bounds:
        inside = bounds["multipleOf"] * 10
    # The bound itself is valid (prior preservation off: it also asks for class images).
    cfg.TrainConfig(prior_preservation=False, **{f.name: kind(inside)})


def test_an_instance_prompt_without_the_identifier_is_refused():
    with pytest.raises(InvalidInputError, match="--instance-prompt must contain {identifier}"):
        cfg.TrainConfig(instance_prompt="a photo of a dog")


def test_the_fingerprint_covers_model_options_only():
    base = cfg.TrainConfig(**REQUIRED)
    assert config_fingerprint(base) == config_fingerprint(
        dataclasses.replace(base, log_every=3, adam_impl="loop", output="s3://elsewhere/"))
    assert config_fingerprint(base) != config_fingerprint(dataclasses.replace(base, learning_rate=1e-4))


def test_auto_options_are_the_same_run_as_what_they_resolve_to():
    """`--learning-rate auto` trains with the mode's rate: the same run as that rate given
    explicitly, and as an older release's record of it (5e-6, full fine-tuning)."""
    auto = cfg.TrainConfig(**REQUIRED)
    older_record = {**auto.to_dict(), "learning_rate": 5e-6}
    del older_record["train_mode"], older_record["lora_alpha"]
    assert differing_model_fields(older_record, auto) == []
    assert config_fingerprint(auto) == config_fingerprint(dataclasses.replace(auto, learning_rate=5e-6))
    lora = dataclasses.replace(auto, train_mode="lora")
    assert differing_model_fields(lora.to_dict(), dataclasses.replace(lora, learning_rate=1e-4)) == []
    assert differing_model_fields(lora.to_dict(), dataclasses.replace(lora, lora_alpha=16)) == []
    assert differing_model_fields(auto.to_dict(), lora) == ["learning_rate", "train_mode"]
    assert differing_model_fields(lora.to_dict(), dataclasses.replace(lora, lora_rank=8)) == [
        "lora_alpha", "lora_rank"]


def test_an_unrecorded_option_matches_only_at_its_default():
    recorded = cfg.TrainConfig(**REQUIRED).to_dict()
    del recorded["learning_rate"], recorded["seed"]
    assert differing_model_fields(recorded, cfg.TrainConfig(**REQUIRED)) == []
    assert differing_model_fields(recorded, cfg.TrainConfig(**REQUIRED, seed=1)) == ["seed"]


def test_evaluate_takes_the_options_declared_for_it():
    assert set(CONFIG_FIELDS) == {f.name for f in introspection.fields() if f.metadata["evaluation"]}
    assert {"instance_data", "class_noun", "prompt_set", "dino_model", "sample_steps"} <= set(CONFIG_FIELDS)
    assert "learning_rate" not in CONFIG_FIELDS
