"""`ctxdistill` command line: distill, experience, compare, eval, chat, modules, model-path."""

from __future__ import annotations

import argparse
import sys

from ctxdistill import CtxDistillError


def _cmd_distill(args) -> None:
    from ctxdistill.config import load_config
    from ctxdistill.recipes import DOC_RECIPES, RECIPES, recipe_defaults

    if args.recipe not in RECIPES:
        raise CtxDistillError(f"Unknown recipe '{args.recipe}'. Available: {', '.join(RECIPES)}.")
    if args.objective and args.recipe != "knowledge":
        raise CtxDistillError("--objective (dcd | ntp-doc | ntp-synth) is for the knowledge recipe; other recipes "
                              "take --set objective=TERM.")
    cfg = load_config(args.config, args.set, defaults=recipe_defaults(args.recipe), model=args.model,
                      teacher=args.teacher, max_minutes=args.max_minutes, mode=args.mode,
                      knowledge_objective=args.objective)
    if args.recipe in DOC_RECIPES:
        if not args.docs:
            raise CtxDistillError(f"The {args.recipe} recipe learns from documents: pass --docs FILE_OR_FOLDER.")
        if args.recipe == "knowledge":
            from ctxdistill.recipes import knowledge

            summary = knowledge.run(cfg, args.docs, args.out, args.resume, args.qa, args.retention, args.per_document)
            if summary:
                print()
                print(summary["table"] or "(no questions: give the documents a \"qa\" list or pass --qa)")
                print(f"\nModule(s), manifest and report in {args.out}/")
            return
        if args.recipe == "disc":
            from ctxdistill.recipes import disc

            summary = disc.run(cfg, args.docs, args.out, args.resume, args.qa, args.retention, args.stream)
        else:
            from ctxdistill.recipes import baselines

            summary = baselines.run(args.recipe, cfg, args.docs, args.out, args.resume, args.qa, args.retention,
                                    args.stream)
        if summary:
            print()
            print(summary["table"])
            print(f"\nModel, manifest, curve and report in {args.out}/")
        return
    if args.recipe == "onpolicy":
        if len(args.context) != 1:
            raise CtxDistillError("The onpolicy recipe takes exactly one --context FILE.")
        from ctxdistill.recipes import onpolicy

        summary = onpolicy.run(cfg, args.context[0], args.prompts, args.out, resume=args.resume,
                               eval_file=args.eval, retention_file=args.retention)
        if summary:
            print()
            print(summary["table"] or "(no eval questions: pass --eval FILE or put an \"eval\" list in the context)")
            print(f"\nAdapter, manifest and report in {args.out}/")
        return
    if not args.context and not args.examples:
        raise CtxDistillError("Give at least one --context FILE, or --examples FILE.")
    from ctxdistill.recipes import offline

    summary = offline.run(cfg, args.context, args.prompts, args.out, resume=args.resume, eval_file=args.eval,
                          retention_file=args.retention, examples_file=args.examples, init_adapter=args.init_adapter)
    if summary:
        print()
        print(summary["table"] or "(no eval questions: pass --eval FILE or put an \"eval\" list in the context JSON)")
        print(f"\nAdapter, manifest and report in {args.out}/")


def _cmd_experience(args) -> None:
    from ctxdistill.config import load_config
    from ctxdistill.recipes import experience, recipe_defaults

    cfg = load_config(args.config, args.set, defaults=recipe_defaults("onpolicy"), model=args.model,
                      max_minutes=args.max_minutes)
    result = experience.run(cfg, args.tasks, args.out, checker=args.checker, resume=args.resume)
    print()
    print(result["table"])
    print(f"\nNotes, traces, consolidated adapter and report in {args.out}/")


def _cmd_compare(args) -> None:
    import json
    from pathlib import Path

    from ctxdistill.core.files import atomic_write_text
    from ctxdistill.recipes.doc_stream import curve_table, plot_curves

    runs = {}
    for run_dir in args.runs:
        path = Path(run_dir) / "manifest.json"
        if not path.is_file():
            raise CtxDistillError(f"{run_dir} has no manifest.json: pass output folders of finished distill runs.")
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if "curve" not in manifest.get("metrics", {}):
            raise CtxDistillError(f"{run_dir} is a {manifest.get('recipe')} run without a curve; compare takes runs "
                                  "of disc and its baselines.")
        name = manifest["recipe"]
        runs[name if name not in runs else f"{name} ({Path(run_dir).name})"] = manifest["metrics"]
    table = curve_table(runs)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(out / "compare.png", runs)
        atomic_write_text(out / "compare.md", "# Knowledge vs retention\n\n" + table + "\n\n![curves](compare.png)\n")
        print(f"\nWritten {out}/compare.md and compare.png")


def _load_with_adapters(model_name: str | None, adapters: list[str]):
    """The base model (from --model, else the adapters' base_model_name_or_path) with every adapter loaded and
    active (several modules: their deltas add up)."""
    from ctxdistill.core.models import load_model
    from ctxdistill.recipes.module_library import base_of, load_adapters, read_module

    if not adapters:
        model, tok, _ = load_model(model_name or "default")
        return model, tok
    for a in adapters:
        read_module(a)  # a clear error for a folder that is not an adapter, before any model is loaded
    model, tok, _ = load_model(base_of(adapters, model_name))
    return load_adapters(model, adapters), tok


def _cmd_eval(args) -> None:
    from ctxdistill.core.files import atomic_write_json, atomic_write_text
    from ctxdistill.data.inputs import read_context, read_qa

    if bool(args.context) == bool(args.docs):
        raise CtxDistillError("Give --context FILE (a distilled context) or --docs FILE (knowledge modules), one of "
                              "the two.")
    if args.docs:
        _eval_knowledge(args)
        return
    from ctxdistill.core.pairs import Context
    from ctxdistill.eval.evaluation import evaluate, results_table

    if not args.adapter or not args.qa:
        raise CtxDistillError("eval --context needs --adapter and --qa.")
    context = read_context(args.context)
    qa = read_qa(args.qa)
    retention = read_qa(args.retention, "--retention") if args.retention else None
    model, tok = _load_with_adapters(args.model, args.adapter)
    result = evaluate(model, tok, Context(context["context"], args.context_kind), qa, retention, args.max_new_tokens)
    table = results_table(result)
    print(table)
    if args.out:
        atomic_write_json(args.out + ".json", result)
        atomic_write_text(args.out + ".md", table + "\n")
        print(f"\nWritten {args.out}.md and {args.out}.json")


def _eval_knowledge(args) -> None:
    """Closed-book / open-book / retrieval, with and without the modules, and retention: a table and a chart."""
    from pathlib import Path

    from ctxdistill.core.files import atomic_write_json
    from ctxdistill.data.chunks import chunk_document
    from ctxdistill.data.documents import gather_qa, read_documents
    from ctxdistill.data.inputs import read_retention
    from ctxdistill.eval.evaluation import DriftProbe
    from ctxdistill.eval.knowledge_eval import (
        base_rows,
        knowledge_result,
        knowledge_table,
        module_rows,
        question_set,
        retention_rows,
        write_knowledge_report,
    )

    if not args.adapter:
        raise CtxDistillError("eval --docs needs at least one --adapter (a module folder).")
    docs = read_documents(args.docs)
    items = [(d if d != "*" else None, x) for d, qs in gather_qa(docs, args.qa).items() for x in qs]
    if not items:
        raise CtxDistillError(f"No questions: the documents in {args.docs} have no \"qa\" list; pass --qa FILE.")
    retention = read_retention(args.retention)
    model, tok = _load_with_adapters(args.model, args.adapter)
    chunks = [c for d in docs for c in chunk_document(tok, d.id, d.text, args.chunk_tokens, args.chunk_overlap)]
    qs = question_set(items, {d.id: d.text for d in docs}, chunks, args.top_k)
    probe = DriftProbe(model, tok, retention, args.max_new_tokens)
    rows = {**base_rows(model, tok, qs, args.max_new_tokens), **module_rows(model, tok, qs, args.max_new_tokens)}
    kept = probe.measure(model)
    result = knowledge_result(qs, rows, retention_rows(probe, [kept]))
    print(knowledge_table(result))
    if args.out:
        out = Path(args.out)
        lines = [f"- modules: {', '.join(f'`{a}`' for a in args.adapter)}", f"- documents: `{args.docs}`, "
                 f"{len(chunks)} chunks; retrieval: BM25, top {args.top_k}"]
        write_knowledge_report(out, "Knowledge modules: evaluation", lines, result)
        atomic_write_json(out / "eval.json", result)
        print(f"\nWritten {out}/report.md, report.png and eval.json")


def _cmd_chat(args) -> None:
    from ctxdistill.core.pairs import Context
    from ctxdistill.data.inputs import read_context
    from ctxdistill.eval.evaluation import answers

    model, tok = _load_with_adapters(args.model, args.adapter)
    context = Context(read_context(args.context)["context"], args.context_kind) if args.context else None
    if args.prompt is not None:
        print(answers(model, tok, [args.prompt], context, True, args.max_new_tokens)[0])
        return
    history: list[dict] = []
    print("Chat with the model (empty line or Ctrl-D to quit).")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        history.append({"role": "user", "content": line})
        reply = answers(model, tok, [history], context, True, args.max_new_tokens)[0]
        history.append({"role": "assistant", "content": reply})
        print(f"model> {reply}")


def _cmd_modules_list(args) -> None:
    from ctxdistill.recipes.module_library import find_modules, modules_table

    found = find_modules(args.folder)
    print(modules_table(found) if found else f"No modules under {args.folder}.")


def _cmd_modules_show(args) -> None:
    import json

    from ctxdistill.recipes.module_library import read_module

    module = read_module(args.module)
    module.pop("config", None)
    print(json.dumps(module, indent=2))


def _cmd_modules_combine(args) -> None:
    from ctxdistill.recipes.module_library import combine

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError as e:
        raise CtxDistillError(f"--weights must be comma-separated numbers, got {args.weights!r}.") from e
    target = combine(args.modules, args.out, weights, args.how, args.rank, args.model)
    print(f"Combined {len(args.modules)} modules ({args.how}) into {target} (a plain PEFT adapter).")


def _cmd_model_path(args) -> None:
    from ctxdistill.core.models import resolve_model

    print(resolve_model(args.name)[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxdistill", description="Bake a context into a model's weights.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="run a distillation recipe")
    d.add_argument("recipe", help="offline | onpolicy | disc | finetune | finetune-kl | lora-finetune | knowledge")
    d.add_argument("--model", default=None, help="HF id, local directory, .gguf file, or 'default'")
    d.add_argument("--teacher", default=None,
                   help="another model as the teacher (same tokenizer; e.g. a bigger one), or 'live' (onpolicy: the "
                        "current student). Default: the model itself, adapter off")
    d.add_argument("--context", action="append", default=[],
                   help=".txt file, or .json with \"context\" (and optional \"prompts\", \"eval\"); repeat for several")
    d.add_argument("--mode", default=None, choices=["sequential", "ensemble"],
                   help="several contexts: one after another, or teachers mixed (default sequential)")
    d.add_argument("--examples", default=None, help=".jsonl of {\"input\", \"output\"}: few-shot examples as the context")
    d.add_argument("--init-adapter", default=None, help="start from this adapter (e.g. to overwrite what it holds)")
    d.add_argument("--prompts", default=None, help=".jsonl of {\"prompt\"} or .txt, one per line; synthesized if absent")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--max-minutes", type=float, default=None, help="wall-clock budget for generation + training")
    d.add_argument("--config", default=None, help="YAML file with config keys (see configs/)")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    d.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    d.add_argument("--eval", default=None, help="QA JSON for the before/after report (default: the context's \"eval\")")
    d.add_argument("--retention", default=None, help="QA JSON of general questions (default: a bundled set)")
    d.add_argument("--docs", default=None,
                   help="disc and baselines: .jsonl/.json of {\"id\", \"text\", optional \"qa\"}, or a folder of "
                        ".txt/.md")
    d.add_argument("--stream", action="store_true",
                   help="disc and baselines: documents arrive in order, docs_per_batch at a time, evaluated after each")
    d.add_argument("--qa", default=None,
                   help="disc and baselines: more QA, {\"q\", \"a\", optional \"doc\": id} (documents' own \"qa\" "
                        "are used too)")
    d.add_argument("--per-document", action="store_true",
                   help="knowledge: one module per document (OUT/modules/ID) instead of one for the corpus (OUT/adapter)")
    d.add_argument("--objective", default=None, choices=["dcd", "ntp-doc", "ntp-synth"],
                   help="knowledge: deep context distillation (default), or a next-token baseline on the document "
                        "text (ntp-doc) or on the synthetic QA/summaries + the text (ntp-synth)")
    d.set_defaults(func=_cmd_distill)

    x = sub.add_parser("experience", help="solve tasks, write notes from the traces, keep the best, consolidate")
    x.add_argument("--tasks", required=True, help='.jsonl of {"prompt", "answer"}')
    x.add_argument("--checker", default="exact",
                   help="exact | contains | number | regex | module:function(prompt, response, answer) -> bool")
    x.add_argument("--model", default=None)
    x.add_argument("--out", required=True)
    x.add_argument("--max-minutes", type=float, default=None, help="budget of the consolidation (onpolicy) run")
    x.add_argument("--config", default=None)
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    x.add_argument("--resume", action="store_true")
    x.set_defaults(func=_cmd_experience)

    k = sub.add_parser("compare", help="one table and one figure (knowledge vs retention) for several doc runs")
    k.add_argument("runs", nargs="+", help="output folders of disc / baseline runs")
    k.add_argument("--out", default=None, help="write OUT/compare.md and OUT/compare.png")
    k.set_defaults(func=_cmd_compare)

    e = sub.add_parser("eval", help="base vs teacher vs student on a QA file; or knowledge modules on --docs")
    e.add_argument("--adapter", action="append", default=[],
                   help="adapter / module folder; repeat to load several at once (their deltas add up)")
    e.add_argument("--context", default=None, help="the distilled context (offline/onpolicy adapters)")
    e.add_argument("--docs", default=None,
                   help="knowledge modules: the documents (closed-book, open-book and BM25 retrieval rows)")
    e.add_argument("--qa", default=None, help="QA JSON ({\"q\", \"a\"}; with --docs optional: the documents' own qa)")
    e.add_argument("--retention", default=None, help="general questions (default with --docs: a bundled set)")
    e.add_argument("--top-k", type=int, default=1, help="--docs: chunks retrieved per question")
    e.add_argument("--chunk-tokens", type=int, default=512, help="--docs: chunk size for retrieval, in tokens")
    e.add_argument("--chunk-overlap", type=int, default=64)
    e.add_argument("--model", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    e.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--out", default=None,
                   help="write OUT.md (table) and OUT.json (answers); with --docs a folder: report.md/.png, eval.json")
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("chat", help="talk to a model with an adapter")
    c.add_argument("--adapter", action="append", default=[],
                   help="OUT/adapter of a distill run or a module; repeat to load several (omit for the base model)")
    c.add_argument("--model", default=None)
    c.add_argument("--prompt", default=None, help="answer this once and exit")
    c.add_argument("--context", default=None, help="show a context too (to compare with the teacher)")
    c.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.set_defaults(func=_cmd_chat)

    lib = sub.add_parser("modules", help="knowledge modules: list, show, combine")
    lib_sub = lib.add_subparsers(dest="action", required=True)
    ls = lib_sub.add_parser("list", help="every module under a folder, as a table")
    ls.add_argument("folder")
    ls.set_defaults(func=_cmd_modules_list)
    sh = lib_sub.add_parser("show", help="one module's manifest")
    sh.add_argument("module")
    sh.set_defaults(func=_cmd_modules_show)
    cb = lib_sub.add_parser("combine", help="one PEFT adapter from several modules")
    cb.add_argument("modules", nargs="+")
    cb.add_argument("--out", required=True)
    cb.add_argument("--how", default="cat", choices=["cat", "sum"],
                    help="cat: concatenate (exact sum of the deltas, rank = sum of ranks); sum: weighted sum of the "
                         "deltas truncated by SVD to --rank")
    cb.add_argument("--weights", default=None, help="comma-separated, one per module (default: all 1)")
    cb.add_argument("--rank", type=int, default=None, help="sum: rank of the result (default: the largest input)")
    cb.add_argument("--model", default=None, help="base model (default: the modules' own)")
    cb.set_defaults(func=_cmd_modules_combine)

    m = sub.add_parser("model-path", help="print where a model lives (converts the default once)")
    m.add_argument("name", nargs="?", default="default")
    m.set_defaults(func=_cmd_model_path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CtxDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
