"""Whisper log-mel front end: numerically equal to transformers' WhisperFeatureExtractor on real speech."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant.features import (HOP_LENGTH, LogMel, SpecAugment, batch_log_mel, frames_for_seconds, log_mel,
                                pad_or_trim)


@pytest.fixture(scope="module")
def speech(tmp_path_factory, speak) -> torch.Tensor:
    return speak("turn on the lights in the kitchen", tmp_path_factory.mktemp("tts") / "kitchen.wav")


@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor()  # Whisper defaults: 80 mels, n_fft 400, hop 160, 30 s


def test_padded_log_mel_matches_whisper_feature_extractor(speech, extractor):
    reference = extractor(speech.numpy(), sampling_rate=16000, return_tensors="np").input_features[0]
    ours = batch_log_mel([speech], n_frames=3000)[0].numpy()
    assert ours.shape == reference.shape == (80, 3000)
    assert np.abs(ours - reference).max() < 1e-4


def test_unpadded_log_mel_matches_whisper_feature_extractor(speech, extractor):
    reference = extractor(speech.numpy(), sampling_rate=16000, return_tensors="np",
                          padding="longest").input_features[0]
    ours = log_mel(speech).numpy()
    assert ours.shape == reference.shape == (80, speech.numel() // HOP_LENGTH)
    assert np.abs(ours - reference).max() < 1e-4


def test_short_context_is_prefix_of_full_context_padding(speech):
    """6 s of context = the first 600 frames of Whisper's 30 s input (zero padding, same per-clip peak)."""
    full = batch_log_mel([speech], frames_for_seconds(30))[0]
    short = batch_log_mel([speech], frames_for_seconds(6))[0]
    assert short.shape == (80, 600)
    # The last frame of a window sees the window edge (reflect padding), so compare before it.
    assert torch.allclose(short[:, :-1], full[:, :599], atol=1e-5)


def test_batch_pads_each_clip_with_silence_and_cuts_long_ones(speech):
    long_clip = torch.cat([speech, speech, speech])
    mels = batch_log_mel([speech, long_clip], n_frames=400)
    assert mels.shape == (2, 80, 400)
    alone = batch_log_mel([speech], n_frames=400)[0]
    assert torch.allclose(mels[0], alone)
    # Past the speech: digital silence = the dynamic-range floor (peak - 8), the same value everywhere.
    tail = mels[0, :, speech.numel() // HOP_LENGTH + 2:]
    assert torch.allclose(tail, tail.min().expand_as(tail))
    assert torch.allclose(tail.min(), (mels[0].max() * 4 - 4 - 8 + 4) / 4, atol=1e-5)
    assert torch.allclose(mels[1], batch_log_mel([long_clip[:400 * HOP_LENGTH]], 400)[0])


def test_pad_or_trim():
    x = torch.arange(5.0)
    assert pad_or_trim(x, 3).tolist() == [0, 1, 2]
    assert pad_or_trim(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="1-D"):
        log_mel(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="empty"):
        LogMel()(torch.zeros(0))
    with pytest.raises(ValueError, match="at least one"):
        batch_log_mel([], 100)


def test_spec_augment_masks_in_training_only(speech):
    mels = batch_log_mel([speech, speech], n_frames=600)
    aug = SpecAugment(freq_mask=20, time_mask=60, n_masks=2)
    aug.eval()
    assert torch.equal(aug(mels), mels)
    aug.train()
    torch.manual_seed(0)
    out = aug(mels.clone())
    assert out.shape == mels.shape
    masked = out == 0
    assert masked.any() and (~masked).any()
    assert not torch.equal(out[0], out[1])  # masks drawn independently per clip
    assert torch.equal(SpecAugment(n_masks=0).train()(mels), mels)
    with pytest.raises(ValueError):
        SpecAugment(freq_mask=-1)
