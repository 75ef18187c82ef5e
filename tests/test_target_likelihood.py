"""The target_likelihood reward: log p(transcript | audio) under an independent stock Whisper."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from assistant.data.manifest import Utterance
from assistant.rsft.rewards import RewardError, build_reward_fns
from assistant.rsft.target_likelihood import NO_FRAME_PENALTY, TargetLikelihood
from assistant.rsft.types import Candidate

RIGHT = "turn on the kitchen lights | activate_lights_kitchen | object=lights ; location=kitchen"
SAME_TRANSCRIPT = "turn on the kitchen lights | activate_lights_none | object=lights"
WRONG = "turn off the bedroom lights | deactivate_lights_bedroom | object=lights ; location=bedroom"
BROKEN = "turn on the kitchen"


def _clip(path, seconds=1.5, seed=0):
    wave = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).astype(np.float32)
    sf.write(str(path), wave, 16000)
    return str(path)


def _cands(uid, texts):
    return [Candidate(uid, i, t, [1, 2, 3], logprob=-1.0) for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def tiny():
    from assistant.model.slu import SLUModel

    return SLUModel.tiny_random(seed=0)


def test_same_transcript_same_reward_and_broken_frames_score_below_all(tiny, tmp_path):
    u = Utterance(audio=_clip(tmp_path / "a.wav"), text="", intent="", id="a")
    (row,) = TargetLikelihood(tiny)([u], [_cands("a", [RIGHT, SAME_TRANSCRIPT, WRONG, BROKEN])])
    right, same, wrong, broken = row
    assert all(np.isfinite(row)) and right <= 0 and wrong <= 0
    assert right == same                                   # it hears the transcript, not the frame
    assert broken == pytest.approx(min(right, wrong) - NO_FRAME_PENALTY)


def test_scores_do_not_depend_on_the_batch(tiny, tmp_path):
    """Padding of shorter transcripts / other clips in the batch must not leak into a score."""
    utts = [Utterance(audio=_clip(tmp_path / f"{i}.wav", 1.0 + i / 2, seed=i), text="", intent="", id=str(i))
            for i in range(3)]
    cands = [_cands("0", [RIGHT, WRONG]), _cands("1", [WRONG]), _cands("2", ["lights | activate_lights_none |", RIGHT])]
    together = TargetLikelihood(tiny, batch_size=3)(utts, cands)
    alone = TargetLikelihood(tiny, batch_size=1)(utts, cands)
    assert np.allclose(np.concatenate(together), np.concatenate(alone), atol=1e-5)


def test_registry_loads_the_target_model_its_options_name(tiny, tmp_path):
    """The config names the target model (``target_likelihood: {weight:, model: FOLDER}``); a loaded one
    passed in as a resource wins."""
    tiny.save_pretrained(tmp_path / "target")
    fns = build_reward_fns({"target_likelihood": {"weight": 1.0, "model": str(tmp_path / "target")}})
    assert isinstance(fns.fns["target_likelihood"], TargetLikelihood) and fns.weights == {"target_likelihood": 1.0}
    fns = build_reward_fns({"target_likelihood": 1.0}, target_model=tiny)
    assert fns.fns["target_likelihood"].model is tiny
    with pytest.raises(Exception, match="missing"):
        build_reward_fns({"target_likelihood": {"weight": 1.0, "model": str(tmp_path / "missing")}})


@pytest.mark.slow
def test_real_whisper_prefers_the_spoken_transcript(tmp_path):
    """Real tiny.en weights, a real TTS clip: the transcript that was said outscores a wrong one."""
    from assistant.data import tts
    from assistant.model.slu import SLUModel

    voice = next(v for v in tts.list_voices(["espeak"]) if v.params["voice"] == "en-us+m3")
    wave, sr = tts.synthesize(voice, "turn on the kitchen lights")
    path = tmp_path / "kitchen.wav"
    sf.write(str(path), wave, sr)
    u = Utterance(audio=str(path), text="", intent="", id="k")
    model = SLUModel.from_pretrained(None)
    (row,) = TargetLikelihood(model)([u], [_cands("k", [RIGHT, WRONG])])
    assert row[0] > row[1] + 0.5
