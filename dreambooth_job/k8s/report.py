"""The morning-after page: every subject's final sample grid, status and metrics, worst first.

    dreambooth-job report --batch night-42.yaml --output s3://runs/night-42/report/

writes report.json (summary + one row per subject), index.html (static, no scripts) and
images/<subject>.png, a copy of each subject's final grid, linked relatively so the folder works
wherever it is served or synced to (`aws s3 sync s3://runs/night-42/report/ report/`).
With `embed_images=True` the grids are inlined instead and index.html stands alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from dreambooth_job import storage
from dreambooth_job.evaluation import SCORE_NAMES
from dreambooth_job.k8s.status import JobStatus, Phase, format_duration

# Higher is better for each; the first one present orders the subjects.
SORT_METRICS = ("dino", "clip_i", "clip_t")
_PHASE_RANK = {Phase.FAILED: 0, Phase.SUCCEEDED: 1, Phase.RETRYING: 2, Phase.RUNNING: 3,
               Phase.PENDING: 4, Phase.QUEUED: 5, Phase.NOT_SUBMITTED: 6}


def numeric_metrics(status: JobStatus) -> dict[str, float]:
    """The scores to show: the fine-tuned model's by name, the base model's as "base_<name>".

    `train --evaluate` writes {"base": row, "finetuned": row, "protocol": ...}; a flat mapping of
    numbers (another tool's result.json) is shown as it is.
    """
    metrics = (status.result or {}).get("metrics") or {}
    if "finetuned" in metrics:
        rows = {"": metrics["finetuned"], "base_": metrics.get("base") or {}}
        names = set(SCORE_NAMES)
    else:
        rows, names = {"": metrics}, None
    return {prefix + name: float(value) for prefix, row in rows.items() for name, value in row.items()
            if (names is None or name in names)
            and isinstance(value, (int, float)) and not isinstance(value, bool)}


def sort_metric(statuses: list[JobStatus]) -> str | None:
    present = {name for s in statuses for name in numeric_metrics(s)}
    return next((m for m in SORT_METRICS if m in present), None)


def worst_first(statuses: list[JobStatus]) -> list[JobStatus]:
    """Failures on top, then the lowest `sort_metric`, then phase; file order breaks ties."""
    metric = sort_metric(statuses)

    def key(item: tuple[int, JobStatus]) -> tuple:
        index, status = item
        value = numeric_metrics(status).get(metric, math.inf) if metric else math.inf
        return _PHASE_RANK[status.phase], value, index

    return [s for _, s in sorted(enumerate(statuses), key=key)]


def final_grid(result: dict[str, Any] | None) -> str | None:
    """The last sample grid of a run: one named 'final', else the highest step, else the last."""
    samples = list(((result or {}).get("outputs") or {}).get("samples") or [])
    if not samples:
        return None
    named = [s for s in samples if "final" in s.rsplit("/", 1)[-1].lower()]
    if named:
        return named[-1]
    steps = [(int(m.group(1)), s) for s in samples if (m := re.search(r"(\d+)\D*$", s))]
    return max(steps)[1] if steps else samples[-1]


def summary(statuses: list[JobStatus]) -> dict[str, int]:
    counts = Counter(s.phase.value for s in statuses)
    return {phase.value: counts.get(phase.value, 0) for phase in _PHASE_RANK if counts.get(phase.value)}


def write_report(statuses: list[JobStatus], output_uri: str, *, batch_id: str,
                 embed_images: bool = False) -> dict[str, Any]:
    """Write report.json, index.html and the grids under `output_uri`; returns the JSON report."""
    ordered = worst_first(statuses)
    rows = []
    for status in ordered:
        row = status.to_dict()
        row["metrics"] = numeric_metrics(status)
        row["grid"] = _copy_grid(status, output_uri, embed_images)
        row["grid_source"] = final_grid(status.result)
        rows.append(row)
    report = {
        "batch_id": batch_id,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": summary(statuses),
        "sorted_by": sort_metric(statuses),
        "subjects": rows,
    }
    storage.write_bytes(storage.join(output_uri, "report.json"),
                        json.dumps({**report, "subjects": [_without_data(r) for r in rows]},
                                   indent=2).encode())
    storage.write_bytes(storage.join(output_uri, "index.html"), render_html(report).encode())
    return report


def _copy_grid(status: JobStatus, output_uri: str, embed: bool) -> str | None:
    source = final_grid(status.result)
    if source is None:
        return None
    try:
        data = storage.read_bytes(source)
    except (FileNotFoundError, OSError):
        return None
    if embed:
        return "data:image/png;base64," + base64.b64encode(data).decode()
    relative = f"images/{status.subject_id or status.name}.png"
    storage.write_bytes(storage.join(output_uri, relative), data)
    return relative


def _without_data(row: dict[str, Any]) -> dict[str, Any]:
    grid = row.get("grid") or ""
    return {**row, "grid": None if grid.startswith("data:") else row.get("grid")}


# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.5rem;vertical-align:top;text-align:left}
td.info{width:22rem;font-size:.9rem} img{max-width:100%;height:auto}
.phase{font-weight:bold;padding:.1rem .4rem;border-radius:.3rem}
.failed{background:#fdd}.succeeded{background:#dfd}.running,.retrying,.pending{background:#ffd}
.reason{color:#a00;white-space:pre-wrap} dl{display:grid;grid-template-columns:auto 1fr;margin:0}
dt{color:#666} dd{margin:0 0 0 .6rem}
"""


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    counts = ", ".join(f"{n} {phase}" for phase, n in report["summary"].items())
    order = f", worst {esc(report['sorted_by'])} first" if report["sorted_by"] else ""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>dreambooth-job batch {esc(report['batch_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Batch {esc(report['batch_id'])}</h1>",
        (f"<p>{len(report['subjects'])} subjects: {esc(counts)}{order}. "
         f"Generated {esc(report['generated_at'])}.</p>"),
        "<table><tr><th>subject</th><th>final sample grid</th></tr>",
    ]
    for row in report["subjects"]:
        facts = {"job": row["name"], "retries": row["retries"],
                 "duration": format_duration(row["duration_seconds"]),
                 "final loss": _number(row["final_loss"]), "output": row["output"]}
        facts.update({name: _number(value) for name, value in row["metrics"].items()})
        details = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>"
                          for k, v in facts.items() if v not in (None, ""))
        reason = row["failure_reason"] or row.get("result_error")
        grid = (f"<img src='{esc(row['grid'])}' alt='samples of {esc(str(row['subject_id']))}' "
                "loading='lazy'>" if row["grid"] else "<em>no sample grid</em>")
        parts.append(
            f"<tr><td class='info'><h3>{esc(str(row['subject_id']))}</h3>"
            f"<span class='phase {esc(row['phase'])}'>{esc(row['phase'])}</span>"
            + (f"<p class='reason'>{esc(reason)}</p>" if reason else "")
            + f"<dl>{details}</dl></td><td>{grid}</td></tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"
