"""The training run's progress bar: one bar over all the run's steps, and a loss reading that never
makes the host wait for the GPU."""
from __future__ import annotations

import torch


class RunProgress:
    """One progress bar for the whole run (all remaining epochs' steps), so its ETA is the run's.

    It averages the speed over the whole job (``smoothing=0``), so the evaluation between epochs is
    part of the estimate. Log lines go through ``write`` so the bar stays below them. The loss it
    shows is read without making the host wait for the GPU (``_LossReading``)."""

    def __init__(self, enabled: bool, steps_per_epoch: int, first_epoch: int, stop: int, epochs: int):
        self.bar = None
        self.epochs = epochs
        self.reading: _LossReading | None = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=stop * steps_per_epoch, initial=first_epoch * steps_per_epoch, unit="step",
                            dynamic_ncols=True, mininterval=0.5, smoothing=0)

    def start_epoch(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)

    def step(self, loss: torch.Tensor, step: int) -> None:
        if self.bar is None:
            return
        if step % 10 == 1:   # every 10 steps: show the reading that has arrived, start another
            arrived = self.reading is not None and self.reading.ready()   # asked once: it may arrive meanwhile
            if arrived:
                self._show(self.reading)
            if self.reading is None or arrived:
                self.reading = _LossReading(loss, self.reading)
                if self.reading.ready():   # on the CPU, at once
                    self._show(self.reading)
        self.bar.update(1)

    def _show(self, reading: _LossReading) -> None:
        self.bar.set_postfix(loss=f"{reading.value():.3f}", refresh=False)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _LossReading:
    """A copy of a (0-dim) loss to the host. On CUDA it is asynchronous: into pinned memory, with an
    event to ask whether it has arrived (``.item()`` would make the host wait for the GPU, which
    drains the queue of launched work every time). Elsewhere the value is read at once."""

    def __init__(self, loss: torch.Tensor, previous: _LossReading | None = None):
        loss = loss.detach()
        self.event = None
        if loss.device.type != "cuda":
            self.host = loss.float().cpu()
            return
        # the previous reading's buffer is free again (it has arrived): no new pinned allocation
        self.host = previous.host if previous is not None and previous.event is not None else \
            torch.empty((), dtype=torch.float32, pin_memory=True)
        self.host.copy_(loss.float(), non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record()

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def value(self) -> float:
        return float(self.host)
