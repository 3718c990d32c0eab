"""The command line's one error boundary: how every `dreambooth-job` command ends on an error.

    with error_boundary():          # cli.main wraps the whole command line in it, once
        run_the_command()

Whatever escapes a command becomes ONE line `error: <message>` on stderr (a message listing
several problems, like a batch file's, puts each on a line of its own after it), the same message
in the termination log (what `kubectl describe` and `dreambooth-job status` show of a pod), and an
ExitCode; the message is redacted like the logs, since whoever may read pods reads it:

- a JobError (InvalidInputError 2, RetryableError 75, the Kubernetes API errors of k8s/errors.py,
  ...): its own exit code and message;
- a click usage error (unknown option, bad value, a command's UsageError or BadParameter): 2;
- Ctrl-C outside training: 143, like SIGTERM (termination.py);
- anything else is a bug: its traceback first, then the line, exit 1.

A SystemExit (a command's own exit code, SIGTERM's 143) passes through untouched. Commands raise;
they never print `error:` or exit on an error themselves.

Leaf module (click, exit_codes, redaction, termination): cli.py and the k8s commands share it
without importing each other, and without torch.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import NoReturn

import click

from dreambooth_job import termination
from dreambooth_job.exit_codes import ExitCode, JobError
from dreambooth_job.redaction import redact


def translate(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the message an exception ends a command with."""
    if isinstance(exc, JobError):
        return exc.exit_code, exc.message
    if isinstance(exc, click.ClickException):  # parsing, BadParameter, UsageError, FileError
        return ExitCode.INVALID_INPUT, exc.format_message()
    if isinstance(exc, (click.Abort, KeyboardInterrupt)):
        return ExitCode.TERMINATED, "interrupted (SIGINT) outside training: nothing to checkpoint"
    return ExitCode.INTERNAL_ERROR, f"unexpected {type(exc).__name__}: {exc}"


def fail(exc: BaseException) -> NoReturn:
    """End the process for `exc`: traceback if a bug, one `error:` line, termination log, exit."""
    code, message = translate(exc)
    if code is ExitCode.INTERNAL_ERROR and not isinstance(exc, JobError):
        traceback.print_exception(exc, file=sys.stderr)  # a bug: whoever fixes it needs where
    message = redact(lines_of(exc, message))
    click.echo(f"error: {message}", err=True)
    termination.write_termination_message(message)
    sys.exit(int(code))


def lines_of(exc: BaseException, message: str) -> str:
    """The message as one line, or, for an error listing its `problems` (a batch file's), a first
    line and one line per problem. Values quoted from the input (a flag's value, a file's key)
    cannot add lines: line breaks and other unprintable characters in them are written escaped."""
    problems = getattr(exc, "problems", None)
    if isinstance(exc, JobError) and isinstance(problems, list) and problems:
        return "\n  ".join(map(printable, [message.split("\n", 1)[0], *map(str, problems)]))
    return printable(message)


def printable(text: str) -> str:
    """`text` with each unprintable character (CR, LF, U+2028, other controls) as its escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@contextlib.contextmanager
def error_boundary() -> Iterator[None]:
    """Turn any exception raised inside into its exit (see the module docstring)."""
    try:
        yield
    except (SystemExit, click.exceptions.Exit):
        raise
    except (Exception, click.Abort, KeyboardInterrupt) as exc:
        fail(exc)
