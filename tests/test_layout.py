"""The package's shape: layers import one way, no module reaches into another's private names, functions fit on a
screen, and every recipe is registered with its own config class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ctxdistill"
# A module may import from its own layer and the layers before it: core <- data <- eval <- recipes <- cli.
LAYERS = ["core", "data", "eval", "recipes", "cli"]
FOUNDATION = {"ctxdistill", "ctxdistill.config"}  # the error class and version; the config classes (core only)
MAX_FUNCTION_LINES = 80


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, ".".join(("ctxdistill", *parts)).removesuffix(".__init__")


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports(path: Path):
    """(module imported from, [names]) for every `from ctxdistill... import` and `import ctxdistill...`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ctxdistill"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.startswith("ctxdistill"))


@pytest.mark.parametrize("path,module", list(modules()), ids=lambda x: str(x))
def test_layers_import_one_way(path, module):
    own = layer_of(module)
    allowed = set(LAYERS[: LAYERS.index(own) + 1]) if own else set(LAYERS)
    for imported, names in imports(path):
        target = layer_of(imported)
        if target is None and imported == "ctxdistill":  # `from ctxdistill import core` names a layer
            target = next((n for n in names if n in LAYERS), None)
        assert target is None or target in allowed, f"{module} ({own}) imports {imported} ({target})"
        if own == "core":
            assert imported in FOUNDATION or target == "core", f"core module {module} imports {imported}"


@pytest.mark.parametrize("path,module", list(modules()), ids=lambda x: str(x))
def test_no_module_imports_a_private_name_of_another(path, module):
    for imported, names in imports(path):
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{module} imports private {private} from {imported}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path, module in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert not long, long


def test_every_recipe_is_registered_with_its_own_config_class():
    from ctxdistill.config import CONFIGS
    from ctxdistill.recipes import registry

    recipes = registry()
    assert set(recipes) == set(CONFIGS)
    for name, recipe in recipes.items():
        assert recipe.config is CONFIGS[name] and recipe.inputs and callable(recipe.run)
