"""What styletx remembers between commands on this machine, in ``$XDG_CACHE_HOME/styletx``
(``~/.cache/styletx``): the plugin listing, so that ``styletx plugins`` answers without importing
torch and every plugin, and the training speed measured for each model and preset. Nothing here
is needed: a cache that cannot be read or written is ignored (and rebuilt when it can).

Light on purpose (no torch): ``styletx plugins`` imports it before anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from styletx import __version__

__all__ = ["cache_dir", "plugin_listing", "record_step_time", "step_times", "measured"]

ENTRY_POINT_GROUP = "styletx"  # as styletx.contract.registry's (which imports torch)
STEP_TIMES = "step-times.json"
PLUGIN_LISTING = "plugins-"  # plugins-ENVIRONMENT-KEY.json


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "styletx"


def plugin_listing(compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """``compute()`` (the listing of the installed plugins, as JSON values), or what it gave
    the last time when nothing it depends on has changed since: styletx's version and source
    files (the listing's code), the entry points and the versions of their packages, the
    plugins' source files, and where Python finds modules (``sys.path``, and when a folder of
    it last gained or lost a file: uninstalling a plugin's dependency breaks the plugin). A
    listing with a broken plugin is not kept (installing what it lacked changes none of
    those). The listings of this Python environment's earlier keys are removed (another
    environment sharing the cache keeps its own)."""
    path = cache_dir() / f"{PLUGIN_LISTING}{_environment()}-{_installed_plugins_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    listing = compute()
    if not any(plugin.get("error") for plugin in listing):  # a fix may not change the key
        forget_plugin_listing()
        _write(path, listing)
    return listing


def forget_plugin_listing() -> None:
    """Drop this environment's kept listing: a plugin failed to load where it had listed as
    fine (its failure depends on what its key does not cover, e.g. an environment variable)."""
    for old in cache_dir().glob(f"{PLUGIN_LISTING}{_environment()}-*.json"):
        with contextlib.suppress(OSError):
            old.unlink()


def _environment() -> str:
    return hashlib.sha256(sys.prefix.encode()).hexdigest()[:8]


def _installed_plugins_key() -> str:
    parts = [__version__, _source_stamp("styletx"), _source_stamp("styletx.cli"),
             _source_stamp("styletx.plugins"),
             os.environ.get("STYLETX_DISABLE_PLUGIN_AUTOLOAD", "")]
    here = os.getcwd()
    for folder in sys.path:  # installing or removing any package changes its folder's time
        # (not the current folder's: outputs are written there all the time)
        parts += [folder, "" if folder in ("", here) else str(_modified(folder))]
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda ep: ep.name):
        package = ep.value.split(":")[0].split(".")[0]
        parts += [ep.name, ep.value, ep.dist.version if ep.dist else "?",
                  _source_stamp(package)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _modified(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def _source_stamp(module: str) -> str:
    """The newest modification time and the number of the module's Python files (a package:
    all of them), found without importing the module; "" when it cannot be found."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    if spec.submodule_search_locations:
        files = [f for folder in spec.submodule_search_locations
                 for f in Path(folder).rglob("*.py")]
    else:
        files = [Path(spec.origin)] if spec.origin else []
    stamps = [f.stat().st_mtime_ns for f in files if f.is_file()]
    return f"{max(stamps, default=0)}:{len(stamps)}"


def record_step_time(translator: str, preset: str, domain: str, device: str,
                     seconds_per_step: float) -> None:
    """Remember a training run's measured time per step (the last run of each kind wins)."""
    times = step_times()
    times[_step_key(translator, preset, domain, device)] = round(seconds_per_step, 4)
    _write(cache_dir() / STEP_TIMES, times)


def step_times() -> dict[str, float]:
    try:
        times = json.loads((cache_dir() / STEP_TIMES).read_text())
    except (OSError, ValueError):
        return {}
    return times if isinstance(times, dict) else {}


def measured(times: dict[str, float], translator: str, preset: str,
             domain: str) -> dict[str, float]:
    """{device: seconds per step} recorded for a translator's preset on a domain."""
    prefix = _step_key(translator, preset, domain, "")
    return {key[len(prefix):]: value for key, value in times.items() if key.startswith(prefix)}


def _step_key(translator: str, preset: str, domain: str, device: str) -> str:
    return f"{translator}/{preset}/{domain}/{device}"


def _write(path: Path, value: Any) -> None:
    """Atomically, or not at all (a read-only home, a full disk: the cache is only a cache)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
