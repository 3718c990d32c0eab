"""What the static pages this package writes (the run page, outputs/run_page.py; the batch report,
k8s/batch_report.py) may do in a browser: the head both start with, carrying a Content-Security-Policy.

    parts = [page_head("dreambooth-job run dog (dog-1)", CSS), "<body>...</body></html>"]

Both pages are served from buckets that tenants write to, and hold tenant-written text (ids,
prompts, file names, error lines). Every such string is HTML-escaped where it is written; the
policy is the second wall, for an escape that was missed: no script at all (inline, `on...`
attributes, `javascript:` URLs), no request to anywhere (scripts, styles, fonts, frames, fetches,
form posts, a `<base>` that re-points the relative links), images only from the page's own origin
(the relative grids) or data: URIs (the thumbnails, `report --embed-images`), and of styles only
the page's own `<style>` element, allowed by its SHA-256, so that injected CSS cannot load a URL
either. `<meta name="referrer">` keeps the page's URL (a tenant's prefix) out of any request.

A policy in a `<meta>` element protects only the pages this package wrote: a tenant can replace
its own index.html with one that has none. Isolation between tenants therefore also needs the
pages served from their own origin, or behind a proxy that sets the same policy with `sandbox` as
a response header (docs/run-page.md).
"""

from __future__ import annotations

import base64
import hashlib
import html

SERVED_HEADERS = {
    "Content-Security-Policy": "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
                               "img-src 'self' data:; style-src 'unsafe-inline'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
"""The response headers whatever serves the pages sets (docs/run-page.md). They hold for a page a
tenant wrote itself, which has no `<meta>` policy: no script runs, nothing loads from elsewhere,
and `sandbox` (without allow-same-origin) gives every page an opaque origin of its own, so one
tenant's page can read neither another's nor the site's cookies or storage. Popups are allowed
(out of the sandbox) so that the report's links open. A page's own `<style>` is allowed inline
here: the meta policy of the pages this package writes narrows it to their hash."""


def content_security_policy(css: str) -> str:
    """The policy of a page whose only style is `<style>{css}</style>`."""
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return (f"default-src 'none'; img-src 'self' data:; style-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def page_head(title: str, css: str) -> str:
    """The doctype and `<head>` of a page: the policy comes first, before anything it governs."""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{content_security_policy(css)}\">"
            "<meta name='referrer' content='no-referrer'>"
            f"<title>{html.escape(title)}</title><style>{css}</style></head>")
