"""Generation backends: the torch loop behind the backend interface, and llama.cpp decoding the same model.

The llama.cpp tests need the optional extra (`pip install 'ctxdistill[llamacpp]'`, or `make test-llamacpp`) and
are skipped without it. They run on a tiny random Llama with the default model's tokenizer, written as an f32 GGUF
(f32 KV cache too), so both backends compute the same logits up to the order of the arithmetic and greedy
completions agree token for token. Its weights are drawn wider than a fresh model's so that greedy completions
vary from token to token instead of repeating one token.
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext

import pytest
import torch

from conftest import tiny_llama
from ctxdistill import CtxDistillError
from ctxdistill.core.generation import TorchBackend, generate, make_backend
from ctxdistill.core.pairs import render_prompt

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (optional extra 'llamacpp'): `make test-llamacpp` installs it and "
           "runs these tests")

QUESTIONS = ["Hi there", "What is 2+2?", "Name a colour, please.", "Tell me about the sea and the sky."]


def varied_llama(tokenizer):
    model = tiny_llama(tokenizer)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return varied_llama(tokenizer)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [render_prompt(tokenizer, q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def gguf_file(model, tmp_path_factory):
    from ctxdistill.core.llamacpp import base_gguf
    from ctxdistill.core.models import default_gguf_file

    return base_gguf(model, "tiny", "f32", tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf",
                     vocab_from=default_gguf_file())


@pytest.fixture(scope="module")
def llama(model, tokenizer, gguf_file):
    from ctxdistill.core.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend.for_model(model, tokenizer, "tiny", "f32", gguf_file=gguf_file)
    yield backend
    backend.close()


def torch_greedy(model, tokenizer, prompts, **settings):
    return generate(model, tokenizer, prompts, temperature=0.0, show_progress=False, **settings)


# ------------------------------------------------------------------------------------- the interface, torch only

def test_the_torch_backend_is_the_decode_loop_behind_the_interface(model, tokenizer, prompts):
    backend = make_backend("torch", model, tokenizer)
    assert isinstance(backend, TorchBackend) and backend.name == "torch"
    settings = dict(max_new_tokens=10, temperature=1.0, seed=5, min_new_tokens=3, show_progress=False)
    assert backend.generate(prompts, **settings) == generate(model, tokenizer, prompts, **settings)
    other = varied_llama(tokenizer).requires_grad_(False)
    with torch.no_grad():
        other.lm_head.weight.mul_(-1)  # tied to the embeddings: a different model
    assert backend.generate(prompts, model=other, **settings) == generate(other, tokenizer, prompts, **settings)
    backend.use_lora(None)  # a no-op: the torch loop samples whatever model it is given


def test_an_unknown_backend_is_refused_with_the_choices(model, tokenizer):
    with pytest.raises(CtxDistillError, match="torch or llamacpp"):
        make_backend("vllm", model, tokenizer)


def test_the_llamacpp_backend_needs_a_gguf_tokenizer_for_a_transformers_folder(model, tokenizer, tmp_path):
    pytest.importorskip("gguf")
    from ctxdistill.core.llamacpp import base_gguf

    with pytest.raises(CtxDistillError, match="generation_backend: torch"):
        base_gguf(model, str(tmp_path), "f16", tmp_path / "x.gguf")


# ----------------------------------------------------------------------------------------------------- llama.cpp

@needs_llama_cpp
def test_greedy_completions_agree_with_the_torch_loop(llama, model, tokenizer, prompts):
    expected = torch_greedy(model, tokenizer, prompts, max_new_tokens=16)
    assert llama.generate(prompts, max_new_tokens=16, temperature=0.0, show_progress=False) == expected
    # several batches, sorted by length like the torch loop, come back in the prompts' order
    assert llama.generate(prompts, max_new_tokens=16, temperature=0.0, batch_size=3, show_progress=False) == expected


@needs_llama_cpp
def test_a_seed_reproduces_the_samples_and_another_seed_changes_them(llama, prompts):
    settings = dict(max_new_tokens=12, temperature=1.0, show_progress=False)
    first = llama.generate(prompts, seed=7, **settings)
    assert llama.generate(prompts, seed=7, **settings) == first
    assert llama.generate(prompts, seed=8, **settings) != first
    assert all(len(y) == 12 for y in first)


@needs_llama_cpp
def test_a_stop_token_ends_the_completion_and_min_new_tokens_holds_it_off(model, tokenizer, prompts, gguf_file):
    from ctxdistill.core.llamacpp import LlamaCppBackend

    greedy = torch_greedy(model, tokenizer, prompts[:1], max_new_tokens=8)[0]
    stop = greedy[2]  # the third greedy token: llama.cpp must stop right after it
    llama = LlamaCppBackend(gguf_file, [stop], model.config, kv_f32=True)
    try:
        out = llama.generate(prompts[:1], max_new_tokens=8, temperature=0.0, show_progress=False)[0]
        assert out == greedy[:3]
        held = llama.generate(prompts[:1], max_new_tokens=8, temperature=0.0, min_new_tokens=6,
                              show_progress=False)[0]
        assert len(held) >= 6 and stop not in held[:6] and held[:2] == greedy[:2]
    finally:
        llama.close()
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop
    try:  # the torch loop, told the same stop token, agrees
        assert torch_greedy(model, tokenizer, prompts[:1], max_new_tokens=8)[0] == out
        assert torch_greedy(model, tokenizer, prompts[:1], max_new_tokens=8, min_new_tokens=6)[0] == held
    finally:
        model.generation_config.eos_token_id = saved


@needs_llama_cpp
def test_context_amplified_greedy_agrees_with_the_torch_loop(llama, model, tokenizer):
    from ctxdistill.core.pairs import Context

    context = Context("You are Pip, who lives in a lighthouse.", "system")
    with_context = [render_prompt(tokenizer, q, context) for q in QUESTIONS]
    without = [render_prompt(tokenizer, q) for q in QUESTIONS]
    settings = dict(max_new_tokens=10, contrast=without, alpha=1.0)
    expected = torch_greedy(model, tokenizer, with_context, **settings)
    assert expected != torch_greedy(model, tokenizer, with_context, max_new_tokens=10)  # amplification matters
    assert llama.generate(with_context, temperature=0.0, show_progress=False, **settings) == expected


@needs_llama_cpp
def test_the_students_lora_swapped_in_gives_the_torch_adapters_greedy_output(llama, tokenizer, prompts):
    from ctxdistill.core.models import add_lora

    student = add_lora(varied_llama(tokenizer), r=4, alpha=8)
    torch.manual_seed(3)
    for step in range(2):  # an "update", then another: each swap follows the adapter's current weights
        with torch.no_grad():
            for name, p in student.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.2)
        student.eval()
        expected = torch_greedy(student, tokenizer, prompts, max_new_tokens=12)
        with student.disable_adapter():
            assert expected != torch_greedy(student, tokenizer, prompts, max_new_tokens=12)
        llama.use_lora(student)
        assert llama.generate(prompts, max_new_tokens=12, temperature=0.0, show_progress=False) == expected
    llama.use_lora(None)  # back to the base weights
    assert llama.generate(prompts, max_new_tokens=12, temperature=0.0, show_progress=False) == \
        torch_greedy(varied_llama(tokenizer), tokenizer, prompts, max_new_tokens=12)


# ------------------------------------------------------------------------------------------------ in the recipes

@pytest.fixture(scope="module")
def varied_model_dir(model, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("varied-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@needs_llama_cpp
def test_onpolicy_samples_the_current_student_and_the_teacher_through_llama_cpp(
        varied_model_dir, persona_files, tmp_path, monkeypatch, tokenizer):
    from ctxdistill.config import OnpolicyConfig
    from ctxdistill.core.llamacpp import base_gguf
    from ctxdistill.core.models import default_gguf_file, load_model
    from ctxdistill.recipes import onpolicy

    monkeypatch.setenv("CTXDISTILL_CACHE", str(tmp_path / "cache"))
    # A transformers folder has no GGUF to copy a tokenizer from: put its base GGUF where the run looks first,
    # with the default model's tokenizer, which it uses (a 'default' or .gguf --model needs no such step).
    base_gguf(load_model(str(varied_model_dir), "float32", "cpu")[0], str(varied_model_dir), "f32",
              vocab_from=default_gguf_file())
    cfg = OnpolicyConfig(model=str(varied_model_dir), dtype="float32", max_new_tokens=8, top_k=16, batch_size=4,
                         micro_batch_size=2, sample_temperature=0.0, offline_fraction=0.5,
                         generation_backend="llamacpp", llamacpp_outtype="f32")
    inputs = onpolicy.read_inputs(cfg, [str(persona_files["context"])], str(persona_files["prompts"]), None, None)
    models = onpolicy.open_models(cfg, tmp_path / "run", resume=False)
    queries = onpolicy.make_queries(cfg, inputs, models, tmp_path / "run")
    setup = onpolicy.set_up(cfg, models, queries)
    collate = onpolicy.SampleCollate(cfg, models, queries, setup)
    assert setup.backend.name == "llamacpp"
    sources = set()
    for step in range(6):  # an update before each step: every student step samples the student as it is now
        with torch.no_grad():
            for name, p in setup.student.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.3)
        samples = collate.sample(queries.texts)
        setup.student.eval()
        if samples.from_teacher:  # the base model with the context
            with setup.student.disable_adapter():
                expected = torch_greedy(setup.student, tokenizer,
                                        [queries.teacher_prompts[q] for q in queries.texts], max_new_tokens=8)
        else:
            expected = torch_greedy(setup.student, tokenizer, [queries.student_prompts[q] for q in queries.texts],
                                    max_new_tokens=8)
        assert samples.completions == expected
        sources.add(samples.from_teacher)
    assert sources == {True, False}


@needs_llama_cpp
def test_knowledge_data_is_sampled_through_the_backend_it_is_given(llama, model, tokenizer):
    from ctxdistill.core.pairs import Context
    from ctxdistill.data.chunks import Chunk
    from ctxdistill.data.synthetic import SynthSettings, synthesize_chunk

    chunk = Chunk("doc", 0, "Glimmerfen is a marsh town founded by Ada Reed in 1802. It is known for its lanterns.")
    settings = SynthSettings(("Summarize the document.",), 1, "Ask a question about the document.", 0, 0, 0.0, 12, 0)
    rows = synthesize_chunk(model, tokenizer, chunk, settings, backend=llama)
    expected = torch_greedy(model, tokenizer, [render_prompt(tokenizer, "Summarize the document.",
                                                             Context(chunk.text, "document"))], max_new_tokens=12)
    assert [row["completion_ids"] for row in rows] == expected


def test_offline_keeps_a_teacher_llama_cpp_cannot_hold_on_the_torch_loop_and_says_so(model, tokenizer):
    from types import SimpleNamespace

    from ctxdistill.config import OfflineConfig
    from ctxdistill.recipes.offline import teacher_backend

    printed = []
    other = tiny_llama(tokenizer, seed=1)
    run = SimpleNamespace(cfg=OfflineConfig(generation_backend="llamacpp"), other=other, init_adapter=None,
                          model=model, tokenizer=tokenizer, sampler=other,
                          accelerator=SimpleNamespace(print=printed.append, device=torch.device("cpu")))
    backend = teacher_backend(run)
    assert backend.name == "torch" and backend.model is other
    assert len(printed) == 1 and "torch loop" in printed[0] and "--teacher" in printed[0]


def test_auto_picks_llama_cpp_only_where_it_can_sample_the_model(monkeypatch, tmp_path):
    from ctxdistill.core import generation

    monkeypatch.setattr(generation, "llamacpp_installed", lambda: True)
    gguf = str(tmp_path / "model.gguf")
    assert generation.resolve_backend("auto", gguf, "cpu") == "llamacpp"
    assert generation.resolve_backend("auto", str(tmp_path / "hf-folder"), "cpu") == "torch"  # no GGUF to copy from
    assert generation.resolve_backend("auto", gguf, "cuda") == "torch"  # on a GPU the torch loop runs
    assert generation.resolve_backend("torch", gguf, "cpu") == "torch"  # an explicit choice stands
    monkeypatch.setattr(generation, "llamacpp_installed", lambda: False)
    assert generation.resolve_backend("auto", gguf, "cpu") == "torch"


# ------------------------------------------------------- evaluation, anchors and query synthesis through a backend

EVAL_QA = [{"q": q, "a": ["sea"]} for q in QUESTIONS[:3]]
RETENTION = [{"q": QUESTIONS[3], "a": ["sky"]}]
PIP = "You are Pip, who lives in a lighthouse."


def lora_student(tokenizer):
    """The varied model (the `llama` fixture's base weights) with a LoRA that changes its greedy answers."""
    from ctxdistill.core.models import add_lora

    student = add_lora(varied_llama(tokenizer), r=4, alpha=8)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return student.eval()


class EngineOnTorch:
    """A stand-in for an engine such as llama.cpp, on the torch loop: it samples the base weights, or the LoRA
    handed over with use_lora, and records each call (the weights it sampled, the number of prompts)."""

    name = "engine"

    def __init__(self, student, tokenizer):
        self.student, self.tokenizer, self.lora, self.calls = student, tokenizer, None, []

    def use_lora(self, peft_model):
        self.lora = peft_model

    def generate(self, prompts, **settings):
        self.calls.append(("lora" if self.lora is not None else "base", len(prompts)))
        with self.student.disable_adapter() if self.lora is None else nullcontext():
            return generate(self.student, self.tokenizer, prompts, **settings)

    def close(self):
        pass


class Recording:
    """A backend that passes every call on to `backend` and keeps the prompts it was asked to complete."""

    def __init__(self, backend):
        self.backend, self.name, self.prompts = backend, backend.name, []

    def generate(self, prompts, **settings):
        self.prompts += prompts
        return self.backend.generate(prompts, **settings)


def test_evaluation_answers_each_row_through_the_backend_it_is_given(tokenizer):
    from ctxdistill.core.pairs import Context
    from ctxdistill.eval.evaluation import evaluate

    student = lora_student(tokenizer)
    engine = EngineOnTorch(student, tokenizer)
    on_torch = evaluate(student, tokenizer, Context(PIP, "system"), EVAL_QA, RETENTION, max_new_tokens=8)
    got = evaluate(student, tokenizer, Context(PIP, "system"), EVAL_QA, RETENTION, max_new_tokens=8, backend=engine)
    assert on_torch["answers"]["student"] != on_torch["answers"]["base"]  # the student's LoRA has to be handed over
    assert got["answers"] == on_torch["answers"] and got["retention"]["answers"] == on_torch["retention"]["answers"]
    assert got["kl_to_teacher"] == on_torch["kl_to_teacher"]  # the same completions, scored by torch
    # teacher (the base with the context), base, student; then the retention questions: base, student
    assert engine.calls == [("base", 3), ("base", 3), ("lora", 3), ("base", 1), ("lora", 1)]
    assert on_torch["eval_backend"] == {"base": "torch", "teacher": "torch", "student": "torch"}
    assert got["eval_backend"] == {"base": "engine", "teacher": "engine", "student": "engine"}


def test_rows_an_engine_cannot_hold_are_answered_by_the_torch_loop_and_named(tokenizer, capsys):
    from ctxdistill.core.pairs import Context
    from ctxdistill.eval.evaluation import evaluate, row_backends

    student = lora_student(tokenizer)
    engine = EngineOnTorch(student, tokenizer)
    other = tiny_llama(tokenizer, seed=1)  # a teacher model of its own
    got = evaluate(student, tokenizer, Context(PIP, "system"), EVAL_QA, max_new_tokens=4, teacher_model=other,
                   backend=engine)
    assert got["eval_backend"] == {"base": "engine", "teacher": "torch", "student": "engine"}
    assert "teacher (a teacher model of its own) answered by the torch loop" in capsys.readouterr().out
    assert engine.calls == [("base", 3), ("lora", 3)]
    full = varied_llama(tokenizer)  # a fully fine-tuned student: no LoRA to hand over
    assert row_backends(full, engine)["student"] is None
    assert "student (not one LoRA adapter on the base)" in capsys.readouterr().out
    assert row_backends(full, make_backend("torch", full, tokenizer))["student"].name == "torch"  # torch holds all


def test_anchors_and_query_synthesis_sample_through_the_backend_they_are_given(model, tokenizer, tmp_path):
    from ctxdistill.config import OfflineConfig
    from ctxdistill.data.anchors import make_anchors
    from ctxdistill.data.queries import plan_queries

    (tmp_path / "anchors.txt").write_text("Write a haiku about rain.\nHow do magnets work?\n")
    cfg = OfflineConfig(anchor_prompts=str(tmp_path / "anchors.txt"), max_new_tokens=16)
    recording = Recording(TorchBackend(model, tokenizer))
    assert make_anchors(cfg, model, tokenizer, recording) == make_anchors(cfg, model, tokenizer)
    assert recording.prompts == [render_prompt(tokenizer, p) for p in ("Write a haiku about rain.",
                                                                       "How do magnets work?")]
    recording = Recording(TorchBackend(model, tokenizer))
    settings = dict(n=4, everyday_fraction=0.0, synthesized_fraction=0.5, probes_per_statement=1, seed=2)
    plan = plan_queries(model, tokenizer, PIP, backend=recording, **settings)
    expected = plan_queries(model, tokenizer, PIP, **settings)
    assert recording.prompts and plan.raw  # the model was asked to write queries, through the backend
    assert (plan.queries, plan.raw) == (expected.queries, expected.raw)


def test_offline_evaluates_with_its_llama_cpp_engine_or_makes_one_only_where_chosen(model, tokenizer):
    from types import SimpleNamespace

    from ctxdistill.config import OfflineConfig
    from ctxdistill.recipes.offline import eval_backend

    engine = EngineOnTorch(model, tokenizer)
    run = SimpleNamespace(backend=engine)
    assert eval_backend(run) is engine  # the teacher's engine answers the evaluation too: no second one
    run = SimpleNamespace(cfg=OfflineConfig(generation_backend="torch"), backend=TorchBackend(model, tokenizer),
                          model=model, tokenizer=tokenizer, accelerator=SimpleNamespace(device=torch.device("cpu")))
    assert eval_backend(run) is None  # the torch loop


@needs_llama_cpp
def test_evaluation_answers_through_llama_cpp_equal_the_torch_loops(llama, tokenizer):
    from ctxdistill.core.pairs import Context
    from ctxdistill.eval.evaluation import evaluate

    student = lora_student(tokenizer)
    try:
        got = evaluate(student, tokenizer, Context(PIP, "system"), EVAL_QA, RETENTION, max_new_tokens=8,
                       backend=llama)
    finally:
        llama.use_lora(None)  # the module's engine goes back to the base weights
    expected = evaluate(student, tokenizer, Context(PIP, "system"), EVAL_QA, RETENTION, max_new_tokens=8)
    assert expected["answers"]["student"] != expected["answers"]["base"]
    assert got["answers"] == expected["answers"]  # base, teacher (base + context), student (base + LoRA)
    assert got["retention"]["answers"] == expected["retention"]["answers"]
    assert got["eval_backend"] == {"base": "llamacpp", "teacher": "llamacpp", "student": "llamacpp"}


@needs_llama_cpp
def test_anchors_and_query_synthesis_accept_the_llama_cpp_backend(llama, model, tokenizer, tmp_path):
    from ctxdistill.config import OfflineConfig
    from ctxdistill.data.anchors import make_anchors
    from ctxdistill.data.queries import plan_queries

    (tmp_path / "anchors.txt").write_text("Write a haiku about rain.\nHow do magnets work?\n")
    cfg = OfflineConfig(anchor_prompts=str(tmp_path / "anchors.txt"), max_new_tokens=16)
    assert make_anchors(cfg, model, tokenizer, llama) == make_anchors(cfg, model, tokenizer)
    recording = Recording(llama)
    settings = dict(n=2, everyday_fraction=0.0, synthesized_fraction=1.0, temperature=0.0, seed=2)
    plan = plan_queries(model, tokenizer, PIP, backend=recording, **settings)
    expected = plan_queries(model, tokenizer, PIP, **settings)
    assert recording.prompts and plan.raw
    assert (plan.queries, plan.raw) == (expected.queries, expected.raw)


@needs_llama_cpp
def test_an_offline_run_uses_one_engine_for_queries_samples_anchors_and_evaluation(
        varied_model_dir, persona_files, tmp_path, monkeypatch):
    import json

    from ctxdistill.config import OfflineConfig
    from ctxdistill.core.llamacpp import LlamaCppBackend, base_gguf
    from ctxdistill.core.models import default_gguf_file, load_model
    from ctxdistill.recipes import offline

    monkeypatch.setenv("CTXDISTILL_CACHE", str(tmp_path / "cache"))
    base_gguf(load_model(str(varied_model_dir), "float32", "cpu")[0], str(varied_model_dir), "f32",
              vocab_from=default_gguf_file())  # as in the on-policy test: the folder's GGUF, with a tokenizer
    made, real = [], LlamaCppBackend.for_model.__func__

    def counted(cls, *args, **kwargs):  # every engine the run makes
        made.append(1)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(LlamaCppBackend, "for_model", classmethod(counted))
    (tmp_path / "anchors.txt").write_text("Write a haiku about rain.\nHow do magnets work?\n")
    cfg = OfflineConfig(model=str(varied_model_dir), dtype="float32", generation_backend="llamacpp",
                        llamacpp_outtype="f32", num_queries=4, samples_per_query=1, samples_per_other_query=1,
                        max_new_tokens=6, max_steps=1, batch_size=2, micro_batch_size=2, eval_max_new_tokens=4,
                        anchor_fraction=0.5, anchor_prompts=str(tmp_path / "anchors.txt"))
    # no prompts: the queries are synthesized (through the engine), then sampled, anchored and evaluated
    offline.run(cfg, str(tmp_path / "run"), context=[str(persona_files["context"])])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["metrics"]["evaluation"]["eval_backend"] == {"base": "llamacpp", "teacher": "llamacpp",
                                                                 "student": "llamacpp"}
    assert (tmp_path / "run" / "data" / "anchors.jsonl").exists()
    assert made == [1]  # one engine for the whole run


def test_the_default_model_and_its_converted_folder_share_one_cached_gguf(model, monkeypatch, tmp_path):
    # An adapter names its base by the converted folder; `--model default` names it 'default'. One export for both.
    import ctxdistill.core.models as models
    from ctxdistill.core.llamacpp import gguf_cache_file

    folder = tmp_path / "models" / "smollm2"
    folder.mkdir(parents=True)
    monkeypatch.setattr(models, "default_model_path", lambda: folder)
    monkeypatch.setattr(models, "cache_dir", lambda: tmp_path)
    by_name = gguf_cache_file("default", model, "f16")
    assert by_name == gguf_cache_file(str(folder), model, "f16")
    assert by_name != gguf_cache_file(str(tmp_path / "models"), model, "f16")
    assert by_name != gguf_cache_file("default", model, "bf16")


@needs_llama_cpp
def test_offline_hands_a_teacher_adapter_to_llama_cpp_as_its_lora(varied_model_dir, tmp_path, monkeypatch, tokenizer):
    from types import SimpleNamespace

    from ctxdistill.config import OfflineConfig
    from ctxdistill.core.llamacpp import base_gguf
    from ctxdistill.core.models import add_lora, default_gguf_file, load_model
    from ctxdistill.core.teacher import add_teacher_adapter, adapter_on
    from ctxdistill.recipes.offline import teacher_backend

    monkeypatch.setenv("CTXDISTILL_CACHE", str(tmp_path / "cache"))
    base_gguf(load_model(str(varied_model_dir), "float32", "cpu")[0], str(varied_model_dir), "f32",
              vocab_from=default_gguf_file())
    teacher = add_lora(load_model(str(varied_model_dir), "float32", "cpu")[0], r=4, alpha=8)
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    teacher.save_pretrained(tmp_path / "teacher")
    student = add_teacher_adapter(add_lora(load_model(str(varied_model_dir), "float32", "cpu")[0], r=4, alpha=8),
                                  str(tmp_path / "teacher"))
    student.eval()
    prompts = [render_prompt(tokenizer, q) for q in QUESTIONS]
    with adapter_on(student):
        expected = torch_greedy(student, tokenizer, prompts, max_new_tokens=10)
    assert expected != torch_greedy(student, tokenizer, prompts, max_new_tokens=10)  # the student's own differs

    printed = []
    cfg = OfflineConfig(model=str(varied_model_dir), generation_backend="llamacpp", llamacpp_outtype="f32",
                        teacher_adapter=str(tmp_path / "teacher"))
    run = SimpleNamespace(cfg=cfg, other=None, init_adapter=None, model=student, student=student,
                          tokenizer=tokenizer, accelerator=SimpleNamespace(print=printed.append,
                                                                           device=torch.device("cpu")))
    backend = teacher_backend(run)
    try:
        assert backend.name == "llamacpp" and "teacher adapter" in printed[0]
        assert backend.generate(prompts, max_new_tokens=10, temperature=0.0, show_progress=False) == expected
        assert student.active_adapter == "default"  # the student's adapter is active again afterwards
    finally:
        backend.close()
