"""Per-utterance augmentation of clean TTS clips -> 16 kHz training audio.

    rng = np.random.default_rng(seed)               # one generator per utterance: determinism
    wave16k, params = augment(wave, sr, rng, AugmentConfig(), babble_bank=clips)

Steps, each drawn from ``rng`` (``params`` records what was drawn, JSON-ready):

1. trim the engine's leading/trailing silence;
2. pitch shift + tempo change (on ``pitch_tempo_share`` of clips): resampling shifts the pitch,
   WSOLA (waveform-similarity overlap-add) sets the tempo; both land at 16 kHz in one pass;
3. a simulated room (on ``room_share``): pyroomacoustics shoebox with random size, RT60 and
   source / microphone positions;
4. random silence before and after (people do not start talking at sample 0);
5. additive noise (on ``noise_share``) at a random SNR: white, pink, brown or babble made from
   other TTS clips; the rest get a faint noise floor, as any microphone has;
6. a random level (peak dBFS).

Clips longer than ``max_seconds`` are sped up (up to ``max_speedup``) or raise ``ClipTooLong``.
Only numpy / scipy / pyroomacoustics: no torch, so worker processes start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd
from typing import Any

import numpy as np
from scipy.signal import fftconvolve, resample_poly

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble")
_NOISE_FLOOR_SNR_DB = (45.0, 65.0)
_MAX_REVERB_TAIL_S = 0.5
_MIN_PAD_S = 0.03


class ClipTooLong(ValueError):
    """The speech does not fit max_seconds even at the fastest allowed tempo."""


def check_range(name: str, value: Any) -> tuple[float, float]:
    if len(value) != 2 or float(value[0]) > float(value[1]):
        raise ValueError(f"{name} must be two numbers [low, high] with low <= high, got {list(value)}")
    return float(value[0]), float(value[1])


@dataclass
class AugmentConfig:
    pitch_range: list[float] = field(default_factory=lambda: [-2.0, 2.0],
                                     metadata={"help": "pitch shift in semitones [low, high]"})
    tempo_range: list[float] = field(default_factory=lambda: [0.85, 1.2],
                                     metadata={"help": "tempo factor [low, high] (>1 = faster)"})
    pitch_tempo_share: float = field(default=0.8, metadata={"help": "share of clips with pitch/tempo change"})
    room_share: float = field(default=0.35, metadata={"help": "share of clips played in a simulated room"})
    rt60_range: list[float] = field(default_factory=lambda: [0.15, 0.7],
                                    metadata={"help": "room reverberation time RT60 in seconds"})
    noise_share: float = field(default=0.6, metadata={"help": "share of clips with added noise"})
    noise_snr_range: list[float] = field(default_factory=lambda: [8.0, 30.0],
                                         metadata={"help": "signal-to-noise ratio in dB [low, high]"})
    noise_kinds: list[str] = field(default_factory=lambda: list(NOISE_KINDS),
                                   metadata={"help": f"noise types drawn from {list(NOISE_KINDS)}"})
    level_range: list[float] = field(default_factory=lambda: [-24.0, -3.0],
                                     metadata={"help": "output peak level in dBFS [low, high]"})
    pad_range: list[float] = field(default_factory=lambda: [0.05, 0.4],
                                   metadata={"help": "seconds of silence before and after the speech"})
    max_speedup: float = field(default=1.4, metadata={"help": "fastest tempo used to fit max_seconds"})

    def validate(self) -> None:
        for name in ("pitch_range", "tempo_range", "rt60_range", "noise_snr_range", "level_range", "pad_range"):
            check_range(name, getattr(self, name))
        for name in ("pitch_tempo_share", "room_share", "noise_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.tempo_range[0] <= 0 or self.max_speedup < 1.0:
            raise ValueError("tempo_range must be positive and max_speedup >= 1")
        if self.rt60_range[0] <= 0:
            raise ValueError("rt60_range must be positive seconds")
        bad = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if bad or not self.noise_kinds:
            raise ValueError(f"noise_kinds must be a non-empty subset of {list(NOISE_KINDS)}, got {self.noise_kinds}")
        if self.pad_range[0] < 0:
            raise ValueError("pad_range must be >= 0 seconds")


# ============================================================================ building blocks


def trim_silence(wave: np.ndarray, sr: int, top_db: float = 45.0, margin_s: float = 0.02) -> np.ndarray:
    """Cut leading/trailing parts quieter than top_db below the loudest 10 ms frame."""
    hop = max(1, int(0.01 * sr))
    n = len(wave) // hop
    if n < 2:
        return wave
    energy = (wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 10 ** (-top_db / 10))
    margin = int(margin_s * sr)
    start = max(0, loud[0] * hop - margin)
    end = min(len(wave), (loud[-1] + 1) * hop + margin)
    return wave[start:end]


def resample(wave: np.ndarray, sr_from: int, sr_to: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (exact ratio of the two integer rates)."""
    if sr_from == sr_to:
        return wave.astype(np.float32, copy=True)
    g = gcd(int(sr_from), int(sr_to))
    return resample_poly(wave, sr_to // g, sr_from // g).astype(np.float32)


def time_stretch(wave: np.ndarray, sr: int, speed: float) -> np.ndarray:
    """WSOLA: play `speed` times faster without changing the pitch (30 ms frames, 50 % overlap).

    Each output frame is the input segment near its nominal position that best continues the
    previous one (cross-correlation within +-10 ms), so pitch periods stay intact.
    """
    frame = int(0.03 * sr) // 2 * 2
    if abs(speed - 1.0) < 1e-3 or len(wave) < 2 * frame:
        return wave.astype(np.float32, copy=True)
    hop_out, tol = frame // 2, int(0.01 * sr)
    n_out = int(round(len(wave) / speed))
    n_frames = n_out // hop_out + 1
    padded = np.pad(wave.astype(np.float32), (tol, 2 * frame + 2 * tol + int(hop_out * speed) + 1))
    window = np.hanning(frame + 1)[:frame].astype(np.float32)     # periodic Hann: 50 % overlaps sum to 1
    out = np.zeros(n_frames * hop_out + frame, np.float32)
    norm = np.zeros_like(out)
    position = tol
    for k in range(n_frames):
        nominal = tol + int(round(k * hop_out * speed))
        if k > 0:
            natural = padded[position + hop_out: position + hop_out + frame]
            region = padded[nominal - tol: nominal + tol + frame]
            position = nominal - tol + int(np.argmax(np.correlate(region, natural, mode="valid")))
        else:
            position = nominal
        start = k * hop_out
        out[start: start + frame] += padded[position: position + frame] * window
        norm[start: start + frame] += window
    return (out[:n_out] / np.maximum(norm[:n_out], 1e-3)).astype(np.float32)


def pitch_tempo(wave: np.ndarray, sr: int, semitones: float, tempo: float) -> tuple[np.ndarray, float]:
    """Shift pitch by `semitones` and play `tempo` times faster; returns (16 kHz wave, semitones done).

    Reading the clip as if it had rate sr * 2^(s/12) and resampling that to 16 kHz raises the
    pitch and the speed together; WSOLA then fixes the speed. The fake rate is rounded to 100 Hz
    so the polyphase filter stays small (<= 0.1 semitone off; the value done is returned).
    """
    fake_rate = max(100, int(round(sr * 2.0 ** (semitones / 12.0) / 100.0)) * 100)
    shifted = resample(wave, fake_rate, SAMPLE_RATE)
    ratio = fake_rate / sr
    return time_stretch(shifted, SAMPLE_RATE, tempo / ratio), 12.0 * float(np.log2(ratio))


def colored_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Unit-RMS white (flat), pink (1/f power) or brown (1/f^2 power) noise."""
    white = rng.standard_normal(n)
    if kind == "white" or n < 4:
        shaped = white
    else:
        exponent = {"pink": 0.5, "brown": 1.0}[kind]          # amplitude ~ 1 / f^exponent
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n)
        freqs[0] = freqs[1]
        shaped = np.fft.irfft(spectrum / freqs ** exponent, n)
        shaped -= shaped.mean()
    return (shaped / (np.sqrt(np.mean(shaped ** 2)) + 1e-12)).astype(np.float32)


def babble_noise(rng: np.random.Generator, n: int, bank: list[np.ndarray]) -> np.ndarray:
    """Unit-RMS babble: 3-6 other talkers (clips from `bank`, looped, random offsets) at equal level."""
    talkers = int(rng.integers(3, 7))
    mix = np.zeros(n, np.float32)
    for _ in range(talkers):
        clip = bank[int(rng.integers(len(bank)))]
        clip = clip / (np.sqrt(np.mean(clip ** 2)) + 1e-12)
        reps = int(np.ceil((n + len(clip)) / len(clip)))
        start = int(rng.integers(len(clip)))
        mix += np.tile(clip, reps)[start: start + n]
    return (mix / (np.sqrt(np.mean(mix ** 2)) + 1e-12)).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, rt60_range: tuple[float, float]) -> tuple[np.ndarray, dict]:
    """A random shoebox room -> (16 kHz impulse response, its parameters)."""
    import pyroomacoustics as pra

    dims = [float(rng.uniform(3.0, 8.0)), float(rng.uniform(2.5, 6.5)), float(rng.uniform(2.4, 3.5))]
    rt60 = float(rng.uniform(*rt60_range))

    def spot(height_range: tuple[float, float]) -> list[float]:
        return [float(rng.uniform(0.5, dims[0] - 0.5)), float(rng.uniform(0.5, dims[1] - 0.5)),
                float(rng.uniform(*height_range))]

    source, mic = spot((1.1, 1.9)), spot((0.6, 1.6))
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:              # RT60 too short for this room: make it as dry as it can be
        absorption, max_order = 0.99, 3
    room = pra.ShoeBox(dims, fs=SAMPLE_RATE, materials=pra.Material(float(absorption)),
                       max_order=int(min(max_order, 40)), air_absorption=False)
    room.add_source(source)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float32)
    params = {"dims": _round(dims), "rt60": round(rt60, 3), "source": _round(source), "mic": _round(mic),
              "distance": round(float(np.linalg.norm(np.subtract(source, mic))), 2)}
    return rir / (np.abs(rir).max() + 1e-12), params


def _round(values: list[float], digits: int = 2) -> list[float]:
    return [round(float(v), digits) for v in values]


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


# ============================================================================ the pipeline


def _fit_tempo(speech_s: float, tempo: float, budget_s: float, max_speedup: float) -> tuple[float, bool]:
    """The tempo that fits speech_s seconds of speech into budget_s (sped up if it must)."""
    if speech_s / tempo <= budget_s:
        return tempo, False
    needed = speech_s / max(budget_s, 1e-6)
    if needed > max_speedup:
        raise ClipTooLong(f"{speech_s:.2f} s of speech does not fit {budget_s:.2f} s even at "
                          f"{max_speedup:.2f}x tempo")
    return needed * 1.01, True


CONDITIONS = ("clean", "noise", "room")


def condition_of(params: dict[str, Any]) -> str:
    """The acoustic condition of a clip from its augmentation record: ``room`` (simulated room, with
    or without added noise), ``noise`` (added noise, no room) or ``clean`` (only the faint noise floor)."""
    if params.get("room"):
        return "room"
    kind = (params.get("noise") or {}).get("kind", "floor")
    return "clean" if kind == "floor" else "noise"


def augment(wave: np.ndarray, sr: int, rng: np.random.Generator, cfg: AugmentConfig | None = None,
            babble_bank: list[np.ndarray] | None = None,
            max_seconds: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Clean TTS clip -> augmented float32 16 kHz clip and the parameters drawn (JSON-ready)."""
    cfg = cfg or AugmentConfig()
    wave = trim_silence(np.asarray(wave, dtype=np.float32), sr)
    speech_s = len(wave) / sr
    params: dict[str, Any] = {"speech_s": round(speech_s, 3)}

    # Draw everything first, then fit the plan into max_seconds.
    changes = rng.random() < cfg.pitch_tempo_share
    semitones = float(rng.uniform(*cfg.pitch_range)) if changes else 0.0
    tempo = float(rng.uniform(*cfg.tempo_range)) if changes else 1.0
    use_room = rng.random() < cfg.room_share
    rir, room = room_impulse_response(rng, tuple(cfg.rt60_range)) if use_room else (None, None)
    pads = [float(rng.uniform(*cfg.pad_range)) for _ in range(2)]
    tail_s = min(len(rir) / SAMPLE_RATE, _MAX_REVERB_TAIL_S) if rir is not None else 0.0

    sped_up = False
    if max_seconds is not None:
        budget = max_seconds - tail_s - sum(pads)
        if speech_s / tempo > budget:                       # first give up most of the silence
            pads = [min(p, _MIN_PAD_S) for p in pads]
            budget = max_seconds - tail_s - sum(pads)
        tempo, sped_up = _fit_tempo(speech_s, tempo, budget, cfg.max_speedup)

    if semitones or tempo != 1.0:
        speech, semitones = pitch_tempo(wave, sr, semitones, tempo)
    else:
        speech = resample(wave, sr, SAMPLE_RATE)
    params.update(pitch_semitones=round(semitones, 3), tempo=round(tempo, 3), sped_up=sped_up)

    if rir is not None:
        tail = int(tail_s * SAMPLE_RATE)
        wet = fftconvolve(speech, rir)[: len(speech) + tail].astype(np.float32)
        fade = min(tail, int(0.05 * SAMPLE_RATE))
        if fade:
            wet[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
        speech = wet
    params["room"] = room

    lead, trail = (int(p * SAMPLE_RATE) for p in pads)
    signal = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    params["pad_s"] = _round(pads, 3)

    speech_rms = _rms(speech) or 1e-6
    if rng.random() < cfg.noise_share:
        kind = str(cfg.noise_kinds[int(rng.integers(len(cfg.noise_kinds)))])
        snr = float(rng.uniform(*cfg.noise_snr_range))
        if kind == "babble" and not babble_bank:
            kind = "pink"                                    # no other talkers to hand
        noise = (babble_noise(rng, len(signal), babble_bank) if kind == "babble"   # type: ignore[arg-type]
                 else colored_noise(rng, len(signal), kind))
        params["noise"] = {"kind": kind, "snr_db": round(snr, 2)}
    else:
        snr = float(rng.uniform(*_NOISE_FLOOR_SNR_DB))
        noise = colored_noise(rng, len(signal), "white")
        params["noise"] = {"kind": "floor", "snr_db": round(snr, 2)}
    signal = signal + noise * np.float32(speech_rms * 10 ** (-snr / 20))

    level = float(rng.uniform(*cfg.level_range))
    signal *= np.float32(10 ** (level / 20) / (np.abs(signal).max() + 1e-12))
    params["level_dbfs"] = round(level, 2)
    if max_seconds is not None:
        signal = signal[: int(max_seconds * SAMPLE_RATE)]
    return np.clip(signal, -1.0, 1.0).astype(np.float32), params
