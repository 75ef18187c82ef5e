"""assistant.data.manifest: our JSONL, Fluent Speech Commands CSV and SLURP JSONL, plus validation."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from assistant.data.manifest import (FSC_COLUMNS, ManifestError, Utterance, detect_format,
                                     parse_slurp_annotation, read_jsonl, read_manifest, validate_manifest,
                                     write_jsonl)

FIXTURES = Path(__file__).parent / "fixtures"
FSC_ROOT = FIXTURES / "fsc"
FSC_CSV = FSC_ROOT / "data" / "train_data.csv"
SLURP_DIR = FIXTURES / "slurp"
SLURP_JSONL = SLURP_DIR / "train.jsonl"
FSC_HEADER = "," + ",".join(FSC_COLUMNS)


def copy_fsc(tmp_path: Path) -> Path:
    root = tmp_path / "fluent_speech_commands_dataset"
    shutil.copytree(FSC_ROOT, root)
    return root


def skipped_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# -------------------------------------------------------------------------------------- text utils

def test_parse_slurp_annotation():
    assert parse_slurp_annotation("wake me up at [time : eight am]") == (
        "wake me up at eight am", [("time", "eight am")])
    text, ents = parse_slurp_annotation("what's the weather in [place_name : new york] [date : tomorrow]")
    assert text == "what's the weather in new york tomorrow"
    assert ents == [("place_name", "new york"), ("date", "tomorrow")]
    assert parse_slurp_annotation("set it for [time:10:30]") == ("set it for 10:30", [("time", "10:30")])
    assert parse_slurp_annotation("no entities here") == ("no entities here", [])
    for bad in ("wake me at [time : eight", "wake me at time : eight]", "wake [time : ] me"):
        with pytest.raises(ValueError):
            parse_slurp_annotation(bad)


# ------------------------------------------------------------------------------------ detection

def test_detect_format(tmp_path):
    assert detect_format(FSC_CSV) == "fsc"
    assert detect_format(SLURP_JSONL) == "slurp"
    ours = tmp_path / "ours.jsonl"
    write_jsonl([Utterance(audio="a.flac", text="hi", intent="greet")], ours)
    assert detect_format(ours) == "jsonl"


@pytest.mark.parametrize("content,words", [
    (b"", "empty manifest"),
    (b"\n\n", "empty manifest"),
    (b'{"file": "a.wav", "label": 3}\n', "unrecognised JSON lines"),
    (b"\x00\x01\x02RIFF", "binary file"),
    (b"just some words\n", "neither JSON lines nor a CSV"),
    (b"\xff\xfe\xfa not utf8, at all\n", "not UTF-8"),
    (b"{broken json\n{also broken\n", "no line is a JSON object"),
])
def test_wrong_shape_files_raise(tmp_path, content, words):
    path = tmp_path / "manifest.txt"
    path.write_bytes(content)
    with pytest.raises(ManifestError, match=words) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "train.jsonl")


def test_unknown_format_name():
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(FSC_CSV, format="kaldi")


# ------------------------------------------------------------------------------------- our JSONL

def test_existing_jsonl_api_still_round_trips(tmp_path):
    utts = [Utterance(audio=str(tmp_path / "m" / "clips" / "a.flac"), text="set an alarm for seven", intent="alarm_set",
                      slots={"time": "seven"}, speaker="piper:joe", id="u1", duration=1.5,
                      meta={"template": "alarm_set/3"})]
    path = tmp_path / "m" / "train.jsonl"
    write_jsonl(utts, path)
    assert json.loads(path.read_text())["audio"] == "clips/a.flac"  # written relative to the manifest
    back = read_jsonl(path)
    assert back[0].slots == {"time": "seven"} and back[0].meta == {"template": "alarm_set/3"}
    [via_any] = read_manifest(path)
    assert via_any.audio == str(tmp_path / "m" / "clips" / "a.flac")  # absolute again
    assert Path(back[0].audio).resolve() == Path(via_any.audio)
    assert via_any.to_json() == {**back[0].to_json(), "audio": via_any.audio}


def test_unicode_line_separators_inside_text_survive(tmp_path):
    odd = "caf\u00e9 \u2028 na\u00efve \u0085 line"
    path = tmp_path / "u.jsonl"
    write_jsonl([Utterance(audio="a.flac", text=odd, intent="x"), Utterance(audio="b.flac", text="y", intent="z")],
                path)
    assert [u.text for u in read_jsonl(path)] == [odd, "y"]
    assert [u.text for u in read_manifest(path)] == [odd, "y"]


def test_our_jsonl_resolves_relative_audio_and_skips_bad_lines(tmp_path, caplog):
    path = tmp_path / "dev.jsonl"
    lines = [
        json.dumps({"audio": "clips/a.flac", "text": "hello", "intent": "greet"}),
        "{not json",
        json.dumps({"audio": "clips/b.flac", "text": "no intent"}),
        "",
        json.dumps({"audio": "/abs/c.flac", "text": "bye", "intent": "bye", "slots": {}, "id": "keep-me"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="assistant.data.manifest"):
        utts = read_manifest(path)
    assert [u.text for u in utts] == ["hello", "bye"]
    assert utts[0].audio == str(tmp_path / "clips" / "a.flac")
    assert utts[0].id == "dev-000001" and utts[1].id == "keep-me"
    warnings = skipped_lines(caplog)
    assert len(warnings) == 2
    assert f"{path}:2" in warnings[0] and "not valid JSON" in warnings[0]
    assert f"{path}:3" in warnings[1] and "intent" in warnings[1]
    with pytest.raises(ManifestError, match=f"{path}:2"):
        read_manifest(path, strict=True)


def test_all_rows_bad_raises(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "text": "x"}) + "\n" + json.dumps({"audio": "b.wav"}) + "\n")
    with pytest.raises(ManifestError, match="no usable rows"):
        read_manifest(path)


# ------------------------------------------------------------------------------------------ FSC

def test_fsc_fixture():
    utts = read_manifest(FSC_CSV)
    assert [u.text for u in utts] == ["turn on the lights in the kitchen", "bring me some juice",
                                      "decrease the volume", "turn up the heat in the bedroom"]
    assert [u.intent for u in utts] == ["activate_lights_kitchen", "bring_juice_none", "decrease_volume_none",
                                        "increase_heat_bedroom"]
    assert utts[0].slots == {"object": "lights", "location": "kitchen"}
    assert utts[1].slots == {"object": "juice"}
    assert [u.speaker for u in utts] == ["piperJoeMedium01"] * 3 + ["espeakNgEnUsM3x2"]
    assert utts[0].meta == {"source": "fsc", "raw_text": "Turn on the lights in the kitchen"}
    for u in utts:
        assert Path(u.audio).is_absolute() and Path(u.audio).is_file()
        assert Path(u.audio).parent.name == u.speaker
    assert len({u.id for u in utts}) == 4
    assert validate_manifest(utts, check_audio=True) == []


def test_fsc_csv_in_root_folder(tmp_path):
    root = copy_fsc(tmp_path)
    (root / "data" / "train_data.csv").rename(root / "train_data.csv")
    utts = read_manifest(root / "train_data.csv")
    assert len(utts) == 4 and all(Path(u.audio).is_file() for u in utts)


def test_fsc_csv_next_to_flat_wavs(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for wav in FSC_ROOT.rglob("*.wav"):
        shutil.copy(wav, flat / wav.name)
    shutil.copy(FSC_CSV, flat / "test_data.csv")
    utts = read_manifest(flat / "test_data.csv")
    assert [Path(u.audio).parent for u in utts] == [flat] * 4
    assert all(Path(u.audio).is_file() for u in utts)


def test_fsc_audio_root_argument(tmp_path):
    root = copy_fsc(tmp_path)
    csv_elsewhere = tmp_path / "splits" / "valid.csv"
    csv_elsewhere.parent.mkdir()
    shutil.copy(FSC_CSV, csv_elsewhere)
    utts = read_manifest(csv_elsewhere, audio_root=root)
    assert all(Path(u.audio).is_file() and str(root) in u.audio for u in utts)


def test_fsc_missing_audio_is_reported_not_fatal(tmp_path):
    root = copy_fsc(tmp_path)
    shutil.rmtree(root / "wavs")
    utts = read_manifest(root / "data" / "train_data.csv")
    assert utts[0].audio == str(root / "wavs/speakers/piperJoeMedium01/turn_on_the_lights_in_the_kitchen.wav")
    problems = validate_manifest(utts)
    assert len(problems) == 4 and all("audio file not found" in p for p in problems)


def test_fsc_odd_rows_are_skipped_with_file_and_line(tmp_path, caplog):
    path = tmp_path / "data" / "odd.csv"
    path.parent.mkdir()
    path.write_text("\n".join([
        FSC_HEADER,
        "0,wavs/speakers/s1/a.wav,s1,Turn on the lights,activate,lights,none",
        "1,wavs/speakers/s1/b.wav,s1,Bring me the kitchen,bring,kitchen,none",     # not one of the 31
        "2,wavs/speakers/s1/c.wav,s1,Too,few,fields",
        "3,wavs/speakers/s1/d.wav,s1,,deactivate,lamp,none",                       # no transcription
        "4,wavs/speakers/s2/e.wav,s2,\"Louder, please!\",increase,volume,none",
    ]) + "\n")
    with caplog.at_level(logging.WARNING, logger="assistant.data.manifest"):
        utts = read_manifest(path)
    assert [u.intent for u in utts] == ["activate_lights_none", "increase_volume_none"]
    assert utts[1].text == "louder please" and utts[1].meta["raw_text"] == "Louder, please!"
    warnings = skipped_lines(caplog)
    assert [w.split(": ", 2)[1] for w in warnings] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "31 valid" in warnings[0] and "fields" in warnings[1] and "transcription" in warnings[2]
    with pytest.raises(ManifestError, match=f"{path}:3"):
        read_manifest(path, strict=True)


def test_fsc_without_index_column_and_with_extra_columns(tmp_path):
    path = tmp_path / "data" / "x.csv"
    path.parent.mkdir()
    path.write_text("path,speakerId,transcription,action,object,location,gender\n"
                    "wavs/speakers/s9/z.wav,s9,Change language to German,change language,German,none,f\n")
    [u] = read_manifest(path)
    assert (u.intent, u.slots, u.speaker) == ("change_language_german_none", {"object": "german"}, "s9")
    assert u.audio == str(tmp_path / "wavs/speakers/s9/z.wav")


def test_csv_with_other_columns_names_the_missing_ones(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("file,text,label\na.wav,hello,greet\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert f"{path}:1" in msg and "'transcription'" in msg and "'speakerId'" in msg and FSC_HEADER in msg


def test_duplicate_fsc_rows_get_unique_ids(tmp_path):
    path = tmp_path / "dup.csv"
    row = "wavs/speakers/s1/a.wav,s1,Turn on the lamp,activate,lamp,none"
    path.write_text(f"{FSC_HEADER}\n0,{row}\n1,{row}\n")
    utts = read_manifest(path)
    assert len({u.id for u in utts}) == 2
    assert not any("id used by" in p for p in validate_manifest(utts))


# ---------------------------------------------------------------------------------------- SLURP

def test_slurp_fixture_one_utterance_per_recording():
    utts = read_manifest(SLURP_JSONL)
    assert len(utts) == 4  # 3 sentences, the first recorded twice (headset + far-field)
    alarm = [u for u in utts if u.intent == "alarm_set"]
    assert len(alarm) == 2 and {u.meta["mic"] for u in alarm} == {"headset", "far-field"}
    # transcripts and slot values in the grammar's spoken form (assistant.text.normalize_text), raw kept in meta
    assert all(u.text == "wake me up at eight a m" and u.slots == {"time": "eight a m"} for u in alarm)
    assert all(u.meta["raw_text"] == "wake me up at eight am" for u in alarm)
    assert alarm[0].speaker == alarm[1].speaker == "slurp:1502099775"  # one session, two microphones
    weather = next(u for u in utts if u.intent == "weather_query")
    assert weather.text == "whats the weather in london" and weather.slots == {"place_name": "london"}
    assert weather.speaker == "slurp:-1504194195"
    music = next(u for u in utts if u.intent == "play_music")
    assert music.slots == {"music_genre": "jazz"}
    assert music.meta["slurp_id"] == 10231 and music.meta["status"] == "correct" and music.meta["wer"] == 0
    for u in utts:
        assert Path(u.audio).parent == (SLURP_DIR / "slurp_real").resolve() and Path(u.audio).is_file()
        for value in u.slots.values():
            assert value in u.text
    assert len({u.id for u in utts}) == 4
    assert validate_manifest(utts, check_audio=True) == []


def test_slurp_release_layout_finds_audio_and_metadata_speakers(tmp_path):
    """Real release: slurp/dataset/slurp/{train,devel,test}.jsonl + metadata.json, audio in slurp/audio/."""
    text_dir = tmp_path / "slurp" / "dataset" / "slurp"
    text_dir.mkdir(parents=True)
    shutil.copy(SLURP_JSONL, text_dir / "devel.jsonl")
    shutil.copytree(SLURP_DIR / "slurp_real", tmp_path / "slurp" / "audio" / "slurp_real")
    (text_dir / "metadata.json").write_text(json.dumps({
        "4489": {"recordings": {"audio-1502099775-headset.flac": {"usrid": "FO-460"},
                                "audio-1502099775.flac": {"usrid": "FO-460"}}}}))
    utts = read_manifest(text_dir / "devel.jsonl")
    assert all(Path(u.audio).is_file() for u in utts)
    speakers = {u.meta["recording"]: u.speaker for u in utts}
    assert speakers["audio-1502099775.flac"] == "FO-460"
    assert speakers["audio-1492784000-headset.flac"] == "slurp:1492784000"  # not in metadata: file name


def test_slurp_audio_root_argument_and_recording_speaker_field(tmp_path):
    recs = tmp_path / "my_recordings"
    shutil.copytree(SLURP_DIR / "slurp_real", recs)
    line = json.loads(SLURP_JSONL.read_text().splitlines()[2])
    line["recordings"][0]["speaker"] = "MO-007"
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(line) + "\n")
    [u] = read_manifest(path, audio_root=recs)
    assert u.audio == str(recs / "audio-1492784000-headset.flac") and u.speaker == "MO-007"


def test_slurp_odd_lines_are_skipped(tmp_path, caplog):
    good = json.loads(SLURP_JSONL.read_text().splitlines()[0])
    no_recordings = dict(good, slurp_id=1, recordings=[])
    broken_brackets = dict(good, slurp_id=2, sentence_annotation="wake me up at [time : eight am")
    no_intent = {k: v for k, v in good.items() if k not in ("intent", "scenario")} | {"slurp_id": 3}
    repeated = dict(good, slurp_id=4, sentence="remind me monday and tuesday",
                    sentence_annotation="remind me [date : Monday] and [date : tuesday]")
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [good, no_recordings, broken_brackets, no_intent, repeated]))
    with caplog.at_level(logging.WARNING, logger="assistant.data.manifest"):
        utts = read_manifest(path, audio_root=SLURP_DIR / "slurp_real")
    assert {u.meta["slurp_id"] for u in utts} == {4489, 4}
    rep = next(u for u in utts if u.meta["slurp_id"] == 4)
    assert rep.slots == {"date": "monday"} and rep.meta["entities"] == [["date", "monday"], ["date", "tuesday"]]
    warnings = skipped_lines(caplog)
    assert [f"{path}:{n}" in w for n, w in zip((2, 3, 4), warnings)] == [True, True, True]
    assert "recordings" in warnings[0] and "brackets" in warnings[1] and "intent" in warnings[2]


def test_slurp_intent_from_scenario_and_action(tmp_path):
    line = json.loads(SLURP_JSONL.read_text().splitlines()[0])
    del line["intent"]
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(line) + "\n")
    assert {u.intent for u in read_manifest(path, audio_root=SLURP_DIR / "slurp_real")} == {"alarm_set"}


# ----------------------------------------------------------------------------------- validation

def test_validate_reports_each_problem(tmp_path):
    good = FSC_ROOT / "wavs/speakers/piperJoeMedium01/bring_me_some_juice.wav"
    utts = [
        Utterance(audio=str(good), text="bring me some juice", intent="bring_juice_none", slots={"object": "juice"},
                  id="a"),
        Utterance(audio=str(good), text="", intent="bring_juice_none", id="a"),
        Utterance(audio=str(tmp_path / "gone.wav"), text="hi", intent="", id="c"),
        Utterance(audio=str(good), text="x", intent="y", slots={"s": 3}, duration=-1.0, id="d"),
    ]
    problems = validate_manifest(utts)
    assert "a: id used by 2 utterances; ids must be unique" in problems
    assert "a: empty text" in problems
    assert "c: empty intent" in problems
    assert f"c: audio file not found: {tmp_path / 'gone.wav'}" in problems
    assert any(p.startswith("d: slots must map names to non-empty strings") for p in problems)
    assert "d: duration must be > 0 seconds, got -1.0" in problems
    assert len(problems) == 6
    assert validate_manifest([]) == ["manifest has no utterances"]


def test_validate_check_audio_decodes_files(tmp_path):
    silent = tmp_path / "silent.flac"
    sf.write(silent, np.zeros(16000, dtype=np.float32), 16000)
    juice = FSC_ROOT / "wavs/speakers/piperJoeMedium01/bring_me_some_juice.wav"
    utts = [Utterance(audio=str(silent), text="x", intent="y", id="quiet"),
            Utterance(audio=str(juice), text="bring me some juice", intent="bring_juice_none", id="ok",
                      duration=sf.info(juice).duration),
            Utterance(audio=str(juice), text="bring me some juice", intent="bring_juice_none", id="stale",
                      duration=9.0)]
    assert validate_manifest(utts) == []  # files exist; nothing decoded
    problems = validate_manifest(utts, check_audio=True)
    assert len(problems) == 2
    assert problems[0].startswith("quiet: ") and "silent" in problems[0] and str(silent) in problems[0]
    assert problems[1].startswith("stale: manifest says 9.00 s")


def test_validate_against_the_schema():
    from assistant.schema import load_schema

    schema = load_schema()
    fixtures = read_manifest(FSC_CSV) + read_manifest(SLURP_JSONL)
    assert validate_manifest(fixtures, schema=schema) == []
    wrong = Utterance(audio=fixtures[0].audio, text="turn on the lights", intent="activate_lights_kitchen",
                      slots={"object": "lights", "location": "garage"}, id="w")
    problems = validate_manifest([wrong, Utterance(audio=fixtures[0].audio, text="x", intent="fly_me", id="u")],
                                 schema=schema)
    assert any(p.startswith("w: ") and "garage" in p for p in problems)
    assert any(p.startswith("u: ") and "unknown intent" in p for p in problems)


def test_read_write_round_trip_of_external_corpora(tmp_path):
    utts = read_manifest(FSC_CSV) + read_manifest(SLURP_JSONL)
    out = tmp_path / "combined.jsonl"
    write_jsonl(utts, out, relative=False)
    back = read_manifest(out)
    assert detect_format(out) == "jsonl"
    assert [(u.audio, u.text, u.intent, u.slots, u.speaker, u.id, u.meta) for u in back] == \
        [(u.audio, u.text, u.intent, u.slots, u.speaker, u.id, u.meta) for u in utts]
