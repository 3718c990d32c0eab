"""Print docs/user-guide.md's table of ESTIMATED peak training memory (the model of
dreambooth_job/training/memory_estimate.py, architectures built on the meta device: nothing is
trained or measured).

    PYTHONPATH=$PWD .venv/bin/python scripts/memory_table.py
"""

from __future__ import annotations

from dreambooth_job.bench.estimate import estimate, meta_models
from dreambooth_job.training.memory_estimate import GIB


def main() -> None:
    print("| model | resolution | mode | checkpointing off | checkpointing on "
          "| on + 8-bit Adam |")
    print("|---|---|---|---|---|---|")
    for model in ("sd15", "sdxl"):
        built = meta_models(model)
        for mode in ("full", "lora"):
            cells = [estimate(model, train_mode=mode, checkpointing=ckpt, use_8bit_adam=adam,
                              built=built)
                     for ckpt, adam in ((False, False), (True, False), (True, True))]
            print(f"| {model} | {cells[0].resolution} px | {mode} | "
                  + " | ".join(f"{c.peak_bytes / GIB:.1f} GiB" for c in cells) + " |")


if __name__ == "__main__":
    main()
