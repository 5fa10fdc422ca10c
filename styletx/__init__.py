"""styletx: learn a style mapping between two folders of files and apply it.

    import styletx
    styletx.train("photos/summer", "photos/winter", "runs/summer2winter", preset="fast")
    run = styletx.load_run("runs/summer2winter")
    run.convert_files(["photo.jpg"], "out/")        # or run.convert_array(pixels)

The public API is what ``__all__`` names here, plus the libraries ``styletx.nn`` (network
blocks), ``styletx.image`` (the image sample, metrics, preview grids) and ``styletx.audio``
(the audio sample, DSP, voice metrics), each with its own ``__all__``, and the latent tools'
functions ``sample``, ``traverse`` and ``score`` in ``styletx.tools.latent``. Plugins subclass
``Domain``, ``Encoder`` and ``Translator`` and register them with ``@styletx.hookimpl``
functions (docs/plugins.md); the built-in plugins use nothing else. Everything under
``styletx.contract``, ``styletx.engine`` and ``styletx.tools`` not named here is internal.
"""

__version__ = "0.2.0"


import importlib

from styletx.contract.errors import BadInputError, StyletxError, UsageError, WriteError
from styletx.contract.hookspecs import hookimpl

# The rest loads on first use (PEP 562), so that `styletx --help` does not wait for torch.
_HOMES = {
    **dict.fromkeys(["DIRECTIONS", "SIDES", "Domain", "Encoder", "FolderSamples",
                     "LatentTranslator", "Preset", "Sample", "TrainingContext", "Translator",
                     "direction_sides"],
                    "styletx.contract.interfaces"),
    **dict.fromkeys(["PadCrop", "crop", "pad_bottom_right"], "styletx.engine.apply"),
    **dict.fromkeys(["Run", "load_run", "ConversionReport", "ConversionInterrupted"],
                    "styletx.engine.convert"),
    **dict.fromkeys(["evaluate", "Evaluation", "EvaluationInterrupted"],
                    "styletx.engine.evaluate"),
    "export": "styletx.engine.export",
    **dict.fromkeys(["TrainResult", "TrainSettings", "TrainingInterrupted", "train"],
                    "styletx.engine.training"),
    "set_threads": "styletx.engine.threads",
}


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'styletx' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    # the plugin contract
    "Domain", "Encoder", "Translator", "LatentTranslator", "Preset", "Sample", "TrainingContext",
    "FolderSamples", "hookimpl",
    "SIDES", "DIRECTIONS", "direction_sides",
    # errors a plugin raises (one line each for the user)
    "StyletxError", "UsageError", "BadInputError", "WriteError",
    # any-size networks for Translator.export_module
    "PadCrop", "pad_bottom_right", "crop",
    # training and conversion from Python
    "train", "TrainSettings", "TrainResult", "TrainingInterrupted", "load_run", "Run",
    "ConversionReport", "ConversionInterrupted", "evaluate", "Evaluation",
    "EvaluationInterrupted", "export", "set_threads",
    "__version__",
]
