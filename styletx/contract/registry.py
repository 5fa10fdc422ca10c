"""Plugin discovery: built-in plugins and ``styletx`` entry points, through pluggy.

Each plugin's hooks are called one plugin at a time so that a broken plugin (import error,
exception in a hook, a name already taken) is reported by name and skipped, never fatal. That
includes a plugin that calls ``sys.exit``, raises ``KeyboardInterrupt`` or any other
``BaseException`` while loading (a Ctrl-C during plugin loading is therefore taken as that
plugin's failure), and one whose import takes longer than ``STYLETX_PLUGIN_TIMEOUT`` seconds
(default 60; only Python code can be interrupted, and only in the main thread).
Set ``STYLETX_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-in plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pluggy

from styletx import __version__
from styletx.contract import hookspecs
from styletx.contract.errors import UsageError, one_line
from styletx.contract.interfaces import Domain, Encoder, Translator

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
        builtins = importlib.import_module("styletx.plugins")
        for module_name in builtins.BUILTIN_PLUGINS:
            name = module_name.rsplit(".", 1)[-1]
            try:
                with _time_limit(name):
                    module = importlib.import_module(module_name)
            except BaseException as exc:  # noqa: BLE001 -- e.g. a missing optional dependency
                self.plugins.append(PluginInfo(name, __version__, True, error=_one_line(exc)))
                continue
            self._add(name, module, __version__, builtin=True)
        if autoload is None:
            autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "").lower() in ("", "0", "false", "no")
        if autoload:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                version = ep.dist.version if ep.dist else "?"
                try:
                    with _time_limit(ep.name):
                        module = ep.load()
                except BaseException as exc:  # noqa: BLE001 -- sys.exit included: styletx goes on
                    self.plugins.append(PluginInfo(ep.name, version, False, error=_one_line(exc)))
                    continue
                self._add(ep.name, module, version, builtin=False)
        return self

    def _add(self, name: str, module: Any, version: str, builtin: bool) -> None:
        info = PluginInfo(name, version, builtin)
        self.plugins.append(info)
        try:
            self.manager.register(module, name=name)
            self.manager.check_pending()  # a misspelled hook name is an error, not a no-op
        except BaseException as exc:  # noqa: BLE001 -- a broken plugin is reported, not fatal
            info.error = _one_line(exc)
            if self.manager.is_registered(module):
                self.manager.unregister(module)
            return
        staged: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
        try:
            for kind in KINDS:
                for impl in getattr(self.manager.hook, f"register_{kind}").get_hookimpls():
                    if impl.plugin is module:
                        impl.function(register=self._stager(kind, staged[kind]))
        except BaseException as exc:  # noqa: BLE001 -- a broken plugin is reported, not fatal
            info.error = _one_line(exc)
            self.manager.unregister(module)
            return
        if not any(staged.values()):
            info.error = ("registers nothing (hooks must be named register_domains, "
                          "register_encoders or register_translators and use @styletx.hookimpl)")
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
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise TypeError(f"register_{kind} got {cls!r}, not a {base.__name__} subclass")
            name = getattr(cls, "name", None)
            if not name:
                raise TypeError(f"{cls.__name__} has no name")
            if inspect.isabstract(cls):
                missing = ", ".join(sorted(cls.__abstractmethods__))
                raise TypeError(f"{cls.__name__} does not implement {missing}")
            if name in table or name in staged:
                owner = self._owner(kind, name) or "this plugin"
                raise ValueError(f'{kind[:-1]} "{name}" is already registered by {owner}')
            staged[name] = cls

        return register

    def _owner(self, kind: str, name: str) -> str | None:
        for p in self.plugins:
            if name in p.registers.get(kind, []):
                return f'plugin "{p.name}"'
        return None

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
            raise UsageError(f"unknown {kind[:-1]} {name!r} for {option} (available: {known})")
        return table[name]

    def domain_for(self, path_suffixes: set[str]) -> Domain | None:
        """The domain that reads the most of these file suffixes, if any."""
        best, best_count = None, 0
        for cls in self.domains.values():
            count = len(path_suffixes & set(cls.extensions))
            if count > best_count:
                best, best_count = cls, count
        return best() if best else None


class _ImportTimeout(BaseException):  # not an Exception: the plugin's own handlers miss it
    pass


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


def reset_registry() -> None:
    """Forget the loaded plugins (tests, and after installing a plugin at run time)."""
    global _registry
    _registry = None
