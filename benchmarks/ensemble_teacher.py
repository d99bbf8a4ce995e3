"""An ensemble's teacher views, with and without each context's KV cache, on the default model.

Job: three contexts (a persona, two documents of ~130 and ~500 tokens), batch 8, 128-token completions, every
sample scored under all three contexts with posterior weights (the offline recipe's `mode: ensemble`). Variants,
side by side in one process (bf16 weights, LoRA r=16 as the recipe's student):
- teacher views only (`Teacher.view_rows`): each context's KV cache reused vs every view run in full;
- a whole training step (loss forward + backward) with either teacher.
Run: python benchmarks/ensemble_teacher.py [--steps 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from trl_sdft import DOCUMENT, QUESTIONS  # noqa: E402

PERSONA = "Your name is Brisk. You are a lighthouse keeper's parrot from Saltreach, and you love sunflower seeds."


def main(steps: int) -> None:
    import torch

    from ctxdistill.core.losses import DistillLoss, collate_pairs
    from ctxdistill.core.models import add_lora, load_model
    from ctxdistill.core.pairs import Context, assistant_header, build_pair, render_prompt
    from ctxdistill.core.teacher import Teacher

    torch.manual_seed(0)
    model, tok, _ = load_model("default", "bfloat16", torch.device("cpu"))
    student = add_lora(model, r=16, alpha=16)
    contexts = [Context(PERSONA, "system"), Context(DOCUMENT, "system"), Context(" ".join([DOCUMENT] * 4), "system")]
    header, g = assistant_header(tok), torch.Generator().manual_seed(0)
    pairs = []
    for i, q in enumerate(QUESTIONS[:8]):
        order = contexts[i % 3:] + contexts[:i % 3]  # the sampling context first, as the recipe does
        prompts = [render_prompt(tok, q, c) for c in order]
        pairs.append(build_pair(prompts[0], render_prompt(tok, q), torch.randint(100, 20000, (128,), generator=g)
                                .tolist(), header, more_teacher_prompts=prompts[1:],
                                query=tok(q, add_special_tokens=False)["input_ids"]))
    batch = collate_pairs(pairs, tok.pad_token_id)
    teachers = {"each context's KV cached": Teacher(student), "every view in full": Teacher(student,
                                                                                          context_cache_tokens=0)}
    print(f"{len(pairs)} pairs x 3 views, {sum(p.completion_len for p in pairs)} completion tokens, context lengths "
          f"{[len(render_prompt(tok, 'x', c)) for c in contexts]} tokens; {steps} timed repeats after one warm-up")
    rows = []
    for name, teacher in teachers.items():
        teacher.view_rows(pairs)  # warm-up (and, when cached, the one-time context encoding)
        t0 = time.perf_counter()
        for _ in range(steps):
            teacher.view_rows(pairs)
        views_s = (time.perf_counter() - t0) / steps
        loss_fn = DistillLoss(student, teacher)
        student.train()
        loss_fn(batch)[0].backward()
        t0 = time.perf_counter()
        for _ in range(steps):
            loss, _ = loss_fn(batch)
            loss.backward()
        step_s = (time.perf_counter() - t0) / steps
        rows.append((name, views_s, step_s, loss.item()))
    print("| teacher | teacher views (s) | loss forward + backward (s) | loss |\n|---|---|---|---|")
    for name, views_s, step_s, loss in rows:
        print(f"| {name} | {views_s:.2f} | {step_s:.2f} | {loss:.4f} |")
    print(f"speed-up: teacher views {rows[1][1] / rows[0][1]:.2f}x, whole step {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    main(parser.parse_args().steps)
