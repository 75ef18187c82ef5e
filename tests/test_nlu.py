"""The text second pass (assistant.nlu): scoring both readings, choosing, weights, persistence, inference.

The teacher here is the real MiniLM network with fresh (untrained, seeded) heads: its readings are
arbitrary but real, which is all the choice logic needs; trained-teacher accuracy is test_teacher's job.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from assistant.frames import Frame, format_frame
from assistant.model.slu import SLUModel
from assistant.nlu import NluError, NluPass, Readings, TextTeacher, attach, choose_weight, load_pipeline
from assistant.schema import load_schema

FRAMES = [
    Frame("activate_lights_kitchen", {"object": "lights", "location": "kitchen"}, "turn on the lights in the kitchen"),
    Frame("alarm_set", {"time": "seven thirty a m"}, "set an alarm for seven thirty a m"),
]


@pytest.fixture(scope="module")
def teacher():
    schema = load_schema()
    torch.manual_seed(0)
    slots = sorted(schema.slots)
    return TextTeacher.fresh(list(schema.intents), slots, implied_slots={}, intent_slots={})


@pytest.fixture(scope="module")
def model():
    return SLUModel.tiny_random([format_frame(f) for f in FRAMES] + ["| |"], seed=0)


@pytest.fixture(scope="module")
def enc(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model.encode(model.features([0.1 * torch.randn(32000, generator=g) for _ in FRAMES]))


def test_readings_score_both_frames_under_both_models(model, enc, teacher):
    r = NluPass(teacher).readings(model, enc, FRAMES + [None])
    assert r.text[2] is None and r.speech[2] is None
    for i, frame in enumerate(FRAMES):
        text = r.text[i]
        assert text.transcript == frame.transcript                       # the transcript is never changed
        intent, slots, _ = teacher.predict([frame.transcript])[0]
        assert (text.intent, text.slots) == (intent, slots)
        want = teacher.log_likelihood([frame.transcript] * 2, [frame.intent, text.intent], [frame.slots, text.slots])
        np.testing.assert_allclose(r.text_lp[i, :2], want, rtol=1e-6)
        with torch.no_grad():
            own = float(model.sequence_logprobs(enc[i:i + 1], [format_frame(frame)])[0])
        assert r.speech_lp[i, 0] == pytest.approx(own, rel=1e-5)


def test_choose_weight_zero_is_the_speech_model_and_a_big_weight_is_the_text_model():
    speech = [Frame("a", {}, "x"), Frame("b", {}, "y"), None]
    text = [Frame("c", {}, "x"), Frame("d", {}, "y"), None]
    r = Readings(speech, text, speech_lp=np.array([[-1.0, -5.0], [-1.0, -1.5], [0, 0]]),
                 text_lp=np.array([[-3.0, -0.1], [-0.1, -3.0], [0, 0]]))
    assert [f and f.intent for f in r.choose(0.0)[0]] == ["a", "b", None]
    frames, readers = r.choose(100.0)
    assert [f and f.intent for f in frames] == ["c", "b", None] and readers == ["text", "speech", "speech"]
    # weight 2: row 0: -1 + 2*-3 = -7 vs -5 + 2*-0.1 = -5.2 -> text
    assert r.choose(2.0)[1] == ["text", "speech", "speech"]
    best, accuracy = choose_weight(r, ["c", "b", "z"], weights=(0.0, 2.0, 100.0))
    ninf = -math.inf
    assert best == (2.0, ninf)
    assert accuracy == {(0.0, ninf): pytest.approx(1 / 3), (2.0, ninf): pytest.approx(2 / 3),
                        (100.0, ninf): pytest.approx(2 / 3)}


def _three_readings() -> Readings:
    """Row 0: the stock reading is right but scores 3 lower than ours; row 1: ours is right, the stock
    one scores 6 lower; row 2: our output did not parse, only the stock reading exists."""
    speech = [Frame("a", {}, "x"), Frame("b", {}, "y"), None]
    text = [Frame("a", {}, "x"), Frame("b", {}, "y"), None]
    stock = [Frame("k", {}, "xk"), Frame("q", {}, "yq"), Frame("z", {}, "zz")]
    return Readings(speech, text, speech_lp=np.array([[-1.0, -1.0, -4.0], [-1.0, -1.0, -7.0], [0, 0, -2.0]]),
                    text_lp=np.zeros((3, 3)), stock=stock)


def test_the_stock_reading_wins_by_its_bonus_and_rescues_invalid_outputs():
    r = _three_readings()
    assert [f and f.intent for f in r.choose(0.0)[0]] == ["a", "b", None]            # bonus -inf: never
    frames, readers = r.choose(0.0, stock_bonus=0.0)
    assert [f.intent for f in frames] == ["a", "b", "z"] and readers == ["speech", "speech", "stock"]
    frames, readers = r.choose(0.0, stock_bonus=4.0)                                  # -4 + 4 > -1
    assert [f.intent for f in frames] == ["k", "b", "z"] and readers == ["stock", "speech", "stock"]
    frames, _ = r.choose(0.0, stock_bonus=3.0)                                        # a tie keeps ours
    assert [f.intent for f in frames] == ["a", "b", "z"]
    assert [f.intent for f in r.choose(0.0, stock_bonus=math.inf)[0]] == ["k", "q", "z"]   # always stock


def test_choose_weight_searches_the_stock_bonus_and_prefers_never_on_ties():
    r = _three_readings()
    best, accuracy = choose_weight(r, ["k", "b", "z"], weights=(0.0,), stock_bonuses=(-math.inf, 0.0, 4.0, math.inf))
    assert best == (0.0, 4.0) and accuracy[(0.0, 4.0)] == 1.0
    assert accuracy[(0.0, -math.inf)] == pytest.approx(1 / 3) and accuracy[(0.0, math.inf)] == pytest.approx(2 / 3)
    best, _ = choose_weight(r, ["a", "b", "x"], weights=(0.0,), stock_bonuses=(math.inf, 0.0, -math.inf))
    assert best == (0.0, -math.inf)


def test_readings_read_the_stock_transcript(model, enc, teacher):
    stock = ["Turn on the lights in the kitchen.", "Set an alarm for 7:30 a.m."]
    r = NluPass(teacher).readings(model, enc, [FRAMES[0], None], stock)
    assert r.stock[1].transcript == "set an alarm for seven thirty a m"          # our spoken word form
    intent, slots, confidence = teacher.predict([r.stock[0].transcript])[0]
    assert (r.stock[0].intent, r.stock[0].slots) == (intent, slots)
    assert r.text_lp[0, 2] == pytest.approx(math.log(confidence), rel=1e-6)
    with torch.no_grad():
        own = float(model.sequence_logprobs(enc[1:2], [format_frame(r.stock[1])])[0])
    assert r.speech_lp[1, 2] == pytest.approx(max(own, -1e9), rel=1e-5)
    assert r.text[1] is None                        # no speech frame: no text reading of it


def test_weight_must_be_non_negative(teacher):
    with pytest.raises(NluError, match="weight"):
        NluPass(teacher, weight=-1)


def test_attach_save_load_and_inference(model, teacher, tmp_path):
    from assistant.inference import predict_waves

    folder = tmp_path / "m"
    model.save_pretrained(folder)
    assert load_pipeline(folder).nlu is None                      # no nlu/: the speech model alone
    attach(folder, teacher, weight=0.5)
    assert json.loads((folder / "nlu" / "nlu.json").read_text()) == {"weight": 0.5}
    attach(folder, teacher, weight=0.5, stock_bonus=4.0)
    assert load_pipeline(folder).nlu.stock_bonus == 4.0
    attach(folder, teacher, weight=0.5, stock_bonus=math.inf)
    assert load_pipeline(folder).nlu.stock_bonus == math.inf
    attach(folder, teacher, weight=0.5)
    loaded = load_pipeline(folder)
    assert loaded.nlu is not None and loaded.nlu.weight == 0.5
    assert SLUModel.from_pretrained(folder).nlu is None           # the speech model alone
    g = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(24000, generator=g) for _ in range(3)]
    with_nlu = predict_waves(loaded, waves, load_schema())
    alone = predict_waves(loaded, waves, load_schema(), use_nlu=False)
    for a, b in zip(with_nlu, alone):
        assert a.raw == b.raw and a.valid == b.valid
        assert b.reader == "speech"
        if a.reader == "speech":
            assert (a.intent, a.slots) == (b.intent, b.slots)
        assert a.transcript == b.transcript


def test_corrupt_nlu_folder_is_one_clear_error(model, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    (folder / "nlu").mkdir()
    (folder / "nlu" / "nlu.json").write_text("{oops")
    with pytest.raises(NluError, match="nlu.json"):
        load_pipeline(folder)
    (folder / "nlu" / "nlu.json").write_text('{"weight": 1.0}')
    with pytest.raises(NluError, match="teacher"):
        load_pipeline(folder)


def _frame(intent: str, transcript: str = "t") -> Frame:
    return Frame(intent, {}, transcript)


def test_the_n_best_joins_the_choice_only_when_asked():
    from assistant.nlu.second_pass import Hypothesis

    # clip 0: the greedy frame "a" scores -1 + w*(-3); a sampled frame "c" -2 + w*(-0.5); its transcript's
    # text reading "d" -6 + w*0. Clip 1 has no sampled readings.
    r = Readings([_frame("a"), _frame("b")], [None, None], speech_lp=np.array([[-1.0, 0, 0], [-1.0, 0, 0]]),
                 text_lp=np.array([[-3.0, 0, 0], [0, 0, 0]]),
                 samples=[[Hypothesis(_frame("c", "u"), -2.0, -0.5, "sample"),
                           Hypothesis(_frame("d", "u"), -6.0, 0.0, "sample text")], []])
    assert [f.intent for f in r.choose(0.0)[0]] == ["a", "b"]                  # weight 0: the speech model alone
    frames, readers = r.choose(1.0)
    assert [f.intent for f in frames] == ["c", "b"] and readers == ["sample", "speech"]
    assert r.choose(1.0, samples=False)[0][0].intent == "a"
    frames, readers = r.choose(10.0)
    assert frames[0].intent == "d" and readers[0] == "sample text"
    best, accuracy = choose_weight(r, ["c", "b"], weights=(0.0, 1.0))
    assert best == (1.0, -math.inf) and accuracy[(1.0, -math.inf)] == 1.0
    _, without = choose_weight(r, ["c", "b"], weights=(0.0, 1.0), samples=False)
    assert without[(1.0, -math.inf)] == 0.5


def test_readings_score_the_sampled_frames_and_their_transcripts(model, enc, teacher):
    from assistant.model.candidate import Candidate

    other = Frame("alarm_set", {"time": "seven"}, "turn on the lights in the kitchen")
    sampled = [[Candidate(text=format_frame(FRAMES[0])),          # repeats the greedy frame: not read again
                Candidate(text=format_frame(other)),              # another frame of the greedy transcript
                Candidate(text="no frame here"),                  # does not parse: not a reading
                Candidate(text=format_frame(FRAMES[1]), finished=False)],   # cut off: not a reading
               [Candidate(text=format_frame(FRAMES[0])), Candidate(text=format_frame(FRAMES[0]))]]
    r = NluPass(teacher, samples=4).readings(model, enc, FRAMES, sampled=sampled)
    # clip 0: only the other frame (its transcript is the greedy one, whose text reading exists already)
    assert [(h.frame, h.reader) for h in r.samples[0]] == [(other, "sample")]
    # clip 1: a sampled frame with another transcript, and the text model's reading of that transcript
    # unless it is the same frame
    readers = [h.reader for h in r.samples[1]]
    assert readers[0] == "sample" and r.samples[1][0].frame == FRAMES[0] and len(readers) <= 2
    intent, slots, _ = teacher.predict([FRAMES[0].transcript])[0]
    if len(readers) == 2:
        assert readers[1] == "sample text" and (r.samples[1][1].frame.intent, r.samples[1][1].frame.slots) == (intent, slots)
    else:
        assert (intent, slots) == (FRAMES[0].intent, FRAMES[0].slots)
    for i, h in ((0, r.samples[0][0]), (1, r.samples[1][0])):
        with torch.no_grad():
            own = float(model.sequence_logprobs(enc[i:i + 1], [format_frame(h.frame)])[0])
        assert h.speech_lp == pytest.approx(max(own, -1e9), rel=1e-5)
        want = teacher.log_likelihood([h.frame.transcript], [h.frame.intent], [h.frame.slots])[0]
        assert h.text_lp == pytest.approx(want, rel=1e-6)
    assert NluPass(teacher).readings(model, enc, FRAMES).samples is None     # greedy only: no n-best


def test_n_best_is_saved_loaded_and_reproducible_at_inference(model, teacher, tmp_path):
    from assistant.inference import predict_waves

    folder = tmp_path / "m"
    model.save_pretrained(folder)
    attach(folder, teacher, weight=1.0, samples=4, seed=7)
    assert json.loads((folder / "nlu" / "nlu.json").read_text()) == {"weight": 1.0, "samples": 4, "seed": 7}
    loaded = load_pipeline(folder)
    assert (loaded.nlu.samples, loaded.nlu.seed) == (4, 7)
    g = torch.Generator().manual_seed(2)
    waves = [0.1 * torch.randn(24000, generator=g) for _ in range(3)]
    first = predict_waves(loaded, waves, load_schema())
    again = predict_waves(loaded, waves, load_schema())
    assert [p.to_dict() | {"latency_s": 0} for p in first] == [p.to_dict() | {"latency_s": 0} for p in again]
    alone = predict_waves(loaded, waves, load_schema(), use_nlu=False)
    assert [p.raw for p in first] == [p.raw for p in alone]          # the greedy decode is the same
    (folder / "nlu" / "nlu.json").write_text('{"weight": 1.0, "samples": -2}')
    with pytest.raises(NluError, match="nlu.json.*samples"):
        load_pipeline(folder)
    with pytest.raises(NluError, match="samples"):
        NluPass(teacher, samples=1.5)


def test_nbest_diagnostics_oracle_recoverable_and_vote():
    """The oracle counts a clip when any reading is right; the score's misses with a right reading are
    recoverable, per cell; the vote term can overturn the score and the plain majority is the draws'."""
    from collections import Counter

    from assistant.nlu.diagnostics import Clip, summarise

    clips = [
        Clip("a", "espeak/room", [(-1.0, -1.0, "a", False), (-2.0, -0.1, "b", False)], Counter(a=8)),
        # the score prefers b at every weight; a is in the n-best and holds 6 of 8 draws
        Clip("a", "kokoro/clean", [(-1.0, -0.5, "b", False), (-5.0, -3.0, "a", True)], Counter(a=6, b=2)),
        Clip("c", "espeak/room", [(-1.0, -1.0, "a", False)], Counter(a=8)),      # nothing right: not recoverable
    ]
    out = summarise(clips)
    assert out["oracle"] == round(2 / 3, 4)
    assert out["best"] == {"weight": 0.0, "accuracy": round(1 / 3, 4)}          # ties go to the smaller weight
    assert out["score"]["w=64"] == 0.0                 # weight 64: clip 0 reads b too (-2 - 6.4 > -1 - 64)
    assert out["recoverable"] == {"total": 1, "kokoro/clean": 1}
    assert out["greedy_pass"] == round(1 / 3, 4)         # without the n-best clip 1 has no right reading
    assert out["majority_vote"] == round(2 / 3, 4)
    # lambda 4: clip 1's a gains 4 log(6/8) - 4 log(2/8) = 4.4 > its 4 + 2.5w deficit at w = 0
    assert clips[1].pick(0.0, vote_weight=4.0) == "a" and out["score_plus_vote"]["lambda=4"] == round(2 / 3, 4)
    assert clips[1].pick(0.0, vote_weight=4.0, samples=False) == "b"


def test_nbest_diagnostics_read_clips_like_the_deployed_pass(model, teacher, tmp_path):
    import soundfile as sf

    from assistant.data.manifest import Utterance
    from assistant.nlu.diagnostics import read_clips

    g = np.random.default_rng(0)
    utts = []
    for i, f in enumerate(FRAMES):
        sf.write(tmp_path / f"{i}.wav", (0.1 * g.standard_normal(16000)).astype(np.float32), 16000)
        utts.append(Utterance(str(tmp_path / f"{i}.wav"), f.transcript, f.intent, dict(f.slots), id=str(i),
                              meta={"engine": "espeak", "augment": {"room": {"rt60": 0.3}}}))
    clips = read_clips(model, utts, teacher, samples=6, seed=1)
    assert [c.gold for c in clips] == [f.intent for f in FRAMES] and {c.cell for c in clips} == {"espeak/room"}
    for c in clips:
        assert sum(c.votes.values()) <= 6                # the draws' votes (a draw that does not parse has none)
        assert sum(not sampled for *_, sampled in c.options) in (0, 2)    # greedy frame + its text reading
    again = read_clips(model, utts, teacher, samples=6, seed=1)
    assert [(c.options, c.votes) for c in again] == [(c.options, c.votes) for c in clips]   # seeded


def test_misses_split_errors_into_misheard_and_misunderstood(tmp_path):
    from assistant.config import ConfigError
    from assistant.data.manifest import Utterance
    from assistant.nlu.misses import classify_misses, main, read_predictions

    gold = [("a", "wake me up at six", "alarm_set", "field", "alarm/wake"),
            ("b", "do not wake me up at six", "alarm_remove", "field", "alarm/no_wake"),
            ("c", "have i set an alarm", "alarm_query", "novel", "alarm/check"),
            ("d", "music on", "activate_music", "novel", "music/on")]
    utts = [Utterance(audio=f"{i}.wav", text=t, intent=g, id=i, meta={"part": p, "template": tp})
            for i, t, g, p, tp in gold]
    predictions = [{"id": "a", "intent": "alarm_set", "transcript": "wake me up at six"},     # right
                   {"id": "b", "intent": "alarm_set", "transcript": "Do not wake me up at six."},  # heard right
                   {"id": "c", "intent": "alarm_set", "transcript": "have i set an alarm"},  # heard right
                   {"id": "d", "intent": "lists_add", "transcript": "use e can"}]           # misheard
    text_intents = {"a": "alarm_set", "b": "alarm_set", "c": "alarm_query", "d": "activate_music"}
    out = classify_misses(predictions, utts, text_intents)
    assert (out["errors"], out["misheard"], out["heard_right"], out["heard_right_text_model_wrong"]) == (3, 1, 2, 1)
    assert out["intent_accuracy"] == 0.25
    assert out["errors_by_part"] == {"field": 1, "novel": 2}
    assert out["text_model_on_gold_text"] == {"all": 0.75, "field": 0.5, "novel": 1.0}
    assert out["text_model_worst_phrasings"] == [{"template": "alarm/no_wake", "accuracy": 0.0, "n": 1}]
    with pytest.raises(ValueError, match="not in the manifest"):
        classify_misses([{"id": "zz", "intent": "x", "transcript": ""}], utts, text_intents)
    bad = tmp_path / "p.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ConfigError, match="JSON lines"):
        read_predictions(bad)
    assert main([str(tmp_path / "missing.jsonl"), str(tmp_path / "m.jsonl")]) == 2
