"""styletx: learn a style mapping between two folders of files and apply it.

Public API::

    import styletx
    styletx.train("photos/summer", "photos/winter", "runs/summer2winter", preset="tiny")
    run = styletx.load_run("runs/summer2winter")
    run.convert_files(["photo.jpg"], "out/")        # or run.convert_array(pixels)

Plugins subclass ``Domain``, ``Encoder`` and ``Translator`` and register them with
``@styletx.hookimpl`` functions (see docs/plugins.md).
"""

__version__ = "0.1.0"


from styletx.contract.errors import BadInputError, StyletxError, UsageError
from styletx.contract.hookspecs import hookimpl
from styletx.contract.interfaces import (
    DIRECTIONS,
    Domain,
    Encoder,
    LatentTranslator,
    Preset,
    Translator,
)
from styletx.engine.convert import load_run  # noqa: E402
from styletx.engine.training import TrainSettings, train  # noqa: E402

__all__ = [
    "DIRECTIONS",
    "BadInputError",
    "Domain",
    "Encoder",
    "LatentTranslator",
    "Preset",
    "TrainSettings",
    "StyletxError",
    "Translator",
    "UsageError",
    "__version__",
    "hookimpl",
    "load_run",
    "train",
]
