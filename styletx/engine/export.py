"""Export a run's generator for one direction as ONNX or TorchScript: the API behind
``styletx export``.

    report = export("runs/s2w", "a2b", "onnx", "s2w.onnx")
    report.max_abs_diff         # the largest |exported - PyTorch| seen in the check

The exported graph maps the tensor the source side's encoder produces, ``(N, C, H, W)`` float32
(images: pixels in [-1, 1]; voices: the normalised log spectrogram), to the translated tensor of
the same H and W, exactly as ``styletx convert`` translates one tensor: padded to the network's
multiple and cropped back (``Run.convert_tensor`` without the chunking of long recordings). N,
H and W are dynamic; on domains whose tensors have a fixed height (audio: every frequency bin)
H is fixed to the run's.

How: ``Translator.export_module(direction)`` gives the direction's networks as a plain module,
written with no Python branch on the input's size (the padding is integer arithmetic and
gathers, ``styletx.engine.apply.pad_bottom_right``), so one captured graph serves every size.
ONNX goes through ``torch.onnx.export(..., dynamo=True)`` (torch.export; needs the ``onnx``
and ``onnxscript`` packages); the legacy TorchScript-based ONNX exporter is deprecated in
torch 2.13 and not used.
TorchScript is ``torch.jit.trace`` of the same module (itself deprecated by PyTorch in favour of
torch.export, but still loadable with ``torch.jit.load`` in Python and LibTorch).

Every export is checked before it is kept: it is written to a temporary file beside the output,
loaded back and run on random inputs of two sizes that differ from the one it was captured with
(and are not multiples of the network's), and compared with PyTorch's translation. Above
``TOLERANCE`` the file is removed and ``StyletxError`` raised; an ONNX file is kept unverified,
and the report says so, only when ``onnxruntime`` is not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from styletx.contract.errors import StyletxError, UsageError
from styletx.contract.files import atomic_path, remove_stale_temporaries
from styletx.contract.interfaces import direction_sides
from styletx.engine.apply import PadCrop

FORMATS = ("onnx", "torchscript")
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".ts": "torchscript",
            ".torchscript": "torchscript"}  # the formats' usual file names
# Largest |exported - PyTorch| accepted, on tensors in the encoders' units: [-1, 1] for images,
# where one 8-bit level is 2/255 = 0.0078, and standard deviations of a normalised log
# spectrogram for voices. Exports agree far closer (measured on the default networks: at most
# 1.1e-5 with ONNX Runtime, 0 with TorchScript); a wrong padding differs by 0.1 or more.
TOLERANCE = 1e-3
INPUT, OUTPUT = "input", "output"  # the ONNX graph's input and output names
METADATA_FILE = "styletx.json"  # a TorchScript file's extra file: export_metadata
CAPTURE_SIZE = (2, 37, 45)  # (N, H, W) of the example the graph is captured with
CHECK_SIZES = ((1, 29, 53), (3, 45, 30))  # (N, H, W) of the two checks; H is the run's when fixed


# -- the export ------------------------------------------------------------------------------
@dataclasses.dataclass
class ExportReport:
    """What ``export`` wrote and how it compared with PyTorch."""

    path: Path
    format: str
    direction: str
    translator: str
    tolerance: float
    checks: list[tuple[tuple[int, ...], float]]  # (input shape, max |exported - PyTorch|)
    verified: bool  # False only for ONNX without onnxruntime: written, not checked
    size_bytes: int = 0
    step: int = 0  # the run's step that was exported

    @property
    def max_abs_diff(self) -> float | None:
        return max(diff for _, diff in self.checks) if self.checks else None


def format_for(out: Path | str, fmt: str | None, opset: int | None = None) -> str:
    """The format to write ``out`` in: ``fmt`` where given, else the one its suffix names
    (ONNX for any other). A ``fmt`` that contradicts the suffix is a ``UsageError``: a
    TorchScript file named .onnx (or the reverse) would fail in whatever loads it by its name;
    so is an ``opset`` for another format than ONNX."""
    named = SUFFIXES.get(Path(out).suffix.lower())
    if fmt is None:
        fmt = named or FORMATS[0]
    elif named is not None and named != fmt:
        raise UsageError(f"-o {out}: a {Path(out).suffix} file is {named}, not {fmt}; name it "
                         f"for the format or leave out --format")
    if opset is not None and fmt != "onnx":
        raise UsageError(f"--opset is for ONNX files, not {fmt}")
    return fmt


def export_model(run, direction: str) -> nn.Module:
    """The module that is exported: the translator's ``export_module(direction)`` behind the
    padding ``Run.convert_tensor`` applies (to the network's multiple, at least two of them),
    in evaluation mode. Shares the run's parameters."""
    m = run.translator.size_multiple
    model = PadCrop(run.translator.export_module(direction), m, 2 * m, joint=True)
    return model.eval()


def export(run, direction: str, fmt: str | None, out: Path | str,
           tolerance: float | None = None, registry=None,
           opset: int | None = None) -> ExportReport:
    """Export ``run``'s (a run folder, or a ``Run`` from ``load_run``) generator for
    ``direction`` ("a2b" or "b2a") as ``fmt`` ("onnx" or "torchscript"; None: as ``out``'s
    suffix says, ``format_for``) to ``out``, check it
    against PyTorch (see the module docstring) and return the report. ``opset``: the ONNX
    opset to write (None: the exporter's default); one the exporter cannot write is refused.

    Raises ``UsageError`` for a bad format, direction or output path (nothing is written) and
    ``StyletxError`` when the ONNX packages are missing, the export fails or it differs from
    PyTorch by more than ``tolerance`` (default ``TOLERANCE``); then ``out`` is left as it was.
    The export runs on the CPU in evaluation mode: a ``Run`` on another device is moved there
    (and one loaded with ``keep_dropout`` loses it). ``registry``: the plugin registry to load
    a run folder with (default: the process-wide one)."""
    from styletx.engine.convert import Run, load_run

    tolerance = TOLERANCE if tolerance is None else tolerance
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use {' or '.join(FORMATS)}")
    source, _ = direction_sides(direction)
    out = Path(out)
    fmt = format_for(out, fmt, opset)  # refuses a contradicting suffix, a misplaced opset
    if out.is_dir():
        raise UsageError(f"-o {out} is a folder; give the file to write")
    _refuse_a_file_of_the_run(run.path if isinstance(run, Run) else Path(run), out)
    if not isinstance(run, Run):
        run = load_run(run, device="cpu", registry=registry)
    elif run.device.type != "cpu":
        run.translator.to("cpu")
        run.device = torch.device("cpu")
    model = export_model(run, direction)  # usage errors (a direction not trained) first
    if fmt == "onnx":
        _require_onnx_exporter()
    example = _Examples(run.translator.channels[source], _fixed_height(run, source))
    remove_stale_temporaries(out.parent, of=[out])  # an export killed mid-write left its own
    with atomic_path(out) as tmp:
        _write(fmt, model, example, tmp, run.translator.name, export_metadata(run, direction),
               opset)
        try:
            runner = _load(fmt, tmp)
        except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types
            raise StyletxError(f"the exported file cannot be loaded: {_first_line(exc)}; "
                               f"nothing was written") from exc
        checks = [_check(runner, run, direction, example(*size, seed=seed), tolerance)
                  for seed, size in enumerate(CHECK_SIZES if runner else (), start=1)]
        size = tmp.stat().st_size
    return ExportReport(out, fmt, direction, run.translator.name, tolerance, checks,
                        verified=runner is not None, size_bytes=size, step=run.step)


def export_metadata(run, direction: str) -> dict[str, Any]:
    """What an exported file says of itself (ONNX: ``metadata_props``, each key prefixed
    ``styletx.`` and each value a string, JSON where structured; TorchScript: the extra file
    ``styletx.json``): the run it came from, and the encoders whose tensors it takes and
    returns (an app must make its input as the source side's encoder does)."""
    from styletx import __version__

    source, target = direction_sides(direction)
    config = run.config
    return {"version": __version__, "translator": config.translator, "preset": config.preset,
            "direction": direction, "step": run.step, "settings": config.config,
            "input": {"side": source, **config.encoders[source]},
            "output": {"side": target, **config.encoders[target]},
            "layout": "float32 (batch, channels, height, width)"}


def _refuse_a_file_of_the_run(run: Path, out: Path) -> None:
    """``-o`` naming one of the run folder's own files (its weights, config, checkpoint, log)
    replaced it, which left the run unloadable or rolled it back to its previous checkpoint.
    A new name in the folder is fine, and so is replacing an earlier export there: an ONNX
    file, or a TorchScript archive (a zip holding code/, which torch.save's resume.pt does
    not)."""
    try:
        out.resolve().relative_to(run.resolve())
    except ValueError:
        return
    if not out.exists() or out.suffix.lower() == ".onnx" or _is_torchscript(out):
        return
    raise UsageError(f"-o {out} is a file of the run {run}, which the export would replace; "
                     "give another name")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in f"/{name}" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class _Examples:
    """Inputs uniform in [-1, 1] from a fixed seed; the height is the run's where it is
    fixed (audio: every frequency bin)."""

    def __init__(self, channels: int, height: int | None):
        self.channels, self.height = channels, height

    def __call__(self, n: int, h: int, w: int, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.rand((n, self.channels, self.height or h, w), generator=generator) * 2 - 1


def _write(fmt: str, model: nn.Module, example: _Examples, tmp: Path, name: str,
           metadata: dict[str, Any], opset: int | None) -> None:
    options = {"opset": opset} if fmt == "onnx" else {}
    write = _write_onnx if fmt == "onnx" else _write_torchscript
    try:
        with _quiet(), torch.no_grad():
            write(model, example(*CAPTURE_SIZE, seed=0), example.height is None, tmp, metadata,
                  **options)
    except (OSError, StyletxError):
        raise  # writing the file failed (atomic_path says so), or said what went wrong
    except Exception as exc:  # torch.export and tracing fail in many ways; one line
        raise StyletxError(f"{fmt} export of the {name} model failed: "
                           f"{_first_line(exc)}") from exc


def _check(runner: Callable[[torch.Tensor], torch.Tensor], run, direction: str,
           x: torch.Tensor, tolerance: float) -> tuple[tuple[int, ...], float]:
    """(input shape, largest difference) of the exported model against what convert does to
    one tensor (pad, translate, crop, without the chunking); a StyletxError beyond
    ``tolerance``."""
    expected = run._convert_whole(x, direction)
    try:
        got = runner(x)
    except Exception as exc:  # noqa: BLE001 -- onnxruntime raises its own types
        raise StyletxError(f"the exported model failed on input {tuple(x.shape)}: "
                           f"{_first_line(exc)}; nothing was written") from exc
    if got.shape != expected.shape:
        raise StyletxError(f"the exported model gave shape {tuple(got.shape)} for input "
                           f"{tuple(x.shape)}, PyTorch {tuple(expected.shape)}; "
                           f"nothing was written")
    diff = (got - expected).abs().max().item()
    if not diff <= tolerance:  # NaN fails too
        raise StyletxError(f"the exported model differs from PyTorch by up to "
                           f"{diff:.3g} (tolerance {tolerance:g}) on input "
                           f"{tuple(x.shape)}; nothing was written")
    return tuple(x.shape), diff


def _fixed_height(run, side: str) -> int | None:
    """The tensors' height when the domain fixes it (audio: the bins), else None."""
    if run.domain.training_crop(1)[0] is not None:
        return None
    height = run.config.encoded_height(side)
    if height is None:
        raise StyletxError(f"{run.path}: the run records no example shape (config.json "
                           "\"shapes\"); train it with this version of styletx")
    return height


def _require_onnx_exporter() -> None:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise StyletxError(f"--format onnx needs the onnx and onnxscript packages ({exc}); "
                           "install them with: pip install 'styletx[export]'") from None


def _write_onnx(model: nn.Module, example: torch.Tensor, dynamic_height: bool,
                path: Path, metadata: dict[str, Any], opset: int | None = None) -> None:
    """torch.export with every size dynamic (Dim.DYNAMIC), then ONNX. The ONNX exporter's own
    named dynamic axes are not used: with them, ONNX Runtime failed on sizes such as 8 x 16
    (wrong intermediate shapes); the input's and output's axes are renamed afterwards."""
    from torch.export import Dim

    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_height else {0: "batch", 3: "width"}
    program = torch.export.export(model, (example,),
                                  dynamic_shapes=({axis: Dim.DYNAMIC for axis in axes},))
    proto = torch.onnx.export(program, f=None, dynamo=True, verbose=False,
                              input_names=[INPUT], output_names=[OUTPUT],
                              **({} if opset is None else {"opset_version": opset})).model_proto
    _check_opset(proto, opset)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[axis].dim_param: name for axis, name in axes.items() if dims[axis].dim_param}
    for value in (*proto.graph.input, *proto.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:  # (assigning "" would clear a fixed size)
                dim.dim_param = names[dim.dim_param]
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = f"styletx.{key}", value if isinstance(value, str) else json.dumps(
            value)
    # one file, weights inside (models under 2 GB), written by Python: a failed write is an
    # OSError (see _write_torchscript)
    path.write_bytes(proto.SerializeToString())


def _check_opset(proto: Any, asked: int | None) -> None:
    """The exporter writes its lowest opset (18) when it cannot convert to the one asked for
    (it only warns), so the file's opset is compared with the request."""
    wrote = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if asked is not None and wrote != asked:
        raise StyletxError(f"--opset {asked}: torch's ONNX exporter cannot write this model at "
                           f"opset {asked} (it wrote opset {wrote} instead)")


def _write_torchscript(model: nn.Module, example: torch.Tensor, dynamic_height: bool,
                       path: Path, metadata: dict[str, Any]) -> None:
    buffer = io.BytesIO()  # torch.jit.save to a full disk aborts the process (C++ terminate)
    traced = torch.jit.trace(model, (example,), check_trace=False)
    # Saved as parameters needing no gradient, so that the file's outputs do not either (an
    # inference model: y.numpy() works without torch.no_grad()); the run's own parameters,
    # which the trace shares, get their flag back.
    training = [p for p in traced.parameters() if p.requires_grad]
    try:
        for p in training:
            p.requires_grad_(False)
        torch.jit.save(traced, buffer, _extra_files={METADATA_FILE: json.dumps(metadata)})
    finally:
        for p in training:
            p.requires_grad_(True)
    path.write_bytes(buffer.getvalue())


def _load(fmt: str, path: Path) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function running the written file, or None for ONNX without onnxruntime."""
    if fmt == "torchscript":
        with _quiet():
            module = torch.jit.load(str(path), map_location="cpu")

        def run_torchscript(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(x)

        return run_torchscript
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


# torch's exporter and the ONNX libraries it calls log every rewrite at INFO ("Replaced
# initializer 'val_21' ...": 35 lines under a user's logging.basicConfig(level=INFO))
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "onnx_ir", "onnxscript")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No deprecation, tracer or exporter chatter while exporting: the check is what counts."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
