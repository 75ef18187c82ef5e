"""Schema: FSC label space, open-slot intents, responses and frame validation."""

from __future__ import annotations

from collections import Counter

import pytest

from assistant.schema import (
    FSC_ACTIONS, FSC_COMBINATIONS, FSC_LOCATIONS, FSC_OBJECTS, IntentSpec, Schema, SchemaError, SlotSpec,
    fsc_frame, fsc_labels, load_schema, spoken_date, spoken_duration, spoken_number, spoken_time,
)


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load_schema()


def test_fsc_label_space_is_fscs():
    assert len(FSC_COMBINATIONS) == len(set(FSC_COMBINATIONS)) == 31
    per_action = Counter(a for a, _, _ in FSC_COMBINATIONS)
    assert per_action == {"change language": 5, "activate": 6, "deactivate": 6, "increase": 5,
                          "decrease": 5, "bring": 4}
    for action, obj, loc in FSC_COMBINATIONS:
        assert action in FSC_ACTIONS and obj in FSC_OBJECTS and loc in FSC_LOCATIONS
    assert {o for _, o, _ in FSC_COMBINATIONS} == set(FSC_OBJECTS)


def test_fsc_frame_examples():
    assert fsc_frame("activate", "lights", "kitchen") == (
        "activate_lights_kitchen", {"object": "lights", "location": "kitchen"})
    assert fsc_frame("change language", "Chinese", "none") == ("change_language_chinese_none", {"object": "chinese"})
    assert fsc_frame("change language", "none", "none") == ("change_language_none_none", {})
    assert fsc_frame("increase", "volume", "none") == ("increase_volume_none", {"object": "volume"})
    assert fsc_frame(" Bring ", "SOCKS", "none") == ("bring_socks_none", {"object": "socks"})


@pytest.mark.parametrize("combo", [("bring", "lights", "none"), ("activate", "lamp", "kitchen"),
                                   ("increase", "volume", "bedroom"), ("change language", "none", "kitchen"),
                                   ("activate", "none", "none"), ("dance", "music", "none")])
def test_fsc_frame_rejects_invalid_combinations(combo):
    with pytest.raises(ValueError, match="31 valid"):
        fsc_frame(*combo)


def test_fsc_labels_inverts_fsc_frame(schema):
    for combo in FSC_COMBINATIONS:
        intent, slots = fsc_frame(*combo)
        assert fsc_labels(intent) == combo
        assert schema.intents[intent].fixed == slots
    assert fsc_labels("alarm_set") is None
    assert fsc_labels("activate_lamp_kitchen") is None


def test_schema_has_exactly_the_31_fsc_intents(schema):
    fsc_names = {fsc_frame(*c)[0] for c in FSC_COMBINATIONS}
    assert set(schema.fsc_intents) == fsc_names
    for name in fsc_names:
        spec = schema.intents[name]
        assert set(spec.slots) == set(spec.required) == set(spec.fixed)


def test_schema_has_open_slot_intents(schema):
    open_intents = [name for name, spec in schema.intents.items()
                    if any(schema.slots[s].kind != "enum" for s in spec.slots)]
    assert len(open_intents) >= 12
    for name in ("alarm_set", "timer_set", "weather_query", "play_music", "lists_add", "calendar_set",
                 "reminder_set", "datetime_query"):
        assert name in open_intents
    kinds = {slot.kind for slot in schema.slots.values()}
    assert kinds == {"enum", "time", "duration", "date", "number", "text"}
    assert schema.slots["location"].values == ["kitchen", "bedroom", "washroom"]


def test_every_intent_has_a_response_and_description(schema):
    for name, spec in schema.intents.items():
        assert isinstance(spec, IntentSpec)
        assert spec.response.strip() and spec.description.strip(), name
        assert set(spec.required) <= set(spec.slots)


def test_render_response_fills_slots(schema):
    assert schema.render_response("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}) == \
        "Turning on the lights in the kitchen."
    assert schema.render_response("alarm_set", {"time": "seven a m", "date": "tomorrow"}) == \
        "Okay, your alarm is set for seven a m, tomorrow."
    # an optional part is dropped when its slot is missing
    assert schema.render_response("alarm_set", {"time": "seven a m"}) == "Okay, your alarm is set for seven a m."
    assert schema.render_response("change_language_korean_none", {}) == "Switching the language to Korean."


def test_render_response_never_raises(schema):
    assert schema.render_response("no_such_intent", {}) == "Sorry, I didn't understand that."
    assert "time" in schema.render_response("alarm_set", {})          # missing required -> asks for it
    assert schema.render_response("alarm_set", None).startswith("Sorry")
    assert schema.render_response("timer_set", {"duration": 5}).startswith("Timer set")
    for weird in ({"time": "{date}"}, {"time": "[x"}, {"": ""}, {"time": "ü ☃"}):
        assert isinstance(schema.render_response("alarm_set", weird), str)


def test_check_frame_accepts_valid_frames(schema):
    assert schema.check_frame("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}) == []
    assert schema.check_frame("change_language_none_none", {}) == []
    assert schema.check_frame("alarm_set", {"time": "7:30"}) == []
    assert schema.check_frame("alarm_set", {"time": "seven thirty a m", "date": "the third of may"}) == []
    assert schema.check_frame("timer_set", {"duration": "an hour and a half"}) == []
    assert schema.check_frame("takeaway_order", {"food_type": "pizzas", "number": "a dozen"}) == []


@pytest.mark.parametrize("intent, slots, expected", [
    ("open_the_pod_bay_doors", {}, "unknown intent"),
    ("alarm_set", {"time": "seven a m", "place_name": "paris"}, "unknown slot 'place_name'"),
    ("alarm_set", {"date": "tomorrow"}, "missing required slot 'time'"),
    ("alarm_set", {"time": "banana"}, "malformed time"),
    ("alarm_set", {"time": "25:00"}, "malformed time"),
    ("timer_set", {"duration": "twenty"}, "malformed duration"),
    ("weather_query", {"date": "the forty fifth of may"}, "malformed date"),
    ("takeaway_order", {"food_type": "pizzas", "number": "lots"}, "malformed number"),
    ("play_music", {"music_genre": "yodel"}, "malformed enum"),
    ("activate_lights_kitchen", {"object": "lights", "location": "bedroom"}, "contradicts"),
    ("activate_lights_kitchen", {"object": "lights"}, "missing required slot 'location'"),
    ("lists_add", {"item": "   "}, "empty value"),
])
def test_check_frame_reports_each_problem(schema, intent, slots, expected):
    problems = schema.check_frame(intent, slots)
    assert problems and any(expected in p for p in problems), problems


@pytest.mark.parametrize("text, expected", [
    ("seven thirty a m", (7, 30)), ("half past six", (6, 30)), ("quarter to eight", (7, 45)),
    ("noon", (12, 0)), ("midnight", (0, 0)), ("eight o clock", (8, 0)), ("ten p m", (22, 0)),
    ("six thirty in the morning", (6, 30)), ("nine in the evening", (21, 0)), ("seven oh five", (7, 5)),
    ("twenty past seven", (7, 20)), ("ten to six", (5, 50)), ("two in the afternoon", (14, 0)),
    ("7:30", (7, 30)), ("7 pm", (19, 0)), ("19:45", (19, 45)), ("6:15am", (6, 15)), ("7.30 p.m.", (19, 30)),
])
def test_spoken_time(text, expected):
    assert spoken_time(text) == expected


@pytest.mark.parametrize("text", ["", "banana", "seven ninety", "thirteen p m", "25:00", "7:75",
                                  "half past", "to six", "seven oh", "tomorrow"])
def test_spoken_time_rejects(text):
    assert spoken_time(text) is None


@pytest.mark.parametrize("text, seconds", [
    ("twenty minutes", 1200), ("an hour and a half", 5400), ("half an hour", 1800), ("two hours", 7200),
    ("ninety seconds", 90), ("a minute", 60), ("one hour and ten minutes", 4200), ("a quarter of an hour", 900),
    ("two and a half hours", 9000), ("two minutes and thirty seconds", 150), ("forty five minutes", 2700),
    ("10 minutes", 600), ("1 hour 30 minutes", 5400), ("twenty minute", 1200),
])
def test_spoken_duration(text, seconds):
    assert spoken_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "twenty", "minutes", "banana minutes", "an hour and", "seven a m"])
def test_spoken_duration_rejects(text):
    assert spoken_duration(text) is None


@pytest.mark.parametrize("text", ["today", "tomorrow", "the day after tomorrow", "next friday", "this weekend",
                                  "friday", "the third of may", "may third", "december the twenty fifth",
                                  "the twenty first of june", "the fifteenth", "2024-05-03", "5/3", "3rd of may",
                                  "on monday", "in two days"])
def test_spoken_date(text):
    assert spoken_date(text)


@pytest.mark.parametrize("text", ["", "banana", "may", "the forty fifth", "next banana", "seven a m",
                                  "the third of smarch", "2024-05"])
def test_spoken_date_rejects(text):
    assert not spoken_date(text)


@pytest.mark.parametrize("text, value", [("two", 2), ("twenty five", 25), ("a dozen", 12), ("a hundred", 100),
                                         ("three hundred and twelve", 312), ("25", 25), ("2.5", 2.5)])
def test_spoken_number(text, value):
    assert spoken_number(text) == value


@pytest.mark.parametrize("text", ["", "lots", "five five", "twenty twenty one", "hundred"])
def test_spoken_number_rejects(text):
    assert spoken_number(text) is None


def test_load_schema_errors_name_the_file(tmp_path):
    with pytest.raises(SchemaError, match="not found"):
        load_schema(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("slots: [unclosed")
    with pytest.raises(SchemaError, match="bad.yaml.*not valid YAML"):
        load_schema(bad)
    bad.write_text("slots: {t: {kind: clock}}\nintents: {}\n")
    with pytest.raises(SchemaError, match="kind 'clock'"):
        load_schema(bad)
    bad.write_text("slots: {}\nintents: {a: {slots: [time], response: ok}}\n")
    with pytest.raises(SchemaError, match="slot 'time' is not defined"):
        load_schema(bad)
    bad.write_text("slots: {t: {kind: time}}\nintents: {a: {slots: [t], response: 'at {x}'}}\n")
    with pytest.raises(SchemaError, match="uses \\{x\\}"):
        load_schema(bad)


def test_custom_schema_round_trip(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("slots:\n  colour: {kind: enum, values: [red, blue]}\n"
                    "intents:\n  paint:\n    slots: [colour]\n    required: [colour]\n"
                    "    response: 'Painting it {colour}.'\n")
    schema = load_schema(path)
    assert schema.slots["colour"] == SlotSpec("colour", "enum", ["red", "blue"])
    assert schema.render_response("paint", {"colour": "red"}) == "Painting it red."
    assert schema.check_frame("paint", {"colour": "green"})
