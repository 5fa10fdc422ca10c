"""Hook specifications. A plugin implements any of these with ``@styletx.hookimpl``."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("styletx")
hookimpl = pluggy.HookimplMarker("styletx")


@hookspec
def register_domains(register: Callable) -> None:
    """Register Domain subclasses: ``register(MyDomain)``."""


@hookspec
def register_encoders(register: Callable) -> None:
    """Register Encoder subclasses: ``register(MyEncoder)``."""


@hookspec
def register_translators(register: Callable) -> None:
    """Register Translator subclasses: ``register(MyTranslator)``."""
