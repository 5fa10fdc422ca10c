"""A third-party plugin's mistakes, as its author makes them: each is one line that names the
plugin (or what it broke) and exit 1, never a traceback; nothing it cannot load back is saved,
a failed new run leaves no folder, and a diverged run keeps its last good checkpoint."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import sys

import pytest
from conftest import TINY
from PIL import Image

import styletx.contract.registry as registry_module

# A tiny CycleGAN whose methods the cases below replace (``{body}``).
PLUGIN = """
import math
import torch
import styletx
from styletx.plugins.cyclegan import CycleGAN
from styletx.plugins.image import ImageDomain, RGBEncoder

class Faulty(CycleGAN):
    name = "faulty"
{body}

class FaultyEncoder(RGBEncoder):
    name = "faultyrgb"
{encoder_body}

class FaultyDomain(ImageDomain):
    name = "faultyimg"
    default_translator = "nosuchmodel"
{domain_body}

@styletx.hookimpl
def register_translators(register):
    register(Faulty)

@styletx.hookimpl
def register_domains(register):
    register(FaultyDomain)

@styletx.hookimpl
def register_encoders(register):
    register(FaultyEncoder)
"""

CASES = {
    "raises": """
    def training_step(self, batch, step):
        if step == 1:
            raise ValueError("the author's bug")
        return super().training_step(batch, step)
""",
    "raiseslater": """
    def training_step(self, batch, step):
        if step == 5:
            raise ValueError("the author's bug")
        return super().training_step(batch, step)
""",
    "exits": """
    def training_step(self, batch, step):
        if step == 5:
            import sys
            sys.exit(5)
        return super().training_step(batch, step)
""",
    "interrupts": """
    def training_step(self, batch, step):
        if step == 5:
            raise KeyboardInterrupt
        return super().training_step(batch, step)
""",
    "raisesafterupdating": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        if step == 5:
            raise ValueError("the author's bug")
        return losses
""",
    "signalledwhilesaving": """
    failed = False

    def training_step(self, batch, step):
        if step == 5:
            self.failed = True
            raise ValueError("the author's bug")
        return super().training_step(batch, step)

    def extra_state(self):  # saving the steps trained before the bug: a kill arrives
        if self.failed:
            import os, signal
            os.kill(os.getpid(), signal.SIGTERM)
        return super().extra_state()
""",
    "nantranslate": """
    def translate(self, x, direction):
        y = super().translate(x, direction)
        return y * float("nan") if x.shape[-1] < 32 else y  # training crops and small files
""",
    "tensorloss": """
    def training_step(self, batch, step):
        super().training_step(batch, step)
        return torch.tensor(1.0)
""",
    "steppedtwice": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        self.schedulers["G"].step()
        return losses
""",
    "nanlater": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        return {**losses, "G_A": math.nan} if step >= 4 else losses
""",
    "nanalways": """
    def training_step(self, batch, step):
        return {**super().training_step(batch, step), "D_A": math.inf}
""",
    "nanonce": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        return {**losses, "G_A": math.nan} if step == 3 else losses
""",
    "poisonedonsave": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        if step == 3:
            with torch.no_grad():
                next(self.G_A.parameters()).fill_(math.nan)
        return losses
""",
    "poisoned": """
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        if step == 2:
            with torch.no_grad():
                next(self.G_A.parameters()).fill_(math.nan)
        return losses
""",
    "objectstate": """
    def extra_state(self):
        return {**super().extra_state(), "pool": [1, 2, object()], "fine": {1, 2.5, b"x"}}
""",
    "renamed": """
    def networks(self):
        nets = super().networks()
        nets["G_X"] = nets.pop("G_A")
        return nets
""",
    "halfsize": """
    def translate(self, x, direction):
        return super().translate(x, direction)[..., ::2, ::2]
""",
}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install the faulty plugin with ``body`` (a translator's methods), ``encoder_body`` and
    ``domain_body``."""

    def install(body: str = "    pass", encoder_body: str = "    pass",
                domain_body: str = "    pass") -> None:
        source = PLUGIN.format(body=body, encoder_body=encoder_body, domain_body=domain_body)
        (tmp_path / "plug_faulty.py").write_text(source)
        sys.modules.pop("plug_faulty", None)
        monkeypatch.syspath_prepend(str(tmp_path))
        eps = [importlib.metadata.EntryPoint("faulty", "plug_faulty", "styletx")]
        monkeypatch.setattr(importlib.metadata, "entry_points",
                            lambda group: eps if group == "styletx" else [])
        monkeypatch.setattr(registry_module, "_registry", None)

    yield install
    registry_module.reset_registry()


def train(styletx, scenes, out, *extra):
    return styletx("train", scenes["a"], scenes["b"], "--out", out, *TINY, "--size", "16",
                   "--model", "faulty", *extra)


def assert_one_error(result, *fragments):
    assert result.exit_code == 1, result.stderr
    errors = [line for line in result.error_lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_an_exception_in_a_plugins_code_names_the_plugin_and_where(styletx, scenes, plugin,
                                                                    tmp_path):
    plugin(CASES["raises"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "4")
    assert_one_error(result, 'plugin "faulty"', "failed: ValueError: the author's bug",
                     "plug_faulty.py:", "in training_step", "--debug")
    # the step before it was saved (a 4-step run saves every step) and stays
    assert json.loads((tmp_path / "run" / "config.json").read_text())["step"] == 1


@pytest.mark.parametrize("case", ["raiseslater", "raisesafterupdating"])
def test_a_plugins_bug_mid_training_keeps_the_steps_trained(styletx, scenes, plugin, tmp_path,
                                                             case):
    plugin(CASES[case])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "8", "--save-every", "100")
    assert_one_error(result, 'plugin "faulty"', "the author's bug")
    saved = ("training failed after step 5; the 5 step(s) since the last checkpoint are saved"
             + (" (with part of step 6's update, made before it failed)"
                if case == "raisesafterupdating" else "") + f": {run} is at step 5")
    assert saved in result.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 5
    plugin()  # the author's fix: the run resumes from step 5
    resumed = train(styletx, scenes, run, "--steps", "8")
    assert resumed.exit_code == 0, resumed.stderr
    assert "from step 5" in resumed.stderr


def test_a_plugin_that_exits_or_interrupts_mid_training_keeps_the_steps_trained(
        styletx, scenes, plugin, tmp_path):
    """sys.exit(5) in a training step ended the command with status 5, no message and the
    steps since the checkpoint lost; a KeyboardInterrupt of the plugin's own lost them too
    (only a real second Ctrl-C stops without saving)."""
    plugin(CASES["exits"])
    result = train(styletx, scenes, tmp_path / "exits", "--steps", "8", "--save-every", "100")
    assert_one_error(result, 'plugin "faulty" (', ") called sys.exit(5) at ",
                     "plug_faulty.py:", "in training_step while training, after step 5")
    assert "the 5 step(s) since the last checkpoint are saved" in result.stderr
    assert json.loads((tmp_path / "exits" / "config.json").read_text())["step"] == 5
    plugin(CASES["interrupts"])
    result = train(styletx, scenes, tmp_path / "stops", "--steps", "8", "--save-every", "100")
    assert result.exit_code == 130, result.stderr
    assert json.loads((tmp_path / "stops" / "config.json").read_text())["step"] == 5


def test_a_signal_while_the_steps_before_a_failure_are_saved_waits_for_the_save(
        styletx, scenes, plugin, tmp_path):
    """`--nproc`'s launcher sends a SIGTERM to every training process once one has failed; it
    reached rank 0 while that saved its last steps, and killed it there without a word."""
    plugin(CASES["signalledwhilesaving"])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "8", "--save-every", "100")
    assert_one_error(result, 'plugin "faulty"', "the author's bug")
    assert "SIGTERM: saving the steps trained before the failure, then stopping" in result.stderr
    assert "the 5 step(s) since the last checkpoint are saved" in result.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 5


def test_losses_that_are_not_a_dict_are_refused_by_name(styletx, scenes, plugin, tmp_path):
    plugin(CASES["tensorloss"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "2")
    assert_one_error(result, "the faulty translator's training_step must return its losses as "
                             "a dict of name -> number, not Tensor")


def test_a_scheduler_the_translator_steps_itself_is_refused(styletx, scenes, plugin,
                                                            tmp_path):
    """Stepped by the translator and by the trainer, the learning rate decayed twice as fast,
    without a word."""
    plugin(CASES["steppedtwice"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "4")
    assert_one_error(result, "the faulty translator stepped its 'G' scheduler itself (2 steps "
                             "in one training step); the trainer steps every scheduler once a "
                             "step, so training_step must not")
    assert not (tmp_path / "run").exists()


def test_a_diverged_run_stops_and_keeps_its_last_good_checkpoint(styletx, scenes, plugin,
                                                                tmp_path):
    """NaN from step 5 on; checkpoints every 2 steps: step 4 is the last good one, and the log
    holds null, not a bare NaN that JSON readers refuse."""
    plugin(CASES["nanlater"])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "20", "--save-every", "2",
                   "--log-every", "1")
    assert_one_error(result, "training diverged: G_A not finite (nan) at step 7 (3 step(s) in "
                             "a row); stopped, the last checkpoint (step 4) is kept")
    assert json.loads((run / "config.json").read_text())["step"] == 4
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert logged[-1]["losses"]["G_A"] is None
    plugin()  # the author's fix: the run resumes from step 4
    resumed = train(styletx, scenes, run, "--steps", "6")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "from step 4" in resumed.stderr


def test_one_step_that_is_not_finite_passes_unsaved(styletx, scenes, plugin, tmp_path):
    """As a plugin's fp16 gradient scaler skips an overflowing step: the save due after it
    waits for a finite step."""
    plugin(CASES["nanonce"])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "6", "--save-every", "2")
    assert result.exit_code == 0, result.stderr
    assert json.loads((run / "config.json").read_text())["step"] == 6


def test_weights_that_are_not_finite_are_never_saved(styletx, scenes, plugin, tmp_path):
    """A NaN put in the weights in step 3 (as an infinite gradient would): the save due at
    step 4 stops training at once (counting NaN losses, it would have gone on to step 7), and
    step 2's checkpoint stays."""
    plugin(CASES["poisoned"])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "8", "--save-every", "2")
    assert_one_error(result, "training diverged: ", " at step 4 (",
                     "the last checkpoint (step 2) is kept")
    assert json.loads((run / "config.json").read_text())["step"] == 2


def test_weights_poisoned_in_a_saving_step_are_named_without_a_count(styletx, scenes, plugin,
                                                                     tmp_path):
    """The losses of step 4 were finite, so no count of non-finite steps ("0 step(s) in a
    row" it said)."""
    plugin(CASES["poisonedonsave"])
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "8", "--save-every", "2")
    assert_one_error(result, "training diverged: the weights hold NaN or infinite values at "
                             "step 4; stopped, the last checkpoint (step 2) is kept")
    assert json.loads((run / "config.json").read_text())["step"] == 2


def test_a_run_whose_last_step_is_not_finite_is_not_saved(styletx, scenes, plugin, tmp_path):
    plugin(CASES["nanalways"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "2")
    assert_one_error(result, "D_A not finite (inf) at step 2 (2 step(s) in a row); stopped, no "
                             "checkpoint was saved before it")
    assert not (tmp_path / "run").exists()


def test_extra_state_a_resume_could_not_load_is_refused_before_training(styletx, scenes,
                                                                         plugin, tmp_path):
    """Saved, it made the run unresumable ("resume.pt: refused to load")."""
    plugin(CASES["objectstate"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "2")
    assert_one_error(result, "the faulty translator's extra_state() could not be loaded back "
                             "on resume (it holds object); keep it to tensors")
    assert not (tmp_path / "run").exists()


def test_a_translate_of_the_wrong_size_writes_nothing(styletx, scenes, plugin, tmp_path):
    """Cropped to the input's size, a half-size output became a smaller picture silently."""
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1").exit_code == 0
    plugin(CASES["halfsize"])
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out", "--device",
                     "cpu")
    assert result.exit_code == 1, result.stderr
    error = result.error_lines[0]  # the batch of files converted together: (N, 3, 40, 40)
    assert "the faulty translator's translate gave (" in error
    assert "3, 20, 20) for (" in error and "3, 40, 40) (a2b), not (" in error
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True


def test_a_translate_of_the_wrong_size_is_named_by_the_first_preview(styletx, scenes, plugin,
                                                                       tmp_path):
    plugin(CASES["halfsize"])
    result = train(styletx, scenes, tmp_path / "run", "--steps", "2")
    assert_one_error(result, "the faulty translator's preview row holds tiles of 16x16, 8x8, ",
                     "translate must keep its input's size")


def test_an_encoder_giving_the_wrong_channels_is_named(styletx, scenes, plugin, tmp_path):
    plugin(encoder_body="    def encode(self, sample):\n"
                        "        return super().encode(sample)[:2]\n")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1", "--encoder", "faultyrgb")
    assert_one_error(result, "the faultyrgb encoder's encode gave (2, ", "not a floating-point "
                             "tensor (C, H, W) of its 3 channels")


def test_weights_that_no_longer_fit_a_plugins_networks_name_its_versions(styletx, scenes,
                                                                          plugin, tmp_path):
    """config.json records the third-party plugins' versions; when the installed version's
    networks no longer fit the saved weights, the error says which version trained the run."""
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1").exit_code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["plugins"] == {"faulty": "?"}  # an entry point of no installed package
    config["plugins"] = {"faulty": "0.0.1"}
    (run / "config.json").write_text(json.dumps(config))
    plugin("""
    def __init__(self, config, channels_a, channels_b):
        import dataclasses
        super().__init__(dataclasses.replace(config, ngf=2 * config.ngf), channels_a, channels_b)
""")
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert_one_error(result, "does not match", "network G_A",
                     'plugin "faulty" ? is installed, the run was trained with 0.0.1')


def test_an_encoder_without_channels_is_named(styletx, scenes, plugin, tmp_path):
    """Its first encode had failed with an AttributeError traceback."""
    plugin(encoder_body="    channels = None\n")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1", "--encoder", "faultyrgb")
    assert_one_error(result, "the faultyrgb encoder's channels is None: it must be the number "
                             "of channels of the tensors it encodes to")


def test_an_encoder_broken_after_training_is_named_with_the_file_at_convert(
        styletx, scenes, plugin, tmp_path):
    """Its wrong channel count reached the model: a traceback naming cyclegan's own check."""
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1", "--encoder", "faultyrgb").exit_code == 0
    plugin(encoder_body="    def encode(self, sample):\n"
                        "        return super().encode(sample)[:2]\n")
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    first = sorted(scenes["test_a"].glob("*.png"))[0]
    assert_one_error(result, f"{first}: the faultyrgb encoder's encode gave (2, ")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_an_encoder_giving_nan_is_named_with_the_file_not_called_divergence(
        styletx, scenes, plugin, tmp_path):
    plugin(encoder_body="    def encode(self, sample):\n"
                        "        x = super().encode(sample)\n"
                        "        x[0, 0, 0] = float('nan')\n"
                        "        return x\n")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1", "--encoder", "faultyrgb")
    first = sorted(scenes["a"].iterdir())[0]
    assert_one_error(result, f"{first}: the faultyrgb encoder's encode gave NaN or infinite "
                             "values")
    assert "diverged" not in result.stderr


def test_a_translate_giving_nan_is_refused_at_convert_and_in_the_preview(styletx, scenes,
                                                                          plugin, tmp_path):
    """NaN had been written as black pixels with exit 0, and drawn in the previews unsaid; the
    preview's refusal keeps the steps trained since the last checkpoint."""
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "2").exit_code == 0
    plugin(CASES["nantranslate"])
    inputs = tmp_path / "in"
    shutil.copytree(scenes["test_a"], inputs)
    small = sorted(inputs.glob("*.png"))[0]
    Image.open(small).crop((0, 0, 17, 16)).save(small)  # NaN for small inputs
    result = styletx("convert", run, inputs, "-o", tmp_path / "out")
    assert_one_error(result, f"{small}: the a2b translation holds NaN or infinite values (from "
                             "the run's weights, or from this input)")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in inputs.glob("*.png") if p != small)  # the rest of its batch converted
    result = train(styletx, scenes, tmp_path / "new", "--steps", "8", "--save-every", "100",
                   "--preview-every", "5")
    assert_one_error(result, "the faulty translator's preview holds NaN or infinite values")
    assert json.loads((tmp_path / "new" / "config.json").read_text())["step"] == 5


def test_a_run_needing_a_plugin_that_failed_says_so(styletx, scenes, plugin, tmp_path):
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1", "--encoder", "faultyrgb").exit_code == 0
    (tmp_path / "plug_faulty.py").write_text("import a_module_that_is_gone\n")
    sys.modules.pop("plug_faulty", None)
    registry_module.reset_registry()
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert_one_error(result, "this run needs translator 'faulty', encoder 'faultyrgb', which no "
                             'loaded plugin provides (plugins that failed to load: "faulty")')


def test_contract_mistakes_found_before_training_name_what_is_wrong():
    """A Config that is not a dataclass, encoder params that are not JSON and an encoder
    state holding a float failed as TypeError or AttributeError deep inside."""
    from styletx.contract.errors import StyletxError
    from styletx.engine.model import encoder_record, make_config, model_tensors
    from styletx.plugins.cyclegan import CycleGAN
    from styletx.plugins.image import RGBEncoder

    class PlainConfig(CycleGAN):
        name = "plainconfig"

        class Config:
            pass

    class Odd(RGBEncoder):
        name = "odd"

        def state_dict(self):
            return {"scale": 0.5}

    with pytest.raises(StyletxError, match="the plainconfig translator's Config must be a "
                                           "dataclass"):
        make_config(PlainConfig, "tiny", {}, "image")
    with pytest.raises(StyletxError, match="the odd encoder's params must be JSON values"):
        encoder_record(Odd(when=object()))
    translator = CycleGAN(make_config(CycleGAN, "tiny", {}, "image"), 3, 3)
    with pytest.raises(StyletxError, match="the odd encoder's state_dict holds 'scale' as a "
                                           "float, not a tensor"):
        model_tensors(translator, {"a": Odd(), "b": Odd()})


def test_a_renamed_network_is_named_when_the_run_does_not_load(styletx, scenes, plugin,
                                                               tmp_path):
    plugin()
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1").exit_code == 0
    plugin(CASES["renamed"])
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert_one_error(result, "model.safetensors holds the networks D_A, D_B, G_A, G_B; the "
                     "faulty translator as installed makes G_B, D_A, D_B, G_X: the translator "
                     "changed since the run was trained")


def test_a_domain_whose_default_translator_is_missing_says_so(styletx, scenes, plugin,
                                                              tmp_path):
    """It said "unknown translator 'nosuchmodel' for --model" to a user who gave no --model."""
    plugin()
    result = styletx("train", scenes["a"], scenes["b"], "--out", tmp_path / "run", "--domain",
                     "faultyimg", "--steps", "1")
    assert_one_error(result, "the faultyimg domain's default model 'nosuchmodel' is not loaded",
                     "choose one with --model")
    guessed = train(styletx, scenes, tmp_path / "guessed", "--steps", "1")  # both read .png
    assert guessed.exit_code == 0, guessed.stderr
    assert "the image and faultyimg domains each read as many of these files; using image " \
           "(--domain chooses)" in guessed.stderr


def test_the_blamed_plugin_is_the_one_whose_module_raised():
    """Of two entry points in one package, the one whose module holds the frame; never
    styletx's own code, even for an entry point inside the styletx namespace."""
    import types

    from styletx.contract.registry import PluginInfo, Registry

    def raiser(module_name: str):
        module = types.ModuleType(module_name)
        exec("def fail():\n    raise ValueError('bug')\n", module.__dict__)
        return module.fail

    registry = Registry()
    registry.plugins = [PluginInfo("first", "1", False, module="pkg.first"),
                        PluginInfo("second", "1", False, module="pkg.second.plugin"),
                        PluginInfo("inside", "1", False, module="styletx.extra")]
    for module_name, blamed in (("pkg.second.impl", "second"), ("pkg.first", "first"),
                                ("styletx.engine.loop", None)):
        try:
            raiser(module_name)()
        except ValueError as exc:
            found = registry.plugin_in(exc.__traceback__)
        assert (found and found[0].name) == blamed, module_name


def test_a_failed_training_stops_drawing_batches_ahead(scenes, plugin, tmp_path):
    """From Python the process goes on after the error: no prefetch thread is left running."""
    import threading

    import styletx

    plugin(CASES["raises"])
    with pytest.raises(ValueError, match="the author's bug"):
        styletx.train(scenes["a"], scenes["b"], tmp_path / "run", model="faulty", preset="tiny",
                      settings=styletx.TrainSettings(steps=4, size=16, device="cpu", prefetch=2,
                                                     progress=False))
    assert not [t for t in threading.enumerate() if t.name.startswith("styletx-prefetch")
                and t.is_alive()]


def test_a_file_the_plugins_decoder_refuses_fails_alone_and_by_name(styletx, scenes, plugin,
                                                                      tmp_path):
    """A plugin's StyletxError from decoding one file of a batch failed the whole command
    without naming the file; now that file is reported and the rest of its batch converted."""
    plugin(encoder_body="    def decode(self, tensor, like=None):\n"
                        "        if like is not None and like.format == 'JPEG':\n"
                        "            raise styletx.StyletxError('cannot decode for JPEG')\n"
                        "        return super().decode(tensor, like)\n")
    run = tmp_path / "run"
    assert train(styletx, scenes, run, "--steps", "1", "--encoder", "faultyrgb").exit_code == 0
    inputs = tmp_path / "in"
    shutil.copytree(scenes["test_a"], inputs)
    first = sorted(inputs.glob("*.png"))[0]
    Image.open(first).convert("RGB").save(first.with_suffix(".jpg"))
    first.unlink()
    result = styletx("convert", run, inputs, "-o", tmp_path / "out")
    assert result.exit_code == 1, result.stderr
    assert f"{first.with_suffix('.jpg')}: cannot decode for JPEG" in result.stderr
    assert "Traceback" not in result.stderr
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == sorted(p.name for p in inputs.glob("*.png"))  # the rest of its batch


def test_a_config_field_without_a_default_fails_the_plugin_at_loading(styletx, scenes, plugin,
                                                                      tmp_path):
    """It trained with the preset that set the field and failed with a TypeError traceback
    under --preset default."""
    plugin("""
    import dataclasses

    @dataclasses.dataclass(kw_only=True)
    class Config(CycleGAN.Config):
        width: int
""")
    listed = styletx("plugins")
    assert listed.exit_code == 1
    assert ('Error loading plugin "faulty": register_translators: TypeError: Faulty.Config '
            'field(s) width '
            "have no default (each needs one" in listed.stderr)
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1")
    assert result.exit_code == 2  # checked before the folders are read
    assert result.error_lines[-1].startswith("Error: unknown translator 'faulty' for --model")
    assert result.error_lines[-1].endswith('; plugins that failed to load: "faulty")')


def test_a_config_that_is_no_dataclass_fails_the_plugin_at_loading(styletx, plugin):
    """A plugin author's trial: it loaded and was listed, and failed only at training."""
    plugin("""
    class Config:
        width = 4
""")
    listed = styletx("plugins")
    assert listed.exit_code == 1
    assert ('Error loading plugin "faulty": register_translators: TypeError: Faulty.Config must '
            "be a dataclass of its settings (@dataclasses.dataclass), not <class '"
            in listed.stderr)


def test_what_a_preset_may_train_is_what_the_trainer_takes():
    from styletx.contract.interfaces import PRESET_TRAIN_KEYS
    from styletx.engine.training.settings import TRAIN_DEFAULTS

    assert set(PRESET_TRAIN_KEYS) == set(TRAIN_DEFAULTS)


@pytest.mark.parametrize("presets, said", [
    ('{"default": styletx.Preset(), "fast": styletx.Preset(config={"widht": 4})}',
     "Faulty's preset 'fast' (presets) sets 'widht', which is neither a field of its Config "
     "nor one of steps, batch_size, size"),
    ('{"default": styletx.Preset(train={"stpes": 9})}', "sets 'stpes', which is neither"),
    ('{"default": styletx.Preset(for_files=lambda files: {"widht": files})}',
     "Faulty's preset 'default' (presets) sets 'widht', which is neither"),
    ('{"tiny": styletx.Preset()}', 'Faulty.presets has no "default" preset (the one used '
                                   "without --preset)"),
    ('{"default": styletx.Preset()}\n    domain_presets = {"image": {"default": '
     'styletx.Preset(), "fast": styletx.Preset(train={"size": 16, "szie": 8})}}',
     "Faulty's preset 'fast' (domain_presets['image']) sets 'szie', which is neither"),
])
def test_a_preset_that_sets_what_is_not_there_fails_the_plugin_by_name(styletx, plugin,
                                                                       presets, said):
    """A misspelt key had been reported at train time as if the user had typed it, and one in
    ``train`` not at all; a table without "default" said "unknown --preset 'default'"."""
    plugin(f"    presets = {presets}\n")
    listed = styletx("plugins")
    assert listed.exit_code == 1
    assert 'Error loading plugin "faulty": register_translators: TypeError: ' in listed.stderr
    assert said in listed.stderr


def test_a_domain_that_chooses_no_encoder_says_so(styletx, scenes, plugin, tmp_path):
    plugin(domain_body="    default_encoder = styletx.Domain.default_encoder")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1", "--domain", "faultyimg")
    assert_one_error(result, "the faultyimg domain chooses no encoder (it does not implement "
                             "default_encoder); give one with --encoder")


def test_a_default_encoder_of_another_domain_is_the_plugins_mistake(styletx, scenes, plugin,
                                                                     tmp_path):
    plugin(encoder_body='    domain = "faultyimgs"',
           domain_body="    def default_encoder(self, samples):\n        return 'faultyrgb'")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "1", "--domain", "faultyimg")
    assert_one_error(result, "the faultyimg domain's default encoder faultyrgb encodes "
                             "'faultyimgs' files, not 'faultyimg' files")


def test_a_domain_whose_save_writes_nothing_is_named(styletx, scenes, plugin, tmp_path):
    """It read as a missing output folder: "cannot write out/x.png: No such file or
    directory", once for every file."""
    own = "    def default_encoder(self, samples):\n        return 'faultyrgb'\n"
    plugin(encoder_body='    domain = "faultyimg"', domain_body=own)
    run = tmp_path / "run"
    trained = train(styletx, scenes, run, "--steps", "1", "--domain", "faultyimg")
    assert trained.exit_code == 0, trained.stderr
    plugin(encoder_body='    domain = "faultyimg"',
           domain_body=own + "    def save(self, sample, path):\n        pass")
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert_one_error(result, "the faultyimg domain's save wrote no file at the path it was "
                             "given (.")
    assert not (tmp_path / "out").exists()


def test_losses_given_as_tensors_are_read_without_a_warning(styletx, scenes, plugin, tmp_path):
    plugin("""
    def training_step(self, batch, step):
        losses = super().training_step(batch, step)
        return {name: torch.tensor(value, requires_grad=True) for name, value in losses.items()}
""")
    result = train(styletx, scenes, tmp_path / "run", "--steps", "2")
    assert result.exit_code == 0, result.stderr
    assert "UserWarning" not in result.stderr and "requires_grad" not in result.stderr


def test_a_decoder_giving_no_sample_is_named_not_the_domains_save(styletx, scenes, plugin,
                                                                  tmp_path):
    """A decode that returned a bare array failed in the domain's save, as the domain's bug
    ("'numpy.ndarray' object has no attribute ..." at save). The training preview, which
    decodes each tile, names it first, and keeps the step trained."""
    plugin(encoder_body="    def decode(self, tensor, like=None):\n"
                        "        return tensor.numpy()\n")
    run = tmp_path / "run"
    result = train(styletx, scenes, run, "--steps", "1", "--encoder", "faultyrgb")
    assert_one_error(result, "the faultyrgb encoder's decode gave a numpy.ndarray, not the "
                             "ImageSample the image domain loads and saves")
    result = styletx("convert", run, scenes["test_a"], "-o", tmp_path / "out")
    assert_one_error(result, "the faultyrgb encoder's decode gave a numpy.ndarray, not the "
                             "ImageSample its domain loads and saves")
    assert not (tmp_path / "out").exists()
