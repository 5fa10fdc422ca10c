"""Plugin discovery: built-in plugins and ``styletx`` entry points, through pluggy.

Each plugin's hooks are called one plugin at a time so that a broken plugin (import error,
exception in a hook, a name already taken) is reported by name and skipped, never fatal. That
includes a plugin that calls ``sys.exit``, raises ``KeyboardInterrupt`` or any other
``BaseException`` while loading (but a Ctrl-C of the user's, told apart by its signal,
stops the command), and one whose import takes longer than ``STYLETX_PLUGIN_TIMEOUT`` seconds
(default 60; only Python code can be interrupted, and only in the main thread).
Set ``STYLETX_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in plugins.

Entry points load in the order of their names, so which of two plugins that register the same
name loses does not depend on the order the installer listed them in. What a plugin prints
while it loads goes to stderr: ``styletx plugins --json`` keeps its stdout JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pluggy

from styletx import __version__
from styletx.contract import hookspecs
from styletx.contract.errors import Terminated, UsageError, not_a, one_line
from styletx.contract.interfaces import PRESET_TRAIN_KEYS, Domain, Encoder, Translator

log = logging.getLogger("styletx")

ENTRY_POINT_GROUP = "styletx"
DISABLE_AUTOLOAD_ENV = "STYLETX_DISABLE_PLUGIN_AUTOLOAD"
TIMEOUT_ENV, DEFAULT_TIMEOUT = "STYLETX_PLUGIN_TIMEOUT", 60.0  # seconds for one plugin's import
KINDS = {"domains": Domain, "encoders": Encoder, "translators": Translator}


@dataclasses.dataclass
class PluginInfo:
    name: str
    version: str
    builtin: bool
    registers: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    error: str | None = None
    # the module a third-party plugin's entry point names (its package's frames name it in
    # an error, ``Registry.plugin_in``), and the traceback of its load error (``--debug``)
    module: str | None = dataclasses.field(default=None, repr=False)
    error_traceback: str | None = dataclasses.field(default=None, repr=False)

    def listing(self) -> dict[str, Any]:
        """What ``styletx plugins`` shows of it."""
        return {"name": self.name, "version": self.version, "builtin": self.builtin,
                "registers": self.registers, "error": self.error}


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.domains: dict[str, type[Domain]] = {}
        self.encoders: dict[str, type[Encoder]] = {}
        self.translators: dict[str, type[Translator]] = {}
        self.plugins: list[PluginInfo] = []
        self.manager = pluggy.PluginManager("styletx")
        self.manager.add_hookspecs(hookspecs)

    @property
    def errors(self) -> list[str]:
        return [f'Error loading plugin "{p.name}": {p.error}' for p in self.plugins if p.error]

    def load(self, autoload: bool | None = None) -> Registry:
        # a plugin's print() keeps --json JSON
        with contextlib.redirect_stdout(sys.stderr), _user_interrupts():
            self._load_builtins()
            if autoload is None:
                autoload = (os.environ.get(DISABLE_AUTOLOAD_ENV, "").lower()
                            in ("", "0", "false", "no"))
            if autoload:
                self._load_entry_points()
        return self

    def _load_builtins(self) -> None:
        builtins = importlib.import_module("styletx.plugins")
        for module_name in builtins.BUILTIN_PLUGINS:
            name = module_name.rsplit(".", 1)[-1]
            info = PluginInfo(name, __version__, True)
            try:
                with _time_limit(name):
                    module = importlib.import_module(module_name)
            except BaseException as exc:  # noqa: BLE001 -- e.g. a missing optional dependency
                self._failed(info, exc)
                continue
            self._add(info, module)

    def _load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                         key=lambda ep: (ep.name, ep.value)):
            info = PluginInfo(ep.name, ep.dist.version if ep.dist else "?", False,
                              module=ep.value.split(":")[0].strip())
            try:
                with _time_limit(ep.name):
                    module = ep.load()
            except BaseException as exc:  # noqa: BLE001 -- sys.exit included: styletx goes on
                self._failed(info, exc)
                continue
            self._add(info, module)

    def _failed(self, info: PluginInfo, exc: BaseException, problem: str | None = None) -> None:
        if isinstance(exc, (_UserInterrupt, Terminated)):
            raise exc  # the user's Ctrl-C (or SIGTERM) is no plugin's failure: it stops
        info.error = problem or _one_line(exc)
        info.error_traceback = "".join(traceback.format_exception(exc))
        if not any(p is info for p in self.plugins):  # not yet listed (an import failure)
            self.plugins.append(info)

    def _add(self, info: PluginInfo, module: Any) -> None:
        name = info.name
        self.plugins.append(info)
        taken = self.manager.get_plugin(name)
        if taken is not None:
            owner = next((p for p in self.plugins if p.name == name and p is not info), None)
            info.error = (f'the name "{name}" is taken by the '
                          f'{"built-in plugin" if owner and owner.builtin else "plugin"} of '
                          f"that name; give the entry point another name")
            return
        try:
            self.manager.register(module, name=name)
            self.manager.check_pending()  # a misspelled hook name is an error, not a no-op
        except BaseException as exc:  # noqa: BLE001 -- a broken plugin is reported, not fatal
            self._failed(info, exc)
            if self.manager.is_registered(module):
                self.manager.unregister(module)
            return
        staged: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
        try:
            for kind in KINDS:
                for impl in getattr(self.manager.hook, f"register_{kind}").get_hookimpls():
                    if impl.plugin is module:
                        returned = impl.function(register=self._stager(kind, staged[kind]))
                        if returned is not None and not staged[kind]:
                            raise TypeError(f"register_{kind} returned {returned!r} instead "
                                            f"of calling register(...) with it")
        except BaseException as exc:  # noqa: BLE001 -- a broken plugin is reported, not fatal
            self._failed(info, exc, f"register_{kind}: {_one_line(exc)}")
            self.manager.unregister(module)
            return
        if not any(staged.values()):
            info.error = ("registers nothing (hooks must be named register_domains, "
                          "register_encoders or register_translators, use @styletx.hookimpl "
                          "and call register(cls) for each class)")
            self.manager.unregister(module)
            return
        # Commit only when the whole plugin registered cleanly: no half-loaded plugins.
        for kind, items in staged.items():
            getattr(self, kind).update(items)
            if items:
                info.registers[kind] = sorted(items)

    def _stager(self, kind: str, staged: dict[str, type]):
        base, table = KINDS[kind], getattr(self, kind)

        def register(cls: type) -> None:
            if isinstance(cls, base):  # the plugin's class makes the instances, per run
                raise TypeError(f"register_{kind} got an instance of {type(cls).__name__}: "
                                f"register the class, register({type(cls).__name__})")
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"register_{kind} got {cls!r}, {not_a(base.__name__, 'subclass')}")
            name = getattr(cls, "name", None)
            if not name:
                raise TypeError(f"{cls.__name__} has no name")
            if inspect.isabstract(cls):
                missing = ", ".join(sorted(cls.__abstractmethods__))
                raise TypeError(f"{cls.__name__} does not implement {missing}")
            if kind == "translators":
                _check_config_defaults(cls)
                _check_presets(cls)
            if name in table or name in staged:
                owner = self._owner(kind, name) or "this plugin"
                raise ValueError(f'{kind[:-1]} "{name}" is already registered by {owner}')
            staged[name] = cls

        return register

    def plugin_in(self, tb: TracebackType | None) -> tuple[PluginInfo, str] | None:
        """The third-party plugin whose code raised (the innermost frame of the traceback
        ``tb`` in its package) and where ("file:line in function"); None when no frame is a
        third-party plugin's. Built-in plugins are styletx's own code: their errors are bugs
        of styletx and keep their traceback."""
        plugins = [p for p in self.plugins if p.module and not p.error
                   and _package(p.module) != "styletx"]  # styletx's own code is never blamed
        for frame, line in reversed(list(traceback.walk_tb(tb))):
            module = frame.f_globals.get("__name__") or ""
            # the plugin whose package holds the frame's module; of two in one package, the
            # one whose entry-point module is the longer part of the frame's
            owners = [p for p in plugins if _package(p.module) == _package(module)]
            if owners:
                plugin = max(owners, key=lambda p: _shared_prefix(p.module, module))
                return plugin, f"{frame.f_code.co_filename}:{line} in {frame.f_code.co_name}"
        return None

    def _owner(self, kind: str, name: str) -> str | None:
        plugin = self.provider(kind, name)
        return f'plugin "{plugin.name}"' if plugin else None

    def provider(self, kind: str, name: str) -> PluginInfo | None:
        """The loaded plugin that registered ``name`` among ``kind`` ("translators", ...)."""
        return next((p for p in self.plugins if name in p.registers.get(kind, [])), None)

    # -- lookups with user-facing errors ----------------------------------------------------
    def translator(self, name: str) -> type[Translator]:
        return self._get("translators", name, "--model")

    def domain(self, name: str) -> Domain:
        return self._get("domains", name, "--domain")()

    def encoder(self, name: str) -> type[Encoder]:
        return self._get("encoders", name, "--encoder")

    def _get(self, kind: str, name: str, option: str):
        table = getattr(self, kind)
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise UsageError(f"unknown {kind[:-1]} {name!r} for {option} (available: {known}"
                             f"{self.failed_note()})")
        return table[name]

    def failed_note(self, lead: str = "; ") -> str:
        """``lead`` + "plugins that failed to load: ..." when any did (what they held is
        missing); "" when none did."""
        failed = ", ".join(f'"{p.name}"' for p in self.plugins if p.error)
        return f"{lead}plugins that failed to load: {failed}" if failed else ""

    def domain_for(self, path_suffixes: set[str]) -> Domain | None:
        """The domain that reads the most of these file suffixes, if any; of domains that
        read as many, the first registered (the built-in ones come first), with a warning."""
        counts = {name: len(path_suffixes & set(cls.extensions))
                  for name, cls in self.domains.items()}
        best = max(counts.values(), default=0)
        if not best:
            return None
        tied = [name for name, count in counts.items() if count == best]
        if len(tied) > 1:
            log.warning("the %s domains each read as many of these files; using %s "
                        "(--domain chooses)", " and ".join(tied), tied[0])
        return self.domains[tied[0]]()


def _check_config_defaults(cls: type) -> None:
    """A translator's ``Config`` is a dataclass and every field needs a default: presets and
    ``--set`` give only what they change (found here, when the plugin loads, not at training:
    a TypeError when a preset lacks the field, a plain class only when a run was made)."""
    config = getattr(cls, "Config", None)
    if not dataclasses.is_dataclass(config):
        got = "missing" if config is None else f"{config!r}"
        raise TypeError(f"{cls.__name__}.Config must be a dataclass of its settings "
                        f"(@dataclasses.dataclass), not {got}")
    bare = [f.name for f in dataclasses.fields(config)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if bare:
        raise TypeError(f"{cls.__name__}.Config field(s) {', '.join(bare)} have no default "
                        f"(each needs one: presets and --set give only what they change)")


def _check_presets(cls: type) -> None:
    """Each preset table that has any has a "default" (used without --preset), and each sets only
    the Config's fields and the trainer's ``PRESET_TRAIN_KEYS``: a misspelt key had been
    reported at train time as if the user had typed it (or, in ``train``, not at all)."""
    config = getattr(cls, "Config", None)
    fields = ({f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config)
              else None)  # not a dataclass: said when the translator is used, as before
    tables = {"presets": cls.presets,
              **{f"domain_presets[{d!r}]": t for d, t in cls.domain_presets.items()}}
    for where, table in tables.items():
        if table and "default" not in table:  # (empty: no presets for other domains)
            raise TypeError(f"{cls.__name__}.{where} has no \"default\" preset (the one used "
                            f"without --preset)")
        for name, preset in table.items():
            set_keys = {k for files in (1, 1_000_000) for k in preset.config_for(files)}
            unknown = sorted(k for k in set_keys if fields is not None and k not in fields)
            unknown += [k for k in preset.train if k not in PRESET_TRAIN_KEYS]
            if unknown:
                raise TypeError(f"{cls.__name__}'s preset {name!r} ({where}) sets "
                                f"{', '.join(map(repr, unknown))}, which is neither a field of "
                                f"its Config nor one of {', '.join(PRESET_TRAIN_KEYS)}")


def _package(module: str) -> str:
    return module.split(".")[0]


def _shared_prefix(a: str, b: str) -> int:
    """How many leading dotted parts the module names ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a.split("."), b.split("."))) if x != y),
                min(a.count("."), b.count(".")) + 1)


class _ImportTimeout(BaseException):  # not an Exception: the plugin's own handlers miss it
    pass


class _UserInterrupt(KeyboardInterrupt):
    """A Ctrl-C (SIGINT) while plugins load; a plugin's own KeyboardInterrupt is its failure."""


@contextlib.contextmanager
def _user_interrupts() -> Iterator[None]:
    """SIGINT raises ``_UserInterrupt`` meanwhile (main thread, default handler only: an
    ignored SIGINT, as in a background job, stays ignored)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def interrupted(signum, frame):
        raise _UserInterrupt

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _time_limit(name: str) -> Iterator[None]:
    """Raise ``_ImportTimeout`` in the importing code after ``STYLETX_PLUGIN_TIMEOUT`` seconds
    (SIGALRM: main thread only, and only if no other timer is running)."""
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
    except ValueError:
        seconds = DEFAULT_TIMEOUT
    usable = (seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _ImportTimeout(f"did not finish importing in {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, _ImportTimeout):
        return str(exc)
    return one_line(exc, limit=10_000)


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = Registry().load()
    return _registry


def plugin_that_raised(tb: TracebackType | None) -> tuple[PluginInfo, str] | None:
    """``Registry.plugin_in`` of the process-wide registry, if one is loaded (only a loaded
    registry has plugins to blame)."""
    return _registry.plugin_in(tb) if _registry is not None else None


def reset_registry() -> None:
    """Forget the loaded plugins (tests, and after installing a plugin at run time)."""
    global _registry
    _registry = None
