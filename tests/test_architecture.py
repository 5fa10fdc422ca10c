"""The layers stay visible: imports point down only, the built-in plugins use only the public
API, the docs list every built-in plugin, and no function of the engine grows too long."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import styletx
from styletx.contract.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "styletx"
# What the built-in plugins (and third-party ones, docs/plugins.md) may import from styletx.
PUBLIC_MODULES = {"styletx", "styletx.nn", "styletx.image", "styletx.image.metrics",
                  "styletx.image.previews", "styletx.audio", "styletx.audio.dsp",
                  "styletx.audio.metrics", "styletx.audio.previews", "styletx.audio.decoder",
                  "styletx.audio.vocoder", "styletx.audio.matching"}
# layer -> the styletx layers it must not import (at any depth of the module)
FORBIDDEN = {
    "contract": ("styletx.engine", "styletx.tools", "styletx.plugins", "styletx.cli"),
    "engine": ("styletx.tools", "styletx.plugins", "styletx.cli"),
    "nn": ("styletx.engine", "styletx.tools", "styletx.plugins", "styletx.cli"),
    "image": ("styletx.engine", "styletx.tools", "styletx.plugins", "styletx.cli"),
    "audio": ("styletx.engine", "styletx.tools", "styletx.plugins", "styletx.cli"),
    "tools": ("styletx.plugins", "styletx.cli"),
}
# The latent models' defaults (LatentTranslator.on_trained / input_check) call the latent tools
# when they run: the contract names them, the engine does not.
ALLOWED = {("contract/interfaces.py", "styletx.tools.latent")}
LONGEST_FUNCTION = 60  # lines, in the engine


def imports(path: Path, top_level_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    rel = str(path.relative_to(PACKAGE))
    for name in imports(path):
        for banned in FORBIDDEN.get(layer_of(path), ()):
            allowed = any(rel == where and name.startswith(what) for where, what in ALLOWED)
            if name.startswith(banned) and not allowed:
                pytest.fail(f"styletx/{rel} imports {name}: the {layer_of(path)} layer must "
                            f"not import {banned} (see docs/architecture.md)")


def test_there_are_no_relative_imports_to_hide_the_layers():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]
        assert not relative, f"{path}: relative import of {relative[0].module}"


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_built_in_plugins_use_only_the_public_api(path):
    for name in imports(path):
        if not name.startswith("styletx") or name.startswith("styletx.plugins"):
            continue
        module = name if name in PUBLIC_MODULES else name.rpartition(".")[0]
        assert module in PUBLIC_MODULES, (
            f"plugins/{path.name} imports {name}, which is not public API (public: "
            f"{', '.join(sorted(PUBLIC_MODULES))})")


def test_the_public_api_is_declared_and_importable():
    for name in styletx.__all__:
        assert hasattr(styletx, name), name
    for module in PUBLIC_MODULES - {"styletx"}:
        imported = __import__(module, fromlist=["__all__"])
        assert imported.__all__, f"{module} declares no __all__"
        for name in imported.__all__:
            assert hasattr(imported, name), f"{module}.{name}"


def test_plugin_guide_lists_every_built_in_plugin():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    builtins = [(kind, name) for plugin in get_registry().plugins if plugin.builtin
                for kind, names in plugin.registers.items() for name in names]
    assert len(builtins) >= 9  # 2 domains, 4 encoders, 3 translators
    missing = [f"{kind[:-1]} `{name}`" for kind, name in builtins if f"`{name}`" not in guide]
    assert not missing, f"docs/plugins.md does not mention the built-in {', '.join(missing)}"


def test_engine_functions_are_simple():
    """No engine function with a McCabe complexity over 10 (ruff's C901, pinned here)."""
    import subprocess
    import sys

    found = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "C901",
                            "--config", "lint.mccabe.max-complexity=10", "--output-format",
                            "concise", str(PACKAGE / "engine")], capture_output=True, text=True)
    if found.returncode != 0 and "C901" not in found.stdout:
        pytest.skip(f"ruff is not available here: {found.stderr.strip()[:200]}")
    assert "C901" not in found.stdout, found.stdout


def test_engine_functions_are_short():
    long = []
    for path in (PACKAGE / "engine").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long, "functions over 60 lines: " + ", ".join(long)
