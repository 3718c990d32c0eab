"""The morning-after page: every subject's final sample grid, status and metrics, worst first.

    dreambooth-job report --batch night-42.yaml --output s3://runs/night-42/report/

writes report.json (summary + one row per subject), index.html (static, no scripts) and
images/<subject>.png, a copy of each subject's final grid, linked relatively so the folder works
wherever it is served or synced to (`aws s3 sync s3://runs/night-42/report/ report/`).
With `embed_images=True` the grids are inlined instead and index.html stands alone.

Each subject links its run page (`<output>/index.html`, outputs/run_page.py) by a relative path when the
page exists and lives in the report's bucket (or, local, file system): the link resolves where
both are served from, or synced together (`aws s3 sync s3://runs/night-42/ night-42/`). A page
elsewhere (another bucket) is named, not linked: an s3:// URI is no link a browser follows.
The page is the tenant's to rewrite, so it is treated as untrusted: never embedded (no frame, no
image of it), linked only as a plain relative path (LINK) that opens in a new browsing context
without opener or referrer (UNTRUSTED_LINK). The report itself carries the same
Content-Security-Policy as the run page (outputs/page_policy.py); serving: docs/run-page.md.

result.json is written by the tenant's job, so its list of samples is only a list of names: a
grid is copied only from directly under the subject's own `<output>/samples/`, as a PNG of at most
MAX_GRID_BYTES (never a link out of the output on local disk), so that a forged result.json cannot
copy another prefix's objects or a local file (credentials, tokens) into the report.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import posixpath
import re
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dreambooth_job.k8s.status import JobStatus, Phase, format_duration
from dreambooth_job.outputs.page_policy import page_head
from dreambooth_job.outputs.run_page import PAGE_FILE
from dreambooth_job.storage import places as storage

# Higher is better for each; the first one present orders the subjects.
SORT_METRICS = ("dino", "clip_i", "clip_t")
MAX_GRID_BYTES = 32 * 2**20
"""Grids are a few MB (a 4x4 grid of 1024 px PNGs is about 20 MB); larger files are not copied."""
GRID_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.png$")
PNG_MAGIC = b"\x89PNG"  # the start of the 8-byte signature: no text file starts so
LINK = re.compile(r"^(?:\.\./)*(?:[A-Za-z0-9._~%-]+/)*" + re.escape(PAGE_FILE) + "$")
"""A link to a run page: a relative path of plain (percent-encoded) segments, nothing a browser
could read as a scheme (javascript:, data:), a host (//) or a query."""
UNTRUSTED_LINK = "target='_blank' rel='noopener noreferrer' referrerpolicy='no-referrer'"
"""Each run page is the tenant's to rewrite: it opens in a new browsing context that has no handle
on the report's window (noopener) and learns nothing of where it was linked from (no referrer)."""
_PHASE_RANK = {Phase.FAILED: 0, Phase.SUCCEEDED: 1, Phase.RETRYING: 2, Phase.RUNNING: 3,
               Phase.PENDING: 4, Phase.QUEUED: 5, Phase.NOT_SUBMITTED: 6}


def numeric_metrics(status: JobStatus) -> dict[str, float]:
    """The scores to show: the fine-tuned model's by name, the base model's as "base_<name>"
    (result_reader.RunRecord.scores)."""
    return dict(status.result.scores) if status.result is not None else {}


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


def final_grid(samples: Sequence[str], output: str | None) -> str | None:
    """The last sample grid of a run under `output`, of the `samples` its result.json records:
    one named 'final', else the highest step, else the last. Only recorded samples directly under
    `<output>/samples/` count, and the URI is rebuilt from `output` and the file name, never taken
    as recorded."""
    if not output:
        return None
    samples_dir = storage.join(output, "samples")
    names = [name for uri in samples if (name := _sample_name(uri, samples_dir))]
    if not names:
        return None
    named = [n for n in names if "final" in n.lower()]
    steps = [(int(m.group(1)), n) for n in names if (m := re.search(r"(\d+)\D*$", n))]
    chosen = named[-1] if named else max(steps)[1] if steps else names[-1]
    return storage.join(samples_dir, chosen)


def _sample_name(uri: Any, samples_dir: str) -> str | None:
    prefix = samples_dir.rstrip("/") + "/"
    if not isinstance(uri, str) or not uri.startswith(prefix):
        return None
    name = uri[len(prefix):]
    return name if GRID_NAME.match(name) else None


def read_grid(uri: str, output: str) -> bytes | None:
    """The grid's bytes when it is a PNG of at most MAX_GRID_BYTES inside `output`, else None."""
    samples_dir, name = uri.rsplit("/", 1)
    listed = {f.relative_path: f.size for f in storage.list_files(samples_dir, [".png"])}
    if listed.get(name, MAX_GRID_BYTES + 1) > MAX_GRID_BYTES:
        return None
    if not storage.is_s3(uri):
        path = Path(uri)
        if path.is_symlink() or not path.resolve().is_relative_to(Path(output).resolve()):
            return None  # a link (or a linked samples/) pointing out of the output
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, OSError):
        return None
    return data if len(data) <= MAX_GRID_BYTES and data.startswith(PNG_MAGIC) else None


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
        row["grid_source"] = final_grid(status.result.samples if status.result else (), status.output)
        row["grid"] = _copy_grid(status, row["grid_source"], output_uri, embed_images)
        row["page_source"], row["page"] = run_page(status.output, output_uri)
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


def run_page(output: str | None, report_uri: str) -> tuple[str | None, str | None]:
    """The subject's run page, `<output>/index.html`, when it exists, and the link to it from the
    report's index.html: relative, when both are under one bucket (or on one file system) and the
    page's path has no empty, '.' or '..' part (which a URL would not keep verbatim)."""
    if not output:
        return None, None
    page = storage.join(output, PAGE_FILE)
    try:
        if not storage.exists(page):
            return None, None
    except Exception:  # noqa: BLE001 - an unreadable prefix is a row without a link, not a failed report
        return None, None
    if storage.is_s3(page) != storage.is_s3(report_uri):
        return page, None
    if storage.is_s3(page):
        (bucket, key), (report_bucket, report_key) = storage.split_s3(page), storage.split_s3(report_uri)
        if bucket != report_bucket or any(part in ("", ".", "..") for part in key.split("/")):
            return page, None
        relative = posixpath.relpath(key, report_key.rstrip("/") or ".")
    else:
        relative = os.path.relpath(os.path.abspath(page), os.path.abspath(report_uri))
        relative = relative.replace(os.sep, "/")
    link = urllib.parse.quote(relative)
    return page, link if LINK.match(link) else None


def _copy_grid(status: JobStatus, source: str | None, output_uri: str, embed: bool) -> str | None:
    data = read_grid(source, status.output) if source and status.output else None
    if data is None:
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
        page_head(f"dreambooth-job batch {report['batch_id']}", _CSS) + "<body>",
        f"<h1>Batch {esc(report['batch_id'])}</h1>",
        (f"<p>{len(report['subjects'])} subjects: {esc(counts)}{order}. "
         f"Generated {esc(report['generated_at'])}.</p>"),
        "<table><tr><th>subject</th><th>final sample grid</th></tr>",
    ]
    for row in report["subjects"]:
        facts = {"job": row["name"], "retries": row["retries"],
                 "duration": format_duration(row["duration_seconds"]),
                 "final loss": _number(row["final_loss"]), "weights": row.get("weights"),
                 "output": row["output"]}
        facts.update({name: _number(value) for name, value in row["metrics"].items()})
        details = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>"
                          for k, v in facts.items() if v not in (None, ""))
        reason = row["failure_reason"] or row.get("result_error")
        page = (f"<p><a href='{esc(row['page'])}' {UNTRUSTED_LINK}>run page</a></p>" if row.get("page") else
                f"<p>run page: {esc(row['page_source'])}</p>" if row.get("page_source") else "")
        grid = (f"<img src='{esc(row['grid'])}' alt='samples of {esc(str(row['subject_id']))}' "
                "loading='lazy'>" if row["grid"] else "<em>no sample grid</em>")
        parts.append(
            f"<tr><td class='info'><h3>{esc(str(row['subject_id']))}</h3>"
            f"<span class='phase {esc(row['phase'])}'>{esc(row['phase'])}</span>"
            + (f"<p class='reason'>{esc(reason)}</p>" if reason else "")
            + f"{page}<dl>{details}</dl></td><td>{grid}</td></tr>")
    parts.append("</table></body></html>\n")
    return "\n".join(parts)


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4g}"
