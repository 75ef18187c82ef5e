"""The field teacher: the text model retrained with the pool transcripts and frames an RSFT round kept."""

from __future__ import annotations

import json

import pytest
import torch

from assistant.data.grammar import Sentence
from assistant.rsft.loop import kept_frames


def _row(target: str, **extra) -> str:
    return json.dumps({"audio": "pool/pool-00000.flac", "target": target, "id": "pool-00000#0", "transcript": "",
                       "weight": 1.0, "scope": "frame", **extra}) + "\n"


def test_kept_frames_reads_the_full_examples_of_a_round(tmp_path):
    (tmp_path / "kept.jsonl").write_text(
        _row("turn down the heat in the washroom | decrease_heat_washroom | location=washroom ; object=heat")
        + _row("lights on please | activate_lights_none | object=lights", scope="intent")    # intent only
        + _row("play some music | play_music", weight=0.25)                                 # down-weighted
        + _row("| activate_music | ")                                                       # no transcript
        + _row("what time is it | datetime_query"))
    frames = kept_frames(tmp_path)
    assert [(f.transcript, f.intent, dict(f.slots)) for f in frames] == [
        ("turn down the heat in the washroom", "decrease_heat_washroom", {"location": "washroom", "object": "heat"}),
        ("what time is it", "datetime_query", {})]
    with pytest.raises(FileNotFoundError, match="finish the round"):
        kept_frames(tmp_path / "round_9")


def test_the_field_teacher_adds_the_field_sentences_to_the_default_text_and_is_cached(tmp_path, monkeypatch):
    import assistant.nlu.training as training
    from assistant.nlu import TextTeacher
    from assistant.schema import load_schema

    schema = load_schema()
    torch.manual_seed(0)
    fresh = TextTeacher.fresh(list(schema.intents), sorted(schema.slots), implied_slots={}, intent_slots={})
    calls = []
    monkeypatch.setattr(training, "train_teacher", lambda sentences, *a, **k: calls.append(list(sentences)) or fresh)
    intent = next(iter(schema.intents))
    field = [Sentence("could you kindly do the thing", intent, {}, "field"),
             Sentence("a phrase for an intent nobody defined", "no_such_intent", {}, "field"),   # left out
             Sentence("   ", intent, {}, "field")]                                             # no words: left out
    training.field_teacher(tmp_path / "ft", field, schema)
    base = training.default_sentences(schema)
    assert calls[0][:len(base)] == base and calls[0][len(base):] == field[:1]
    assert (tmp_path / "ft" / "teacher.json").is_file()
    training.field_teacher(tmp_path / "ft", field, schema)                    # the same text: the cached one
    assert len(calls) == 1
    training.field_teacher(tmp_path / "ft", field + [Sentence("do the thing now", intent, {}, "field")], schema)
    assert len(calls) == 2 and calls[1][-1].text == "do the thing now"      # new field text: trained again
