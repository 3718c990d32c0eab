"""The run page, `<output>/index.html`: one static HTML file (no scripts, no plotting service) that
shows a person what a run did, written by every run that holds its output's lease, succeeded or
failed (phases/publish.py).

    html = render(result.to_json(), history.points, thumbnails=[...], grids=["step-000004.png"])

What it shows: status (and the one-line error of a failed run), the identifier and prompts, the
subject photos used (small thumbnails, each with its caption's prompt) and rejected (file and
reason), the validation grids over time, the loss curve (instance and prior loss, an inline SVG),
phase durations, the evaluation scores against the base model when evaluated, the config and the
versions.

Images: the grids are relative links (`samples/step-000004.png`), which resolve wherever the
output prefix is served or synced to. The photos live in the tenant's input prefix, which the
page's reader may not be able to read: they are embedded as data: URIs of JPEG thumbnails made
from the photos the run decoded (a few kB each). Rejected photos get no thumbnail: a file
rejected as unreadable, too small or a decompression bomb is not decoded again for a picture.

Every string on the page comes from the redacted record (result.json's `to_json`) and is
HTML-escaped here; a sample file name becomes a link only when it has the grids' plain shape.
The page carries a Content-Security-Policy (outputs/page_policy.py): no script, no request but its own
images; how to serve it so that tenants' pages cannot reach each other is in docs/run-page.md.
"""

from __future__ import annotations

import base64
import html
import io
import json
import platform
import re
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

from dreambooth_job.evaluation import SCORE_NAMES
from dreambooth_job.outputs.loss_history import LossPoint
from dreambooth_job.outputs.page_policy import page_head

PAGE_FILE = "index.html"
GRID_NAME = re.compile(r"^step-(\d{6,})\.png$")
THUMBNAIL_SIDE = 128
MAX_DRAWN_POINTS = 2000
"""A curve wider than the page has pixels is thinned to this many points (every k-th, and the last)."""
_BAR_PX = 192
VERSIONED = ("dreambooth-job", "torch", "diffusers", "transformers", "accelerate", "peft")

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:72rem;color:#222;padding:0 1rem}
h1 .status{font-size:1rem;padding:.15rem .5rem;border-radius:.3rem;vertical-align:middle}
.succeeded{background:#dfd}.failed{background:#fdd}.error{color:#a00;white-space:pre-wrap}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:.3rem .6rem;text-align:left;
vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}
.photos{display:flex;flex-wrap:wrap;gap:.5rem}.photos figure{margin:0;font-size:.8rem;max-width:8rem;
overflow-wrap:anywhere}.grid figure{margin:0 0 1rem}.grid img{width:min(100%,48rem);height:auto;
image-rendering:pixelated;border:1px solid #ccc}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem}
"""


def render(result: dict[str, Any], history: Sequence[LossPoint], *, thumbnails: Sequence[str | None] = (),
           grids: Iterable[str] = (), versions: dict[str, str] | None = None) -> str:
    """The page of a run. `result` is result.json's content (redacted), `thumbnails` the data:
    URIs of the used photos in `result["photos"]["used"]` order, `grids` the file names under
    `<output>/samples/`."""
    esc = html.escape
    title = f"{result.get('subject_id', '')} ({result.get('job_id', '')})"
    status = str(result.get("status", ""))
    parts = [
        page_head(f"dreambooth-job run {title}", _CSS) + "<body>",
        f"<h1>{esc(str(result.get('subject_id', '')))} "
        f"<span class='status {esc(status)}'>{esc(status)}</span></h1>",
        _summary(result),
        _section("Identifier and prompts", _prompts(result)),
        _section("Subject photos", _photos(result.get("photos") or {}, thumbnails,
                                           (result.get("prompts") or {}).get("captions") or {})),
        _section("Validation grids", _grids(grids)),
        _section("Loss", loss_svg(history)),
        _section("Phase durations", _durations(result.get("durations_seconds") or {})),
    ]
    if result.get("metrics"):
        parts.append(_section("Evaluation against the base model", _scores(result["metrics"])))
    parts += [
        _section("Versions", _table(versions if versions is not None else library_versions(),
                                    extra={"package": result.get("package_version"),
                                           "image": result.get("image")})),
        _section("Config", f"<pre>{esc(json.dumps(result.get('config') or {}, indent=2))}</pre>"),
        "<p><a href='result.json'>result.json</a></p></body></html>\n",
    ]
    return "\n".join(parts)


def _section(heading: str, body: str) -> str:
    return f"<section><h2>{html.escape(heading)}</h2>{body}</section>"


def _summary(result: dict[str, Any]) -> str:
    esc, training = html.escape, result.get("training") or {}
    base = result.get("base_model") or {}
    error = result.get("error")
    facts = {"job": result.get("job_id"), "batch": result.get("batch_id"),
             "started": result.get("started_at"), "finished": result.get("finished_at"),
             "exit code": result.get("exit_code"),
             "steps": f"{training.get('steps_done')} of {training.get('max_train_steps')}",
             "resumed from step": training.get("resumed_from_step"),
             "final loss": training.get("final_loss"), "train mode": training.get("train_mode"),
             "device": training.get("device"),
             "base model": base.get("source"), "family": base.get("family"),
             "licence": base.get("license")}
    return ((f"<p class='error'>{esc(str(error))}</p>" if error else "") + _table(facts))


def _prompts(result: dict[str, Any]) -> str:
    identifier, prompts = result.get("identifier") or {}, result.get("prompts") or {}
    rows = {"identifier": f"{identifier.get('token', '')} ({identifier.get('chosen', '')})",
            "instance prompt": prompts.get("instance"), "class prompt": prompts.get("class")}
    rows.update({f"validation prompt {i + 1}": p for i, p in enumerate(prompts.get("validation") or [])})
    return _table(rows)


def _photos(photos: dict[str, Any], thumbnails: Sequence[str | None], captions: dict[str, Any]) -> str:
    """Each used photo's thumbnail, name and (when it has one) the prompt its caption made."""
    esc = html.escape
    used = [str(name) for name in photos.get("used") or []]
    figures = []
    for index, name in enumerate(used):
        thumb = thumbnails[index] if index < len(thumbnails) else None
        image = (f"<img src='{esc(thumb)}' alt='{esc(name)}' width='{THUMBNAIL_SIDE}'>"
                 if thumb and thumb.startswith("data:image/") else "")
        caption = captions.get(name) if isinstance(captions, dict) else None
        prompt = f"<br><q class='caption'>{esc(str(caption))}</q>" if caption else ""
        figures.append(f"<figure>{image}<figcaption>{esc(name)}{prompt}</figcaption></figure>")
    rejected = [(str(r.get("file", "")), str(r.get("reason", "")))
                for r in photos.get("rejected") or [] if isinstance(r, dict)]
    body = f"<h3>Used ({len(used)})</h3><div class='photos'>{''.join(figures)}</div>"
    if rejected:
        rows = "".join(f"<tr><td>{esc(f)}</td><td>{esc(r)}</td></tr>" for f, r in rejected)
        body += (f"<h3>Rejected ({len(rejected)})</h3><table><tr><th>file</th><th>reason</th></tr>"
                 f"{rows}</table>")
    return body


def _grids(names: Iterable[str]) -> str:
    """The grids in step order, each a relative link into samples/."""
    steps = sorted((int(m.group(1)), name) for name in names if (m := GRID_NAME.match(name)))
    if not steps:
        return "<p><em>no validation grid</em></p>"
    return "<div class='grid'>" + "".join(
        f"<figure><a href='samples/{name}'>"
        f"<img src='samples/{name}' alt='validation grid at step {step}'></a>"
        f"<figcaption>step {step}</figcaption></figure>" for step, name in steps) + "</div>"


def _durations(durations: dict[str, Any]) -> str:
    numbers = {str(k): float(v) for k, v in durations.items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    longest = max(numbers.values(), default=0) or 1
    # The bars are SVG, not styled elements: the page's policy allows no style attribute.
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td class='num'>{seconds:.1f} s</td>"
        f"<td><svg width='{_BAR_PX * seconds / longest:.1f}' height='12' aria-hidden='true'>"
        f"<rect width='100%' height='12' fill='#8ab'/></svg></td></tr>"
        for name, seconds in numbers.items())
    return f"<table>{rows}</table>" if rows else "<p><em>no phase finished</em></p>"


def _scores(metrics: dict[str, Any]) -> str:
    base, tuned = metrics.get("base") or {}, metrics.get("finetuned") or {}

    def cell(value: Any) -> str:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return f"<td class='num'>{value:.4f}</td>" if ok else "<td></td>"

    def change(name: str) -> Any:
        a, b = base.get(name), tuned.get(name)
        return b - a if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b)) else None

    rows = "".join(
        f"<tr><td>{name}</td>{cell(base.get(name))}{cell(tuned.get(name))}{cell(change(name))}</tr>"
        for name in SCORE_NAMES if name in base or name in tuned)
    return ("<table><tr><th>score</th><th>base</th><th>fine-tuned</th><th>change</th></tr>"
            f"{rows}</table>")


def _table(rows: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    esc = html.escape
    items = {**rows, **(extra or {})}
    return "<table>" + "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(_text(v))}</td></tr>"
        for k, v in items.items() if v not in (None, "")) + "</table>"


def _text(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------

def loss_svg(points: Sequence[LossPoint], width: int = 640, height: int = 260) -> str:
    """Instance and prior loss per logged step as an inline SVG (prior only when it was trained)."""
    if not points:
        return "<p><em>no loss logged</em></p>"
    if len(points) > MAX_DRAWN_POINTS:
        every = -(-len(points) // MAX_DRAWN_POINTS)
        points = [*points[:-1:every], points[-1]]
    series = {"instance loss": ("#1f77b4", [(p.step, p.instance_loss) for p in points])}
    if any(p.prior_loss for p in points):
        series["prior loss"] = ("#d62728", [(p.step, p.prior_loss) for p in points])
    values = [v for _, line in series.values() for _, v in line]
    low, high = min(values), max(values)
    first, last = points[0].step, points[-1].step
    left, right, top, bottom = 56, width - 10, 10, height - 48

    def x(step: int) -> float:
        return left + (right - left) * ((step - first) / (last - first) if last > first else 0.5)

    def y(value: float) -> float:
        return bottom - (bottom - top) * ((value - low) / (high - low) if high > low else 0.5)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img' aria-label='loss curve'>",
             f"<rect x='{left}' y='{top}' width='{right - left}' height='{bottom - top}' "
             "fill='none' stroke='#ccc'/>",
             f"<text x='{left - 4}' y='{top + 10}' text-anchor='end' font-size='11'>{high:.4g}</text>",
             f"<text x='{left - 4}' y='{bottom}' text-anchor='end' font-size='11'>{low:.4g}</text>",
             f"<text x='{left}' y='{bottom + 14}' font-size='11'>step {first}</text>",
             f"<text x='{right}' y='{bottom + 14}' text-anchor='end' font-size='11'>step {last}</text>"]
    for index, (name, (colour, line)) in enumerate(series.items()):
        coords = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in line)
        parts.append(f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='1.5'/>")
        # The legend under the plot, where no line can hide it.
        parts.append(f"<text x='{left + 120 * index}' y='{height - 8}' font-size='12' "
                     f"fill='{colour}'>&#9473; {name}</text>")
    parts.append("</svg>")
    return "".join(parts)


def thumbnail_uri(image, side: int = THUMBNAIL_SIDE) -> str:
    """A PIL image as a data: URI of a JPEG at most `side` pixels on its longer side."""
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def library_versions() -> dict[str, str]:
    """Python's and the installed libraries' versions (read from package metadata, no imports)."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found
