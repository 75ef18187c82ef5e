"""Grammar: templates per intent -> labelled, distinct, deterministic sentences."""

from __future__ import annotations

import re
from collections import defaultdict

import pytest

from assistant.data.grammar import Grammar, GrammarError, Sentence, load_grammar
from assistant.schema import fsc_frame, fsc_labels, load_schema

WORDS = re.compile(r"^[a-z0-9]+( [a-z0-9]+)*$")


@pytest.fixture(scope="module")
def schema():
    return load_schema()


@pytest.fixture(scope="module")
def grammar() -> Grammar:
    return load_grammar()


@pytest.fixture(scope="module")
def sentences(grammar, schema) -> list[Sentence]:
    return grammar.all_sentences(schema)


def test_every_schema_intent_has_at_least_five_templates(grammar, schema):
    assert set(grammar.intents) == set(schema.intents)
    for intent in schema.intents:
        ids = grammar.template_ids(intent)
        assert len(ids) >= 5, (intent, ids)
        assert all(t.startswith(intent + "/") for t in ids)
    all_ids = grammar.template_ids()
    assert len(all_ids) == len(set(all_ids)) == sum(len(grammar.template_ids(i)) for i in schema.intents)
    assert grammar.template_ids("no_such_intent") == []


def test_every_template_yields_sentences(grammar, schema, sentences):
    per_template = defaultdict(int)
    for s in sentences:
        per_template[s.template_id] += 1
    assert set(per_template) == set(grammar.template_ids())


def test_many_distinct_sentences(sentences):
    texts = [s.text for s in sentences]
    assert len(texts) == len(set(texts))
    assert len(texts) >= 1500


def test_sentences_are_lower_case_words(sentences):
    bad = [s.text for s in sentences if not WORDS.match(s.text)]
    assert not bad, bad[:10]
    assert not [s.text for s in sentences if re.search(r"\d", s.text)], "numbers must be spelled out"


def test_open_slot_values_are_substrings_and_valid(schema, sentences):
    for s in sentences:
        assert schema.check_frame(s.intent, s.slots) == [], (s, schema.check_frame(s.intent, s.slots))
        if fsc_labels(s.intent) is None:
            for name, value in s.slots.items():
                assert value in s.text, (s, name)
                assert re.search(rf"\b{re.escape(value)}\b", s.text), (s, name)


def test_fsc_sentences_carry_the_fsc_labels(sentences):
    seen = set()
    for s in sentences:
        labels = fsc_labels(s.intent)
        if labels:
            assert fsc_frame(*labels) == (s.intent, s.slots)
            seen.add(s.intent)
    assert len(seen) == 31


def test_fsc_phrasings_like_real_transcripts(sentences):
    by_text = {s.text: s.intent for s in sentences}
    for text, intent in [("turn on the lights in the kitchen", "activate_lights_kitchen"),
                         ("lights on", "activate_lights_none"), ("make it louder", "increase_volume_none"),
                         ("switch on the kitchen lights", "activate_lights_kitchen"),
                         ("i need some juice", "bring_juice_none"), ("use chinese", "change_language_chinese_none"),
                         ("language settings", "change_language_none_none"),
                         ("change language", "change_language_none_none"),
                         ("switch the language", "change_language_none_none")]:
        assert by_text.get(text) == intent, text


def test_no_sentence_has_two_intents(grammar, schema):
    intent_of: dict[str, str] = {}
    for tid in grammar.template_ids():
        for s in grammar.expand(schema, [tid], per_template=60, seed=0):
            assert intent_of.setdefault(s.text, s.intent) == s.intent, (s.text, intent_of[s.text], s.intent)


def test_templates_do_not_share_sentences(grammar, schema):
    """A held-out template must bring phrasings that the training templates never produce."""
    owner: dict[str, str] = {}
    for tid in grammar.template_ids():
        for s in grammar.expand(schema, [tid], per_template=300, seed=0):
            assert owner.setdefault(s.text, tid) == tid, (s.text, owner[s.text], tid)


def test_every_response_renders_for_generated_sentences(schema, sentences):
    for s in sentences[::7]:
        reply = schema.render_response(s.intent, s.slots)
        assert reply and not re.search(r"[{}\[\]]", reply) and not reply.startswith("Sorry"), (s, reply)
        for value in s.slots.values():
            if schema.intents[s.intent].fixed.get("object") not in ("chinese", "korean", "english", "german"):
                assert value in reply, (s, reply)


def test_expand_is_deterministic_and_distinct(grammar, schema):
    ids = grammar.template_ids("alarm_set") + grammar.template_ids("activate_lights_kitchen")
    a = grammar.expand(schema, ids, per_template=5, seed=3)
    b = grammar.expand(schema, ids, per_template=5, seed=3)
    c = grammar.expand(schema, ids, per_template=5, seed=4)
    assert a == b
    assert [s.text for s in a] != [s.text for s in c]
    assert len({s.text for s in a}) == len(a)
    assert {s.template_id for s in a} == set(ids)
    counts = defaultdict(int)
    for s in a:
        counts[s.template_id] += 1
    assert max(counts.values()) <= 5
    assert all(counts[t] == 5 for t in grammar.template_ids("alarm_set"))


def test_a_templates_sentences_do_not_depend_on_the_others(grammar, schema):
    tid = "weather_query/will_it"
    alone = grammar.expand(schema, [tid], per_template=8, seed=11)
    together = [s for s in grammar.expand(schema, grammar.template_ids("weather_query"), 8, 11)
                if s.template_id == tid]
    assert alone == together and len(alone) == 8


def test_small_templates_are_enumerated_exhaustively(grammar, schema):
    tid = "activate_lights_kitchen/loc_lights_on"        # "{location} lights on <please>"
    got = {s.text for s in grammar.expand(schema, [tid], per_template=100, seed=0)}
    assert got == {"kitchen lights on", "kitchen lights on please"}
    assert grammar.template_size(tid) == 2


def test_held_out_templates_leave_three_for_training(grammar, schema):
    for intent in schema.intents:
        ids = grammar.template_ids(intent)
        train, held_out = ids[:-2], ids[-2:]
        assert len(train) >= 3
        train_texts = {s.text for s in grammar.expand(schema, train, per_template=20, seed=0)}
        test_texts = {s.text for s in grammar.expand(schema, held_out, per_template=20, seed=0)}
        assert train_texts and test_texts - train_texts, intent


def test_unknown_template_id_is_an_error(grammar, schema):
    with pytest.raises(GrammarError, match="unknown template"):
        grammar.expand(schema, ["alarm_set/nope"], per_template=1, seed=0)


MINI = """
fragments:
  please: "(please|)"
lists:
  time: [seven a m, noon]
  date: [tomorrow]
  date_on: [friday]
fsc:
  labels:
    location: {washroom: "(washroom|bathroom)"}
  groups:
    activate/lights:
      a: "lights on"
      b: "{location} lights on"
intents:
  alarm_set:
    x: "(set|make) an alarm for {time} [{date}] <please>"
    y: "alarm on {date:date_on} at {time}"
"""


def _mini(tmp_path, text=MINI):
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


def test_template_syntax(tmp_path, schema):
    g = load_grammar(_mini(tmp_path))
    got = {s.text: s.slots for s in g.expand(schema, g.template_ids("alarm_set"), per_template=100, seed=0)}
    assert len(got) == 2 * 2 * 2 * 2 + 2
    assert got["make an alarm for noon tomorrow please"] == {"time": "noon", "date": "tomorrow"}
    assert got["set an alarm for seven a m"] == {"time": "seven a m"}
    assert got["alarm on friday at noon"] == {"date": "friday", "time": "noon"}
    # a slot may appear in several alternatives, as only one of them is said
    g2 = load_grammar(_mini(tmp_path, MINI.replace('y: "alarm on {date:date_on} at {time}"',
                                                    'y: "(alarm at {time}|wake me at {time}) [{date}]"')))
    got2 = {s.text: s.slots for s in g2.expand(schema, ["alarm_set/y"], per_template=100, seed=0)}
    assert len(got2) == 8 and got2["wake me at noon tomorrow"] == {"time": "noon", "date": "tomorrow"}
    washroom = g.expand(schema, g.template_ids("activate_lights_washroom"), per_template=10, seed=0)
    assert {s.text for s in washroom} == {"washroom lights on", "bathroom lights on"}
    assert all(s.slots == {"object": "lights", "location": "washroom"} for s in washroom)


@pytest.mark.parametrize("template, message", [
    ("(set an alarm for {time}", "missing ')'"),
    ("set an alarm] for {time}", "unbalanced"),
    ("set an alarm for {clock}", "no list 'clock'"),
    ("set an alarm for <nope> {time}", "unknown fragment <nope>"),
    ("set an alarm for {time} or {time}", "said twice"),
    ("{time", "missing '}'"),
    ("set an alarm for {time} [or {time}]", "said twice"),
    ("alarm for {time} <bad>", "unknown fragment <bad>"),
])
def test_template_errors_name_the_file_and_template(tmp_path, template, message):
    text = MINI.replace('x: "(set|make) an alarm for {time} [{date}] <please>"', f"x: {template!r}")
    with pytest.raises(GrammarError, match=re.escape(message)) as e:
        load_grammar(_mini(tmp_path, text))
    assert "g.yaml" in str(e.value) and "alarm_set/x" in str(e.value)


def test_grammar_file_errors(tmp_path, schema):
    with pytest.raises(GrammarError, match="not found"):
        load_grammar(tmp_path / "missing.yaml")
    with pytest.raises(GrammarError, match="punctuation"):
        load_grammar(_mini(tmp_path, MINI.replace("[seven a m, noon]", "['7:30', noon]")))
    with pytest.raises(GrammarError, match="not an FSC action"):
        load_grammar(_mini(tmp_path, MINI.replace("activate/lights", "activate/light")))
    with pytest.raises(GrammarError, match="must say \\{object\\}"):
        load_grammar(_mini(tmp_path, MINI.replace("intents:", "    bring:\n      b: 'bring it'\nintents:")))
    with pytest.raises(GrammarError, match="alarm_set/z must be a string"):
        load_grammar(_mini(tmp_path, MINI + "    z: {b: 'bring it'}\n"))
    g = load_grammar(_mini(tmp_path, MINI.replace("alarm_set:", "alarm_dance:")))
    with pytest.raises(GrammarError, match="alarm_dance.*does not define"):
        g.expand(schema, g.template_ids("alarm_dance"), per_template=1, seed=0)
    g = load_grammar(_mini(tmp_path, MINI.replace("alarm_set:", "timer_set:").replace("{date:date_on}", "")))
    with pytest.raises(GrammarError, match="does not have"):
        g.expand(schema, g.template_ids("timer_set"), per_template=1, seed=0)
