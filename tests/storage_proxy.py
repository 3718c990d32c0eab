"""A loopback HTTP proxy in front of the test S3 server that answers like a less friendly store.

`S3TestProxy(upstream, strip_headers={"if-none-match"})` forwards every request minus those
headers: the real server behind it then behaves like an object store that ignores conditional
writes. `EncryptedBucketProxy` answers like an encrypted bucket: with SSE-KMS or SSE-C, S3's
ETags are not the MD5 of the content; moto and SeaweedFS answer MD5
ETags whatever the encryption. This proxy rewrites every object ETag it passes on (ETag headers of
HEAD, GET, PUT and CompleteMultipartUpload answers, <ETag> in XML listings) to another, stable
value, and translates If-Match / If-None-Match back, so that conditional writes and the transfer
manager's consistent ranged GETs still work. Parts' ETags (UploadPart) pass as they are: clients
only hand them back to the server.

It can also answer requests with an S3 error (e.g. ExpiredToken) and corrupt GET bodies in flight.
The Host header is forwarded unchanged: the server (without -s3.config) does not check signatures.

    with EncryptedBucketProxy(server.endpoint) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
"""

from __future__ import annotations

import hashlib
import http.client
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "expect", "content-length"}
ETAG_XML = re.compile(rb"<ETag>(&quot;|&#34;|\")?([^<&\"]+)(&quot;|&#34;|\")?</ETag>")


@dataclass
class Request:
    """What the proxy saw of one request (for assertions)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class _Fault:
    matches: Callable[[Request], bool]
    remaining: int
    status: int
    code: str


class S3TestProxy:
    def __init__(self, upstream: str, *, rewrite_etags: bool = False, strip_headers=()):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rewrite_etags = rewrite_etags
        self.stripped = {h.lower() for h in strip_headers}
        self.requests: list[Request] = []
        self._real_by_fake: dict[str, str] = {}
        self._faults: list[_Fault] = []
        self._corrupt: list[Callable[[Request], bool]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.proxy = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> S3TestProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- what tests control ------------------------------------------------------------------
    def fail(self, count: int, code: str, status: int = 400,
             matches: Callable[[Request], bool] = lambda r: True) -> None:
        """Answer the next `count` requests that `matches` with the S3 error `code`."""
        with self._lock:
            self._faults.append(_Fault(matches, count, status, code))

    def corrupt(self, matches: Callable[[Request], bool]) -> None:
        """Flip one byte of the body of the next GET answer that `matches`."""
        with self._lock:
            self._corrupt.append(matches)

    @staticmethod
    def fake_etag(real: str) -> str:
        """The ETag an encrypted bucket would answer: not the MD5 of the content, same part count."""
        digest, dash, parts = real.partition("-")
        return hashlib.md5(b"sse-kms:" + digest.encode()).hexdigest() + dash + parts

    # --- used by the handler -------------------------------------------------------------------
    def rewrite(self, real: str) -> str:
        if not self.rewrite_etags:
            return real
        fake = self.fake_etag(real)
        with self._lock:
            self._real_by_fake[fake] = real
        return fake

    def real(self, fake: str) -> str:
        """The server's ETag behind one this proxy answered; another value (e.g. the content's
        MD5) is no ETag of this bucket and must not match."""
        if not self.rewrite_etags:
            return fake
        with self._lock:
            return self._real_by_fake.get(fake, "not-an-etag-of-this-bucket")

    def take_fault(self, request: Request) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and fault.matches(request):
                    fault.remaining -= 1
                    return fault
        return None

    def take_corruption(self, request: Request) -> bool:
        with self._lock:
            for i, matches in enumerate(self._corrupt):
                if matches(request):
                    del self._corrupt[i]
                    return True
        return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
        pass

    def do_GET(self):
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def _forward(self) -> None:
        proxy: S3TestProxy = self.server.proxy
        body = self._read_body()
        url = urlsplit(self.path)
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in proxy.stripped}
        request = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True), headers)
        proxy.requests.append(request)
        fault = proxy.take_fault(request)
        if fault is not None:
            xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{fault.code}</Code>"
                   f"<Message>injected by the test proxy</Message></Error>").encode()
            self._answer(fault.status, "Error", [("Content-Type", "application/xml")], xml)
            return
        for name in ("If-Match", "If-None-Match"):
            if name in headers and headers[name] != "*":
                headers[name] = '"' + proxy.real(headers[name].strip('"')) + '"'
        upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self._relay(proxy, request, response)
        finally:
            upstream.close()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self, proxy: S3TestProxy, request: Request, response) -> None:
        is_part = request.method == "PUT" and "partNumber" in request.query
        headers = []
        for name, value in response.getheaders():
            if name.lower() in HOP_BY_HOP:
                continue
            rewrite = name.lower() == "etag" and not is_part
            headers.append((name, '"' + proxy.rewrite(value.strip('"')) + '"' if rewrite else value))
        body = b"" if request.method == "HEAD" else response.read()
        is_api_answer = set(request.query) - {"x-id"}  # listings, attributes; not an object's bytes
        if is_api_answer and body.lstrip().startswith(b"<?xml"):
            body = ETAG_XML.sub(lambda m: b"<ETag>%s%s%s</ETag>" % (
                m.group(1) or b"", proxy.rewrite(m.group(2).decode()).encode(), m.group(3) or b""), body)
        if body and request.method == "GET" and proxy.take_corruption(request):
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        length = response.getheader("Content-Length") if request.method == "HEAD" else str(len(body))
        self._answer(response.status, response.reason, headers, body, length)

    def _answer(self, status: int, reason: str, headers, body: bytes, length: str | None = None):
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() not in ("server", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", length if length is not None else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class EncryptedBucketProxy(S3TestProxy):
    """The store as an SSE-KMS / SSE-C bucket answers: ETags that are not MD5s."""

    def __init__(self, upstream: str):
        super().__init__(upstream, rewrite_etags=True)
