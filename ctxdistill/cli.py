"""`ctxdistill` command line: distill, experience, compare, eval, chat, model-path."""

from __future__ import annotations

import argparse
import sys

from ctxdistill import CtxDistillError


def _cmd_distill(args) -> None:
    from ctxdistill.config import load_config
    from ctxdistill.recipes import DOC_RECIPES, RECIPES, recipe_defaults

    if args.recipe not in RECIPES:
        raise CtxDistillError(f"Unknown recipe '{args.recipe}'. Available: {', '.join(RECIPES)}.")
    cfg = load_config(args.config, args.set, defaults=recipe_defaults(args.recipe), model=args.model,
                      teacher=args.teacher, max_minutes=args.max_minutes, mode=args.mode)
    if args.recipe in DOC_RECIPES:
        if not args.docs:
            raise CtxDistillError(f"The {args.recipe} recipe learns from documents: pass --docs FILE_OR_FOLDER.")
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

    from ctxdistill.io import atomic_write_text
    from ctxdistill.stream import curve_table, plot_curves

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


def _load_with_adapter(model_name: str | None, adapter: str | None):
    """The base model (from --model, else the adapter's base_model_name_or_path) with the adapter loaded."""
    import os

    from ctxdistill.models import load_model

    if not adapter:
        model, tok, _ = load_model(model_name or "default")
        return model, tok
    from peft import PeftConfig

    from ctxdistill.models import load_adapter

    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise CtxDistillError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json). Pass OUT/adapter "
                              "of a distill run.")
    base = model_name or PeftConfig.from_pretrained(adapter).base_model_name_or_path
    model, tok, _ = load_model(base)
    model = load_adapter(model, adapter)
    model.eval()
    return model, tok


def _cmd_eval(args) -> None:
    from ctxdistill.evaluation import evaluate, results_table
    from ctxdistill.io import atomic_write_json, atomic_write_text, read_context, read_qa
    from ctxdistill.pairs import Context

    context = read_context(args.context)
    qa = read_qa(args.qa)
    retention = read_qa(args.retention, "--retention") if args.retention else None
    model, tok = _load_with_adapter(args.model, args.adapter)
    result = evaluate(model, tok, Context(context["context"], args.context_kind), qa, retention, args.max_new_tokens)
    table = results_table(result)
    print(table)
    if args.out:
        atomic_write_json(args.out + ".json", result)
        atomic_write_text(args.out + ".md", table + "\n")
        print(f"\nWritten {args.out}.md and {args.out}.json")


def _cmd_chat(args) -> None:
    from ctxdistill.evaluation import answers
    from ctxdistill.io import read_context
    from ctxdistill.pairs import Context

    model, tok = _load_with_adapter(args.model, args.adapter)
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


def _cmd_model_path(args) -> None:
    from ctxdistill.models import resolve_model

    print(resolve_model(args.name)[0])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxdistill", description="Bake a context into a model's weights.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("distill", help="run a distillation recipe")
    d.add_argument("recipe", help="offline | onpolicy | disc | finetune | finetune-kl | lora-finetune")
    d.add_argument("--model", default=None, help="HF id, local directory, .gguf file, or 'default'")
    d.add_argument("--teacher", default=None,
                   help="another model as the teacher (same tokenizer; e.g. a bigger one), or 'live' (onpolicy: the "
                        "current student). Default: the model itself, adapter off")
    d.add_argument("--context", action="append", default=[],
                   help=".txt file, or .json with \"context\" (and optional \"prompts\", \"eval\"); repeat for several")
    d.add_argument("--mode", default=None, choices=["sequential", "ensemble"],
                   help="several contexts: one after another, or teachers averaged (default sequential)")
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

    e = sub.add_parser("eval", help="base vs teacher vs student on a QA file")
    e.add_argument("--adapter", required=True)
    e.add_argument("--context", required=True)
    e.add_argument("--qa", required=True)
    e.add_argument("--retention", default=None)
    e.add_argument("--model", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    e.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    e.add_argument("--max-new-tokens", type=int, default=48)
    e.add_argument("--out", default=None, help="write OUT.md (table) and OUT.json (answers)")
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("chat", help="talk to a model with an adapter")
    c.add_argument("--adapter", default=None, help="OUT/adapter of a distill run (omit for the base model)")
    c.add_argument("--model", default=None)
    c.add_argument("--prompt", default=None, help="answer this once and exit")
    c.add_argument("--context", default=None, help="show a context too (to compare with the teacher)")
    c.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.set_defaults(func=_cmd_chat)

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
