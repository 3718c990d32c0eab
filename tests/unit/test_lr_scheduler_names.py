"""--lr-scheduler's names are the issue's dashed ones (constant-with-warmup); diffusers' underscore
names (constant_with_warmup), which older releases documented and recorded, stay accepted as
aliases everywhere (flags, env and files, the chart's schema) and are the same run: the same
schedule, no difference in identity, and the fingerprint the underscore name always had."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from diffusers.optimization import get_scheduler  # noqa: E402

from dreambooth_job.cli import main  # noqa: E402
from dreambooth_job.config.choices import LR_SCHEDULER_ALIASES, LR_SCHEDULER_CHOICES  # noqa: E402
from dreambooth_job.config.run_identity import (  # noqa: E402
    config_fingerprint,
    differing_model_fields,
    model_config,
)
from dreambooth_job.config.train_config import TrainConfig  # noqa: E402
from dreambooth_job.exit_codes import InvalidInputError  # noqa: E402
from dreambooth_job.training import setup  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"instance_data": "d", "class_noun": "dog", "output": "o"}


@pytest.mark.parametrize("alias, name", sorted(LR_SCHEDULER_ALIASES.items()))
def test_a_dashed_name_and_diffusers_name_are_the_same_run(alias, name):
    dashed = TrainConfig(**REQUIRED, lr_scheduler=name, lr_warmup_steps=3)
    underscored = TrainConfig(**REQUIRED, lr_scheduler=alias, lr_warmup_steps=3)
    assert dashed.resolved_lr_scheduler == underscored.resolved_lr_scheduler == alias
    assert differing_model_fields(underscored.to_dict(), dashed) == []
    assert differing_model_fields(dashed.to_dict(), underscored) == []
    # The fingerprint hashes diffusers' name, as it did when that was the only spelling.
    recorded = {**model_config(underscored), "lr_scheduler": alias}
    old = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    assert config_fingerprint(dashed) == config_fingerprint(underscored) == old
    assert differing_model_fields(TrainConfig(**REQUIRED).to_dict(), dashed) == [
        "lr_scheduler", "lr_warmup_steps"]


@pytest.mark.parametrize("name", LR_SCHEDULER_CHOICES)
def test_each_name_trains_diffusers_schedule(name):
    config = TrainConfig(**REQUIRED, lr_scheduler=name, lr_warmup_steps=3, max_train_steps=10)
    _, ours = setup.setup_optimizer(config, [torch.nn.Parameter(torch.zeros(2))])
    reference = get_scheduler(name.replace("-", "_"), optimizer=torch.optim.AdamW(
        [torch.nn.Parameter(torch.zeros(2))], lr=config.resolved_learning_rate),
        num_warmup_steps=3, num_training_steps=10)
    rates = []
    for _ in range(10):
        rates.append((ours.get_last_lr()[0], reference.get_last_lr()[0]))
        ours.optimizer.step(), ours.step(), reference.optimizer.step(), reference.step()
    assert [a for a, _ in rates] == [b for _, b in rates]
    distinct = len({a for a, _ in rates})  # constant ignores the warm-up; the others ramp up
    assert distinct == 1 if name == "constant" else distinct > 3


def test_the_cli_and_the_chart_take_both_spellings_and_show_the_dashed_ones():
    for spelling in ("constant-with-warmup", "constant_with_warmup"):
        result = CliRunner().invoke(main, ["config", "--instance-data", "d", "--class-noun", "dog",
                                           "--output", "o", "--lr-scheduler", spelling])
        assert result.exit_code == 0, result.output
        assert f"lr_scheduler: {spelling}" in result.output
    shown = CliRunner().invoke(main, ["train", "--help"], terminal_width=400).output
    assert "[constant|constant-with-warmup|linear|cosine|cosine-with-restarts|polynomial]" in shown
    schema = json.loads((REPO / "helm/dreambooth-job/values.schema.json").read_text())
    enum = schema["properties"]["job"]["properties"]["lrScheduler"]["enum"]
    assert set(enum) == {*LR_SCHEDULER_CHOICES, *LR_SCHEDULER_ALIASES}
    with pytest.raises(InvalidInputError, match=r"--lr-scheduler must be one of constant, "
                                                r"constant-with-warmup, linear, cosine, "
                                                r"cosine-with-restarts, polynomial, got 'step'"):
        TrainConfig(**REQUIRED, lr_scheduler="step")
