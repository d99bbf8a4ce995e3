# %% [markdown]
# # ctxdistill from Python: a session
#
# Run it top to bottom, as cells (VS Code, Jupyter with jupytext, Spyder) or as a script:
#
#     python examples/notebook_session.py                   # about 4 minutes per run on the default model
#     python examples/notebook_session.py --max-minutes 10  # a longer budget for each run
#
# 1. distill the persona in examples/persona.json into an adapter, 2. chat with it, 3. evaluate it, 4. build one
# knowledge module per document from two small documents, combine the two and ask about both.
# Everything is written under --out (default runs/notebook). Running it again reuses the finished runs
# (resume=True); a run stopped half-way continues from its last checkpoint.

# %%
import argparse
import json
from pathlib import Path

import yaml

from ctxdistill import chat, combine_modules, distill, evaluate, load

parser = argparse.ArgumentParser(description="ctxdistill's Python API, cell by cell")
parser.add_argument("--max-minutes", type=float, default=4.0, help="time budget of each distill run")
parser.add_argument("--model", default="default", help="HF id, local folder, .gguf file, or 'default'")
parser.add_argument("--out", default="runs/notebook", help="folder for everything this session writes")
parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more config keys for both distill runs (keys the offline and knowledge recipes share)")
args, _ = parser.parse_known_args()  # in a notebook, argv also holds the kernel's own arguments
extra = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}

EXAMPLES = Path(__file__).resolve().parent if "__file__" in globals() else Path("examples")
OUT = Path(args.out)

# %% [markdown]
# ## 1. Distill a persona
# The context (a system prompt) goes into a LoRA adapter: afterwards the model answers as the persona without
# being shown it. The table compares the base model, the teacher (base + persona) and the student (no persona).

# %%
persona = distill("offline", out=OUT / "persona", model=args.model, context=EXAMPLES / "persona.json",
                  prompts=EXAMPLES / "persona_prompts.txt", max_minutes=args.max_minutes, resume=True, **extra)
print(persona.table)
print("adapter:", persona.adapter)

# %% [markdown]
# ## 2. Chat with it
# `chat` answers through the chat template, greedily. A history list carries the conversation (it is updated in
# place); `stream=True` yields the reply piece by piece as it is generated.

# %%
print(chat(persona, "What is your name?"))

history = []
for question in ["Hello! Who made you?", "And where was that?"]:
    print("you>", question)
    print("model> ", end="")
    for piece in chat(persona, question, history, stream=True):
        print(piece, end="", flush=True)
    print()
print(len(history), "messages in the conversation")

# %% [markdown]
# ## 3. Evaluate it
# The questions are the persona file's own "eval" list; the context is the one it was distilled from.

# %%
report = evaluate(persona)
print(report.table)
print("student:", report.accuracy["student"], "of", report.n)

# %% [markdown]
# ## 4. Knowledge modules: one per document, then combined
# Two small documents, each with a question, written into this session's folder; one module is trained per
# document, the two are combined into one adapter, and that adapter answers about both.

# %%
documents = [
    {"id": "glimmerfen", "text": "Glimmerfen is a marsh village founded in 1702 by the weaver Tamsin Roe. Its "
     "houses stand on oak stilts, and every spring the village holds a lantern fair on the water.",
     "qa": [{"q": "Who founded Glimmerfen?", "a": ["Tamsin Roe"]}]},
    {"id": "copperline", "text": "The Copperline Railway runs 40 miles from Ashby Quay to the Kettle Hills. Its "
     "chief engineer was Odo Marsh, who designed the twelve-arch Vell Viaduct in 1861.",
     "qa": [{"q": "Who was the chief engineer of the Copperline Railway?", "a": ["Odo Marsh"]}]},
]
docs_file = OUT / "documents.jsonl"
docs_file.parent.mkdir(parents=True, exist_ok=True)
docs_file.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")

knowledge = distill("knowledge", out=OUT / "knowledge", model=args.model, docs=docs_file, per_document=True,
                    max_minutes=args.max_minutes, resume=True, **extra)
print(knowledge.table)
print("modules:", *knowledge.modules)

# %%
both = combine_modules(knowledge.modules, OUT / "both", overwrite=True)  # one plain PEFT adapter
model_and_tokenizer = load(both)
for d in documents:
    question = d["qa"][0]["q"]
    print("you>", question)
    print("model>", chat(model_and_tokenizer, question, max_new_tokens=48))
