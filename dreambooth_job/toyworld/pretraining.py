"""The toy bases' pretraining loop, shared by the DDPM base (base.py) and the flow-matching base
(flow_base.py): they differ only in how a batch's loss is computed.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    warmup: int
    ema_decay: float
    batch: int
    time_budget_s: float | None = None
    """Stop early after this many seconds (the shipped bases record where they stopped)."""


def pretrain(params: Sequence[torch.Tensor], batch_loss: Callable[[torch.Tensor], torch.Tensor],
             num_examples: int, schedule: Schedule, gen: torch.Generator,
             log: Callable[[int, float], None]) -> int:
    """AdamW with a linear warm-up and gradient clipping at 1 on `params`, each step on a batch
    of example indices drawn from `gen`; `batch_loss(indices)` draws whatever else it needs from
    the same generator. The weights end as their exponential moving average. Returns the steps done."""
    params = list(params)
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / schedule.warmup))
    started = time.perf_counter()
    step = 0
    while step < schedule.steps:
        if schedule.time_budget_s and time.perf_counter() - started > schedule.time_budget_s:
            break
        index = torch.randint(0, num_examples, (schedule.batch,), generator=gen)
        loss = batch_loss(index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        # Early steps get a faster average, so a short run is not dominated by the random init.
        decay = min(schedule.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        log(step, loss.item())
        step += 1
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return step


class LossLog:
    """Every step's loss by stage: a 50-step mean printed every 50 steps, all of it written as
    the base's loss.csv (which tests compare with a rerun of its recorded command)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, float]] = []
        self.started = time.perf_counter()

    def __call__(self, stage: str, step: int, loss: float) -> None:
        self.rows.append((stage, step, loss))
        if step % 50 == 0:
            recent = [r[2] for r in self.rows[-50:] if r[0] == stage]
            print(f"{stage} step {step} loss {sum(recent) / len(recent):.4f} "
                  f"({time.perf_counter() - self.started:.0f}s)", flush=True)

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["stage", "step", "loss"])
            writer.writerows((s, i, f"{v:.5f}") for s, i, v in self.rows)
