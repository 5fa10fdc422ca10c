"""Scoring a run on held-out pairs: the Python API behind ``styletx evaluate``.

    result = evaluate("runs/sketch2photo", "test/a", "test/b")
    result.means()["converted"]["psnr_db"], result.means()["baseline"]["psnr_db"]

Each test input is converted with the run and compared with its pair by the domain's metrics
(images: PSNR and SSIM; voice: mel-cepstral distortion and log-F0 RMSE). The same metrics for
the *unconverted* input against its pair are the baseline a model has to beat. Any translator
can be evaluated, paired or not, so different models can be compared on one test set. Pairs are
found as in paired training (``styletx.engine.pairs``): by relative path without extension, or
side by side in one file with ``aligned``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styletx.contract.errors import (
    BadInputError,
    UsageError,
    WriteError,
    interrupt_status,
    one_line,
)
from styletx.contract.interfaces import direction_sides
from styletx.contract.registry import Registry
from styletx.engine.convert import Run, as_run
from styletx.engine.data import check_folder, domain_files
from styletx.engine.pairs import pair_files, pair_key
from styletx.engine.progress import log_failure, prefixed_messages

log = logging.getLogger("styletx")


@dataclasses.dataclass
class PairScore:
    name: str  # the pair's key: relative path without extension
    source: Path
    target: Path
    converted: dict[str, float]  # the converted input against the target
    baseline: dict[str, float]  # the unconverted input against the target


@dataclasses.dataclass
class Evaluation:
    """What ``evaluate`` measured: each pair's scores (``scores``), the files that failed, and
    per metric the means (``means()``) of the conversions and of the untouched inputs."""

    run: Path
    direction: str
    metrics: dict[str, str]  # name -> "higher" or "lower" (is better)
    scores: list[PairScore] = dataclasses.field(default_factory=list)
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    test_folders: tuple[Path, ...] = ()  # A_TEST and B_TEST, or A_TEST alone (aligned)
    variant: tuple[str, ...] = ()  # how the run converted otherwise than by itself (Run.variant)

    def means(self) -> dict[str, dict[str, float]]:
        """Mean of each metric over the pairs, for the converted inputs and the baseline (NaN
        values, e.g. an F0 error where nothing was voiced, are left out)."""
        return {kind: {name: _mean([getattr(s, kind)[name] for s in self.scores])
                       for name in self.metrics}
                for kind in ("converted", "baseline")}

    def gain(self, name: str, converted: float, baseline: float) -> float:
        """How much better ``converted`` is than ``baseline`` by metric ``name`` (< 0: worse)."""
        return (converted - baseline) * (1 if self.metrics[name] == "higher" else -1)

    def improved(self, name: str) -> int:
        """On how many pairs the conversion beats the baseline by metric ``name``."""
        return sum(self.gain(name, s.converted[name], s.baseline[name]) > 0
                   for s in self.scores)

    def __repr__(self) -> str:
        means = self.means()
        scored = ", ".join(f"{name} {means['converted'][name]:.4g} (untouched "
                           f"{means['baseline'][name]:.4g})" for name in self.metrics)
        failed = f", {len(self.failed)} failed" if self.failed else ""
        return (f"<Evaluation of {str(self.run)!r} {self.direction}: {len(self.scores)} "
                f"pair(s){failed}; means: {scored or 'none'}>")

    def keep_in_report(self) -> bool:
        """Save this evaluation in the run folder and rewrite its report (``RUN/report.html``),
        as ``styletx evaluate`` does; True if done. Not when nothing was scored, nor when
        some pairs failed (a partial evaluation does not replace a whole one), nor where the
        run folder cannot be written (a shared, read-only model): a warning says so, nor for a
        run loaded to convert otherwise than by itself (``load_run``'s settings, vocoder, ...:
        the report's table stays the run's own)."""
        from styletx.engine.report import REPORT, save_evaluation, write_report

        if not self.scores:
            return False
        if self.variant:  # the report's table stays the run's own conversion
            log.info("measured with %s: not added to the run's report", " ".join(self.variant))
            return False
        if self.failed:
            log.warning("%s not updated: some pairs could not be scored", self.run / REPORT)
            return False
        try:
            save_evaluation(self.run, self.to_json())
            write_report(self.run)
        except (OSError, WriteError) as exc:
            log.warning("%s not updated: %s", self.run / REPORT, one_line(exc, type_name=False))
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return _finite({
            "run": str(self.run),
            "direction": self.direction,
            "test_folders": [str(folder) for folder in self.test_folders],
            "metrics": self.metrics,
            "pairs": [{"name": s.name, "source": str(s.source), "target": str(s.target),
                       "converted": s.converted, "baseline": s.baseline} for s in self.scores],
            "mean": self.means(),
            "failed": [{"file": str(path), "problem": problem} for path, problem in self.failed],
        })


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``evaluate``; ``partial`` is the Evaluation of the pairs scored before,
    ``status`` the exit status the interrupt asks for (130, or 143 for SIGTERM)."""

    def __init__(self, partial: Evaluation, status: int = 130):
        super().__init__(f"interrupted after {len(partial.scores)} pair(s) scored")
        self.partial, self.status = partial, status


def evaluate(
    run: Run | Path | str,
    a_test: Path | str,
    b_test: Path | str | None = None,
    direction: str = "a2b",
    aligned: bool = False,
    device: str = "auto",
    registry: Registry | None = None,
    on_pair: Callable[[str, str | None], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Evaluation:
    """Convert every paired test input of ``a_test``/``b_test`` in ``direction`` and score it
    against its pair. A pair whose file is unusable is reported (``on_pair(name, problem)``;
    without ``on_pair``, a warning on the "styletx" logger) and left out; the rest are
    scored. ``on_start(n)`` is told the number of pairs first.
    Ctrl-C raises EvaluationInterrupted, which holds the pairs scored until then."""
    direction_sides(direction)  # validates the direction before any work
    model = as_run(run, device, registry)
    domain = model.domain
    if not domain.metrics:
        raise UsageError(f"the {domain.name} domain has no evaluation metrics")
    model.translator.check_direction(direction)  # before the test files are paired
    result = Evaluation(model.path, direction, dict(domain.metrics),
                        test_folders=tuple(Path(f).resolve() for f in (a_test, b_test)
                                           if f is not None), variant=tuple(model.variant))
    on_pair = on_pair or log_failure
    pairs = _test_pairs(domain, a_test, b_test, aligned, direction)
    if on_start is not None:
        on_start(len(pairs))
    try:
        for name, paths, load in pairs:
            _score_pair(model, direction, name, paths, load, result, on_pair)
    except KeyboardInterrupt as stop:
        raise EvaluationInterrupted(result, interrupt_status(stop)) from None
    _warn_if_worse_than_untouched(result)
    return result


def _warn_if_worse_than_untouched(result: Evaluation) -> None:
    """A mean worse than the untouched input's, by any measure (a trial's mean PSNR fell
    2.6 dB unremarked); and worse on most pairs by every measure: most often the two test
    folders given in the other order (a trial's b2a with its folders swapped scored and saved
    so)."""
    pairs = len(result.scores)
    if not pairs:
        return
    means = result.means()
    for name in result.metrics:
        converted, untouched = means["converted"][name], means["baseline"][name]
        if result.gain(name, converted, untouched) < 0:
            log.warning("the conversion's mean %s (%.3f) is worse than the untouched input's "
                        "(%.3f): look at the converted files before using this run", name,
                        converted, untouched)
    if pairs < 3 or any(3 * result.improved(n) > pairs for n in result.metrics):
        return
    source, target = result.direction[0].upper(), result.direction[2].upper()
    log.warning("the conversion is worse than the untouched input on most pairs: for %s, "
                "each file of %s_TEST (the %s folder) is converted and compared with its pair "
                "in %s_TEST; are the folders in that order, and was the run trained for it?",
                result.direction, source, "first" if source == "A" else "second", target)


def _score_pair(model: Run, direction: str, name: str, paths: tuple[Path, Path],
                load: Callable, result: Evaluation, on_pair: Callable) -> None:
    """Convert and score one pair into ``result`` (its scores, or its problem in ``failed``)."""
    domain = model.domain
    try:
        with prefixed_messages(f"{name}: ", once=True):
            src, tgt = load()
            converted = model.convert_sample(src, direction)
            score = PairScore(name, *paths, domain.compare(converted, tgt),
                              domain.compare(src, tgt))
    except BadInputError as err:
        result.failed.append((err.path, err.problem))
        on_pair(str(err.path), err.problem)
        return
    except ValueError as exc:  # the domain cannot measure this pair
        result.failed.append((paths[0], f"cannot be measured: {exc}"))
        on_pair(str(paths[0]), f"cannot be measured: {exc}")
        return
    result.scores.append(score)
    on_pair(name, None)


def _test_pairs(domain, a_test, b_test, aligned: bool, direction: str):
    """(name, (source path, target path), load) per pair, where ``load()`` gives the source and
    target samples and raises BadInputError for an unusable file."""
    source, target = direction_sides(direction)
    a_test = check_folder(Path(a_test), "A_TEST")
    if aligned:
        if b_test is not None:
            raise UsageError("--aligned reads both halves of each pair from A_TEST: give no B_TEST")
        files = domain_files(a_test, domain, "A_TEST")

        def split(path: Path):
            halves = dict(zip("ab", domain.split_aligned(domain.load(path), path)))
            return halves[source], halves[target]

        return [(pair_key(f, a_test), (f, f), lambda f=f: split(f)) for f in files]
    if b_test is None:
        raise UsageError("missing B_TEST (or --aligned, for one folder of side-by-side pairs)")
    b_test = check_folder(Path(b_test), "B_TEST")
    if a_test == b_test:
        raise UsageError(f"A_TEST and B_TEST are the same folder ({a_test})")
    found = pair_files(a_test, b_test, domain, ("A_TEST", "B_TEST"))
    pairs = []
    for a_path, b_path, key in found.pairs:
        paths = (a_path, b_path) if source == "a" else (b_path, a_path)
        pairs.append((key, paths, lambda paths=paths: tuple(map(domain.load, paths))))
    return pairs


def _mean(values: list[float]) -> float:
    """Of the finite values only: NaN is "not measured", and an infinite PSNR (a pair that is
    exactly its target) would swamp every other pair."""
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def _finite(value: Any) -> Any:
    """NaN and infinity as JSON null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
