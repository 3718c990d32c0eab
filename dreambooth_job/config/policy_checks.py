"""The operator's policy (config/operator_policy.py) held against a config: where its places lead, and
whether its numbers stay under the ceilings. One check for every place that runs it: `submit` and
`batch` before a Job exists (k8s/), and the job itself at its start, before any download (job.py),
so that a config that reached the pod some other way (a chart value, a file, extraArgs) is
refused there too. A leaf over the config: no torch, no Kubernetes.

    problems = policy_problems(config, OperatorPolicy.from_env())   # [] when allowed
    check_policy(config)                                            # InvalidInputError (exit 2)

It takes any config whose fields are declared with config_fields.option (TrainConfig,
GenerateConfig): the options declaring `place=` are checked against the prefixes and hosts, the
ones declaring `ceiling=` against the operator's ceilings. `place_problem` checks one value, e.g.
a location read from a run's result.json.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from dreambooth_job.config.choices import BUILTIN_PROMPT_SETS
from dreambooth_job.config.field_types import default_of, flag_name
from dreambooth_job.config.operator_policy import OperatorPolicy, ceiling_env
from dreambooth_job.config.option_fields import Place, place_of
from dreambooth_job.exit_codes import InvalidInputError

# A hub id names no place the job reads directly (it downloads it from the hub).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_hub_id(value: str) -> bool:
    return bool(HUB_ID.match(value)) and ".." not in value


def place_problem(flag: str, value: str, place: Place,
                  policy: OperatorPolicy | None = None) -> str | None:
    """Why the operator does not allow `value` of an option that names a `place`, or None."""
    policy = policy or OperatorPolicy.from_env()
    if place is Place.URL:
        url = value if "://" in value else "http://" + value  # how Prometheus' client reads it
        if not policy.allows_host(url):
            return (f"{flag} {value} names a host the operator does not allow "
                    "(DREAMBOOTH_OPERATOR_ALLOWED_HOSTS)")
        return None
    if place is Place.MODEL and is_hub_id(value):
        return None
    if not policy.allows_uri(value):
        return (f"{flag} {value} is outside the prefixes the operator allows "
                "(DREAMBOOTH_OPERATOR_ALLOWED_PREFIXES)")
    return None


def policy_problems(config: Any, policy: OperatorPolicy | None = None) -> list[str]:
    """Every option of `config` the operator does not allow, one line each.

    Places are checked only where they differ from the option's default: defaults are the
    operator's (the image's cache directory, the hub's evaluation models), not the tenant's.
    Ceilings are checked whatever the value.
    """
    policy = policy or OperatorPolicy.from_env()
    problems = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        place = place_of(f)
        builtin = f.name == "prompt_set" and value in BUILTIN_PROMPT_SETS
        if place is not None and isinstance(value, str) and value and value != default_of(f) \
                and not builtin:
            problem = place_problem(flag_name(f.name), value, place, policy)
            problems += [problem] if problem else []
        problem = ceiling_problem(f, value, policy)
        problems += [problem] if problem else []
    return problems


def ceiling_problem(f: dataclasses.Field, value: Any, policy: OperatorPolicy) -> str | None:
    """Why `value` of the option `f` is above the operator's ceiling, or None."""
    name = f.metadata.get("ceiling")
    if name is None or value is None:
        return None
    most = getattr(policy, name)
    if value <= most:
        return None
    return (f"{flag_name(f.name)} {_number(value)} is above the operator's ceiling of "
            f"{_number(most)} ({ceiling_env(name)})")


def _number(value: float) -> str:
    return format(value, ".15g") if isinstance(value, float) else str(value)


def check_policy(config: Any, policy: OperatorPolicy | None = None) -> None:
    """InvalidInputError (exit 2) naming every option the operator does not allow."""
    problems = policy_problems(config, policy)
    if problems:
        raise InvalidInputError("; ".join(problems))
