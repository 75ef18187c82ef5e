"""The one text normaliser: any transcript -> the grammar's spoken, lower-case word form.

Every place that compares or stores words uses ``normalize_text``: WER (``assistant.metrics``), slot
matching and SLU-F1, RSFT frame keys and rewards, the text pass (``assistant.nlu``, the teacher),
transcripts of imported corpora (``assistant.data.manifest``: FSC / SLURP), and stock Whisper output.
One form on both sides of every comparison means "Set an alarm for 7:30 a.m." (Whisper, SLURP) and
"set an alarm for seven thirty a m" (our grammar, ``data/grammar.yaml``) are the same words, and a
training target from an imported corpus is written the way the grammar writes its sentences.

The rules, in order:

* lower case; accents folded to ASCII ("café" -> "cafe"), other non-ASCII letters dropped;
* ``%`` -> "percent", ``&`` -> "and";
* numbers spelled the way people say them: clock times ("7:30", Whisper's "6.15") -> "seven thirty",
  "six fifteen"; ordinals ("3rd") -> "third"; decimals ("2.5") -> "two point five"; thousands
  separators dropped ("1,500" -> "one thousand five hundred"); other integers spelled out;
* "a.m." / "p.m." -> "a m" / "p m" (the grammar's form), and so do "am" / "pm" / "a m" right after a
  number ("7am", "eight pm"); elsewhere "am" is the verb ("i am hungry") and stays; "o'clock" -> "o clock";
* the titles "mr" / "mrs" -> "mister" / "missus" (how people say them; LibriVox-style references);
* apostrophes dropped without a space ("what's" -> "whats", "don't" -> "dont": the grammar's spelling);
* every other character (punctuation, hyphens, underscores, symbols) -> a space; spaces collapsed.

Not here: ``assistant.frames`` only collapses whitespace inside parsed slot values, on purpose — a
parser reports what the model wrote; comparisons normalise afterwards.
"""

from __future__ import annotations

import re
import unicodedata

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}


def number_words(n: int) -> str:
    """Spell a non-negative integer the way people say it: 2024 -> 'two thousand twenty four'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            head, rest = divmod(n, size)
            return number_words(head) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def _ordinal_words(n: int) -> str:
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _time_words(hour: str, minute: str) -> str:
    h, m = int(hour), int(minute)
    if m == 0:
        return number_words(h)
    return number_words(h) + " " + ("oh " + _ONES[m] if m < 10 else number_words(m))


_TIME = re.compile(r"\b(\d{1,2}):(\d{2})(?!\d)")
# Whisper writes spoken clock times as "6.15" / "7.30": a 1-2 digit hour, a dot and two digits below 60
_DOT_TIME = re.compile(r"\b([01]?\d|2[0-3])\.([0-5]\d)(?!\d)")
_ORDINAL = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_INTEGER = re.compile(r"\d+")
_DOTTED_AM_PM = re.compile(r"\b([ap])\.\s?m\b\.?")                 # "a.m." is never the verb
_NUMBER_WORD = "|".join(_ONES + _TENS[2:] + ["hundred", "thousand", "clock"])
_AM_PM = re.compile(rf"\b({_NUMBER_WORD})\s+([ap])\s?m\b")          # "seven am", "seven thirty pm"
_OCLOCK = re.compile(r"\bo['\u2019]\s?clock\b")
_TITLES = re.compile(r"\b(mrs|mr)\b\.?")


def _fold_accents(text: str) -> str:
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def normalize_text(text: str | None) -> str:
    """The grammar's word form (see the module docstring for every rule).

    'What's on at 7:30 a.m.?' -> 'whats on at seven thirty a m'; 'Wake me at 6.15.' -> 'wake me at six fifteen'.
    """
    s = _fold_accents(str(text or "").lower()).replace("%", " percent ").replace("&", " and ")
    s = _TIME.sub(lambda m: " " + _time_words(m.group(1), m.group(2)) + " ", s)
    s = _DOT_TIME.sub(lambda m: " " + _time_words(m.group(1), m.group(2)) + " ", s)
    s = _ORDINAL.sub(lambda m: " " + _ordinal_words(int(m.group(1))) + " ", s)
    s = _DECIMAL.sub(lambda m: f" {number_words(int(m.group(1)))} point "
                     + " ".join(_ONES[int(d)] for d in m.group(2)) + " ", s)
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)                      # 1,000 -> 1000
    s = _INTEGER.sub(lambda m: " " + number_words(int(m.group(0))) + " ", s)
    s = _DOTTED_AM_PM.sub(lambda m: f" {m.group(1)} m ", s)        # a.m. -> "a m"
    s = _AM_PM.sub(lambda m: f"{m.group(1)} {m.group(2)} m", s)    # "seven am" -> "seven a m", "i am" stays
    s = _OCLOCK.sub(" o clock ", s)                                # the grammar's "eight o clock"
    s = _TITLES.sub(lambda m: " mister " if m.group(1) == "mr" else " missus ", s)
    s = re.sub(r"['\u2019]", "", s)                               # the grammar writes "whats", "dont"
    s = re.sub(r"[^a-z ]+", " ", s)                                 # hyphens, punctuation, symbols
    return " ".join(s.split())


def text_words(text: str | None) -> list[str]:
    """``normalize_text(text)`` as a list of words."""
    return normalize_text(text).split()
