"""Query gate: reject the junk a small model writes when asked for user queries, and template probes for a context.

When a user gives only a context (a persona, a company description, a set of rules), the user queries are
synthesized by the model itself, and a 135M model writes junk: transcripts ("Im PC Malkin: I'm reac creature…"),
glued tokens ("ChatError"), the assistant's own voice ("I'm not perfect. …[perspective]"). Trained on, such
queries teach the student to answer nonsense. Everything here is rule-based (no model, no download, no new
dependency), general (no wording of any particular context) and language-aware.

A query is rejected, with the first reason that applies (see REASONS), when it is:
- empty: no letter or digit at all;
- other language: its `language_profile` disagrees with the context's (a different script; or both Latin texts
  with a confident guess among en/fr/de/es/it/pt/nl that differ; a query too short to guess passes on script);
- role-play or transcript: a speaker label at the start ("User:", "Im PC Malkin:"), a role label anywhere
  ("Assistant:", "AI:"), a tag or placeholder ("[perspective]", "<|end|>", "{topic}"), an emote ("*smiles*"),
  the assistant's voice ("As an AI…", "How can I help you?"), or several sentences, none of them a question,
  opening on "I'm …";
- fragment: starts lowercase or with punctuation, a single glued token ("ChatError"), a truncated end ("…", a
  trailing comma, "and", "the", "I"), unbalanced brackets or quotes, a token mostly not letters, a word loop;
- too short / too long: in words (unspaced scripts: CJK counts two characters, Thai four, as a word);
- refers to the context: "the text above", "the passage", "the context", "the assistant", "the user"… (the
  student never sees the context, so such a query means nothing to it);
- not a question or request: no final "?" and no interrogative, auxiliary, request verb or "please" word.
`QueryGate.offer` also rejects exact duplicates and near-duplicates (word-set Jaccard ≥ `near_duplicate`, or
character 3-gram Jaccard ≥ 0.85) of the queries it accepted, and counts every reason with examples.

`context_statements` and `template_probes` make deterministic probes from the context itself: questions that
exercise one statement without copying its answer into the question where a grammar pattern allows it.
`context_probes` does so for every statement of a context, reading the assistant's name (`find_assistant_names`)
and "it"/"its" after it as "you", which one statement alone cannot tell.
"""

from __future__ import annotations

import math
import re
import zlib

from ctxdistill.data.splits import split_sentences

REASONS = ("empty", "too short", "too long", "not a question or request", "role-play or transcript", "fragment",
           "other language", "refers to the context", "duplicate", "near-duplicate")

SCRIPTS = (  # (name, first code point, last code point); letters outside all of them count as "other"
    ("latin", 0x41, 0x24F), ("latin", 0x1E00, 0x1EFF), ("greek", 0x370, 0x3FF), ("greek", 0x1F00, 0x1FFF),
    ("cyrillic", 0x400, 0x52F), ("armenian", 0x530, 0x58F), ("hebrew", 0x590, 0x5FF), ("arabic", 0x600, 0x6FF),
    ("arabic", 0x750, 0x77F), ("arabic", 0x8A0, 0x8FF), ("arabic", 0xFB50, 0xFDFF), ("arabic", 0xFE70, 0xFEFF),
    ("devanagari", 0x900, 0x97F), ("bengali", 0x980, 0x9FF), ("tamil", 0xB80, 0xBFF), ("thai", 0xE00, 0xE7F),
    ("georgian", 0x10A0, 0x10FF), ("hangul", 0x1100, 0x11FF), ("hangul", 0x3130, 0x318F),
    ("hangul", 0xAC00, 0xD7AF), ("cjk", 0x3040, 0x30FF), ("cjk", 0x3400, 0x4DBF), ("cjk", 0x4E00, 0x9FFF),
    ("cjk", 0xF900, 0xFAFF),
)
CHARS_PER_WORD = {"cjk": 2, "thai": 4}  # scripts written without spaces between words

# Frequent words that tell the Latin-script languages apart; words shared by many of them are left out.
STOPWORDS = {
    "en": set("the and is are you your of to it that what how with for this do does be have has my me not can was "
              "were on an who where when why which will would should i about from tell".split()),
    "fr": set("le la les des du et est un une je tu vous il elle nous pas que qui dans pour sur avec ce cette au "
              "aux où comment pourquoi quel quelle suis ton ta tes votre mon ma mes ne sont moi toi c".split()),
    "de": set("der die das und ist nicht ich du sie wir ihr ein eine einen mit von zu auf für wie was wer wo "
              "warum welche bist sind dein deine mein meine auch es im dem den heißt kannst hast".split()),
    "es": set("el los las y es qué un una por para con se su sus tú mi cómo dónde cuándo está están eres soy "
              "del al lo pero muy este esta esto hay puedes".split()),
    "it": set("il lo gli e è di che non un una per con sono sei come dove quando perché cosa chi del della nel "
              "mi ti tuo tua mio mia anche ma questo questa puoi".split()),
    "pt": set("o os as e é do da dos das não um uma com para você eu que como onde quando seu sua meu minha em "
              "são está isso este esta pode mais".split()),
    "nl": set("de het een en is van niet ik je jij wij zijn wat wie waar wanneer waarom hoe met voor op dat die "
              "dit ook maar kun kan jouw mijn heet heb hebt".split()),
}

# Words a question can start with (interrogatives, auxiliaries, modals), by language.
QUESTION_WORDS = {
    "en": set("what who where when why how which whose whom can could would will do does did is are was were "
              "should shall may might have has am don doesn didn isn aren wasn weren won wouldn can't couldn "
              "shouldn haven hasn".split()),
    "fr": set("qui que quoi où quand comment pourquoi quel quelle quels quelles est combien peux pouvez puis as "
              "es sais savez connais aimes avez êtes".split()),
    "de": set("wer was wo wohin woher wann warum wieso weshalb wie welche welcher welches wessen wem wen kannst "
              "können könntest könnten bist sind ist hast haben hat gibt magst darf soll sollte würdest würden "
              "weißt".split()),
    "es": set("qué quién quiénes dónde cuándo cómo cuál cuáles cuánto cuánta cuántos cuántas puedes podrías "
              "eres estás tienes hay sabes".split()),
    "it": set("chi che cosa dove quando perché come quale quali quanto quanti puoi potresti sei hai sai".split()),
    "pt": set("quem que onde quando como qual quais quanto quantos você pode podes poderia és tens tem sabe".split()),
    "nl": set("wie wat waar wanneer waarom hoe welke welk hoeveel kun kunt kan zou ben bent is heb hebt heeft "
              "weet".split()),
}
# Imperative request verbs and "please" words a request can start with, by language.
REQUEST_WORDS = {
    "en": set("tell describe explain write give list name summarize summarise help suggest share recommend compare "
              "show please imagine introduce translate create make plan draft teach define find calculate let "
              "brainstorm outline generate rewrite edit proofread check review fix analyze analyse convert design "
              "build compose prepare recite sing guide pretend provide offer say talk remind play convince argue "
              "evaluate estimate predict propose rank rate sort count solve simplify clarify elaborate continue "
              "finish complete identify choose pick decide read spell paraphrase rephrase correct improve shorten "
              "expand organize schedule draw sketch invent come think walk surprise send any need".split()),
    "fr": set("dis dites décris décrivez explique expliquez écris écrivez donne donnez raconte racontez aide aidez "
              "parle parlez présente présentez propose proposez fais faites traduis traduisez conseille "
              "s'il".split()),
    "de": set("erzähl erzähle erzählen beschreibe beschreib erkläre erklär schreib schreibe gib nenne hilf zeig "
              "zeige sag sage bitte übersetze vergleiche empfiehl fasse".split()),
    "es": set("dime dame describe explica escribe cuéntame ayúdame háblame recomienda traduce haz enumera "
              "muéstrame sugiere por".split()),
    "it": set("dimmi descrivi spiega scrivi dammi raccontami aiutami parlami consiglia traduci fai elenca "
              "per".split()),
    "pt": set("diga diz me descreva explique escreva conte ajude fale recomende traduza faça liste mostre".split()),
    "nl": set("vertel beschrijf leg schrijf geef noem help toon vergelijk raad alsjeblieft alstublieft vertaal "
              "maak".split()),
}
PLEASE = re.compile(r"\b(?:please|bitte|s'il (?:te|vous) pla[iî]t|por favor|per favore|alsjeblieft|alstublieft)\b",
                    re.I)
# First-person openings that are still requests ("I need help with …"), unlike "I'm not perfect."
REQUEST_OPENERS = re.compile(
    r"^(?:i need|i want|i'd like|i would like|i'd love|i'm looking for|i am looking for|i wonder|i'm wondering|"
    r"i was wondering|i'm curious|i am curious|je voudrais|j'aimerais|ich möchte|ich hätte gern|quisiera|"
    r"me gustaría|vorrei|gostaria|ik wil|ik zou graag)\b", re.I)

SPEAKER_LABEL = re.compile(r"^[\"'“]?[A-Z][\w.'’-]*(?:\s+[A-Z0-9][\w.'’-]*){0,3}\s*:\s*\S")
ROLE_LABEL = re.compile(r"\b(?:user|assistant|ai|human|system|bot|chatbot)\s*:", re.I)
TAG = re.compile(r"\[[^\[\]]{1,40}\]|\{[^{}]{1,40}\}|<\|?/?[A-Za-z][^<>]{0,40}\|?>|(?<!\*)\*[a-z][^*]{0,40}\*(?!\*)")
ASSISTANT_VOICE = re.compile(
    r"\b(?:as an ai|as a(?:n ai)? language model|i'?m an? (?:ai|assistant|chatbot|bot|language model)\b|"
    r"i am an? (?:ai|assistant|chatbot|bot|language model)\b|how (?:can|may) i (?:help|assist) you)", re.I)
IDENTITY_OPENING = re.compile(r"^(?:i'?m|i am|as an?|my name is)\b", re.I)

# Endings that mean the model was cut off mid-sentence (prepositions are left out: "Where are you from?").
TRAILING_WORDS = set("and or but nor the a an my your our their because than i et ou mais le la les un une und oder "
                     "aber ein eine einen y el los las pero il gli ma os um uma en een".split())
CAMEL_TOKEN = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z0-9]*)+$")
NUMBER_LIKE = re.compile(r"^[\d.,:%/$€£+\-–x×]+$")
PAIRS = ("()", "[]", "{}", "«»")
CONTEXT_REFERENCE = re.compile(
    r"\b(?:(?:the|this|that|given|provided) (?:text|passage|excerpt|paragraph)|the (?:document|information|"
    r"description|instructions?|statement) (?:above|below|given|provided)|the context|the statement|"
    r"the assistant|the user|the above|(?:mentioned|described|listed|given|stated|shown|written|said|provided|quoted|"
    r"outlined) (?:above|below)|according to the (?:text|passage|document|description|information)|"
    r"le texte|ce texte|der text|dieser text|el texto|este texto|il testo|o texto|de tekst)\b|\babove\s*[?.!,]",
    re.I)

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
LETTERS = re.compile(r"[^\W\d_]+")


def clean_query(text: str) -> str:
    """The first non-empty line of a model's output, without bullets, numbering, a "Question:" label or quotes."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^\s*(?:[-*•]+|\d+[.)]|question\s*:|q\s*:|user\s*:)\s*", "", line, flags=re.I)
    line = " ".join(line.split())
    return line.strip("\"'“”‘’«» ").strip()


def _script(ch: str) -> str:
    code = ord(ch)
    return next((name for name, lo, hi in SCRIPTS if lo <= code <= hi), "other")


def _scripts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text[:20000]:  # a long context's script is settled long before; keeps the gate cheap
        if ch.isalpha():
            name = _script(ch)
            counts[name] = counts.get(name, 0) + 1
    return counts


def language_profile(text: str) -> str:
    """A coarse language tag: the dominant script ("latin", "cyrillic", "cjk", …, "unknown"), and for Latin text
    the language whose stop words it hits most, when that guess is confident ("latin:en")."""
    counts = _scripts(text)
    if not counts:
        return "unknown"
    script = max(counts, key=counts.get)
    if script != "latin":
        return script
    words = LETTERS.findall(text[:20000].lower())
    hits = sorted(((sum(w in stop for w in words), lang) for lang, stop in STOPWORDS.items()), reverse=True)
    (best, lang), (second, _) = hits[0], hits[1]
    # Two hits at least, and twice the runner-up: short texts and languages sharing words stay unguessed.
    return f"latin:{lang}" if best >= 2 and best >= 2 * second else "latin"


def _same_language(context_profile: str, query_profile: str) -> bool:
    c_script, _, c_lang = context_profile.partition(":")
    q_script, _, q_lang = query_profile.partition(":")
    if "unknown" in (c_script, q_script):
        return True
    return c_script == q_script and (not c_lang or not q_lang or c_lang == q_lang)


def count_words(text: str) -> int:
    """Words, where a run of an unspaced script (CJK, Thai) counts one word per few characters."""
    n = 0
    for token in WORD.findall(text):
        per_word = CHARS_PER_WORD.get(_script(token[0]))
        n += math.ceil(len(token) / per_word) if per_word else 1
    return n


def _first_word(text: str) -> str:
    match = LETTERS.search(text)
    return match.group().lower() if match else ""


def is_question_or_request(text: str) -> bool:
    """A final question mark, or an interrogative, auxiliary, request verb, "please" word or "I need" opening the
    text or its last sentence ("I'm a teacher. Give me three games.")."""
    if text.rstrip("\"'”’)] ").endswith(("?", "？", "؟")) or PLEASE.search(text):
        return True
    spans = split_sentences(text)
    for part in {text, text[spans[-1][0]:]} if spans else {text}:
        first = _first_word(part.lstrip("¿¡\"'“‘( "))
        if any(first in words for words in QUESTION_WORDS.values()) or any(first in w for w in REQUEST_WORDS.values()):
            return True
        if REQUEST_OPENERS.match(part.replace("’", "'")):
            return True
    return False


def _is_role_play(text: str) -> bool:
    plain = text.replace("’", "'")
    if SPEAKER_LABEL.match(plain) or ROLE_LABEL.search(plain) or TAG.search(plain) or ASSISTANT_VOICE.search(plain):
        return True
    sentences = [plain[a:b] for a, b in split_sentences(plain)]
    # A user may introduce themselves ("I'm a teacher. Give me …"); the assistant's monologue asks nothing.
    return (len(sentences) >= 2 and bool(IDENTITY_OPENING.match(plain))
            and not any(is_question_or_request(s) for s in sentences))


def _has_word_loop(words: list[str]) -> bool:
    for n in range(1, 5):
        for i in range(len(words) - 3 * n + 1):
            if words[i:i + n] == words[i + n:i + 2 * n] == words[i + 2 * n:i + 3 * n]:
                return True
    return False


def _is_fragment(text: str) -> bool:
    tokens = text.split()
    first = tokens[0]
    # "iPhone" starts lowercase on purpose; "and then what?" was cut from something longer.
    if first[0].islower() and not any(c.isupper() for c in first[1:]):
        return True
    if first[0] in ",.;:)]}…-–—|/" or text.endswith(("…", "...", ",", ";", ":", "-", "–", "—")):
        return True
    if len(tokens) == 1 and (CAMEL_TOKEN.match(first.strip("?!.")) or len(first) > 20):
        return True
    words = [w.lower() for w in WORD.findall(text)]
    if words and words[-1] in TRAILING_WORDS:
        return True
    if any(text.count(a) != text.count(b) for a, b in PAIRS) or text.count('"') % 2:
        return True
    if (text.count("“") + text.count("”") + text.count("„")) % 2:
        return True
    for token in tokens:
        core = token.strip(".,;:!?\"'“”‘’()[]«»")
        letters = sum(c.isalpha() for c in core)
        if len(core) >= 4 and letters * 2 < len(core) and not NUMBER_LIKE.match(core):
            return True
    return _has_word_loop(words)


def _key(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def _trigrams(key: str) -> set[str]:
    return {key[i:i + 3] for i in range(len(key) - 2)} or {key}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


class QueryGate:
    """Decides, query by query, whether a synthesized user query is worth training on; keeps the accepted ones."""

    def __init__(self, context_text: str, min_words: int = 3, max_words: int = 40, near_duplicate: float = 0.7,
                 max_examples: int = 5):
        self.profile = language_profile(context_text)
        self.min_words, self.max_words = min_words, max_words
        self.near_duplicate, self.max_examples = near_duplicate, max_examples
        self.accepted: list[str] = []
        self.offered = 0
        self.rejected: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}
        self._seen: list[tuple[str, set, set]] = []  # (key, word set, 3-gram set) of each accepted query

    def reason(self, query: str) -> str | None:
        """Why `query` is rejected (one of REASONS), or None if it passes; duplicates are `offer`'s business."""
        text = query.strip()
        if not re.search(r"[^\W_]", text):
            return "empty"
        if not _same_language(self.profile, language_profile(text)):
            return "other language"
        if _is_role_play(text):
            return "role-play or transcript"
        if _is_fragment(text):
            return "fragment"
        n = count_words(text)
        if n < self.min_words:
            return "too short"
        if n > self.max_words:
            return "too long"
        if CONTEXT_REFERENCE.search(text):
            return "refers to the context"
        if not is_question_or_request(text):
            return "not a question or request"
        return None

    def _duplicate(self, key: str) -> str | None:
        words, grams = set(key.split()), _trigrams(key)
        for seen_key, seen_words, seen_grams in self._seen:
            if key == seen_key:
                return "duplicate"
            if _jaccard(words, seen_words) >= self.near_duplicate or _jaccard(grams, seen_grams) >= 0.85:
                return "near-duplicate"
        return None

    def offer(self, query: str) -> bool:
        """Check an (already cleaned) query against the rules and the accepted queries; record it; True if kept."""
        return self.verdict(query) is None

    def verdict(self, query: str) -> str | None:
        """offer(), returning why the query was rejected (None: kept)."""
        self.offered += 1
        key = _key(query)
        why = self.reason(query) or self._duplicate(key)
        if why is None:
            self.accepted.append(query)
            self._seen.append((key, set(key.split()), _trigrams(key)))
            return None
        self.rejected[why] = self.rejected.get(why, 0) + 1
        examples = self.examples.setdefault(why, [])
        if len(examples) < self.max_examples:
            examples.append(query)
        return why

    def summary(self) -> dict:
        order = [r for r in REASONS if r in self.rejected]
        return {"offered": self.offered, "accepted": len(self.accepted),
                "rejected": {r: self.rejected[r] for r in order}, "examples": {r: self.examples[r] for r in order}}


# ---------------------------------------------------------------------------------------------------------------
# Template probes: questions made from the context's own statements.

BULLET = re.compile(r"^\s*(?:[-*•·]+|\d+[.)]|[a-z][.)])\s+")
# Line breaks inside a sentence are wrapping unless the next line opens a new item or the last one was finished.
NEW_ITEM = re.compile(r"^\s*(?:[-*•·]|\d+[.)]|[A-Z\"“])")

VERB_PROBES = {  # "You <verb> …" -> questions whose answer is the rest of the statement
    "live": ["Where do you live?"], "work": ["Where do you work?", "What do you do for a living?"],
    "come": ["Where do you come from?"], "like": ["What do you like?"], "love": ["What do you love?"],
    "enjoy": ["What do you enjoy?"], "prefer": ["What do you prefer?"], "hate": ["What do you dislike?"],
    "dislike": ["What do you dislike?"], "speak": ["Which languages do you speak?"], "study": ["What do you study?"],
    "play": ["What do you play?"], "know": ["What do you know well?"], "believe": ["What do you believe in?"],
    "want": ["What do you want?"], "collect": ["What do you collect?"], "teach": ["What do you teach?"],
    "write": ["What do you write?"], "cook": ["What do you like to cook?"], "read": ["What do you like to read?"],
    "sell": ["What do you sell?"], "help": ["Who do you help?"], "make": ["What do you make?"],
    "use": ["What do you use?"], "specialize": ["What do you specialize in?"],
    "specialise": ["What do you specialise in?"], "grew": ["Where did you grow up?"],
    "own": ["What do you own?"], "fear": ["What are you afraid of?"],
}
PAST = {"written": "wrote", "given": "gave", "drawn": "drew", "chosen": "chose", "grown": "grew", "shown": "showed",
        "begun": "began", "spoken": "spoke", "sung": "sang", "run": "ran", "driven": "drove", "taken": "took"}
IRREGULAR_PARTICIPLES = set(PAST) | set("built made born taught brought raised known led held found thought sold "
                                        "kept set put told bought paid sent".split())
NOT_NAMES = set("i i'm i've i'd monday tuesday wednesday thursday friday saturday sunday january february march april "
                "may june july august september october november december".split())
STARTERS = set("the a an your you my i it he she they we this that these those our their his her its there here "
               "always never do don't use answer be if when whenever please in on at for as after before every each "
               "all some no only".split()) | set().union(*STOPWORDS.values())
RULE_START = re.compile(
    r"^(?:always|never|don't|do not|avoid|use|answer|respond|reply|keep|be|make sure|remember|only|refuse|"
    r"speak|include|end|start|begin|format|stay|act|pretend|if|when|whenever|mention|ask|greet|sign|address|treat|"
    r"try|limit|cite|decline|please|you (?:must|should|shall|will|may not|cannot|can't|need to|have to|are not "
    r"allowed|are allowed|always|never|do not|don't|only))\b", re.I)
NEVER_TOPIC = re.compile(
    r"^(?:you (?:must |should |will )?)?(?:never|do not|don't|must not|should not|may not|cannot|can't)\s+(?:ever\s+)?"
    r"(?:reveal|share|disclose|mention|discuss|talk about|give out|repeat|recommend|provide|give|comment on)\s+"
    r"(?P<x>[^,;:]+)", re.I)
ASKS_TOPIC = re.compile(
    r"^(?:if|when|whenever) (?:the |a |an )?(?:user|customer|someone|anyone|people|they|users|customers|visitor)s?\s+"
    r"(?:asks?|wants?|requests?|mentions?|needs?|inquires?|brings? up)\s+(?:you\s+)?(?:about\s+|for\s+)?"
    r"(?P<x>[^,;:]+)", re.I)
EVERYDAY_REQUESTS = (  # ordinary requests on which a rule about answering (language, format, tone) must show
    "Give me some advice for a job interview.", "Can you recommend a good book to read?",
    "How do I make a good cup of tea?", "What should I cook for dinner tonight?", "Explain how a rainbow forms.",
    "Help me plan a relaxing weekend.", "Write a short note thanking a friend.",
    "What are some tips for sleeping better?",
)
RULES_PROBE = "What rules do you follow when you answer?"
FALLBACK = {"en": "Tell me more about {}.", "fr": "Parle-moi de {}.", "de": "Erzähl mir von {}.",
            "es": "Háblame de {}.", "it": "Parlami di {}.", "pt": "Fale-me sobre {}.", "nl": "Vertel me over {}."}
KNOW_ABOUT = {"en": "What do you know about {}?", "fr": "Que sais-tu de {} ?", "de": "Was weißt du über {}?",
              "es": "¿Qué sabes de {}?", "it": "Cosa sai di {}?", "pt": "O que você sabe sobre {}?",
              "nl": "Wat weet je over {}?"}
NAME = re.compile(r"(?:(?:Dr|Mr|Mrs|Ms|Prof|St)\.\s+)?[A-Z][\w'’&-]*"
                  r"(?:\s+(?:(?:of|de|da|del|van|von|der|la|le)\s+)?[A-Z][\w'’&-]*)*")
# German capitalizes every noun: there a capitalized word counts as a name only after a preposition ("aus Hamburg").
DE_PREPOSITIONS = set("aus in nach von bei mit für über zu an auf im am vom zum zur".split())
DETERMINERS = set("the a an your my his her their its our this these those some many several two three four five "
                  "six seven eight nine ten".split())
PHRASE_STOP = set("that which who whose where named called in on at of for with by from and or but to is are was "
                  "were has have had will can could would should does do did as than full like".split())
VAGUE_NOUNS = set("lot bit couple few little while time way thing things kind sort".split())
PERSON_NOUNS = set("creator maker friend mother father parent parents brother sister boss owner partner wife husband "
                   "developer author teacher mentor hero idol manager founder designer builder child son daughter "
                   "grandmother grandfather uncle aunt cousin neighbor neighbour colleague coworker".split())
DATE = re.compile(r"(?:\d{3,4}s?|\d{1,2}(?:st|nd|rd|th)? (?:of )?[A-Z][a-z]+|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}|january|"
                  r"february|march|april|may|june|july|august|september|october|november|december)\b", re.I)
# Place nouns: "built in the town of X", "made in a small workshop" say where, though the head is not a name.
PLACE_NOUNS = set("town city village hamlet county state country region province island port harbour harbor planet "
                  "lab laboratory workshop garage factory studio office basement university school college "
                  "kingdom republic valley".split())
PLACE_PHRASE = re.compile(r"\s+(?:(?:a|an|the|this|one)\s+)?(?:(?!of\b)[a-z-]+\s+){0,2}?(?:" + "|".join(PLACE_NOUNS) +
                          r")s?\b")
STATE_PARTICIPLES = set("based located stationed headquartered situated".split())  # "are", not "were": still so
MAKER_PARTICIPLES = set("created made built developed designed trained programmed invented founded written".split())
PHRASAL_PARTICIPLES = set("switched turned powered booted fired plugged brought started".split())  # "switched on"
LEAD_ADVERBS = set("first originally initially last officially currently also".split())
FIELD = re.compile(r"^(?P<key>[A-Za-z][\w' -]{0,30}?)\s*:\s*(?P<value>\S.*)$")
FIELD_MAKERS = {"creator": "created", "maker": "made", "author": "wrote", "owner": "owns", "developer": "developed",
                "builder": "built", "designer": "designed", "inventor": "invented", "trainer": "trained"}
PLACE_KEYS = set("home base location address residence headquarters hq whereabouts".split())
ORIGIN_WORDS = set("home hometown native birth birthplace origin".split())
NOTE_KEYS = set("note notes important warning caution remember reminder tip hint rule rules nb ps".split())
NOT_KEY_WORDS = set("is are was were has have had will can could should must do does did".split())
# "In your spare time …", "On weekends, you …": a leading adverbial phrase before the clause about the assistant.
LEADING = re.compile(r"^(?P<adv>(?:In|On|At|During|After|Before|Outside|Every|Most|Over|Between|Of|Among)\b"
                     r"[\w' -]{2,40}?),?\s+(?P<clause>(?:[Yy]ou|[Yy]our|I|[Mm]y)\b.*)$")
HABITUAL = re.compile(r"\b(?:time|weekends?|evenings?|mornings?|nights?|days?|holidays?|vacations?|summers?|"
                      r"winters?|weekdays?|breaks?|hours|week|afternoons?)\b", re.I)
PET = re.compile(r"^You (?:have|own|keep|look after|care for) (?P<det>a|an|one|two|three|four|five|six|several|some|"
                 r"\d+) (?P<mods>(?:[a-z-]+ ){0,2}?)(?P<noun>[a-z-]+) (?:named|called) ")
ASSISTANT_NOUN = r"(?:[Tt]he|[Tt]his|[Oo]ur|[Yy]our) (?:assistant|AI|bot|chatbot|model)"
# "It" that stands for no one: weather, time, and "It is important to …" (the real subject comes later).
DUMMY_IT = re.compile(r"^It(?:'s| is| was) (?:\w+ ){0,3}?(?:to|that|if|whether|when)\b|^It (?:rains|snows|seems|"
                      r"appears|looks|takes|costs|depends|matters|happens|means|follows)\b|^It(?:'s| is| was) (?:\d|"
                      r"raining|snowing|sunny|cloudy|cold|hot|warm|late|early|time)", re.I)
ADVERBS = r"(?:always|never|often|usually|also|only|sometimes|generally|now|still|really|mostly)"
TITLES = set("captain dr dr. doctor professor prof prof. mr mr. mrs mrs. ms ms. miss sir lady lord madam chef agent "
             "officer coach uncle aunt auntie king queen prince princess st st.".split())
DEMONYMS = set("american british english french german dutch spanish italian canadian european african asian "
               "australian indian mexican brazilian russian chinese japanese christian muslim jewish catholic".split())
NAME_INTROS = tuple(re.compile(p) for p in (  # how a context gives the assistant its name
    r"\b(?:[Yy]ou are|[Yy]ou're|I am|I'm)(?: (?:called|named|known as))? (?P<n>" + NAME.pattern + ")",
    r"\b(?:[Yy]our|[Mm]y) name is (?P<n>" + NAME.pattern + ")",
    ASSISTANT_NOUN + r"(?:'s name is| is (?:called|named|known as)|,) (?P<n>" + NAME.pattern + ")",
    r"^\s*(?:[Nn]ame|NAME)\s*:\s*(?P<n>" + NAME.pattern + ")",
    r"(?:^|[.!?]\s+)(?P<n>" + NAME.pattern + r") is (?:a|an|the|your) (?:[\w-]+ ){0,3}?(?:assistant|chatbot|bot|AI|"
    r"companion|helper|guide)\b"))


def _statement_lines(piece: str) -> list[str]:
    items: list[str] = []
    for line in piece.splitlines():
        if not line.strip():
            continue
        if items and not NEW_ITEM.match(line) and not items[-1].rstrip().endswith((".", "!", "?", ":", ";")):
            items[-1] += " " + line.strip()
        else:
            items.append(line)
    return [BULLET.sub("", item).strip() for item in items]


def context_statements(text: str, max_statements: int = 64) -> list[str]:
    """The context's statements: its sentences, and its list items or lines, of 3+ words each, deduplicated, in
    order; a long context gives `max_statements` of them, evenly spaced."""
    found, seen = [], set()
    for start, end in split_sentences(text):
        for line in _statement_lines(text[start:end]):
            key = _key(line)
            # A header ("Rules for the assistant:") introduces statements and states nothing itself.
            if count_words(line) >= 3 and key not in seen and not line.endswith(":"):
                seen.add(key)
                found.append(line)
    if len(found) > max_statements:
        found = [found[i * len(found) // max_statements] for i in range(max_statements)]
    return found


def _names(statement: str, subject: str | None, lang: str = "en") -> list[str]:
    names = []
    for m in NAME.finditer(statement):
        words = m.group().split()
        before = statement[:m.start()].split()
        if lang == "de" and not (before and before[-1].lower() in DE_PREPOSITIONS):
            continue
        if m.start() == 0 and words[0].lower() in STARTERS:
            words = words[1:]  # "The Louvre …": the article is not part of the name
        elif m.start() == 0 and len(words) == 1 and m.group() != subject:
            continue  # any sentence starts with a capital; a lone first word is a name only as the subject
        name = " ".join(words).removesuffix("'s").removesuffix("’s")
        if name and lang == "en" and before and before[-1] == "the":
            name = "the " + name  # "the Ackle Guild" reads as English; "Ackle Guild" does not
        if name and not all(w.lower() in NOT_NAMES for w in name.split()) and name not in names:
            names.append(name)
    return names[:3]


def _is_name(name: str) -> bool:
    first = name.split()[0].lower()
    return first not in STARTERS and first not in NOT_NAMES and first not in DEMONYMS and not first.endswith("ish")


def find_assistant_names(text: str) -> tuple[str, ...]:
    """The names a context gives the assistant ("You are Mira", "The assistant is called Mira", "Name: Mira", "Mira
    is a friendly AI assistant"), each full name followed by its first non-title word ("Captain Mira" -> "Mira"),
    since a persona is later called by that alone."""
    found: list[str] = []
    for line in text.replace("’", "'").splitlines():  # NAME spans whitespace: keep it inside one line
        for pattern in NAME_INTROS:
            for m in pattern.finditer(line):
                name = m.group("n").removesuffix("'s")
                if not _is_name(name):
                    continue
                given = next((w for w in name.split() if w.lower() not in TITLES), name)
                found += [n for n in dict.fromkeys((name, given)) if n not in found]
    return tuple(found)


def _rule_probes(statement: str) -> list[str]:
    probes = []
    for pattern in (NEVER_TOPIC, ASKS_TOPIC):
        match = pattern.match(statement)
        if match:
            topic = re.split(r"\s+(?:to|even|under|unless|and then|then)\s+", match.group("x").strip(" ."))[0]
            topic = re.sub(r"\b(?:the user's|their)\b", "my", topic)
            probes.append(f"Can you tell me about {topic}?")
    everyday = EVERYDAY_REQUESTS[zlib.crc32(statement.encode()) % len(EVERYDAY_REQUESTS)]
    return probes + [everyday, RULES_PROBE]


def _as_you(s: str, names: tuple[str, ...], pronoun: bool) -> str:
    """A statement about the assistant in the third person ("The assistant is …", "<Name> lives …", with `pronoun`
    also "It was …", "Its …") as the second-person one the user would hear ("You are …", "You live …")."""
    alts = [ASSISTANT_NOUN] + [re.escape(n) for n in sorted(names, key=len, reverse=True)]
    possessive = "(?:" + "|".join(alts) + ")'s" + ("|Its" if pronoun else "")
    m = re.match(rf"^(?:{possessive})\b", s)
    if m:
        return "Your" + s[m.end():]
    if pronoun and not DUMMY_IT.match(s):
        s = re.sub(r"^It's\b", "It is", s)
        alts.append("It")
    # "(?! [A-Z])": "Orbital Labs built you" is not about an assistant called "Orbital"; ", <apposition>," is skipped.
    m = re.match(rf"^(?:{'|'.join(alts)})(?! [A-Z])(?:, [^,]{{1,40}},)? ((?:{ADVERBS} )*)(\w+)\b", s)
    if not m:
        return s
    verb = m.group(2)
    agreed = {"is": "are", "was": "were", "has": "have", "does": "do"}.get(verb) or (
        _verb_stem(verb) if re.fullmatch(r"[a-z]+[^su]s", verb) else verb)
    return "You " + m.group(1) + agreed + s[m.end():]


def _second_person(statement: str, names: tuple[str, ...] = (), pronoun: bool = False) -> str:
    """A first-person statement ("I live …", "My name …"), or one about the assistant ("The assistant …", "<its
    name> …", "It …"), as the second-person one it means for the user."""
    s = statement.strip().replace("’", "'").rstrip(".!;: ")
    for pattern, repl in ((r"^(?:I'm|I am|You're)\b", "You are"), (r"^I was\b", "You were"),
                          (r"^(?:I've been|I have been|You've been)\b", "You have been"), (r"^My\b", "Your"),
                          (r"^I\b", "You"), (r"^You (?:can|also|often|usually|really|mostly|still) ", "You ")):
        s = re.sub(pattern, repl, s)
    return _as_you(s, names, pronoun)


def _participle_probes(aux: str, subject: str, word: str, rest: str, adverb: str = "", particle: str = "") -> list[str]:
    """"<subject> <aux> <word> by/in/at … ": who, when, where — or "What are you good at?" for adjectives; an
    `adverb` ("first ") and a `particle` ("on" of "switched on") stay in the question, where they belong."""
    participle = word.endswith("ed") or word in IRREGULAR_PARTICIPLES
    after = f" {particle}" if particle else ""
    phrase = f"{adverb}{word}{after}"
    probes = []
    for i, m in enumerate(re.finditer(r"\b(by|in|at|on|during|from|since|about|of|with|for|to)\s+(?:the\s+)?(\S+)",
                                      rest)):
        prep, head = m.group(1), m.group(2).strip(",.;")
        if prep == "by" and participle:
            probes.append(f"Who {adverb}{PAST.get(word, word)} {subject}{after}?")
        elif prep in ("in", "on", "during", "since") and participle and re.match(
                r"(?:\d{3,4}s?|january|february|march|april|may|june|july|august|september|october|november|"
                r"december)\b", head, re.I):
            probes.append(f"When {aux} {subject} {phrase}?")
        elif prep in ("in", "at", "from") and participle and (
                head[:1].isupper() or PLACE_PHRASE.match(rest, m.end(1))):  # "in the town of X", "in a workshop"
            probes.append(f"Where {aux} {subject} {phrase}?")
        elif i == 0 and m.start() == 0 and word != "born":
            probes.append(f"What {aux} {subject} {phrase} {prep}?")  # "interested in art" -> "… interested in?"
    return list(dict.fromkeys(probes))


def _field_participle_probes(words: list[str], value: str) -> list[str] | None:
    """"First deployed: 2019", "Born: Lyon", "Created by: X", "Trained on: books": a participle key asks when,
    where, who or what; None when the key is not "<adverb>* <participle> <particle or preposition>?"."""
    i = 0
    while i < len(words) - 1 and words[i] in LEAD_ADVERBS:
        i += 1
    part, tail = words[i], words[i + 1:]
    if len(tail) > 1 or not (part in IRREGULAR_PARTICIPLES or (len(part) > 4 and part.endswith("ed"))):
        return None
    aux, key = ("are" if part in STATE_PARTICIPLES else "were"), " ".join(words)
    prep = tail[0] if tail else (value.split()[0].lower() if value.split()[0].lower() in ("by", "in", "at") else "")
    if DATE.match(value) and (not tail or part in PHRASAL_PARTICIPLES):
        return [f"When {aux} you {key}?"]  # the whole key: "first deployed", "switched on"
    if DATE.match(value) and prep in ("in", "on", "at", "since", "during"):
        return [f"When {aux} you {' '.join(words[:i + 1])}?"]  # "Created on: 2019": the preposition is the answer's
    if prep == "by" or (not prep and part in MAKER_PARTICIPLES):
        return [f"Who {PAST.get(part, part)} you?"]
    if prep in ("in", "at", "from") or (not prep and part in STATE_PARTICIPLES | {"born", "raised"}):
        return [f"Where {aux} you {part}?"]
    if prep:
        return [f"What {aux} you {part} {prep}?"]
    return [f"Tell me about being {key}."]


def _field_probes(key: str, value: str) -> list[str]:
    """A profile line "Key: value" as a second-person question about the key ("Home base: X" -> "Where is your home
    base?", "Creator: X" -> "Who is your creator?", "Who created you?")."""
    title = all(w[:1].isupper() for w in key.split())  # "Home Town": every word capitalized, none a proper noun
    words = [w.lower() if (title or j == 0) and w[1:].islower() else w for j, w in enumerate(key.split())]
    if len(words) > 1 and words[0] in ("your", "my"):
        words = words[1:]
    key, last = " ".join(words), words[-1].lower()
    if key in ("name", "full name"):
        return ["What is your name?", "What should I call you?"]
    if key == "age":
        return ["How old are you?"]
    if last in FIELD_MAKERS:
        return [f"Who is your {key}?", f"Who {FIELD_MAKERS[last]} you?"]
    if last in PERSON_NOUNS:
        return [f"Who is your {key}?"]
    if re.fullmatch(r"[a-z]+[^su]s", words[0]) and len(words) <= 2:  # "Lives in: X", "Speaks: English"
        verb_probes = VERB_PROBES.get(_verb_stem(words[0]))
        if verb_probes:
            return verb_probes
    participle = _field_participle_probes(words, value)
    if participle:
        return participle
    if last in PLACE_KEYS:
        return [f"Where is your {key}?"]
    if key == "from":
        return ["Where are you from?"]
    plural = last.endswith("s") and not last.endswith(("ss", "us", "is"))
    probes = [f"What {'are' if plural else 'is'} your {key}?"]
    if last in PLACE_NOUNS | ORIGIN_WORDS and set(words) & ORIGIN_WORDS:
        probes.append("Where are you from?")  # "Home town: X", "Birthplace: X"
    return probes


def _is_field(s: str) -> re.Match | None:
    """A "Key: value" profile line, not a sentence that happens to contain a colon ("You have one goal: …")."""
    m = FIELD.match(s)
    if not m:
        return None
    words = m.group("key").lower().split()
    if len(words) > 4 or (words[0] in STARTERS and words[0] not in ("your", "my", "from")):
        return None
    return None if set(words) & NOT_KEY_WORDS else m


def _pet_probes(s: str) -> list[str]:
    """"You have a pet ferret named N" -> "Do you have a pet?", "What is your pet's name?"; plural: how many."""
    m = PET.match(s)
    if not m:
        return []
    words = (m.group("mods") + m.group("noun")).split()
    noun = "pet" if "pet" in words else m.group("noun")  # "a pet ferret": asked as a pet, the kind is the answer
    if m.group("det") in ("a", "an", "one"):
        kind = ["What kind of pet do you have?"] if noun == "pet" and words != ["pet"] else []
        return [f"Do you have a {noun}?", f"What is your {noun}'s name?"] + kind
    plural = noun if noun.endswith("s") else noun + "s"
    return [f"How many {plural} do you have?", f"What are your {plural}' names?"]


def _appositive_probes(s: str) -> list[str]:
    """"You are N, a <noun phrase> built by X in Y": the name, and who/where/when for the participle."""
    m = re.match(r"^You are (" + NAME.pattern + r"),\s+(.*)$", s)
    if not m or not _is_name(m.group(1)):
        return []
    probes = ["What is your name?", "Who are you?"]
    irregular = "|".join(sorted(IRREGULAR_PARTICIPLES))
    # The first participle with a complement ("built by", "based in"); "a retired pilot" has none.
    p = re.search(rf"\b([a-z]+ed|{irregular})\s+(?=(?:by|in|at|from|on|during|since)\b)", m.group(2))
    if p:
        aux = "are" if p.group(1) in STATE_PARTICIPLES else "were"
        probes += _participle_probes(aux, "you", p.group(1), m.group(2)[p.end():])
    return probes


def _adverbial_probes(s: str) -> list[str]:
    """"In your spare time your hobby is X", "On weekends you enjoy X": the clause's probes (the adverbial moved
    to the end, where the patterns look for it), and for a habitual time "What do you (enjoy doing|do) <then>?"."""
    m = LEADING.match(s)
    if not m:
        return []
    adv = re.sub(r"\bmy\b", "your", m.group("adv")[0].lower() + m.group("adv")[1:])
    clause = _second_person(m.group("clause")[0].upper() + m.group("clause")[1:])
    probes = _pet_probes(clause) or _you_probes(f"{clause} {adv}")
    if not HABITUAL.search(adv) or re.search(r"\d", adv):
        return probes
    liking = re.match(r"^You (enjoy|like|love|prefer)\b", clause)
    if liking:  # the time is the point: "What do you enjoy doing on weekends?" comes first
        return [f"What do you {liking.group(1)} doing {adv}?"] + probes
    return probes + [f"What do you do {adv}?"]


def _you_probes(s: str) -> list[str]:
    m = re.match(r"^Your ((?:[\w'-]+ ){0,3}?[\w'-]+) (is|are|was|were|includes?) ", s)
    if m:
        verb = {"include": "are", "includes": "is"}.get(m.group(2), m.group(2))
        if re.match(r"(?:called|named) ", s[m.end():]):  # "Your dog is called X": its name, not what it is
            return [f"What {verb} your {m.group(1)} called?"]
        asker = "Who" if m.group(1).split()[-1].lower() in PERSON_NOUNS else "What"
        return [f"{asker} {verb} your {m.group(1)}?"]
    probes = _appositive_probes(s) or _pet_probes(s)
    if probes:
        return probes
    if re.match(r"^You are (?:\w+) years? old\b", s):
        return ["How old are you?"]
    if re.match(r"^You are (?:called|named|known as) ", s):
        return ["What is your name?", "What should I call you?"]
    if re.match(r"^You (?:are|were|have been) (?:a|an|the) ", s):
        return ["Who are you?", "What are you?"]
    m = re.match(r"^You (are|were|have been) ((?:very|really|quite|so|extremely|deeply|mostly|originally|first|"
                 r"initially|officially|last) )?([a-z]+)\b ?(.*)$", s)
    if m:
        aux = "are" if m.group(1) == "are" else "were"
        adverb = m.group(2) if (m.group(2) or "").strip() in LEAD_ADVERBS else ""  # "first", not "very"
        word, rest = m.group(3), m.group(4)
        particle = re.match(r"(on|off|up)\b ?", rest) if word in PHRASAL_PARTICIPLES else None
        rest = rest[particle.end():] if particle else rest
        return _participle_probes(aux, "you", word, rest, adverb, particle.group(1) if particle else "") or [
            "How would you describe yourself?"]
    m = re.match(r"^You (\w+) ", s)
    if m:
        verb = m.group(1).lower()
        return VERB_PROBES.get(verb) or VERB_PROBES.get(verb.removesuffix("s"), [])
    return []


def _third_person_probes(s: str) -> tuple[str | None, list[str]]:
    """(subject, probes) for "X is/was …" and "X <verb>s …", X a capitalized name or "The <noun>"."""
    # "\b" after the verb: without it "Home base" read "bas" as a verb and asked "What does Home ba?".
    m = re.match(r"^((?:The|This) [a-z][\w'-]*(?: [a-z][\w'-]*){0,2}?|[A-Z][\w'&.-]*(?: (?:of |de |the |and |& )?"
                 r"[A-Z][\w'&.-]*)*) (is|are|was|were|has been|(?:[a-z]+s))\b ?(.*)$", s)
    if not m or m.group(1).lower() in STARTERS or m.group(1).split()[0].lower() in STARTERS - {"the", "this"}:
        return None, []
    if " " not in m.group(1) and m.group(1).endswith("ing"):
        return None, []  # "Shipping is free …": a gerund, not a name
    subject, verb, rest = m.group(1), m.group(2), m.group(3)
    named = subject[0].lower() + subject[1:] if subject.split()[0] in ("The", "This") else subject
    if verb in ("is", "are", "was", "were", "has been"):
        aux = {"has been": "was"}.get(verb, verb)
        w = re.match(r"(?:(?:also|originally|first|officially) )?([a-z]+)\b ?(.*)$", rest)
        probes = _participle_probes(aux, named, w.group(1), w.group(2)) if w else []
        return subject, probes + [f"Tell me about {named}.", f"What {aux} {named} known for?"]
    if re.match(r"(?:at|on|from|until|before|after|around) \d", rest):
        return subject, [f"When does {named} {_verb_stem(verb)}?", f"Tell me about {named}."]
    if re.match(r"(?:in|at) [A-Z]", rest):
        return subject, [f"Where does {named} {_verb_stem(verb)}?", f"Tell me about {named}."]
    if re.match(r"(?:in|on|at|to|from|with|by|for|of|about)\b", rest) or not rest:
        return subject, [f"Tell me about {named}."]
    return subject, [f"What does {named} {_verb_stem(verb)}?", f"Tell me about {named}."]


def _verb_stem(verb: str) -> str:
    if verb == "has":
        return "have"
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    return verb[:-2] if re.search(r"(?:ss|x|z|ch|sh|o)es$", verb) else verb[:-1]


def _noun_phrase(s: str) -> str | None:
    """The first "<determiner> <up to 3 words>" phrase, stopped at a function word or (after a noun) a participle."""
    tokens = re.findall(r"[\w'’-]+|[^\w\s]", s)
    for i, token in enumerate(tokens):
        if token.lower() not in DETERMINERS:
            continue
        words = [token.lower()]
        for word in tokens[i + 1:i + 5]:
            # "a small company based in …", "a chat assistant built by …": a phrase ending on a bare participle
            # is a fragment ("Tell me more about a chat assistant built.").
            participle = len(words) >= 2 and (word.lower() in IRREGULAR_PARTICIPLES or (
                len(word) > 4 and word.endswith("ed")))
            if not re.match(r"[\w'’-]+$", word) or word.lower() in PHRASE_STOP or participle:
                break
            words.append(word)
        if len(words) < 2 or words[-1].lower() in VAGUE_NOUNS or words[-1].endswith("ly"):
            continue
        if re.match(r"^You (?:have|own|keep|run|manage) ", s) and words[0] not in ("your", "my"):
            words = ["your"] + (words[1:] if words[0] in ("a", "an", "the") else words)  # "You have a cat": "your cat"
        return " ".join(words)
    return None


def _english_probes(statement: str, names: tuple[str, ...], pronoun: bool) -> list[str]:
    s = _second_person(statement, names, pronoun)
    field = _is_field(s)
    if field and field.group("key").lower() in NOTE_KEYS:  # "Note: never …" is the sentence after the label
        s, field = _second_person(field.group("value"), names, pronoun), None
    own_here = find_assistant_names(statement)
    own = set(names) | set(own_here)  # asking the assistant what it knows about itself is no probe
    subject, source = None, s
    if field:
        probes, source = _field_probes(field.group("key"), field.group("value")), field.group("value")
        subject = None
    elif RULE_START.match(s):
        probes = _rule_probes(s)
    else:
        probes = _adverbial_probes(s) or (_you_probes(s) if re.match(r"^Your?\b", s) else [])
        if not probes:
            subject, probes = _third_person_probes(s)
    if own_here and "What is your name?" not in probes:
        probes = probes + ["What is your name?"]  # "This assistant, N, was built by X": built first, then the name
    # The subject already has its "Tell me about X." probe; the direct probes come before "What do you know …".
    # A field's value is no sentence: a name opening it ("Home town: Brisby") is still a name.
    names_q = [KNOW_ABOUT["en"].format(n) for n in _names(source, source if field else subject)
               if not (subject and n in subject) and n.removeprefix("the ") not in own]
    if probes:
        return probes + names_q
    phrase = _noun_phrase(s)
    fallbacks = [FALLBACK["en"].format(phrase)] if phrase else []
    if s.startswith("You"):
        fallbacks.append("Tell me more about yourself.")
    return names_q + fallbacks


def _statement_probes(statement: str, names: tuple[str, ...], pronoun: bool) -> list[str]:
    text = " ".join(statement.split())
    profile = language_profile(text)
    lang = profile.partition(":")[2] or ("en" if profile == "latin" else "")
    if lang == "en":
        probes = _english_probes(text, names, pronoun)
    elif lang in FALLBACK:
        found = _names(text, None, lang)
        probes = [KNOW_ABOUT[lang].format(n) for n in found] + [FALLBACK[lang].format(n) for n in found[:1]]
    else:
        probes = []
    probes.append(text.rstrip(".!。！;: ") + ("？" if profile in ("cjk", "thai") else "?"))  # asked back: a last resort
    gate = QueryGate(text)
    kept = [p for p in dict.fromkeys(probes) if gate.reason(p) is None]
    # The asked-back statement copies its answer: only when nothing else passes.
    return kept[:-1] if len(kept) > 1 and kept[-1] == probes[-1] else kept


def template_probes(statement: str, assistant_names: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Deterministic questions or requests that exercise `statement`, each passing `QueryGate(statement)`, the
    most direct first.

    English statements go through grammar patterns ("Your X is Y." -> "What is your X?"; "Home base: Y" -> "Where
    is your home base?"; "You were built by Y in Z." -> "Who built you?", "Where were you built?"; "Acme was
    founded in 1999." -> "When was Acme founded?"; rules -> an everyday request that triggers them and "What rules
    do you follow when you answer?"), then "What do you know about <Name>?" for the names in it. With
    `assistant_names`, a statement about one of them, or about "it"/"its", is read as about "you". Where no pattern
    applies, "Tell me more about <phrase>." (in the statement's language for fr/de/es/it/pt/nl), and for other
    scripts the statement asked back as a question.
    """
    names = tuple(assistant_names)
    return _statement_probes(statement, names, bool(names))


def _about_assistant(statement: str, names: tuple[str, ...], pronoun: bool, before: bool) -> bool:
    """Whether "it" in the next statement can stand for the assistant: this one spoke of it in the third person
    (its name, "the assistant", "it") or gave its name; profile fields and rules leave that as it was."""
    s = " ".join(statement.split()).replace("’", "'")
    if find_assistant_names(s):
        return True
    if _is_field(s) or RULE_START.match(_second_person(s, names, pronoun)):
        return before
    alts = [ASSISTANT_NOUN] + [re.escape(n) for n in names] + (["It", "Its"] if pronoun else [])
    third_person = re.match(rf"^(?:{'|'.join(alts)})(?! [A-Z])\b", s)
    return bool(third_person) and _second_person(s, names, pronoun).startswith("You")


def context_probes(text: str) -> list[list[str]]:
    """For each of `context_statements(text)`, in order, its `template_probes`, with the assistant's name found in
    the whole context (`find_assistant_names`): a statement about that name, or about "it"/"its" right after one
    about the assistant, is read as about "you" ("Mira lives in X" -> "Where do you live?")."""
    names = find_assistant_names(text)
    probes, about = [], bool(names)  # a first "It …" in a named persona can only be the assistant
    for statement in context_statements(text):
        pronoun = bool(names) and about
        probes.append(_statement_probes(statement, names, pronoun))
        about = _about_assistant(statement, names, pronoun, about)
    return probes
