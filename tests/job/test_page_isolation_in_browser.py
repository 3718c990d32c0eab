"""The run page and the batch report in headless Chromium, served over loopback HTTP as a bucket
would serve them: the Content-Security-Policy in each page is parsed and enforced. Tenant text
carrying markup (a subject id, a validation prompt) is shown as text; and were an escape ever
missed (the same text written raw into the page), no script or inline handler runs and nothing
is fetched from anywhere, while the page's own style and images still work."""

from __future__ import annotations

import functools
import html
import http.server
import threading
from pathlib import Path

import pytest
from browser import chromium, open_page
from PIL import Image

from dreambooth_job.k8s import JobStatus, Phase
from dreambooth_job.k8s.batch_report import write_report
from dreambooth_job.k8s.status import load_result
from dreambooth_job.outputs.page_policy import SERVED_HEADERS
from dreambooth_job.outputs.result import (
    BaseModelInfo,
    Identifier,
    Outputs,
    Photos,
    Prompts,
    RunResult,
    Training,
    mark_complete,
)
from dreambooth_job.outputs.run_page import PAGE_FILE, render, thumbnail_uri


class Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves a directory with `headers` added, and records every path asked for."""

    def __init__(self, *args, seen: list[str], headers: dict[str, str], **kwargs):
        self.seen, self.extra_headers = seen, headers
        super().__init__(*args, **kwargs)

    def end_headers(self):
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self):  # noqa: N802 - http.server's name
        self.seen.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(directory, headers) -> (origin, paths asked for); servers stop with the test."""
    servers = []

    def start(directory: Path, headers: dict[str, str] | None = None) -> tuple[str, list[str]]:
        seen: list[str] = []
        handler = functools.partial(Recorder, seen=seen, headers=headers or {}, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def needs_chromium():
    if chromium() is None:
        pytest.fail("chromium is missing and scripts/install-system-deps.sh could not install it")


def hostile(elsewhere: str) -> str:
    """Markup a tenant may put in its text: scripts, handlers and loads from another origin."""
    return (f"<script>document.title='ran'</script><img src='nope.png' onerror=\"document.title='ran'\">"
            f"<script src='{elsewhere}/s.js'></script><img src='{elsewhere}/i.png'>"
            f"<link rel='stylesheet' href='{elsewhere}/c.css'><iframe src='{elsewhere}/f.html'></iframe>"
            f"<style>body{{background:url('{elsewhere}/bg.png')}}</style><base href='{elsewhere}/'>")


SUBJECT = "dog<b onmouseover=alert(1)>"
CHECKS = {"title": "document.title", "max_width": "getComputedStyle(document.body).maxWidth",
          "font": "getComputedStyle(document.body).fontFamily"}


def write_run(output: Path, markup: str) -> None:
    """A finished run's output as publish leaves it: grid, result.json, marker and page."""
    (output / "samples").mkdir(parents=True)
    Image.new("RGB", (64, 64), "teal").save(output / "samples" / "step-000002.png")
    result = RunResult(
        job_id="dog-1", subject_id=SUBJECT, config={}, config_fingerprint="f",
        identifier=Identifier(token="sks", chosen="auto"),
        prompts=Prompts(instance="a sks dog", class_prompt="a dog", validation=[f"a sks dog {markup}"]),
        base_model=BaseModelInfo(source="tiny"), training=Training(max_train_steps=2, steps_done=2),
        photos=Photos(used=["a.jpg"]), durations_seconds={"train": 3.0},
        outputs=Outputs(result=str(output / "result.json"),
                        samples=[str(output / "samples" / "step-000002.png")]))
    result.succeeded()
    result.write(str(output))
    mark_complete(str(output))
    thumb = thumbnail_uri(Image.new("RGB", (200, 100), "orange"))
    (output / PAGE_FILE).write_text(render(result.to_json(), [], thumbnails=[thumb],
                                           grids=["step-000002.png"], versions={}))


def unescaped(page: Path, markup: str) -> Path:
    """The page as it would be had an escape been missed: the markup raw where its text was."""
    text = page.read_text()
    assert html.escape(markup) in text
    raw = page.with_name("raw.html")
    raw.write_text(text.replace(html.escape(markup), markup))
    return raw


def page_errors(seen) -> list[str]:
    """The console's errors but the browser's own request for /favicon.ico (404 here)."""
    return [e for e in seen.console_errors if not e.endswith("/favicon.ico")]


def assert_nothing_ran_or_loaded(seen, elsewhere_asked: list[str], own_asked: list[str]) -> None:
    assert seen.values["title"].startswith("dreambooth-job") and "ran" not in seen.values["title"]
    assert elsewhere_asked == []  # no script, style, image, frame or base from another origin
    assert not any(p.rsplit("/", 1)[-1] in ("s.js", "c.css", "bg.png", "f.html") for p in own_asked)
    assert "system-ui" in seen.values["font"]  # the page's own <style> still applies


def test_the_run_page_runs_no_tenant_markup_and_loads_nothing_from_elsewhere(tmp_path, serve):
    elsewhere, elsewhere_asked = serve(tmp_path / "nothing-here")
    markup = hostile(elsewhere)
    run = tmp_path / "runs" / "dog"
    write_run(run, markup)
    origin, own_asked = serve(run)
    page = (run / PAGE_FILE).read_text()
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in page

    seen = open_page(f"{origin}/{PAGE_FILE}", evaluate=CHECKS)
    assert page_errors(seen) == []  # the policy blocks nothing the page itself uses
    assert markup in seen.text and SUBJECT in seen.text  # shown as text
    assert [i["complete"] and i["width"] > 0 for i in seen.images] == [True, True]  # thumbnail, grid
    assert seen.values["max_width"] == "1152px"  # 72rem: the <style> allowed by its hash

    own_asked.clear()
    seen = open_page(f"{origin}/{unescaped(run / PAGE_FILE, markup).name}", evaluate=CHECKS)
    assert_nothing_ran_or_loaded(seen, elsewhere_asked, own_asked)
    assert "/samples/step-000002.png" in own_asked  # relative images still from its own origin
    assert any("Content Security Policy" in e for e in seen.console_errors)  # blocked, and said so


def test_the_batch_report_runs_no_tenant_markup_and_opens_run_pages_apart(tmp_path, serve):
    elsewhere, elsewhere_asked = serve(tmp_path / "nothing-here")
    markup = hostile(elsewhere)
    root = tmp_path / "night"
    write_run(root / "dog", markup)
    status = JobStatus(name="night-dog", namespace="ml", phase=Phase.FAILED, subject_id=SUBJECT,
                       output=str(root / "dog"), failure_reason=f"exit 2: {markup}")
    load_result(status)
    write_report([status], str(root / "report"), batch_id="night")
    origin, own_asked = serve(root)
    report = (root / "report" / "index.html").read_text()
    assert "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none';" in report
    link = ("<a href='../dog/index.html' target='_blank' rel='noopener noreferrer' "
            "referrerpolicy='no-referrer'>run page</a>")
    assert link in report and "<iframe" not in report and "<object" not in report

    seen = open_page(f"{origin}/report/index.html", evaluate={
        **CHECKS, "links": "JSON.stringify([...document.links].map(a => [a.href, a.relList.value]))"})
    assert page_errors(seen) == [] and markup in seen.text
    assert seen.values["links"] == f'[["{origin}/dog/index.html","noopener noreferrer"]]'

    own_asked.clear()
    seen = open_page(f"{origin}/report/{unescaped(root / 'report' / 'index.html', markup).name}",
                     evaluate=CHECKS)
    assert_nothing_ran_or_loaded(seen, elsewhere_asked, own_asked)
    assert any("Content Security Policy" in e for e in seen.console_errors)


def test_served_with_the_documented_headers_a_page_the_tenant_wrote_itself_is_contained(tmp_path, serve):
    """A tenant replaces its index.html with its own (no meta policy): behind a server that sets
    SERVED_HEADERS (docs/run-page.md) nothing of it runs or loads from elsewhere, and it has an
    opaque origin, no handle on the site's cookies; the pages this package writes still work."""
    elsewhere, elsewhere_asked = serve(tmp_path / "nothing-here")
    root = tmp_path / "night"
    write_run(root / "dog", "<b>bold</b>")
    write_report([], str(root / "report"), batch_id="night")
    forged = root / "evil" / PAGE_FILE
    forged.parent.mkdir()
    forged.write_text(f"<!doctype html><title>dreambooth-job forged</title><body>{hostile(elsewhere)}")
    origin, own_asked = serve(root, SERVED_HEADERS)
    origin_checks = {**CHECKS, "origin": "self.origin",
                     "cookie": "(() => { try { return document.cookie } catch (e) { return e.name } })()"}

    seen = open_page(f"{origin}/evil/{PAGE_FILE}", evaluate=origin_checks)
    assert seen.values["title"] == "dreambooth-job forged" and elsewhere_asked == []
    assert (seen.values["origin"], seen.values["cookie"]) == ("null", "SecurityError")
    assert not any(p.rsplit("/", 1)[-1] in ("s.js", "c.css", "bg.png", "f.html") for p in own_asked)

    seen = open_page(f"{origin}/dog/{PAGE_FILE}", evaluate=origin_checks)
    assert page_errors(seen) == [] and seen.values["max_width"] == "1152px"
    assert [i["complete"] and i["width"] > 0 for i in seen.images] == [True, True]
    seen = open_page(f"{origin}/report/{PAGE_FILE}", evaluate=origin_checks)
    assert page_errors(seen) == [] and "system-ui" in seen.values["font"]


def test_the_documented_headers_are_the_ones_tested():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "run-page.md").read_text()
    for name, value in SERVED_HEADERS.items():
        assert f"{name}: {value}" in docs or f'"{name}" "{value}"' in docs, name
