"""docs/options.md's table of every option is the one generated from TrainConfig's declarations."""

from dreambooth_job.config import options_table
from dreambooth_job.config.introspection import fields


def test_the_options_page_holds_the_generated_table():
    page = options_table.PAGE.read_text(encoding="utf-8")
    assert page == options_table.page_with_table(page), (
        "docs/options.md is out of date: run python -m dreambooth_job.config.options_table")


def test_every_option_has_a_row_with_its_role_and_help():
    rows = options_table.table().splitlines()[2:]
    assert len(rows) == len(fields())
    for f, row in zip(fields(), rows):
        cells = [cell.strip() for cell in row.strip("|").split(" | ")]
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        assert cells[0].strip("`").startswith(flag)
        assert cells[2] == str(f.metadata["role"])
        assert cells[4].startswith(f.metadata["help"].replace("|", "\\|").split("\n")[0][:40])


def test_the_readme_holds_the_generated_training_options_table():
    readme = options_table.README.read_text(encoding="utf-8")
    assert readme == options_table.readme_with_table(readme), (
        "README.md's training options are out of date: run python -m dreambooth_job.config.options_table")


def test_the_training_options_are_the_model_options_that_name_no_place():
    names = {f.name for f in options_table.training_fields()}
    # what a recipe moving here brings: captions, buckets, loss and noise, EMA, optimizers, adapters
    assert {"caption_dropout", "aspect_buckets", "snr_gamma", "noise_offset", "ema_decay", "optimizer",
            "lr_scheduler", "lora_variant"} <= names
    # places and operational options are not part of a recipe
    assert not names & {"instance_data", "output", "base_model", "class_data", "metrics_port",
                         "checkpoint_every"}
    rows = options_table.training_table().splitlines()[2:]
    assert len(rows) == len(names)
