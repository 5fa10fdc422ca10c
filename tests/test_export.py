"""styletx export: ONNX and TorchScript files that translate like `styletx convert`, at sizes
they were not captured at, and no file at all when something is wrong."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import TINY

from styletx.audio.synth import write_voice_folders
from styletx.engine import export as export_module
from styletx.engine.apply import pad_bottom_right
from styletx.engine.convert import load_run
from styletx.engine.export import TOLERANCE

SMALL = ("--set", "ngf=4", "--set", "ndf=4")
# torch.jit.trace and torch.jit.load warn that TorchScript is deprecated; exporting it is the point
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run as fast on one thread, and a shared 2-core machine stays usable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(trained_run, scenes, tmp_path_factory):
    """Tiny runs of every built-in model, two training steps each (the weights need not be
    good, only the same in both places); the cyclegan one is conftest's."""
    from click.testing import CliRunner

    from styletx.cli import cli

    def train(a, b, out, *args, small=SMALL):
        args = ["-q", "train", a, b, "--out", out, *TINY, *small, "--steps", "2", *args]
        result = CliRunner().invoke(cli, [str(arg) for arg in args])
        assert result.exit_code == 0, result.output
        return out

    root = tmp_path_factory.mktemp("export")
    voices = write_voice_folders(root / "voices", n_train=2, n_test=1, seconds=1.0)
    out = {"cyclegan": trained_run, "voices": voices}
    for model in ("pix2pix", "vaegan"):
        out[model] = train(scenes["a"], scenes["b"], root / model, "--model", model,
                           "--size", "16")
    out["voice"] = train(voices["a"], voices["b"], root / "voice", "--model", "cyclegan",
                         "--size", "32", "--batch-size", "2", "--set", "smooth_frames=3",
                         "--set", "post_filter_epochs=2", "--set", "match_k=2")  # exported too
    out["match"] = train(voices["a"], voices["b"], root / "match", "--model", "match", small=())
    return out


def run_exported(path, fmt, x: torch.Tensor) -> torch.Tensor:
    if fmt == "torchscript":
        return torch.jit.load(str(path))(x)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["output"], {"input": x.numpy()})[0])


def utterance(run, voices, side: str) -> torch.Tensor:
    """A real utterance of ``side`` encoded, cut to 67 frames (not a multiple of 4)."""
    sample = run.domain.load(sorted(voices[side].glob("*.flac"))[0])
    x = run.encoders[side].encode(sample)[None, ..., :67]
    assert x.shape[-1] == 67
    return x


# name, format, direction: every model (the voice one in ONNX below), both directions. ONNX
# export takes seconds even for tiny models, TorchScript a fraction of one.
CASES = [("cyclegan", "onnx", "a2b"), ("cyclegan", "torchscript", "b2a"),
         ("pix2pix", "torchscript", "a2b"), ("vaegan", "torchscript", "b2a"),
         ("voice", "torchscript", "b2a"), ("match", "torchscript", "a2b"),
         ("match", "onnx", "b2a")]


@pytest.mark.parametrize(("name", "fmt", "direction"), CASES)
def test_export_translates_like_convert_at_a_size_it_never_saw(styletx, runs, scenes, tmp_path,
                                                               name, fmt, direction):
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"model.{fmt}"
    result = styletx("export", runs[name], "-d", direction, "--format", fmt, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "checked on random inputs" in result.stdout and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left

    run = load_run(runs[name], device="cpu")
    source = direction[0]
    if name in ("voice", "match"):
        x = utterance(run, runs["voices"], source)
        if name == "match":  # by default a path search: exported as a loop (any length)
            assert run.translator._matching(direction).join > 0
    else:  # a real scene cut to 23 x 37: export captured 37 x 45, checked 29 x 53 and 45 x 30
        sample = run.domain.load(sorted(scenes["test_" + source].glob("*.png"))[0])
        x = run.encoders[source].encode(sample)[None, :, :23, :37]
    x = torch.cat([x, x.flip(-1)])  # a batch of 2
    expected = run.convert_tensor(x, direction)
    got = run_exported(out, fmt, x)
    assert got.shape == expected.shape and expected.shape[-2:] == x.shape[-2:]
    assert (got - expected).abs().max().item() <= TOLERANCE

    if fmt == "torchscript":  # a device traced in as a constant (arange) failed on a GPU
        module = torch.jit.load(str(out))
        assert not [name for name, sub in module.named_modules()
                    if "torch.device(" in getattr(sub, "code", "")]

    # the file says what it takes and where it came from; the command names the step
    metadata = exported_metadata(out, fmt)
    assert metadata["direction"] == direction and metadata["step"] == run.step > 0
    assert metadata["translator"] == run.config.translator == run.translator.name
    assert metadata["input"] == {"side": source, **run.config.encoders[source]}
    assert metadata["output"]["name"] == run.encoders[direction[-1]].name
    assert f"({run.translator.name}, step {run.step}) to {out}" in result.stdout


def exported_metadata(path, fmt) -> dict:
    """export_metadata as read back from the file (ONNX: strings, JSON where structured)."""
    if fmt == "torchscript":
        extra = {"styletx.json": ""}
        torch.jit.load(str(path), _extra_files=extra)
        return json.loads(extra["styletx.json"])
    import onnx

    props = {p.key.removeprefix("styletx."): p.value for p in onnx.load(str(path)).metadata_props}
    return {key: value if key in ("version", "translator", "preset", "direction", "layout")
            else json.loads(value) for key, value in props.items()}


def test_onnx_export_from_python_keeps_the_users_info_log_quiet(runs, tmp_path, caplog):
    """Under a user's ``logging.basicConfig(level=INFO)`` the exporter's libraries logged some
    35 lines of their rewrites ("Replaced initializer ..."); only styletx's own lines remain."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import logging

    caplog.set_level(logging.INFO)
    report = export_module.export(runs["cyclegan"], "a2b", "onnx", tmp_path / "model.onnx")
    assert report.verified
    assert [r.name for r in caplog.records if not r.name.startswith("styletx")] == []


def test_voice_export_with_griffin_lim_writes_what_convert_writes(styletx, runs, tmp_path):
    """The README's recipe: the run's encoder, the exported model (ONNX), the run's decoder
    (Griffin-Lim), a wav; the same tensor and the same sound as `styletx convert`."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import onnxruntime

    model = tmp_path / "voice.onnx"
    assert styletx("export", runs["voice"], "-o", model).exit_code == 0
    source = sorted(runs["voices"]["test_a"].glob("*.flac"))[0]
    assert styletx("convert", runs["voice"], source, "-o", tmp_path / "cli").exit_code == 0

    run = load_run(runs["voice"], device="cpu")
    assert run.translator.P_A.net.out.weight.abs().sum() > 0  # fitted after training, saved
    assert len(run.translator.M_A.bank) > 0  # the matching set too, and exported with it
    sample = run.domain.load(source)
    x = run.encoders["a"].encode(sample)[None]  # (1, 1, 128, frames) normalised log-mel
    assert x.shape[-1] % 4  # 87 frames: the generator pads them
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    y = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    assert (y - run.convert_tensor(x)).abs().max().item() <= TOLERANCE
    mine = tmp_path / f"mine{source.suffix}"  # convert keeps the container (16-bit FLAC)
    run.domain.save(run.encoders["b"].decode(y[0], like=sample), mine)

    mine, rate = sf.read(mine, dtype="float32")
    theirs, rate_cli = sf.read(tmp_path / "cli" / source.name, dtype="float32")
    assert rate == rate_cli and mine.shape == theirs.shape and np.abs(theirs).max() > 0.01
    # The exported model's tensor differs from PyTorch's within TOLERANCE; the decoder's
    # loudness matching (a gain from the whole output) carries that into every sample, so the
    # waves agree to a signal-to-difference ratio, not to the last bit.
    snr = 10 * np.log10(np.mean(theirs**2) / max(np.mean((mine - theirs) ** 2), 1e-20))
    assert snr >= 40, snr


# -- errors: one line, the right exit code, no file -------------------------------------------
@pytest.mark.parametrize(("args", "code", "message"), [
    (("nowhere",), 2, "no such run folder"),
    (("{cyclegan}", "-d", "sideways"), 2, "'sideways' is not one of 'a2b', 'b2a'"),
    (("{pix2pix}", "-d", "b2a"), 2, "trained for a2b only, not b2a"),
    (("{cyclegan}", "--format", "tflite"), 2, "'tflite' is not one of 'onnx', 'torchscript'"),
    (("{cyclegan}", "--format", "torchscript"), 2, "a .onnx file is onnx, not torchscript"),
    # --set: only what changes the conversion, of the right type, that the saved model allows
    (("{vaegan}", "--set", "match_k=2"), 2, "not a setting the vaegan model can change when "
                                            "converting (the others are fixed when it is "
                                            "trained); it has none"),
    (("{voice}", "--set", "ngf=8"), 2, "those it can: match_k, match_context, match_join, "
                                        "smooth_frames"),
    (("{voice}", "--set", "match_k=two"), 2, "--set match_k='two': cyclegan expects int"),
    (("{voice}", "--set", "match_k=9999"), 2, "matching set for one direction has"),
    (("{match}", "--set", "match_context=100000"), 2, "match_context must be from 0 to 32"),
    (("{cyclegan}", "--set", "match_k=2"), 2, "frame matching (match_k) is for voice runs"),
    (("{cyclegan}", "--set", "smooth_frames=3"), 2, "smooth_frames is for voice runs"),
])
def test_bad_arguments(styletx, runs, tmp_path, args, code, message):
    args = [str(a).format(**{k: v for k, v in runs.items() if k != "voices"}) for a in args]
    result = styletx("export", *args, "-o", tmp_path / "model.onnx")
    assert result.exit_code == code, result.stderr
    assert result.error_lines == [result.stderr.strip()] and message in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "setting", "fmt"), [
    ("match", {"match_join": 0.0}, "torchscript"), ("voice", {"match_join": 1.0}, "onnx"),
    ("voice", {"smooth_frames": 1}, "torchscript")])
def test_export_set_exports_the_conversion_with_that_setting(styletx, runs, tmp_path, name,
                                                             setting, fmt):
    """--set changes what is exported as it changes what convert does (here: the mean of the
    nearest frames where the match run searches a path by default, and the path where the
    voice CycleGAN's run averages), and leaves the run as it was."""
    if fmt == "onnx":
        pytest.importorskip("onnxscript")
        pytest.importorskip("onnxruntime")
    (key, value), = setting.items()
    saved = (runs[name] / "config.json").read_text()
    out = tmp_path / f"model.{fmt}"
    result = styletx("export", runs[name], "--format", fmt, "-o", out, "--set",
                     f"{key}={value:g}")
    assert result.exit_code == 0, result.stderr
    assert (runs[name] / "config.json").read_text() == saved
    run, plain = (load_run(runs[name], device="cpu", settings=s) for s in (setting, None))
    assert run.translator.config.__dict__[key] == value != plain.translator.config.__dict__[key]
    x = utterance(run, runs["voices"], "a")
    expected = run.convert_tensor(x)
    assert (run_exported(out, fmt, x) - expected).abs().max() <= TOLERANCE
    assert (plain.convert_tensor(x) - expected).abs().max() > 10 * TOLERANCE


def test_opset_writes_that_opset_or_refuses(styletx, runs, tmp_path):
    """--opset 18 writes an opset-18 file that is checked as any export; below 18 torch's
    exporter falls back to 18 with a warning, which would hand a runtime that needs 17 a
    file it cannot load: refused instead, nothing written. TorchScript has no opset."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import onnx

    out = tmp_path / "m.onnx"
    result = styletx("export", runs["cyclegan"], "-o", out, "--opset", "18")
    assert result.exit_code == 0 and "largest difference from PyTorch" in result.stdout
    assert [o.version for o in onnx.load(out).opset_import if o.domain in ("", "ai.onnx")] \
        == [18]
    refused = styletx("export", runs["cyclegan"], "-o", tmp_path / "old.onnx", "--opset", "17")
    assert refused.exit_code == 1 and refused.error_lines == [
        "Error: --opset 17: torch's ONNX exporter cannot write this model at opset 17 (it "
        "wrote opset 18 instead)"]
    script = styletx("export", runs["cyclegan"], "-o", tmp_path / "m.pt", "--opset", "18")
    assert script.exit_code == 2
    assert script.error_lines == ["Error: --opset is for ONNX files, not torchscript"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_missing_onnx_packages_are_named(styletx, runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript fails
    result = styletx("export", runs["cyclegan"], "-o", tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert "needs the onnx and onnxscript packages" in result.error_lines[0]
    assert "pip install 'styletx[export]'" in result.error_lines[0]
    assert list(tmp_path.iterdir()) == []


def test_without_onnxruntime_the_file_is_kept_but_said_to_be_unverified(styletx, runs,
                                                                          tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    # the ONNX writing itself is tested above; a stand-in keeps this test fast
    monkeypatch.setattr(export_module, "_write_onnx",
                        lambda model, example, dynamic, path, metadata, **options:
                        path.write_bytes(b"onnx"))
    result = styletx("export", runs["pix2pix"], "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.stderr
    assert "NOT verified: onnxruntime is not installed" in result.stderr
    assert (tmp_path / "m.onnx").read_bytes() == b"onnx"


def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_replaced(
        styletx, runs, tmp_path, monkeypatch):
    """A module that is off by 0.01 (a stand-in for a wrong padding): exit 1, the old file
    untouched, no temporary file."""
    from styletx.plugins.cyclegan import CycleGAN

    real = CycleGAN.export_module

    class Off(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x) + 0.01

    monkeypatch.setattr(CycleGAN, "export_module", lambda self, d: Off(real(self, d)))
    out = tmp_path / "model.pt"
    out.write_bytes(b"the previous export")
    result = styletx("export", runs["cyclegan"], "--format", "torchscript", "-o", out)
    assert result.exit_code == 1
    assert "differs from PyTorch by up to 0.01" in result.error_lines[0]
    assert f"(tolerance {TOLERANCE:g})" in result.error_lines[0]
    assert out.read_bytes() == b"the previous export"
    assert list(tmp_path.iterdir()) == [out]


def test_format_follows_the_file_name(styletx, runs, tmp_path):
    """Without --format, .pt is TorchScript (loadable by torch.jit.load); an explicit format
    may name a file of no known suffix."""
    out = tmp_path / "model.pt"
    result = styletx("export", runs["cyclegan"], "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "(torchscript," in result.stdout
    y = torch.jit.load(str(out))(torch.rand(1, 3, 20, 24) * 2 - 1)
    assert not y.requires_grad  # y.numpy() works outside torch.no_grad()
    run = load_run(runs["cyclegan"], device="cpu")  # the API leaves the run's parameters
    export_module.export(run, "a2b", "torchscript", tmp_path / "api.pt")  # trainable
    assert all(p.requires_grad for p in run.translator.G_A.parameters())
    named = export_module.export(run, "a2b", None, tmp_path / "named.pt")  # as the CLI does
    assert named.format == "torchscript"
    other = tmp_path / "model.bin"
    result = styletx("export", runs["cyclegan"], "--format", "torchscript", "-o", other)
    assert result.exit_code == 0, result.stderr
    torch.jit.load(str(other))


def test_output_folder_is_refused(styletx, runs, tmp_path):
    result = styletx("export", runs["cyclegan"], "--format", "torchscript", "-o", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.error_lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_the_run_is_not_replaced(styletx, runs, tmp_path):
    """-o RUN/model.safetensors had replaced the weights (convert then fell back to the
    previous checkpoint) and -o RUN/config.json left the run unloadable, with exit 0. A new
    name in the run folder is fine, and so is replacing that export again."""
    run = tmp_path / "run"
    shutil.copytree(runs["cyclegan"], run)
    for name in ("model.safetensors", "config.json", "resume.pt"):
        before = (run / name).read_bytes()
        result = styletx("export", run, "--format", "torchscript", "-o", run / name)
        assert result.exit_code == 2, result.stderr
        assert result.error_lines[-1] == (f"Error: -o {run / name} is a file of the run {run}, "
                                          "which the export would replace; give another name")
        assert (run / name).read_bytes() == before
    first, again = (styletx("export", run, "-o", run / "a2b.pt") for _ in range(2))
    assert first.exit_code == again.exit_code == 0
    assert "replaced" not in first.stdout and "; it replaced the file there)" in again.stdout
    config = json.loads((run / "config.json").read_text())  # exported part-way: says so
    config["train"]["steps"] = config["step"] + 6
    (run / "config.json").write_text(json.dumps(config))
    partway = styletx("export", run, "-o", tmp_path / "partway.pt")
    assert f"(cyclegan, step {config['step']} of {config['step'] + 6}) to " in partway.stdout
    torch.jit.load(str(run / "a2b.pt"))


# -- the export-friendly padding --------------------------------------------------------------
def _reference_pad(x, multiple, least, mode, joint):
    """What conversion and the plugins' forwards do with F.pad and Python branches."""
    h, w = x.shape[-2:]
    pad_h, pad_w = max(-h % multiple, least - h), max(-w % multiple, least - w)
    if joint:  # Run.convert_tensor: both reflect, or both replicate
        reflect = mode == "reflect" and pad_h < h and pad_w < w
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if reflect else "replicate")
    for pad, size, spec in ((pad_w, w, (0, pad_w, 0, 0)), (pad_h, h, (0, 0, 0, pad_h))):
        if pad:
            x = F.pad(x, spec, mode="reflect" if mode == "reflect" and pad < size else "replicate")
    return x


@pytest.mark.parametrize(("multiple", "least", "mode", "joint"), [
    (4, 8, "reflect", True), (1, 2, "reflect", True), (16, 0, "reflect", False),
    (4, 8, "reflect", False), (4, 8, "replicate", False)])
def test_padding_is_f_pad_and_stays_dynamic_when_traced(multiple, least, mode, joint):
    def pad(x):
        return pad_bottom_right(x, multiple, least, mode, joint)

    traced = torch.jit.trace(pad, torch.zeros(1, 2, 37, 45))  # any size; nothing is baked in
    for h in (1, 2, 3, 4, 5, 7, 8, 9, 17):
        for w in (1, 3, 4, 6, 8, 15, 33):
            x = torch.randn(1, 2, h, w)
            expected = _reference_pad(x, multiple, least, mode, joint)
            assert torch.equal(pad(x), expected), (h, w)
            assert torch.equal(traced(x), expected), (h, w)


def test_translators_without_an_export_module_say_so():
    from styletx.contract.errors import UsageError
    from styletx.contract.interfaces import Translator

    class Plain(Translator):
        name = "plain"
        networks = configure_optimizers = training_step = translate = None

    with pytest.raises(UsageError, match="the plain model cannot be exported"):
        Plain(None, 1, 1).export_module("a2b")


def test_the_help_states_the_tolerance(styletx):
    assert TOLERANCE == 1e-3
    assert "exceeds 1e-3" in " ".join(styletx("export", "-h").stdout.split())
