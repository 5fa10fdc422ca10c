"""styletx: learn a style mapping between two folders of files and apply it.

Public API::

    import styletx
    run = styletx.load_run("runs/summer2winter")
    run.convert_files(["photo.jpg"], "out/")        # or run.convert_array(pixels)

Plugins subclass ``Domain``, ``Encoder`` and ``Translator`` and register them with
``@styletx.hookimpl`` functions (see docs/plugins.md).
"""

__version__ = "0.1.0"

from .errors import BadInputError, StyletxError, UsageError
from .hookspecs import hookimpl
from .interfaces import DIRECTIONS, Domain, Encoder, Preset, Translator

__all__ = [
    "DIRECTIONS",
    "BadInputError",
    "Domain",
    "Encoder",
    "Preset",
    "StyletxError",
    "Translator",
    "UsageError",
    "__version__",
    "hookimpl",
]
