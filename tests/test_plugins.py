"""Plugin discovery: built-ins, entry points, and broken plugins that must not break styletx."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import textwrap

import pytest

from styletx.contract.registry import Registry

GOOD = """
import styletx
from styletx.plugins.cyclegan import CycleGAN

class Renamed(CycleGAN):
    name = "cyclegan2"

@styletx.hookimpl
def register_translators(register):
    register(Renamed)
"""

BROKEN = {
    "importerror": ("import not_a_module_anywhere\n", "ModuleNotFoundError"),
    "hookerror": (
        "import styletx\n@styletx.hookimpl\ndef register_translators(register):\n"
        "    raise RuntimeError('boom')\n",
        "RuntimeError: boom",
    ),
    "duplicate": (
        "import styletx\nfrom styletx.plugins.cyclegan import CycleGAN\n"
        "@styletx.hookimpl\ndef register_translators(register):\n    register(CycleGAN)\n",
        'translator "cyclegan" is already registered by plugin "cyclegan"',
    ),
    "misspelled": (
        "import styletx\n@styletx.hookimpl\ndef register_translaters(register):\n    pass\n",
        "register_translaters",
    ),
    "abstract": (
        "import styletx\nclass Half(styletx.Translator):\n    name = 'half'\n"
        "@styletx.hookimpl\ndef register_translators(register):\n    register(Half)\n",
        "does not implement",
    ),
    "nothing": ("def register_translators(register):\n    pass\n", "registers nothing"),
    "instance": (
        "import styletx\nfrom styletx.plugins.image import ImageDomain\n"
        "class Mine(ImageDomain):\n    name = 'mine'\n"
        "@styletx.hookimpl\ndef register_domains(register):\n    register(Mine())\n",
        "register_domains got an instance of Mine: register the class, register(Mine)",
    ),
}


@pytest.fixture
def fake_entry_points(tmp_path, monkeypatch):
    """Install modules as ``styletx`` entry points for the duration of a test."""

    def install(modules: dict[str, str]):
        eps = []
        for name, source in modules.items():
            (tmp_path / f"plug_{name}.py").write_text(textwrap.dedent(source))
            eps.append(importlib.metadata.EntryPoint(name, f"plug_{name}", "styletx"))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: eps)
        for name in modules:
            sys.modules.pop(f"plug_{name}", None)

    return install


def test_builtins_register_through_the_hooks():
    registry = Registry().load(autoload=False)
    assert "image" in registry.domains and {"rgb", "gray"} <= set(registry.encoders)
    assert "cyclegan" in registry.translators
    assert all(p.builtin and not p.error for p in registry.plugins)


def test_entry_point_plugin_is_found(fake_entry_points):
    fake_entry_points({"good": GOOD})
    registry = Registry().load()
    assert registry.translators["cyclegan2"].name == "cyclegan2"
    good = [p for p in registry.plugins if p.name == "good"][0]
    assert good.registers == {"translators": ["cyclegan2"]} and not good.builtin


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_plugin_is_reported_and_the_rest_works(fake_entry_points, name):
    source, message = BROKEN[name]
    fake_entry_points({name: source, "good": GOOD})
    registry = Registry().load()
    assert len(registry.errors) == 1
    error = registry.errors[0]
    assert error.startswith(f'Error loading plugin "{name}": ') and message in error
    assert "\n" not in error
    assert {"cyclegan", "cyclegan2"} <= set(registry.translators)  # the others still load
    assert "half" not in registry.translators


def test_an_entry_point_named_like_a_builtin_gets_a_short_error(fake_entry_points):
    """pluggy's own message held the repr of every registered module (2,000 characters)."""
    fake_entry_points({"cyclegan": GOOD})
    registry = Registry().load()
    assert registry.errors == ['Error loading plugin "cyclegan": the name "cyclegan" is taken by '
                               "the built-in plugin of that name; give the entry point another "
                               "name"]
    assert "cyclegan2" not in registry.translators


def test_of_two_plugins_registering_one_name_the_later_by_name_loses(fake_entry_points,
                                                                    monkeypatch):
    """Whatever order the installer lists entry points in."""
    fake_entry_points({"zeta": GOOD, "alpha": GOOD})
    listed = importlib.metadata.entry_points(group="styletx")
    for ordered in (listed, listed[::-1]):
        monkeypatch.setattr(importlib.metadata, "entry_points", lambda group, eps=ordered: eps)
        registry = Registry().load()
        assert registry.errors == ['Error loading plugin "zeta": register_translators: '
                                   'ValueError: translator "cyclegan2" is already registered '
                                   'by plugin "alpha"']


def test_a_hook_that_returns_its_class_instead_of_registering_it_is_told_so(fake_entry_points):
    fake_entry_points({"returns": GOOD.replace("register(Renamed)", "return Renamed")})
    error = Registry().load().errors[0]
    assert "register_translators returned <class 'plug_returns.Renamed'> instead of calling " \
           "register(...) with it" in error


def test_what_a_plugin_prints_while_loading_goes_to_stderr(styletx, fake_entry_points,
                                                           monkeypatch, tmp_path):
    import styletx.contract.registry as registry_module

    fake_entry_points({"chatty": "print('hello from my plugin')\n" + GOOD})
    monkeypatch.setattr(registry_module, "_registry", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        result = styletx("plugins", "--json")
    finally:
        registry_module.reset_registry()
    assert result.exit_code == 0
    assert {p["name"] for p in json.loads(result.stdout)} >= {"chatty", "cyclegan"}
    assert "hello from my plugin" in result.stderr


def test_debug_shows_where_a_plugin_failed_to_load(fake_entry_points, monkeypatch):
    from click.testing import CliRunner

    import styletx.contract.registry as registry_module
    from styletx.cli import cli

    fake_entry_points({"importerror": "x = 1\n" + BROKEN["importerror"][0]})
    monkeypatch.setattr(registry_module, "_registry", None)
    monkeypatch.setenv("STYLETX_DEBUG", "")  # --debug sets it: put back after the test
    try:
        result = CliRunner().invoke(cli, ["--debug", "plugins"])
    finally:
        registry_module.reset_registry()
    assert result.exit_code == 1  # listed, and a check in CI fails
    assert "Traceback" in result.stderr and 'plug_importerror.py", line 2' in result.stderr
    assert 'Error loading plugin "importerror": ModuleNotFoundError' in result.stderr


def test_autoload_can_be_disabled(fake_entry_points, monkeypatch):
    fake_entry_points({"good": GOOD})
    monkeypatch.setenv("STYLETX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "cyclegan2" not in Registry().load().translators
    monkeypatch.setenv("STYLETX_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert "cyclegan2" in Registry().load().translators


def test_plugins_command_reports_broken_plugin(styletx, fake_entry_points, monkeypatch):
    import styletx.contract.registry as registry_module

    fake_entry_points({"importerror": BROKEN["importerror"][0], "good": GOOD})
    monkeypatch.setattr(registry_module, "_registry", None)
    try:
        result = styletx("plugins", "--json")
    finally:
        registry_module.reset_registry()
    assert result.exit_code == 1  # listed all the same: a check in CI fails on it
    assert 'Error loading plugin "importerror"' in result.stderr
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["cyclegan"]["registers"] == {"translators": ["cyclegan"]}
    assert listed["good"]["registers"] == {"translators": ["cyclegan2"]}
    assert "ModuleNotFoundError" in listed["importerror"]["error"]
    fast = listed["cyclegan"]["presets"]["cyclegan"]["image"]["fast"]
    assert fast["size"] == 64 and "colour" in fast["description"]
    assert set(listed["cyclegan"]["presets"]["cyclegan"]["audio"]) == {"default", "fast", "tiny"}
    assert listed["match"]["conversion_settings"] == {
        "match": ["match_k", "match_context", "match_join"]}
    assert listed["vaegan"]["conversion_settings"] == {"vaegan": []}
    assert listed["audio"]["encoder_settings"]["mel"]["n_mels"] == 128  # --encoder-set's
    assert listed["image"]["encoder_settings"] == {}  # rgb and gray take none


def test_plugins_command_text(styletx):
    result = styletx("plugins")
    assert result.exit_code == 0
    assert "cyclegan 0.2.0 (built-in)" in result.stdout and "translators: cyclegan" in result.stdout
    assert "--preset fast (image: 64 px, batch 4" in result.stdout
    assert "--preset tiny (audio: 64 frames" in result.stdout
    assert "convert and export --set: match_k, match_context, match_join" in result.stdout
    assert "    mel --encoder-set: rate=22050, n_fft=1024, hop=256, n_mels=128," in result.stdout


def test_plugins_listing_is_cached_and_answers_without_torch(tmp_path):
    """The second `styletx plugins` reads the cached listing: torch is never imported."""
    import subprocess
    import sys

    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('torch imported:', 'torch' in sys.modules))\n"
             "sys.argv = ['styletx', 'plugins']\n"
             "from styletx.cli import main\n"
             "main()\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    first, second = (subprocess.run([sys.executable, "-c", probe], env=env, text=True,
                                    capture_output=True, timeout=300) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.replace("torch imported: True", "torch imported: False") == second.stdout
    assert "torch imported: True" in first.stdout and "torch imported: False" in second.stdout
    assert len(list((tmp_path / "styletx").glob("plugins-*.json"))) == 1


def test_the_cached_listing_is_not_used_once_a_plugins_dependency_is_gone(tmp_path):
    """A plugin that imports a package found on PYTHONPATH: without it, the listing must say
    the plugin is broken, not repeat the listing cached while it loaded."""
    import subprocess

    (tmp_path / "dep").mkdir()
    (tmp_path / "dep" / "trial_dep.py").write_text("VALUE = 1\n")
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "plug_withdep.py").write_text("import trial_dep\n" + GOOD)
    probe = ("import importlib.metadata as md, sys\n"
             "ep = md.EntryPoint('withdep', 'plug_withdep', 'styletx')\n"
             "found = md.entry_points\n"
             "md.entry_points = lambda group: [ep] if group == 'styletx' else found(group=group)\n"
             "sys.argv = ['styletx', 'plugins', '--json']\n"
             "from styletx.cli import main\n"
             "main()\n")

    def listing(*path):
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
               "PYTHONPATH": os.pathsep.join(map(str, path))}
        done = subprocess.run([sys.executable, "-c", probe], env=env, text=True,
                              capture_output=True, timeout=300)
        listed = {p["name"]: p["error"] for p in json.loads(done.stdout)}
        assert done.returncode == (1 if listed["withdep"] else 0), done.stderr
        return listed

    assert listing(tmp_path / "plug", tmp_path / "dep")["withdep"] is None
    assert "No module named 'trial_dep'" in listing(tmp_path / "plug")["withdep"]
    assert listing(tmp_path / "plug", tmp_path / "dep")["withdep"] is None
    (tmp_path / "dep" / "trial_dep.py").unlink()  # uninstalled, the search path unchanged
    assert "No module named 'trial_dep'" in listing(tmp_path / "plug", tmp_path / "dep")[
        "withdep"]


def test_a_plugin_that_fails_in_a_command_is_not_listed_as_fine_from_the_cache(tmp_path):
    """A failure the cache's key cannot see (here an environment variable) had kept the
    listing of when the plugin loaded: `styletx plugins` said fine while every command said
    it failed. A command that meets the failure drops the kept listing."""
    import subprocess

    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "plug_moody.py").write_text(
        "import os\nif os.environ.get('TRIAL_BREAK'):\n    raise ImportError('moody')\n" + GOOD)
    entry = ("import importlib.metadata as md, sys\n"
             "ep = md.EntryPoint('moody', 'plug_moody', 'styletx')\n"
             "found = md.entry_points\n"
             "md.entry_points = lambda group: [ep] if group == 'styletx' else found(group=group)\n")
    listing = entry + ("sys.argv = ['styletx', 'plugins', '--json']\n"
                       "from styletx.cli import main\nmain()\n")
    command = entry + "from styletx.cli import registry\nregistry()\n"

    def run(probe, broken=False):
        env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"),
               "PYTHONPATH": str(tmp_path / "plug"), **({"TRIAL_BREAK": "1"} if broken else {})}
        return subprocess.run([sys.executable, "-c", probe], env=env, text=True,
                              capture_output=True, timeout=300)

    def moody_error(done):
        return {p["name"]: p["error"] for p in json.loads(done.stdout)}["moody"]

    assert moody_error(run(listing)) is None  # kept
    assert 'Error loading plugin "moody": ImportError: moody' in run(command, True).stderr
    assert "ImportError: moody" in moody_error(run(listing, True))


def test_plugins_shows_the_step_time_measured_here(styletx, scenes, tmp_path, monkeypatch):
    import styletx as api

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    api.train(scenes["a"], scenes["b"], tmp_path / "run", preset="tiny",
              settings=api.TrainSettings(steps=4, device="cpu", progress=False, log_every=1))
    api.train(scenes["a"], scenes["b"], tmp_path / "other", preset="fast",  # not fast's crop:
              settings=api.TrainSettings(steps=4, size=16, device="cpu", progress=False,
                                         log_every=1))  # not recorded

    def image_presets():
        listed = {p["name"]: p for p in json.loads(styletx("plugins", "--json").stdout)}
        return listed["cyclegan"]["presets"]["cyclegan"]["image"]

    image = image_presets()
    assert set(image["tiny"]["measured"]) == {"cpu"} and image["tiny"]["measured"]["cpu"] > 0
    api.train(scenes["a"], scenes["b"], tmp_path / "short", preset="tiny",  # one logged
              settings=api.TrainSettings(steps=2, device="cpu", progress=False))  # period:
    assert image_presets() == image  # its start-up, not its speed; not recorded
    assert image["fast"]["measured"] == {} and image["default"]["measured"] == {}
    text = styletx("plugins").stdout
    assert "--preset tiny (image: 32 px, batch 4, 300 steps; measured here: " in text


def test_a_preset_that_serves_several_domains_is_listed_once(capsys):
    """A translator's image presets also serve a plugin's domain: `styletx plugins` listed
    each again under that domain, in pixels it may not count in."""
    from cli import _echo_presets

    tiny = {"size": 32, "batch_size": 4, "steps": 300, "description": "small"}
    _echo_presets({"image": {"tiny": {**tiny, "measured": {"cpu": 0.05}}},
                   "audio": {"tiny": {**tiny, "size": 64}},
                   "heightmap": {"tiny": tiny}})
    assert capsys.readouterr().out.splitlines() == [
        "    --preset tiny (image, heightmap: size 32, batch 4, 300 steps; measured here: "
        "0.05 s a step on cpu (image)): small",
        "    --preset tiny (audio: 64 frames, batch 4, 300 steps): small"]


def test_python_m_styletx_runs_the_command_line():
    """A plugin author's virtual environment had no `styletx` script, and `python -m styletx`
    said there was no styletx.__main__."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "styletx", "plugins"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cyclegan" in done.stdout
