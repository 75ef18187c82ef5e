"""Real-speech check: the 11 shipped clips (assistant/resources/realspeech) and the WER helpers."""

import json
import math

import pytest
import torch

from assistant.model.slu import SLUModel
from assistant.realspeech import CLIPS_DIR, asr_wer, load_clips, slu_transcript_wer


@pytest.fixture(scope="module")
def clips():
    return load_clips()


def test_the_shipped_clips_load_with_their_transcripts(clips):
    listing = json.loads((CLIPS_DIR / "clips.json").read_text())["clips"]
    assert len(clips) == 11
    assert [name for name, _, _ in clips] == [
        f"sense_and_sensibility_01_austen_64kb-0{k}" for k in (870, 880, 890, 920, 930)] + [
        "cards/001", "cards/002", "cards/003", "cards/004", "cards/005", "goforward"]
    for (name, wave, text), entry in zip(clips, listing):
        assert wave.dtype == torch.float32 and wave.dim() == 1
        assert wave.numel() == entry["samples"], name                 # every sample of the original clip
        assert 1.0 < wave.numel() / 16000 < 7.5, name                 # 1.1 s (a card) .. 7.1 s (LibriVox)
        assert 0.01 < float(wave.square().mean().sqrt()) and float(wave.abs().max()) <= 1.0, name
        assert text and text == text.strip().lower(), name
    assert dict((n, t) for n, _, t in clips)["goforward"] == "go forward ten meters"
    assert dict((n, t) for n, _, t in clips)["cards/005"] == "eight of spades four of clubs seven of hearts"
    total = sum(w.numel() for _, w, _ in clips) / 16000
    assert 36 < total < 38                                            # 37.2 s of speech


def test_the_clips_ship_with_their_licence_and_are_small():
    assert (CLIPS_DIR / "LICENSE.pocketsphinx").read_text().startswith("Copyright (c) 1999-2016 Carnegie Mellon")
    assert "public domain" in (CLIPS_DIR / "README.md").read_text()
    assert sum(f.stat().st_size for f in CLIPS_DIR.iterdir()) < 1_000_000


class _Transcriber:
    """Stands in for the model's stock ASR path: says, for each clip, what it is told to."""

    def __init__(self, clips, said: dict[str, str]):
        self.said = {id(wave): said[name] for name, wave, _ in clips}

    def transcribe(self, waves, context_seconds=30.0):
        return [self.said[id(w)] for w in waves]


def test_asr_wer_normalises_whisper_style_output(clips):
    refs = {name: text for name, _, text in clips}
    # Whisper's written form of the same words: capitals, digits, "Mr.", punctuation
    written = {name: text.capitalize() + "." for name, text in refs.items()}
    written["goforward"] = "Go forward 10 meters."
    written["sense_and_sensibility_01_austen_64kb-0870"] = (
        "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his power "
        "to do for them.")
    wer, hyps = asr_wer(_Transcriber(clips, written), clips)
    assert wer == 0.0 and hyps[-1] == "Go forward 10 meters."
    # silence on every clip but goforward: every other reference word is a deletion
    words = sum(len(t.split()) for t in refs.values())
    silent = {name: "go forward ten meters" if name == "goforward" else "" for name in refs}
    assert asr_wer(_Transcriber(clips, silent), clips)[0] == pytest.approx((words - 4) / words)


def test_slu_transcript_wer_scores_only_clips_that_fit_the_context():
    model = SLUModel.tiny_random(["go forward ten meters | move | "], seed=0, context_seconds=2.0)
    g = torch.Generator().manual_seed(0)
    clips = [("short", torch.randn(16000, generator=g) * 0.1, "go forward ten meters"),
             ("long", torch.randn(48000, generator=g) * 0.1, "a sentence longer than the context")]
    wer, hyps = slu_transcript_wer(model, clips)
    assert list(hyps) == ["short"]
    assert math.isfinite(wer) and wer >= 0
