"""generation/recorded.py: a run's result.json, the tenant's file, read bounded and typed, and the
rule for the base model and VAE it records (issue 23). The end-to-end refusals, on the S3 server
with a real LoRA run, are in tests/job/test_generate_job.py; these cover the reader's whole input
space on local runs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dreambooth_job.config.operator_policy import OperatorPolicy
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.generation.recorded import location_problem, read_record

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                      max_size=4),
    max_leaves=20)
KEYS = st.sampled_from(["status", "config", "base_model", "identifier", "training", "outputs"])
SECTION = st.dictionaries(st.sampled_from(["source", "base_model", "vae", "class_noun", "token",
                                           "resolution", "lora", "model"]), JSON, max_size=4)
RECORDS = st.dictionaries(KEYS, SECTION | JSON, max_size=6)


def write_run(directory: Path, content: bytes) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "result.json").write_bytes(content)
    (directory / "_SUCCESS").write_bytes(b"")
    return str(directory)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=RECORDS | JSON)
def test_any_result_json_gives_a_typed_record_or_one_line_naming_the_file(record):
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp, "run"), json.dumps(record).encode())
        try:
            read = read_record(run, run)
        except InvalidInputError as exc:
            message = str(exc)
            assert message.startswith(f"--model {run}: the run's result.json ") and "\n" not in message
            return
    for key_value in (read.base_model, read.vae):
        if key_value is not None:
            assert isinstance(key_value[1], str) and key_value[0] in (
                "base_model.source", "config.base_model", "config.vae")
    assert read.resolution is None or (isinstance(read.resolution, int) and read.resolution > 0)
    assert all(v is None or isinstance(v, str) for v in (read.status, read.identifier, read.class_noun))


TENANT_A = OperatorPolicy(allowed_prefixes=("s3://runs/tenant-a/", "s3://models/", "/srv/models"))


@pytest.mark.parametrize("value, policy, problem", [
    ("s3://models/sd15", TENANT_A, None),
    ("/srv/models/sd15", TENANT_A, None),
    ("runwayml/stable-diffusion-v1-5", OperatorPolicy(), None),  # one tenant: as train reads it
    ("/opt/any/model", OperatorPolicy(), None),
    ("s3://runs/tenant-b/victim/model", TENANT_A, "outside the prefixes the operator allows"),
    ("s3://runs/tenant-a/../tenant-b/x", TENANT_A, "outside the prefixes the operator allows"),
    ("/srv/models/../../etc", TENANT_A, "outside the prefixes the operator allows"),
    ("runwayml/stable-diffusion-v1-5", TENANT_A, "is a hub id or a relative path"),
    ("srv/models/sd15", TENANT_A, "is a hub id or a relative path"),
    ("~/models", TENANT_A, "is a hub id or a relative path"),
    ("gs://models/sd15", OperatorPolicy(), "is not a supported location"),
    ("s3:/models/sd15", OperatorPolicy(), "is not a supported location"),
    ("s3://user:pw@models/sd15", OperatorPolicy(), "must not carry credentials"),
    ("s3://models/a\nb", OperatorPolicy(), "not one printable line"),
    ("s3://models/" + "x" * 3000, OperatorPolicy(), "not one printable line of at most 2048"),
])
def test_the_rule_for_a_recorded_location(value, policy, problem):
    found = location_problem("base_model.source", value, policy)
    if problem is None:
        assert found is None
    else:
        assert found and found.startswith("result.json's base_model.source ") and problem in found
        assert "\n" not in found and len(found) < 400


def test_a_result_json_over_the_bound_is_refused_unread(tmp_path):
    run = write_run(tmp_path / "run", b'{"status": "succeeded", "pad": "' + b"x" * 5 * 2**20 + b'"}')
    with pytest.raises(InvalidInputError, match="result.json is over 4194304 bytes"):
        read_record(run, run)
