"""The recipe registry: every method is one module of this package that declares `RECIPES = [Recipe(...)]`.

A new method is one new file here; the command line and the Python API find it through `registry()`."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from ctxdistill import CtxDistillError
from ctxdistill.recipes.base import Recipe, RunResult

__all__ = ["Recipe", "RunResult", "get_recipe", "registry"]


FIRST = ("offline", "onpolicy", "knowledge", "disc")  # listed first in help and errors; the rest by name


@cache
def registry() -> dict[str, Recipe]:
    found: dict[str, Recipe] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for recipe in getattr(module, "RECIPES", ()):
            found[recipe.name] = recipe
    order = sorted(found, key=lambda name: (FIRST.index(name) if name in FIRST else len(FIRST), name))
    return {name: found[name] for name in order}


def get_recipe(name: str) -> Recipe:
    recipes = registry()
    if name not in recipes:
        raise CtxDistillError(f"Unknown recipe '{name}'. Available: {', '.join(recipes)}.")
    return recipes[name]
