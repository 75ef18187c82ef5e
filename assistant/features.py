"""Whisper's log-mel front end, computed with torchaudio (differentiable, batched, no numpy round trip).

Matches ``transformers.WhisperFeatureExtractor`` numerically: 25 ms Hann window (n_fft 400), 10 ms hop,
centre/reflect padding, power spectrum, 80 Slaney mel filters on the Slaney scale (0-8 kHz), log10 with a
1e-10 floor, dynamic range capped at 8 (i.e. 80 dB) below the clip's maximum, then (x + 4) / 4.
The last STFT frame is dropped, as Whisper does, so ``n`` samples give ``n // 160`` frames.
"""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100


def frames_for_seconds(seconds: float) -> int:
    """Mel frames in a context of ``seconds`` (Whisper: 30 s -> 3000)."""
    return int(round(seconds * FRAMES_PER_SECOND))


class LogMel(nn.Module):
    """waveform(s) [..., samples] at 16 kHz -> Whisper log-mel [..., n_mels, samples // 160]."""

    def __init__(self, n_mels: int = N_MELS):
        super().__init__()
        self.n_mels = n_mels
        self.spectrogram = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=N_FFT, win_length=N_FFT, hop_length=HOP_LENGTH,
            f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels, window_fn=torch.hann_window,
            power=2.0, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney",
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.shape[-1] < 1:
            raise ValueError("log-mel of an empty waveform: pass at least one sample")
        wave = wave.to(torch.float32)
        # Whisper computes the STFT in float64 in numpy; float32 agrees to ~1e-5 after the log.
        mel = self.spectrogram(wave)[..., :-1]
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)  # per clip, as Whisper does
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0


_DEFAULT = None


def _default_log_mel() -> LogMel:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LogMel()
    return _DEFAULT


def log_mel(wave_16k: torch.Tensor) -> torch.Tensor:
    """One mono 16 kHz waveform [samples] -> [80, samples // 160] (no padding)."""
    if wave_16k.dim() != 1:
        raise ValueError(f"log_mel expects a 1-D mono waveform, got shape {tuple(wave_16k.shape)}")
    return _default_log_mel()(wave_16k)


def pad_or_trim(wave: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Zero-pad (or cut) a 1-D waveform to exactly ``n_samples``, like Whisper's pad_or_trim."""
    if wave.shape[-1] >= n_samples:
        return wave[..., :n_samples]
    return torch.nn.functional.pad(wave, (0, n_samples - wave.shape[-1]))


def batch_log_mel(waves: list[torch.Tensor], n_frames: int) -> torch.Tensor:
    """Clips -> [B, 80, n_frames]: each waveform is zero-padded/cut to the context *before* the STFT.

    Padding the waveform (not the spectrogram) is what Whisper does, so the padded region holds the
    log-mel of digital silence and the dynamic-range cap sees the same values as in training of Whisper.
    """
    if not waves:
        raise ValueError("batch_log_mel needs at least one waveform")
    n_samples = n_frames * HOP_LENGTH
    device = waves[0].device
    batch = torch.stack([pad_or_trim(w.reshape(-1).to(device, torch.float32), n_samples) for w in waves])
    return _default_log_mel().to(device)(batch)


class SpecAugment(nn.Module):
    """Frequency and time masking on [B, 80, T] log-mels; active in training mode only.

    ``n_masks`` masks of each kind, widths drawn uniformly up to ``freq_mask`` bins / ``time_mask`` frames,
    independently per clip. Masked cells get 0, which is mid-range for Whisper-scaled log-mels.
    """

    def __init__(self, freq_mask: int = 15, time_mask: int = 50, n_masks: int = 2):
        super().__init__()
        if freq_mask < 0 or time_mask < 0 or n_masks < 0:
            raise ValueError("SpecAugment widths and n_masks must be >= 0")
        self.n_masks = n_masks
        self.freq = torchaudio.transforms.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask else None
        self.time = torchaudio.transforms.TimeMasking(time_mask, iid_masks=True) if time_mask else None

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        if not self.training or self.n_masks == 0:
            return mels
        squeeze = mels.dim() == 2
        out = mels.unsqueeze(0) if squeeze else mels
        for _ in range(self.n_masks):
            if self.freq is not None:
                out = self.freq(out)
            if self.time is not None:
                out = self.time(out)
        return out.squeeze(0) if squeeze else out


def context_log_mel(waves, n_frames: int, context_seconds: float):
    """16 kHz mono waves -> log-mels [B, 80, n_frames]; clips longer than the context are cut (warning).

    The one front end shared by the eager model and the ONNX runtime.
    """
    import warnings

    waves = list(waves)
    if not waves:
        raise ValueError("features: pass at least one waveform")
    limit = n_frames * HOP_LENGTH
    cleaned = []
    for i, w in enumerate(waves):
        w = torch.as_tensor(w, dtype=torch.float32)
        if w.dim() != 1:
            raise ValueError(f"features: clip {i} has shape {tuple(w.shape)}; pass 1-D mono 16 kHz waveforms "
                             "(assistant.audio.load_audio returns those)")
        if w.numel() > limit:
            warnings.warn(f"clip {i} lasts {w.numel() / SAMPLE_RATE:.2f} s, longer than the model's "
                          f"{context_seconds:g} s context: only the first {context_seconds:g} s "
                          "are used", stacklevel=3)
        cleaned.append(w)
    return batch_log_mel(cleaned, n_frames)
