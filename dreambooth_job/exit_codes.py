"""The job's exit codes: one table shared by the CLI, the Helm chart, the manifests and the docs.

Kubernetes reads these through the Job's podFailurePolicy, so each code says whether a retry can help.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit status of every `dreambooth-job` command."""

    OK = 0
    """Success (also: the output already holds a completed run of the same config)."""
    INTERNAL_ERROR = 1
    """An unexpected error, most likely a bug. Counts against the Job's backoffLimit."""
    INVALID_INPUT = 2
    """Bad configuration or input (options, photos, model). Retrying cannot help: fail the Job."""
    RETRYABLE = 75
    """A transient failure (object store, network, hub) that outlived its retries. Retry the pod."""
    TERMINATED = 143
    """Stopped by SIGTERM/SIGINT after writing a checkpoint (preemption). Retry without penalty."""

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    ExitCode.OK: "success, or the output already holds a completed run of the same config",
    ExitCode.INTERNAL_ERROR: "unexpected error (a bug); counts against backoffLimit",
    ExitCode.INVALID_INPUT: "invalid configuration or input; not worth retrying",
    ExitCode.RETRYABLE: "transient failure (object store, network) after retries; worth a retry",
    ExitCode.TERMINATED: "terminated by SIGTERM/SIGINT after a checkpoint; resume on retry",
}


# Exit codes that no retry can fix: the Job's podFailurePolicy fails at once on them, so no other
# attempt follows. Preemption is recognised by the pod's DisruptionTarget condition rather than by
# exit code 143, so a pod that keeps dying on its own still runs out of backoffLimit.
NOT_RETRYABLE = (ExitCode.INVALID_INPUT,)


class JobError(Exception):
    """An error that ends the job with a specific exit code and a one-line message."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInputError(JobError):
    """Configuration or input is wrong; the message names the bad thing."""

    exit_code = ExitCode.INVALID_INPUT


class RetryableError(JobError):
    """A transient failure that a later attempt may not hit."""

    exit_code = ExitCode.RETRYABLE


class TerminatedError(JobError):
    """The job was asked to stop and saved its progress."""

    exit_code = ExitCode.TERMINATED
