"""Pairs of files, for paired translators (pix2pix) and for ``styletx evaluate``.

Two folders pair by relative path without extension, so ``a/x/001.png`` pairs with
``b/x/001.jpg``; ``--aligned`` reads one folder whose files each hold A and B side by side.
Files without a partner are listed (the first few, then a count), never dropped silently.

A pair's two halves must line up element for element. Images of different sizes have the B side
resized to the A side's size, with a warning (the same in training and in evaluation). Domains
with ``pairs_by_time`` (audio: the same sentence spoken at another pace) are aligned by dynamic
time warping of the encoded frames: both halves are resampled onto the warping path, so each
frame of one sits beside the matching frame of the other. The paths are cached in the run
folder, keyed by the files' size and modification time, so resuming does not recompute them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open

from styletx.contract.errors import BadInputError, UsageError, some_of
from styletx.contract.files import write_atomic, write_tensors
from styletx.contract.interfaces import Domain
from styletx.engine.data import FolderData, Reader, domain_files

log = logging.getLogger("styletx")

MIN_PAIRS = 4  # a paired run refuses to start with fewer usable pairs
SHOW = 5  # unmatched or mismatched files named before "and N more"
ALIGNMENT = "alignment.safetensors"  # the DTW cache in the run folder


@dataclasses.dataclass
class FilePairs:
    """Files of two folders matched by name: ``pairs`` holds (a file, b file, key)."""

    pairs: list[tuple[Path, Path, str]]
    only_a: list[Path]
    only_b: list[Path]


def pair_key(path: Path, folder: Path) -> str:
    """``folder/x/001.png`` -> ``x/001``: what pairs two files. In one Unicode form (NFC): a
    name copied from macOS spells "é" as "e" and a combining accent (NFD), which looks the
    same and would pair with nothing."""
    return unicodedata.normalize("NFC", path.relative_to(folder).with_suffix("").as_posix())


def pair_files(a_dir: Path, b_dir: Path, domain: Domain,
               options: tuple[str, str] = ("A_DIR", "B_DIR"),
               exclude: Path | None = None) -> FilePairs:
    """Match the ``domain`` files of two folders by relative path without extension."""
    keyed = {option: _by_key(domain_files(folder, domain, option, exclude), folder, option)
             for folder, option in zip((a_dir, b_dir), options)}
    a_keys, b_keys = keyed[options[0]], keyed[options[1]]
    common = sorted(set(a_keys) & set(b_keys))
    only_a, only_b = sorted(set(a_keys) - set(b_keys)), sorted(set(b_keys) - set(a_keys))
    case_hint = _differ_in_case(only_a, only_b)
    if not common:
        raise UsageError(
            f"no file of {options[0]} {a_dir} has a partner in {options[1]} {b_dir}: pairs are "
            f"matched by relative path without extension (a/x/001.png with b/x/001.jpg), e.g. "
            f"{next(iter(a_keys))!r} and {next(iter(b_keys))!r} do not match{case_hint}"
        )
    found = FilePairs(
        pairs=[(a_keys[k], b_keys[k], k) for k in common],
        only_a=[a_keys[k] for k in only_a],
        only_b=[b_keys[k] for k in only_b],
    )
    log.info("found %d pair(s) of files in %s and %s", len(common), a_dir, b_dir)
    for option, folder, lonely in ((options[0], a_dir, found.only_a),
                                   (options[1], b_dir, found.only_b)):
        if lonely:
            log.warning("%d file(s) in %s %s have no partner and are left out: %s%s",
                        len(lonely), option, folder,
                        some_of((p.relative_to(folder) for p in lonely), SHOW), case_hint)
    return found


def _differ_in_case(only_a: list[str], only_b: list[str]) -> str:
    """A hint when unpartnered names of the two sides differ only in case ("IMG_1" and
    "img_1"), which the match, exact as the file system's names, does not pair."""
    folded = {key.casefold(): key for key in only_b}
    for key in only_a:
        if key.casefold() in folded:
            return (f" ({key!r} and {folded[key.casefold()]!r} differ only in case: names are "
                    f"matched exactly; rename one)")
    return ""


def _by_key(files: list[Path], folder: Path, option: str) -> dict[str, Path]:
    keyed: dict[str, Path] = {}
    for path in files:
        key = pair_key(path, folder)
        if key in keyed:
            raise UsageError(f"{option} {folder}: {keyed[key].name} and {path.name} have the same "
                             "name; pairs are matched by name without extension, rename one")
        keyed[key] = path
    return keyed


def load_pairs(found: FilePairs, reader: Reader,
               folders: tuple[Path, Path]) -> dict[str, FolderData]:
    """Read both files of every pair; a pair with an unusable file is reported and skipped."""
    return _load(folders, reader, [((a, b), lambda a=a, b=b: (reader.sample(a), reader.sample(b)))
                                   for a, b, _ in found.pairs])


def load_aligned(folder: Path, reader: Reader, option: str = "A_DIR",
                 exclude: Path | None = None) -> dict[str, FolderData]:
    """``--aligned``: every file holds A and B side by side; split each in two."""
    domain = reader.domain
    files = domain_files(folder, domain, option, exclude)
    return _load((folder, folder), reader, [
        ((f, f), lambda f=f: tuple(reader.prepare(half, f)
                                   for half in domain.split_aligned(domain.load(f), f)))
        for f in files])


def _load(folders: tuple[Path, Path], reader: Reader, jobs) -> dict[str, FolderData]:
    """Run ``load() -> (a, b)`` for each ``((a path, b path), load)``, keeping the pairs whose
    files are usable and reporting the others by name."""
    data = {side: FolderData(folder, [], [], []) for side, folder in zip("ab", folders)}
    results = reader.run([load for _, load in jobs], "pairs")
    for (paths, _), result in zip(jobs, results):
        if isinstance(result, BadInputError):
            for side, path in zip(data.values(), paths):  # the side whose file it is (both
                if path == result.path:                    # with --aligned: one file)
                    side.skipped.append((result.path, result.problem))
            log.warning("skipping the pair of %s: %s", result.path, result.problem)
            continue
        for side, path, sample in zip(data.values(), paths, result):
            side.files.append(path)
            side.samples.append(sample)
    return data


def check_enough(data: dict[str, FolderData], minimum: int = MIN_PAIRS) -> None:
    """Refuse to train on fewer than ``minimum`` usable pairs."""
    count = len(data["a"].samples)
    if count < minimum:
        folders = dict.fromkeys(str(data[side].folder) for side in ("a", "b"))  # --aligned: one
        raise UsageError(f"{' and '.join(folders)}: only {count} usable pair(s) of files; a "
                         f"paired model needs at least {minimum}")


# -- making the two halves of each pair line up -------------------------------------------------

def match_sizes(a: list[torch.Tensor], b: list[torch.Tensor],
                names: Sequence[str]) -> list[torch.Tensor]:
    """B tensors ``(C, H, W)`` resized (bilinear) to their A partner's H and W where they differ."""
    out, resized = [], []
    for x, y, name in zip(a, b, names):
        if x.shape[-2:] != y.shape[-2:]:
            resized.append(f"{name} ({y.shape[-1]}x{y.shape[-2]} -> {x.shape[-1]}x{x.shape[-2]})")
            y = F.interpolate(y[None].float(), size=tuple(x.shape[-2:]), mode="bilinear",
                              align_corners=False, antialias=True)[0].to(y.dtype)
        out.append(y)
    if resized:
        log.warning("%d pair(s) differ in size as scaled for training; B resized (stretched) "
                    "to A's, width x height: %s", len(resized), some_of(resized, SHOW))
    return out


def dtw_path(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Frame alignment of two encoded sequences ``(C, H, Ta)`` and ``(C, H, Tb)`` by dynamic time
    warping with Euclidean frame distance: int64 ``(L, 2)`` of (a frame, b frame), in order."""
    import librosa

    x = a.float().reshape(-1, a.shape[-1]).numpy()
    y = b.float().reshape(-1, b.shape[-1]).numpy()
    _, path = librosa.sequence.dtw(X=x, Y=y, metric="euclidean")
    return np.ascontiguousarray(path[::-1], dtype=np.int64)


def warp(a: torch.Tensor, b: torch.Tensor, path: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sequences resampled onto the warping path (frames repeat where the other is slower)."""
    index = torch.from_numpy(path)
    return a[..., index[:, 0]], b[..., index[:, 1]]


MAX_DTW_CELLS = 150_000_000  # frames(a) x frames(b): ~1.2 GB per float64 matrix (~3 min each)


class AlignmentCache:
    """DTW paths by what they depend on (see ``_fingerprint``), stored in the run folder."""

    def __init__(self, paths: dict[str, np.ndarray] | None = None):
        self.paths = paths or {}
        self.used: set[str] = set()
        self.changed = False

    @classmethod
    def load(cls, run: Path) -> AlignmentCache:
        """The cache of ``run``; empty when there is none or it is unreadable."""
        path = run / ALIGNMENT
        if not path.is_file():
            return cls()
        try:
            with safe_open(path, "np") as f:
                names = json.loads((f.metadata() or {}).get("keys", "{}"))
                return cls({key: f.get_tensor(name) for name, key in names.items()})
        except (SafetensorError, OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s); the pairs will be aligned again", path, exc)
            return cls()

    def save(self, run: Path) -> None:
        """Write the paths used in this run (if any was added or is no longer used)."""
        stale = set(self.paths) - self.used
        if not (self.changed or stale):
            return
        names = {f"path{i}": key for i, key in enumerate(sorted(self.used))}
        tensors = {name: torch.from_numpy(self.paths[key]) for name, key in names.items()}
        write_atomic(run / ALIGNMENT,
                     lambda tmp: write_tensors(tmp, tensors, {"keys": json.dumps(names)}))

    def align(self, a: list[torch.Tensor], b: list[torch.Tensor],
              files: Sequence[tuple[Path, Path]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every pair warped onto its DTW path (cached or computed now); a pair too long to
        align in memory is reported and left out."""
        computed = 0
        out_a, out_b = [], []
        for x, y, (a_path, b_path) in zip(a, b, files):
            if x.shape[-1] * y.shape[-1] > MAX_DTW_CELLS:
                log.warning("skipping the pair of %s: too long to align (%d x %d frames); split "
                            "long recordings into sentences", a_path, x.shape[-1], y.shape[-1])
                continue
            key = _fingerprint(a_path, b_path, x, y)
            if key not in self.paths:
                self.paths[key] = dtw_path(x, y)
                self.changed = True
                computed += 1
            self.used.add(key)
            x, y = warp(x, y, self.paths[key])
            out_a.append(x)
            out_b.append(y)
        if computed:
            log.info("aligned %d pair(s) in time (dynamic time warping)", computed)
        return out_a, out_b


def _fingerprint(a_path: Path, b_path: Path, x: torch.Tensor, y: torch.Tensor) -> str:
    """What a cached path depends on: the two files (size, modification time) and the frames."""
    stats = [a_path.stat(), b_path.stat()]
    return json.dumps([str(a_path), str(b_path), [s.st_size for s in stats],
                       [s.st_mtime_ns for s in stats], list(x.shape), list(y.shape)])
