"""CTranslate2 -> transformers conversion of the packaged Whisper tiny.en (real weights, real speech)."""

from __future__ import annotations

import shutil
import struct
import subprocess

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from assistant.model.convert import (ConversionError, cli, count_ct2_weight_tensors, ct2_to_hf_state_dict,
                                     default_pretrained_dir, packaged_ct2_dir, read_ct2,
                                     whisper_config_from_tensors)


@pytest.fixture(scope="module")
def ct2() -> dict[str, np.ndarray]:
    return read_ct2(packaged_ct2_dir() / "model.bin")


@pytest.fixture(scope="module")
def converted_dir():
    return default_pretrained_dir()  # converted once into .cache/whisper-tiny.en


def test_reads_all_139_tensors_and_aliases(ct2):
    assert count_ct2_weight_tensors(ct2) == 139
    assert ct2["decoder/embeddings/weight"].shape == (51864, 384)
    assert ct2["decoder/embeddings/weight"].dtype == np.float16
    assert ct2["decoder/projection/weight"] is ct2["decoder/embeddings/weight"]  # alias after the variables
    assert int(ct2["encoder/num_heads"]) == 6


def test_state_dict_matches_whisper_exactly(ct2):
    from transformers import WhisperForConditionalGeneration

    state = ct2_to_hf_state_dict(ct2)
    config, multilingual = whisper_config_from_tensors(ct2, {})
    assert not multilingual
    assert (config.d_model, config.encoder_layers, config.decoder_layers) == (384, 4, 4)
    assert (config.encoder_attention_heads, config.vocab_size, config.num_mel_bins) == (6, 51864, 80)
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    assert set(state) == set(expected) - {"proj_out.weight"}  # tied to embed_tokens
    for name, value in state.items():
        assert tuple(value.shape) == tuple(expected[name].shape), name


def test_fused_projections_are_split_in_order(ct2):
    state = ct2_to_hf_state_dict(ct2)
    qkv = ct2["encoder/layer_1/self_attention/linear_0/weight"]
    assert np.array_equal(state["model.encoder.layers.1.self_attn.q_proj.weight"], qkv[:384])
    assert np.array_equal(state["model.encoder.layers.1.self_attn.k_proj.weight"], qkv[384:768])
    assert np.array_equal(state["model.encoder.layers.1.self_attn.v_proj.weight"], qkv[768:])
    kv_bias = ct2["decoder/layer_2/attention/linear_1/bias"]
    assert not np.any(kv_bias[:384])  # the key bias slot CTranslate2 fills with zeros
    assert np.array_equal(state["model.decoder.layers.2.encoder_attn.v_proj.bias"], kv_bias[384:])
    assert "model.decoder.layers.2.encoder_attn.k_proj.bias" not in state


def test_unmapped_or_missing_tensor_is_an_error(ct2):
    extra = dict(ct2, **{"encoder/mystery/weight": np.zeros((2, 2), np.float16)})
    with pytest.raises(ConversionError, match="not mapped"):
        ct2_to_hf_state_dict(extra)
    missing = {k: v for k, v in ct2.items() if k != "decoder/layer_0/ffn/linear_1/bias"}
    with pytest.raises(ConversionError, match="missing"):
        ct2_to_hf_state_dict(missing)


def test_corrupt_files_give_clear_errors(tmp_path):
    data = (packaged_ct2_dir() / "model.bin").read_bytes()
    truncated = tmp_path / "model.bin"
    truncated.write_bytes(data[:5000])
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2(truncated)
    name = b"NotWhisper\x00"
    other = tmp_path / "other.bin"
    other.write_bytes(struct.pack("<IH", 6, len(name)) + name + struct.pack("<II", 1, 0))
    with pytest.raises(ConversionError, match="not a Whisper model"):
        read_ct2(other)
    with pytest.raises(ConversionError, match="not found"):
        read_ct2(tmp_path / "absent.bin")


def test_converted_folder_loads_offline_with_tokenizer_and_generation_config(converted_dir):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(converted_dir)
    processor = WhisperProcessor.from_pretrained(converted_dir)
    tok = processor.tokenizer
    assert len(tok) == model.config.vocab_size == 51864
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|translate|>",
                                      "<|notimestamps|>", "<|0.00|>"]) == [50256, 50257, 50357, 50362, 50363]
    gen = model.generation_config
    assert gen.decoder_start_token_id == 50257 and gen.no_timestamps_token_id == 50362
    assert gen.begin_suppress_tokens == [220, 50256] and 50357 in gen.suppress_tokens
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32
    assert not list(converted_dir.glob("*.bin"))  # safetensors only


@pytest.mark.slow
def test_converted_model_transcribes_real_speech(converted_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng binary missing: `apt-get install espeak-ng`")
    text = "turn on the lights in the kitchen"
    wav = tmp_path / "kitchen.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
    wave, sr = sf.read(str(wav), dtype="float32")
    wave = AF.resample(torch.from_numpy(wave), sr, 16000).numpy()

    model = WhisperForConditionalGeneration.from_pretrained(converted_dir).eval()
    processor = WhisperProcessor.from_pretrained(converted_dir)
    features = processor(wave, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, max_new_tokens=40)
    hypothesis = processor.batch_decode(ids, skip_special_tokens=True)[0]
    normalise = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.Strip(),
                               jiwer.RemoveMultipleSpaces()])
    assert jiwer.wer(text, normalise(hypothesis)) <= 0.2, hypothesis


def test_cli_reports_existing_conversion(converted_dir, capsys):
    assert cli(["--out-dir", str(converted_dir)]) == 0
    assert "already converted" in capsys.readouterr().out
    assert cli(["--ct2-dir", "/nonexistent", "--out-dir", str(converted_dir.parent / "x"), "--force"]) == 1
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_converts_into_a_new_folder_atomically(tmp_path, capsys):
    out = tmp_path / "whisper"
    assert cli(["--out-dir", str(out)]) == 0
    assert "converted Whisper" in capsys.readouterr().out
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["whisper"]  # no temporary folder left behind
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        q = f.get_tensor("model.encoder.layers.0.self_attn.q_proj.weight")
    ct2 = read_ct2(packaged_ct2_dir() / "model.bin")
    expected = ct2["encoder/layer_0/self_attention/linear_0/weight"][:384].astype(np.float32)
    assert q.dtype == torch.float32 and np.array_equal(q.numpy(), expected)
