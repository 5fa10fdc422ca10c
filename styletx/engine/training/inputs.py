"""The training data: checking the folders, reading and pairing the files, encoding them."""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path

import torch

from styletx.contract.errors import StyletxError, UsageError
from styletx.contract.interfaces import SIDES, Domain, Encoder, FolderSamples, Translator
from styletx.contract.registry import Registry
from styletx.engine import distributed
from styletx.engine.data import (
    SHOWN_FLAWED,
    FolderData,
    Reader,
    check_folder,
    encode_all,
    is_flat,
    list_files,
    load_folder,
)
from styletx.engine.memory import MemoryWatch
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
from styletx.engine.training.settings import TrainSettings

log = logging.getLogger("styletx")


def check_folders(a_dir, b_dir, aligned: bool) -> tuple[Path, Path | None]:
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


def check_paired(cls: type[Translator], aligned: bool) -> None:
    if aligned and not cls.paired:
        raise UsageError(f"--aligned is for paired models such as pix2pix; {cls.name} learns from "
                         "two unpaired folders")


def guess_domain(registry: Registry, a_dir: Path, b_dir: Path | None) -> Domain:
    folders = [d for d in (a_dir, b_dir) if d is not None]
    kinds = [{p.suffix.lower() for p in list_files(d)} for d in folders]
    _check_one_kind_of_file(registry, folders, kinds)
    dom = registry.domain_for(set().union(*kinds))
    if dom is None:
        for option, folder in zip(("A_DIR", "B_DIR"), folders):
            if not list_files(folder):
                raise UsageError(f"{option} {folder}: the folder is empty")
        known = " ".join(sorted({e for d in registry.domains.values() for e in d.extensions}))
        raise UsageError(f"no supported files in {' or '.join(map(str, folders))} "
                         f"(styletx reads {known}{registry.failed_note()})")
    return dom


def _check_one_kind_of_file(registry: Registry, folders: list[Path],
                            kinds: list[set[str]]) -> None:
    """Both folders must hold files one domain reads: photos in A and recordings in B would
    otherwise pick a domain by a tie and fail on the other folder (naming only that one)."""
    readers = [{name for name, cls in registry.domains.items() if suffixes & set(cls.extensions)}
               for suffixes in kinds]
    if len(readers) == 2 and all(readers) and not readers[0] & readers[1]:
        held = [" or ".join(sorted(names)) for names in readers]
        raise UsageError(f"A_DIR {folders[0]} holds {held[0]} files and B_DIR {folders[1]} "
                         f"{held[1]} files: both folders must hold the same kind of file")


def check_encoder(enc: Encoder | type[Encoder], dom: Domain, by_default: bool = False) -> None:
    if enc.domain == dom.name:
        return
    if by_default:  # no option was given: a plugin's mistake
        raise StyletxError(f"the {dom.name} domain's default encoder {enc.name} encodes "
                           f"{enc.domain!r} files, not {dom.name!r} files (Encoder.domain must "
                           f"be the domain's name)")
    raise UsageError(f"--encoder {enc.name} encodes {enc.domain} files, not {dom.name} files")


def check_channels(enc: Encoder) -> None:
    """A plugin's encoder must say how many channels it encodes to (an AttributeError
    traceback, deep in the first encode, had said it)."""
    channels = getattr(enc, "channels", None)
    if not isinstance(channels, numbers.Integral) or isinstance(channels, bool) or channels < 1:
        raise StyletxError(f"the {enc.name} encoder's channels is {channels!r}: it must be the "
                           "number of channels of the tensors it encodes to (an int, 1 or more)")


def check_size_multiple(crop: tuple[int | None, int], translator: Translator) -> None:
    """Crops must be a multiple of the network's and, like conversion's padding, at least two
    multiples (so the coarsest scale keeps more than one element)."""
    multiple = translator.size_multiple
    for size in crop:
        if size is not None and (size % multiple or size < 2 * multiple):
            raise UsageError(f"--size {size}: {translator.name} needs a multiple of {multiple} "
                             f"of at least {2 * multiple}")


def load_data(dom: Domain, a_dir: Path, b_dir: Path | None, out: Path, size: int,
              paired: bool, settings: TrainSettings) -> dict[str, FolderData]:
    """Each side's usable samples at training scale; for a paired model, pair i of each side
    belongs together."""
    progress = settings.progress and distributed.rank_from_environment() == 0
    reader = Reader(dom, size, reading_workers(settings.workers), progress,
                    memory=MemoryWatch(size))
    if b_dir is None:
        folders = load_aligned(a_dir, reader, exclude=out)
    elif paired:
        folders = load_pairs(pair_files(a_dir, b_dir, dom, exclude=out), reader, (a_dir, b_dir))
    else:
        folders = {side: load_folder(folder, reader, f"{side.upper()}_DIR", exclude=out)
                   for side, folder in (("a", a_dir), ("b", b_dir))}
    if paired:
        check_enough(folders)
    read = len({f for data in folders.values() for f in data.files})
    reader.warn_enlarged(read)
    reader.warn_flawed(read)
    for side, data in folders.items():
        log.info("%s: %s: %s%s", side.upper(), data.folder, dom.describe(data.samples),
                 f" ({len(data.skipped)} unusable file(s) skipped, named above)"
                 if data.skipped else "")
    if not paired:  # a pair's halves differ on purpose (say, gray to colour)
        for warning in dom.compare_folders({side: FolderSamples(data.samples, data.files)
                                            for side, data in folders.items()}):
            log.warning("%s", warning)
    return folders


def reading_workers(requested: int | None) -> int:
    if requested is not None:  # checked_settings: >= 0
        return requested
    # the cores this process may use (container limits included), shared by the
    # LOCAL_WORLD_SIZE training processes torchrun starts on this machine
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, (cores or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def encode_examples(data: FolderData, encoder: Encoder,
                    width: int) -> list[tuple[Path, torch.Tensor]]:
    """Encode every sample once, as (file, tensor); one narrower than a training crop, or flat
    (one value in each channel: nothing to learn from, see ``styletx.engine.data.FLAT_RANGE``),
    is reported and dropped."""
    kept, short, flat = [], 0, 0
    for path, tensor in zip(data.files, encode_all(data.samples, encoder, data.files)):
        if tensor.shape[-1] < width:
            short += 1
            if short <= SHOWN_FLAWED:  # then counted: thousands of lines hid the rest
                _warn_short(path, tensor.shape[-1], encoder, width)
        elif is_flat(tensor):
            flat += 1
            if flat <= SHOWN_FLAWED:
                log.warning("skipping %s: one value all over, a blank image (nothing to "
                            "learn from)", path)
        else:
            kept.append((path, tensor))
    for count, what in ((short, "too short"), (flat, "blank")):
        if count > SHOWN_FLAWED:
            log.warning("... and %d more %s file(s) of %s skipped", count - SHOWN_FLAWED, what,
                        data.folder)
    if not kept:
        raise _nothing_to_train_on(data, encoder, width, short, flat)
    if len(kept) < len(data.files):
        log.info("%s: %d of %d readable file(s) can be trained on", data.folder,
                 len(kept), len(data.files))
    return kept


def _warn_short(path: Path, got: int, encoder: Encoder, width: int) -> None:
    crop, unit = _crop_words(encoder)
    log.warning("skipping %s: shorter than %s (%d < %d %s)", path, crop, got, width, unit)


def _warn_short_pair(pair: tuple[Path, Path], widths: tuple[int, int], encoder: Encoder,
                     width: int) -> None:
    crop, unit = _crop_words(encoder)
    short = 0 if widths[0] < width else 1
    log.warning("skipping the pair of %s: %s is shorter than %s (%d < %d %s)", pair[0],
                pair[short], crop, widths[short], width, unit)


def _nothing_to_train_on(data: FolderData, encoder: Encoder, width: int, short: int,
                         flat: int = 0) -> UsageError:
    crop, unit = _crop_words(encoder)
    why = [f"{short} shorter than {crop} ({width} {unit}): use longer files or a smaller "
           "--size" if short else "",
           f"{flat} blank: one value all over" if flat else ""]
    return UsageError(f"{data.folder}: none of its {len(data.files)} readable file(s) can be "
                      f"trained on ({'; '.join(w for w in why if w)})")


def _too_few_pairs(kept: int, encoder: Encoder, width: int) -> UsageError:
    crop, unit = _crop_words(encoder)
    return UsageError(f"only {kept} pair(s) are as long as {crop} ({width} {unit}); a paired "
                      f"model needs at least {MIN_PAIRS}")


def refuse_too_short(folders: dict[str, FolderData], encoders: dict[str, Encoder], width: int,
                     paired: bool) -> None:
    """Before the encoders' fit (a voice's learned decoders: half a minute): the error that
    ``encode_examples`` or ``paired_examples`` would give after it, when the encoders can tell
    the encoded widths beforehand (``Encoder.width_before_fit``) and every file of a folder
    (every pair) is too short for a training crop."""
    widths = {side: [encoders[side].width_before_fit(s) for s in folders[side].samples]
              for side in SIDES}
    if any(w is None for side in SIDES for w in widths[side]):
        return
    if paired:
        pairs = list(zip(zip(folders["a"].files, folders["b"].files),
                         zip(widths["a"], widths["b"])))
        kept = sum(min(pair_widths) >= width for _, pair_widths in pairs)
        if kept < MIN_PAIRS:
            for files, pair_widths in pairs:
                if min(pair_widths) < width:
                    _warn_short_pair(files, pair_widths, encoders["a"], width)
            raise _too_few_pairs(kept, encoders["a"], width)
        return
    for side in SIDES:
        if all(w < width for w in widths[side]):
            for path, got in zip(folders[side].files, widths[side]):
                _warn_short(path, got, encoders[side], width)
            raise _nothing_to_train_on(folders[side], encoders[side], width,
                                       short=len(widths[side]))


def _crop_words(encoder: Encoder) -> tuple[str, str]:
    """What a training crop is called, and what its width counts, for ``encoder``'s files
    (a plugin's domain is neither sound nor picture to us)."""
    if encoder.domain == "audio":
        return "one training segment", "frames"
    return "one training crop", "columns once encoded"


def paired_examples(folders: dict[str, FolderData], encoders: dict[str, Encoder], width: int,
                    alignment: AlignmentCache | None) -> dict[str, list[torch.Tensor]]:
    """Encoded pairs whose halves line up element for element (see ``styletx.engine.pairs``; time
    alignments come from and go to the ``alignment`` cache); a pair with a side narrower than
    a training crop is reported and dropped."""
    a, b = (encode_all(folders[side].samples, encoders[side], folders[side].files)
            for side in SIDES)
    files = list(zip(folders["a"].files, folders["b"].files))
    kept = [i for i in range(len(a)) if min(a[i].shape[-1], b[i].shape[-1]) >= width]
    for i in sorted(set(range(len(a))) - set(kept)):
        _warn_short_pair(files[i], (a[i].shape[-1], b[i].shape[-1]), encoders["a"], width)
    if len(kept) < MIN_PAIRS:
        raise _too_few_pairs(len(kept), encoders["a"], width)
    a, b, files = [a[i] for i in kept], [b[i] for i in kept], [files[i] for i in kept]
    if alignment is not None:
        a, b = alignment.align(a, b, files)
        if len(a) < MIN_PAIRS:
            raise UsageError(f"only {len(a)} pair(s) could be aligned; a paired model needs at "
                             f"least {MIN_PAIRS}")
        return {"a": a, "b": b}
    keys = [pair_key(path, folders["a"].folder) for path, _ in files]
    return {"a": a, "b": match_sizes(a, b, keys)}
