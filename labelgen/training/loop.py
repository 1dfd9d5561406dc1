"""The one training loop of labelgen: train_cam and train_decoder configure it with their pieces.

Read top to bottom, a training is: build the state (model, optimizer, schedule) -> put back the
resume state from `last.pt` -> every epoch: seed the generators from (seed, epoch, rank), and every
step: set the step's learning rate, forward and backward this rank's micro-batches, average the
gradients over the ranks, optimizer step, and every few steps or minutes a checkpoint -> at the
epoch's end the stage's own bookkeeping (scheduler, selection), the log entry and a checkpoint.

What a stage supplies (`StageTraining`): how to build its state and data, the loss of one
micro-batch, the learning rate of a step (if it is set per step), its epoch-end bookkeeping and log
line. The loop itself knows nothing of images, normalisation or losses; it calls the model only
through the stage's `loss`.

Resuming is exact on CPU: each epoch's image order and every sample's augmentation are fixed by
(seed, epoch) (`labelgen.data.training.EpochOrder`), a mid-epoch checkpoint holds the position and
every generator state of every rank, so a run killed anywhere and rerun ends with the weights of an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from labelgen.data.training import (
    EpochOrder,
    rng_states,
    seed_everything,
    set_rng_states,
    start_epoch,
    training_loader,
)
from labelgen.store.checkpoint import TrainingState, resume_training, save_training_state
from labelgen.training.ranks import Ranks, all_reduce_sum, gather

log = logging.getLogger(__name__)

LAST = "last.pt"  # resume state, read by its stage alone
LOG = "log.jsonl"  # one JSON line per finished epoch


@dataclass(frozen=True)
class LoopSettings:
    """The loop's share of a stage's settings (see labelgen/config.py for each)."""

    name: str  # the stage, in logs and errors
    epochs: int
    batch_size: int  # the global batch of one step, over all ranks
    seed: int
    num_workers: str
    checkpoint_every_steps: int
    checkpoint_every_minutes: float

    @classmethod
    def of(cls, name: str, params: Any) -> LoopSettings:
        return cls(
            name,
            params.epochs,
            params.batch_size,
            params.seed,
            params.num_workers,
            params.checkpoint_every_steps,
            params.checkpoint_every_minutes,
        )


class StageTraining(Protocol):
    """The pieces of one training stage."""

    def build(self, device: torch.device) -> TrainingState:
        """A fresh state: model on `device`, optimizer, schedule (the loop seeds every generator first)."""

    def data(self, state: TrainingState) -> Dataset:
        """The training samples (the stage's augmentation may read the model, e.g. its normalisation)."""

    def loss(self, model: torch.nn.Module, batch: Any, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one micro-batch: the scalar loss to minimise and the numbers to sum for the log."""

    def set_lr(self, state: TrainingState, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Set the optimizer's learning rates for this step (per-epoch schedules do nothing)."""

    def end_epoch(
        self, state: TrainingState, epoch: int, sums: dict[str, float], micro_batches: int, writer: bool
    ) -> dict[str, Any]:
        """Epoch-end bookkeeping (scheduler, selection: only the `writer` rank writes files); the
        stage's fields of the log entry from the epoch's summed numbers over its micro-batches."""

    def log_line(self, entry: dict[str, Any], epochs: int) -> str:
        """The INFO line of a finished epoch."""


ONE_PROCESS = Ranks()


def train(stage: StageTraining, settings: LoopSettings, out: Path, ranks: Ranks = ONE_PROCESS) -> TrainingState:
    """Train (or resume) to the end; rank 0 (`ranks.writer`) writes `last.pt` and `log.jsonl`
    under `out`. Returns the final state; the stage writes its model file from it."""
    device = ranks.device()
    seed_everything(settings.seed)  # the same initial weights on every rank and in every rerun
    state = stage.build(device)
    resume_training(state, out / LAST, settings.name)
    same_ranks = state.shards in (None, ranks.shards) and (state.rng is None or len(state.rng) == ranks.world)
    state.shards = ranks.shards
    data = stage.data(state)
    order = EpochOrder(len(data), settings.seed, settings.batch_size, ranks.shards, ranks.mine)
    loader = training_loader(data, order, settings.num_workers, device)
    clock = CheckpointClock(settings)
    while state.next_epoch < settings.epochs:
        epoch = state.next_epoch
        start_epoch(loader, epoch, state.next_step, ranks.rank)
        if state.next_step and state.rng is not None:  # resumed inside the epoch: the generators as they were
            set_rng_states(state.rng[ranks.rank] if same_ranks else state.rng[0])
        state.model.train()
        started, images, communication = time.perf_counter(), 0, 0.0
        batches = tqdm(
            loader, desc=f"{settings.name} epoch {epoch}", leave=False, mininterval=5, disable=not ranks.writer
        )
        for step, micro_batches in enumerate(steps_of(batches, len(ranks.mine)), start=state.next_step):
            stage.set_lr(state, epoch, step, order.steps)
            parts, checkpoint_due, seconds = train_step(stage, state, micro_batches, device, ranks, clock.due(step + 1))
            for k, v in parts.items():
                state.epoch_sums[k] = state.epoch_sums.get(k, 0.0) + v
            state.next_step, images, communication = step + 1, images + settings.batch_size, communication + seconds
            if checkpoint_due and state.next_step < order.steps:  # an epoch's end has its own checkpoint
                save_mid_epoch(state, out / LAST, ranks)
                clock.reset()
        seconds = time.perf_counter() - started
        sums, state.epoch_sums, state.next_step, state.rng = state.epoch_sums, {}, 0, None
        entry = {"epoch": epoch, **stage.end_epoch(state, epoch, sums, order.steps * ranks.shards, ranks.writer)}
        entry.update(images_per_s=images / seconds, seconds=seconds)
        if ranks.world > 1:
            entry.update(ranks=ranks.world, communication_s=communication)
        state.history.append(entry)
        state.next_epoch = epoch + 1
        if ranks.writer:
            save_training_state(state, out / LAST)
            (out / LOG).write_text("".join(json.dumps(h) + "\n" for h in state.history))
            log.info("%s", stage.log_line(entry, settings.epochs))
        clock.reset()
    return state


def steps_of(batches: Iterable[Any], per_step: int) -> Iterator[list[Any]]:
    """Group a rank's micro-batches into its steps (`per_step` micro-batches a step)."""
    step: list[Any] = []
    for batch in batches:
        step.append(batch)
        if len(step) == per_step:
            yield step
            step = []


def train_step(
    stage: StageTraining,
    state: TrainingState,
    micro_batches: list[Any],
    device: torch.device,
    ranks: Ranks,
    checkpoint_due: bool,
) -> tuple[dict[str, float], bool, float]:
    """One optimizer step on a global batch: this rank's micro-batches forward and backward (each
    loss scaled by 1/shards so that the summed gradients are the global batch's mean), gradients and
    logged numbers summed over the ranks, then the optimizer step. Returns the numbers summed over
    every micro-batch of the step, whether rank 0 asked for a checkpoint now, and the seconds spent
    in communication."""
    state.optimizer.zero_grad(set_to_none=True)
    parts: dict[str, float] = {}
    for batch in micro_batches:
        loss, numbers = stage.loss(state.model, batch, device)
        (loss / ranks.shards if ranks.shards > 1 else loss).backward()
        for k, v in numbers.items():
            parts[k] = parts.get(k, 0.0) + v
    communication = 0.0
    if ranks.world > 1:
        started = time.perf_counter()
        parts, checkpoint_due = average_gradients(state.model, parts, checkpoint_due and ranks.writer)
        communication = time.perf_counter() - started
    state.optimizer.step()
    return parts, checkpoint_due, communication


def step_on(stage: StageTraining, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> dict:
    """One single-process `train_step` of `stage` on one batch, outside a training (benchmarks, device
    tests); its logged numbers."""
    device = next(model.parameters()).device
    return train_step(stage, TrainingState(model, optimizer), [batch], device, ONE_PROCESS, False)[0]


def average_gradients(
    model: torch.nn.Module, parts: dict[str, float], checkpoint: bool
) -> tuple[dict[str, float], bool]:
    """Sum the gradients (already scaled by 1/shards), the logged numbers and rank 0's checkpoint
    request over the ranks: one all-reduce for the gradients, one for the few numbers."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    keys = sorted(parts)
    numbers = torch.tensor([parts[k] for k in keys] + [float(checkpoint)], dtype=torch.float64, device=flat.device)
    all_reduce_sum(numbers)  # on the gradients' device: NCCL reduces CUDA tensors only
    summed = numbers.tolist()
    return dict(zip(keys, summed[:-1], strict=True)), summed[-1] > 0


def save_mid_epoch(state: TrainingState, path: Path, ranks: Ranks) -> None:
    """A checkpoint inside an epoch: every rank's generator states go to rank 0, which writes."""
    state.rng = gather(rng_states())
    if ranks.writer:
        save_training_state(state, path)
        log.info("checkpoint at epoch %d step %d -> %s", state.next_epoch, state.next_step, path)
    state.rng = None


class CheckpointClock:
    """When a checkpoint is due inside an epoch: every `checkpoint_every_steps` steps of the epoch,
    or `checkpoint_every_minutes` after the last one (0 turns a rule off)."""

    def __init__(self, settings: LoopSettings):
        self.steps, self.seconds = settings.checkpoint_every_steps, settings.checkpoint_every_minutes * 60
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()

    def due(self, steps_done: int) -> bool:
        by_steps = self.steps > 0 and steps_done % self.steps == 0
        return by_steps or (self.seconds > 0 and time.monotonic() - self.since >= self.seconds)
