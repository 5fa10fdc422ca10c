"""Training: from two folders to a run folder, with resume.

The loop is flat on purpose: draw a batch, let the translator take its step (GANs own several
optimizers, so the step is theirs), step the schedulers, then log, preview and checkpoint on
their schedules. Running ``train`` again on the same run folder resumes from the last checkpoint
with the optimizer, scheduler, image pool, RNG and data-sampler state, so N + N steps give the
same weights as 2N uninterrupted steps.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from styletx import __version__
from styletx.contract.errors import (
    StyletxError,
    UsageError,
    WriteError,
    is_out_of_memory,
    one_line,
    out_of_memory_problem,
)
from styletx.contract.interfaces import Domain, Encoder, LatentTranslator, Preset, Translator
from styletx.contract.registry import Registry, get_registry
from styletx.engine import distributed
from styletx.engine.balance import describe as describe_weights
from styletx.engine.balance import inverse_density_weights, pooled_means
from styletx.engine.data import (
    CropSampler,
    FolderData,
    Prefetcher,
    Reader,
    check_folder,
    encode_all,
    is_inside,
    list_files,
    load_folder,
)
from styletx.engine.model import (
    SIDES,
    build_from_config,
    encoder_record,
    load_model_tensors,
    make_config,
    model_tensors,
    pick_device,
)
from styletx.engine.pairs import (
    MIN_PAIRS,
    AlignmentCache,
    check_enough,
    load_aligned,
    load_pairs,
    match_sizes,
    pair_files,
    pair_key,
)
from styletx.engine.runs import (
    CONFIG,
    LOCK,
    SAMPLES,
    WEIGHTS,
    append_log,
    file_in_the_way,
    holds_run_lock,
    is_run_folder,
    load_checkpoint,
    read_config,
    save_checkpoint,
    truncate_log,
    write_json,
)

log = logging.getLogger("styletx")

PLAIN_LINE_SECONDS = 10  # without a progress bar (not a terminal): a progress line this often
# Used when neither the user nor the preset says otherwise.
TRAIN_DEFAULTS = {"steps": 10_000, "batch_size": 1, "size": 256}


@dataclasses.dataclass
class TrainSettings:
    steps: int | None = None  # total optimisation steps (None: the preset's)
    batch_size: int | None = None  # examples per step (None: the preset's)
    size: int | None = None  # training crop in pixels / frames (None: the preset's)
    seed: int = 0  # weights init, data order, crops, image pool
    device: str = "auto"  # auto = CUDA when available, else CPU
    amp: bool = True  # bf16 autocast for forward passes on CUDA (ignored on CPU)
    minutes: float | None = None  # wall-clock budget for this command: a new run without
    #                               `steps` times its first steps and plans as many as fit (the
    #                               lr schedule included); any run stops and saves when it is spent
    save_every: int | None = None  # checkpoint period in steps (and always at the end); None:
    #                                a tenth of the run, at most 500
    save_minutes: float = 5.0  # also checkpoint when this long has passed since the last one
    log_every: int = 25  # log.jsonl period in steps
    preview_every: int | None = None  # samples/ grid period in steps (and at the end); None:
    #                                   as save_every
    progress: bool = True  # progress bar on a terminal
    balance: bool = False  # latent models: draw rare kinds of example more often (DB-VAE)
    balance_every: int = 100  # steps between re-estimates of the sampling weights
    balance_smoothing: float = 0.001  # added to each latent histogram's density; larger values
    #                                   move the sampling towards uniform
    channels_last: bool = False  # channels-last memory format for the networks and batches
    compile: bool = False  # run the generators through torch.compile
    prefetch: int | None = None  # batches drawn ahead in a background thread (pinned for the
    #                              GPU); None: 2 on CUDA, 0 on CPU
    workers: int | None = None  # processes reading the training files; None: one per CPU
    #                             core (shared by the processes on this machine), at most 8
    started: float = dataclasses.field(default_factory=time.monotonic, repr=False)  # when the
    #                                   command began: `minutes` counts from here


class TrainingInterrupted(StyletxError):
    exit_code = 130


@dataclasses.dataclass
class TrainResult:
    run: Path
    step: int
    losses: dict[str, float]


@holds_run_lock  # one trainer per run folder
def train(
    a_dir: Path | str,
    b_dir: Path | str | None,
    out: Path | str,
    model: str | None = None,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    settings: TrainSettings | None = None,
    domain: str | None = None,
    encoder: str | None = None,
    registry: Registry | None = None,
    aligned: bool = False,
) -> TrainResult:
    """Train ``model`` to map the files of ``a_dir`` to the style of ``b_dir`` into ``out``.

    ``model`` defaults to cyclegan and ``preset`` to default; when ``out`` already holds a run,
    training resumes and both default to the saved ones. A paired model (pix2pix) pairs the
    files of the two folders by name; with ``aligned`` it reads pairs side by side from the
    files of ``a_dir`` alone (``b_dir`` None).
    """
    registry = registry or get_registry()
    settings = settings or TrainSettings()
    overrides = overrides or {}
    a_dir, b_dir = _check_folders(a_dir, b_dir, aligned)
    out = Path(out)
    for folder in (a_dir, b_dir):
        if folder and is_inside(out, folder):
            raise UsageError(f"--out {out} is inside the input folder {folder}; choose another")
    saved = _saved_config(out)
    if saved:
        return _resume(saved, a_dir, b_dir, out, model, preset, overrides, settings, domain,
                       encoder, registry)
    cls = registry.translator(model or "cyclegan")
    _check_paired(cls, aligned)
    preset = preset or "default"
    dom = registry.domain(domain) if domain else _guess_domain(registry, a_dir, b_dir)
    config = make_config(cls, preset, overrides, dom.name)
    train_values = _train_values(cls.presets_for(dom.name)[preset], settings)
    folders = _load_data(dom, a_dir, b_dir, out, train_values["size"], cls.paired, settings)
    encoders = {
        side: registry.encoder(encoder or dom.default_encoder(folders[side].samples))()
        for side in SIDES
    }
    for side, enc in encoders.items():
        _check_encoder(enc, dom)
        enc.fit(folders[side].samples)
    shapes = {side: tuple(enc.encode(folders[side].samples[0]).shape)
              for side, enc in encoders.items()}
    config = cls.config_for_data(config, shapes, dom.training_crop(train_values["size"]))
    run_config = {
        "styletx_version": __version__,
        "translator": cls.name,
        "preset": preset,
        "config": dataclasses.asdict(config),
        "domain": dom.name,
        "encoders": {side: encoder_record(enc) for side, enc in encoders.items()},
        "data": {"a": str(a_dir), "b": b_dir and str(b_dir), "aligned": aligned},
        "train": {**train_values, "seed": settings.seed},
        "shapes": {side: list(shape) for side, shape in shapes.items()},
        "step": 0,
    }
    torch.manual_seed(settings.seed)  # weight initialisation
    translator = cls(config, encoders["a"].channels, encoders["b"].channels)
    return _run_loop(run_config, dom, encoders, translator, folders, out, settings, None)


def _resume(saved, a_dir, b_dir, out, model, preset, overrides, settings, domain, encoder,
            registry):
    _check_same(saved, a_dir, b_dir, model, preset, overrides, settings, domain, encoder)
    if settings.steps is not None:
        if settings.steps < 1:
            raise UsageError(f"--steps must be at least 1 (got {settings.steps})")
        saved["train"]["steps"] = settings.steps
    dom, encoders, translator = build_from_config(saved, registry)
    tensors, state = load_checkpoint(out)
    try:
        load_model_tensors(translator, encoders, tensors)
    except (RuntimeError, KeyError) as exc:  # torch's message runs to a line per tensor
        raise StyletxError(f"{out / WEIGHTS}: does not match {out / CONFIG} "
                           f"({one_line(exc, limit=200, type_name=False)})") from None
    saved["step"] = state["step"]
    if saved["step"] >= saved["train"]["steps"]:
        log.info("%s is already trained to step %d of %d; raise --steps to continue",
                 out, saved["step"], saved["train"]["steps"])
        return TrainResult(out, saved["step"], {})
    folders = _load_data(dom, a_dir, b_dir, out, saved["train"]["size"], translator.paired,
                         settings)
    log.info("resuming %s from step %d", out, saved["step"])
    return _run_loop(saved, dom, encoders, translator, folders, out, settings, state)


def _run_loop(run_config, dom, encoders, translator: Translator, folders, out: Path,
              settings: TrainSettings, resume_state: dict[str, Any] | None) -> TrainResult:
    train_values = run_config["train"]
    total, start = train_values["steps"], run_config["step"]
    group, device_name = distributed.setup(settings.device)
    if not group.is_main:
        log.setLevel(logging.ERROR)  # one process reports
    device = pick_device(device_name)
    translator.to(device, amp=settings.amp)
    group.prepare(translator.networks(), device)
    _apply_speed_options(translator, settings)
    crop = dom.training_crop(train_values["size"])
    _check_size_multiple(crop, translator)
    if settings.balance and not isinstance(translator, LatentTranslator):
        raise UsageError(f"--balance needs a model with a latent space (vaegan), not "
                         f"{translator.name}")
    if settings.balance_every < 1 or settings.balance_smoothing < 0:
        raise UsageError("--balance-every must be at least 1 and --balance-smoothing >= 0")
    if settings.prefetch is not None and settings.prefetch < 0:
        raise UsageError(f"--prefetch must be >= 0 (got {settings.prefetch})")
    alignment = AlignmentCache.load(out) if translator.paired and dom.pairs_by_time else None
    names = None  # each example's file, for the --balance log (pairs are kept by index)
    if translator.paired:
        examples = _paired_examples(folders, encoders, crop[1], alignment)
    else:
        kept = {side: _encode_examples(folders[side], encoders[side], crop[1]) for side in SIDES}
        examples = {side: [tensor for _, tensor in items] for side, items in kept.items()}
        names = {side: [str(path.relative_to(folders[side].folder)) for path, _ in items]
                 for side, items in kept.items()}
    sampler = CropSampler(examples, crop, train_values["batch_size"], dom.flip_augment,
                          translator.paired, seed=train_values["seed"], rank=group.rank,
                          world=group.size)
    planned = settings.minutes is not None and resume_state is None and settings.steps is None
    if planned:
        total = train_values["steps"] = _steps_in_budget(translator, sampler, settings, device,
                                                         group)
    translator.configure_optimizers(total)
    group.distribute(translator, device)
    if resume_state is not None:
        _load_training_state(resume_state, translator, sampler)
    if group.rank > 0:  # noise of its own (sampling, image pools), seeded from rank 0's
        torch.manual_seed(int(torch.randint(2**62, (1,))) + group.rank)
    # Only now, with the data known to be usable, does anything get written (by rank 0).
    if group.is_main:
        truncate_log(out, start)  # a new run (start 0) drops the log of one killed before saving
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG, run_config)
        if alignment is not None:
            alignment.save(out)
    preview_batch = sampler.fixed_batch()
    step, losses = start, {}
    bar = tqdm(total=total, initial=start, file=sys.stderr, dynamic_ncols=True,
               disable=None if settings.progress and group.is_main else True, unit="step")
    tick, tick_step = time.perf_counter(), start
    translator.train(True)
    stopping = False
    batches = _batch_source(sampler, settings, device)
    memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
    saved, failure = start, None  # the step of the last whole checkpoint
    saved_at, printed_at = time.monotonic(), float("-inf")
    save_every = settings.save_every or _save_interval(total)
    preview_every = settings.preview_every or save_every
    budget = None if settings.minutes is None else Budget(settings, start,
                                                          replan=planned and not group.active)
    try:
        with _StopAtStepBoundary() as stop:
            while step < total and not stopping:
                if settings.balance and step % settings.balance_every == 0:
                    _pause_prefetch(batches)
                    _rebalance(out, step, translator, sampler, settings.balance_smoothing, names,
                               group)
                    _resume_prefetch(batches)
                batch = {k: v.to(device, non_blocking=True, memory_format=memory_format)
                         for k, v in batches.next_batch().items()}
                losses = translator.training_step(batch, step)
                for scheduler in translator.schedulers.values():
                    scheduler.step()
                step += 1
                out_of_time = budget is not None and budget.spent()
                stopping = group.any(stop.requested or out_of_time, device)  # on any rank: all
                revised = budget and budget.revised_total(step, total, time.monotonic())
                if revised:
                    total = _replan(translator, train_values, revised, bar)
                if not group.is_main:
                    continue
                bar.update(1)
                bar.set_postfix_str(_format_losses(losses), refresh=False)
                if step % settings.log_every == 0 or step == total or stopping:
                    rate = (step - tick_step) / max(time.perf_counter() - tick, 1e-9)
                    tick, tick_step = time.perf_counter(), step
                    plain = bar.disable and (time.monotonic() - printed_at >= PLAIN_LINE_SECONDS
                                             or step == total or stopping)
                    _log_step(out, step, total, losses, rate, translator, quiet=not plain)
                    printed_at = time.monotonic() if plain else printed_at
                if step % preview_every == 0 or step == total or stopping:
                    _save_preview(out, step, translator, preview_batch, device, dom, encoders)
                if (step % save_every == 0 or step == total or stopping
                        or time.monotonic() - saved_at >= 60 * settings.save_minutes):
                    _save_checkpoint(out, run_config, step, translator, encoders, batches)
                    saved, saved_at = step, time.monotonic()
    except (WriteError, RuntimeError) as exc:
        failure = _why_training_stopped(exc, device, step, train_values, start)
        if failure is None:
            raise
    if failure is not None:  # raised here, not in the handler, so the step's tensors are freed
        bar.close()
        raise StyletxError(failure + (f"; a rerun resumes from step {saved}" if saved
                                      else "; no checkpoint was saved"))
    _pause_prefetch(batches)
    bar.close()
    if step < total and (budget is None or stop.requested):
        group.finish()
        raise TrainingInterrupted(
            f"interrupted at step {step}; checkpoint saved in {out}; run the same command to resume"
        )
    if step < total:  # the time budget is spent: a short fall means the plan was a little
        #               optimistic (the lr was nearly decayed), a long one a much slower machine
        report = log.info if step >= 0.9 * total else log.warning
        report("--minutes %g: time is up at step %d of %d; saved; the same command trains the "
               "rest", settings.minutes, step, total)
    if isinstance(translator, LatentTranslator) and group.is_main:  # baseline outlier scores
        from styletx.tools.latent import save_training_statistics

        translator.train(False)
        save_training_statistics(out, translator, sampler.examples, device, chunk=dom.chunk_frames)
    group.finish()
    log.info("trained %s to step %d; model in %s", translator.name, step, out)
    return TrainResult(out, step, losses)


def _why_training_stopped(exc: BaseException, device: torch.device, step: int,
                          train_values: dict[str, Any], start: int) -> str | None:
    """One line for running out of memory or disk space in the loop; None for anything else."""
    if isinstance(exc, WriteError):
        return f"{exc}; training stopped at step {step}"
    if not is_out_of_memory(exc):
        return None
    advice = (f"lower --batch-size (now {train_values['batch_size']}) or --size (now "
              f"{train_values['size']})" + (" in a new run (--out)" if start else ""))
    return out_of_memory_problem(exc, f"on {device} in step {step + 1}", advice)


def _save_interval(total: int) -> int:
    """Default checkpoint period: about ten checkpoints a run, at most every 500 steps, so a
    short run has some before it ends (``save_minutes`` adds one every few minutes)."""
    return max(1, min(500, total // 10))


BUDGET_SHARE = 0.9  # of the time left after timing: the rest is for previews, checkpoints and
#                     steps slower than the timed ones (measured: 3-7% on a busy 2-core CPU)


def _steps_in_budget(translator: Translator, sampler: CropSampler, settings: TrainSettings,
                     device: torch.device, group: distributed.Group) -> int:
    """Training steps that fit in what is left of ``settings.minutes``: a few steps are timed
    and then undone (weights, extra state, data order and RNG restored), so the run is the
    same as one started with ``--steps`` of the result; every process takes rank 0's count."""
    per_step = _time_steps(translator, sampler, device)
    left = settings.started + 60 * settings.minutes - time.monotonic()
    steps = max(1, int(BUDGET_SHARE * left / per_step))
    steps = int(group.broadcast(torch.tensor([steps]), device))
    log.info("--minutes %g: %.3f s a step, so %d steps", settings.minutes, per_step, steps)
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


def _replan(translator: Translator, train_values: dict[str, Any], total: int, bar) -> int:
    """Make ``total`` the run's step count: new schedulers (and optimizers) for it, carrying
    the current optimizer and scheduler state over, as a resume does."""
    state = {kind: {name: obj.state_dict() for name, obj in getattr(translator, kind).items()}
             for kind in ("optimizers", "schedulers")}
    translator.configure_optimizers(total)
    for kind, objects in state.items():
        for name, obj_state in objects.items():
            getattr(translator, kind)[name].load_state_dict(obj_state)
    log.info("--minutes: %d steps fit at the speed so far (planned %d)", total,
             train_values["steps"])
    train_values["steps"] = bar.total = total
    return total


def _time_steps(translator: Translator, sampler: CropSampler, device: torch.device,
                warmup: int = 2, timed: int = 8) -> float:
    """Seconds per training step, the median of ``timed`` steps after ``warmup`` untimed ones,
    on throwaway optimizers; everything the steps changed is put back. A fixed count, so that
    every process runs the same steps (synchronised batch norm communicates in each)."""
    nets = {name: copy.deepcopy(net.state_dict()) for name, net in translator.networks().items()}
    extra, data, rng = translator.extra_state(), sampler.state_dict(), _rng_state()
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
    _restore_rng(rng)
    return statistics.median(times[warmup:])


def _apply_speed_options(translator: Translator, settings: TrainSettings) -> None:
    if settings.channels_last:  # NHWC: faster convolutions on recent GPUs (tensor cores)
        for net in translator.networks().values():
            net.to(memory_format=torch.channels_last)
    if settings.compile:  # in place, so names, state dicts and checkpoints stay the same
        for net in translator.generator_networks().values():
            net.compile()


def _reading_workers(requested: int | None) -> int:
    if requested is not None:
        if requested < 0:
            raise UsageError(f"--workers must be >= 0 (got {requested})")
        return requested
    # the cores this process may use (container limits included), shared by the
    # LOCAL_WORLD_SIZE training processes torchrun starts on this machine
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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


def _rebalance(out: Path, step: int, translator: Translator, sampler: CropSampler,
               smoothing: float, names: dict[str, list[str]] | None,
               group: distributed.Group) -> None:
    """Re-estimate each side's sampling weights from the latent density of its examples (see
    ``styletx.engine.balance``), and log how far they are from uniform and which files are drawn
    most often."""
    translator.train(False)
    summary = {}
    for side, examples in sampler.examples.items():
        if sampler.paired and side == "b":
            break  # a pair is drawn by its A index
        crops = torch.stack([sampler.centre_crop(side, i) for i in range(len(examples))])
        weights = inverse_density_weights(pooled_means(translator, crops, side), smoothing)
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
    """The first Ctrl-C (SIGINT) asks the loop to stop after the current step, so the checkpoint
    it saves is a consistent state; a second Ctrl-C stops at once (the last checkpoint stays
    intact, as every write is atomic)."""

    requested = False

    def __enter__(self) -> "_StopAtStepBoundary":
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (Ctrl-C again to stop at once)")

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# -- checkpoints ------------------------------------------------------------------------------

def _save_checkpoint(out, run_config, step, translator, encoders, sampler) -> None:
    save_checkpoint(out, model_tensors(translator, encoders), {
        "step": step,
        "optimizers": {k: o.state_dict() for k, o in translator.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in translator.schedulers.items()},
        "translator": translator.extra_state(),
        "sampler": sampler.state_dict(),
        "rng": _rng_state(),
    }, step)
    run_config["step"] = step
    write_json(out / CONFIG, run_config)


def _load_training_state(state: dict[str, Any], translator: Translator,
                         sampler: CropSampler) -> None:
    for kind in ("optimizers", "schedulers"):
        for name, obj in getattr(translator, kind).items():
            obj.load_state_dict(state[kind][name])
    translator.load_extra_state(state["translator"])
    sampler.load_state_dict(state["sampler"])
    _restore_rng(state["rng"])


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


# -- reporting --------------------------------------------------------------------------------

def _format_losses(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in losses.items())


def _log_step(out, step, total, losses, rate, translator, quiet: bool) -> None:
    lrs = {k: o.param_groups[0]["lr"] for k, o in translator.optimizers.items()}
    append_log(out, {"step": step, "time": time.time(), "steps_per_s": round(rate, 3),
                     "lr": lrs, "losses": losses})
    if not quiet:  # no progress bar (not a terminal): a plain line now and then instead
        eta = (total - step) / max(rate, 1e-9)
        log.info("step %d/%d  %s  (%.1f steps/s, %s left)", step, total, _format_losses(losses),
                 rate, _clock(eta))


def _clock(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _save_preview(out: Path, step: int, translator: Translator, batch, device, dom: Domain,
                  encoders: dict[str, Encoder]) -> None:
    rng = _rng_state()  # a preview (sampling, dropout) must not change the training that follows
    translator.train(False)
    rows = translator.preview({k: v.to(device) for k, v in batch.items()})
    translator.train(True)
    _restore_rng(rng)
    tensors = [[tensor for _, tensor in row] for row in rows]
    grid = [[encoders[side] for side, _ in row] for row in rows]
    dom.save_preview(tensors, grid, out / SAMPLES / f"step-{step:06d}")


# -- setup checks -----------------------------------------------------------------------------

def _train_values(preset: Preset, settings: TrainSettings) -> dict[str, int]:
    values = {**TRAIN_DEFAULTS, **preset.train}
    for key in TRAIN_DEFAULTS:
        if getattr(settings, key) is not None:
            values[key] = getattr(settings, key)
    option = {"steps": "--steps", "batch_size": "--batch-size", "size": "--size"}
    for key, value in values.items():
        if value < 1:
            raise UsageError(f"{option[key]} must be at least 1 (got {value})")
    return values


def _check_size_multiple(crop: tuple[int | None, int], translator: Translator) -> None:
    """Crops must be a multiple of the network's and, like conversion's padding, at least two
    multiples (so the coarsest scale keeps more than one element)."""
    multiple = translator.size_multiple
    for size in crop:
        if size is not None and (size % multiple or size < 2 * multiple):
            raise UsageError(f"--size {size}: {translator.name} needs a multiple of {multiple} "
                             f"of at least {2 * multiple}")


def _check_folders(a_dir, b_dir, aligned: bool) -> tuple[Path, Path | None]:
    a_dir = check_folder(Path(a_dir), "A_DIR")
    if aligned:
        if b_dir is not None:
            raise UsageError("--aligned reads both halves of each pair from A_DIR: give no B_DIR")
        return a_dir, None
    if b_dir is None:
        raise UsageError("missing B_DIR (or --aligned, for one folder of side-by-side pairs)")
    b_dir = check_folder(Path(b_dir), "B_DIR")
    if a_dir == b_dir:
        raise UsageError(f"A_DIR and B_DIR are the same folder ({a_dir})")
    return a_dir, b_dir


def _check_paired(cls: type[Translator], aligned: bool) -> None:
    if aligned and not cls.paired:
        raise UsageError(f"--aligned is for paired models such as pix2pix; {cls.name} learns from "
                         "two unpaired folders")


def _guess_domain(registry: Registry, a_dir: Path, b_dir: Path | None) -> Domain:
    folders = [d for d in (a_dir, b_dir) if d is not None]
    suffixes = {p.suffix.lower() for d in folders for p in list_files(d)}
    dom = registry.domain_for(suffixes)
    if dom is None:
        for option, folder in zip(("A_DIR", "B_DIR"), folders):
            if not list_files(folder):
                raise UsageError(f"{option} {folder}: the folder is empty")
        known = " ".join(sorted({e for d in registry.domains.values() for e in d.extensions}))
        raise UsageError(f"no supported files in {' or '.join(map(str, folders))} "
                         f"(styletx reads {known})")
    return dom


def _load_data(dom: Domain, a_dir: Path, b_dir: Path | None, out: Path, size: int,
               paired: bool, settings: TrainSettings) -> dict[str, FolderData]:
    """Each side's usable samples at training scale; for a paired model, pair i of each side
    belongs together."""
    progress = settings.progress and distributed.rank_from_environment() == 0
    reader = Reader(dom, size, _reading_workers(settings.workers), progress)
    if b_dir is None:
        folders = load_aligned(a_dir, reader, exclude=out)
    elif paired:
        folders = load_pairs(pair_files(a_dir, b_dir, dom, exclude=out), reader, (a_dir, b_dir))
    else:
        folders = {side: load_folder(folder, reader, f"{side.upper()}_DIR", exclude=out)
                   for side, folder in (("a", a_dir), ("b", b_dir))}
    if paired:
        check_enough(folders)
    for side, data in folders.items():
        log.info("%s: %s: %s%s", side.upper(), data.folder, dom.describe(data.samples),
                 f" ({len(data.skipped)} file(s) skipped)" if data.skipped else "")
    return folders


def _encode_examples(data: FolderData, encoder: Encoder,
                     width: int) -> list[tuple[Path, torch.Tensor]]:
    """Encode every sample once, as (file, tensor); one narrower than a training crop is
    reported and dropped."""
    kept = []
    for path, tensor in zip(data.files, encode_all(data.samples, encoder)):
        if tensor.shape[-1] < width:
            log.warning("skipping %s: shorter than one training segment (%d < %d frames)",
                        path, tensor.shape[-1], width)
        else:
            kept.append((path, tensor))
    if not kept:
        raise UsageError(f"{data.folder}: no file is as long as one training segment "
                         f"({width} frames); use longer files or a smaller --size")
    return kept


def _paired_examples(folders: dict[str, FolderData], encoders: dict[str, Encoder], width: int,
                     alignment: AlignmentCache | None) -> dict[str, list[torch.Tensor]]:
    """Encoded pairs whose halves line up element for element (see ``styletx.engine.pairs``; time
    alignments come from and go to the ``alignment`` cache); a pair with a side narrower than
    a training crop is reported and dropped."""
    a, b = (encode_all(folders[side].samples, encoders[side]) for side in SIDES)
    files = list(zip(folders["a"].files, folders["b"].files))
    kept = [i for i in range(len(a)) if min(a[i].shape[-1], b[i].shape[-1]) >= width]
    for i in sorted(set(range(len(a))) - set(kept)):
        side = "a" if a[i].shape[-1] < width else "b"
        log.warning("skipping the pair of %s: %s is shorter than one training segment "
                    "(%d < %d frames)", files[i][0], files[i][side == "b"],
                    (a if side == "a" else b)[i].shape[-1], width)
    if len(kept) < MIN_PAIRS:
        raise UsageError(f"only {len(kept)} pair(s) are as long as one training segment "
                         f"({width} frames); a paired model needs at least {MIN_PAIRS}")
    a, b, files = [a[i] for i in kept], [b[i] for i in kept], [files[i] for i in kept]
    if alignment is not None:
        a, b = alignment.align(a, b, files)
        if len(a) < MIN_PAIRS:
            raise UsageError(f"only {len(a)} pair(s) could be aligned; a paired model needs at "
                             f"least {MIN_PAIRS}")
        return {"a": a, "b": b}
    keys = [pair_key(path, folders["a"].folder) for path, _ in files]
    return {"a": a, "b": match_sizes(a, b, keys)}


def _check_encoder(enc: Encoder, dom: Domain) -> None:
    if enc.domain != dom.name:
        raise UsageError(f"--encoder {enc.name} encodes {enc.domain} files, not {dom.name} files")


def _saved_config(out: Path) -> dict[str, Any] | None:
    """The config of a resumable run in ``out``; None for a new (or never saved) run."""
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise UsageError(f"--out {out}: {blocker} is a file, not a folder")
    if not out.exists():
        return None
    if is_run_folder(out):
        return read_config(out) if (out / WEIGHTS).exists() else None
    if any(p.name != LOCK for p in out.iterdir()):  # the lock: see holds_run_lock
        raise UsageError(f"--out {out}: folder exists, is not empty and is not a styletx run")
    return None


def _check_same(saved, a_dir, b_dir, model, preset, overrides, settings, domain,
                encoder) -> None:
    """A resumed run must be the same run: refuse options that contradict the saved ones."""
    given = {
        "--model": (model, saved["translator"]),
        "--preset": (preset, saved["preset"]),
        "--aligned": (b_dir is None, saved["data"].get("aligned", False)),
        "A_DIR": (str(a_dir), saved["data"]["a"]),
        "B_DIR": (b_dir and str(b_dir), saved["data"]["b"]),
        "--size": (settings.size, saved["train"]["size"]),
        "--domain": (domain, saved["domain"]),
        "--encoder": (encoder, saved["encoders"]["a"]["name"]),
        "--batch-size": (settings.batch_size, saved["train"]["batch_size"]),
        # the default seed cannot be told from an explicit --seed 0: only another one is checked
        "--seed": (None if settings.seed == TrainSettings.seed else settings.seed,
                   saved["train"].get("seed", TrainSettings.seed)),
    }
    given.update({f"--set {k}": (v, saved["config"].get(k)) for k, v in overrides.items()})
    for option, (now, before) in given.items():
        if now is not None and now != before:
            raise UsageError(
                f"the run folder was trained with {option} {before}, not {now}; "
                "use the same options to resume, or a new --out"
            )
