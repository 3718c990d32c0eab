"""The stand-in kubelet's rules that need no apiserver (kubelet_container.py): `$(NAME)`
expansion and the termination message's limits, as the kubelet of Kubernetes v1.36 applies them."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubelet_container import MountMap, expand, termination_message

pytestmark = pytest.mark.cluster

# Cases of upstream's third_party/forked/golang/expansion/expand_test.go (TestMapping).
EXPANSION_CONTEXT = {"VAR_A": "A", "VAR_B": "B", "VAR_C": "C", "VAR_REF": "$(VAR_A)", "VAR_EMPTY": ""}


@pytest.mark.parametrize(("text", "expected"), [
    ("$(VAR_A)-$(VAR_A)", "A-A"), ("$$(VAR_B)_$(VAR_A)", "$(VAR_B)_A"), ("f000-$$VAR_A", "f000-$VAR_A"),
    ("$(VAR_A$(VAR_B))", "$(VAR_A$(VAR_B))"), ("$(VAR_REF)", "$(VAR_A)"), ("foo$(VAR_EMPTY)bar", "foobar"),
    ("foo$(VAR_Awhoops!", "foo$(VAR_Awhoops!"), ("$VAR_A", "$VAR_A"), ("$(VAR_DNE)", "$(VAR_DNE)"),
    ("$$$$$$$(VAR_A)", "$$$A"), ("$$$$$$$(GOOD_ODDS)", "$$$$(GOOD_ODDS)"), ("${VAR_A}", "${VAR_A}"),
    ("$(VAR_B)_______$(A", "B_______$(A"), ("$(VAR_A)foobarzab$", "Afoobarzab$"),
    ("$($($($($--foo$(", "$($($($($--foo$("), ("$(foo$$var)", "$(foo$$var)"), ("$中文", "$中文"),
])
def test_expansion_follows_upstream(text, expected):
    assert expand(text, EXPANSION_CONTEXT) == expected


def test_termination_message_limits_are_the_kubelets(tmp_path):
    message_file, log = tmp_path / "termination-log", tmp_path / "0.log"
    message_file.write_bytes(b"x" * 5000 + b"tail")
    log.write_text("".join(f"{i:04d} {'y' * 40}\n" for i in range(200)))
    assert termination_message(message_file, log, "FallbackToLogsOnError", 1) == ("x" * 4092 + "tail")
    message_file.write_bytes(b"")
    fallback = termination_message(message_file, log, "FallbackToLogsOnError", 1)
    assert len(fallback) == 2048 and fallback.endswith("0199 " + "y" * 40 + "\n")
    assert termination_message(message_file, log, "FallbackToLogsOnError", 0) == ""
    assert termination_message(message_file, log, "File", 1) == ""


def test_values_under_a_mount_path_are_rewritten_to_its_folder():
    mounts = MountMap({"/cache": Path("/w/cache"), "/cache/hf/": Path("/w/hf"), "/tmp": Path("/w/tmp")})
    assert [mounts.rewrite(v) for v in ("/cache", "/cache/x/y", "/cache/hf/model", "/cachex", "/tmp/")] == [
        "/w/cache", "/w/cache/x/y", "/w/hf/model", "/cachex", "/w/tmp/"]
    assert mounts.rewrite("--out=/cache/x") == "--out=/cache/x"  # only values that start with the path
