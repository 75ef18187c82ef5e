"""Manifests: one utterance per line.

Our JSONL format (other tools write it too)::

    {"audio": "train/0001.flac", "text": "turn on the kitchen lights",
     "intent": "activate_lights_kitchen", "slots": {"object": "lights", "location": "kitchen"},
     "speaker": "espeak:en-us+m3", "id": "train-0001", "duration": 1.84}

``audio`` may be relative to the manifest's folder. ``id`` and ``duration`` are optional.
The same reader also accepts Fluent Speech Commands CSVs and SLURP JSONL (see ``read_manifest``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from assistant.text import normalize_text

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest that cannot be read; the message names the file, the line and the fix."""


@dataclass
class Utterance:
    audio: str                      # absolute path once read (relative paths are resolved)
    text: str                       # transcript
    intent: str
    slots: dict[str, str] = field(default_factory=dict)
    speaker: str = "unknown"
    id: str = ""
    duration: float | None = None
    # Extra fields some splits carry: labels_hidden (pool), template (phrasing id), engine, ...
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        audio = self.audio
        if relative_to is not None:
            try:
                audio = str(Path(audio).resolve().relative_to(relative_to.resolve()))
            except ValueError:
                pass
        d: dict[str, Any] = {"audio": audio, "text": self.text, "intent": self.intent,
                             "slots": dict(self.slots), "speaker": self.speaker}
        if self.id:
            d["id"] = self.id
        if self.duration is not None:
            d["duration"] = round(float(self.duration), 3)
        d.update(self.meta)
        return d


_KNOWN = {f.name for f in dataclasses.fields(Utterance)} - {"meta"}


def engine_of(u: Utterance) -> str:
    """The TTS engine (or 'recorded' for manifests of real recordings) behind a clip."""
    return str(u.meta.get("engine") or "unknown")


def condition_of_utterance(u: Utterance) -> str:
    """clean / noise / room for corpus clips (assistant.data.augment.condition_of); 'unknown' otherwise."""
    from assistant.data.augment import condition_of   # numpy-heavy: only when asked

    if u.meta.get("condition"):
        return str(u.meta["condition"])
    return condition_of(u.meta["augment"]) if isinstance(u.meta.get("augment"), dict) else "unknown"


def utterance_from_json(obj: Any, base: Path, where: str) -> Utterance:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    missing = [k for k in ("audio", "text", "intent") if k not in obj]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {missing}; each line needs audio, text, intent "
                            "(and usually slots, speaker)")
    slots = obj.get("slots") or {}
    if not isinstance(slots, dict):
        raise ManifestError(f"{where}: 'slots' must be an object of name -> value, got {slots!r}")
    audio = Path(str(obj["audio"]))
    if not audio.is_absolute():
        audio = base / audio
    duration = obj.get("duration")
    try:
        duration = float(duration) if duration is not None else None
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: 'duration' must be a number of seconds, got {duration!r}") from None
    return Utterance(
        audio=str(audio), text=str(obj["text"]), intent=str(obj["intent"]),
        slots={str(k): str(v) for k, v in slots.items()}, speaker=str(obj.get("speaker", "unknown")),
        id=str(obj.get("id", "")), duration=duration,
        meta={k: v for k, v in obj.items() if k not in _KNOWN},
    )


def read_jsonl(path: str | Path) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (run `assistant synth` or pass an existing file)")
    out: list[Utterance] = []
    # split on "\n" only: str.splitlines() also breaks on U+2028 etc., which json.dumps(ensure_ascii=False)
    # leaves raw inside strings
    for i, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path}:{i}: not valid JSON ({e.msg}); one JSON object per line") from None
        u = utterance_from_json(obj, path.parent, f"{path}:{i}")
        if not u.id:
            u.id = f"{path.stem}-{i:06d}"
        out.append(u)
    return out


def write_jsonl(utterances: Iterable[Utterance], path: str | Path, relative: bool = True) -> None:
    """Write atomically (tmp + rename) so a crash never leaves a half manifest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for u in utterances:
            f.write(json.dumps(u.to_json(path.parent if relative else None), ensure_ascii=False) + "\n")
    tmp.replace(path)


# ==================================================================================================
# Any manifest: our JSONL, Fluent Speech Commands CSV, SLURP JSONL
# ==================================================================================================

FORMATS = ("jsonl", "fsc", "slurp")
FSC_COLUMNS = ("path", "speakerId", "transcription", "action", "object", "location")
_SLURP_KEYS = ("slurp_id", "recordings", "sentence_annotation")
_MAX_LOGGED_SKIPS = 20  # per file; a summary line counts the rest
_SAMPLE_ROWS = 20       # rows used to work out where a corpus keeps its audio


class _Skipper:
    """Collects skipped rows: logs a warning naming file:line (up to a cap), or raises when strict."""

    def __init__(self, path: Path, strict: bool) -> None:
        self.path, self.strict, self.count, self.first = path, strict, 0, []

    def __call__(self, line: int | str, reason: str) -> None:
        msg = f"{self.path}:{line}: {reason}"
        if self.strict:
            raise ManifestError(msg)
        self.count += 1
        if len(self.first) < 3:
            self.first.append(msg)
        if self.count <= _MAX_LOGGED_SKIPS:
            log.warning("skipping row: %s", msg)

    def finish(self, kept: int) -> None:
        if self.count > _MAX_LOGGED_SKIPS:
            log.warning("%s: skipped %d rows in all (only the first %d were listed)", self.path, self.count,
                        _MAX_LOGGED_SKIPS)
        if kept == 0 and self.count:
            raise ManifestError(f"{self.path}: no usable rows ({self.count} skipped), e.g. "
                                + " | ".join(self.first))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path} (check the path; FSC CSVs live in "
                            "fluent_speech_commands_dataset/data/, SLURP's in slurp/dataset/slurp/)")
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        raise ManifestError(f"{path}: binary file, not a manifest; pass a .jsonl manifest, an FSC .csv or a "
                            "SLURP .jsonl")
    try:
        return raw.decode("utf-8-sig")  # Excel-saved CSVs start with a BOM
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text (byte {e.start}); re-save the manifest as UTF-8") from None


def _first_json_object(text: str) -> dict | None:
    for line in text.split("\n"):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def detect_format(path: str | Path, text: str | None = None) -> str:
    """'jsonl' (ours), 'fsc' (Fluent Speech Commands CSV) or 'slurp' (SLURP JSONL), from the content."""
    path = Path(path)
    text = _read_text(path) if text is None else text
    first_line = next((ln for ln in text.split("\n") if ln.strip()), "")
    if not first_line:
        raise ManifestError(f"{path}: empty manifest; it needs one utterance per line")
    if not first_line.lstrip().startswith("{"):
        if "," in first_line or path.suffix.lower() == ".csv":
            return "fsc"
        raise ManifestError(f"{path}: neither JSON lines nor a CSV (first line: {first_line[:80]!r}); pass our "
                            "JSONL manifest, an FSC CSV or a SLURP JSONL")
    obj = _first_json_object(text)
    if obj is None:
        raise ManifestError(f"{path}: no line is a JSON object; expected one JSON object per line")
    if any(k in obj for k in _SLURP_KEYS):
        return "slurp"
    if "audio" in obj:
        return "jsonl"
    raise ManifestError(
        f"{path}: unrecognised JSON lines (first object has keys {sorted(obj)[:12]}); expected our manifest "
        "(audio, text, intent, slots, speaker) or SLURP (slurp_id, sentence, sentence_annotation, intent, "
        "recordings)")


# Where the official downloads keep their splits (train, dev, test), relative to the corpus folder.
CORPUS_LAYOUTS = {
    "fsc": [("data/train_data.csv", "data/valid_data.csv", "data/test_data.csv")],
    "slurp": [("dataset/slurp/train.jsonl", "dataset/slurp/devel.jsonl", "dataset/slurp/test.jsonl"),
              ("train.jsonl", "devel.jsonl", "test.jsonl")],
}


def corpus_splits(folder: str | Path, corpus_format: str) -> dict[str, Path | None]:
    """{"train", "dev", "test"} manifest files of a downloaded FSC or SLURP corpus folder (test may be None).

    FSC: the folder holding ``data/`` and ``wavs/`` (fluent_speech_commands_dataset). SLURP: the cloned
    repository (``dataset/slurp/*.jsonl``; audio from its download script in ``audio/slurp_real``) or a
    folder with ``train.jsonl`` / ``devel.jsonl`` directly."""
    folder = Path(folder).expanduser()
    if corpus_format not in CORPUS_LAYOUTS:
        raise ManifestError(f"corpus_format {corpus_format!r}: choose one of {sorted(CORPUS_LAYOUTS)}")
    if not folder.is_dir():
        raise ManifestError(f"{folder}: no such corpus folder; download the {corpus_format.upper()} corpus "
                            "and pass its folder with --corpus")
    for train, dev, test in CORPUS_LAYOUTS[corpus_format]:
        if (folder / train).is_file():
            if not (folder / dev).is_file():
                raise ManifestError(f"{folder / dev} missing: the dev split selects checkpoints; restore it from "
                                    f"the {corpus_format.upper()} download or pass --dev-manifest")
            return {"train": folder / train, "dev": folder / dev,
                    "test": folder / test if (folder / test).is_file() else None}
    expected = " or ".join(t for t, _, _ in CORPUS_LAYOUTS[corpus_format])
    raise ManifestError(f"{folder}: not a {corpus_format.upper()} folder (no {expected} inside); pass the "
                        "folder the corpus was unpacked to")


def read_manifest(path: str | Path, audio_root: str | Path | None = None, format: str | None = None,  # noqa: A002
                  strict: bool = False) -> list[Utterance]:
    """Read any supported manifest into Utterances with absolute audio paths.

    Formats (detected from the content unless ``format`` is given):

    - ``jsonl``: ours (see the module docstring); audio relative to the manifest's folder (or to
      ``audio_root`` if given).
    - ``fsc``: a Fluent Speech Commands CSV (``,path,speakerId,transcription,action,object,location``).
      Paths are relative to the FSC root, the folder above ``data/``; a CSV kept in the root or next to
      the wavs works too. Labels map through ``assistant.schema.fsc_frame`` onto our intents/slots.
    - ``slurp``: SLURP JSONL, one Utterance per recording. Audio is looked up in ``audio_root`` if given,
      else in a ``slurp_real/`` (or ``slurp_synth/``, ``audio/slurp_real/`` ...) folder near the file.
      Slots come from ``sentence_annotation`` (``[type : value]``); speakers from ``metadata.json``
      next to the file if present, else from the recording's file name.

    FSC/SLURP transcripts and slot values are normalised (``assistant.text.normalize_text``: the grammar's
    spoken word form, so imported targets spell words as generated ones do); the original goes to
    ``meta['raw_text']``.
    Rows that cannot be used are skipped with a warning naming file:line (``strict=True`` raises
    instead); a file of the wrong shape raises ``ManifestError``.
    """
    path = Path(path)
    text = _read_text(path)
    fmt = format or detect_format(path, text)
    if fmt not in FORMATS:
        raise ManifestError(f"unknown manifest format {fmt!r}; choose one of {FORMATS}")
    skip = _Skipper(path, strict)
    reader: Callable[..., list[Utterance]] = {"jsonl": _read_ours, "fsc": _read_fsc, "slurp": _read_slurp}[fmt]
    out = reader(path, text, skip, None if audio_root is None else Path(audio_root))
    skip.finish(len(out))
    if not out:
        raise ManifestError(f"{path}: no utterances in the file")
    return out


# ---------------------------------------------------------------------------------------- ours

def _json_lines(text: str, skip: _Skipper, hint: str = ""):
    """(line number, parsed object) of every non-empty line; a line that is not JSON is skipped, named."""
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            skip(i, f"not valid JSON ({e.msg}){hint}")


def _read_ours(path: Path, text: str, skip: _Skipper, audio_root: Path | None) -> list[Utterance]:
    base = audio_root or path.parent
    out = []
    for i, obj in _json_lines(text, skip, "; one JSON object per line"):
        try:
            u = utterance_from_json(obj, base, f"{path}:{i}")
        except ManifestError as e:
            skip(i, str(e).split(": ", 1)[-1])
            continue
        u.audio = os.path.abspath(u.audio)
        u.id = u.id or f"{path.stem}-{i:06d}"
        out.append(u)
    return out


# ----------------------------------------------------------------------------------------- FSC

def _fsc_resolver(csv_path: Path, rel_paths: list[str], audio_root: Path | None) -> Callable[[str], Path]:
    """FSC paths are relative to the corpus root (``wavs/speakers/<spk>/<f>.wav``). Pick the reading
    that finds the most sample files: root above ``data/``, the CSV's own folder, or wavs lying flat
    next to the CSV."""
    folder = csv_path.parent
    roots = [audio_root] if audio_root else []
    roots += [folder.parent, folder] if folder.name == "data" else [folder, folder.parent]
    candidates: list[Callable[[str], Path]] = [lambda p, r=r: r / p for r in roots]
    flat_dirs = [audio_root, folder] if audio_root else [folder]
    candidates += [lambda p, r=r: r / Path(p).name for r in flat_dirs]
    sample = [p for p in rel_paths[:_SAMPLE_ROWS] if p and not os.path.isabs(p)]
    if not sample:
        return candidates[0]
    hits = [sum(c(p).is_file() for p in sample) for c in candidates]
    return candidates[max(range(len(candidates)), key=lambda k: (hits[k], -k))]


def _read_fsc(path: Path, text: str, skip: _Skipper, audio_root: Path | None) -> list[Utterance]:
    from assistant.schema import fsc_frame  # lazy: the schema loads YAML and is not needed elsewhere here

    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ManifestError(f"{path}: empty CSV; expected the FSC header ',{','.join(FSC_COLUMNS)}' and rows")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in FSC_COLUMNS if c not in header]
    if missing:
        raise ManifestError(
            f"{path}:1: CSV lacks column(s) {missing}; a Fluent Speech Commands CSV has the header "
            f"',{','.join(FSC_COLUMNS)}' (got {','.join(header)[:120]!r})")
    col = {name: header.index(name) for name in FSC_COLUMNS}
    body = [(i, r) for i, r in enumerate(rows[1:], 2) if any(c.strip() for c in r)]
    resolve = _fsc_resolver(path, [r[col["path"]].strip() for _, r in body if len(r) == len(header)], audio_root)
    out, seen = [], Counter()
    for line, row in body:
        if len(row) != len(header):
            skip(line, f"{len(row)} fields, the header has {len(header)}")
            continue
        f = {name: row[k].strip() for name, k in col.items()}
        if not f["path"] or not f["transcription"]:
            skip(line, "empty path or transcription")
            continue
        try:
            intent, slots = fsc_frame(f["action"], f["object"], f["location"])
        except ValueError as e:
            skip(line, str(e))
            continue
        audio = Path(f["path"]) if os.path.isabs(f["path"]) else resolve(f["path"])
        text_norm = normalize_text(f["transcription"])
        if not text_norm:
            skip(line, f"transcription {f['transcription']!r} has no words")
            continue
        speaker = f["speakerId"] or "unknown"
        uid = f"fsc-{speaker}-{Path(f['path']).stem}"
        seen[uid] += 1
        if seen[uid] > 1:  # the same file listed twice: keep both rows, ids stay unique
            uid = f"{uid}-{seen[uid]}"
        meta: dict[str, Any] = {"source": "fsc"}
        if text_norm != f["transcription"]:
            meta["raw_text"] = f["transcription"]
        out.append(Utterance(audio=os.path.abspath(audio), text=text_norm, intent=intent, slots=slots,
                             speaker=speaker, id=uid, meta=meta))
    return out


# --------------------------------------------------------------------------------------- SLURP

_ENTITY = re.compile(r"\[\s*([^\[\]:]+?)\s*:\s*([^\[\]]*?)\s*\]")
_SLURP_FILE = re.compile(r"^audio-(-?\d+)(-headset)?\.\w+$")


def parse_slurp_annotation(annotation: str) -> tuple[str, list[tuple[str, str]]]:
    """``"wake me up at [time : eight am]"`` -> ("wake me up at eight am", [("time", "eight am")]).
    Raises ValueError on unbalanced or empty brackets."""
    entities = [(m.group(1).strip(), m.group(2).strip()) for m in _ENTITY.finditer(annotation)]
    plain = _ENTITY.sub(lambda m: m.group(2), annotation)
    if "[" in plain or "]" in plain:
        raise ValueError(f"unbalanced or malformed brackets in annotation {annotation!r}")
    if any(not t or not v for t, v in entities):
        raise ValueError(f"empty entity type or value in annotation {annotation!r}")
    return " ".join(plain.split()), entities


def _slurp_speakers(path: Path) -> dict[str, str]:
    """recording file -> usrid from SLURP's ``metadata.json`` (next to the JSONL), if it is there."""
    meta_path = path.parent / "metadata.json"
    if not meta_path.is_file():
        return {}
    try:
        records = json.loads(meta_path.read_text())
        return {f: str(r["usrid"]) for rec in records.values()
                for f, r in (rec.get("recordings") or {}).items() if isinstance(r, dict) and r.get("usrid")}
    except (json.JSONDecodeError, AttributeError, TypeError) as e:
        log.warning("%s: unreadable SLURP metadata (%s); speakers fall back to recording ids", meta_path, e)
        return {}


def _slurp_audio_root(path: Path, files: list[str], audio_root: Path | None) -> Path:
    if audio_root is not None:
        return audio_root
    names = ("slurp_synth", "slurp_real") if "synth" in path.stem else ("slurp_real", "slurp_synth")
    candidates = []
    for base in [path.parent, *list(path.parents)[:3]]:
        for name in names:
            candidates += [base / name, base / "audio" / name]
    candidates.append(path.parent)
    sample = files[:_SAMPLE_ROWS]
    hits = [sum((c / f).is_file() for f in sample) for c in candidates]
    best = max(range(len(candidates)), key=lambda k: (hits[k], -k))
    if hits[best]:
        return candidates[best]
    existing = next((c for c in candidates[:-1] if c.is_dir()), None)
    return existing or path.parent / names[0]


def _slurp_speaker(file: str, recording: dict, speakers: dict[str, str]) -> str:
    for key in ("speaker", "usrid", "speaker_id"):
        if recording.get(key):
            return str(recording[key])
    if file in speakers:
        return speakers[file]
    m = _SLURP_FILE.match(file)
    # The number names one recording session (its headset and far-field copies share it).
    return f"slurp:{m.group(1)}" if m else f"slurp:{Path(file).stem}"


def _read_slurp(path: Path, text: str, skip: _Skipper, audio_root: Path | None) -> list[Utterance]:
    records = []
    for i, obj in _json_lines(text, skip):
        if not isinstance(obj, dict):
            skip(i, f"expected a JSON object, got {type(obj).__name__}")
            continue
        records.append((i, obj))
    files = [r.get("file", "") for _, o in records for r in (o.get("recordings") or []) if isinstance(r, dict)]
    root = _slurp_audio_root(path, [f for f in files if f], audio_root)
    speakers = _slurp_speakers(path)
    out: list[Utterance] = []
    for i, obj in records:
        out += _slurp_record(obj, i, root, speakers, skip)
    return out


def _slurp_record(obj: dict, line: int, root: Path, speakers: dict[str, str], skip: _Skipper) -> list[Utterance]:
    intent = str(obj.get("intent") or "").strip()
    if not intent and obj.get("scenario") and obj.get("action"):
        intent = f"{obj['scenario']}_{obj['action']}"
    if not intent:
        skip(line, "no 'intent' (nor 'scenario' + 'action')")
        return []
    try:
        plain, entities = parse_slurp_annotation(str(obj.get("sentence_annotation") or obj.get("sentence") or ""))
    except ValueError as e:
        skip(line, str(e))
        return []
    raw_text = str(obj.get("sentence") or plain)
    text = normalize_text(raw_text)
    if not text:
        skip(line, "no 'sentence' (nor 'sentence_annotation')")
        return []
    slots: dict[str, str] = {}
    for etype, value in entities:
        slots.setdefault(etype, normalize_text(value))  # a repeated type keeps its first value
    recordings = obj.get("recordings")
    if not isinstance(recordings, list) or not recordings:
        skip(line, "no 'recordings' (text-only SLURP lines have no audio to train on)")
        return []
    base_meta: dict[str, Any] = {"source": "slurp", "slurp_id": obj.get("slurp_id")}
    if obj.get("scenario"):
        base_meta["scenario"] = obj["scenario"]
    if raw_text != text:
        base_meta["raw_text"] = raw_text
    if len(slots) < len(entities):
        base_meta["entities"] = [[t, normalize_text(v)] for t, v in entities]
    out = []
    for rec in recordings:
        file = str(rec.get("file") or "").strip() if isinstance(rec, dict) else ""
        if not file:
            skip(line, f"recording without a 'file': {rec!r}")
            continue
        meta = dict(base_meta, recording=file, mic="headset" if "-headset" in file else "far-field")
        meta.update({k: rec[k] for k in ("wer", "ent_wer", "status") if k in rec})
        audio = Path(file) if os.path.isabs(file) else root / file
        out.append(Utterance(audio=os.path.abspath(audio), text=text, intent=intent, slots=dict(slots),
                             speaker=_slurp_speaker(file, rec, speakers),
                             id=f"slurp-{obj.get('slurp_id', line)}-{Path(file).stem}", meta=meta))
    return out


# ----------------------------------------------------------------------------------- validation

def validate_manifest(utterances: list[Utterance], check_audio: bool = False, schema: Any = None,
                      max_seconds: float | None = 30.0) -> list[str]:
    """Problems that would break training or scoring; an empty list means the manifest is usable.

    Always: empty text/intent, non-string slots, bad durations, duplicate ids, audio files that do not
    exist. With ``check_audio``: every file is decoded with ``assistant.audio.load_audio`` (empty,
    corrupt, silent, too long, ...) and stated durations are compared with the real ones. With a
    ``schema`` (``assistant.schema.Schema``): unknown intents / slots and malformed values.
    """
    if not utterances:
        return ["manifest has no utterances"]
    problems: list[str] = []
    ids = Counter(u.id for u in utterances if u.id)
    for uid, n in ids.items():
        if n > 1:
            problems.append(f"{uid}: id used by {n} utterances; ids must be unique")
    for u in utterances:
        problems += [f"{u.id or u.audio}: {p}" for p in _utterance_problems(u, schema)]
    if check_audio:
        problems += _audio_problems(utterances, max_seconds)
    return problems


def _utterance_problems(u: Utterance, schema: Any) -> list[str]:
    out = []
    if not str(u.text).strip():
        out.append("empty text")
    if not str(u.intent).strip():
        out.append("empty intent")
    if not isinstance(u.slots, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                                for k, v in u.slots.items()):
        out.append(f"slots must map names to non-empty strings, got {u.slots!r}")
    elif schema is not None and str(u.intent).strip():
        out += schema.check_frame(u.intent, u.slots)
    if u.duration is not None and not (u.duration > 0):
        out.append(f"duration must be > 0 seconds, got {u.duration!r}")
    if not os.path.isfile(u.audio):
        out.append(f"audio file not found: {u.audio}")
    return out


def _audio_problems(utterances: list[Utterance], max_seconds: float | None) -> list[str]:
    from assistant.audio import SAMPLE_RATE, AudioError, load_many

    by_path: dict[str, list[Utterance]] = {}
    for u in utterances:
        if os.path.isfile(u.audio):
            by_path.setdefault(u.audio, []).append(u)
    problems = []
    for audio, result in load_many(list(by_path), max_seconds=max_seconds, progress="checking audio"):
        if isinstance(result, AudioError):
            problems.append(f"{by_path[audio][0].id or audio}: {result}")
            continue
        seconds = result.numel() / SAMPLE_RATE
        for u in by_path[audio]:
            if u.duration is not None and abs(u.duration - seconds) > 0.25:
                problems.append(f"{u.id or audio}: manifest says {u.duration:.2f} s, the audio lasts "
                                f"{seconds:.2f} s; regenerate the manifest")
    return problems
