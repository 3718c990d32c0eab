"""When two configs are "the same run": one rule, read from the options' roles (config_fields.Role).

A run is identified by its MODEL options. An output that holds a completed run is left alone, and
a checkpoint resumed, only when every MODEL option matches what that run recorded (result.json's
`config`, a checkpoint manifest's `config`); otherwise the job exits 2 naming every differing
option (`--force` / `--restart` start over). OPERATIONAL options (logs, cadence, caches, limits,
speed switches) never make another run.

Options resolved at run time from other options (config.resolve_auto) are compared resolved:
`--learning-rate auto` in full mode is the 5e-6 an older release recorded, and in LoRA mode the
same run as an explicit `--learning-rate 1e-4`.

Records outlive releases: an option added later is absent from an older record. It compares equal
when this run leaves it at its default, which is what the older release trained with; so adding a
MODEL option does not turn every finished output into "another config".

    >>> from dreambooth_job.config.train_config import TrainConfig
    >>> old = TrainConfig(instance_data="d", class_noun="dog", output="o").to_dict()
    >>> del old["learning_rate"]                    # recorded before the option existed
    >>> differing_model_fields(old, TrainConfig(instance_data="d", class_noun="dog", output="o"))
    []
    >>> differing_model_fields(old, TrainConfig(instance_data="d", class_noun="dog", output="o",
    ...                                          learning_rate=1e-5, seed=3))
    ['learning_rate', 'seed']
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from dreambooth_job.config.choices import AUTO
from dreambooth_job.config.field_types import default_of
from dreambooth_job.config.introspection import model_fields
from dreambooth_job.config.train_config import TrainConfig, resolve_auto
from dreambooth_job.redaction import redact_value

RESOLVED_WHEN_THE_MODEL_LOADS = {"resolution": None, "guidance_scale": None, "save_precision": AUTO}
"""MODEL options whose auto (the value here) the family of the loaded model resolves, after this
check: --resolution to the native resolution, --guidance-scale and --save-precision to the
family's defaults. Records hold the resolved values (phases/load_model.py) and the base model is
compared too, so auto matches the record's value."""


def model_config(config: TrainConfig) -> dict[str, Any]:
    """The MODEL options of `config`, `auto` ones resolved: what makes it another run."""
    resolved = resolve_auto(config.to_dict())
    return {f.name: resolved[f.name] for f in model_fields()}


def config_fingerprint(config: TrainConfig) -> str:
    """sha256 of the MODEL options, recorded in result.json (a quick equality for tooling; the
    job itself compares option by option, `differing_model_fields`)."""
    return hashlib.sha256(json.dumps(model_config(config), sort_keys=True).encode()).hexdigest()


def differing_model_fields(recorded: Mapping[str, Any] | Any, config: Mapping[str, Any] | TrainConfig
                           ) -> list[str]:
    """The MODEL options in which `config` differs from a recorded config (result.json's or a
    checkpoint's, both redacted as redaction.py writes them), sorted. An option the record lacks
    (written before the option existed) matches when `config` has it at its default."""
    if not isinstance(recorded, Mapping):
        recorded = {}  # a record without a readable config matches only the defaults
    current = resolve_auto(redact_value(config.to_dict() if isinstance(config, TrainConfig)
                                        else dict(config)))
    expected = resolve_auto({f.name: recorded[f.name] if f.name in recorded
                             else redact_value(default_of(f)) for f in model_fields()})
    for name, auto in RESOLVED_WHEN_THE_MODEL_LOADS.items():
        if current.get(name) == auto:
            current[name] = expected[name]
    return sorted(f.name for f in model_fields() if current.get(f.name) != expected[f.name])
