"""``--minutes``: how many steps fit in the time left, and when time is up."""

from __future__ import annotations

import copy
import logging
import statistics
import time

import torch

from styletx.contract.interfaces import Translator
from styletx.engine import distributed
from styletx.engine.data import CropSampler
from styletx.engine.run_config import TrainPlan
from styletx.engine.training.checkpoints import (
    load_optimizer_state,
    optimizer_state,
    restore_rng,
    rng_state,
)
from styletx.engine.training.settings import TrainSettings

log = logging.getLogger("styletx")

BUDGET_SHARE = 0.9  # of the time left after timing: the rest is for previews, checkpoints and
#                     steps slower than the timed ones (measured: 3-7% on a busy 2-core CPU)
MOSTLY_READING = 0.5  # of the budget spent before the first step: a warning that few steps fit


def steps_in_budget(translator: Translator, sampler: CropSampler, settings: TrainSettings,
                    device: torch.device, group: distributed.Group) -> int:
    """Training steps that fit in what is left of ``settings.minutes``: a few steps are timed
    and then undone (weights, extra state, data order and RNG restored), so the run is the
    same as one started with ``--steps`` of the result; every process takes rank 0's count."""
    before = time.monotonic() - settings.started  # reading the files, building the model
    per_step = time_steps(translator, sampler, device)
    left = settings.started + 60 * settings.minutes - time.monotonic()
    steps = max(1, int(BUDGET_SHARE * left / per_step))
    steps = int(group.broadcast(torch.tensor([steps]), device))
    log.info("--minutes %g: %.3f s a step, so %d steps", settings.minutes, per_step, steps)
    if before > MOSTLY_READING * 60 * settings.minutes:
        # 20,000 files a side with --minutes 1 read for 60 s and trained one step, exit 0
        log.warning("--minutes %g: reading the training files took %.0f s of the %.0f, so "
                    "only %d step(s) fit in the rest; the clock counts the reading, so give "
                    "more minutes, or --steps", settings.minutes, before,
                    60 * settings.minutes, steps)
    return steps


class Budget:
    """``--minutes``: when time is up, and one revision of a planned step count from the speed
    the loop really has (the first timing may have met a busier or idler machine)."""

    REVISE_AT = 0.1  # of the loop's time, or of the planned steps if they come first (a plan
    #                  that was too cautious): late enough to measure, early enough that the lr
    #                  is still constant (CycleGAN and pix2pix decay over the second half)
    LEAST_SECONDS = 5.0  # of the loop at least, to measure its speed
    BEFORE = 0.45  # revise only before this share of the planned steps
    LEAST_CHANGE = 0.05  # and only when the count changes by more than this share

    def __init__(self, settings: TrainSettings, step: int, replan: bool):
        self.deadline = settings.started + 60 * settings.minutes
        self.began, self.first_step = time.monotonic(), step
        self.revise_at = (self.began + self.REVISE_AT * (self.deadline - self.began)
                          if replan else float("inf"))

    def spent(self) -> bool:
        return time.monotonic() >= self.deadline

    def revised_total(self, step: int, total: int, now: float) -> int | None:
        """A better step count at the revision time, once; None otherwise."""
        early = step - self.first_step >= self.REVISE_AT * total and self.revise_at < float("inf")
        if now < self.revise_at and not (early and now - self.began >= self.LEAST_SECONDS):
            return None
        self.revise_at = float("inf")
        rate = (step - self.first_step) / max(now - self.began, 1e-9)
        revised = step + int(BUDGET_SHARE * (self.deadline - now) * rate)
        if step >= self.BEFORE * total or abs(revised - total) <= self.LEAST_CHANGE * total:
            return None
        return revised


def replan(translator: Translator, plan: TrainPlan, total: int) -> None:
    """Make ``total`` the run's step count (``plan.steps``): new schedulers (and optimizers)
    for it, carrying the current optimizer and scheduler state over, as a resume does."""
    state = optimizer_state(translator)
    translator.configure_optimizers(total)
    load_optimizer_state(translator, state)
    log.info("--minutes: %d steps fit at the speed so far (planned %d)", total, plan.steps)
    plan.steps = total


def time_steps(translator: Translator, sampler: CropSampler, device: torch.device,
               warmup: int = 2, timed: int = 8) -> float:
    """Seconds per training step, the median of ``timed`` steps after ``warmup`` untimed ones,
    on throwaway optimizers; everything the steps changed is put back. A fixed count, so that
    every process runs the same steps (synchronised batch norm communicates in each)."""
    nets = {name: copy.deepcopy(net.state_dict()) for name, net in translator.networks().items()}
    extra, data, rng = translator.extra_state(), sampler.state_dict(), rng_state()
    translator.configure_optimizers(1 << 30)  # a constant lr while timing
    translator.train(True)
    times = []
    for step in range(warmup + timed):
        batch = {k: v.to(device) for k, v in sampler.next_batch().items()}
        began = time.perf_counter()
        translator.training_step(batch, step)
        times.append(time.perf_counter() - began)
    for name, net in translator.networks().items():
        net.load_state_dict(nets[name])
    translator.load_extra_state(extra)
    sampler.load_state_dict(data)
    restore_rng(rng)
    return statistics.median(times[warmup:])
