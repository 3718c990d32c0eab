"""Credentials never travel in a batch file's rows into Job args: a URL with user:password@ is
refused, by option and row, without the password in the message."""

from __future__ import annotations

import pytest

from dreambooth_job.k8s.batch import BatchFileError, load_batch


def test_rows_and_defaults_with_url_credentials_are_refused(tmp_path):
    path = tmp_path / "night.yaml"
    path.write_text("""\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog}
  - {id: cat, instance_data: "s3://photos/cat/", class_noun: cat,
     pushgateway: "https://admin:hunter2-secret@pushgateway:9091"}
  - {id: owl, instance_data: "https://tok-secret-9@photos.example/owl/", class_noun: owl}
""")
    with pytest.raises(BatchFileError) as caught:
        load_batch(path)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert "subjects[1] (id cat)" in problems[0] and "--pushgateway" in problems[0]
    assert "subjects[2] (id owl)" in problems[1] and "--instance-data" in problems[1]
    assert "hunter2-secret" not in str(caught.value) and "tok-secret-9" not in str(caught.value)
    assert caught.value.exit_code == 2
