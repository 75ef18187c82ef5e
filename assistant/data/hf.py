"""Hugging Face ``datasets`` in and out.

In: any dataset with audio, a transcript and an intent becomes our utterances — a local
``save_to_disk`` folder, an ``audiofolder`` (audio files + ``metadata.jsonl``), or a hub id where a hub is
reachable::

    utts = read_dataset("path/or/id", split="test", columns="text=sentence,intent=label")

Audio is decoded with soundfile, not by ``datasets`` (whose ``Audio`` decoding needs torchcodec + FFmpeg):
the column is read undecoded; a file path is used as is, embedded bytes are written once to a cache folder.

Out: the synthesised corpus writes ``metadata.jsonl`` beside each split's audio, so
``load_dataset("audiofolder", data_dir="data/generated/default")`` loads its train / validation (our dev) /
test splits, and ``data_dir=".../pool"`` the unlabelled field pool (``datasets`` needs ``torchcodec``
importable to build any Audio column, even undecoded).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from assistant.data.manifest import ManifestError, Utterance

# our field -> the dataset's column, unless --columns says otherwise
DEFAULT_COLUMNS = {"audio": "audio", "text": "text", "intent": "intent", "slots": "slots", "speaker": "speaker",
                   "id": "id"}
REQUIRED = ("audio", "text", "intent")
METADATA = "metadata.jsonl"


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"text=sentence,intent=label"`` (or a mapping) over the defaults: our field -> dataset column."""
    given = dict(spec or {}) if not isinstance(spec, str) else {}
    if isinstance(spec, str) and spec.strip():
        for part in spec.split(","):
            ours, sep, theirs = part.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise ManifestError(f"--columns {spec!r}: write FIELD=COLUMN pairs separated by commas, "
                                    "e.g. text=sentence,intent=label")
            given[ours.strip()] = theirs.strip()
    unknown = sorted(set(given) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ManifestError(f"--columns: unknown field(s) {unknown}; map any of {sorted(DEFAULT_COLUMNS)}")
    return {**DEFAULT_COLUMNS, **given}


def load_split(source: str, split: str):
    """The ``datasets.Dataset`` of one split: a ``save_to_disk`` folder, an audiofolder, or a hub id."""
    import datasets

    folder = Path(source)
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ManifestError(f"{source}: no split {split!r}; it has {sorted(loaded)} (pass --split)")
                return loaded[split]
            return loaded
        if folder.is_dir():
            return datasets.load_dataset("audiofolder", data_dir=str(folder), split=split)
        return datasets.load_dataset(source, split=split)
    except ManifestError:
        raise
    except (ValueError, FileNotFoundError, OSError, ConnectionError) as e:   # datasets' own errors are these
        raise ManifestError(f"{source}: cannot load split {split!r} as a Hugging Face dataset ({e}); pass a "
                            "save_to_disk folder, an audiofolder (audio + metadata.jsonl) or a hub id "
                            "(needs a reachable hub)") from None


def read_dataset(source: str, split: str, columns: str | Mapping[str, str] | None = None,
                 audio_cache: Path | None = None) -> list[Utterance]:
    """One split of a Hugging Face dataset as utterances (see the module docstring)."""
    from datasets import Audio, ClassLabel

    ds = load_split(source, split)
    cols = parse_columns(columns)
    missing = [f"{field}={cols[field]}" for field in REQUIRED if cols[field] not in ds.column_names]
    if missing:
        raise ManifestError(f"{source} [{split}]: no column(s) {missing}; it has {ds.column_names}. "
                            "Map them with --columns FIELD=COLUMN,...")
    if isinstance(ds.features[cols["audio"]], Audio):
        ds = ds.cast_column(cols["audio"], Audio(decode=False))
    label = ds.features[cols["intent"]]
    cache = audio_cache or _default_cache(source, split)
    out = []
    for i, row in enumerate(ds):
        where = f"{source} [{split}] row {i}"
        intent = label.int2str(row[cols["intent"]]) if isinstance(label, ClassLabel) else row[cols["intent"]]
        out.append(Utterance(
            audio=_audio_path(row[cols["audio"]], cache, i, where), text=str(row[cols["text"]]), intent=str(intent),
            slots=_slots(row.get(cols["slots"]), where), speaker=str(row.get(cols["speaker"]) or "unknown"),
            id=str(row.get(cols["id"]) or f"{split}-{i:06d}")))
    return out


def _default_cache(source: str, split: str) -> Path:
    from assistant.paths import cache_dir

    key = hashlib.sha256(f"{Path(source).resolve() if Path(source).exists() else source}|{split}".encode()).hexdigest()
    return cache_dir() / "datasets_audio" / key[:16]


def _audio_path(value: Any, cache: Path, index: int, where: str) -> str:
    """A readable file for the row's audio: its own path, or its embedded bytes written once to ``cache``."""
    if isinstance(value, str):
        return value
    if not isinstance(value, Mapping) or not (value.get("bytes") or value.get("path")):
        raise ManifestError(f"{where}: the audio column holds {type(value).__name__}, not a file path or "
                            "{path, bytes}; point --columns audio=COLUMN at the audio")
    if not value.get("bytes"):
        return str(value["path"])
    suffix = Path(value.get("path") or "").suffix or ".wav"
    path = cache / f"{index:07d}{suffix}"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(value["bytes"])
        tmp.replace(path)
    return str(path)


def _slots(value: Any, where: str) -> dict[str, str]:
    """A slots column: a mapping (absent keys of a struct column are None) or its JSON text."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ManifestError(f"{where}: slots {value!r} is neither a mapping nor JSON text") from None
    if not isinstance(value, Mapping):
        raise ManifestError(f"{where}: slots must map slot name -> value, got {value!r}")
    return {str(k): str(v) for k, v in value.items() if v is not None}


def write_audiofolder_metadata(utterances: Iterable[Utterance], split_dir: Path, labelled: bool = True) -> Path:
    """``split_dir/metadata.jsonl`` for the utterances whose audio lies in ``split_dir``: ``file_name``
    relative to it, our fields (slots as JSON text: each row has its own slot names) and the plain values
    of ``meta`` (engine, condition, part, ...). ``labelled=False`` (the field pool): no transcript, intent
    or slots, as field audio arrives."""
    split_dir = Path(split_dir)
    lines = []
    for u in utterances:
        try:
            name = Path(u.audio).resolve().relative_to(split_dir.resolve())
        except ValueError:
            raise ManifestError(f"{u.audio}: not inside {split_dir}; an audiofolder's metadata names files "
                                "below it") from None
        row: dict[str, Any] = {"file_name": str(name), "id": u.id, "speaker": u.speaker}
        if labelled:
            row.update(text=u.text, intent=u.intent, slots=json.dumps(dict(u.slots), sort_keys=True))
        row.update({k: v for k, v in u.meta.items() if isinstance(v, (str, int, float, bool)) and k != "labels_hidden"})
        lines.append(json.dumps(row, ensure_ascii=False))
    path = split_dir / METADATA
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)
    return path
