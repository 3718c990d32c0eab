"""--ema-decay: an exponential moving average of the trained parameters (the whole trained weights,
or a LoRA run's adapters), kept in fp32 beside them and published and sampled instead of them.

The average is diffusers' EMAModel: it takes any list of parameters (peft's adapters are plain
ones), and its decay at optimizer step t is min(D, (1 + t) / (10 + t)) (0 at the first step, which
copies the weights): a DreamBooth run is a few hundred steps, and a fixed 0.999 from the start
would keep the average near the base weights for most of them.

    average = WeightAverage(trainable, decay)   # after setup_models: trainable is fp32
    average.update()                            # after every optimizer step
    average.use_average()                       # before sampling and saving outputs
    average.use_training()                      # before training on, or saving a checkpoint
    average.save(directory); average.load(directory, step)   # in checkpoints, bitwise

Swapping exchanges the parameters' storage with the average's (no copy, no extra memory), so the
modules, their optimizer and peft's adapters stay the same objects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dreambooth_job.exit_codes import InvalidInputError

AVERAGE_FILE = "ema.safetensors"
"""The average's tensors in a checkpoint's state directory, one per trained parameter in the
order of `TrainedModels.trainable`, named by index."""


class WeightAverage:
    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        from diffusers.training_utils import EMAModel  # deferred: diffusers is heavy

        self.params = list(params)
        self.average = EMAModel(self.params, decay=decay, foreach=True)
        self.swapped = False

    def update(self) -> None:
        """One optimizer step's update of the average, from the training weights."""
        self.use_training()
        self.average.step(self.params)

    def use_average(self) -> None:
        """Make the parameters hold the average (sampling, published outputs)."""
        if not self.swapped:
            self._swap()

    def use_training(self) -> None:
        """Make the parameters hold the training weights again."""
        if self.swapped:
            self._swap()

    def _swap(self) -> None:
        shadow = self.average.shadow_params
        for index, param in enumerate(self.params):
            param.data, shadow[index] = shadow[index], param.data
        self.swapped = not self.swapped

    def averaged_tensors(self) -> list[torch.Tensor]:
        """The tensors that hold the average now, swapped in or not."""
        return [p.data for p in self.params] if self.swapped else list(self.average.shadow_params)

    def save(self, directory) -> None:
        from safetensors.torch import save_file  # deferred: safetensors is heavy

        tensors = {f"{index:06d}": t.detach().contiguous().cpu()
                   for index, t in enumerate(self.averaged_tensors())}
        save_file(tensors, str(Path(directory, AVERAGE_FILE)))

    def load(self, directory, step: int) -> None:
        """What `save` wrote, as of optimizer step `step`; InvalidInputError for a file that is
        missing or holds other tensors than this run's average (a forged checkpoint)."""
        from safetensors.torch import load_file  # deferred: safetensors is heavy

        path = Path(directory, AVERAGE_FILE)
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - missing, or whatever a forged file raises
            raise InvalidInputError(f"its EMA weights {AVERAGE_FILE} do not load "
                                    f"({type(exc).__name__})") from None
        targets = self.averaged_tensors()
        if tensors.keys() != {f"{index:06d}" for index in range(len(targets))}:
            raise InvalidInputError(f"its EMA weights {AVERAGE_FILE} hold {len(tensors)} tensors, "
                                    f"this run trains {len(targets)} parameters")
        for index, target in enumerate(targets):
            saved = tensors[f"{index:06d}"]
            if saved.shape != target.shape or saved.dtype != target.dtype:
                raise InvalidInputError(f"its EMA weights {AVERAGE_FILE} hold tensor {index} as "
                                        f"{saved.dtype} {tuple(saved.shape)}, the run "
                                        f"{target.dtype} {tuple(target.shape)}")
        with torch.no_grad():
            for index, target in enumerate(targets):
                target.copy_(tensors[f"{index:06d}"])
        self.average.optimization_step = step
