"""Frames: the decoder's target string, and a parser that never raises."""

from __future__ import annotations

import random

import pytest

from assistant.data.grammar import load_grammar
from assistant.frames import Frame, ParseResult, format_frame, frame_to_dict, parse_frame
from assistant.schema import load_schema


def test_format_matches_the_contract():
    frame = Frame("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}, "turn on the kitchen lights")
    assert format_frame(frame) == "activate_lights_kitchen | location=kitchen ; object=lights | turn on the kitchen lights"
    assert format_frame(Frame("change_language_none_none", {}, "change language")) == \
        "change_language_none_none | | change language"
    assert format_frame(Frame("timer_remove", {}, "")) == "timer_remove | |"


def test_parse_reads_the_format_back():
    r = parse_frame("alarm_set | date=tomorrow ; time=seven a m | wake me up at seven a m tomorrow")
    assert r == ParseResult(True, Frame("alarm_set", {"date": "tomorrow", "time": "seven a m"},
                                        "wake me up at seven a m tomorrow"), "")
    r = parse_frame("change_language_none_none | | change language")
    assert r.valid and r.frame == Frame("change_language_none_none", {}, "change language")
    assert parse_frame("timer_remove | |").frame == Frame("timer_remove", {}, "")


def test_parse_is_tolerant_of_spacing():
    r = parse_frame("  alarm_set|time=noon;date=tomorrow|set an   alarm \n")
    assert r.valid, r.error
    assert r.frame == Frame("alarm_set", {"time": "noon", "date": "tomorrow"}, "set an alarm")
    r = parse_frame("alarm_set |  time =  half past   six  ;  | x")
    assert r.frame.slots == {"time": "half past six"}


def test_format_sanitises_separators():
    frame = Frame("lists add", {"item": "milk | eggs ; bread = jam", "list name": "a\nb"}, "add | this ; = now")
    text = format_frame(frame)
    assert text == "lists_add | item=milk eggs bread jam ; list_name=a b | add this now"
    r = parse_frame(text)
    assert r.valid and r.frame == Frame("lists_add", {"item": "milk eggs bread jam", "list_name": "a b"}, "add this now")
    # a value that is only separators is dropped rather than written as "slot="
    assert format_frame(Frame("alarm_set", {"time": "|;="}, "x")) == "alarm_set | | x"


def test_round_trip_for_every_generated_sentence():
    schema, grammar = load_schema(), load_grammar()
    sentences = grammar.all_sentences(schema)
    assert len(sentences) >= 1500
    for s in sentences:
        frame = Frame(s.intent, s.slots, s.text)
        r = parse_frame(format_frame(frame))
        assert r.valid and r.frame == frame, (s, r)


@pytest.mark.parametrize("text, error", [
    (None, "None"), ("", "empty"), ("   \n ", "empty"), (42, "expected a string"), (["a"], "expected a string"),
    ("Alarm_Set | | x", "bad intent"), ("| time=noon | x", "bad intent"), ("alarm set | | x", "bad intent"),
    ("ålarm | | x", "bad intent"), ("🙂", "bad intent"),
])
def test_parse_rejects_without_a_frame(text, error):
    r = parse_frame(text)
    assert not r.valid and r.frame is None and error in r.error


@pytest.mark.parametrize("text, error, slots", [
    ("alarm_set", "truncated after the intent", {}),
    ("alarm_set | time=noon", "truncated after the slots", {"time": "noon"}),
    ("alarm_set | time=no", "truncated", {"time": "no"}),
    ("alarm_set | time=noon ; time=seven a m | x", "duplicate slot 'time'", {"time": "noon"}),
    ("alarm_set | time=7=30 | x", "contains '='", {"time": "7=30"}),
    ("alarm_set | time noon | x", "has no '='", {}),
    ("alarm_set | time= | x", "empty value", {}),
    ("alarm_set | =noon | x", "bad slot name", {}),
    ("alarm_set | Time=noon | x", "bad slot name", {}),
    ("alarm_set | time=noon ;; date=today | x", "empty slot", {"time": "noon", "date": "today"}),
    ("alarm_set | time=noon | x | y", "extra '|'", {"time": "noon"}),
])
def test_parse_flags_malformed_output_but_keeps_the_intent(text, error, slots):
    r = parse_frame(text)
    assert not r.valid and error in r.error, r
    assert r.frame is not None and r.frame.intent == "alarm_set" and r.frame.slots == slots


def test_parse_accepts_bytes_and_unicode_values():
    r = parse_frame("play_music | artist_name=beyoncé | play beyoncé".encode())
    assert r.valid and r.frame.slots == {"artist_name": "beyoncé"}


def test_every_truncation_of_a_frame_parses_without_raising():
    text = format_frame(Frame("alarm_set", {"date": "the third of may", "time": "seven a m"},
                              "set an alarm for seven a m the third of may"))
    for cut in range(len(text) + 1):
        r = parse_frame(text[:cut])
        assert isinstance(r, ParseResult)
        if r.valid:      # only complete prefixes of the slot part may be valid
            assert r.frame.intent == "alarm_set" and text[:cut].count("|") == 2
        if cut >= len("alarm_set"):
            assert r.frame is not None and r.frame.intent == "alarm_set"


def test_parser_fuzz_never_raises():
    rng = random.Random(1234)
    alphabet = list("abcdefghij_ =|;\n\t0123456789") + ["é", "ß", "日", "🙂", "\x00", "\ufffd", "\u200b", "||", "=="]
    seeds = [format_frame(Frame("alarm_set", {"time": "noon"}, "alarm at noon")), "activate_lights_kitchen | | x"]
    results = []
    for i in range(5000):
        if i % 2:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        else:                       # mutate a valid frame: delete, duplicate, insert separators
            chars = list(rng.choice(seeds))
            for _ in range(rng.randint(1, 5)):
                pos = rng.randrange(len(chars) + 1)
                op = rng.random()
                if op < 0.4 and chars:
                    del chars[min(pos, len(chars) - 1)]
                else:
                    chars.insert(pos, rng.choice(alphabet))
            text = "".join(chars)
        r = parse_frame(text)
        assert isinstance(r, ParseResult) and isinstance(r.error, str)
        assert r.valid == (r.error == "")
        if r.valid:
            # a valid parse re-formats to an equivalent frame
            assert parse_frame(format_frame(r.frame)).frame == r.frame
        results.append(r.valid)
    assert 0 < sum(results) < len(results)       # the fuzz hits both outcomes


def test_frame_to_dict():
    frame = Frame("timer_set", {"duration": "ten minutes"}, "set a timer for ten minutes")
    d = frame_to_dict(frame)
    assert d == {"intent": "timer_set", "slots": {"duration": "ten minutes"}, "transcript": "set a timer for ten minutes"}
    d["slots"]["duration"] = "changed"
    assert frame.slots["duration"] == "ten minutes"      # a copy, not a view
