"""Hugging Face datasets in and out (assistant.data.hf): real `datasets` loaders, real audio files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import torch

from assistant.audio import load_audio
from assistant.config import ConfigError, load_config
from assistant.data.hf import parse_columns, read_dataset, write_audiofolder_metadata
from assistant.data.manifest import ManifestError, read_manifest

FSC = Path(__file__).parent / "fixtures" / "fsc" / "data"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four fixture clips copied into an audiofolder split folder, with our ids."""
    folder = tmp_path_factory.mktemp("corpus") / "test"
    folder.mkdir()
    utts = read_manifest(FSC / "train_data.csv")[:4]
    for i, u in enumerate(utts):
        target = folder / f"clip-{i}{Path(u.audio).suffix}"
        shutil.copy(u.audio, target)
        u.audio, u.id, u.meta = str(target), f"test-{i}", {"engine": "fsc", "augment": {"room": None}}
    return folder, utts


def test_our_corpus_loads_as_an_audiofolder_and_reads_back(clips):
    folder, utts = clips
    write_audiofolder_metadata(utts, folder)
    ds = datasets.load_dataset("audiofolder", data_dir=str(folder), split="train")
    assert ds.num_rows == len(utts) and {"audio", "text", "intent", "slots", "speaker", "engine"} <= set(ds.column_names)
    assert "augment" not in ds.column_names                  # only plain values become columns
    back = read_dataset(str(folder), "train")
    assert [(u.id, u.text, u.intent, u.slots, u.speaker) for u in back] == \
        [(u.id, u.text, u.intent, u.slots, u.speaker) for u in utts]
    assert all(torch.equal(load_audio(a.audio), load_audio(b.audio)) for a, b in zip(back, utts))


def test_the_field_pool_is_written_without_labels(clips, tmp_path):
    folder, utts = clips
    pool = tmp_path / "pool"
    shutil.copytree(folder, pool)
    moved = [type(u)(**{**u.__dict__, "audio": str(pool / Path(u.audio).name)}) for u in utts]
    rows = [json.loads(line) for line in write_audiofolder_metadata(moved, pool, labelled=False).read_text().splitlines()]
    assert rows and all(not {"text", "intent", "slots"} & set(r) for r in rows)
    with pytest.raises(ManifestError, match="not inside"):
        write_audiofolder_metadata(utts, tmp_path / "elsewhere")


def test_a_saved_dataset_with_other_column_names_embedded_audio_and_class_labels(clips, tmp_path):
    """What a user brings: `save_to_disk` output with its own column names, intents as a ClassLabel and
    the audio embedded as bytes (written once to a cache folder, then read with soundfile)."""
    _, utts = clips
    intents = sorted({u.intent for u in utts})
    features = datasets.Features({"recording": datasets.Audio(decode=False), "sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=intents), "client": datasets.Value("string")})
    rows = {"recording": [{"bytes": Path(u.audio).read_bytes(), "path": f"gone/{Path(u.audio).name}"} for u in utts],
            "sentence": [u.text for u in utts], "label": [intents.index(u.intent) for u in utts],
            "client": [u.speaker for u in utts]}
    split = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"test": split, "train": split}).save_to_disk(str(tmp_path / "saved"))

    cache = tmp_path / "audio_cache"
    got = read_dataset(str(tmp_path / "saved"), "test", "audio=recording,text=sentence,intent=label,speaker=client",
                       audio_cache=cache)
    assert [(u.text, u.intent, u.speaker, u.slots) for u in got] == [(u.text, u.intent, u.speaker, {}) for u in utts]
    assert [u.id for u in got] == [f"test-{i:06d}" for i in range(len(utts))]       # no id column: made up
    assert all(Path(u.audio).parent == cache for u in got)
    assert all(torch.equal(load_audio(a.audio), load_audio(b.audio)) for a, b in zip(got, utts))
    with pytest.raises(ManifestError, match=r"no column\(s\) \['text=text'.*--columns"):
        read_dataset(str(tmp_path / "saved"), "test", "audio=recording,intent=label")
    with pytest.raises(ManifestError, match=r"no split 'dev'.*\['test', 'train'\]"):
        read_dataset(str(tmp_path / "saved"), "dev", "audio=recording")


def test_columns_spec_is_checked():
    assert parse_columns("text=sentence, intent=label")["text"] == "sentence"
    assert parse_columns(None)["audio"] == "audio"
    with pytest.raises(ManifestError, match="FIELD=COLUMN"):
        parse_columns("text")
    with pytest.raises(ManifestError, match="unknown field"):
        parse_columns("transcript=sentence")


def test_supervised_training_reads_a_dataset(clips, tmp_path):
    """`assistant train --dataset ROOT`: an audiofolder whose split folders are train/ and validation/."""
    from assistant.train import TrainConfig, load_splits

    folder, utts = clips
    write_audiofolder_metadata(utts, folder)
    for split in ("train", "validation"):
        shutil.copytree(folder, tmp_path / "data" / split)
    dev_meta = tmp_path / "data" / "validation" / "metadata.jsonl"
    dev_meta.write_text(dev_meta.read_text().replace('"test-', '"dev-'))
    train, dev = load_splits(load_config(TrainConfig, None, dataset=str(tmp_path / "data")))
    assert [u.id for u in train] == [u.id for u in utts] and [u.id for u in dev] == [f"dev-{i}" for i in range(4)]
    with pytest.raises(ConfigError, match="one source"):
        load_config(TrainConfig, None, dataset=str(folder), train_manifest="train.jsonl")
