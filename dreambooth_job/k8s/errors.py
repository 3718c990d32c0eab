"""Typed errors of the Kubernetes API calls, with the exit code each one means.

They are JobErrors, so the CLI's one error boundary (cli_boundary.py) turns them into exit codes
and one-line messages: a refusal that no retry can fix (forbidden, invalid) exits 2, an API server
that could not be reached exits 75. `translate` maps the API's answers to them; the exit is not
decided here.

    try:
        submit(spec)
    except ForbiddenError as exc:     # RBAC: the credentials may not create Jobs there
        print(exc.status, exc.message)
"""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from dreambooth_job.exit_codes import InvalidInputError, JobError, RetryableError


class KubernetesError(JobError):
    """The API refused or failed a request; `.status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class JobNotFoundError(KubernetesError):
    """No Job of that name in that namespace."""


class JobExistsError(KubernetesError):
    """A Job of that name exists and cannot be reused (running, or a different subject)."""


class JobStillRunningError(JobExistsError):
    """`replace=True` found the Job still queued or running; cancel it first."""


class ForbiddenError(KubernetesError, InvalidInputError):
    """The credentials may not do this (RBAC); retrying cannot help."""


class InvalidSpecError(KubernetesError, InvalidInputError):
    """The Job spec is invalid: rejected by us before sending, or by the API server (400/422)."""


class ApiUnreachableError(KubernetesError, RetryableError):
    """No usable answer from the API server after retries (network, 429, 5xx)."""


class ClusterConfigError(KubernetesError, InvalidInputError):
    """Neither a kubeconfig nor an in-cluster service account could be loaded."""


def _status_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message") or exc.reason or str(exc.status)
    except (ValueError, AttributeError):
        return exc.reason or str(exc.status)


def translate(exc: ApiException, what: str) -> KubernetesError:
    """The typed error for an API answer about `what` (e.g. "job ns/name")."""
    message = _status_message(exc)
    if exc.status == 404:
        return JobNotFoundError(f"{what} not found", 404)
    if exc.status == 409:
        return JobExistsError(f"{what} already exists: {message}", 409)
    if exc.status in (401, 403):
        return ForbiddenError(f"not allowed on {what}: {message}", exc.status)
    if exc.status in (400, 422):
        return InvalidSpecError(f"API server rejected {what}: {message}", exc.status)
    if exc.status == 429 or exc.status >= 500:
        return ApiUnreachableError(f"API server failed on {what} ({exc.status}): {message}", exc.status)
    return KubernetesError(f"API error on {what} ({exc.status}): {message}", exc.status)
