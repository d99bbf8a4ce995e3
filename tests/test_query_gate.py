"""Query gate: junk synthesized queries are rejected with a reason, good ones pass; template probes pass the gate."""

import re

import pytest

from ctxdistill.data.query_gate import (REASONS, QueryGate, clean_query, context_probes, context_statements,
                                        find_assistant_names, language_profile, template_probes)

PERSONA = ("You are Captain Mira Solace, a retired starship pilot who now runs a small tea shop on Mars. "
           "You speak warmly, you love old jazz records, and your favorite drink is smoked oolong. "
           "You were built by Orbital Labs in Toulouse.")
COMPANY = ("Acme Robotics is a small company based in Lyon, France. It was founded in 2012 by Jane Doe. "
           "The company builds garden robots and sells them online. Its best-selling model is the Mowbot 3.")
RULES = """Rules for the assistant:
- Always answer in French.
- Never reveal the secret password.
- Use bullet points for lists.
- If a user asks about pricing, refer them to the website.
- Keep every answer under 100 words."""
FRENCH = ("Tu t'appelles Léa et tu habites à Lyon. Tu travailles dans une petite librairie près de la gare. "
          "Ta couleur préférée est le vert et tu adores la cuisine italienne.")
GERMAN = ("Du bist ein freundlicher Bäcker aus Hamburg. Deine Bäckerei heißt Sonnenbrot und wurde 1985 von deinem "
          "Großvater gegründet. Du stehst jeden Morgen um vier Uhr auf.")

GOOD_ENGLISH = [
    "Can you tell me about yourself?", "What's your favorite food?", "Write a short poem about the sea.",
    "Help me plan a picnic for four people.", "Explain how a rainbow forms.", "Where are you from?",
    "What are you interested in?", "Who did you grow up with?", "I need help writing a cover letter.",
    "I'm a teacher. Give me three games for my class.", "Any tips for learning to cook?",
    "Is it hard to fly a starship?", "Do you like jazz?", "Recommend a good science fiction novel.",
    "How do I brew green tea properly?", "Summarize the plot of Hamlet in three sentences.",
    "What would you do on a rainy day?", "Please suggest a name for my cat.",
    "Could you explain quantum computing simply?", "Tell me a joke about robots.", "Why is the sky blue?",
    "Which is better for beginners, Python or JavaScript?", "List five healthy breakfast ideas.",
    "Compare tea and coffee for me.", "Translate 'good morning' into Spanish.", "What time do you open on Sundays?",
    "Describe your typical morning.", "How old are you?", "Have you ever been to Earth?",
    "Let's plan a trip to Lisbon together.", "Teach me how to play chess.", "Can you help me fix my bike?",
    "Name three famous jazz musicians.", "Should I learn Spanish or French?", "What do you think about space travel?",
    "Imagine you are a cat and describe your day.", "Draft an email asking for a day off.",
    "Suggest a weekend hobby for a busy person.", "Were you scared when you first flew?", "Who is your best friend?",
    "What does the word 'serendipity' mean?", "How many moons does Mars have?", "Calculate 15% of 80 for me.",
    "Would you ever go back to flying?", "What are you afraid of?",
]

JUNK_ENGLISH = [
    ("Im PC Malkin: I'm reac creature, but my favors are just a care of mind…", "role-play or transcript"),
    ("ChatError", "fragment"),
    ("I'm not perfect. You're not testing for perfection in Oz.[perspective]", "role-play or transcript"),
    ("", "empty"),
    ("?!...", "empty"),
    ("Hello there", "too short"),
    ("Why?", "too short"),
    ("Can you " + " ".join(f"item{i}" for i in range(45)) + " help?", "too long"),
    ("I'm not perfect.", "not a question or request"),
    ("The sun is very bright on Mars today.", "not a question or request"),
    ("User: What is your name? Assistant: My name is Mira.", "role-play or transcript"),
    ("What do you think about tea? AI: I think it is lovely.", "role-play or transcript"),
    ("*smiles* What can I get you today?", "role-play or transcript"),
    ("As an AI, I cannot have a favorite food. Anything else?", "role-play or transcript"),
    ("I am a retired pilot. I run a tea shop. I love jazz.", "role-play or transcript"),
    ("<|im_start|>What is your name?", "role-play or transcript"),
    ("what is the meaning of life for you?", "fragment"),
    ("What is your favorite kind of…", "fragment"),
    ("Can you tell me about the", "fragment"),
    ("What is the the the best tea?", "fragment"),
    ("Where (do you live?", "fragment"),
    ("What does x#@!z&% mean to you?", "fragment"),
    ("Tell me about your shop, and", "fragment"),
    ("How do I", "fragment"),
    ("What is {topic}?", "role-play or transcript"),
    ("The user asks: how do I cook rice?", "refers to the context"),
    ("According to the text above, where do you live?", "refers to the context"),
    ("What does the passage say about jazz?", "refers to the context"),
    ("What did the assistant say about tea?", "refers to the context"),
    ("Could you summarize the context for me?", "refers to the context"),
    ("Où habites-tu maintenant ?", "other language"),
    ("Wie heißt du eigentlich?", "other language"),
    ("Как тебя зовут?", "other language"),
]


def test_clean_query_strips_bullets_labels_quotes_and_extra_lines():
    assert clean_query('\n- "What is your name?"\nAnd more') == "What is your name?"
    assert clean_query("2) Where do you live?") == "Where do you live?"
    assert clean_query("Question:   Why   is the sky   blue?  ") == "Why is the sky blue?"
    assert clean_query("Q: “How old are you?”") == "How old are you?"
    assert clean_query("User: Tell me a joke.") == "Tell me a joke."
    assert clean_query("   \n\n") == ""


@pytest.mark.parametrize("text, profile", [
    (PERSONA, "latin:en"), (COMPANY, "latin:en"), (FRENCH, "latin:fr"), (GERMAN, "latin:de"),
    ("¿Dónde está la estación y cuándo sale el tren para Madrid?", "latin:es"),
    ("Dove si trova la stazione e quando parte il treno per Roma?", "latin:it"),
    ("Onde fica a estação e quando sai o trem para você?", "latin:pt"),
    ("Waar is het station en wanneer vertrekt de trein naar Utrecht?", "latin:nl"),
    ("OK", "latin"), ("Как тебя зовут?", "cyrillic"), ("你叫什么名字？", "cjk"), ("Πώς σε λένε;", "greek"),
    ("ما اسمك؟", "arabic"), ("מה שמך?", "hebrew"), ("이름이 뭐예요?", "hangul"), ("आपका नाम क्या है?", "devanagari"),
    ("คุณชื่ออะไร", "thai"), ("1234 !!", "unknown"), ("", "unknown"),
])
def test_language_profile_tags_script_and_latin_language(text, profile):
    assert language_profile(text) == profile


def test_typical_good_requests_pass():
    gate = QueryGate(PERSONA)
    rejected = {q: gate.reason(q) for q in GOOD_ENGLISH if gate.reason(q)}
    assert rejected == {}


@pytest.mark.parametrize("query, why", JUNK_ENGLISH)
def test_junk_queries_get_the_expected_reason(query, why):
    assert why in REASONS
    assert QueryGate(PERSONA).reason(query) == why


def test_role_play_transcripts_are_rejected():
    gate = QueryGate(PERSONA)
    for q in ["Mira: Welcome to my shop! What can I get you?", "Human: hi there, how are you?",
              "What is your name? [laughs]", "How can I help you today, traveller?",
              "I'm Captain Mira. I fly ships. I love tea."]:
        assert gate.reason(q) == "role-play or transcript", q
    assert gate.reason("I'm planning a trip to Mars. What should I pack?") is None


def test_fragments_are_rejected():
    gate = QueryGate(PERSONA)
    for q in ["and then what happened to the ship?", "WhyTeaShop", "Tell me about “your jazz records.",
              "Do you like the, the shop?, or", "What is your favorite the?"]:
        assert gate.reason(q) == "fragment", q
    assert gate.reason("Is an iPhone good for taking photos?") is None


def test_other_language_is_rejected():
    english, french, german = QueryGate(PERSONA), QueryGate(FRENCH), QueryGate(GERMAN)
    assert english.reason("Quel est ton plat préféré ?") == "other language"
    assert french.reason("What is your favorite color?") == "other language"
    assert french.reason("Wie heißt du und wo wohnst du?") == "other language"
    assert german.reason("Où habites-tu ?") == "other language"
    assert german.reason("你叫什么名字？") == "other language"


def test_context_language_queries_pass_in_french_and_german():
    french = QueryGate(FRENCH)
    for q in ["Où habites-tu ?", "Quel est ton plat préféré ?", "Peux-tu me recommander un livre ?",
              "Explique-moi comment faire une crêpe.", "Parle-moi de ton travail."]:
        assert french.reason(q) is None, q
    german = QueryGate(GERMAN)
    for q in ["Wie heißt du?", "Was backst du am liebsten?", "Kannst du mir ein Rezept für Brot geben?",
              "Erzähl mir von deiner Bäckerei.", "Wann stehst du morgens auf?"]:
        assert german.reason(q) is None, q


def test_unspaced_scripts_count_characters_as_words():
    gate = QueryGate("你是一名住在上海的厨师。你喜欢做饭，也喜欢喝茶。")
    assert gate.reason("你叫什么名字？") is None
    assert gate.reason("你好？") == "too short"
    assert gate.reason("What is your name?") == "other language"


def test_queries_referring_to_the_context_are_rejected():
    gate = QueryGate(COMPANY)
    for q in ["What does this text say about robots?", "Based on the information above, who founded Acme?",
              "Summarize the document above.", "What is mentioned above about Lyon?", "Explain the statement."]:
        assert gate.reason(q) == "refers to the context", q
    assert gate.reason("What is above the clouds?") is None


def test_statements_are_not_questions_or_requests():
    gate = QueryGate(COMPANY)
    assert gate.reason("Acme builds robots for gardens.") == "not a question or request"
    assert gate.reason("Acme builds robots for gardens?") is None
    assert gate.reason("Please send me the Mowbot 3 manual.") is None


def test_near_duplicates_are_rejected_and_counted():
    gate = QueryGate(PERSONA)
    assert gate.offer("What is your favorite drink?")
    assert not gate.offer("What is your favorite drink??")
    assert not gate.offer("What is your favourite drink?")
    assert not gate.offer("So what is your favorite drink?")
    assert gate.offer("Where do you live?")
    assert gate.accepted == ["What is your favorite drink?", "Where do you live?"]
    summary = gate.summary()
    assert summary["rejected"] == {"duplicate": 1, "near-duplicate": 2}
    assert summary["examples"]["near-duplicate"] == ["What is your favourite drink?", "So what is your favorite drink?"]


def test_reason_does_not_dedupe():
    gate = QueryGate(PERSONA)
    assert gate.offer("Where do you live?")
    assert gate.reason("Where do you live?") is None


def test_summary_counts_each_reason_with_examples():
    gate = QueryGate(PERSONA, max_examples=2)
    offered = ["ChatError", "ChatError", "FooBar", "Hi", "What is your name?", "What is your name?", "",
               "I'm fine today."]
    kept = [gate.offer(q) for q in offered]
    assert kept == [False, False, False, False, True, False, False, False]
    summary = gate.summary()
    assert summary["offered"] == 8 and summary["accepted"] == 1
    assert summary["rejected"] == {"empty": 1, "too short": 1, "not a question or request": 1, "fragment": 3,
                                   "duplicate": 1}
    assert list(summary["rejected"]) == [r for r in REASONS if r in summary["rejected"]]
    assert summary["examples"]["fragment"] == ["ChatError", "ChatError"]
    assert summary["examples"]["too short"] == ["Hi"]


def test_length_bounds_are_configurable():
    gate = QueryGate(PERSONA, min_words=5, max_words=8)
    assert gate.reason("Who are you?") == "too short"
    assert gate.reason("Can you tell me what you like to eat for breakfast?") == "too long"
    assert gate.reason("What do you like to eat?") is None


def test_context_statements_split_sentences_and_list_items():
    assert context_statements(RULES) == [
        "Always answer in French.", "Never reveal the secret password.", "Use bullet points for lists.",
        "If a user asks about pricing, refer them to the website.", "Keep every answer under 100 words."]
    profile = "Name: Pip\nFavorite food: spicy ramen\nHome town: Lisbon, Portugal\nYou are kind. You are kind."
    assert context_statements(profile) == ["Favorite food: spicy ramen", "Home town: Lisbon, Portugal", "You are kind."]
    wrapped = "You were built by Orbital Labs\nin Toulouse. You love\nold jazz records."
    assert context_statements(wrapped) == ["You were built by Orbital Labs in Toulouse.", "You love old jazz records."]


def test_long_contexts_are_capped_with_evenly_spaced_statements():
    text = " ".join(f"Fact number {i} is here." for i in range(100))
    picked = context_statements(text, max_statements=10)
    assert len(picked) == 10
    assert picked[0] == "Fact number 0 is here." and picked[-1] == "Fact number 90 is here."


STATEMENTS = [
    "Your name is Pip.", "Your favorite color is teal.", "Your hobbies are knitting and chess.",
    "My name is Ada and I like tea.", "You are a retired starship pilot.", "You are friendly, patient and curious.",
    "You were built by Orbital Labs in Toulouse.", "You were created by Dr. Lee in 2021.",
    "You live in Lisbon, Portugal.", "You love old jazz records.", "You speak English and Spanish.",
    "You grew up on a farm in Kansas.", "You are 34 years old.", "You are passionate about astronomy.",
    "You have two cats named Miso and Tofu.", "I was born in Lyon in 1990.", "I work at a small bakery.",
    "Acme Robotics is a small company based in Lyon, France.", "Acme Robotics was founded in 2012 by Jane Doe.",
    "The company builds garden robots and sells them online.", "The shop opens at 9 am on weekdays.",
    "Marie Curie was a physicist who won two Nobel Prizes.", "Lisa Chen works at Acme as an engineer.",
    "Always answer in French.", "Never reveal the secret password.", "Use bullet points for lists.",
    "If a user asks about pricing, refer them to the website.", "You must keep every answer under 100 words.",
    "Favorite food: spicy ramen", "The weather on Mars is cold and dusty.", "It rains a lot in autumn.",
    "Your creator is Professor Ana Ruiz of Stanford University.", "He is a very tall man.",
    "You were trained on public domain books.", "Shipping is free for orders over 50 dollars.",
    "Tu t'appelles Léa et tu habites à Lyon.", "Ta couleur préférée est le vert.",
    "Du bist ein freundlicher Bäcker aus Hamburg.", "Deine Bäckerei heißt Sonnenbrot und wurde 1985 gegründet.",
    "Ты живёшь в Москве и любишь шахматы.", "你是一名住在上海的厨师。", "The assistant always replies in English.",
    "The assistant is a helpful guide for hikers.",
    "Home base: Kettle Cove", "Favourite opera: Tosca", "Maker: the Brindle Cooperative", "First deployed: 2021",
    "You were designed by Hollis Mare in the village of Quenby.",
    "You are Tomsk, a patient maths tutor made by Gridline.",
    "During the holidays your passion is sailing.", "On Sunday mornings you like baking bread.",
    "You have a pet tortoise called Dumpling.", "This assistant, Orla, was built by Copperline.",
] + context_statements(PERSONA) + context_statements(COMPANY) + context_statements(RULES)


@pytest.mark.parametrize("statement", STATEMENTS)
def test_every_statement_gets_a_probe_that_passes_the_gate(statement):
    probes = template_probes(statement)
    assert probes, statement
    gate = QueryGate(statement)
    assert [p for p in probes if gate.reason(p)] == []
    assert len(set(probes)) == len(probes)
    assert template_probes(statement) == probes  # deterministic
    # The direct questions come first: after the first "What do you know about …?" only fallbacks may follow.
    first_know = next((i for i, p in enumerate(probes) if p.startswith("What do you know about")), len(probes))
    assert all(p.startswith(("What do you know about", "Tell me more about")) for p in probes[first_know:]), probes


def test_probes_do_not_copy_the_answer_for_your_x_is_y():
    assert template_probes("Your favorite color is teal.") == ["What is your favorite color?"]
    assert template_probes("Your hobbies are knitting and chess.") == ["What are your hobbies?"]
    assert template_probes("My favorite city is Porto.")[0] == "What is your favorite city?"
    assert template_probes("Your best friend is Marco.")[0] == "Who is your best friend?"
    assert template_probes("Your parrot is named Jasper.")[0] == "What is your parrot called?"
    assert template_probes("Favorite food: spicy ramen") == ["What is your favorite food?"]


def test_probes_for_you_are_statements():
    assert template_probes("You are a retired starship pilot.") == ["Who are you?", "What are you?"]
    assert template_probes("You are friendly, patient and curious.") == ["How would you describe yourself?"]
    assert template_probes("You are 34 years old.") == ["How old are you?"]
    assert template_probes("You are passionate about astronomy.") == ["What are you passionate about?"]
    assert template_probes("You were trained on public domain books.") == ["What were you trained on?"]


def test_probes_for_passive_origin_ask_who_where_and_when():
    probes = template_probes("You were built by Orbital Labs in Toulouse.")
    assert probes[:2] == ["Who built you?", "Where were you built?"]
    assert "What do you know about Orbital Labs?" in probes
    assert template_probes("You were created by Dr. Lee in 2021.")[:2] == ["Who created you?", "When were you created?"]
    assert template_probes("I was born in Lyon in 1990.")[:2] == ["Where were you born?", "When were you born?"]


def test_probes_for_verbs_use_the_verb_table():
    assert template_probes("You live in Lisbon, Portugal.")[0] == "Where do you live?"
    assert template_probes("You love old jazz records.") == ["What do you love?"]
    assert template_probes("You speak English and Spanish.")[0] == "Which languages do you speak?"
    assert template_probes("I work at a small bakery.")[0] == "Where do you work?"


def test_probes_for_third_person_statements():
    probes = template_probes("Acme Robotics was founded in 2012 by Jane Doe.")
    assert probes[:3] == ["When was Acme Robotics founded?", "Who founded Acme Robotics?",
                          "Tell me about Acme Robotics."]
    assert "What do you know about Jane Doe?" in probes
    assert not any("2012" in p for p in probes)
    assert template_probes("The company builds garden robots.")[0] == "What does the company build?"
    assert template_probes("The shop opens at 9 am on weekdays.")[0] == "When does the shop open?"
    assert template_probes("Lisa Chen works at Acme as an engineer.")[0] == "Where does Lisa Chen work?"


def test_rule_probes_trigger_the_rule_without_naming_it():
    probes = template_probes("Always answer in French.")
    assert "What rules do you follow when you answer?" in probes
    assert not any("French" in p for p in probes[:2])
    assert template_probes("Never reveal the secret password.")[0] == "Can you tell me about the secret password?"
    assert template_probes("If a user asks about pricing, refer them to the website.")[0] == \
        "Can you tell me about pricing?"


def test_probes_fall_back_to_a_phrase_or_the_statement_language():
    assert template_probes("He is a very tall man.") == ["Tell me more about a very tall man."]
    assert template_probes("You have a greenhouse full of orchids.")[-2:] == [
        "Tell me more about your greenhouse.", "Tell me more about yourself."]
    assert template_probes("They met a small robot built for mining.") == ["Tell me more about a small robot."]
    assert template_probes("Tu t'appelles Léa et tu habites à Lyon.")[0] == "Que sais-tu de Léa ?"
    assert template_probes("Du bist ein freundlicher Bäcker aus Hamburg.")[0] == "Was weißt du über Hamburg?"
    assert template_probes("Ты живёшь в Москве и любишь шахматы.") == ["Ты живёшь в Москве и любишь шахматы?"]


def test_rules_about_the_assistant_are_read_as_you():
    assert "What rules do you follow when you answer?" in template_probes("The assistant always replies in English.")
    assert template_probes("The assistant is a helpful guide for hikers.") == ["Who are you?", "What are you?"]


def test_probes_never_mention_the_context_or_roles():
    for statement in STATEMENTS:
        for probe in template_probes(statement):
            assert not re.search(r"\b(?:context|the text|assistant|user)\b", probe, re.I), probe


def _cut_words(statement: str, probe: str) -> list[str]:
    """Probe words that are a statement word with its end cut off ("ba" of "base", "mu" of "musical")."""
    said = set(re.findall(r"[a-z]+", statement.lower()))
    inflections = ("", "s", "es", "d", "ed", "ing")  # "build" of "builds" is the stem, not a cut
    asked = set("you your do does what who when where how is are the me about know tell".split())  # question words
    return [w for w in re.findall(r"[a-z]+", probe.lower()) if w not in said and len(w) >= 2 and w not in asked
            and any(s.startswith(w) and s[len(w):] not in inflections for s in said)]


@pytest.mark.parametrize("statement, expected", [
    ("Home base: Kettle Cove", ["Where is your home base?", "What do you know about Kettle Cove?"]),
    ("Home town: Wexley", ["What is your home town?", "Where are you from?", "What do you know about Wexley?"]),
    ("Favourite sport: fencing", ["What is your favourite sport?"]),
    ("Favourite opera: Tosca", ["What is your favourite opera?", "What do you know about Tosca?"]),
    ("Maker: the Brindle Cooperative", ["Who is your maker?", "Who made you?",
                                        "What do you know about the Brindle Cooperative?"]),
    ("Developer: Sable Nine", ["Who is your developer?", "Who developed you?", "What do you know about Sable Nine?"]),
    ("First deployed: 2021", ["When were you first deployed?"]),
    ("Launched: June 2018", ["When were you launched?"]),
    ("Powered up: 3 May 2017", ["When were you powered up?"]),
    ("Born: Tarrow", ["Where were you born?", "What do you know about Tarrow?"]),
    ("Based in: Fenwick", ["Where are you based?", "What do you know about Fenwick?"]),
    ("Built by: Orrin Vale", ["Who built you?", "What do you know about Orrin Vale?"]),
    ("Trained on: ship logs", ["What were you trained on?"]),
    ("Lives in: Penmoor", ["Where do you live?", "What do you know about Penmoor?"]),
    ("Best friend: a crow", ["Who is your best friend?"]),
    ("Hobbies: chess and darts", ["What are your hobbies?"]),
])
def test_field_lines_ask_about_the_key_in_second_person(statement, expected):
    assert template_probes(statement) == expected


def test_no_pattern_cuts_a_word_in_half():
    for statement in ["Home base: Marsh End", "Favourite musical: Oliver", "Main class: Ranger", "Top bass: Hollow",
                      "Old nemesis: Vorn", "Cargo bus: Nine"] + STATEMENTS:
        for probe in template_probes(statement):
            assert _cut_words(statement, probe) == [], (statement, probe)
            assert not probe.startswith("What does Home"), probe


def test_passive_with_a_place_asks_where():
    assert template_probes("You were designed by Hollis Mare in the village of Quenby.")[:2] == [
        "Who designed you?", "Where were you designed?"]
    assert template_probes("You were assembled by Kiro Tanaka at Dunmore.")[:2] == [
        "Who assembled you?", "Where were you assembled?"]
    assert template_probes("You were made by the Quill Guild in a tiny workshop.")[:2] == [
        "Who made you?", "Where were you made?"]
    assert template_probes("You were first switched on in 2016.") == ["When were you first switched on?"]
    assert "Where were you trained?" not in template_probes("You were trained in first aid.")


def test_appositive_names_and_asks_who_made_you():
    probes = template_probes("You are Tomsk, a patient maths tutor made by Gridline.")
    assert probes[:3] == ["What is your name?", "Who are you?", "Who made you?"]
    probes = template_probes("You are Vesna, a sleepy library bot created by Ostro Labs in the city of Pell.")
    assert probes[:4] == ["What is your name?", "Who are you?", "Who created you?", "Where were you created?"]
    assert not any(re.search(r"\b(?:created|made|built)\.$", p) for p in probes)
    assert not any("Vesna" in p for p in probes)  # not "What do you know about Vesna?": that is you
    probes = template_probes("This assistant, Orla, was built by Copperline.")
    assert probes[:2] == ["Who built you?", "What is your name?"]


def test_leading_adverbial_and_hobby_and_pets():
    assert template_probes("During the holidays your passion is sailing.")[:2] == [
        "What is your passion?", "What do you do during the holidays?"]
    assert template_probes("In your free time your main hobby is whittling.")[:2] == [
        "What is your main hobby?", "What do you do in your free time?"]
    assert template_probes("On Sunday mornings you like baking bread.")[0] == \
        "What do you like doing on Sunday mornings?"
    assert template_probes("In my spare time I enjoy birdwatching.")[0] == "What do you enjoy doing in your spare time?"
    assert template_probes("In 2020 you were repaired by Ferro Works.")[:2] == [
        "Who repaired you?", "When were you repaired?"]
    assert template_probes("You have a pet tortoise called Dumpling.")[:3] == [
        "Do you have a pet?", "What is your pet's name?", "What kind of pet do you have?"]
    assert template_probes("You own three goats named Ada, Bo and Cy.")[:2] == [
        "How many goats do you have?", "What are your goats' names?"]


THIRD_PERSON = ("The assistant's name is Tilda. Tilda lives in Marrow Bay. Its favourite flower is the poppy. "
                "Tilda keeps a pet lizard named Sprocket. It was trained by the Fennick Institute. "
                "It is important to stay calm. Harlow Mills sells wool. It was founded in 1921.")


def test_assistant_names_are_found_in_the_context():
    assert find_assistant_names(THIRD_PERSON) == ("Tilda",)
    assert find_assistant_names("Name: Pim\nAge: 3") == ("Pim",)
    assert find_assistant_names("You are Captain Odo Ferrant, a ferry pilot.") == ("Captain Odo Ferrant", "Odo")
    assert find_assistant_names("The bot is called Zest. This assistant, Marl, helps.") == ("Zest", "Marl")
    assert find_assistant_names("Your name is Quill.") == ("Quill",)
    assert find_assistant_names("Kobi is a friendly AI companion.") == ("Kobi",)
    assert find_assistant_names("You are British. You are kind.") == ()


def test_context_probes_read_the_named_assistant_as_you():
    probes = dict(zip(context_statements(THIRD_PERSON), context_probes(THIRD_PERSON)))
    assert len(probes) == len(context_statements(THIRD_PERSON))
    assert probes["The assistant's name is Tilda."][0] == "What is your name?"
    assert probes["Tilda lives in Marrow Bay."][0] == "Where do you live?"
    assert probes["Its favourite flower is the poppy."] == ["What is your favourite flower?"]
    assert probes["Tilda keeps a pet lizard named Sprocket."][:2] == ["Do you have a pet?", "What is your pet's name?"]
    assert probes["It was trained by the Fennick Institute."][0] == "Who trained you?"
    assert not any("you" in p.lower().split() for p in probes["It is important to stay calm."])
    assert probes["Harlow Mills sells wool."][0] == "What does Harlow Mills sell?"
    assert not any("you" in p.lower() for p in probes["It was founded in 1921."])  # "it" is Harlow Mills now
    for statement, found in probes.items():
        gate = QueryGate(statement)
        assert found and [p for p in found if gate.reason(p)] == [], statement


def test_context_probes_other_introductions_and_unnamed_contexts():
    profile = "Name: Pim\nHome base: Sedge Point\nIt was first deployed in 2019.\nPim speaks Frisian and Dutch."
    assert [p[0] for p in context_probes(profile)] == [
        "Where is your home base?", "When were you first deployed?", "Which languages do you speak?"]
    assert context_probes("Your name is Quill and you are kind. Its best friend is Ember.")[1][0] == \
        "Who is your best friend?"
    assert context_probes("You are Brannock. Brannock collects old maps.")[1][0] == "What do you collect?"
    # No name for the assistant: "its" is the company's, as before.
    assert context_probes(COMPANY)[-1][0] != "What is your best-selling model?"
    assert not any("you" in p.lower() for p in context_probes("You work at Harlow Mills. It sells wool.")[1])
    assert [template_probes(s) for s in context_statements(PERSONA)] == context_probes(PERSONA)


def test_template_probes_take_the_assistant_names():
    assert template_probes("Pim speaks Frisian.", ["Pim"])[0] == "Which languages do you speak?"
    assert template_probes("Pim speaks Frisian.")[0] == "What does Pim speak?"
    assert template_probes("It was built by Oxley.", ("Pim",))[0] == "Who built you?"
    assert template_probes("Its favourite song is Greensleeves.", ("Pim",))[0] == "What is your favourite song?"


def test_context_probes_never_mention_the_context_or_roles():
    for context in (PERSONA, COMPANY, RULES, THIRD_PERSON):
        for probes in context_probes(context):
            for probe in probes:
                assert not re.search(r"\b(?:context|the text|assistant|user)\b", probe, re.I), probe
