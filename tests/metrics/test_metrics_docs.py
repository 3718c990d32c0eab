"""docs/metrics.md and docs/grafana-dashboard.json agree with what the job exposes, and the names
follow Prometheus conventions."""

from __future__ import annotations

import json
import re

from metrics_support import DASHBOARD, METRICS_DOC, documented_metrics, family_types

from dreambooth_job import metrics
from dreambooth_job.metrics import PrometheusObserver

# Not the job's, but on the Pushgateway next to every pushed group.
PUSHGATEWAY_METRICS = {"push_time_seconds", "push_failure_time_seconds"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset"}


def exposed(make_config) -> dict[str, str]:
    return family_types(PrometheusObserver(make_config()).exposition().decode())


def test_documented_metrics_are_exactly_the_registry(make_config):
    assert set(documented_metrics()) == set(exposed(make_config))


def test_the_docs_mention_no_metric_that_does_not_exist(make_config):
    names = set(exposed(make_config)) | PUSHGATEWAY_METRICS
    mentioned = set(re.findall(r"\bdreambooth_[a-z0-9_]+\b(?!\.)", METRICS_DOC.read_text()))  # not the module
    assert mentioned <= names


def test_names_follow_prometheus_conventions(make_config):
    for name, kind in exposed(make_config).items():
        assert name.startswith("dreambooth_")
        assert name.endswith("_total") == (kind == "counter"), name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
        for unit in ("seconds", "bytes"):
            if unit in name:
                assert name.endswith((f"_{unit}", f"_{unit}_total")), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|gb|kib|mib|gib)(_|$)", name)
    registry_labels = {label for doc in documented_metrics().values() for label in doc["labels"]}
    assert not registry_labels & {"job", "instance", "le", "quantile"}
    assert set(metrics.ID_LABELS).isdisjoint(registry_labels)


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def metric_names_in(expr: str) -> set[str]:
    """Identifiers of a PromQL expression that can only be metric names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                     # string literals
    expr = re.sub(r"\$\{?\w+\}?", "", expr)                               # Grafana variables
    expr = re.sub(r"\{[^}]*\}", "", expr)                                 # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                                # range selectors
    expr = re.sub(r"\b\d[\w.]*", "", expr)                                  # numbers, durations
    expr = re.sub(r"label_values\(([^,()]+),[^)]*\)", r"\1", expr)        # Grafana's query
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        followed_by_call = expr[match.end():].lstrip().startswith("(")
        if match.group() not in PROMQL_WORDS and not followed_by_call:
            names.add(match.group())
    return names


def test_dashboard_queries_use_only_existing_metrics(make_config):
    known = set(exposed(make_config)) | PUSHGATEWAY_METRICS
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    used = set()
    for expr in exprs:
        names = metric_names_in(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= known, (expr, names - known)
        used |= names
    # The dashboard is an overview of the job: most of what it exposes should be on it.
    assert len(used & set(documented_metrics())) >= 0.8 * len(documented_metrics())


def test_the_name_extractor_sees_through_promql_syntax():
    expr = ('sum by (phase) (rate(dreambooth_x_total{a="b",c=~"$v"}[$__rate_interval])) '
            '/ on (phase) group_left dreambooth_y and time() - dreambooth_z offset 5m')
    assert metric_names_in(expr) == {"dreambooth_x_total", "dreambooth_y", "dreambooth_z"}


def test_dashboard_queries_parse_in_a_real_prometheus(start_prometheus):
    prometheus = start_prometheus([])
    queried = 0
    for dashboard_expr in dashboard_exprs():
        if dashboard_expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        expr = (dashboard_expr.replace("$__rate_interval", "1m").replace("$batch_id", ".*")
                .replace("$subject_id", ".*"))
        prometheus.query(expr)  # asserts status "success": a syntax error is "bad_data"
        queried += 1
    assert queried > 0
