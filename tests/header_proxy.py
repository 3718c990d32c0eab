"""An HTTP proxy on loopback that forwards every request to an S3 server minus some headers: with
If-None-Match stripped, the real server in front of it behaves like an object store that ignores
conditional writes. (The test S3 server runs without an identities file, so it does not check the
signature that covered the stripped header.)

    with HeaderStrippingProxy(s3_server.endpoint, {"if-none-match"}) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
"""

from __future__ import annotations

import http.client
import http.server
import threading
from typing import Self
from urllib.parse import urlsplit

# Hop-by-hop or recomputed: the proxy sends whole bodies with their own length.
_NOT_COPIED = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class HeaderStrippingProxy:
    def __init__(self, upstream: str, stripped: set[str]):
        target = urlsplit(upstream)
        stripped = {h.lower() for h in stripped}

        class Forward(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in stripped}
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    response = connection.getresponse()
                    data = response.read()
                finally:
                    connection.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _NOT_COPIED:
                        self.send_header(key, value)
                # A HEAD response has no body but the length of the object it describes.
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()
