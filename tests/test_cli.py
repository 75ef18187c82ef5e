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


def test_evaluate_reads_a_hugging_face_dataset_like_its_manifest(tiny_model, tmp_path, capsys):
    """`assistant evaluate --dataset`: the same clips as an audiofolder score exactly as the manifest does."""
    import shutil

    from assistant.data.hf import write_audiofolder_metadata
    from assistant.data.manifest import read_manifest, write_jsonl

    folder = tmp_path / "data" / "test"
    folder.mkdir(parents=True)
    utts = read_manifest(FSC)
    for i, u in enumerate(utts):
        shutil.copy(u.audio, folder / f"{i}.wav")
        u.audio, u.id = str(folder / f"{i}.wav"), f"t{i}"
    write_audiofolder_metadata(utts, folder)
    write_jsonl(utts, tmp_path / "test.jsonl")
    assert main(["evaluate", "--model", str(tiny_model), "--dataset", str(tmp_path / "data"), "--json"]) == 0
    from_dataset = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["evaluate", "--model", str(tiny_model), "--manifest", str(tmp_path / "test.jsonl"), "--json"]) == 0
    from_manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    del from_dataset["mean_latency_s"], from_manifest["mean_latency_s"]     # wall time, not a score
    assert from_dataset == from_manifest and from_dataset["n"] == len(utts)
    assert main(["evaluate", "--model", str(tiny_model), "--dataset", str(tmp_path / "data"), "--manifest",
                 str(tmp_path / "test.jsonl")]) == 2                       # one source, not two
    assert "one of --manifest" in capsys.readouterr().err


def test_evaluate_needs_a_trained_model_folder(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path), "--manifest", str(FSC)]) == 2
    err = capsys.readouterr().err
    assert f"no trained model at {tmp_path}" in err and "assistant train" in err


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


# ------------------------------------------------------------------ every command's options are a dataclass

def _parse(cls, argv, positional=()):
    import argparse

    from assistant.config import add_dataclass_arguments, parse_config

    ap = argparse.ArgumentParser()
    add_dataclass_arguments(ap, cls, positional=positional)
    return parse_config(cls, ap.parse_args(argv))


def test_evaluate_flags_fill_its_config():
    from assistant.evaluate import EvaluateConfig

    base = ["--model", "m", "--manifest", "x.jsonl"]
    cfg = _parse(EvaluateConfig, base)
    assert (cfg.limit, cfg.json, cfg.nlu, cfg.out, cfg.batch_size) == (None, False, True, None, 16)
    cfg = _parse(EvaluateConfig, [*base, "--limit", "5", "--json", "--nlu", "false", "--batch-size", "3"])
    assert (cfg.limit, cfg.json, cfg.nlu, cfg.batch_size) == (5, True, False, 3)
    assert _parse(EvaluateConfig, [*base, "--json", "false", "--limit", "none"]).json is False


def test_transcribe_paths_are_positional_or_a_flag():
    from assistant.config import ConfigError
    from assistant.infer import InferConfig

    cfg = _parse(InferConfig, ["a.wav", "b.wav", "--json"], ("paths",))
    assert (cfg.paths, cfg.json, cfg.int8, cfg.onnx, cfg.model) == (["a.wav", "b.wav"], True, False, None, None)
    # a switch before the paths does not swallow the first one, as with the old store_true switch
    assert _parse(InferConfig, ["--json", "a.wav", "b.wav"], ("paths",)).paths == ["a.wav", "b.wav"]
    cfg = _parse(InferConfig, ["--paths", "a.wav,b.wav", "--onnx", "E", "--int8"], ("paths",))
    assert (cfg.paths, cfg.onnx, cfg.int8) == (["a.wav", "b.wav"], "E", True)
    with pytest.raises(ConfigError, match="not both"):
        _parse(InferConfig, ["a.wav", "--paths", "b.wav"], ("paths",))
    with pytest.raises(ConfigError, match="--int8 needs --onnx"):
        _parse(InferConfig, ["a.wav", "--int8"], ("paths",))


def test_export_demo_convert_flags_fill_their_configs():
    from assistant.config import ConfigError
    from assistant.demo import DemoConfig
    from assistant.export import ExportConfig
    from assistant.model import packaged
    from assistant.model.convert import ConvertConfig

    cfg = _parse(ExportConfig, ["--out", "o"])
    assert (cfg.model, cfg.format, cfg.quantize, cfg.verify) == (None, "onnx", None, True)
    cfg = _parse(ExportConfig, ["--out", "o", "--quantize", "int8", "--verify", "false"])
    assert (cfg.quantize, cfg.verify) == ("int8", False)
    assert _parse(ExportConfig, ["--out", "o", "--quantize", "none"]).quantize is None
    for argv, flag in ((["--out", "o", "--quantize", "int4"], "--quantize"), (["--out", "o", "--format", "tflite"],
                                                                                "--format"), ([], "--out")):
        with pytest.raises(ConfigError, match=flag):
            _parse(ExportConfig, argv)
    cfg = _parse(DemoConfig, ["--quiet", "--port", "0", "--max-connections", "4"])
    assert (cfg.quiet, cfg.port, cfg.max_connections, cfg.model, cfg.host) == (True, 0, 4, None, "127.0.0.1")
    with pytest.raises(ConfigError, match="--max-connections"):
        _parse(DemoConfig, ["--max-connections", "0"])
    assert ConvertConfig().model == packaged.DEFAULT_NAME
    cfg = _parse(ConvertConfig, ["--model", "base", "--force"])
    assert (cfg.model, cfg.force, cfg.ct2_dir, cfg.out_dir) == ("base", True, None, None)
    with pytest.raises(ConfigError, match="--model 'large'"):
        _parse(ConvertConfig, ["--model", "large"])


def test_bench_and_diagnostics_flags_fill_their_configs():
    from assistant.bench.sampler import BenchSamplerConfig
    from assistant.bench.serving import BenchServingConfig
    from assistant.config import ConfigError
    from assistant.rsft.diagnostics import DiagnosticsConfig

    cfg = _parse(BenchSamplerConfig, ["--json", "--n", "2,4", "--generate", "false", "--out", "o.json"])
    assert (cfg.json, cfg.n, cfg.generate, cfg.reference, cfg.threads, cfg.model, cfg.out) == (
        True, [2, 4], False, True, None, None, "o.json")
    with pytest.raises(ConfigError, match="--n"):
        _parse(BenchSamplerConfig, ["--n", "0,16"])
    cfg = _parse(BenchServingConfig, ["--json", "--clients", "2", "--max-seconds", "1.5"])
    assert (cfg.json, cfg.clients, cfg.max_seconds, cfg.threads) == (True, 2, 1.5, None)
    with pytest.raises(ConfigError, match="--threads"):
        _parse(BenchServingConfig, ["--threads", "0"])
    positional = ("round_dir", "pool_manifest")
    cfg = _parse(DiagnosticsConfig, ["R", "P"], positional)
    assert (cfg.round_dir, cfg.pool_manifest, cfg.compare, cfg.limit) == ("R", "P", None, None)
    cfg = _parse(DiagnosticsConfig, ["R", "P", "--compare", "target_likelihood", "--limit", "5"], positional)
    assert (cfg.compare, cfg.limit) == (["target_likelihood"], 5)
    assert _parse(DiagnosticsConfig, ["R", "P", "--compare"], positional).compare == []
    with pytest.raises(ConfigError, match="ROUND_DIR POOL_MANIFEST"):
        _parse(DiagnosticsConfig, ["R"], positional)


def test_main_job_sections_are_its_recipes_with_dotted_flags_and_whole_files(tmp_path):
    """`assistant run`: sft/rsft default to the recipe files; dotted flags change one key; a section given
    as a file replaces the section (keys it leaves out: the class's defaults, not the readings recipe's)."""
    from assistant.config import ConfigError, load_config
    from assistant.main_job import MainConfig
    from assistant.paths import REPO_ROOT
    from assistant.rsft.loop import RSFTConfig
    from assistant.train import TrainConfig

    recipes = REPO_ROOT / "recipes" / "configs"
    default = _parse(MainConfig, [])
    assert default.sft == load_config(TrainConfig, recipes / "sft_default.yaml")
    assert default.rsft == load_config(RSFTConfig, recipes / "rsft_readings.yaml") and default.rsft.rounds == 1
    cfg = _parse(MainConfig, ["--rsft.rounds", "0", "--rsft.accept.k", "2", "--sft.epochs", "3"])
    assert (cfg.rsft.rounds, cfg.rsft.accept.k, cfg.sft.epochs) == (0, 2, 3)
    assert cfg.rsft.generate == default.rsft.generate and cfg.sft.lora_rank == default.sft.lora_rank
    cfg = _parse(MainConfig, ["--rsft", str(recipes / "rsft_default.yaml"), "--rsft.rounds", "1"])
    assert cfg.rsft == load_config(RSFTConfig, recipes / "rsft_default.yaml", rounds=1)
    assert cfg.rsft.generate.readings != default.rsft.generate.readings
    with pytest.raises(ConfigError, match="nope.yaml is not a file"):
        _parse(MainConfig, ["--rsft", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="rounds"):
        _parse(MainConfig, ["--rsft.rounds", "-1"])


@pytest.mark.parametrize("argv, flag", [
    (["evaluate", "--model", "m", "--manifest", "x.jsonl", "--limit", "0"], "--limit"),
    (["evaluate", "--model", "m", "--manifest", "x.jsonl", "--json", "maybe"], "json"),
    (["evaluate", "--manifest", "x.jsonl"], "--model"),
    (["transcribe-and-classify", "a.wav", "--batch-size", "-1"], "--batch-size"),
    (["transcribe-and-classify"], "no audio given"),
    (["export", "--out", "o", "--quantize", "int4"], "--quantize"),
    (["demo", "--port", "70000"], "--port"),
    (["convert", "--model", "large"], "--model"),
    (["bench", "--sampler", "--clips", "0"], "--clips"),
    (["bench", "--serving", "--requests", "0"], "--requests"),
])
def test_bad_option_values_are_exit_code_2_naming_the_flag(argv, flag, capsys):
    assert main(argv) == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("argv, flag", [
    (["evaluate"], "--limit"), (["evaluate"], "--nlu"), (["transcribe-and-classify"], "--int8"),
    (["transcribe-and-classify"], "PATHS"), (["export"], "--verify"), (["export"], "--quantize"),
    (["demo"], "--max-connections"), (["convert"], "--force"), (["bench", "--sampler"], "--reference"),
    (["bench", "--serving"], "--max-seconds"), (["bench"], "--quick"),
])
def test_command_help_lists_its_config_fields(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert flag in capsys.readouterr().out


def test_diagnostics_cli_names_a_bad_value(capsys):
    from assistant.rsft.diagnostics import main as diagnostics

    assert diagnostics(["R", "P", "--compare", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
