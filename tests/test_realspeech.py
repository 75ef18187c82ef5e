"""Real-speech check helpers (the clips themselves come from PyPI at run time; here synthetic stand-ins)."""

import math

import torch

from assistant.model.slu import SLUModel
from assistant.realspeech import _digits_to_words, slu_transcript_wer


def test_slu_transcript_wer_scores_only_clips_that_fit_the_context():
    model = SLUModel.tiny_random(["go forward ten meters | move | "], seed=0, context_seconds=2.0)
    g = torch.Generator().manual_seed(0)
    clips = [("short", torch.randn(16000, generator=g) * 0.1, "go forward ten meters"),
             ("long", torch.randn(48000, generator=g) * 0.1, "a sentence longer than the context")]
    wer, hyps = slu_transcript_wer(model, clips)
    assert list(hyps) == ["short"]
    assert math.isfinite(wer) and wer >= 0


def test_digits_become_words_like_the_references():
    assert _digits_to_words("Go forward 10 meters.") == "Go forward ten meters."
