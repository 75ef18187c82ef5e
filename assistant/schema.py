"""The assistant's domain: intents, their slots and what the assistant says back.

The default domain (data/schema.yaml) is Fluent Speech Commands' label space -- each of
its 31 valid (action, object, location) combinations is one intent -- plus SLURP-style
intents with open slots (alarms, timers, weather, music, lists, calendar, ...).

Slot kinds and the values ``check_frame`` accepts:

- ``enum``: one of the slot's ``values``.
- ``time``: spoken ("seven thirty a m", "half past six", "noon") or digits ("7:30", "7 pm").
- ``duration``: spoken ("twenty minutes", "an hour and a half") or digits ("10 minutes").
- ``date``: spoken ("tomorrow", "next friday", "the third of may") or digits ("2024-05-03", "3/5").
- ``number``: spoken ("twenty five", "a dozen") or digits ("25", "2.5").
- ``text``: any non-empty words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from .config import read_yaml
from .paths import DATA_DIR

DEFAULT_SCHEMA = DATA_DIR / "schema.yaml"
SLOT_KINDS = ("enum", "time", "duration", "date", "number", "text")


class SchemaError(ValueError):
    """A bad schema file; the message names the file, the entry and the fix."""


# --------------------------------------------------------------------------- FSC label space

FSC_ACTIONS = ("activate", "deactivate", "increase", "decrease", "change language", "bring")
FSC_OBJECTS = ("none", "music", "lights", "volume", "heat", "lamp", "newspaper", "juice", "socks",
               "shoes", "Chinese", "Korean", "English", "German")
FSC_LOCATIONS = ("none", "kitchen", "bedroom", "washroom")


def _fsc_combinations() -> tuple[tuple[str, str, str], ...]:
    combos: list[tuple[str, str, str]] = []
    for obj in ("none", "Chinese", "Korean", "English", "German"):
        combos.append(("change language", obj, "none"))
    for action in ("activate", "deactivate"):
        combos += [(action, "music", "none"), (action, "lamp", "none")]
        combos += [(action, "lights", loc) for loc in FSC_LOCATIONS]
    for action in ("increase", "decrease"):
        combos.append((action, "volume", "none"))
        combos += [(action, "heat", loc) for loc in FSC_LOCATIONS]
    combos += [("bring", obj, "none") for obj in ("newspaper", "juice", "socks", "shoes")]
    return tuple(combos)


# FSC's 31 valid (action, object, location) triples, in FSC's original casing.
FSC_COMBINATIONS = _fsc_combinations()


def _fsc_intent_name(action: str, obj: str, location: str) -> str:
    return f"{action}_{obj}_{location}".replace(" ", "_").lower()


_FSC_BY_INTENT = {_fsc_intent_name(*c): c for c in FSC_COMBINATIONS}
_FSC_BY_KEY = {tuple(x.lower() for x in c): c for c in FSC_COMBINATIONS}


def fsc_frame(action: str, object: str, location: str) -> tuple[str, dict[str, str]]:  # noqa: A002
    """FSC labels (any casing) -> (intent, slots). Raises ValueError outside the 31 combinations."""
    key = tuple(" ".join(str(x).split()).lower() for x in (action, object, location))
    if key not in _FSC_BY_KEY:
        raise ValueError(f"({action!r}, {object!r}, {location!r}) is not one of FSC's 31 valid "
                         "(action, object, location) combinations; see assistant.schema.FSC_COMBINATIONS")
    _, obj, loc = key
    slots = {}
    if obj != "none":
        slots["object"] = obj
    if loc != "none":
        slots["location"] = loc
    return _fsc_intent_name(*key), slots


def fsc_labels(intent: str) -> tuple[str, str, str] | None:
    """Inverse of ``fsc_frame``: intent -> (action, object, location) in FSC casing; None if not FSC."""
    return _FSC_BY_INTENT.get(intent)


# --------------------------------------------------------------------------- spoken values

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split())
         if w != "_"}
_ORDINALS = {w: i for i, w in enumerate(
    "_ first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth".split()) if w != "_"}
_ORDINALS["thirtieth"] = 30
_MONTHS = ("january february march april may june july august september october november december").split()
_WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
_DIGIT_ORDINAL = re.compile(r"^(\d{1,2})(st|nd|rd|th)$")


def _words(text: str) -> list[str]:
    return text.lower().replace("-", " ").split()


def _number_below_100(words: list[str]) -> tuple[int, int] | None:
    """Longest spoken number < 100 at the start of words -> (value, words used)."""
    if not words:
        return None
    w = words[0]
    if w in _TENS:
        if len(words) > 1 and words[1] in _UNITS and 0 < _UNITS[words[1]] < 10:
            return _TENS[w] + _UNITS[words[1]], 2
        return _TENS[w], 1
    if w in _UNITS:
        return _UNITS[w], 1
    if w.isdigit():
        return int(w), 1
    return None


def spoken_number(text: str) -> float | None:
    """'twenty five' -> 25, 'a hundred and two' -> 102, '2.5' -> 2.5, 'a dozen' -> 12; else None."""
    words = _words(text)
    if len(words) == 1:
        try:
            return float(words[0])
        except ValueError:
            pass
    if words in (["a", "dozen"], ["dozen"]):
        return 12
    total, i = 0, 0
    if words and words[0] in ("a", "one") and len(words) > 1 and words[1] in ("hundred", "thousand"):
        words = ["one"] + words[1:]
    current = None
    while i < len(words):
        w = words[i]
        if w == "and" and current is not None and i + 1 < len(words):
            i += 1
            continue
        if w in ("hundred", "thousand") and current is not None:
            current *= 100 if w == "hundred" else 1000
            if w == "thousand":
                total, current = total + current, None
            i += 1
            continue
        got = _number_below_100(words[i:])
        if got is None:
            return None
        value, used = got
        current = (current or 0) + value if current is None or current % 100 == 0 else None
        if current is None:
            return None
        i += used
    if current is None and total == 0:
        return None
    return float(total + (current or 0))


_TIME_DIGITS = re.compile(r"^(\d{1,2})(?:[:.](\d{2}))?\s*(am|pm|a\.m\.?|p\.m\.?)?$")
_DAYPARTS = {"in the morning": "am", "in the afternoon": "pm", "in the evening": "pm", "at night": "pm",
             "tonight": "pm", "a m": "am", "p m": "pm", "am": "am", "pm": "pm"}


def spoken_time(text: str) -> tuple[int, int] | None:
    """A clock time as said or typed -> (hour 0-23, minute); None if it is not one."""
    s = " ".join(_words(text))
    m = _TIME_DIGITS.match(s)
    if m:
        hour, minute = int(m.group(1)), int(m.group(2) or 0)
        return _with_meridiem(hour, minute, m.group(3))
    if s in ("noon", "midday", "twelve noon"):
        return 12, 0
    if s in ("midnight", "twelve midnight"):
        return 0, 0
    meridiem = None
    for part, mer in _DAYPARTS.items():
        if s.endswith(" " + part):
            s, meridiem = s[: -len(part) - 1], mer
            break
    if s.endswith(" o clock"):
        s = s[: -len(" o clock")]
        hour = _hour(s)
        return _with_meridiem(hour, 0, meridiem) if hour is not None else None
    for lead, sign in (("past", 1), ("after", 1), ("to", -1), ("before", -1)):
        if f" {lead} " in f" {s} ":
            before, _, after = s.partition(f" {lead} ") if not s.startswith(lead + " ") else ("", "", "")
            minutes = _minutes_phrase(before)
            hour = _hour(after)
            if minutes is None or hour is None or minutes == 0 or minutes >= 60:
                return None
            if sign > 0:
                return _with_meridiem(hour, minutes, meridiem)
            hour, minutes = hour - 1, 60 - minutes
            return _with_meridiem(hour if hour >= 0 else 23, minutes, meridiem)
    words = s.split()
    if not words:
        return None
    hour = _hour(words[0])
    if hour is None:
        return None
    rest = words[1:]
    if not rest:
        return _with_meridiem(hour, 0, meridiem)
    if rest[0] in ("oh", "o") and len(rest) == 2 and rest[1] in _UNITS and 0 < _UNITS[rest[1]] < 10:
        return _with_meridiem(hour, _UNITS[rest[1]], meridiem)
    got = _number_below_100(rest)
    if got is None or got[1] != len(rest) or not 10 <= got[0] < 60:
        return None
    return _with_meridiem(hour, got[0], meridiem)


def _hour(text: str) -> int | None:
    if text.strip() in ("noon", "midday", "midnight"):
        return 0 if text.strip() == "midnight" else 12
    got = _number_below_100(text.split())
    if got is None or got[1] != len(text.split()) or not 0 <= got[0] <= 23:
        return None
    return got[0]


def _minutes_phrase(text: str) -> int | None:
    text = text.strip()
    if text in ("quarter", "a quarter"):
        return 15
    if text == "half":
        return 30
    text = text.removesuffix(" minutes").removesuffix(" minute")
    got = _number_below_100(text.split())
    return got[0] if got and got[1] == len(text.split()) else None


def _with_meridiem(hour: int, minute: int, meridiem: str | None) -> tuple[int, int] | None:
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        return None
    if meridiem:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem.startswith("p") else 0)
    return hour, minute


_DURATION_UNITS = {"second": 1, "sec": 1, "secs": 1, "minute": 60, "min": 60, "mins": 60, "hour": 3600,
                   "hr": 3600, "hrs": 3600, "day": 86400, "week": 604800}


def _unit_seconds(word: str) -> int | None:
    if word in _DURATION_UNITS:
        return _DURATION_UNITS[word]
    if word.endswith("s") and word[:-1] in _DURATION_UNITS:
        return _DURATION_UNITS[word[:-1]]
    return None


def spoken_duration(text: str) -> float | None:
    """'twenty minutes', 'an hour and a half', 'half an hour', '1 hour 30 minutes' -> seconds."""
    words = [w for w in _words(text.replace(",", " "))]
    total, i, terms, last_unit = 0.0, 0, 0, 0.0
    while i < len(words):
        if words[i] == "and" and terms:
            if words[i:i + 3] == ["and", "a", "half"] and last_unit:
                total, i, last_unit = total + last_unit / 2, i + 3, 0
            elif i + 1 == len(words):
                return None                     # dangling "and": a cut-off duration
            else:
                i += 1
            continue
        for phrase, seconds in _DURATION_PHRASES:
            if words[i:i + len(phrase)] == phrase:
                total, i, terms, last_unit = total + seconds, i + len(phrase), terms + 1, 0
                break
        else:
            if words[i:i + 2] in (["half", "an"], ["half", "a"]) and i + 2 < len(words):
                unit = _unit_seconds(words[i + 2])
                if unit is None:
                    return None
                total, i, terms, last_unit = total + unit / 2, i + 3, terms + 1, 0
                continue
            j = i
            while j < len(words) and _unit_seconds(words[j]) is None and words[j:j + 3] != ["and", "a", "half"]:
                j += 1
            count = 1.0 if words[i:j] in (["a"], ["an"]) else spoken_number(" ".join(words[i:j])) if j > i else None
            if count is None:
                return None
            if words[j:j + 3] == ["and", "a", "half"]:
                count, j = count + 0.5, j + 3
            unit = _unit_seconds(words[j]) if j < len(words) else None
            if unit is None:
                return None
            total, i, terms, last_unit = total + count * unit, j + 1, terms + 1, unit
    return total if terms and total > 0 else None


_DURATION_PHRASES = [("a quarter of an hour".split(), 900), ("quarter of an hour".split(), 900),
                     ("three quarters of an hour".split(), 2700), ("a couple of minutes".split(), 120),
                     ("a couple of hours".split(), 7200), ("a few minutes".split(), 180)]


_DATE_RELATIVE = {"today", "tonight", "tomorrow", "yesterday", "the day after tomorrow",
                  "the day before yesterday", "now", "this morning", "this afternoon", "this evening",
                  "tomorrow morning", "tomorrow afternoon", "tomorrow evening", "tomorrow night"}
_DATE_NUMERIC = re.compile(r"^(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}/\d{1,2}(/\d{2,4})?)$")


def _day_of_month(words: list[str]) -> tuple[int, int] | None:
    """'third' / 'twenty first' / '3rd' / 'the third' at the start -> (day, words used)."""
    used = 0
    if words and words[0] == "the":
        words, used = words[1:], 1
    if not words:
        return None
    m = _DIGIT_ORDINAL.match(words[0])
    if m:
        return int(m.group(1)), used + 1
    if words[0] in ("twenty", "thirty") and len(words) > 1 and words[1] in _ORDINALS and _ORDINALS[words[1]] < 10:
        return _TENS[words[0]] + _ORDINALS[words[1]], used + 2
    if words[0] in _ORDINALS:
        return _ORDINALS[words[0]], used + 1
    return None


def spoken_date(text: str) -> bool:
    """True if text is a date as people say it ('tomorrow', 'next friday', 'may the third', ...)."""
    if _DATE_NUMERIC.match(str(text).strip()):
        return True
    s = " ".join(_words(text))
    if not s:
        return False
    if s in _DATE_RELATIVE:
        return True
    words = s.split()
    if words[0] in ("this", "next", "last", "on") and len(words) > 1:
        rest = words[1:]
        if len(rest) == 1 and rest[0] in _WEEKDAYS + ["week", "weekend", "month", "year"]:
            return True
        if words[0] == "on":
            return spoken_date(" ".join(rest))
        return False
    if words[0] in _WEEKDAYS:
        return len(words) == 1 or words[1:] in (["morning"], ["afternoon"], ["evening"], ["night"])
    if words[0] == "in" and len(words) >= 3:
        return spoken_duration(" ".join(words[1:])) is not None
    if words[0] in _MONTHS:                       # "may third", "may the third", "may 3"
        rest = words[1:]
        if len(rest) == 1 and rest[0].isdigit():
            return 1 <= int(rest[0]) <= 31
        day = _day_of_month(rest)
        return bool(day and day[1] == len(rest) and 1 <= day[0] <= 31)
    day = _day_of_month(words)                    # "the third of may", "the twenty first"
    if not day or not 1 <= day[0] <= 31:
        return False
    rest = words[day[1]:]
    return not rest or (len(rest) == 2 and rest[0] == "of" and rest[1] in _MONTHS)


def value_problem(kind: str, value: str, values: list[str] | None = None) -> str:
    """'' if value is a well-formed value of that slot kind, else what is wrong."""
    value = " ".join(str(value).split())
    if not value:
        return "empty value"
    if kind == "enum":
        return "" if values and value in values else f"{value!r} is not one of {values}"
    if kind == "time":
        return "" if spoken_time(value) else f"{value!r} is not a clock time (e.g. 'seven thirty a m', '7:30')"
    if kind == "duration":
        return "" if spoken_duration(value) else f"{value!r} is not a duration (e.g. 'twenty minutes')"
    if kind == "date":
        return "" if spoken_date(value) else f"{value!r} is not a date (e.g. 'tomorrow', 'the third of may')"
    if kind == "number":
        return "" if spoken_number(value) is not None else f"{value!r} is not a number (e.g. 'twenty five', '25')"
    return ""


# --------------------------------------------------------------------------- schema


@dataclass
class SlotSpec:
    name: str
    kind: str                       # 'enum' | 'time' | 'duration' | 'date' | 'number' | 'text'
    values: list[str] | None = None
    description: str = ""


@dataclass
class IntentSpec:
    name: str
    slots: list[str]
    required: list[str]
    response: str
    description: str = ""
    # Slot values the intent itself implies (FSC intents: object / location labels).
    fixed: dict[str, str] = field(default_factory=dict)


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_OPTIONAL = re.compile(r"\[([^\[\]]*)\]")
FALLBACK_UNKNOWN = "Sorry, I didn't understand that."


@dataclass
class Schema:
    intents: dict[str, IntentSpec]
    slots: dict[str, SlotSpec]
    path: Path | None = None

    def check_frame(self, intent: str, slots: dict[str, str]) -> list[str]:
        """Problems with a predicted (intent, slots); an empty list means valid."""
        spec = self.intents.get(intent)
        if spec is None:
            return [f"unknown intent {intent!r}"]
        problems = []
        for name, value in (slots or {}).items():
            if name not in spec.slots:
                problems.append(f"unknown slot {name!r} for intent {intent!r} (allowed: {spec.slots})")
                continue
            slot = self.slots[name]
            problem = value_problem(slot.kind, value, slot.values)
            if problem:
                problems.append(f"malformed {slot.kind} value for slot {name!r}: {problem}")
            elif name in spec.fixed and value != spec.fixed[name]:
                problems.append(f"slot {name!r}={value!r} contradicts intent {intent!r} "
                                f"(which means {name}={spec.fixed[name]!r})")
        for name in spec.required:
            if name not in (slots or {}):
                problems.append(f"missing required slot {name!r} for intent {intent!r}")
        return problems

    def render_response(self, intent: str, slots: dict[str, str] | None = None) -> str:
        """What the assistant says back. Never raises: falls back to a generic sentence."""
        try:
            return self._render(intent, dict(slots or {}))
        except Exception:  # noqa: BLE001 - a reply must always come back
            return FALLBACK_UNKNOWN

    def _render(self, intent: str, slots: dict[str, str]) -> str:
        spec = self.intents.get(intent)
        if spec is None:
            return FALLBACK_UNKNOWN
        values = {**spec.fixed, **{k: " ".join(str(v).split()) for k, v in slots.items() if str(v).strip()}}
        missing = [s for s in spec.required if s not in values]
        if missing:
            return f"Sorry, I need the {missing[0].replace('_', ' ')} for that."

        def optional(m: re.Match) -> str:
            names = _PLACEHOLDER.findall(m.group(1))
            return m.group(1) if all(n in values for n in names) else ""

        text = _OPTIONAL.sub(optional, spec.response)
        text = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(1).replace("_", " ")), text)
        text = " ".join(text.split())
        return text[:1].upper() + text[1:] if text else FALLBACK_UNKNOWN

    @property
    def fsc_intents(self) -> list[str]:
        return [name for name in self.intents if fsc_labels(name) is not None]


def load_schema(path: str | Path | None = None) -> Schema:
    path = Path(path) if path is not None else DEFAULT_SCHEMA
    raw = read_yaml(path, SchemaError, f"schema not found: {path} (pass an existing schema.yaml; the default is "
                                       f"{DEFAULT_SCHEMA})")
    if not isinstance(raw, dict) or not isinstance(raw.get("slots"), dict) or not isinstance(raw.get("intents"), dict):
        raise SchemaError(f"{path}: expected top-level mappings 'slots:' and 'intents:'")
    slots = {name: _slot_spec(path, name, body) for name, body in raw["slots"].items()}
    intents = {name: _intent_spec(path, name, body, slots) for name, body in raw["intents"].items()}
    return Schema(intents=intents, slots=slots, path=path)


def _slot_spec(path: Path, name: str, body: Any) -> SlotSpec:
    where = f"{path}: slot {name!r}"
    if not isinstance(body, dict):
        raise SchemaError(f"{where}: expected a mapping with 'kind' (and 'values' for enums)")
    kind = body.get("kind")
    if kind not in SLOT_KINDS:
        raise SchemaError(f"{where}: kind {kind!r} must be one of {SLOT_KINDS}")
    values = body.get("values")
    if kind == "enum" and (not isinstance(values, list) or not values):
        raise SchemaError(f"{where}: an enum slot needs a non-empty 'values' list")
    return SlotSpec(name=name, kind=kind, values=[str(v) for v in values] if values else None,
                    description=str(body.get("description", "")))


def _intent_spec(path: Path, name: str, body: Any, slots: dict[str, SlotSpec]) -> IntentSpec:
    where = f"{path}: intent {name!r}"
    if not isinstance(body, dict) or not isinstance(body.get("response"), str):
        raise SchemaError(f"{where}: expected a mapping with at least 'response' (what the assistant says back)")
    if not re.match(r"^[a-z0-9_]+$", name):
        raise SchemaError(f"{where}: intent names are lower-case letters, digits and '_'")
    for key in ("slots", "required"):
        if not isinstance(body.get(key) or [], list):
            raise SchemaError(f"{where}: '{key}' must be a list of slot names, e.g. [time, date]")
    if not isinstance(body.get("fixed") or {}, dict):
        raise SchemaError(f"{where}: 'fixed' must map slot names to the values the intent implies")
    intent_slots = [str(s) for s in body.get("slots") or []]
    required = [str(s) for s in body.get("required") or []]
    fixed = {str(k): str(v) for k, v in (body.get("fixed") or {}).items()}
    for s in intent_slots:
        if s not in slots:
            raise SchemaError(f"{where}: slot {s!r} is not defined under 'slots:'")
    for s in list(required) + list(fixed):
        if s not in intent_slots:
            raise SchemaError(f"{where}: slot {s!r} is required/fixed but not in the intent's 'slots' list")
    for s in _PLACEHOLDER.findall(body["response"]):
        if s not in intent_slots:
            raise SchemaError(f"{where}: response uses {{{s}}} which is not one of the intent's slots")
    return IntentSpec(name=name, slots=intent_slots, required=required, response=body["response"],
                      description=str(body.get("description", "")), fixed=fixed)
