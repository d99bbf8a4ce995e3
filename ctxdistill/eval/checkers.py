"""Task checkers: does a response solve a task? exact, contains, number, regex, or a user function "module:name"."""

from __future__ import annotations

import importlib
import re
from typing import Callable

from ctxdistill import CtxDistillError

_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").lower())


def _first_number(text: str) -> float | None:
    m = _NUMBER.search(text.replace(",", ""))
    return float(m.group()) if m else None


def exact(prompt: str, response: str, answer: str) -> bool:
    return _norm(response) == _norm(answer)


def contains(prompt: str, response: str, answer: str) -> bool:
    return _norm(answer) in _norm(response)


def number(prompt: str, response: str, answer: str) -> bool:
    """The first number in the response equals the answer's number."""
    got, want = _first_number(response), _first_number(str(answer))
    return got is not None and want is not None and abs(got - want) < 1e-9


def regex(prompt: str, response: str, answer: str) -> bool:
    return re.search(answer, response) is not None


BUILTIN = {"exact": exact, "contains": contains, "number": number, "regex": regex}


def load_checker(spec: str) -> Callable[[str, str, str], bool]:
    """A built-in rule name, or "package.module:function" taking (prompt, response, answer) and returning a bool."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    if ":" not in spec:
        raise CtxDistillError(f"Unknown checker '{spec}'. Use one of {', '.join(BUILTIN)}, or 'module:function'.")
    module_name, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as e:
        raise CtxDistillError(f"Cannot load the checker '{spec}' ({e}). It must be importable: put the module on "
                              "PYTHONPATH.") from e
    if not callable(fn):
        raise CtxDistillError(f"The checker '{spec}' is not a function.")
    return fn
