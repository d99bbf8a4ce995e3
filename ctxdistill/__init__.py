"""ctxdistill: bake a helpful context into a model's weights (context distillation).

The Python API (`distill`, `load`, `chat`, `evaluate`, `combine_modules`; see docs/python_api.md) is imported on
first use, so `import ctxdistill` stays cheap: the command line imports it for CtxDistillError alone."""

import importlib

__version__ = "0.1.0"

API = ("distill", "load", "chat", "evaluate", "combine_modules", "DistillResult", "Evaluation")
__all__ = ["CtxDistillError", "__version__", *API]


class CtxDistillError(Exception):
    """A problem with the user's input or set-up; the message names the problem and the fix."""


def __getattr__(name: str):
    if name in API:
        return getattr(importlib.import_module("ctxdistill.api"), name)
    raise AttributeError(f"module 'ctxdistill' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *API})
