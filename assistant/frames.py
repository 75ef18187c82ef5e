"""The decoder's target string: transcript, intent and slots in one line.

Format (transcript first)::

    <transcript> | <intent> | <slot>=<value> ; <slot>=<value>
    turn on the kitchen lights | activate_lights_kitchen | location=kitchen ; object=lights
    change language | change_language_none_none |

Why transcript first: the decoder then chooses the intent while attending to the words it has
just written (Whisper's decoder is a strong transcriber), and slot values are copied from them.
With the intent first it had to classify from acoustics alone, and on the default corpus's dev
split it confused e.g. "turn the washroom lights off" with activate_lights_washroom although it
then transcribed the words right (dev intent accuracy 0.53 after two epochs). A cut-off output can
end inside a slot value and still parse: callers check that decoding finished (``Candidate.finished``).

Slots are written in sorted key order. ``|``, ``;`` and ``=`` are separators, so
``format_frame`` replaces them (and newlines) by spaces inside names, values and the
transcript. ``parse_frame`` never raises: a model's output can be anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_SEPARATORS = re.compile(r"[|;=\s]+")
_INTENT_RE = re.compile(r"^[a-z0-9_]+$")
_SLOT_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass
class Frame:
    intent: str
    slots: dict[str, str] = field(default_factory=dict)
    transcript: str = ""


@dataclass
class ParseResult:
    """``valid`` is True only for a well-formed frame.

    When not valid, ``frame`` may still hold a best-effort partial parse (e.g. the
    intent of a truncated output) so that intent accuracy can be scored; it is None
    when not even an intent could be read. ``error`` says what was wrong.
    """

    valid: bool
    frame: Frame | None
    error: str = ""


def _clean(text: Any) -> str:
    """Separators and runs of whitespace -> one space, so the line stays parseable."""
    return _SEPARATORS.sub(" ", str(text)).strip()


def format_frame(frame: Frame) -> str:
    intent = _clean(frame.intent).replace(" ", "_").lower()
    slots = []
    for name in sorted(frame.slots):
        key = _clean(name).replace(" ", "_").lower()
        value = _clean(frame.slots[name])
        if key and value:
            slots.append(f"{key}={value}")
    slot_part = f" {' ; '.join(slots)}" if slots else ""
    return f"{_clean(frame.transcript)} | {intent} |{slot_part}".strip()


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    return {"intent": frame.intent, "slots": dict(frame.slots), "transcript": frame.transcript}


def _collapse_spaces(text: str) -> str:
    """Whitespace only, on purpose not ``assistant.text.normalize_text``: the parser reports the value
    the model wrote (case, digits, punctuation kept); metrics and rewards normalise when they compare."""
    return " ".join(text.split())


def _parse_slots(text: str) -> tuple[dict[str, str], str]:
    """Slots part -> (slots, first error or '')."""
    slots: dict[str, str] = {}
    error = ""
    for item in text.split(";"):
        item = item.strip()
        if not item:
            if not error and text.strip():
                error = "empty slot between ';' separators"
            continue
        if "=" not in item:
            error = error or f"slot {item!r} has no '=' (expected name=value)"
            continue
        name, value = item.split("=", 1)
        name, value = name.strip(), _collapse_spaces(value)
        if not _SLOT_NAME_RE.match(name):
            error = error or f"bad slot name {name!r} (lower-case letters, digits, '_')"
            continue
        if "=" in value:
            error = error or f"slot {name!r} value {value!r} contains '='"
        if not value:
            error = error or f"slot {name!r} has an empty value"
            continue
        if name in slots:
            error = error or f"duplicate slot {name!r}"
            continue
        slots[name] = value
    return slots, error


def parse_frame(text: Any) -> ParseResult:
    """Read a decoder output back into a Frame. Never raises."""
    try:
        return _parse_frame(text)
    except Exception as e:  # noqa: BLE001 - the contract is "never raises"
        return ParseResult(False, None, f"unparseable output ({type(e).__name__})")


def _parse_frame(text: Any) -> ParseResult:
    if text is None:
        return ParseResult(False, None, "no output (None)")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return ParseResult(False, None, f"expected a string, got {type(text).__name__}")
    text = text.strip()
    if not text:
        return ParseResult(False, None, "empty output")
    parts = text.split("|")
    transcript = _clean(parts[0])
    if len(parts) == 1:
        return ParseResult(False, None, "truncated in the transcript (missing ' | intent | slots')")
    intent = parts[1].strip()
    if not _INTENT_RE.match(intent):
        return ParseResult(False, None, f"bad intent {intent[:40]!r} (lower-case letters, digits, '_')")
    if len(parts) == 2:
        return ParseResult(False, Frame(intent, {}, transcript), "truncated after the intent (missing ' | slots')")
    slots, error = _parse_slots(parts[2])
    if len(parts) > 3:
        error = error or "extra '|' after the slots"
    # Same cleaning as format_frame, so parse(format(parse(x))) == parse(x).
    frame = Frame(intent, slots, transcript)
    return ParseResult(not error, frame, error)
