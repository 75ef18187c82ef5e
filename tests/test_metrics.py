import pytest

from assistant.metrics import score_frames, slot_counts, slu_f1_counts, wer


def test_wer_hand_computed_corpus():
    # "turn on the lights" -> "turn the light": 1 deletion (on) + 1 substitution (lights/light);
    # "set an alarm" -> "set the alarm please": 1 substitution + 1 insertion. 4 edits / 7 reference words.
    assert wer(["turn on the lights", "set an alarm"], ["turn the light", "set the alarm please"]) == pytest.approx(4 / 7)
    assert wer(["turn on the lights"], ["turn on the lights"]) == 0.0
    # corpus-level, not a mean of per-sentence WERs (that would be (1/4 + 0) / 2 = 1/8)
    assert wer(["turn on the lights", "hi"], ["turn on the", "hi"]) == pytest.approx(1 / 5)


def test_wer_normalises_both_sides_with_the_grammars_word_form():
    assert wer(["Turn ON, the lights."], ["turn on the lights"]) == 0.0
    assert wer(["set an alarm for seven thirty a m"], ["Set an alarm for 7:30 a.m."]) == 0.0
    assert wer(["whats the weather"], ["What's the weather?"]) == 0.0


def test_wer_empty_hypotheses_and_references():
    assert wer(["turn on the lights"], [""]) == 1.0                          # 4 deletions / 4 words
    assert wer(["turn on the lights", "hi"], [None, "hi"]) == pytest.approx(4 / 5)
    assert wer(["", "lights on"], ["hello there", "lights on"]) == pytest.approx(2 / 2)  # 2 insertions
    assert wer([""], ["hello"]) == 1.0                                        # no reference words: / 1
    assert wer([""], [""]) == 0.0 and wer([], []) == 0.0
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])


def test_slot_counts_exact_pairs():
    assert slot_counts({"time": "seven am", "date": "today"}, {"time": "seven am"}) == (1, 0, 1)
    assert slot_counts({}, {"time": "x"}) == (0, 1, 0)
    assert slot_counts({"time": "seven thirty a m"}, {"time": "7:30 a.m."}) == (1, 0, 0)   # normalised values


def test_slu_f1_gives_partial_credit_for_close_fillers():
    tp, fp, fn = slu_f1_counts({"place_name": "new york"}, {"place_name": "new york"})
    assert (tp, fp, fn) == (2.0, 0.0, 0.0)
    # word level: 1 substitution / 2 words = 0.5; char level: 1 substitution / 8 characters = 0.125
    tp, fp, fn = slu_f1_counts({"place_name": "new york"}, {"place_name": "new work"})
    assert (tp, fp, fn) == (2.0, pytest.approx(0.625), pytest.approx(0.625))
    tp, fp, fn = slu_f1_counts({"place_name": "paris"}, {"date": "today"})
    assert (tp, fp, fn) == (0.0, 2.0, 2.0)


def test_score_frames_intent_slots_invalid():
    gold = [{"intent": "a", "slots": {"x": "1"}, "text": "one two"},
            {"intent": "b", "slots": {}, "text": "three"},
            {"intent": "c", "slots": {"y": "2"}, "text": "four"}]
    pred = [{"valid": True, "intent": "a", "slots": {"x": "1"}, "transcript": "one two"},
            {"valid": True, "intent": "a", "slots": {}, "transcript": "three"},
            {"valid": False, "intent": "c", "slots": {"y": "2"}, "transcript": ""}]
    s = score_frames(gold, pred)
    assert s.n == 3
    assert s.intent_accuracy == pytest.approx(1 / 3)   # invalid output never counts as correct
    assert s.invalid_rate == pytest.approx(1 / 3)
    assert s.slot_f1 == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert s.wer == pytest.approx(1 / 4)


def test_error_sources_split_intent_errors_by_transcript_exactness():
    from assistant.data.manifest import Utterance
    from assistant.evaluate import evaluation_report, format_report
    from assistant.inference import Prediction

    def pair(text, heard, intent, said):
        return (Utterance(audio=f"{text}.wav", text=text, intent=intent),
                Prediction(path=f"{text}.wav", valid=True, intent=said, transcript=heard))

    pairs = [pair("lights on", "Lights on.", "on", "on"),          # exact (after normalising), right
             pair("lights off", "lights off", "off", "on"),        # exact, wrong: an NLU error
             pair("music off", "music of", "off", "on"),           # mis-heard, wrong
             pair("music on", "music one", "on", "on")]            # mis-heard, right
    report = evaluation_report([u for u, _ in pairs], [p for _, p in pairs])
    assert report["exact_transcript_rate"] == 0.5
    assert report["intent_accuracy_exact_transcript"] == 0.5
    assert report["intent_accuracy_misheard"] == 0.5
    assert report["intent_errors_misheard_share"] == 0.5
    assert "error sources" in format_report(report)
    no_text = evaluation_report([Utterance(audio="a.wav", text="", intent="on")],
                                [Prediction(path="a.wav", valid=True, intent="on")])
    assert "exact_transcript_rate" not in no_text and "error sources" not in format_report(no_text)
