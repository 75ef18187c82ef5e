"""ONNX export: exported graphs == eager model (encoder states, decoder logits, greedy strings) on fixture audio.

Fast tests use a tiny random model; one slow test exports the real converted Whisper tiny.en (~30 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from assistant.audio import load_audio
from assistant.export import ExportError, OnnxSLU, cli, compare_outputs, export_onnx
from assistant.inference import predict_waves

FIXTURES = Path(__file__).parent / "fixtures"
CLIPS = sorted((FIXTURES / "fsc" / "wavs").rglob("*.wav"))[:2] + sorted((FIXTURES / "slurp").rglob("*.flac"))[:2]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    assert len(CLIPS) == 4, "fixture clips missing: run tests/fixtures/make_fixtures.py"
    return [load_audio(p) for p in CLIPS]


@pytest.fixture(scope="module")
def tiny():
    from assistant.data.manifest import read_manifest
    from assistant.model.slu import SLUModel
    from assistant.train import frame_target

    utts = read_manifest(FIXTURES / "fsc" / "data" / "train_data.csv") + read_manifest(FIXTURES / "slurp" / "train.jsonl")
    return SLUModel.tiny_random([frame_target(u) for u in utts], seed=0)


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory) -> Path:
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx"), quantize="int8", progress=False)


def test_export_writes_a_self_contained_folder(exported, tiny):
    names = {p.name for p in exported.iterdir()}
    assert {"encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx", "export.json",
            "tokenizer.json"} <= names
    meta = json.loads((exported / "export.json").read_text())
    assert meta["precisions"] == ["fp32", "int8"]
    assert meta["output_token_ids"] == tiny.vocab.ids.tolist()
    assert meta["opset"] >= 17 and meta["n_frames"] == tiny.n_frames
    # The restricted vocabulary leaves the 51,864-row embedding table out of the decoder graph.
    full_table_bytes = tiny.config.vocab_size * tiny.config.d_model * 4
    assert (exported / "decoder.onnx").stat().st_size < full_table_bytes


def test_exported_matches_eager_on_fixture_audio(tiny, exported, waves):
    runtime = OnnxSLU(exported)
    mels = tiny.features(waves)
    report = compare_outputs(tiny, runtime, mels, max_new_tokens=32)
    enc = tiny.encode(mels).detach().numpy()
    assert np.allclose(runtime.encode(mels).states, enc, atol=1e-4, rtol=1e-4)
    assert report["encoder_max_abs_diff"] < 1e-4
    assert report["logits_max_abs_diff"] < 1e-4
    assert report["onnx_greedy"] == report["eager_greedy"]
    assert all(report["eager_greedy"])


def test_cached_steps_equal_the_full_sequence_decoder(tiny, exported, waves):
    runtime = OnnxSLU(exported)
    encoded = runtime.encode(tiny.features(waves[:1]))
    text = "turn on the lights | activate_lights_kitchen | location=kitchen ; object=lights"
    ids = np.asarray([tiny.slu_prefix + tiny.tokenize([text])[0]])
    full = runtime.decoder_logits(ids, encoded)
    index = runtime._to_input_index(ids)
    keys = values = runtime._empty_cache(1)
    stepped = []
    for t in range(ids.shape[1]):
        logits, keys, values = runtime._step(index[:, t:t + 1], keys, values, encoded.cross_keys, encoded.cross_values)
        stepped.append(logits[:, -1])
    assert keys.shape[3] == ids.shape[1]
    np.testing.assert_allclose(np.stack(stepped, axis=1), full, atol=1e-4, rtol=1e-4)


def test_predict_waves_runs_on_the_onnx_runtime(tiny, exported, waves):
    eager = predict_waves(tiny, waves, max_new_tokens=24)
    onnx = predict_waves(OnnxSLU(exported), waves, max_new_tokens=24)
    assert [p.raw for p in onnx] == [p.raw for p in eager]
    assert [round(p.confidence, 3) for p in onnx] == [round(p.confidence, 3) for p in eager]


def test_runtime_is_a_speech_model_with_the_eager_candidates(tiny, exported, waves):
    """OnnxSLU implements SpeechModel: the same greedy candidates (every field) and sequence scores as the
    eager model, token-id lists included; no stock reading (the adapters are merged)."""
    from assistant.model.interface import SpeechModel

    runtime = OnnxSLU(exported)
    assert isinstance(runtime, SpeechModel) and not runtime.has_stock_path
    assert runtime.vocab.ids.tolist() == tiny.vocab.ids.tolist() and runtime.vocab.eot_index == runtime.eot_index
    mels = tiny.features(waves)
    enc, encoded = tiny.encode(mels), runtime.encode(mels)
    eager = tiny.generate(enc, max_new_tokens=24)
    onnx = runtime.generate(encoded, max_new_tokens=24)
    fields = lambda cands: [[(c.text, c.token_ids, c.greedy, c.finished, c.count, c.index) for c in u] for u in cands]
    assert fields(onnx) == fields(eager)
    assert np.allclose([u[0].logprob for u in onnx], [u[0].logprob for u in eager], atol=1e-3)
    for texts in ([u[0].token_ids for u in eager], [u[0].text for u in eager]):
        assert torch.allclose(runtime.sequence_logprobs(encoded, texts, expand=[0, 1, 2, 3]).float(),
                              tiny.sequence_logprobs(enc, texts, expand=[0, 1, 2, 3]).detach(), atol=1e-3)
    with pytest.raises(ExportError, match="has_stock_path"):
        runtime.stock_greedy(runtime.stock_encode(waves))


def test_int8_graphs_run_and_stay_close(tiny, exported, waves):
    runtime = OnnxSLU(exported, precision="int8")
    mels = tiny.features(waves)
    encoded = runtime.encode(mels)
    enc = tiny.encode(mels).detach().numpy()
    assert encoded.states.shape == enc.shape and np.isfinite(encoded.states).all()
    # An approximation, not an identity: close on average, never wildly off.
    assert np.abs(encoded.states - enc).mean() < 0.1 * np.abs(enc).mean()
    out = runtime.generate(encoded, max_new_tokens=8)
    assert len(out) == len(waves) and all(len(c) == 1 for c in out)


def test_runtime_samples_the_model_distribution(tiny, exported, waves):
    """The text pass's n-best samples through the runtime: seeded, greedy first (the eager greedy string),
    votes counted, each candidate's log-prob the model's own, first tokens drawn with softmax's frequencies."""
    runtime = OnnxSLU(exported)
    encoded = runtime.encode(tiny.features(waves[:2]))
    first = runtime.generate(encoded, num_samples=8, max_new_tokens=12, seed=3)
    assert first == runtime.generate(encoded, num_samples=8, max_new_tokens=12, seed=3)
    one_by_one = runtime.generate(encoded, num_samples=8, max_new_tokens=12, seed=3, max_rows=9)  # a group per clip
    assert [c[0] for c in one_by_one] == [c[0] for c in first] and [sum(x.count for x in c) for c in one_by_one] == [8, 8]
    eager = tiny.generate(tiny.encode(tiny.features(waves[:2])), max_new_tokens=12)
    for cands, greedy in zip(first, eager):
        assert cands[0].greedy and cands[0].text == greedy[0].text and sum(c.count for c in cands) == 8
        done = [c for c in cands if c.finished]
        if done:
            scores = runtime.sequence_logprobs(encoded, [c.token_ids for c in done], expand=[first.index(cands)] * len(done))
            np.testing.assert_allclose(scores.numpy(), [c.logprob for c in done], atol=1e-3)
    # the random model's next-token distribution is nearly flat (705 tokens, none above 0.3 %): at T = 0.03
    # its top tokens have ~0.89 / 0.05 / 0.02 / 0.01, so a sampler that ignores T or takes the argmax fails
    n, temperature = 4000, 0.03
    draws = runtime.generate(encoded.rows(slice(0, 1)), num_samples=n, greedy=False, max_new_tokens=1, seed=0,
                             temperature=temperature)[0]
    prefix = np.asarray([runtime.slu_prefix])
    logits = runtime.decoder_logits(prefix, encoded.rows(slice(0, 1)))[0, -1].astype(np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    freq = {(c.token_ids or [runtime.eot_id])[0]: c.count / n for c in draws}
    assert sum(c.count for c in draws) == n
    assert probs.max() > 0.5
    for index in np.argsort(probs)[::-1][:5]:
        p = probs[index]
        assert abs(freq.get(int(runtime.output_ids[index]), 0.0) - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3


def test_runtime_refuses_truncated_sampling_and_bad_inputs(exported, tiny):
    runtime = OnnxSLU(exported)
    encoded = runtime.encode(torch.zeros(1, 80, tiny.n_frames))
    with pytest.raises(ExportError, match="top-p"):
        runtime.generate(encoded, num_samples=4, top_p=0.9)
    with pytest.raises(ValueError, match="context"):
        runtime.encode(torch.zeros(1, 80, 100))
    with pytest.raises(ValueError, match="1-D mono"):
        runtime.features([torch.zeros(2, 1600)])


def test_missing_or_partial_export_folder_is_one_clear_error(tmp_path, tiny):
    with pytest.raises(ExportError, match="export.json.*assistant export"):
        OnnxSLU(tmp_path)
    folder = export_onnx(tiny, tmp_path / "fp32", verify=False, progress=False)
    with pytest.raises(ExportError, match="--quantize int8"):
        OnnxSLU(folder, precision="int8")


def test_cli_exports_a_saved_model(tiny, tmp_path, capsys):
    model_dir = tiny.save_pretrained(tmp_path / "model")
    assert cli(["--model", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "verified fp32" in out and (tmp_path / "out" / "decoder.onnx").is_file()


def test_cli_missing_model_folder(tmp_path, capsys):
    assert cli(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_real_whisper_tiny_export_matches_eager(tmp_path, waves):
    from assistant.nlu import load_pipeline

    model = load_pipeline(None)          # as `assistant export` loads it: the domain grammar's vocabulary
    folder = export_onnx(model, tmp_path, verify=False, progress=False)
    report = compare_outputs(model, OnnxSLU(folder), model.features(waves), max_new_tokens=32)
    # Real weights: states reach ~10 and logits ~30 in magnitude; fp32 kernels differ in summation order.
    assert report["encoder_max_abs_diff"] < 2e-3
    assert report["logits_max_abs_diff"] < 2e-3
    assert report["onnx_greedy"] == report["eager_greedy"]
    assert any("juice" in s for s in report["eager_greedy"])   # real speech, real weights: real words


def test_transcribe_and_classify_runs_the_onnx_export(tiny, exported, tmp_path, capsys):
    from assistant.cli import main
    from assistant.infer import cli as infer_cli

    model_dir = tiny.save_pretrained(tmp_path / "model")
    clips = [str(p) for p in CLIPS[:2]]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    assert infer_cli(clips + ["--model", str(model_dir), "--json"]) == 0
    eager = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert infer_cli(clips + [str(bad), "--onnx", str(exported), "--json"]) == 1   # the bad file fails alone
    onnx = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["raw"] for p in onnx[:2]] == [p["raw"] for p in eager]
    assert onnx[2]["error"] and "bad.wav" in onnx[2]["error"]
    assert infer_cli(clips + ["--onnx", str(exported), "--int8", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert infer_cli(clips + ["--onnx", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["transcribe-and-classify", *clips, "--int8"]) == 2        # --int8 without --onnx: config error
    assert "--int8 needs --onnx" in capsys.readouterr().err


def test_text_second_pass_travels_with_the_export(tiny, waves, tmp_path):
    from assistant.nlu import NluPass, TextTeacher, load_pipeline
    from assistant.schema import load_schema
    from assistant.train import frame_target
    from assistant.data.manifest import read_manifest

    schema = load_schema()
    torch.manual_seed(0)
    teacher = TextTeacher.fresh(list(schema.intents), sorted(schema.slots), implied_slots={}, intent_slots={})
    tiny.nlu = NluPass(teacher, weight=1.0)
    try:
        folder = export_onnx(tiny, tmp_path / "onnx", progress=False)
        runtime = load_pipeline(folder, runtime="onnx")                     # the pipeline: with its text pass
        assert isinstance(runtime, OnnxSLU) and runtime.nlu is not None and runtime.nlu.weight == 1.0
        assert OnnxSLU(folder).nlu is None                                  # the runtime alone: without
        with pytest.raises(ValueError, match="runtime 'tpu': choose one of"):
            load_pipeline(folder, runtime="tpu")
        texts = [frame_target(u) for u in read_manifest(FIXTURES / "fsc" / "data" / "train_data.csv")[:2]]
        with torch.no_grad():
            eager = tiny.sequence_logprobs(tiny.encode(tiny.features(waves)), texts, expand=[0, 3])
        onnx = runtime.sequence_logprobs(runtime.encode(runtime.features(waves)), texts, expand=[0, 3])
        np.testing.assert_allclose(onnx.numpy(), eager.numpy(), rtol=1e-3, atol=1e-3)
        assert runtime.sequence_logprobs(runtime.encode(runtime.features(waves[:1])),
                                         ["zebra | quantum |"]).item() == float("-inf")   # not spellable
        a = predict_waves(tiny, waves, schema, max_new_tokens=24)
        b = predict_waves(runtime, waves, schema, max_new_tokens=24)
        assert [(p.intent, p.slots, p.reader) for p in b] == [(p.intent, p.slots, p.reader) for p in a]
    finally:
        tiny.nlu = None


def test_lora_model_exports_with_its_adapters_folded_in(tiny, waves, tmp_path):
    import copy

    from assistant.model.lora import LoraConfig

    model = copy.deepcopy(tiny)
    model.add_adapters(LoraConfig(rank=4, encoder_from=0))
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    folder = export_onnx(model, tmp_path / "onnx", progress=False)
    mels = model.features(waves)
    runtime = OnnxSLU(folder)
    enc = runtime.encode(mels).states
    np.testing.assert_allclose(enc, model.encode(mels).detach().numpy(), atol=1e-4, rtol=1e-4)
    with model.stock():       # the export is the adapted model, not the stock one
        assert not np.allclose(enc, model.encode(mels).detach().numpy(), atol=1e-3)
    eager = predict_waves(model, waves, max_new_tokens=24)
    assert [p.raw for p in predict_waves(runtime, waves, max_new_tokens=24)] == [p.raw for p in eager]
    assert model.adapters is not None                    # exporting did not merge the caller's model
