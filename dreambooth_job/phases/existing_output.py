"""What --output already holds, checked before any download: a completed run of this config
(nothing to do), of another one (exit 2 unless --force), or checkpoints of another config (exit 2
unless --restart)."""

from __future__ import annotations

import json
import logging
from typing import Any

from dreambooth_job.config.run_identity import differing_model_fields
from dreambooth_job.exit_codes import InvalidInputError
from dreambooth_job.outputs.result import COMPLETION_MARKER, RESULT_FILE, is_complete
from dreambooth_job.outputs.result_reader import MAX_BYTES, MalformedResult, parse_record, unreadable
from dreambooth_job.phases.context import RunContext
from dreambooth_job.storage import places as storage
from dreambooth_job.training.checkpoint import conflicts

logger = logging.getLogger("dreambooth_job")


def already_complete(ctx: RunContext) -> bool:
    """True when --output holds a completed run of this config (and --force is off)."""
    config = ctx.config
    completed = _completed_result(config.output)
    if completed is None:
        return False
    if config.force:
        logger.warning("--force: replacing the completed run in %s", config.output)
        storage.delete(storage.join(config.output, COMPLETION_MARKER))
        ctx.checkpoints.delete_all()
        return False
    # One rule for "the same run" (config/run_identity.py); the fingerprint is only the quick path.
    differing = differing_model_fields(completed.get("config"), config)
    if completed.get("config_fingerprint") == ctx.fingerprint or not differing:
        logger.info("%s already holds a completed run of this config: nothing to do", config.output)
        return True
    raise InvalidInputError(
        f"--output {config.output} holds a completed run of another config (differs in: "
        f"{', '.join(differing)}); pass --force to replace it or use another --output")


def _completed_result(output: str) -> dict[str, Any] | None:
    """result.json of the completed run under `output`, None when the run is not complete. The
    file is the tenant's: it passes result_reader's bounds before it is parsed for its config,
    and one that does not is exit 2 (a retry would read the same file), never a traceback."""
    if not is_complete(output):
        return None
    try:
        data = storage.read_bytes(storage.join(output, RESULT_FILE), max_bytes=MAX_BYTES)
        parse_record(data)  # size, depth, item counts and the types of the fields it reads
        return json.loads(data)
    except (FileNotFoundError, MalformedResult) as exc:
        reason = unreadable(exc if isinstance(exc, MalformedResult) else MalformedResult("missing"))
        raise InvalidInputError(f"--output {output} holds a completed run whose {reason}; pass "
                                "--force to replace it or use another --output") from None


def check_checkpoints(ctx: RunContext) -> None:
    """Fail early, before any download, if checkpoints here belong to another config or lie past
    --max-train-steps (a forged name: resuming it would publish a run of that many steps)."""
    existing = ctx.checkpoints.list()
    if not existing:
        return
    max_steps = ctx.config.max_train_steps
    past = [checkpoint for checkpoint in existing if checkpoint.step > max_steps]
    if past and not ctx.config.restart:
        raise InvalidInputError(
            f"checkpoint {past[0].uri} is of step {past[0].step}, past --max-train-steps "
            f"{max_steps}; pass --restart to discard it or use another --output")
    differing = conflicts(existing[0].config, ctx.config.to_dict())
    if not differing and not past:
        return
    if ctx.config.restart:
        logger.warning("--restart: deleting checkpoints of another config or past --max-train-steps "
                       "in %s", ctx.checkpoints.root)
        ctx.checkpoints.delete_all()
        return
    raise InvalidInputError(
        f"checkpoints in {ctx.checkpoints.root} were written with another config (differs in: "
        f"{', '.join(differing)}); pass --restart to discard them or use another --output")
