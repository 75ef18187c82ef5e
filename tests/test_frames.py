"""Frames: the decoder's target string, and a parser that never raises."""

from __future__ import annotations

import random

import pytest

from assistant.data.grammar import load_grammar
from assistant.frames import Frame, ParseResult, format_frame, frame_to_dict, parse_frame
from assistant.schema import load_schema


def test_format_matches_the_contract():
    frame = Frame("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}, "turn on the kitchen lights")
    assert format_frame(frame) == "turn on the kitchen lights | activate_lights_kitchen | location=kitchen ; object=lights"
    assert format_frame(Frame("change_language_none_none", {}, "change language")) == \
        "change language | change_language_none_none |"
    assert format_frame(Frame("timer_remove", {}, "")) == "| timer_remove |"


def test_parse_reads_the_format_back():
    r = parse_frame("wake me up at seven a m tomorrow | alarm_set | date=tomorrow ; time=seven a m")
    assert r == ParseResult(True, Frame("alarm_set", {"date": "tomorrow", "time": "seven a m"},
                                        "wake me up at seven a m tomorrow"), "")
    r = parse_frame("change language | change_language_none_none |")
    assert r.valid and r.frame == Frame("change_language_none_none", {}, "change language")
    r = parse_frame("| timer_remove |")
    assert r.valid and r.frame == Frame("timer_remove", {}, "")


def test_an_intent_first_string_is_not_misread():
    """The old order (intent | slots | transcript) must not parse as a frame with the wrong fields."""
    for old in ["alarm_set | time=noon | set an alarm at noon", "change_language_none_none | | change language",
                "timer_remove | |"]:
        r = parse_frame(old)
        assert not r.valid and r.frame is None and "bad intent" in r.error, (old, r)


def test_parse_is_tolerant_of_spacing():
    r = parse_frame("  set an   alarm|alarm_set|time=noon;date=tomorrow \n")
    assert r.valid, r.error
    assert r.frame == Frame("alarm_set", {"time": "noon", "date": "tomorrow"}, "set an alarm")
    r = parse_frame("x |  alarm_set |  time =  half past   six  ;  ")
    assert r.frame.slots == {"time": "half past six"}


def test_format_sanitises_separators():
    frame = Frame("lists add", {"item": "milk | eggs ; bread = jam", "list name": "a\nb"}, "add | this ; = now")
    text = format_frame(frame)
    assert text == "add this now | lists_add | item=milk eggs bread jam ; list_name=a b"
    r = parse_frame(text)
    assert r.valid and r.frame == Frame("lists_add", {"item": "milk eggs bread jam", "list_name": "a b"}, "add this now")
    # a value that is only separators is dropped rather than written as "slot="
    assert format_frame(Frame("alarm_set", {"time": "|;="}, "x")) == "x | alarm_set |"
    # a transcript that is only separators becomes empty, and the frame still parses
    assert format_frame(Frame("alarm_set", {"time": "noon"}, " | ; = ")) == "| alarm_set | time=noon"
    assert parse_frame("| alarm_set | time=noon").frame == Frame("alarm_set", {"time": "noon"}, "")


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
    ("x | Alarm_Set |", "bad intent"), ("x | | time=noon", "bad intent"), ("x | alarm set |", "bad intent"),
    ("x | ålarm |", "bad intent"), ("x | 🙂 |", "bad intent"), ("x |", "bad intent"), ("|", "bad intent"),
    ("🙂", "truncated in the transcript"), ("set an alarm for noon", "truncated in the transcript"),
])
def test_parse_rejects_without_a_frame(text, error):
    r = parse_frame(text)
    assert not r.valid and r.frame is None and error in r.error


@pytest.mark.parametrize("text, error, slots", [
    ("set an alarm | alarm_set", "truncated after the intent", {}),
    ("set an alarm | alarm_set | time", "has no '='", {}),          # truncated inside a slot name
    ("set an alarm | alarm_set | time=noon ;", "empty slot", {"time": "noon"}),   # truncated after a ';'
    ("set an alarm | alarm_set | time=noon ; time=seven a m", "duplicate slot 'time'", {"time": "noon"}),
    ("set an alarm | alarm_set | time=7=30", "contains '='", {"time": "7=30"}),
    ("set an alarm | alarm_set | time noon", "has no '='", {}),
    ("set an alarm | alarm_set | time=", "empty value", {}),
    ("set an alarm | alarm_set | =noon", "bad slot name", {}),
    ("set an alarm | alarm_set | Time=noon", "bad slot name", {}),
    ("set an alarm | alarm_set | time=noon ;; date=today", "empty slot", {"time": "noon", "date": "today"}),
    ("set an alarm | alarm_set | time=noon | y", "extra '|'", {"time": "noon"}),
    ("set an alarm | alarm_set | time=noon |", "extra '|'", {"time": "noon"}),
    ("set an alarm | alarm_set | | time=noon", "extra '|'", {}),
])
def test_parse_flags_malformed_output_but_keeps_the_intent(text, error, slots):
    r = parse_frame(text)
    assert not r.valid and error in r.error, r
    assert r.frame is not None and r.frame.intent == "alarm_set" and r.frame.slots == slots
    assert r.frame.transcript == "set an alarm"


def test_parse_accepts_bytes_and_unicode_values():
    r = parse_frame("play beyoncé | play_music | artist_name=beyoncé".encode())
    assert r.valid and r.frame == Frame("play_music", {"artist_name": "beyoncé"}, "play beyoncé")


def test_every_truncation_of_a_frame_parses_without_raising():
    transcript = "set an alarm for seven a m the third of may"
    slots = {"date": "the third of may", "time": "seven a m"}
    text = format_frame(Frame("alarm_set", slots, transcript))
    intent_end = text.index("alarm_set") + len("alarm_set")
    for cut in range(len(text) + 1):
        prefix = text[:cut]
        r = parse_frame(prefix)
        assert isinstance(r, ParseResult) and r.valid == (r.error == "")
        if "|" not in prefix:       # still inside the transcript: nothing to score yet
            assert not r.valid and r.frame is None
        if r.frame is not None:     # any partial parse has the whole transcript and a prefix of the intent
            assert r.frame.transcript == transcript and "alarm_set".startswith(r.frame.intent), (prefix, r)
        if cut >= intent_end:       # once the intent is written it is always read back
            assert r.frame is not None and r.frame.intent == "alarm_set", (prefix, r)
        if r.valid:                 # only cuts inside the slot part may be valid; values may be cut short
            assert prefix.count("|") == 2 and cut > intent_end
            assert all(slots[k].startswith(v) for k, v in r.frame.slots.items()), (prefix, r)
    assert parse_frame(text).frame == Frame("alarm_set", slots, transcript)


def test_parser_fuzz_never_raises():
    rng = random.Random(1234)
    alphabet = list("abcdefghij_ =|;\n\t0123456789") + ["é", "ß", "日", "🙂", "\x00", "\ufffd", "\u200b", "||", "=="]
    seeds = [format_frame(Frame("alarm_set", {"time": "noon"}, "alarm at noon")), "x | activate_lights_kitchen |"]
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
