"""The bundled pool of everyday user requests (for distilling a system prompt) is well-formed and distinct."""

import itertools
import json
import re
from pathlib import Path

import ctxdistill.data

DATA = Path(ctxdistill.data.__file__).parent


def _load(name):
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def _requests():
    return _load("everyday_requests.json")["requests"]


def _normalize(text):
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _words(text):
    return set(_normalize(text).split())


def _jaccard(a, b):
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb)


def _evaluation_prompts():
    retention = [item["q"] for item in _load("retention.json")["qa"]]
    anchors = _load("anchor_prompts.json")["prompts"]
    return retention + anchors


def test_pool_loads_from_package_path_with_about_and_at_least_300_strings():
    data = _load("everyday_requests.json")
    assert isinstance(data["about"], str) and data["about"].strip()
    requests = data["requests"]
    assert len(requests) >= 300
    assert all(isinstance(r, str) for r in requests)


def test_requests_are_unique_case_insensitively():
    lowered = [r.strip().lower() for r in _requests()]
    dupes = sorted({r for r in lowered if lowered.count(r) > 1})
    assert not dupes, dupes


def test_each_request_is_one_line_of_3_to_30_words():
    bad = [r for r in _requests() if "\n" in r or "\r" in r or r != r.strip() or not 3 <= len(r.split()) <= 30]
    assert not bad, bad


def test_no_request_equals_a_retention_question_or_anchor_prompt():
    evaluation = {_normalize(p) for p in _evaluation_prompts()}
    clashes = [r for r in _requests() if _normalize(r) in evaluation]
    assert not clashes, clashes


def test_no_request_closely_paraphrases_a_retention_question_or_anchor_prompt():
    close = [(r, p) for r in _requests() for p in _evaluation_prompts() if _jaccard(r, p) > 0.6]
    assert not close, close


def test_no_two_requests_share_more_than_80_percent_of_their_words():
    near = [(a, b) for a, b in itertools.combinations(_requests(), 2) if _jaccard(a, b) > 0.8]
    assert not near, near
