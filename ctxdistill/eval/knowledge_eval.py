"""How much a knowledge module knows: closed-book vs open-book vs retrieval, with and without the module, plus
retention (accuracy and KL to the base on general questions). One table, one bar chart."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctxdistill.core.files import atomic_write_text
from ctxdistill.core.pairs import Context
from ctxdistill.data.chunks import Chunk
from ctxdistill.data.retrieval import ChunkIndex
from ctxdistill.eval.evaluation import answers, answers_table, score

ROWS = {"closed_book": "base, closed-book",
        "open_book": "base + its document in context (open-book)",
        "retrieval": "base + retrieved chunks (BM25)",
        "module": "module, closed-book",
        "module_retrieval": "module + retrieved chunks"}


@dataclass
class QuestionSet:
    """The questions, what each is shown open-book (its document) and with retrieval (the top chunks)."""

    qa: list[dict]
    docs: list[str | None]  # the document a question is about, None when not known
    open_book: list[Context]
    retrieved: list[Context]
    retrieved_docs: list[str]  # the document of each question's best chunk (routes a question to a module)

    @property
    def questions(self) -> list[str]:
        return [x["q"] for x in self.qa]


def question_set(items: list[tuple[str | None, dict]], texts: dict[str, str], chunks: list[Chunk],
                 top_k: int = 1) -> QuestionSet:
    """`items`: (document id or None, {"q", "a"}). A question with no document is shown every document open-book."""
    index = ChunkIndex(chunks)
    everything = Context("\n\n".join(texts.values()), "document")
    open_book = [Context(texts[d], "document") if d in texts else everything for d, _ in items]
    found = [index.search(x["q"], top_k) for _, x in items]
    retrieved = [Context("\n\n".join(c.text for c in best), "document") for best in found]
    return QuestionSet([x for _, x in items], [d for d, _ in items], open_book, retrieved,
                       [best[0].doc_id for best in found])


def base_rows(model, tokenizer, qs: QuestionSet, max_new_tokens: int) -> dict[str, list[str]]:
    """The base's answers (adapter off): closed-book, open-book, and with the retrieved chunks."""
    return {"closed_book": answers(model, tokenizer, qs.questions, None, False, max_new_tokens),
            "open_book": answers(model, tokenizer, qs.questions, qs.open_book, False, max_new_tokens),
            "retrieval": answers(model, tokenizer, qs.questions, qs.retrieved, False, max_new_tokens)}


def module_rows(model, tokenizer, qs: QuestionSet, max_new_tokens: int, only: list[int] | None = None):
    """The model with its module(s) on, closed-book and with the retrieved chunks, for questions `only` (all)."""
    idx = list(range(len(qs.qa))) if only is None else only
    questions = [qs.questions[i] for i in idx]
    return {"module": answers(model, tokenizer, questions, None, True, max_new_tokens),
            "module_retrieval": answers(model, tokenizer, questions, [qs.retrieved[i] for i in idx], True,
                                        max_new_tokens)}


def retention_rows(probe, measured: list[dict]) -> dict[str, dict]:
    """The base's retention row and the module row: `measured` holds DriftProbe.measure of each module (their mean)."""
    n = len(measured)
    return {"closed_book": {"accuracy": score(probe.initial_answers, probe.qa), "n": len(probe.qa), "kl_to_base": 0.0},
            "module": {"accuracy": sum(m["accuracy"] for m in measured) / n, "n": len(probe.qa),
                       "kl_to_base": sum(m["kl_to_initial"] for m in measured) / n}}


def knowledge_result(qs: QuestionSet, rows: dict[str, list[str]], retention: dict[str, dict] | None) -> dict:
    """{"n", "questions", "answers", "accuracy", "retention": {row: {"accuracy", "n", "kl_to_base"}}}."""
    return {"n": len(qs.qa), "questions": qs.questions, "answers": rows,
            "accuracy": {k: score(v, qs.qa) for k, v in rows.items()}, "retention": retention or {}}


def knowledge_table(result: dict, labels: dict[str, str] | None = None) -> str:
    labels = {**ROWS, **(labels or {})}
    n, ret = result["n"], result["retention"]
    lines = ["| method | questions right (no document shown unless said) | retention | KL(base ‖ model) per token |",
             "|---|---|---|---|"]
    for key, right in result["accuracy"].items():
        kept = ret.get(key)
        lines.append(f"| {labels.get(key, key)} | {right}/{n} | "
                     + (f"{kept['accuracy']:g}/{kept['n']} | {kept['kl_to_base']:.4f} |" if kept else "– | – |"))
    return "\n".join(lines)


def plot_knowledge(path: Path, result: dict, labels: dict[str, str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {**ROWS, **(labels or {})}
    keys = list(result["accuracy"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#999" if k in ("closed_book",) else "#4a7" if k in ("open_book", "retrieval") else "#37c"
              for k in keys]
    axes[0].barh([labels.get(k, k) for k in keys], [result["accuracy"][k] / max(1, result["n"]) for k in keys],
                 color=colors)
    axes[0].invert_yaxis()
    axes[0].set_xlim(0, 1), axes[0].set_xlabel(f"share of {result['n']} questions right")
    axes[0].set_title("knowledge")
    ret = result["retention"]
    if ret:
        names = list(ret)
        axes[1].bar([labels.get(k, k).split(",")[0] for k in names], [ret[k]["accuracy"] / ret[k]["n"] for k in names],
                    color="#c84")
        axes[1].set_ylim(0, 1), axes[1].set_ylabel("retention accuracy")
        axes[1].set_title("general questions (no document)")
        axes[1].tick_params(axis="x", labelrotation=20)
    else:
        axes[1].axis("off")
    fig.tight_layout()
    tmp = path.with_name("." + path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def write_knowledge_report(out: Path, title: str, lines: list[str], result: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    plot_knowledge(out / "report.png", result)
    text = "\n".join([f"# {title}", "", *lines, "", knowledge_table(result), "", "![knowledge](report.png)",
                      "", "## Answers", "", answers_table(result, ROWS), ""])
    atomic_write_text(out / "report.md", text)
    return text
