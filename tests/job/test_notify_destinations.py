"""Without an allow-list (the chart's default `operator.allowedHosts: []`), --notify-url must lead to
a public address: an internal one, in any form a resolver takes, is exit 2 with one line at
validation (train, submit, batch) and at the pod's start, and a name that resolves to one when the
call is made is refused at that lookup, before any connection. The operator allows internal
receivers by naming the host in DREAMBOOTH_OPERATOR_ALLOWED_HOSTS or with
DREAMBOOTH_OPERATOR_ALLOW_PRIVATE_NOTIFY=true."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner
from test_notify import Receiver, Recorder, run_args, train

from dreambooth_job import job
from dreambooth_job.cli import main
from dreambooth_job.config import outbound
from dreambooth_job.config.operator_policy import ALLOW_PRIVATE_NOTIFY_ENV
from dreambooth_job.config.train_config import TrainConfig
from dreambooth_job.exit_codes import ExitCode, InvalidInputError
from dreambooth_job.outputs import notify

INTERNAL = {
    "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
    "http://[::ffff:169.254.169.254]/": "a link-local address (as 169.254.169.254)",
    "http://[::ffff:a9fe:a9fe]/": "a link-local address (as 169.254.169.254)",
    "http://[64:ff9b::a9fe:a9fe]/": "a link-local address (as 169.254.169.254)",
    "http://2852039166/": "2852039166 is 169.254.169.254, a link-local address",
    "http://0xa9fea9fe/": "is 169.254.169.254, a link-local address",
    "http://0251.0376.0251.0376/": "is 169.254.169.254, a link-local address",
    "http://127.1:8080/": "127.1 is 127.0.0.1, a loopback address",
    "http://[::1]/": "::1 is a loopback address",
    "http://localhost/": "localhost is a loopback name",
    "https://10.1.2.3/hooks": "10.1.2.3 is a private address",
    "http://192.168.0.10/": "a private address",
    "http://[fd00:ec2::254]/": "fd00:ec2::254 is a unique-local address",
    "http://224.0.0.1/": "a multicast address",
    "http://0.0.0.0/": "the unspecified address",
    "http://100.100.100.200/": "not globally routable",
}


@pytest.fixture(autouse=True)
def no_operator_settings(monkeypatch):
    for name in ("DREAMBOOTH_OPERATOR_ALLOWED_HOSTS", ALLOW_PRIVATE_NOTIFY_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("url", INTERNAL)
def test_an_internal_notify_address_is_refused_at_validation_naming_it(url):
    with pytest.raises(InvalidInputError) as error:
        TrainConfig(notify_url=url)
    message = error.value.message
    assert message.startswith("--notify-url names an internal address: ") and "\n" not in message
    assert INTERNAL[url] in message
    assert "DREAMBOOTH_OPERATOR_ALLOWED_HOSTS" in message and ALLOW_PRIVATE_NOTIFY_ENV in message


@pytest.mark.parametrize("url", ["https://hooks.example/dreambooth", "http://8.8.8.8/",
                                 "http://[2606:4700:4700::1111]/", "http://[::ffff:8.8.8.8]/"])
def test_a_public_notify_address_passes_validation(url):
    assert TrainConfig(notify_url=url).notify_url == url


def test_the_operator_allows_internal_receivers_explicitly(monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_OPERATOR_ALLOWED_HOSTS", "169.254.169.254")
    assert TrainConfig(notify_url="http://169.254.169.254/hook").notify_url
    with pytest.raises(InvalidInputError, match="does not allow"):
        notify.check_destinations(TrainConfig(notify_url="http://10.0.0.1/"),
                                  notify.OperatorPolicy.from_env())
    monkeypatch.delenv("DREAMBOOTH_OPERATOR_ALLOWED_HOSTS")
    monkeypatch.setenv(ALLOW_PRIVATE_NOTIFY_ENV, "true")
    assert TrainConfig(notify_url="http://[::ffff:169.254.169.254]/").notify_url


def test_train_with_a_metadata_notify_url_exits_2_before_any_work(photo_dir, tiny_model, tmp_path):
    output = tmp_path / "out"
    outcome = train(*run_args(photo_dir, tiny_model, tmp_path, output),
                    "--notify-url", "http://[::ffff:169.254.169.254]/latest/")
    assert outcome.exit_code == ExitCode.INVALID_INPUT
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--notify-url names an internal address" in errors[0]
    assert not output.exists()


def test_a_batch_row_with_an_internal_notify_url_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "night.yaml"
    path.write_text("""\
defaults: {output: "s3://runs/{id}/"}
subjects:
  - {id: dog, instance_data: "s3://photos/dog/", class_noun: dog, notify_url: "https://hooks.example/"}
  - {id: cat, instance_data: "s3://photos/cat/", class_noun: cat, notify_url: "http://2852039166/"}
""")
    outcome = CliRunner().invoke(main, ["batch", str(path), "--image", "img:1", "--dry-run"])
    assert outcome.exit_code == ExitCode.INVALID_INPUT, outcome.output
    assert "subjects[1] (id cat):" in outcome.output and "internal address" in outcome.output
    assert "Traceback" not in outcome.output


def internal_name() -> str:
    """This machine's host name: a name (no address literal) that resolves to an internal address
    (loopback or the pod's private address)."""
    name = socket.gethostname()
    assert outbound.literal_address(name) is None and outbound.check_literal(f"http://{name}/") is None
    with pytest.raises(outbound.InternalAddressError):
        outbound.checked_addresses(name, 80)
    return name


def test_a_name_resolving_to_an_internal_address_exits_2_at_the_pods_start(photo_dir, tiny_model,
                                                                          tmp_path):
    config = TrainConfig(**{"instance_data": str(photo_dir), "class_noun": "dog",
                            "base_model": str(tiny_model), "output": str(tmp_path / "out"),
                            "cache_dir": str(tmp_path / "cache"), "metrics_port": 0,
                            "notify_url": f"http://{internal_name()}:9/hook"})
    with pytest.raises(InvalidInputError, match=r"--notify-url names an internal address: .* resolves to"):
        job.run(config)
    assert not (tmp_path / "out").exists()


def test_the_call_checks_the_address_its_own_lookup_answers(tmp_path):
    """As if the name resolved to a public address at the start and to an internal one at the call
    (DNS rebinding): the call's own lookup is checked, and nothing is sent."""
    hook = Receiver(host="0.0.0.0")  # reachable under the host name, whatever it resolves to
    try:
        url = f"http://{internal_name()}:{hook.server.server_port}/hook"
        config = TrainConfig(output=str(tmp_path), job_id="j", subject_id="s")
        observer = Recorder()
        notify.announce(notify.Notifier(url, backoff=(0.0,)), observer, config, ExitCode.OK)
        assert hook.requests == [] and observer.notify_failures == 1

        allowed = notify.Notifier(url, backoff=(0.0,), public_only=False)  # the same call, allowed
        notify.announce(allowed, Recorder(), config, ExitCode.OK)
        assert len(hook.requests) == 1
    finally:
        hook.close()
