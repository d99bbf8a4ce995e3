"""Task checkers: does a response solve a task? exact, contains, number, regex, or a user function "module:name"."""

from __future__ import annotations

import importlib
import inspect
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


def _is_verdict(value) -> bool:
    try:
        return value in (True, False)  # a bool, 0/1, numpy.bool_
    except (TypeError, ValueError):  # e.g. an array: no single truth value
        return False


def _check_regex_answers(tasks: list[dict], source: str) -> None:
    for n, task in enumerate(tasks, 1):
        try:
            re.compile(task["answer"])
        except re.error as e:
            raise CtxDistillError(f"{source}, task {n} (line {n}, blank lines not counted): the answer "
                                  f"{task['answer']!r} is not a valid regular expression for --checker regex ({e}). "
                                  "Fix the pattern (escape special characters with \\), or use --checker exact or "
                                  "contains.") from None


def validate_checker(spec: str, check: Callable, tasks: list[dict], source: str) -> None:
    """Before any model work: every regex answer compiles, and the checker takes (prompt, response, answer) and
    judges the first task (its own answer as the response) with True or False, so a broken rule does not surface
    only after the model has answered everything."""
    if check is regex:
        _check_regex_answers(tasks, source)
    try:
        inspect.signature(check).bind("prompt", "response", "answer")
    except TypeError:
        raise CtxDistillError(f"The checker '{spec}' must take (prompt, response, answer); its signature is "
                              f"{inspect.signature(check)}. Change the function or pass another --checker.") from None
    except ValueError:  # no signature to read (a C function): the call below tells
        pass
    first = tasks[0]
    try:
        verdict = check(first["prompt"], first["answer"], first["answer"])
    except Exception as e:  # the user's code: any failure is reported the same way
        raise CtxDistillError(f"The checker '{spec}' failed on task 1 of {source} (called with the task's answer as "
                              f"the response): {type(e).__name__}: {e}. Fix the checker, or pass another "
                              "--checker.") from e
    if not _is_verdict(verdict):
        raise CtxDistillError(f"The checker '{spec}' returned {verdict!r} on task 1 of {source}; it must return True "
                              "or False.")
