"""The few apiserver calls of the stand-in kubelet (kubelet.py), as plain JSON over the
kubernetes client's own connection pool and credentials: the pods it watches and patches stay
the apiserver's dicts (every field, whatever the Python client's models know), and the calls do
not depend on the client's generated signatures, which changed across its major versions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import urllib3


class ApiError(Exception):
    def __init__(self, status: int, body: Any):
        self.status, self.body = status, body
        super().__init__(f"{status}: {body.get('message') if isinstance(body, dict) else body}")


class PodApi:
    def __init__(self, api_client: Any):
        self._config = api_client.configuration
        self._pool: urllib3.PoolManager = api_client.rest_client.pool_manager

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "standin-kubelet/v1.36"}
        for auth in self._config.auth_settings().values():
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        return self._config.host.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        response = self._pool.request(
            method, self._url(path, query), headers=self._headers(content_type if body is not None else None),
            body=None if body is None else json.dumps(body).encode(), retries=False,
            timeout=urllib3.Timeout(connect=5, read=30))
        parsed = json.loads(response.data) if response.data else {}
        if response.status >= 400:
            raise ApiError(response.status, parsed)
        return parsed

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap, None when it does not exist."""
        try:
            return self.request("GET", f"/api/v1/namespaces/{namespace}/{kind.lower()}s/{quote(name)}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, node_name: str) -> dict[str, Any]:
        return self.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node_name}"})

    def watch_pods(self, node_name: str, resource_version: str,
                   timeout_seconds: int) -> urllib3.BaseHTTPResponse:
        """The open watch response; `events` reads it. The caller closes it."""
        query = {"fieldSelector": f"spec.nodeName={node_name}", "watch": "true",
                 "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": timeout_seconds}
        response = self._pool.request("GET", self._url("/api/v1/pods", query), headers=self._headers(),
                                      preload_content=False, retries=False,
                                      timeout=urllib3.Timeout(connect=5, read=timeout_seconds + 15))
        if response.status >= 400:
            body = response.read()
            response.release_conn()
            raise ApiError(response.status, json.loads(body) if body else {})
        return response

    @staticmethod
    def events(response: urllib3.BaseHTTPResponse) -> Iterator[dict[str, Any]]:
        pending = b""
        for chunk in response.stream(64 * 1024, decode_content=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def patch_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", body=patch,
                            content_type="application/strategic-merge-patch+json")

    def delete_pod_now(self, namespace: str, name: str, uid: str) -> None:
        """What the kubelet does once the pod's containers are gone: delete with grace 0 and a uid
        precondition. A pod already gone or replaced by a namesake is left alone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body=body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
