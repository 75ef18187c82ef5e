"""Rewards on hand-made utterances and candidates; the learned reward model; RSFT record persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from assistant.data.manifest import Utterance
from assistant.frames import parse_frame
from assistant.rsft.rewards import (REWARDS, LabelsHiddenError, LearnedRewardModel, RewardError, acoustic_reward,
                                    build_reward_fns, combine_rewards, frame_correct, label_reward,
                                    make_teacher_reward, score, verifier_reward, verify)
from assistant.rsft.types import (Candidate, Decision, RecordError, Scored, group_by_utterance, read_records,
                                  write_records)

GOLD = "set a timer for ten minutes | timer_set | duration=ten minutes"
WRONG_SLOT = "set a timer for two minutes | timer_set | duration=two minutes"
WRONG_INTENT = "set an alarm for ten | alarm_set | time=ten"
MALFORMED = "set a timer for ten minutes | timer_set"   # truncated: no slots part


def utt(uid="timer-1", text="set a timer for ten minutes", intent="timer_set", slots=None, **meta) -> Utterance:
    return Utterance(audio=f"/corpus/{uid}.flac", text=text, intent=intent,
                     slots={"duration": "ten minutes"} if slots is None else slots, id=uid, meta=meta)


def cands(uid: str, texts: list[str], logprobs=None, tokens=None) -> list[Candidate]:
    logprobs = logprobs or [-1.0] * len(texts)
    tokens = tokens or [10] * len(texts)
    return [Candidate(uid, i, t, list(range(n)), logprob=lp)
            for i, (t, lp, n) in enumerate(zip(texts, logprobs, tokens))]


# --------------------------------------------------------------------------- label


def test_label_reward_orders_gold_wrong_slot_wrong_intent_malformed():
    (scores,) = label_reward([utt()], [cands("timer-1", [MALFORMED, WRONG_INTENT, GOLD, WRONG_SLOT])])
    malformed, wrong_intent, gold, wrong_slot = scores
    assert gold == 1.0
    assert malformed == 0.0
    assert gold > wrong_slot > wrong_intent > malformed
    # wrong slot: intent right (0.5), slot F1 0, one word of six substituted: 0.2 * 5/6
    assert wrong_slot == pytest.approx(0.5 + 0.2 * 5 / 6)


def test_label_reward_weights_and_slotless_frames():
    u = utt("off-1", "turn off the music", "deactivate_music_none", {"object": "music"})
    texts = ["turn off the music | deactivate_music_none | object=music",
             "turn on the music | activate_music_none | object=music"]
    intent_only = label_reward([u], [cands("off-1", texts)], slot_weight=0, transcript_weight=0)
    assert intent_only == [[1.0, 0.0]]
    none = utt("tr-1", "cancel the timer", "timer_remove", {})
    assert label_reward([none], [cands("tr-1", ["cancel the timer | timer_remove |"])]) == [[1.0]]
    with pytest.raises(RewardError, match="weights"):
        label_reward([u], [cands("off-1", texts)], intent_weight=-1)


def test_label_reward_refuses_hidden_labels_unless_revealed():
    pool = [utt("pool-1", labels_hidden=True), utt("pool-2", labels_hidden=True)]
    candidates = [cands("pool-1", [GOLD]), cands("pool-2", [WRONG_SLOT])]
    with pytest.raises(LabelsHiddenError, match=r"'pool-1', 'pool-2'.*reveal_labels=True"):
        label_reward(pool, candidates)
    assert label_reward(pool, candidates, reveal_labels=True)[0] == [1.0]


def test_rewards_check_that_candidates_line_up_with_utterances():
    with pytest.raises(RewardError, match="1 utterances but 2 candidate lists"):
        label_reward([utt()], [[], []])
    with pytest.raises(RewardError, match="utt_id 'other'.*'timer-1'"):
        verifier_reward([utt()], [cands("other", [GOLD])])


def test_frame_correct_ignores_value_case_and_optionally_checks_the_transcript():
    u = utt()
    gold, wrong, shouted = cands("timer-1", [GOLD, WRONG_SLOT, "set a timer | timer_set | duration=Ten Minutes"])
    assert frame_correct(u, gold) and not frame_correct(u, wrong)
    assert frame_correct(u, shouted) and not frame_correct(u, shouted, max_wer=0.2)


# --------------------------------------------------------------------------- verifier


@pytest.mark.parametrize("text, expected, problem", [
    (GOLD, 1.0, None),
    ("make it louder | increase_volume_none | object=volume", 1.0, None),   # enum: canonical, not in words
    ("| timer_remove |", 0.9, "empty transcript"),
    ("set a timer | timer_set |", 0.8, "missing required slot 'duration'"),
    ("set a timer for ten potatoes | timer_set | duration=ten potatoes", 0.8, "not a duration"),
    ("what is the weather in london | weather_query | place_name=paris", 0.8, "does not occur in the transcript"),
    ("make it louder | increase_volume_none | object=heat", 0.8, "contradicts intent"),
    ("open the door | open_door |", 0.6, "unknown intent"),
    (MALFORMED, 0.0, "not a well-formed frame"),
    ("", 0.0, "not a well-formed frame"),
])
def test_verifier_scores_schema_checks(text, expected, problem):
    result = verify(Candidate("u", 0, text))
    assert result.score == pytest.approx(expected)
    if problem is None:
        assert result.problems == []
    else:
        assert any(problem in p for p in result.problems), result.problems


def test_verifier_needs_no_labels():
    pool = [utt("pool-1", labels_hidden=True)]
    (scores,) = verifier_reward(pool, [cands("pool-1", [GOLD, "set a timer | timer_set |", MALFORMED])])
    assert scores == pytest.approx([1.0, 0.8, 0.0])


# --------------------------------------------------------------------------- acoustic / teacher


def test_acoustic_reward_is_length_normalised():
    c = cands("timer-1", [GOLD, GOLD], logprobs=[-2.0, -6.0], tokens=[4, 20])
    assert acoustic_reward([utt()], [c]) == [[-0.5, -0.3]]
    assert acoustic_reward([utt()], [c], length_alpha=0.0) == [[-2.0, -6.0]]
    assert acoustic_reward([utt()], [[Candidate("timer-1", 0, GOLD, [], -1.0)]]) == [[-1.0]]


def test_make_teacher_reward_adapts_callables_and_objects():
    def by_length(utterances, candidates):
        return [[float(len(c.text)) for c in cs] for cs in candidates]

    class Holder:
        def teacher_reward(self, utterances, candidates):
            return [[1.0] * len(cs) for cs in candidates]

    data = ([utt()], [cands("timer-1", [GOLD, MALFORMED])])
    assert make_teacher_reward(by_length)(*data) == [[len(GOLD), len(MALFORMED)]]
    assert make_teacher_reward(Holder())(*data) == [[1.0, 1.0]]
    with pytest.raises(RewardError, match="neither callable"):
        make_teacher_reward(42)
    assert callable(make_teacher_reward())   # lazy: the MiniLM teacher loads on first call only


# --------------------------------------------------------------------------- combining


def test_score_keeps_the_breakdown_and_weighted_sum():
    data = ([utt()], [cands("timer-1", [GOLD, WRONG_SLOT], logprobs=[-1.0, -5.0])])
    fns = {"verifier": verifier_reward, "acoustic": acoustic_reward}
    (row,) = score(*data, fns, {"verifier": 1.0, "acoustic": 0.5})
    assert [s.candidate.index for s in row] == [0, 1]
    assert row[1].rewards == {"verifier": 1.0, "acoustic": pytest.approx(-0.5)}
    assert row[1].reward == pytest.approx(1.0 - 0.25)
    combined = combine_rewards(fns, {"verifier": 1.0, "acoustic": 0.5})
    assert combined(*data) == [[s.reward for s in row]]
    assert [[s.reward for s in r] for r in combined.score(*data)] == combined(*data)


def test_score_names_the_reward_and_utterance_of_a_nan():
    def broken(utterances, candidates):
        return [[0.0, math.nan] for _ in candidates]

    data = ([utt()], [cands("timer-1", [GOLD, WRONG_SLOT])])
    with pytest.raises(RewardError, match=r"reward 'broken' returned nan for utterance 'timer-1' candidate 1"):
        score(*data, {"ok": verifier_reward, "broken": broken}, {"ok": 1.0, "broken": 1.0})
    with pytest.raises(RewardError, match=r"returned 1 values for utterance 'timer-1'"):
        score(*data, {"short": lambda u, c: [[0.0]]}, {"short": 1.0})
    with pytest.raises(RewardError, match="must name exactly the rewards"):
        combine_rewards({"verifier": verifier_reward}, {"verifer": 1.0})
    with pytest.raises(RewardError, match="finite"):
        combine_rewards({"verifier": verifier_reward}, {"verifier": math.inf})


def test_build_reward_fns_from_config_values():
    assert set(REWARDS) == {"label", "verifier", "acoustic", "teacher", "agreement", "learned", "vote",
                            "target_likelihood"}
    pool = [utt("pool-1", labels_hidden=True)]
    data = (pool, [cands("pool-1", [GOLD, WRONG_INTENT], logprobs=[-1.0, -3.0])])
    combined = build_reward_fns({"verifier": 1.0, "acoustic": 0.1}, length_alpha=0.0)
    assert combined(*data) == [[pytest.approx(1.0 - 0.1), pytest.approx(1.0 - 0.3)]]
    oracle = build_reward_fns({"label": 1.0}, reveal_labels=True, label_weights={"intent_weight": 1.0,
                                                                                 "slot_weight": 0.0,
                                                                                 "transcript_weight": 0.0})
    assert oracle(*data) == [[1.0, 0.0]]
    with pytest.raises(LabelsHiddenError):
        build_reward_fns({"label": 1.0})(*data)
    with pytest.raises(RewardError, match="unknown reward"):
        build_reward_fns({"lable": 1.0})
    with pytest.raises(RewardError, match=r"unknown reward resource\(s\) \['shema'\]"):
        build_reward_fns({"verifier": 1.0}, shema=None)
    with pytest.raises(RewardError, match="needs learned_model="):
        build_reward_fns({"learned": 1.0})


# --------------------------------------------------------------------------- learned reward


FSC_TEXTS = {
    "activate_lights_kitchen":
        "turn on the kitchen lights | activate_lights_kitchen | location=kitchen ; object=lights",
    "deactivate_lights_kitchen":
        "turn off the kitchen lights | deactivate_lights_kitchen | location=kitchen ; object=lights",
    "activate_lights_bedroom":
        "turn on the bedroom lights | activate_lights_bedroom | location=bedroom ; object=lights",
    "increase_heat_kitchen":
        "turn up the heat in the kitchen | increase_heat_kitchen | location=kitchen ; object=heat",
}


def toy_set(n: int, start: int = 0, hidden: bool = False):
    """Each utterance: the gold frame sampled confidently, three wrong frames sampled with low log-prob."""
    intents = list(FSC_TEXTS)
    utterances, candidates = [], []
    for i in range(start, start + n):
        gold = intents[i % len(intents)]
        frame = parse_frame(FSC_TEXTS[gold]).frame
        uid = f"toy-{i}"
        utterances.append(Utterance(audio=f"/corpus/{uid}.flac", text=frame.transcript, intent=gold,
                                    slots=dict(frame.slots), id=uid, meta={"labels_hidden": True} if hidden else {}))
        wrong = [x for x in intents if x != gold]
        texts = [FSC_TEXTS[gold]] + [FSC_TEXTS[x] for x in wrong]
        order = np.random.default_rng(i).permutation(4)
        logprobs = [-1.0 - 0.1 * (i % 3)] + [-12.0 - j for j in range(3)]
        candidates.append([Candidate(uid, k, texts[j], list(range(8)), logprob=logprobs[j])
                           for k, j in enumerate(order)])
    return utterances, candidates


def test_learned_reward_fits_a_separable_toy_set_and_scores_unlabelled_audio(tmp_path):
    utterances, candidates = toy_set(24)
    model = LearnedRewardModel(seed=0)
    stats = model.fit(utterances, candidates)
    assert stats["n_candidates"] == 96 and stats["n_correct"] == 24
    assert stats["train_accuracy"] == 1.0
    # Held-out utterances whose labels are hidden: the model needs no labels to score them.
    pool, pool_cands = toy_set(8, start=100, hidden=True)
    probs = model(pool, pool_cands)
    for u, row, cs in zip(pool, probs, pool_cands):
        for p, c in zip(row, cs):
            assert (p > 0.9) if c.frame.intent == u.intent else (p < 0.1), (u.id, c.text, p)
    # save / load round trip gives the same scores
    path = model.save(tmp_path / "reward.safetensors")
    again = LearnedRewardModel.load(path)
    assert np.allclose(np.concatenate(again(pool, pool_cands)), np.concatenate(probs))
    combined = build_reward_fns({"learned": 1.0}, learned_model=str(path))
    assert np.allclose(np.concatenate(combined(pool, pool_cands)), np.concatenate(probs))


def test_learned_reward_uses_pooled_encoder_features():
    """Same candidates everywhere; only the audio (encoder features) tells correct from incorrect."""
    rng = np.random.default_rng(3)
    text = FSC_TEXTS["activate_lights_kitchen"]
    utterances, candidates = [], []
    for i in range(40):
        said_on = i % 2 == 0
        intent = "activate_lights_kitchen" if said_on else "deactivate_lights_kitchen"
        pooled = np.concatenate([[1.0 if said_on else -1.0], rng.normal(0, 0.3, size=7)])
        utterances.append(utt(f"enc-{i}", "turn on the kitchen lights" if said_on else "turn off the kitchen lights",
                              intent, {"object": "lights", "location": "kitchen"}, encoder_pooled=pooled.tolist()))
        candidates.append([Candidate(f"enc-{i}", k, text, list(range(8)), logprob=-2.0) for k in range(2)])
    with_audio = LearnedRewardModel(seed=0)
    assert with_audio.fit(utterances, candidates)["train_accuracy"] == 1.0
    assert with_audio.encoder_dim == 8 and "encoder[0]" in with_audio.feature_names
    blind = LearnedRewardModel(seed=0, use_encoder=False)
    assert blind.fit(utterances, candidates)["train_accuracy"] == 0.5
    # The callback form gives the same features.
    by_callback = LearnedRewardModel(
        seed=0, encoder_features=lambda us: np.stack([u.meta["encoder_pooled"] for u in us]))
    by_callback.fit(utterances, candidates)
    assert np.allclose(by_callback.predict(utterances, candidates), with_audio.predict(utterances, candidates))
    missing = [utt("enc-x", intent="activate_lights_kitchen", slots={})]
    with pytest.raises(RewardError, match="enc-x.*encoder_pooled"):
        with_audio(missing, [[Candidate("enc-x", 0, text)]])


def test_learned_reward_reports_what_it_cannot_learn_from(tmp_path):
    utterances, candidates = toy_set(4)
    model = LearnedRewardModel()
    with pytest.raises(RewardError, match="not trained"):
        model(utterances, candidates)
    with pytest.raises(RewardError, match="both correct and incorrect"):
        model.fit(utterances, candidates, labels=[[True] * 4 for _ in range(4)])
    with pytest.raises(RewardError, match="one bool per candidate"):
        model.fit(utterances, candidates, labels=[[True, False]] * 4)
    pool, pool_cands = toy_set(4, hidden=True)
    with pytest.raises(LabelsHiddenError):
        model.fit(pool, pool_cands)
    assert model.fit(pool, pool_cands, reveal_labels=True)["train_accuracy"] == 1.0
    with pytest.raises(RewardError, match="not found"):
        LearnedRewardModel.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(RewardError, match="not a saved LearnedRewardModel"):
        LearnedRewardModel.load(tmp_path / "junk.safetensors")


# --------------------------------------------------------------------------- persistence of RSFT records


def test_records_round_trip_through_jsonl(tmp_path):
    c = Candidate("timer-1", 3, GOLD, [5, 6, 7], logprob=-2.5, ref_logprob=-3.0, greedy=True)
    assert c.frame.slots == {"duration": "ten minutes"}
    assert Candidate("timer-1", 0, MALFORMED).frame is None
    s = Scored(c, {"verifier": 1.0, "acoustic": -0.8}, 0.6)
    d = Decision("timer-1", 3, True, "best_of_n: top-k")
    assert Candidate.from_dict(c.to_dict()) == c and c.to_dict()["frame"]["intent"] == "timer_set"
    assert Scored.from_dict(s.to_dict()) == s
    assert Decision.from_dict(d.to_dict()) == d
    assert read_records(write_records([c, c], tmp_path / "c.jsonl"), Candidate) == [c, c]
    assert read_records(write_records([s], tmp_path / "s.jsonl"), Scored) == [s]
    assert read_records(write_records([d], tmp_path / "d.jsonl"), Decision) == [d]
    (tmp_path / "bad.jsonl").write_text('{"utt_id": "a", "index": 0, "text": "x"}\n{"utt_id": "a"}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: Candidate record is missing \['index', 'text'\]"):
        read_records(tmp_path / "bad.jsonl", Candidate)
    with pytest.raises(RecordError, match="not found"):
        read_records(tmp_path / "none.jsonl", Decision)


def test_group_by_utterance_restores_manifest_order():
    flat = [Candidate("b", 1, "x"), Candidate("a", 0, "y"), Candidate("b", 0, "z")]
    assert [[c.index for c in g] for g in group_by_utterance(flat, ["a", "b", "c"])] == [[0], [0, 1], []]
    with pytest.raises(RecordError, match="'b' not in the manifest"):
        group_by_utterance(flat, ["a"])


def test_vote_reward_counts_the_draws_deduplication_merged():
    from assistant.rsft.rewards import vote_reward

    u = Utterance(audio="a.wav", text="", intent="", id="u1")
    texts = ["stop the timer | timer_remove |", "stop timer | timer_remove |", "set a timer | timer_set |",
             "not a frame"]
    cands = [Candidate("u1", i, t, [1], count=c) for i, (t, c) in enumerate(zip(texts, (5, 3, 2, 6)))]
    # timer_remove: 8 of 16 draws, over two transcripts; timer_set 2; the unparsable output votes for nothing
    assert vote_reward([u], [cands]) == [[0.5, 0.5, 0.125, 0.0]]
    greedy_only = [Candidate("u1", 0, texts[0], [1], greedy=True, count=0)]
    assert vote_reward([u], [greedy_only]) == [[0.0]]


def test_agreement_reward_is_the_text_pass_score():
    """log p_speech + w * log p_text, the deployed second pass: a likely-sounding frame the text model
    disbelieves loses to a less likely one it reads well, once w is large enough."""
    texts = ["set a timer for ten minutes | timer_set | duration=ten minutes",
             "set a timer for ten minutes | alarm_set | time=ten minutes"]
    data = ([utt()], [cands("timer-1", texts, logprobs=[-3.0, -1.0])])

    def text_model(utterances, candidates):        # log p_text(frame | transcript) per candidate
        return [[-0.5 if c.frame.intent == "timer_set" else -4.0 for c in cs] for cs in candidates]

    assert REWARDS["agreement"](teacher=text_model, text_weight=0.0)(*data) == [[-3.0, -1.0]]
    assert REWARDS["agreement"](teacher=text_model, text_weight=1.0)(*data) == [[-3.5, -5.0]]
    combined = build_reward_fns({"agreement": {"weight": 1.0, "text_weight": 4.0}}, teacher=text_model)
    assert combined(*data) == [[-5.0, -17.0]]


def test_agreement_adds_the_stock_bonus_to_stock_readings_only():
    texts = ["set a timer for ten minutes | timer_set | duration=ten minutes",
             "set a timer for ten minutes | alarm_set | time=ten minutes"]
    row = [Candidate("timer-1", 0, texts[0], [1], logprob=-3.0, count=0, source="stock"),
           Candidate("timer-1", 1, texts[1], [1], logprob=-1.0, count=0, source="text")]

    def text_model(utterances, candidates):
        return [[-1.0 for _ in cs] for cs in candidates]

    fn = REWARDS["agreement"](teacher=text_model, text_weight=2.0, stock_bonus=-8.0)
    assert fn([utt()], [row]) == [[-13.0, -3.0]]
    with pytest.raises(RewardError, match="stock_bonus"):
        REWARDS["agreement"](teacher=text_model, stock_bonus=-math.inf)
