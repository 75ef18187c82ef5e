"""assistant.audio: real files in every shape a corpus throws at us, bad ones made on the spot."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from assistant.audio import (SAMPLE_RATE, AudioError, duration_seconds, load_audio, load_many, to_mono_16k,
                             write_audio)

FIXTURES = Path(__file__).parent / "fixtures"
FSC_WAVS = sorted((FIXTURES / "fsc" / "wavs").rglob("*.wav"))
SLURP_FLACS = sorted((FIXTURES / "slurp" / "slurp_real").glob("*.flac"))


def tone(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(wave: torch.Tensor, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(wave.numel(), 1 / sr)[spectrum.argmax()])


def assert_model_ready(wave: torch.Tensor) -> None:
    assert isinstance(wave, torch.Tensor)
    assert wave.dtype == torch.float32 and wave.ndim == 1 and wave.is_contiguous()
    assert torch.isfinite(wave).all() and float(wave.abs().max()) <= 1.0


def expect_error(path: Path, *words: str, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    msg = str(info.value)
    assert str(path) in msg and "Fix:" in msg, msg  # names the file and says what to do
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert info.value.path == str(path)
    return info.value


# ------------------------------------------------------------------------------------- good files

@pytest.mark.parametrize("path", FSC_WAVS + SLURP_FLACS, ids=lambda p: p.name)
def test_real_speech_fixtures_load(path):
    wave = load_audio(path)
    assert_model_ready(wave)
    assert abs(wave.numel() / SAMPLE_RATE - sf.info(path).duration) < 1e-3
    assert 0.8 < wave.numel() / SAMPLE_RATE < 3.0
    assert float(wave.square().mean().sqrt()) > 0.01  # speech, not silence


def test_fixture_sets_are_present():
    assert len(FSC_WAVS) == 4 and len(SLURP_FLACS) == 4


def test_int16_pcm_wav_is_scaled_to_unit_range(tmp_path):
    pcm = (tone(300, 0.5, SAMPLE_RATE, amp=0.25) * 32767).astype(np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, pcm, SAMPLE_RATE, subtype="PCM_16")
    wave = load_audio(path)
    assert_model_ready(wave)
    np.testing.assert_allclose(wave.numpy(), pcm / 32768.0, atol=1e-6)


def test_8khz_is_resampled_to_16khz(tmp_path):
    path = tmp_path / "phone.wav"
    sf.write(path, tone(440, 1.0, 8000), 8000, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.numel() == SAMPLE_RATE
    assert abs(dominant_hz(wave) - 440) <= 2


def test_44k1_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    sr = 44100
    left, right = tone(440, 1.0, sr, amp=0.6), tone(1000, 1.0, sr, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), sr, subtype="PCM_16")
    wave = load_audio(path)
    assert_model_ready(wave)
    assert wave.numel() == SAMPLE_RATE
    assert abs(dominant_hz(wave) - 440) <= 2
    # mono is the channel mean: the 440 Hz part has amplitude 0.3, the 1 kHz part 0.1
    spectrum = np.abs(np.fft.rfft(wave.numpy())) * 2 / wave.numel()
    assert spectrum[440] == pytest.approx(0.3, abs=0.01)
    assert spectrum[1000] == pytest.approx(0.1, abs=0.01)


def test_48k_24bit_flac_and_ogg_vorbis(tmp_path):
    flac = tmp_path / "hi.flac"
    sf.write(flac, tone(500, 0.75, 48000), 48000, subtype="PCM_24")
    ogg = tmp_path / "speech.ogg"
    sf.write(ogg, tone(500, 0.75, 22050), 22050, format="OGG", subtype="VORBIS")
    for path in (flac, ogg):
        wave = load_audio(path)
        assert_model_ready(wave)
        assert abs(wave.numel() - 12000) <= 1
        assert abs(dominant_hz(wave) - 500) <= 2


def test_clipping_loud_audio_is_peak_normalised(tmp_path):
    loud = tone(200, 0.5, SAMPLE_RATE, amp=3.0)
    path = tmp_path / "loud.wav"
    sf.write(path, loud, SAMPLE_RATE, subtype="FLOAT")
    wave = load_audio(path)
    assert float(wave.abs().max()) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(wave.numpy(), loud / np.abs(loud).max(), atol=1e-6)  # shape kept


def test_quiet_audio_keeps_its_level(tmp_path):
    quiet = tone(200, 0.5, SAMPLE_RATE, amp=0.01)
    path = tmp_path / "quiet.wav"
    sf.write(path, quiet, SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path).numpy(), quiet, atol=1e-7)


def test_min_rms_is_adjustable(tmp_path):
    path = tmp_path / "faint.wav"
    sf.write(path, tone(200, 0.5, SAMPLE_RATE, amp=1e-4), SAMPLE_RATE, subtype="FLOAT")
    assert load_audio(path).numel() == SAMPLE_RATE // 2  # rms 7e-5 passes the default 1e-5
    expect_error(path, "silent", min_rms=1e-3)


def test_duration_seconds_reads_the_header(tmp_path):
    path = tmp_path / "d.flac"
    sf.write(path, tone(300, 1.25, 22050), 22050)
    assert duration_seconds(path) == pytest.approx(1.25, abs=1e-4)


# -------------------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")


def test_folder_instead_of_file(tmp_path):
    expect_error(tmp_path, "not a regular file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    expect_error(path, "empty")


def test_header_only_wav_has_zero_samples(tmp_path):
    path = tmp_path / "header_only.wav"
    sf.write(path, np.zeros(0, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    expect_error(path, "no audio samples")


def _good_bytes(tmp_path: Path, suffix: str) -> bytes:
    path = tmp_path / f"good{suffix}"
    wave = tone(300, 1.0, SAMPLE_RATE) + np.random.default_rng(0).normal(0, 0.01, SAMPLE_RATE).astype(np.float32)
    write_audio(path, wave)
    return path.read_bytes()


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
@pytest.mark.parametrize("keep", [12, 30])
def test_truncated_header(tmp_path, suffix, keep):
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(_good_bytes(tmp_path, suffix)[:keep])
    expect_error(path, "truncated or corrupt")


def test_truncated_wav_data(tmp_path):
    data = _good_bytes(tmp_path, ".wav")
    path = tmp_path / "half.wav"
    path.write_bytes(data[: len(data) // 2])
    err = expect_error(path, "truncated", "header declares 32000 bytes")
    assert "re-download" in err.fix


def test_truncated_flac_stream(tmp_path):
    data = _good_bytes(tmp_path, ".flac")
    path = tmp_path / "half.flac"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "FLAC file is truncated or corrupt")


def test_streamed_wav_with_placeholder_size_is_accepted(tmp_path):
    """Recorders writing to a pipe leave 0xFFFFFFFF as the data size; the audio itself is complete."""
    data = bytearray(_good_bytes(tmp_path, ".wav"))
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"
    path = tmp_path / "streamed.wav"
    path.write_bytes(bytes(data))
    assert load_audio(path).numel() == SAMPLE_RATE


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.wav"
    # (seed 1 would start with ff e4, a valid MP3 frame sync, and be reported as a corrupt MP3)
    path.write_bytes(np.random.default_rng(2).integers(1, 256, 4096, dtype=np.uint8).tobytes())
    expect_error(path, "unrecognised audio format")


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("turn on the lights in the kitchen\n")
    expect_error(path, "text file, not audio")


def test_mp4_container_says_how_to_convert(tmp_path):
    path = tmp_path / "voice_memo.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(64))
    err = expect_error(path, "MP4", "ffmpeg -i voice_memo.m4a")
    assert "unreadable format" in err.problem


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples(tmp_path, bad):
    wave = tone(300, 0.5, SAMPLE_RATE)
    wave[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SAMPLE_RATE, subtype="FLOAT")
    expect_error(path, "1 NaN/Inf sample")


def test_all_silence(tmp_path):
    path = tmp_path / "silence.flac"
    sf.write(path, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    expect_error(path, "silent")


def test_too_long(tmp_path):
    path = tmp_path / "lecture.wav"
    sf.write(path, tone(300, 31.0, 8000, amp=0.1), 8000, subtype="PCM_16")
    expect_error(path, "too long", "31.0 s")
    assert load_audio(path, max_seconds=None).numel() == 31 * SAMPLE_RATE
    expect_error(path, "max_seconds=5", max_seconds=5)


def test_audio_error_is_a_value_error_and_pickles(tmp_path):
    err = expect_error(tmp_path / "gone.flac", "not found")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.path == err.path and back.fix == err.fix
    assert AudioError("plain message").path is None  # DataLoader re-raises with one argument


# --------------------------------------------------------------------------------------- batches

def test_load_many_continues_past_bad_files(tmp_path):
    empty = tmp_path / "empty.flac"
    empty.touch()
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(800, dtype=np.float32), SAMPLE_RATE)
    paths = [FSC_WAVS[0], empty, tmp_path / "missing.wav", silent, SLURP_FLACS[0]]
    results = list(load_many(paths))
    assert [p for p, _ in results] == paths
    kinds = [type(r).__name__ for _, r in results]
    assert kinds == ["Tensor", "AudioError", "AudioError", "AudioError", "Tensor"]
    assert "empty" in str(results[1][1]) and "not found" in str(results[2][1]) and "silent" in str(results[3][1])


def test_load_many_passes_limits_through(tmp_path):
    path = tmp_path / "two_seconds.wav"
    sf.write(path, tone(300, 2.0, SAMPLE_RATE), SAMPLE_RATE)
    [(_, result)] = load_many([path], max_seconds=1.0)
    assert isinstance(result, AudioError) and "too long" in str(result)


# ------------------------------------------------------------------------------ in-memory + write

def test_to_mono_16k_accepts_both_layouts_and_integer_pcm():
    left, right = tone(440, 0.5, 22050, amp=0.4), tone(440, 0.5, 22050, amp=0.2)
    frames_first = np.stack([left, right], axis=1)            # soundfile layout
    channels_first = torch.from_numpy(frames_first.T.copy())  # torchaudio layout
    a, b = to_mono_16k(frames_first, 22050), to_mono_16k(channels_first, 22050)
    assert a.shape == b.shape == (8000,)
    torch.testing.assert_close(a, b)
    assert float(a.abs().max()) == pytest.approx(0.3, abs=0.01)
    pcm = (tone(440, 0.5, SAMPLE_RATE, amp=0.5) * 32767).astype(np.int16)
    assert float(to_mono_16k(pcm, SAMPLE_RATE).abs().max()) == pytest.approx(0.5, abs=1e-3)


def test_to_mono_16k_rejects_bad_sample_rates():
    for sr in (0, -16000, 16000.5):
        with pytest.raises(ValueError, match="sample rate"):
            to_mono_16k(np.zeros(100, dtype=np.float32), sr)


@pytest.mark.parametrize("suffix,fmt", [(".flac", "FLAC"), (".wav", "WAV")])
def test_write_audio_round_trips(tmp_path, suffix, fmt):
    wave = torch.from_numpy(tone(350, 0.5, SAMPLE_RATE, amp=0.7))
    path = write_audio(tmp_path / "sub" / f"out{suffix}", wave)
    assert path.is_file() and sf.info(path).format == fmt and sf.info(path).subtype == "PCM_16"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    torch.testing.assert_close(load_audio(path), wave, atol=1 / 32768, rtol=0)


def test_write_audio_clips_and_keeps_sample_rate(tmp_path):
    path = write_audio(tmp_path / "loud.wav", tone(300, 0.5, 8000, amp=2.0), sr=8000)
    data, sr = sf.read(path)
    assert sr == 8000 and data.max() <= 1.0 and data.max() > 0.99


def test_write_audio_refuses_bad_input(tmp_path):
    with pytest.raises(AudioError, match=r"\.mp3"):
        write_audio(tmp_path / "x.mp3", tone(300, 0.1, SAMPLE_RATE))
    nan = tone(300, 0.1, SAMPLE_RATE)
    nan[3] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        write_audio(tmp_path / "x.flac", nan)
    with pytest.raises(AudioError, match="empty"):
        write_audio(tmp_path / "x.flac", np.zeros(0, dtype=np.float32))
    assert list(tmp_path.iterdir()) == []  # nothing half-written
