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
