"""The package calls no deprecated API: a FutureWarning or DeprecationWarning (or a transformers "deprecated" log
line, as for `output.past_key_values`) is an error when the call that triggers it is ctxdistill's own.

Only the package's own calls count: peft's `get_peft_model` reads the deprecated `is_gradient_checkpointing` itself,
which is not ours to change. A warning's own location does not say whose call it was (transformers warns with
stacklevel=2, which points into torch's `Module.__call__`), so the live stack is read when the warning is shown.
"""

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import transformers
from accelerate import Accelerator
from test_teacher_sources import make_pairs

import ctxdistill
from ctxdistill.core.forward import decoder_states, encode_prefix
from ctxdistill.core.generation import generate
from ctxdistill.core.losses import DistillLoss, collate_pairs
from ctxdistill.core.models import add_lora, enable_gradient_checkpointing
from ctxdistill.core.teacher import Teacher
from ctxdistill.core.training import TrainSettings, train

PACKAGE = str(Path(ctxdistill.__file__).parent)
REPORTING = (warnings.__file__, logging.__file__, __file__)  # the frames that show or log the warning
# Code that only passes a call on: torch's Module.__call__, transformers' deprecation wrappers and warning_once.
FORWARDERS = (str(Path(torch.__file__).parent), str(Path(transformers.__file__).parent))


def _package_caller() -> str | None:
    """`file:line` of the package code that called the deprecated API being reported, or None if it is not ours."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(REPORTING):
        frame = frame.f_back
    frame = frame.f_back if frame is not None else None  # the deprecated function itself: whoever called it counts
    while frame is not None and frame.f_code.co_filename.startswith(FORWARDERS):
        frame = frame.f_back
    if frame is None or not frame.f_code.co_filename.startswith(PACKAGE):
        return None
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


@contextmanager
def own_deprecations_are_errors():
    shown = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        where = _package_caller() if issubclass(category, (FutureWarning, DeprecationWarning)) else None
        if where:
            raise category(f"{where}: {message}")
        shown(message, category, filename, lineno, file, line)

    class Handler(logging.Handler):
        def emit(self, record):
            where = _package_caller() if "deprecated" in record.getMessage() else None
            if where:
                raise FutureWarning(f"{where}: {record.getMessage()}")

    log, handler = logging.getLogger("transformers"), Handler(logging.WARNING)
    level = log.level
    transformers.utils.logging.warning_once.cache_clear()  # else a message logged by an earlier test is not logged
    with warnings.catch_warnings():
        warnings.simplefilter("always", FutureWarning)  # every occurrence, not once per place
        warnings.simplefilter("always", DeprecationWarning)
        warnings.showwarning = showwarning
        log.addHandler(handler)
        if not log.isEnabledFor(logging.WARNING):  # TRANSFORMERS_VERBOSITY=error would hide the log lines
            log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.removeHandler(handler)
            log.setLevel(level)


def test_prefix_cache_generation_checkpointing_and_training_use_no_deprecated_api(tokenizer, tiny_model, tmp_path):
    pairs = make_pairs(tokenizer, n=2)
    batch = collate_pairs(pairs, tokenizer.pad_token_id)
    prompts = [p.teacher_ids[:p.teacher_prompt_len] for p in pairs]
    with own_deprecations_are_errors():
        prefix = encode_prefix(tiny_model, prompts[0][:20])
        ids, mask = batch.teacher_ids[:, 20:], batch.teacher_mask[:, 20:]
        assert decoder_states(tiny_model, ids, mask, prefix=prefix)[0].shape[1] == ids.shape[1]
        assert len(generate(tiny_model, tokenizer, prompts, max_new_tokens=3, show_progress=False, prefix=prefix)) == 2

        student = add_lora(tiny_model, r=4, alpha=8)
        enable_gradient_checkpointing(student)
        student.train()
        decoder_states(student, batch.student_ids, batch.student_mask)[0].sum().backward()

        teacher = Teacher(student)
        assert teacher.encode_shared_prefix([p.teacher_ids for p in pairs], [p.teacher_prompt_len for p in pairs])
        settings = TrainSettings(batch_size=2, micro_batch_size=2, max_steps=1)
        result = train(Accelerator(cpu=True), DistillLoss(student, teacher), pairs,
                       lambda b: collate_pairs(b, tokenizer.pad_token_id), settings, tmp_path / "state.pt")
    assert result.steps_done == 1
