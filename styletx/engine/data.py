"""Finding, validating and streaming training files.

Every file is checked up front; unusable ones are reported by name and skipped, and a folder
without usable files stops the run before any training. Encoded examples are kept in memory
(float16) and random crops are drawn from them with a seeded ``torch.Generator`` whose state is
checkpointed, so a resumed run draws exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from styletx.contract.errors import BadInputError, StyletxError, UsageError
from styletx.contract.interfaces import Domain, Encoder, Sample
from styletx.engine.memory import MemoryWatch
from styletx.engine.model import encoded
from styletx.engine.progress import Progress

log = logging.getLogger("styletx")
T = TypeVar("T")

# A flat crop (every channel one value: a blank patch of a photo, digital silence) is poison for
# networks that instance-normalise behind reflect padding (the CycleGAN and UNIT generators):
# each such layer sees channels of zero variance, multiplies the gradient by 1 / sqrt(eps) ~
# 316, and a white 256-px crop gave gradients 5e3 (CycleGAN) to 1e9 (vaegan) times a photo's.
# Adam then either takes NaN (vaegan's default preset diverged at step 1 on desktop
# backgrounds) or keeps the spike in its second moment for thousands of steps, all but freezing
# the first layers. One 8-bit level of difference anywhere in the crop is enough to avoid it.
FLAT_RANGE = 1e-3  # a channel spanning less than this is flat (one 8-bit level is 2 / 255)
FLAT_TRIES = 8  # unpaired crops: flat ones are drawn again elsewhere this many times at most,
FLAT_JITTER = 1e-3  # ... then given uniform noise of this amplitude (1/8 of an 8-bit level)
PREVIEW_CHOICE = 16  # examples a side whose centre crops the preview picks from


def list_files(folder: Path, report: bool = False) -> list[Path]:
    """All regular files below ``folder``, sorted, skipping hidden files and folders. With
    ``report``, a symbolic link that leads nowhere (a missing target, a loop) is named in a
    warning instead of being passed over in silence."""
    found = [p for p in folder.rglob("*")
             if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    if report:
        for link in sorted(p for p in found if p.is_symlink() and not p.exists()):
            log.warning("skipping %s: a symbolic link to nothing (a missing file or a loop)",
                        link)
    return sorted(p for p in found if p.is_file())


def check_folder(folder: Path, option: str) -> Path:
    if not folder.exists():
        raise UsageError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise UsageError(f"{option} {folder}: not a folder")
    return folder.resolve()


def is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


@dataclasses.dataclass
class FolderData:
    """The usable samples of one training folder, and what was skipped and why."""

    folder: Path
    files: list[Path]
    samples: list[Sample]
    skipped: list[tuple[Path, str]]


def domain_files(folder: Path, domain: Domain, option: str,
                 exclude: Path | None = None) -> list[Path]:
    """The files of ``folder`` (outside ``exclude``) that ``domain`` reads; the others are
    reported, and a folder without any is refused."""
    files = [f for f in list_files(folder, report=True)
             if exclude is None or not is_inside(f, exclude)]
    if not files:
        raise UsageError(f"{option} {folder}: the folder is empty")
    readable = [f for f in files if domain.handles(f)]
    others = [f for f in files if not domain.handles(f)]
    if not readable:
        kinds = " ".join(domain.extensions)
        raise UsageError(f"{option} {folder}: no {domain.name} files ({kinds}) in the folder")
    if others:
        log.warning(
            "skipping %d file(s) in %s that are not %s files, e.g. %s",
            len(others), folder, domain.name, others[0].name,
        )
    return readable


MUCH_ENLARGED = 2.0  # training warns about files it enlarges more than this many times
SHOWN_FLAWED = 5  # training names this many files with a flaw (Domain.training_flaw), then counts


@dataclasses.dataclass
class Reader:
    """Reads training files: each one loaded and prepared at the training scale in one go
    (``Domain.prepare_for_training``), so full-resolution photos never pile up in memory, by
    ``workers`` threads (0 or 1: the calling thread).

    Threads, not processes: decoding (Pillow, libsndfile) and resizing (Pillow) run without the
    GIL, so two threads read 24 photos of 12 megapixels faster than two forked processes did
    (5.9 s against 6.8 s on 2 cores, 12.0 s in one thread). And nothing is forked from a
    process that already runs threads (torch's and Numba's pools): a fork copies only the
    forking thread, and a lock another thread held at that moment stays locked for good in
    the child, which then waits for ever."""

    domain: Domain
    size: int
    workers: int = 0
    progress: bool = False
    # (file, factor) of each file training enlarges more than MUCH_ENLARGED times
    enlarged: list[tuple[Path, float]] = dataclasses.field(default_factory=list)
    flawed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)  # training_flaw
    memory: MemoryWatch | None = None  # stops the reading before the files exhaust memory

    def prepare(self, sample: Sample, path: Path) -> Sample:
        factor = self.domain.training_enlargement(sample, self.size)
        if factor > MUCH_ENLARGED:
            self.enlarged.append((path, factor))  # list.append is atomic: safe from threads
        flaw = self.domain.training_flaw(sample)
        if flaw:
            self.flawed.append((path, flaw))
        try:
            return self.domain.prepare_for_training(sample, self.size)
        except BadInputError as err:  # the domain is not told the path: name it here
            raise BadInputError(path, err.problem) from None

    def sample(self, path: Path) -> Sample:
        return self.prepare(self.domain.load(path), path)

    def warn_enlarged(self, read: int) -> None:
        """One warning for the files of the ``read`` ones that training enlarges much: the
        model learns their blur as part of the style, then converts inputs at their own size."""
        if not self.enlarged:
            return
        path, factor = max(self.enlarged, key=lambda item: item[1])
        files = len({file for file, _ in self.enlarged})  # --aligned: two halves a file
        log.warning("training enlarges %d of the %d files more than %gx, to the training "
                    "scale of --size %d (the most: %s, %.0fx), so the model learns their blur; "
                    "a --size near their size trains on them as they are", files, read,
                    MUCH_ENLARGED, self.size, path, factor)

    def warn_flawed(self, read: int) -> None:
        """The files with a flaw the model would learn (``Domain.training_flaw``), by name:
        each of the first few, then how many more."""
        flawed = sorted(set(self.flawed))  # --aligned: two halves a file
        for path, flaw in flawed[:SHOWN_FLAWED]:
            log.warning("%s: %s; the model learns it as part of the style (leave the file "
                        "out, or fix it)", path, flaw)
        if len(flawed) > SHOWN_FLAWED:
            log.warning("... and %d more of the %d files have such flaws",
                        len(flawed) - SHOWN_FLAWED, read)

    def run(self, jobs: Sequence[Callable[[], T]], what: str) -> list[T | BadInputError]:
        """Each job's result, in order, or the ``BadInputError`` it raised; any other styletx
        error (e.g. a usage error from ``split_aligned``) stops the reading, as it would in
        one thread."""
        workers = min(self.workers, len(jobs))
        pool = ThreadPoolExecutor(workers, "styletx-reader") if workers > 1 else None
        try:
            results = pool.map(_run_job, jobs) if pool else map(_run_job, jobs)
            done = []
            if self.memory is not None:
                self.memory.new_folder()
            with Progress(f"reading {what}:", "file(s)", len(jobs), leave=False,
                          enabled=self.progress, label=f"reading {what}") as progress:
                for result in results:
                    if isinstance(result, StyletxError) and not isinstance(result,
                                                                           BadInputError):
                        raise result
                    done.append(result)
                    progress.update()
                    if self.memory is not None:
                        self.memory.check(result, len(done), len(jobs), what)
            return done
        finally:
            if pool is not None:  # an error or Ctrl-C: the files not yet started are not read
                pool.shutdown(cancel_futures=True)


def _run_job(job: Callable[[], T]) -> T | StyletxError:
    try:
        return job()
    except StyletxError as err:  # handed back as a result, to keep its one-line message
        return err


def load_folder(folder: Path, reader: Reader, option: str,
                exclude: Path | None = None) -> FolderData:
    """Read every file of ``folder`` that the domain reads; report and skip the rest."""
    domain = reader.domain
    readable = domain_files(folder, domain, option, exclude)
    data = FolderData(folder, [], [], [])
    results = reader.run([functools.partial(reader.sample, path) for path in readable], option)
    for path, result in zip(readable, results):
        if isinstance(result, BadInputError):
            data.skipped.append((path, result.problem))
            log.warning("skipping %s: %s", path, result.problem)
        else:
            data.samples.append(result)
            data.files.append(path)
    if not data.samples:
        raise UsageError(
            f"{option} {folder}: none of the {len(readable)} {domain.name} files is usable"
        )
    return data


def encode_all(samples: Sequence[Sample], encoder: Encoder,
               files: Sequence[Path]) -> list[torch.Tensor]:
    """Encode each sample (read from ``files``) once, checked (``encoded``: a plugin encoder's
    mistake is named with the file); stored as float16 to halve memory (ample precision for
    crops)."""
    return [encoded(encoder, sample, path).to(torch.float16)
            for sample, path in zip(samples, files, strict=True)]


class CropSampler:
    """Draws training batches of random crops (and flips) from encoded examples.

    ``crop`` is (height or None for the full height, width). Paired translators get the same
    index, crop and flip for a and b; unpaired ones draw a and b independently.

    An unpaired crop is never flat (``is_flat``, see ``FLAT_RANGE``): a flat one is drawn again
    elsewhere in the example, and after ``FLAT_TRIES`` flat ones jittered. It teaches an
    unpaired model nothing about the style and explodes instance-normalised gradients. A
    paired crop is kept as it is: a flat half (say, a label map of one class) is supervision,
    and pix2pix's U-Net (no norm on its first layer, zero padding) takes it.

    One process draws each example at random (by ``weights`` with ``--balance``). Among
    ``world`` training processes (``styletx.engine.distributed``) each epoch has one order of all
    the examples, the same on every rank (drawn from a generator seeded alike; by the weights, with
    replacement, with ``--balance``), and rank r takes every world-th example of it from the
    r-th on, so the ranks see disjoint shards; crops and flips come from a generator of the
    rank's own.
    """

    def __init__(
        self,
        examples: dict[str, list[torch.Tensor]],
        crop: tuple[int | None, int],
        batch_size: int,
        flip: bool,
        paired: bool,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        self.examples, self.crop, self.batch_size = examples, crop, batch_size
        self.flip, self.paired = flip, paired
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed + rank)
        # Per side, the probability of drawing each example; None = uniform (see --balance).
        self.weights: dict[str, torch.Tensor | None] = {side: None for side in examples}
        # Sharded drawing (world > 1): the epoch orders, and how far this rank is in its shard.
        self.order_generator = torch.Generator().manual_seed(seed)
        self.orders: dict[str, torch.Tensor | None] = {side: None for side in examples}
        self.cursors = {side: 0 for side in examples}
        self.weights_dropped = False  # saved weights that did not fit the examples (see below)

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _index(self, side: str) -> int:
        if self.world > 1:
            return self._sharded_index(side)
        weights = self.weights[side]
        if weights is None:
            return self._randint(len(self.examples[side]))
        return int(torch.multinomial(weights, 1, generator=self.generator))

    def _shard_length(self, side: str) -> int:
        return -(-len(self.examples[side]) // self.world)  # every rank draws as many

    def _sharded_index(self, side: str) -> int:
        if self.orders[side] is None or self.cursors[side] >= self._shard_length(side):
            n, weights, g = len(self.examples[side]), self.weights[side], self.order_generator
            self.orders[side] = (torch.randperm(n, generator=g) if weights is None
                                 else torch.multinomial(weights, n, True, generator=g))
            self.cursors[side] = 0
        order = self.orders[side]
        # Position k of rank r's shard is element r + k * world of the order, wrapping round
        # when the examples do not divide evenly (DistributedSampler's padding).
        index = order[(self.rank + self.cursors[side] * self.world) % len(order)]
        self.cursors[side] += 1
        return int(index)

    def _example(self, side: str, index: int) -> torch.Tensor:
        return _pad_to(self.examples[side][index].float(), self.crop[0], self.crop[1])

    def _position(self, x: torch.Tensor) -> tuple[int, int, bool]:
        """Random (top, left, flip) of a crop inside ``x``."""
        h = self.crop[0] or x.shape[1]
        top = self._randint(x.shape[1] - h + 1)
        left = self._randint(x.shape[2] - self.crop[1] + 1)
        return top, left, self.flip and bool(self._randint(2))

    def _cut(self, x: torch.Tensor, position: tuple[int, int, bool]) -> torch.Tensor:
        h, w = self.crop[0] or x.shape[1], self.crop[1]
        top, left = min(position[0], x.shape[1] - h), min(position[1], x.shape[2] - w)
        x = x[:, top : top + h, left : left + w]
        return x.flip(-1) if position[2] else x

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
        for _ in range(self.batch_size):
            index_a = self._index("a")
            index_b = index_a if self.paired else self._index("b")
            a, b = self._example("a", index_a), self._example("b", index_b)
            if self.paired:  # a pair shares its crop and flip so the two halves stay aligned
                position = self._position(a)
                batch["a"].append(self._cut(a, position))
                batch["b"].append(self._cut(b, position))
            else:
                batch["a"].append(self._crop_with_content(a))
                batch["b"].append(self._crop_with_content(b))
        return {side: torch.stack(items) for side, items in batch.items()}

    def _crop_with_content(self, x: torch.Tensor) -> torch.Tensor:
        """A random crop of ``x`` that is not flat (see the class): drawn again while it is,
        then jittered. A crop with content takes as many draws as before."""
        for _ in range(FLAT_TRIES):
            crop = self._cut(x, self._position(x))
            if not is_flat(crop):
                return crop
        noise = torch.rand(crop.shape, generator=self.generator) * 2 - 1
        return crop + FLAT_JITTER * noise

    def centre_crop(self, side: str, index: int) -> torch.Tensor:
        """The deterministic centre crop ``(C, h, w)`` of one example."""
        x = self._example(side, index)
        h = self.crop[0] or x.shape[1]
        return self._cut(x, ((x.shape[1] - h) // 2, (x.shape[2] - self.crop[1]) // 2, False))

    def fixed_batch(self) -> dict[str, torch.Tensor]:
        """For previews, a deterministic centre crop of each side: of its first PREVIEW_CHOICE
        examples, the one whose crop varies most. The first file's alone was a crop of flat
        sky in a scale trial, which showed nothing of what the model learnt. Paired: the
        pair whose A crop varies most."""
        def most_varied(side: str) -> int:
            count = min(PREVIEW_CHOICE, len(self.examples[side]))
            return max(range(count), key=lambda i: float(self.centre_crop(side, i).float().std()))

        chosen = {side: most_varied(side) for side in self.examples}
        if self.paired:
            chosen = dict.fromkeys(self.examples, chosen["a"])
        return {side: self.centre_crop(side, i)[None] for side, i in chosen.items()}

    def state_dict(self) -> dict[str, Any]:
        """The drawing state (rank 0's, for a checkpoint)."""
        state: dict[str, Any] = {"generator": self.generator.get_state(),
                                 "examples": {side: len(x) for side, x in self.examples.items()}}
        state.update({f"weights_{side}": w for side, w in self.weights.items() if w is not None})
        if self.world > 1:
            state |= {"world": self.world, "order_generator": self.order_generator.get_state()}
            for side, order in self.orders.items():
                if order is not None:
                    state |= {f"order_{side}": order, f"cursor_{side}": self.cursors[side]}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint, possibly saved with another number of processes: the
        epoch goes on from the same share of its order, and every rank > 0 gets crop draws of
        its own, seeded from the saved ones."""
        self.generator.set_state(state["generator"])
        if self.rank > 0:
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self.generator = torch.Generator().manual_seed(seed + self.rank)
        # Files added to or removed from a folder since the checkpoint: said (the run goes on
        # with the folders as they are; what was fitted to them when it began is kept), and
        # what was saved per example (the --balance weights, an epoch's order) is dropped.
        for side, saved in state.get("examples", {}).items():
            count = len(self.examples.get(side, ()))
            if count != saved and self.rank == 0:
                log.warning("%s: %d training examples now, %d at the checkpoint: training goes "
                            "on with the folder as it is now (encoders fitted when the run "
                            "began are kept)", side.upper(), count, saved)
        for side in self.weights:
            weights = state.get(f"weights_{side}")
            if weights is not None and not self._fits(side, weights, "the --balance weights "
                                                      "are estimated again"):
                weights, self.weights_dropped = None, True
            self.weights[side] = weights
        if "order_generator" in state:
            self.order_generator.set_state(state["order_generator"])
        saved_world = int(state.get("world", 1))
        for side in self.orders:
            order = state.get(f"order_{side}")
            if order is not None and self._fits(side, order, "a new epoch begins"):
                self.orders[side] = order
                drawn = int(state[f"cursor_{side}"]) * saved_world  # this epoch, by all ranks
                self.cursors[side] = drawn // self.world

    def _fits(self, side: str, saved: torch.Tensor, what: str) -> bool:
        """Is ``saved`` (one entry per example of ``side``) for as many examples as there are
        now? If not, say ``what`` is done instead (once, on the first process)."""
        if len(saved) == len(self.examples[side]):
            return True
        if self.rank == 0:
            log.info("%s: %s", side.upper(), what)
        return False


def read_ahead(items: Iterator[T], depth: int, name: str = "styletx-read-ahead") -> Iterator[T]:
    """Yield ``items``, produced by a background thread at most ``depth`` ahead (so memory stays
    bounded). An exception in the producer is raised here, at its place in the sequence;
    closing the generator (or leaving its loop) stops and joins the thread."""
    results: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(items, results, stop), name=name,
                              daemon=True)
    thread.start()
    try:
        while True:
            item, error = results.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()


_DONE = object()  # read_ahead's end of the sequence


def _produce(items: Iterator[Any], results: queue.Queue, stop: threading.Event) -> None:
    """read_ahead's producer: (item, None) for each item, (None, exception) for a failure,
    then the end; stops early when ``stop`` is set."""
    try:
        for item in items:
            _put(results, stop, (item, None))
            if stop.is_set():
                return
    except Exception as exc:  # handed to the consumer, raised there
        _put(results, stop, (None, exc))
    _put(results, stop, (_DONE, None))


def _put(results: queue.Queue, stop: threading.Event, entry: tuple) -> None:
    """Put ``entry``, waiting for room, unless the consumer has left (``stop``)."""
    while not stop.is_set():
        try:
            results.put(entry, timeout=0.1)
            return
        except queue.Full:
            continue


class Prefetcher:
    """Draws the next batches from a ``CropSampler`` in a background thread while the model
    trains, pinned in page-locked memory when they go to a GPU (so the copy can overlap compute),
    ``depth`` batches ahead.

    A thread rather than worker processes: the examples are decoded and held in memory before
    training starts, so a batch is only a few crops and a stack, and one thread keeps the
    sampler's random state in one place. Each batch travels with the sampler's state after
    drawing it, so ``state_dict`` is the state after the batches *consumed*, and a checkpoint
    resumes exactly where training was, whatever was drawn ahead."""

    def __init__(self, sampler: CropSampler, depth: int, pin: bool):
        self.sampler, self.depth, self.pin = sampler, depth, pin
        self.state = sampler.state_dict()
        self.resume()

    def _draw(self) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        while True:
            batch = self.sampler.next_batch()
            if self.pin:
                batch = {side: x.pin_memory() for side, x in batch.items()}
            yield batch, self.sampler.state_dict()

    def next_batch(self) -> dict[str, torch.Tensor]:
        batch, self.state = next(self.batches)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def pause(self) -> None:
        """Stop drawing ahead and rewind the sampler to the batches consumed (before its
        weights change, or at the end)."""
        self.batches.close()
        self.sampler.load_state_dict(self.state)

    def resume(self) -> None:
        self.batches = read_ahead(self._draw(), self.depth, "styletx-prefetch")


def is_flat(x: torch.Tensor) -> bool:
    """Does every channel of ``(C, ...)`` hold one value (to within ``FLAT_RANGE``)?"""
    values = x.flatten(1)
    return bool((values.amax(1) - values.amin(1) < FLAT_RANGE).all())


def _pad_to(x: torch.Tensor, h: int | None, w: int) -> torch.Tensor:
    """Replicate-pad ``(C, H, W)`` up to at least ``h`` (None: any) × ``w`` (small examples)."""
    dh, dw = max(0, (h or 0) - x.shape[1]), max(0, w - x.shape[2])
    if dh or dw:
        x = F.pad(x[None], (0, dw, 0, dh), mode="replicate")[0]
    return x


def as_paths(inputs: Iterable[Path | str] | Path | str) -> list[Path | str]:
    """A list of the inputs named: one path (a str or Path) is a list of one, not the
    characters of its name."""
    return [inputs] if isinstance(inputs, (str, Path)) else list(inputs)


def expand_inputs(inputs: Iterable[Path]) -> list[tuple[Path, Path]]:
    """(file, path relative to where it was named) for files and folders (recursively)."""
    pairs = []
    for item in inputs:
        if item.is_dir():
            pairs += [(f, f.relative_to(item)) for f in list_files(item, report=True)]
        else:
            pairs.append((item, Path(item.name)))
    return pairs
