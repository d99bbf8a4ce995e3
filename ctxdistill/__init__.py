"""ctxdistill: bake a helpful context into a model's weights (context distillation)."""

__version__ = "0.1.0"


class CtxDistillError(Exception):
    """A problem with the user's input or set-up; the message names the problem and the fix."""
