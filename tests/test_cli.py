"""The `assistant` command end to end on tiny random models and fixture files."""

import json
from pathlib import Path

import pytest

from assistant.cli import COMMANDS, main

FIXTURES = Path(__file__).parent / "fixtures"
FSC = FIXTURES / "fsc" / "data" / "train_data.csv"
SLURP = FIXTURES / "slurp" / "train.jsonl"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target

    folder = tmp_path_factory.mktemp("model")
    texts = [frame_target(u) for u in read_manifest(FSC) + read_manifest(SLURP)]
    SLUModel.tiny_random(texts, seed=0).save_pretrained(folder)
    return folder


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", [FSC, SLURP])
def test_evaluate_json_on_fixture_manifests(tiny_model, manifest, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tiny_model), "--manifest", str(manifest), "--json",
                 "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("intent_accuracy", "slot_f1", "slu_f1", "wer", "n", "invalid_rate", "per_speaker", "per_intent"):
        assert key in report
    assert report["n"] == (4 if manifest == FSC else 4)
    assert 0.0 <= report["intent_accuracy"] <= 1.0
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    rows = [json.loads(l) for l in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == report["n"] and {"gold_intent", "intent", "raw"} <= set(rows[0])


def test_evaluate_missing_manifest_is_one_clear_error(tiny_model, capsys):
    assert main(["evaluate", "--model", str(tiny_model), "--manifest", "/nope/test.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "/nope/test.jsonl" in err


def test_transcribe_and_classify_goes_on_past_bad_files(tiny_model, tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    good = sorted((FIXTURES / "fsc").rglob("*.wav"))[0]
    code = main(["transcribe-and-classify", str(bad), str(good), "--model", str(tiny_model), "--json"])
    lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
    assert code == 1                      # one file failed ...
    assert len(lines) == 2                # ... and the other was still processed
    assert lines[0]["error"] and "broken.wav" in lines[0]["error"]
    assert not lines[1]["error"] and lines[1]["latency_s"] > 0


def test_transcribe_and_classify_folder_expands_to_audio_files(tiny_model, capsys):
    assert main(["transcribe-and-classify", str(FIXTURES / "fsc"), "--model", str(tiny_model)]) == 0
    out = capsys.readouterr().out
    assert out.count("latency") == 4


def test_transcribe_without_a_model_says_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASSISTANT_RUNS", str(tmp_path / "empty"))
    assert main(["transcribe-and-classify", str(FSC)]) == 2
    assert "assistant run" in capsys.readouterr().err


def test_train_cli_rejects_bad_values(capsys):
    assert main(["train", "--batch-size", "-3"]) == 2
    assert "batch_size" in capsys.readouterr().err
