"""`styletx plugins new NAME --kind KIND` writes a plugin package that installs, registers and
passes its own tests, for each kind; bad names and taken folders are one-line usage errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from styletx.tools.scaffold import KINDS


def run(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "STYLETX_DISABLE_PLUGIN_AUTOLOAD"}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=environ)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_new_plugin_installs_registers_and_passes_its_tests(kind, tmp_path):
    name = f"scaffolded_{kind}"
    made = run("-m", "styletx.cli", "plugins", "new", name, "--kind", kind, "-o", tmp_path)
    assert made.returncode == 0, made.stderr
    package = tmp_path / f"styletx-scaffolded-{kind}"
    assert {p.name for p in package.iterdir()} >= {"pyproject.toml", "README.md", "tests",
                                                    f"styletx_{name}.py"}
    installed = run("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    str(package))
    assert installed.returncode == 0, installed.stderr
    try:
        listed = run("-m", "styletx.cli", "plugins")
        assert f"{name} 0.1.0 (entry point)" in listed.stdout, listed.stdout + listed.stderr
        assert "error" not in listed.stdout.split(f"{name} 0.1.0")[1].split("\n")[1]
        tested = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=package)
        assert tested.returncode == 0, tested.stdout[-3000:]
        assert "\n2 passed" in tested.stdout and "failed" not in tested.stdout
    finally:
        run("-m", "pip", "uninstall", "-y", "-q", f"styletx-scaffolded-{kind}")


@pytest.mark.parametrize("args, message", [
    (["Bad-Name", "--kind", "translator"], "plugin name 'Bad-Name'"),
    (["class", "--kind", "encoder"], "plugin name 'class'"),
    (["fine", "--kind", "vocoder"], "Invalid value for '--kind'"),
    # names taken: the package would fail to load the moment it was installed
    (["cyclegan", "--kind", "translator"], "plugin name 'cyclegan' is taken by the built-in "
                                           "plugin 'cyclegan' (its translator); choose another"),
    (["rgb", "--kind", "encoder"], "is taken by the built-in plugin 'image' (its encoder)"),
    (["audio", "--kind", "domain"], "is taken by the built-in plugin 'audio' (its domain)"),
    (["mel", "--kind", "domain"], "is taken by the built-in plugin 'audio' (its encoder)"),
])
def test_bad_names_and_kinds_are_usage_errors(styletx, tmp_path, args, message):
    result = styletx("plugins", "new", *args, "-o", tmp_path)
    assert result.exit_code == 2
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_never_overwritten(styletx, tmp_path):
    (tmp_path / "styletx-mine").mkdir()
    result = styletx("plugins", "new", "mine", "--kind", "domain", "-o", tmp_path)
    assert result.exit_code == 2 and "already exists" in result.error_lines[0]
    assert list((tmp_path / "styletx-mine").iterdir()) == []


def test_a_place_that_cannot_be_written_is_one_line_and_leaves_nothing(styletx, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "styletx-mine").write_text("a file where a folder must go")
    result = styletx("plugins", "new", "mine", "--kind", "translator", "-o", tmp_path / "ro"
                     / "styletx-mine" / "deeper")
    assert result.exit_code == 1 and len(result.error_lines) == 1
    assert result.error_lines[0].startswith("Error: cannot write ")
    assert [p.name for p in (tmp_path / "ro").iterdir()] == ["styletx-mine"]


def test_a_name_taken_only_by_another_kind_is_free(styletx, tmp_path):
    """A translator named like an encoder ("gray") loads: each kind has its own names."""
    result = styletx("plugins", "new", "gray", "--kind", "translator", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "styletx-gray").is_dir()
