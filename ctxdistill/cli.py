"""`ctxdistill` command line: distill, experience, compare, eval, chat, modules, model-path."""

from __future__ import annotations

import argparse
import shlex
import sys

from ctxdistill import CtxDistillError


INPUT_FLAGS = {  # a recipe's `run` keyword -> its `distill` flag and argparse settings
    "context": ("--context", dict(action="append", default=[], help=".txt file, or .json with \"context\" (and "
                                  "optional \"prompts\", \"eval\"); repeat for several")),
    "examples": ("--examples", dict(help=".jsonl of {\"input\", \"output\"}: few-shot examples as the context")),
    "init_adapter": ("--init-adapter", dict(help="start from this adapter (e.g. to overwrite what it holds)")),
    "prompts": ("--prompts", dict(help=".jsonl of {\"prompt\"} or .txt, one per line, or a dataset; synthesized if "
                                       "absent")),
    "eval_qa": ("--eval", dict(help="QA JSON or a dataset, for the before/after report (default: the context's "
                                    "\"eval\")")),
    "retention": ("--retention", dict(help="QA JSON or a dataset of general questions (default: a bundled set)")),
    "docs": ("--docs", dict(help=".jsonl/.json of {\"id\", \"text\", optional \"qa\"}, a folder of .txt/.md, or a "
                                 "dataset")),
    "stream": ("--stream", dict(action="store_true", help="documents arrive in order, docs_per_batch at a time, "
                                                          "evaluated after each")),
    "qa": ("--qa", dict(help="more QA, {\"q\", \"a\", optional \"doc\": id} (documents' own \"qa\" are used too)")),
    "per_document": ("--per-document", dict(action="store_true", help="knowledge: one module per document "
                                            "(OUT/modules/...) instead of one for the corpus")),
    "tasks": ("--tasks", dict(help='experience: .jsonl of {"prompt", "answer"}, or a dataset')),
    "checker": ("--checker", dict(help="experience: exact | contains | number | regex | module:function(prompt, "
                                       "response, answer) -> bool")),
    "data": ("--data", dict(help='sft: .jsonl of {"input", "output"} or {"messages": [...]} (--eval: the same '
                                 'shape, scored by exact match); onpolicy, offline: .jsonl or a dataset of '
                                 '{"prompt", "privileged_context"} (TRL SDFT), "privileged_messages", '
                                 '"demonstration" or "solution": a teacher-only context per row')),
}
CONFIG_FLAGS = {  # config keys that have a flag of their own
    "model": ("--model", dict(help="HF id, local directory, .gguf file, or 'default'")),
    "teacher": ("--teacher", dict(help="another model as the teacher (same tokenizer), or 'live' (onpolicy)")),
    "teacher_adapter": ("--teacher-adapter", dict(help="a PEFT adapter folder: the teacher is the base with it on")),
    "mode": ("--mode", dict(choices=["sequential", "ensemble"], help="offline, several contexts: one after "
                                                                     "another, or teachers mixed")),
    "max_minutes": ("--max-minutes", dict(type=float, help="wall-clock budget for generation + training")),
    "knowledge_objective": ("--objective", dict(choices=["dcd", "ntp-doc", "ntp-synth"],
                                                help="knowledge: deep context distillation (default) or a "
                                                     "next-token baseline")),
}

# A dataset input (a parquet/arrow/csv/tsv file, a dataset folder or a cached id; docs/datasets.md) is read through a
# column mapping: its key -> the inputs (INPUT_FLAGS names) that read that column. The flags are --KEY-column.
COLUMN_INPUTS = {"prompt": ("prompts", "tasks"), "text": ("docs",), "id": ("docs",),
                 "question": ("eval_qa", "retention", "qa"), "answer": ("eval_qa", "retention", "qa", "tasks"),
                 "input": ("examples",), "output": ("examples",)}


def _given(value) -> bool:
    return value not in (None, False, [], "")


def run_distill(recipe_name: str, out, *, inputs: dict, config_file: str | None = None, sets: list[str] = (),
                flags: dict | None = None, resume: bool = False, columns: dict | None = None):
    """`distill`'s checks and run, shared by the command and the Python API (`ctxdistill.distill`), so both refuse
    the same things with the same words. `inputs` is keyed by INPUT_FLAGS names (the recipe's `run` keywords),
    `flags` by CONFIG_FLAGS names; `sets` are `key=value` strings. Returns the recipe's RunResult (None off the
    main process). `columns` maps the columns of inputs given as datasets (keys of COLUMN_INPUTS, and "split")."""
    from ctxdistill.config import load_config
    from ctxdistill.recipes import get_recipe, registry
    from ctxdistill.recipes.common import holding_out_dir

    recipe = get_recipe(recipe_name)
    for name in INPUT_FLAGS:
        if _given(inputs.get(name)) and name not in recipe.inputs:
            owners = [r.name for r in registry().values() if name in r.inputs]
            takes = ", ".join(INPUT_FLAGS[k][0] for k in recipe.inputs)
            raise CtxDistillError(f"{INPUT_FLAGS[name][0]} is an input of the {', '.join(owners)} "
                                  f"recipe{'s' if len(owners) > 1 else ''}; the "
                                  f"{recipe.name} recipe takes {takes}.")
    columns = _check_columns(recipe, columns)
    cfg = load_config(recipe.name, config_file, list(sets), **(flags or {}))
    with holding_out_dir(out):  # the run's lock on --out goes when it ends, however it ends
        return recipe.run(cfg, out, resume, **{k: inputs.get(k) for k in recipe.inputs},
                          **({"columns": columns} if columns else {}))  # recipes without datasets need no keyword


def _check_columns(recipe, columns: dict | None) -> dict:
    """The column mapping, each column refused for a recipe that has no input reading it."""
    from ctxdistill.data.hf_datasets import ROLES, check_columns

    columns = check_columns(columns)
    for key in columns.keys() & COLUMN_INPUTS.keys():
        if not set(COLUMN_INPUTS[key]) & set(recipe.inputs):
            readers = ", ".join(INPUT_FLAGS[k][0] for k in COLUMN_INPUTS[key])
            raise CtxDistillError(f"{ROLES[key].flag} names a column of {readers}; the {recipe.name} recipe takes "
                                  f"{', '.join(INPUT_FLAGS[k][0] for k in recipe.inputs)}.")
    return columns


def _columns(args) -> dict:
    """The column mapping given by --KEY-column flags and --split."""
    given = {key: getattr(args, f"{key}_column", None) for key in COLUMN_INPUTS}
    return {k: v for k, v in {**given, "split": getattr(args, "split", None)}.items() if v}


def _cmd_distill(args) -> None:
    _print_result(run_distill(args.recipe, args.out, inputs={k: getattr(args, k) for k in INPUT_FLAGS},
                              config_file=args.config, sets=args.set,
                              flags={k: getattr(args, k) for k in CONFIG_FLAGS}, resume=args.resume,
                              columns=_columns(args)))


def _print_result(result) -> None:
    if result is None:  # not the main process
        return
    print()
    print(result.table or result.no_table)
    print(f"\n{', '.join(result.artifacts)} in {result.out}/")


def _cmd_experience(args) -> None:
    from ctxdistill.config import load_config
    from ctxdistill.recipes import get_recipe

    from ctxdistill.recipes.common import holding_out_dir

    cfg = load_config("experience", args.config, args.set, model=args.model, max_minutes=args.max_minutes)
    with holding_out_dir(args.out):
        _print_result(get_recipe("experience").run(cfg, args.out, args.resume, tasks=args.tasks,
                                                   checker=args.checker, columns=_columns(args)))


CURVE_POINT = ("docs_seen", "steps", "knowledge", "questions", "retention", "retention_n", "kl_to_initial")


def _curve_run(run_dir: str) -> tuple[str, dict]:
    """(recipe, metrics) of a finished disc / baseline run, its manifest and curve checked first, so that a damaged
    or unfinished run is named instead of failing halfway through the table or the figure."""
    import json
    import math
    from pathlib import Path

    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise CtxDistillError(f"{run_dir} has no manifest.json: pass output folders of finished distill runs.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtxDistillError(f"{path} is not valid JSON ({e}), so the run {run_dir} cannot be compared. Pass "
                              "output folders of finished distill runs.") from e
    metrics = manifest.get("metrics") if isinstance(manifest, dict) else None
    if not isinstance(metrics, dict) or not isinstance(manifest.get("recipe"), str):
        raise CtxDistillError(f"{path} has no \"recipe\" and \"metrics\": it is not the manifest of a finished "
                              f"distill run, so {run_dir} cannot be compared.")
    if "curve" not in metrics:
        raise CtxDistillError(f"{run_dir} is a {manifest['recipe']} run without a curve; compare takes runs of disc "
                              "and its baselines.")
    curve = metrics["curve"]
    if not isinstance(curve, list) or not curve:
        raise CtxDistillError(f"{path}: metrics.curve is empty, so {run_dir} cannot be compared. Pass finished runs.")
    for n, point in enumerate(curve):
        values = [point.get(k) if isinstance(point, dict) else None for k in CURVE_POINT]
        bad = [k for k, v in zip(CURVE_POINT, values)
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad or values[CURVE_POINT.index("retention_n")] <= 0:
            raise CtxDistillError(f"{path}: point {n} of metrics.curve is incomplete (" + (
                f"no number for {', '.join(bad)}" if bad else "retention_n is 0") + f"), so {run_dir} cannot be "
                "compared. Pass finished runs, or run it again with --resume to complete it.")
    return manifest["recipe"], metrics


def _cmd_compare(args) -> None:
    from pathlib import Path

    from ctxdistill.core.files import atomic_write_text
    from ctxdistill.recipes.doc_stream import curve_table, plot_curves

    runs, seen = {}, set()
    for run_dir in args.runs:
        if Path(run_dir).resolve() in seen:
            raise CtxDistillError(f"{run_dir} is given twice; pass each run once.")
        seen.add(Path(run_dir).resolve())
        recipe, metrics = _curve_run(run_dir)
        # Runs of one recipe each keep a row of their own: the folder's name, else its path, tells them apart.
        names = (recipe, f"{recipe} ({Path(run_dir).name})", f"{recipe} ({run_dir})", f"{recipe} #{len(runs) + 1}")
        runs[next(n for n in names if n not in runs)] = metrics
    table = curve_table(runs)
    print(table)
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise CtxDistillError(f"--out {out} is a file; pass a folder for compare.md and compare.png.")
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(out / "compare.png", runs)
        atomic_write_text(out / "compare.md", "# Knowledge vs retention\n\n" + table + "\n\n![curves](compare.png)\n")
        print(f"\nWritten {out}/compare.md and compare.png")


def _load_with_adapters(model_name: str | None, adapters: list[str]):
    """The base model (from --model, else the adapters' base_model_name_or_path) with every adapter loaded and
    active (several modules: their deltas add up)."""
    from ctxdistill.api import load

    return load(adapters, model=model_name)


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
    qa = read_qa(args.qa, "--qa", _columns(args))
    retention = read_qa(args.retention, "--retention", _columns(args)) if args.retention else None
    model, tok = _load_with_adapters(args.model, args.adapter)
    backend = _eval_engine(args, model, tok)
    try:
        result = evaluate(model, tok, Context(context["context"], args.context_kind), qa, retention,
                          args.max_new_tokens, backend=backend)
    finally:
        if backend is not None:
            backend.close()
    table = results_table(result)
    print(table)
    if args.out:
        atomic_write_json(args.out + ".json", result)
        atomic_write_text(args.out + ".md", table + "\n")
        print(f"\nWritten {args.out}.md and {args.out}.json")


def _eval_engine(args, model, tok):
    """--generation-backend: llama.cpp for the answers where it resolves to it (a GGUF-based base on the CPU, the
    extra installed); None: the torch loop. The result's eval_backend says which answered each row."""
    from ctxdistill.core.generation import chosen_engine
    from ctxdistill.recipes.module_library import base_of

    return chosen_engine(args.generation_backend, model, tok, base=base_of(args.adapter, args.model),
                         device=next(model.parameters()).device, outtype=args.llamacpp_outtype)


def _eval_knowledge(args) -> None:
    """Closed-book / open-book / retrieval, with and without the modules, and retention: a table and a chart."""
    from pathlib import Path

    from ctxdistill.core.files import atomic_write_json
    from ctxdistill.data.chunks import chunk_document
    from ctxdistill.data.documents import gather_qa, read_documents
    from ctxdistill.data.inputs import read_retention
    from ctxdistill.eval.evaluation import DriftProbe
    from ctxdistill.eval import knowledge_eval

    if not args.adapter:
        raise CtxDistillError("eval --docs needs at least one --adapter (a module folder).")
    docs = read_documents(args.docs, _columns(args))
    items = [(d if d != "*" else None, x) for d, qs in gather_qa(docs, args.qa, _columns(args)).items() for x in qs]
    if not items:
        raise CtxDistillError(f"No questions: the documents in {args.docs} have no \"qa\" list; pass --qa FILE.")
    retention = read_retention(args.retention, _columns(args))
    model, tok = _load_with_adapters(args.model, args.adapter)
    chunks = [c for d in docs for c in chunk_document(tok, d.id, d.text, args.chunk_tokens, args.chunk_overlap)]
    qs = knowledge_eval.question_set(items, {d.id: d.text for d in docs}, chunks, args.top_k)
    probe = DriftProbe(model, tok, retention, args.max_new_tokens)
    rows = {**knowledge_eval.base_rows(model, tok, qs, args.max_new_tokens),
            **knowledge_eval.module_rows(model, tok, qs, args.max_new_tokens)}
    kept = probe.measure(model)
    result = knowledge_eval.knowledge_result(qs, rows, knowledge_eval.retention_rows(probe, [kept]))
    print(knowledge_eval.knowledge_table(result))
    if args.out:
        out = Path(args.out)
        lines = [f"- modules: {', '.join(f'`{a}`' for a in args.adapter)}", f"- documents: `{args.docs}`, "
                 f"{len(chunks)} chunks; retrieval: BM25, top {args.top_k}"]
        knowledge_eval.write_knowledge_report(out, "Knowledge modules: evaluation", lines, result)
        atomic_write_json(out / "eval.json", result)
        print(f"\nWritten {out}/report.md, report.png and eval.json")


def _cmd_chat(args) -> None:
    """One answer (--prompt), or a conversation: each reply streams as it is generated, and the earlier turns go
    into the chat template with the new one (/reset clears them; the oldest go when they outgrow the window)."""
    from ctxdistill.api import chat, trim_history
    from ctxdistill.core.pairs import Context
    from ctxdistill.data.inputs import read_context

    context = Context(read_context(args.context)["context"], args.context_kind) if args.context else None
    model, tok = _load_with_adapters(args.model, args.adapter)

    def say(prompt: str, history: list[dict] | None = None) -> None:
        for piece in chat((model, tok), prompt, history, stream=True, context=context,
                          max_new_tokens=args.max_new_tokens):
            print(piece, end="", flush=True)
        print()

    if args.prompt is not None:
        say(args.prompt)
        return
    history: list[dict] = []
    print("Chat with the model (/reset clears the conversation; an empty line or Ctrl-D quits).")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/reset":
            history.clear()
            print("(conversation cleared)")
            continue
        try:
            notice = trim_history(model, tok, history, line, context=context, max_new_tokens=args.max_new_tokens)
        except CtxDistillError as e:  # this message cannot be answered; the conversation goes on
            print(f"error: {e}", file=sys.stderr)
            continue
        if notice:
            print(notice)
        print("model> ", end="", flush=True)
        say(line, history)


def _cmd_modules_list(args) -> None:
    from ctxdistill.recipes.module_library import find_modules, modules_table

    found, problems = find_modules(args.folder)
    for problem in problems:
        print(f"warning: skipped a module that cannot be read: {problem}", file=sys.stderr)
    print(modules_table(found) if found else f"No modules under {args.folder}.")


def _cmd_modules_show(args) -> None:
    import json

    from ctxdistill.recipes.module_library import read_module

    module = read_module(args.module)
    module.pop("config", None)
    print(json.dumps(module, indent=2))


def _cmd_modules_combine(args) -> None:
    import math

    from ctxdistill.recipes.module_library import combine

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    except ValueError as e:
        raise CtxDistillError(f"--weights must be comma-separated numbers, got {args.weights!r}.") from e
    if weights and not all(math.isfinite(w) for w in weights):
        raise CtxDistillError(f"--weights must be finite numbers, got {args.weights!r}.")
    target = combine(args.modules, args.out, weights, args.how, args.rank, args.model, args.overwrite)
    print(f"Combined {len(args.modules)} modules ({args.how}) into {target} (a plain PEFT adapter).")


def _whole_number(minimum: int):
    """An argparse type: a whole number >= `minimum`, refused with the value given and the bound."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value
    return parse


def _cmd_model_path(args) -> None:
    from ctxdistill.core.models import resolve_model

    print(resolve_model(args.name)[0])


def _add_run_flags(parser) -> None:
    """--out, --config, --set, --resume: what every training command takes."""
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--config", default=None, help="YAML file with config keys (see configs/)")
    # "extend": `--set a=1 b=2` and `--set a=1 --set b=2` give the same flat list of pairs.
    parser.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys; one or more pairs, --set may be repeated")
    parser.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")


def _add_column_flags(parser, keys) -> None:
    """--KEY-column for each column key, and --split: how inputs given as 🤗 datasets are read."""
    from ctxdistill.data.hf_datasets import ROLES

    for key in keys:
        parser.add_argument(ROLES[key].flag, dest=f"{key}_column", default=None, metavar="NAME",
                            help=f"dataset inputs: the column that holds {ROLES[key].what} (default: the first of "
                                 f"{', '.join(ROLES[key].names[:4])}{', ...' if len(ROLES[key].names) > 4 else ''})")
    parser.add_argument("--split", default=None, metavar="NAME",
                        help="dataset inputs with several splits: the split to read (or give SOURCE:SPLIT)")


def _add_distill(sub) -> None:
    from ctxdistill.recipes import registry

    recipes = registry()
    d = sub.add_parser("distill", help="run a distillation recipe", formatter_class=argparse.RawTextHelpFormatter,
                       epilog="recipes:\n" + "\n".join(f"  {r.name:14} {r.summary}\n  {'':14} takes "
                                                        + ", ".join(INPUT_FLAGS[k][0] for k in r.inputs)
                                                        for r in recipes.values()))
    d.add_argument("recipe", help=" | ".join(recipes))
    for name, (flag, kwargs) in {**CONFIG_FLAGS, **INPUT_FLAGS}.items():
        d.add_argument(flag, dest=name, **{"default": None, **kwargs})
    _add_column_flags(d, COLUMN_INPUTS)
    _add_run_flags(d)
    d.set_defaults(func=_cmd_distill)

    x = sub.add_parser("experience", help="solve tasks, write notes from the traces, keep the best, consolidate")
    x.add_argument("--tasks", required=True, help='.jsonl of {"prompt", "answer"}')
    x.add_argument("--checker", default="exact", help=INPUT_FLAGS["checker"][1]["help"])
    x.add_argument("--model", default=None)
    x.add_argument("--max-minutes", type=float, default=None, help="budget of the consolidation (onpolicy) run")
    _add_column_flags(x, ("prompt", "answer"))
    _add_run_flags(x)
    x.set_defaults(func=_cmd_experience)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="base vs teacher vs student on a QA file; or knowledge modules on --docs")
    e.add_argument("--adapter", action="append", default=[],
                   help="adapter / module folder; repeat to load several at once (their deltas add up)")
    e.add_argument("--context", default=None, help="the distilled context (offline/onpolicy adapters)")
    e.add_argument("--docs", default=None,
                   help="knowledge modules: the documents (closed-book, open-book and BM25 retrieval rows)")
    e.add_argument("--qa", default=None, help="QA JSON ({\"q\", \"a\"}; with --docs optional: the documents' own qa)")
    e.add_argument("--retention", default=None, help="general questions (default with --docs: a bundled set)")
    e.add_argument("--top-k", type=_whole_number(1), default=1, help="--docs: chunks retrieved per question")
    e.add_argument("--chunk-tokens", type=_whole_number(1), default=512,
                   help="--docs: chunk size for retrieval, in tokens")
    e.add_argument("--chunk-overlap", type=_whole_number(0), default=64,
                   help="--docs: tokens shared by consecutive chunks (< --chunk-tokens)")
    e.add_argument("--model", default=None, help="base model (default: the adapter's base_model_name_or_path)")
    e.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    e.add_argument("--max-new-tokens", type=_whole_number(1), default=48)
    e.add_argument("--generation-backend", default="auto", choices=["auto", "torch", "llamacpp"],
                   help="--context: who decodes the answers (docs/generation.md); auto: llamacpp when installed, on "
                        "CPU, for a GGUF-based model")
    e.add_argument("--llamacpp-outtype", default="f16", choices=["f32", "f16", "bf16"],
                   help="--generation-backend llamacpp: the weights' GGUF type (f32: the exact mode)")
    e.add_argument("--out", default=None,
                   help="write OUT.md (table) and OUT.json (answers); with --docs a folder: report.md/.png, eval.json")
    _add_column_flags(e, ("text", "id", "question", "answer"))
    e.set_defaults(func=_cmd_eval)

    k = sub.add_parser("compare", help="one table and one figure (knowledge vs retention) for several doc runs")
    k.add_argument("runs", nargs="+", help="output folders of disc / baseline runs")
    k.add_argument("--out", default=None, help="write OUT/compare.md and OUT/compare.png")
    k.set_defaults(func=_cmd_compare)


def _add_chat(sub) -> None:
    c = sub.add_parser("chat", help="talk to a model with an adapter")
    c.add_argument("--adapter", action="append", default=[],
                   help="OUT/adapter of a distill run or a module; repeat to load several (omit for the base model)")
    c.add_argument("--model", default=None)
    c.add_argument("--prompt", default=None, help="answer this once and exit")
    c.add_argument("--context", default=None, help="show a context too (to compare with the teacher)")
    c.add_argument("--context-kind", default="system", choices=["system", "prefix", "document"])
    c.add_argument("--max-new-tokens", type=_whole_number(1), default=128)
    c.set_defaults(func=_cmd_chat)

    m = sub.add_parser("model-path", help="print where a model lives (converts the default once)")
    m.add_argument("name", nargs="?", default="default")
    m.set_defaults(func=_cmd_model_path)


def _add_modules(sub) -> None:
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
    cb.add_argument("--rank", type=_whole_number(1), default=None,
                    help="sum: rank of the result (default: the largest input)")
    cb.add_argument("--overwrite", action="store_true",
                    help="replace --out when it already holds a module (ctxdistill refuses any other folder)")
    cb.add_argument("--model", default=None, help="base model (default: the modules' own)")
    cb.set_defaults(func=_cmd_modules_combine)


def _cmd_export(args) -> None:
    from ctxdistill.core.export import export

    result = export(args.adapter, args.to, args.out, args.outtype, args.model, args.overwrite)
    print(f"Exported {args.adapter} ({args.to}) to {result.out}")
    if args.to == "gguf-lora":
        base = result.origin_gguf or f"a GGUF of {result.base}"
        print(f"llama.cpp: llama-cli -m {base} --lora {result.out}\nOllama Modelfile: FROM {base} / ADAPTER "
              f"{result.out}")
    elif args.to == "gguf":
        print(f"llama.cpp: llama-cli -m {result.out}\nOllama Modelfile: FROM {result.out}")


def _add_export(sub) -> None:
    from ctxdistill.core.export import DEFAULT_OUTTYPE, FORMATS, OUTTYPES

    x = sub.add_parser("export", help="an adapter as a GGUF LoRA, a merged GGUF, or a merged transformers folder")
    x.add_argument("--adapter", required=True,
                   help="OUT/adapter of a run, a module folder, or OUT/model of a full fine-tune")
    x.add_argument("--to", required=True, choices=FORMATS,
                   help="gguf-lora: llama.cpp --lora / Ollama ADAPTER file; gguf: base + adapter as one GGUF "
                        "model; merged: transformers folder with the adapter merged")
    x.add_argument("--out", required=True, help="the .gguf file to write (gguf, gguf-lora) or a new folder (merged)")
    x.add_argument("--outtype", choices=OUTTYPES, default=None,
                   help="weight type (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_OUTTYPE.items()) + ")")
    x.add_argument("--model", default=None,
                   help="base model (default: the one the run recorded); for --to gguf a .gguf file or 'default'")
    x.add_argument("--overwrite", action="store_true", help="replace an --out that an export wrote")
    x.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxdistill", description="Bake a context into a model's weights.")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_distill, _add_eval, _add_chat, _add_modules, _add_export):
        add(sub)
    return p


def _interrupted(argv: list[str], args) -> str:
    """The one line for Ctrl-C: where the run stopped and the command that continues it."""
    if getattr(args, "command", None) not in ("distill", "experience"):
        return "interrupted."
    from ctxdistill.recipes.common import where_stopped

    again = ["ctxdistill", *argv, *([] if "--resume" in argv else ["--resume"])]
    return f"interrupted: {where_stopped(args.out)}. Resume with: {shlex.join(again)}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except CtxDistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(argv, args), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
