"""Evaluation like the DreamBooth paper: DINO, CLIP-I, CLIP-T, PRES and DIV (docs/evaluation.md).

    dreambooth-job evaluate --model runs/dog/model --instance-data photos/dog/ --class-noun dog \\
        --identifier sks --output runs/dog/evaluation.json

The contract with the job (`train --evaluate`):

    from dreambooth_job.evaluation import gauges, metrics_block
    from dreambooth_job.evaluation.evaluator import Evaluator

    evaluator = Evaluator.load(config)          # once; raises InvalidInputError for bad options
    base = evaluator.evaluate(pipeline, photos.images, token, class_noun, label="base")
    ...                                         # train
    tuned = evaluator.evaluate(tuned_pipeline, photos.images, token, class_noun, label="finetuned")
    result["metrics"] = metrics_block(base, tuned)   # {"base", "finetuned", "protocol"}
    observer.evaluation(gauges(tuned))

- `Evaluator.load` loads the evaluator models (DINO, CLIP, LPIPS) from hub ids, directories or
  s3:// prefixes. A model that cannot be loaded does not raise: its metrics come back None, with
  the reason under "unavailable". Only bad options (prompt set, counts) raise InvalidInputError.
- `evaluate` samples the pipeline where it is (move it to the accelerator first) with the same
  fast sampler as the class images, moves the evaluator models there for the scoring and back to
  the CPU afterwards, and returns one row:
  `{"label", "dino", "clip_i", "clip_t", "pres", "div", "div_dino": float | None,
  "unavailable": {metric: reason}, "images": int, "seconds": float,
  "per_prompt": [{"prompt", "dino", "clip_i", "clip_t"}], "protocol": {...}}`.
  `div` is LPIPS only; `div_dino` is the documented embedding fallback, never named `div`.
- The protocol (prompt set and templates, images per prompt, seeds, class prompt and seeds,
  sampler settings, evaluator model sources and whether each loaded) depends only on the config and
  the class noun, so the base and fine-tuned rows share it.

Importing this package is light (no torch); `Evaluator` and `validate_config` are in evaluator.py.
"""

from __future__ import annotations

from typing import Any

SCORE_NAMES = ("dino", "clip_i", "clip_t", "pres", "div", "div_dino")
ROW_ONLY = ("protocol",)


def metrics_block(*rows: dict[str, Any], **extra_rows: dict[str, Any]) -> dict[str, Any]:
    """result.json's "metrics": each row under its label, and the (shared) protocol once."""
    if not rows:
        raise ValueError("metrics_block needs at least one evaluated row")
    block: dict[str, Any] = {}
    for row in rows:
        block[row["label"]] = {k: v for k, v in row.items() if k not in ROW_ONLY}
    block.update(extra_rows)
    block["protocol"] = rows[0]["protocol"]
    return block


def gauges(row: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """The row's scores by name, for `JobObserver.evaluation`; prefix="base_" for a baseline."""
    return {prefix + name: row.get(name) for name in SCORE_NAMES}
