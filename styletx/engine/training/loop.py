"""The training loop, flat on purpose: draw a batch, let the translator take its step (GANs own
several optimizers, so the step is theirs), step the schedulers, then log, preview and
checkpoint on their schedules.

``run`` sets the loop up around a ``Prepared`` run (processes, device, speed options, the
sampler, the step plan of ``--minutes``), ``Loop`` runs the steps, and ``Loop.finish`` says how
it ended. A resumed run restores the optimizer, scheduler, image pool, RNG and data-sampler
state, so N + N steps give the same weights as 2N uninterrupted steps.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from styletx.contract.errors import (
    StyletxError,
    Terminated,
    TrainingInterrupted,
    UsageError,
    WriteError,
    device_advice,
    is_out_of_memory,
    one_line,
    out_of_memory_problem,
    raise_terminated,
)
from styletx.contract.interfaces import SIDES, Translator
from styletx.contract.registry import plugin_that_raised
from styletx.engine import distributed, progress
from styletx.engine.balance import describe as describe_weights
from styletx.engine.balance import sampling_weights, with_uniform
from styletx.engine.data import CropSampler, Prefetcher
from styletx.engine.memory import allocations_fail_past_free_memory
from styletx.engine.model import pick_device, translated_values_problem
from styletx.engine.pairs import AlignmentCache
from styletx.engine.progress import progress_bar
from styletx.engine.report import (
    REPORT,
    clock,
    save_domain_preview,
    save_preview_titles,
    write_report,
)
from styletx.engine.runs import CONFIG, SAMPLES, append_log, truncate_log, write_json
from styletx.engine.training.budget import Budget, replan, steps_in_budget
from styletx.engine.training.checkpoints import (
    checked_extra_state,
    load_training_state,
    restore_rng,
    rng_state,
    save_interval,
    save_training_checkpoint,
)
from styletx.engine.training.inputs import (
    check_size_multiple,
    encode_examples,
    paired_examples,
)
from styletx.engine.training.prepare import Prepared
from styletx.engine.training.settings import (
    TRAIN_DEFAULTS,
    TrainResult,
    TrainSettings,
)
from styletx.engine.training.tensorboard import TensorBoardLog, check_available
from styletx.engine.user_cache import record_step_time

log = logging.getLogger("styletx")

REPORT_SECONDS = 60  # the run report is rewritten at checkpoints at most this often (~0.3 s)
TIMED_PERIODS = 3  # logged periods a run needs before `styletx plugins` shows its step time:
#                   the first holds the start-up (a 2-step run of the tiny match preset timed
#                   1.2 s a step, 60 times its speed), so it must not be the median
NON_FINITE_STEPS = 3  # steps in a row whose losses are NaN or infinite (on any process) stop
#                     training: once the weights hold a NaN every later step does too. One
#                     such step passes, for a plugin's fp16 gradient scaler, which skips an
#                     overflowing step; no checkpoint is saved meanwhile, nor any whose
#                     weights are not finite (an infinite gradient with a finite loss)
COMPILE_MODE_ON_CUDA = "reduce-overhead"  # --compile's mode on CUDA (benchmarks/gpu_speed.py)
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")


def run(prepared: Prepared, settings: TrainSettings) -> TrainResult:
    """Train ``prepared`` to its planned step (or until time is up or Ctrl-C)."""
    _check_settings(prepared.translator, settings)
    group, device = _join_processes(prepared.translator, settings)
    with allocations_fail_past_free_memory(device):
        return _run_on(prepared, settings, group, device)


def _run_on(prepared: Prepared, settings: TrainSettings, group: distributed.Group,
            device: torch.device) -> TrainResult:
    translator, plan = prepared.translator, prepared.run_config.train
    sampler, names, alignment = _sampler(prepared, group)
    planned = (settings.minutes is not None and prepared.resume_state is None
               and settings.steps is None)
    if planned:
        plan.steps = steps_in_budget(translator, sampler, settings, device, group)
    translator.configure_optimizers(plan.steps)
    checked_extra_state(translator)  # a plugin's mistake, before any step is spent
    group.distribute(translator, device)
    if prepared.resume_state is not None:
        load_training_state(prepared.resume_state, translator, sampler)
    if group.rank > 0:  # noise of its own (sampling, image pools), seeded from rank 0's
        torch.manual_seed(int(torch.randint(2**62, (1,))) + group.rank)
    if group.is_main:  # only now, with the data known to be usable, is anything written
        _write_start(prepared, alignment)
        _warn_of_few_balance_estimates(settings, prepared.run_config.step, plan.steps)
    loop = Loop(prepared, settings, group, device, sampler, names,
                replan=planned)
    loop.run()
    return loop.finish()


def _join_processes(translator: Translator,
                    settings: TrainSettings) -> tuple[distributed.Group, torch.device]:
    """This process's place among torchrun's (alone: rank 0 of 1) and its device, with the
    networks moved there, synchronised across processes, and the speed options applied."""
    group, device_name = distributed.setup(str(settings.device))
    if not group.is_main:
        log.setLevel(logging.ERROR)  # one process reports
    device = pick_device(device_name)
    translator.to(device, amp=settings.amp)
    group.prepare(translator.networks(), device)
    _apply_speed_options(translator, settings, device)
    return group, device


def _apply_speed_options(translator: Translator, settings: TrainSettings,
                         device: torch.device) -> None:
    if settings.channels_last:  # NHWC: faster convolutions on recent GPUs (tensor cores)
        for net in translator.networks().values():
            net.to(memory_format=torch.channels_last)
    if device.type == "cuda":  # training crops have one size: the timing is paid once
        torch.backends.cudnn.benchmark = settings.cudnn_autotune
    if settings.compile:  # in place, so names, state dicts and checkpoints stay the same
        mode = compile_mode(settings, device)
        for net in translator.generator_networks().values():
            net.compile(mode=mode)


def preview_titles(translator: Translator, rows: list[list[tuple[str, torch.Tensor]]]
                   ) -> list[list[str]]:
    """Each preview tile's title: what its column shows and its side, "translated (B)"."""
    columns = translator.preview_columns
    return [[f"{columns[c] if c < len(columns) else ''} ({side.upper()})".strip()
             for c, (side, _) in enumerate(row)] for row in rows]


def compile_mode(settings: TrainSettings, device: torch.device) -> str:
    """torch.compile's mode for ``settings``: "auto" is CUDA graphs on CUDA, where a step at
    the reference batch of 1 is bound by kernel launches, not by the GPU's arithmetic."""
    if settings.compile_mode != "auto":
        return settings.compile_mode
    return COMPILE_MODE_ON_CUDA if device.type == "cuda" else "default"


def _check_settings(translator: Translator, settings: TrainSettings) -> None:
    check_available(settings.log_to)
    if settings.compile_mode not in COMPILE_MODES:
        raise UsageError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)} "
                         f"(got {settings.compile_mode})")


def _sampler(prepared: Prepared, group: distributed.Group):
    """(the crop sampler over the encoded examples, each example's file name by side (None for
    pairs: they are kept by index), the alignment cache of time-aligned pairs or None)."""
    dom, translator, folders = prepared.domain, prepared.translator, prepared.folders
    plan = prepared.run_config.train
    crop = dom.training_crop(plan.size)
    check_size_multiple(crop, translator)
    alignment = (AlignmentCache.load(prepared.out) if translator.paired and dom.pairs_by_time
                 else None)
    names = None
    if translator.paired:
        examples = paired_examples(folders, prepared.encoders, crop[1], alignment)
    else:
        kept = {side: encode_examples(folders[side], prepared.encoders[side], crop[1])
                for side in SIDES}
        examples = {side: [tensor for _, tensor in items] for side, items in kept.items()}
        names = {side: [str(path.relative_to(folders[side].folder)) for path, _ in items]
                 for side, items in kept.items()}
    sampler = CropSampler(examples, crop, plan.batch_size, dom.flip_augment, translator.paired,
                          seed=plan.seed, rank=group.rank, world=group.size)
    return sampler, names, alignment


def _write_start(prepared: Prepared, alignment: AlignmentCache | None) -> None:
    out = prepared.out
    truncate_log(out, prepared.run_config.step)  # a new run drops the log of one killed
    #                                              before its first checkpoint
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, prepared.run_config.to_json())
    if alignment is not None:
        alignment.save(out)


@dataclasses.dataclass
class _Marks:
    """When the loop last did what it does on a schedule."""

    saved: int  # the step of the last whole checkpoint
    saved_at: float = dataclasses.field(default_factory=time.monotonic)
    printed_at: float = float("-inf")
    tick: float = dataclasses.field(default_factory=time.perf_counter)  # steps/s measured since
    tick_step: int = 0
    # the plain progress line's speed: over all its steps since the line before, checkpoints
    # and previews included (one log period's speed may hold one, or none)
    line_tick: float = dataclasses.field(default_factory=time.perf_counter)
    line_step: int = 0
    report_failed: bool = False  # warned once that the run report could not be written
    reported_at: float = float("-inf")
    titles_saved: bool = False  # samples/titles.json written by this command


class Loop:
    """The steps of one training command, from the run's step to its planned total."""

    def __init__(self, prepared: Prepared, settings: TrainSettings, group: distributed.Group,
                 device: torch.device, sampler: CropSampler,
                 names: dict[str, list[str]] | None, replan: bool):
        self.prepared, self.settings, self.group, self.device = prepared, settings, group, device
        self.translator, self.plan = prepared.translator, prepared.run_config.train
        self.sampler, self.names = sampler, names
        self.start = self.step = prepared.run_config.step
        self.losses: dict[str, float] = {}
        self.step_lrs: dict[str, Any] = {}
        self.non_finite = 0  # steps in a row whose losses were not all finite
        self.preview_batch = sampler.fixed_batch()
        self.bar = progress_bar(total=self.plan.steps, initial=self.start, dynamic_ncols=True,
                                unit="step", enabled=settings.progress and group.is_main)
        self.marks = _Marks(saved=self.start, tick_step=self.start, line_step=self.start)
        self.translator.train(True)
        self.batches = _batch_source(sampler, settings, device)
        self.memory_format = (torch.channels_last if settings.channels_last
                              else torch.preserve_format)
        self._set_periods()
        self.budget = (None if settings.minutes is None
                       else Budget(settings, self.start, replan=replan))
        self.tensorboard = (TensorBoardLog(prepared.out, self.start)
                            if settings.log_to and group.is_main else None)
        self.stop: _StopAtStepBoundary | None = None
        self.updates: _WeightUpdates | None = None
        self.out_of_time = False  # --minutes: the last step's check of the time budget
        self.failure: str | None = None
        self.rates: list[float] = []  # steps/s of each logged period of this command
        # each loss's sum and count over the steps since the last progress line, which prints
        # their means: one step's losses jump about (a trial read 0.69 where the steps around
        # it were at 0.17); sums, as under a terminal's bar no line comes to empty a list
        self.since_line: dict[str, tuple[float, int]] = {}

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        # the first signal stops after the step here, and during the save after a failure too:
        # `--nproc`'s launcher sends a SIGTERM to every process once one has failed, whose
        # default action killed rank 0 while it saved the steps since its last checkpoint
        with _StopAtStepBoundary() as self.stop:
            self._train_then_save_on_failure()

    def _train_then_save_on_failure(self) -> None:
        try:
            with _WeightUpdates() as self.updates:
                stopping = False
                while self.step < self.plan.steps and not stopping:
                    stopping = self._one_step()
                    if self.group.is_main:
                        self._on_schedule(stopping)
        except (WriteError, RuntimeError, MemoryError) as exc:
            self.failure = _why_training_stopped(exc, self.device, self.step, self.plan,
                                                 self.start, self.group)
            if self.failure is None:
                self._save_before_failing()
                self._release()
                raise
            worth_saving = not isinstance(exc, WriteError)  # out of memory, a process lost
        except StyletxError:  # diverged, or a translator breaking the contract: nothing to save
            self._release()
            raise
        except Exception:  # a plugin's bug (or styletx's): the steps trained are kept
            self._save_before_failing()
            self._release()
            raise
        except BaseException as exc:
            self._end_on_an_exit_or_interrupt(exc)
            raise
        else:
            return
        if worth_saving:  # here, with the failed step's tensors freed with its traceback
            self._save_before_failing()

    def _end_on_an_exit_or_interrupt(self, exc: BaseException) -> None:
        """A second signal stops at once (the last checkpoint stays); a plugin's own
        KeyboardInterrupt or sys.exit() is a failure like any other: the steps trained are
        saved, and an exit becomes one line naming the translator (not the plugin's status)."""
        if not (isinstance(exc, KeyboardInterrupt) and self.stop.requested):
            self._save_before_failing()
        self._release()
        if isinstance(exc, SystemExit):
            call, culprit = f"sys.exit({exc.code!r})", plugin_that_raised(exc.__traceback__)
            raise StyletxError(
                (f'plugin "{culprit[0].name}" ({culprit[0].version}) called {call} at '
                 f"{culprit[1]}" if culprit else f"{call} was called")
                + f" while training, after step {self.step}") from exc

    def _set_periods(self) -> None:
        """Checkpoint and preview periods: as asked, else a tenth of the (revised) plan."""
        self.save_every = self.settings.save_every or save_interval(self.plan.steps)
        self.preview_every = self.settings.preview_every or self.save_every

    def _release(self) -> None:
        """Close the progress bar and the TensorBoard log, stop drawing batches ahead (a
        Python caller's process goes on after an error)."""
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        _pause_prefetch(self.batches)

    def _one_step(self) -> bool:
        """One training step; True when the loop must stop after it (on every process)."""
        if self.settings.balance and (self.step % self.settings.balance_every == 0
                                      or self.sampler.weights_dropped):
            self._rebalance()
            self.sampler.weights_dropped = False
        batch = {k: v.to(self.device, non_blocking=True, memory_format=self.memory_format)
                 for k, v in self.batches.next_batch().items()}
        if self.settings.compile:  # CUDA graphs: buffers of the last step may be reused now
            torch.compiler.cudagraph_mark_step_begin()
        schedulers = self.translator.schedulers
        epochs = {name: getattr(s, "last_epoch", None) for name, s in schedulers.items()}
        self.step_lrs = _learning_rates(self.translator)
        self.losses = _checked_losses(self.translator.training_step(batch, self.step),
                                      self.translator.name)
        for name, value in self.losses.items():
            summed, count = self.since_line.get(name, (0.0, 0))
            self.since_line[name] = (summed + value, count + 1)
        self.step += 1
        self.updates.seen = False
        for scheduler in schedulers.values():
            scheduler.step()
        _check_stepped_once(self.translator.name, schedulers, epochs)
        self.out_of_time = self.budget is not None and self.budget.spent()
        # rank 0's clock revises the plan, so that every process stops at the same step
        revised = (self.budget.revised_total(self.step, self.plan.steps, time.monotonic())
                   if self.budget and self.group.is_main else None)
        stopping, non_finite, revised = self.group.any_each(  # every process counts alike
            [self.stop.requested or self.out_of_time, bool(self._non_finite_losses())],
            self.device, number=revised or 0)
        self.non_finite = self.non_finite + 1 if non_finite else 0
        if self.non_finite >= NON_FINITE_STEPS:
            self._diverged()
        if revised:
            replan(self.translator, self.plan, revised)
            self.bar.total = revised
            self._set_periods()
        return stopping

    def _non_finite_losses(self) -> list[str]:
        return [name for name, value in self.losses.items() if not math.isfinite(value)]

    def _weights_finite(self, include_buffers: bool = False) -> bool:
        """Every parameter finite (and, asked, every floating-point buffer: batch norm's
        running statistics; a plugin's buffer may hold -inf on purpose, so not for saving)."""
        nets = self.translator.networks().values()
        tensors = [p for net in nets for p in net.parameters()]
        if include_buffers:
            tensors += [b for net in nets for b in net.buffers() if b.is_floating_point()]
        return not tensors or bool(torch.stack([t.isfinite().all() for t in tensors]).all())

    def _diverged(self) -> None:
        bad = self._non_finite_losses()
        if not self.non_finite:  # found at a checkpoint: the losses were finite
            what = "the weights hold NaN or infinite values"
        elif bad:
            what = f"{', '.join(bad)} not finite ({self.losses[bad[0]]})"
        else:
            what = "losses not finite on another process"
        kept = (f"the last checkpoint (step {self.marks.saved}) is kept and the same command "
                f"resumes from it" if self.marks.saved else "no checkpoint was saved before it")
        in_a_row = f" ({self.non_finite} step(s) in a row)" if self.non_finite else ""
        raise StyletxError(
            f"training diverged: {what} at step {self.step}{in_a_row}; stopped, {kept}. A "
            f"lower learning rate (--set lr=...) or another --seed may train")

    def _on_schedule(self, stopping: bool) -> None:
        """Progress, log, preview and checkpoint, each when its period says (and at the end)."""
        step, last = self.step, self.step == self.plan.steps or stopping
        self.bar.update(1)
        self.bar.set_postfix_str(_format_losses(self.losses), refresh=False)
        if step % self.settings.log_every == 0 or last:
            self._log_step()
        # no progress bar (not a terminal): a plain line every LINE_SECONDS instead, as
        # Progress writes (a slow voice run logged every 25 steps, 60 s apart)
        if self.bar.disable and (time.monotonic() - self.marks.printed_at
                                 >= progress.LINE_SECONDS or last):
            self._print_progress_line()
        if step % self.preview_every == 0 or last:
            self._save_preview()
        minutes_since_save = (time.monotonic() - self.marks.saved_at) / 60
        due = (step % self.save_every == 0 or last
               or minutes_since_save >= self.settings.save_minutes)
        # done or out of time; a model that converts only once finished, at every checkpoint
        # (Ctrl-C, or the one a damaged last save falls back to, must convert)
        if (step == self.plan.steps or (stopping and self.out_of_time)
                or (due and self.translator.finish_when_interrupted and not self.non_finite)):
            self._finish_training()
        # Never weights that may hold NaN over good ones: a step whose losses were not finite
        # is not saved (the next due step is), nor the last one, nor weights not all finite.
        if due and (not self._weights_finite() or (self.non_finite and last)):
            self._diverged()
        if due and not self.non_finite:
            p = self.prepared
            save_training_checkpoint(p.out, p.run_config, step, self.translator, p.encoders,
                                     self.batches)
            self.marks.saved, self.marks.saved_at = step, time.monotonic()
            self._refresh_report(last)

    def _save_before_failing(self) -> None:
        """After an error in the loop, the steps completed since the last checkpoint: saved,
        so that neither a plugin's bug nor running out of memory costs them, unless their
        weights are not finite. A step that failed after an optimizer stepped has left part
        of its update in the weights; they are saved with it (a GAN takes that in its stride)
        and the line says so."""
        step, last = self.step, self.marks.saved
        if not self.group.is_main or step <= last or self.non_finite:
            return
        p = self.prepared
        self.stop.doing = "saving the steps trained before the failure, then stopping"
        try:
            if not self._weights_finite():
                return
            if self.translator.finish_when_interrupted:  # so that the checkpoint converts
                self._finish_training()
            save_training_checkpoint(p.out, p.run_config, step, self.translator, p.encoders,
                                     self.batches)
        except Exception as exc:  # noqa: BLE001 - the error that stopped training comes next
            log.warning("training failed after step %d, and saving it failed too (%s); the "
                        "last checkpoint is step %d", step, one_line(exc, limit=200), last)
            return
        self.marks.saved = step
        part = (f" (with part of step {step + 1}'s update, made before it failed)"
                if self.updates.seen else "")
        log.warning("training failed after step %d; the %d step(s) since the last checkpoint "
                    "are saved%s: %s is at step %d", step, step - last, part, p.out, step)

    def _finish_training(self) -> None:
        """``Translator.finish_training``; a failure there (say, out of memory) is a warning:
        the steps trained are saved all the same, without what it would have fitted."""
        try:
            self.translator.finish_training(self.sampler.examples)
        except Exception as exc:  # noqa: BLE001 - a plugin's extra must not cost the steps
            log.warning("%s: fitting after training failed (%s); the run is saved without it",
                        self.translator.name, one_line(exc))

    def _refresh_report(self, last: bool) -> None:
        """The run report follows the checkpoints (at most every REPORT_SECONDS, and at the
        end). It is only a page: failing to write it warns once and never stops training."""
        if not last and time.monotonic() - self.marks.reported_at < REPORT_SECONDS:
            return
        self.marks.reported_at = time.monotonic()
        try:
            write_report(self.prepared.out)
        except Exception as exc:  # noqa: BLE001 - the checkpoint before it is what matters
            if not self.marks.report_failed:
                log.warning("%s not refreshed: %s", self.prepared.out / REPORT, one_line(exc))
                self.marks.report_failed = True

    def _log_step(self) -> None:
        marks, step = self.marks, self.step
        rate = (step - marks.tick_step) / max(time.perf_counter() - marks.tick, 1e-9)
        marks.tick, marks.tick_step = time.perf_counter(), step
        lrs = {k: float(lr) for k, lr in self.step_lrs.items()}  # the rates this step ran at
        self.rates.append(rate)
        finite = {k: v if math.isfinite(v) else None for k, v in self.losses.items()}
        append_log(self.prepared.out, {"step": step, "time": time.time(),
                                       "steps_per_s": round(rate, 3), "lr": lrs,
                                       "losses": finite})  # JSON has no NaN
        if self.tensorboard is not None:
            self.tensorboard.scalars(step, self.losses, lrs, rate)

    def _print_progress_line(self) -> None:
        marks, step, total = self.marks, self.step, self.plan.steps
        now = time.perf_counter()
        rate = (step - marks.line_step) / max(now - marks.line_tick, 1e-9)
        marks.line_tick, marks.line_step = now, step
        eta = (total - step) / max(rate, 1e-9)
        if self.budget is not None:  # --minutes: the run ends at its deadline at the latest
            eta = min(eta, max(self.budget.deadline - time.monotonic(), 0.0))
        means = {name: summed / count for name, (summed, count) in self.since_line.items()}
        log.info("step %d/%d  %s  (%.1f steps/s, %s left)", step, total,
                 _format_losses(means), rate, clock(eta))
        self.since_line = {}
        marks.printed_at = time.monotonic()

    def _save_preview(self) -> None:
        p, translator = self.prepared, self.translator
        rng = rng_state()  # a preview (sampling, dropout) must not change the training after it
        translator.train(False)
        rows = translator.preview({k: v.to(self.device) for k, v in self.preview_batch.items()})
        translator.train(True)
        restore_rng(rng)
        tensors = [[tensor for _, tensor in row] for row in rows]
        grid = [[p.encoders[side] for side, _ in row] for row in rows]
        stem, titles = p.out / SAMPLES / f"step-{self.step:06d}", preview_titles(translator, rows)
        try:  # a translator's or encoder's broken contract: named (by the check, or decoding)
            _check_preview(translator.name, tensors)
            save_domain_preview(p.domain, tensors, grid, stem, titles)
        except WriteError:
            raise  # the loop says so (a full disk: no checkpoint could be saved either)
        except StyletxError:
            if self.non_finite or not self._weights_finite(include_buffers=True):
                self._diverged()  # not the translator's contract: training went bad
            self._save_before_failing()  # the weights may be good: the steps trained are kept
            raise
        if not self.marks.titles_saved:  # the same for every preview of the run
            save_preview_titles(p.out, titles)
            self.marks.titles_saved = True
        if self.tensorboard is not None and stem.with_suffix(".png").is_file():
            self.tensorboard.picture(self.step, stem.with_suffix(".png"))

    def _rebalance(self) -> None:
        _pause_prefetch(self.batches)
        s = self.settings
        rebalance(self.prepared.out, self.step, self.translator, self.sampler,
                  s.balance_smoothing, self.names, self.group, s.balance_share,
                  s.balance_min_effective, s.balance_by)
        _resume_prefetch(self.batches)

    def _as_the_preset_says(self) -> bool:
        """Crops and batches of the preset's size, on one process, the model's settings its
        own: then this run's speed is the preset's."""
        config = self.prepared.run_config
        preset = type(self.translator).presets_for(config.domain).get(config.preset)
        by_data = set(preset.by_files(1)) if preset else set()
        if preset is None or self.group.active or any(  # (values set by the data: any)
                config.config.get(k) != v for k, v in preset.config.items() if k not in by_data):
            return False
        values = {**TRAIN_DEFAULTS, **preset.train}
        return (self.plan.size, self.plan.batch_size) == (values["size"], values["batch_size"])

    # -- the end -------------------------------------------------------------------------------
    def finish(self) -> TrainResult:
        """How the loop ended: trained (or out of time: saved), or an error naming the step of
        the last checkpoint."""
        out, step, total = self.prepared.out, self.step, self.plan.steps
        self._release()
        if self.failure is not None:
            saved = self.marks.saved  # rank 0's: only it saves, so only it can say
            raise StyletxError(self.failure + ("" if not self.group.is_main else
                                               f"; a rerun resumes from step {saved}" if saved
                                               else "; no checkpoint was saved"))
        if step < total and (self.budget is None or self.stop.requested):
            self.group.finish()
            interrupted = TrainingInterrupted(f"interrupted at step {step}; checkpoint saved in "
                                              f"{out}; run the same command to resume")
            if self.stop.received == signal.SIGTERM:  # the shell's convention: 128 + signal
                interrupted.exit_code = 128 + signal.SIGTERM
            raise interrupted
        if step < total:  # the time budget is spent: a short fall means the plan was a little
            #               optimistic (the lr was nearly decayed), a long one a much slower one
            report = log.info if step >= 0.9 * total else log.warning
            report("--minutes %g: time is up at step %d of %d; saved; the same command trains "
                   "the rest", self.settings.minutes, step, total)
        if self.group.is_main:  # extra outputs of the model (latent models: outlier scores)
            self._on_trained()
        self.group.finish()
        if self.group.is_main and len(self.rates) >= TIMED_PERIODS and self._as_the_preset_says():
            config = self.prepared.run_config  # for `styletx plugins`: what a step costs here
            record_step_time(config.translator, config.preset, config.domain, self.device.type,
                             1 / max(sorted(self.rates)[len(self.rates) // 2], 1e-9))
        log.info("trained %s to step %d; model in %s", self.translator.name, step, out)
        return TrainResult(out, step, self.losses, planned=total)

    def _on_trained(self) -> None:
        """``Translator.on_trained``; a Ctrl-C there leaves the steps saved and says that the
        same command writes what is missing."""
        out = self.prepared.out
        try:
            self.translator.on_trained(out, self.sampler.examples,
                                       chunk=self.prepared.domain.chunk_frames)
        except KeyboardInterrupt:
            self.group.finish()
            raise TrainingInterrupted(
                f"interrupted after training, while the {self.translator.name} model wrote its "
                f"extra outputs; {out} is trained to step {self.step} and the same command "
                "writes them") from None
        except RuntimeError as exc:
            if not is_out_of_memory(exc):
                raise
            self.group.finish()
            advice = device_advice(exc)
            raise StyletxError(out_of_memory_problem(
                exc, f"after training, while the {self.translator.name} model wrote its extra "
                f"outputs", f"{out} is trained to step {self.step} and the same command writes "
                f"them" + (f" ({advice})" if advice else ""))) from None


def _why_training_stopped(exc: BaseException, device: torch.device, step: int, plan,
                          start: int, group: distributed.Group) -> str | None:
    """One line for running out of memory or disk space in the loop, or for another training
    process gone; None for anything else."""
    if isinstance(exc, WriteError):
        return f"{exc}; training stopped at step {step}"
    lost = group.active and distributed.lost_a_process(exc)
    if lost:  # that process said why, or it was killed
        return f"another training process stopped in step {step + 1} ({lost})"
    if not is_out_of_memory(exc):
        return None
    advice = (f"lower --batch-size (now {plan.batch_size}) or --size (now {plan.size})"
              + (" in a new run (--out)" if start else ""))
    return out_of_memory_problem(exc, f"on {device} in step {step + 1}", advice)


def _batch_source(sampler: CropSampler, settings: TrainSettings,
                  device: torch.device) -> CropSampler | Prefetcher:
    """The sampler itself, or a ``Prefetcher`` drawing ahead of it (``--prefetch``)."""
    depth = settings.prefetch
    if depth is None:
        depth = 2 if device.type == "cuda" else 0
    return Prefetcher(sampler, depth, pin=device.type == "cuda") if depth else sampler


def _pause_prefetch(batches: CropSampler | Prefetcher) -> None:
    if isinstance(batches, Prefetcher):
        batches.pause()


def _resume_prefetch(batches: CropSampler | Prefetcher) -> None:
    if isinstance(batches, Prefetcher):
        batches.resume()


def _warn_of_few_balance_estimates(settings: TrainSettings, start: int, total: int) -> None:
    """A --balance-every as long as the run leaves the draws' weights at one estimate (made
    from the untrained model when at step 0) or none."""
    every = settings.balance_every
    if not settings.balance or start >= total:
        return
    steps = range(-(-start // every) * every, total, every)  # the re-estimates in this run
    if len(steps) > 1:
        return
    when = (f"estimated once, at step {steps[0]}" + (" (from the untrained model)"
                                                     if steps[0] == 0 else "")
            if steps else "not re-estimated in this run")
    log.warning("--balance-every %d is as long as the %d step(s) left: the sampling weights "
                "are %s; a shorter period follows the model as it learns", every,
                total - start, when)


def rebalance(out: Path, step: int, translator: Translator, sampler: CropSampler,
              smoothing: float, names: dict[str, list[str]] | None,
              group: distributed.Group, share: float, min_effective: float,
              by: str) -> None:
    """Re-estimate each side's sampling weights from how rare its examples are (``by``: their
    latent density or the model's negative ELBO, see ``styletx.engine.balance``; flattened
    until ``min_effective`` of the examples are effectively drawn; ``share`` of the draws
    follow them, the rest are uniform), and log how far they are from uniform and which files
    are drawn most often."""
    translator.train(False)
    summary = {}
    for side, examples in sampler.examples.items():
        if sampler.paired and side == "b":
            break  # a pair is drawn by its A index
        crops = torch.stack([sampler.centre_crop(side, i) for i in range(len(examples))])
        weights = with_uniform(sampling_weights(translator, crops, side, by, smoothing,
                                                min_effective), share)
        sampler.weights[side] = weights = group.broadcast(weights, translator.device)
        summary[side] = describe_weights(weights, names and names[side])
    translator.train(True)
    if not group.is_main:
        return
    append_log(out, {"step": step, "balance": summary})
    log.info("balance at step %d: %s", step, "; ".join(
        _balance_line(side, s, len(sampler.examples[side])) for side, s in summary.items()))


def _balance_line(side: str, summary: dict[str, Any], count: int) -> str:
    line = (f"{side.upper()}: {summary['effective_examples']:g} effective examples of {count}, "
            f"the rarest 5% drawn {100 * summary['top5pct_share']:.0f}% of the time")
    if "most_drawn" in summary:
        line += "; most often " + ", ".join(f"{name} ({times:g}x)"
                                            for name, times in summary["most_drawn"])
    return line


class _StopAtStepBoundary:
    """The first Ctrl-C (SIGINT) or SIGTERM (what ``kill``, ``docker stop`` and systemd send)
    asks the loop to stop after the current step, so the checkpoint it saves is a consistent
    state; a second one stops at once (the last checkpoint stays intact, as every write is
    atomic). A signal the parent set to be ignored (SIGINT in a background job) stays so."""

    # each signal's handlers that the loop takes over (the command line's for SIGTERM raises
    # Terminated, as Ctrl-C raises KeyboardInterrupt); one a parent set to ignore stays so
    SIGNALS = {signal.SIGINT: (signal.default_int_handler,),
               signal.SIGTERM: (signal.SIG_DFL, raise_terminated)}
    requested = False
    received: int | None = None  # the signal that asked
    doing = "stopping after this step"  # what a first signal is told

    def __enter__(self) -> _StopAtStepBoundary:
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for number, defaults in self.SIGNALS.items():
                if signal.getsignal(number) in defaults:
                    self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # the status says which signal stopped it (143: SIGTERM)
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.requested, self.received = True, signum
        log.warning("%s: %s (again to stop at once)",
                    "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name,
                    self.doing)

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)


def _check_preview(translator: str, rows: list[list[torch.Tensor]]) -> None:
    """Every tile of a preview row (input, translated, reconstructed) has the input's height
    and width (a translate of another size would be drawn stretched, unnoticed until convert),
    and values a picture can show."""
    for tile in (tile for row in rows for tile in row):
        problem = translated_values_problem(tile)
        if problem:
            raise StyletxError(f"the {translator} translator's preview holds {problem}")
    for row in rows:
        sizes = [tuple(tile.shape[-2:]) for tile in row]
        if any(size != sizes[0] for size in sizes):
            raise StyletxError(f"the {translator} translator's preview row holds tiles of "
                               f"{', '.join('x'.join(map(str, s)) for s in sizes)} (height x "
                               f"width): translate must keep its input's size")


class _WeightUpdates:
    """Whether an optimizer has stepped since ``seen`` was last cleared (at each step's end):
    a step that fails after that leaves part of its update in the weights."""

    seen = False

    def __enter__(self) -> _WeightUpdates:
        self._hook = register_optimizer_step_pre_hook(self._stepped)
        return self

    def _stepped(self, optimizer, args, kwargs) -> None:
        self.seen = True

    def __exit__(self, *exc) -> None:
        self._hook.remove()


def _learning_rates(translator: Translator) -> dict[str, Any]:
    """Each optimizer's (first group's) rate now, as the log shows it. A rate held in a tensor
    is copied, not read, so that no step waits for the device and the scheduler's step does
    not change the copy."""
    rates = {name: opt.param_groups[0]["lr"] for name, opt in translator.optimizers.items()}
    return {name: rate.clone() if isinstance(rate, torch.Tensor) else rate
            for name, rate in rates.items()}


def _check_stepped_once(translator: str, schedulers: dict[str, Any],
                        epochs: dict[str, int | None]) -> None:
    """The trainer steps each scheduler once a step; a translator that steps one itself too
    decays its learning rate twice as fast, without a sign but worse results."""
    for name, scheduler in schedulers.items():
        before, after = epochs.get(name), getattr(scheduler, "last_epoch", None)
        if isinstance(before, int) and isinstance(after, int) and after != before + 1:
            raise StyletxError(f"the {translator} translator stepped its {name!r} scheduler "
                               f"itself ({after - before} steps in one training step); the "
                               f"trainer steps every scheduler once a step, so training_step "
                               f"must not")


def _checked_losses(losses: Any, translator: str) -> dict[str, float]:
    """``training_step``'s losses as floats; a clear error naming the translator when they are
    not a dict of names and numbers (a plugin's mistake that failed deep in the logging)."""
    try:
        if isinstance(losses, dict) and all(isinstance(k, str) for k in losses):
            return {k: float(v.detach() if isinstance(v, torch.Tensor) else v)
                    for k, v in losses.items()}
    except (TypeError, ValueError, RuntimeError):
        pass
    shown = {k: type(v).__name__ for k, v in losses.items()} if isinstance(losses, dict) \
        else type(losses).__name__
    raise StyletxError(f"the {translator} translator's training_step must return its losses "
                       f"as a dict of name -> number, not {shown}")


def _format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in losses.items())
