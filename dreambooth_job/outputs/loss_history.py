"""The loss curve of a run: every logged step's losses, recorded from the trainer's progress events
(`JobObserver.train_progress`, emitted every --log-every steps) and kept with each checkpoint, so
the run page (outputs/run_page.py) of a resumed run draws the whole curve, not only the part after the
resume.

    history = LossHistory()                      # an observer: the trainer's events fill it
    history.save(state_dir)                      # beside the trainer state, before the upload
    history.load(resume_dir, up_to_step=step)    # on resume: what the checkpoint had seen

The file is read back from --output, which the tenant can write to: anything malformed in it is
dropped (the curve starts later), never an error.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from dreambooth_job.events import JobObserver, TrainProgress

logger = logging.getLogger("dreambooth_job")

HISTORY_FILE = "loss_history.json"
MAX_POINTS = 100_000
"""More logged steps than any run makes (--log-every 1 for 100k steps); a larger file is forged."""
MAX_BYTES = 32 * 2**20
"""MAX_POINTS points take about 10 MB: a larger file is not read at all."""


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float
    instance_loss: float
    prior_loss: float


class LossHistory(JobObserver):
    def __init__(self) -> None:
        self.points: list[LossPoint] = []

    def train_progress(self, progress: TrainProgress) -> None:
        self.points.append(LossPoint(progress.step, progress.loss, progress.instance_loss,
                                     progress.prior_loss))

    def save(self, directory: Path) -> None:
        Path(directory, HISTORY_FILE).write_text(json.dumps([asdict(p) for p in self.points]))

    def load(self, directory: Path, *, up_to_step: int) -> None:
        """The history a checkpoint kept, up to its step (later points of the run that wrote it
        are trained again); none when the checkpoint predates the file or it does not parse."""
        path = Path(directory, HISTORY_FILE)
        try:
            if path.is_file() and path.stat().st_size > MAX_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes, over {MAX_BYTES}")
            raw = json.loads(path.read_text()) if path.is_file() else []
        except (OSError, ValueError) as exc:
            logger.warning("checkpoint loss history unreadable (%s): the curve starts here", exc)
            raw = []
        entries = raw[:MAX_POINTS] if isinstance(raw, list) else []
        points = [p for p in map(_point, entries) if p is not None and p.step <= up_to_step]
        self.points = sorted({p.step: p for p in points}.values(), key=lambda p: p.step)


def _point(value: object) -> LossPoint | None:
    if not isinstance(value, dict):
        return None
    step = value.get("step")
    losses = [value.get(name) for name in ("loss", "instance_loss", "prior_loss")]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in losses):
        return None
    return LossPoint(step, *(float(v) for v in losses))
