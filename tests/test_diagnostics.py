"""Oracle diagnostics of an RSFT round: coverage, greedy accuracy, reward AUC, top-reward pick, kept precision."""

import contextlib
import io
import json

import pytest

from assistant.rsft.diagnostics import round_diagnostics
from assistant.rsft.types import Candidate, Decision, Scored


def _s(uid, index, text, reward, greedy=False):
    return Scored(candidate=Candidate(utt_id=uid, index=index, text=text, greedy=greedy), rewards={"r": reward},
                  reward=reward)


GOLD = {"u1": ("alarm_set", {"time": "seven"}), "u2": ("weather_query", {}), "u3": ("alarm_set", {"time": "six"})}
SCORED = [
    # u1: greedy wrong, a sample right and rewarded higher
    _s("u1", 0, "set an alarm | alarm_query | time=seven", 0.2, greedy=True),
    _s("u1", 1, "set an alarm | alarm_set | time=seven", 0.9),
    # u2: only candidate right
    _s("u2", 0, "weather | weather_query |", 0.5, greedy=True),
    # u3: greedy right intent, wrong slot; a wrong-intent sample rewarded higher; an unparseable one
    _s("u3", 0, "alarm six | alarm_set | time=seven", 0.4, greedy=True),
    _s("u3", 1, "alarm six | weather_query |", 0.8),
    _s("u3", 2, "garbage", 0.1),
]
DECISIONS = [Decision("u1", 1, True, ""), Decision("u1", 0, False, ""), Decision("u2", 0, True, ""),
             Decision("u3", 1, True, ""), Decision("u3", 0, False, ""), Decision("u3", 2, False, "")]


def test_round_diagnostics_by_hand():
    d = round_diagnostics(SCORED, DECISIONS, GOLD)
    assert d["utterances"] == 3 and d["candidates"] == 6 and d["kept"] == 3
    assert d["oracle_coverage"] == 1.0                      # every utterance has a right-intent candidate
    assert d["greedy_accuracy"] == pytest.approx(2 / 3)     # u2, u3
    assert d["mixed_utterances"] == 2                       # u1, u3
    assert d["pick_accuracy"] == 0.5                        # u1 right, u3 wrong
    assert d["greedy_accuracy_mixed"] == 0.5                # u1 wrong, u3 right
    # u1: 1 pair, won; u3: right {0.4} vs wrong {0.8, 0.1}: 1 of 2 -> (1 + 1) / 3
    assert d["reward_auc"] == pytest.approx(2 / 3)
    assert d["kept_precision"] == pytest.approx(2 / 3)      # u1#1, u2#0 right; u3#1 wrong
    assert d["kept_precision_greedy"] == 1.0                # the only kept greedy one is u2#0
    assert d["frame_oracle_coverage"] == pytest.approx(2 / 3)  # u3 has no exactly right frame
    assert d["frame_greedy_accuracy"] == pytest.approx(1 / 3)
    assert d["kept_greedy_share"] == pytest.approx(1 / 3)


def test_utterances_without_gold_are_ignored_and_empty_input_is_safe():
    d = round_diagnostics(SCORED, DECISIONS, {"u2": GOLD["u2"]})
    assert d["utterances"] == 1 and d["pick_accuracy"] is None and d["reward_auc"] is None
    empty = round_diagnostics([], [], GOLD)
    assert empty["utterances"] == 0 and empty["kept_precision"] is None


def test_teaching_table_says_what_a_round_can_teach_per_part():
    """u1: greedy frame wrong, kept right (corrected); u2: both right (confirmed); u3: greedy frame wrong
    (slot), kept wrong (a confirmed error); u4: greedy right, nothing kept (abstained)."""
    gold = {**GOLD, "u4": ("weather_query", {})}
    scored = SCORED + [_s("u4", 0, "weather | weather_query |", 0.1, greedy=True)]
    decisions = DECISIONS + [Decision("u4", 0, False, "abstain: test")]
    parts = {"u1": "field", "u2": "seen", "u3": "field", "u4": "seen"}
    table = round_diagnostics(scored, decisions, gold, parts)["teaches"]
    zero = dict.fromkeys(["corrected", "corrupted", "confirmed", "confirmed_errors", "abstained_greedy_wrong",
                          "abstained_greedy_right", "intent_only_right", "intent_only_wrong"], 0)
    assert table == {"field": {**zero, "corrected": 1, "confirmed_errors": 1},
                     "seen": {**zero, "confirmed": 1, "abstained_greedy_right": 1}}
    # kept for the intent only (accept.abstain_scope): counted apart, by the intent (u3's kept intent is wrong;
    # u4's right though it was never a whole-frame question)
    scoped = [Decision("u3", 1, True, "abstain (kept ...)", scope="intent") if (d.utt_id, d.index) == ("u3", 1)
              else d for d in decisions[:-1]] + [Decision("u4", 0, True, "abstain (kept ...)", scope="intent")]
    table = round_diagnostics(scored, scoped, gold, parts)["teaches"]
    assert table == {"field": {**zero, "corrected": 1, "intent_only_wrong": 1},
                     "seen": {**zero, "confirmed": 1, "intent_only_right": 1}}
    assert set(round_diagnostics(SCORED, DECISIONS, GOLD)["teaches"]) == {"unknown"}   # no parts given


def test_compare_rewards_ranks_each_reward_alone():
    from dataclasses import replace

    from assistant.rsft.diagnostics import compare_rewards

    # a second reward that is right where "r" is wrong on u3 (prefers the greedy, right-intent-wrong-slot
    # candidate: still a wrong frame) and blind on u1
    extra = {"flat": {(s.utt_id, s.index): 0.0 for s in SCORED}}
    scored = [replace(s, rewards={"r": s.reward, "neg": -s.reward}) for s in SCORED]
    out = compare_rewards(scored, GOLD, {"u1": "field", "u2": "seen", "u3": "field"}, extra)
    assert set(out) == {"neg", "r", "total", "flat"}
    # r: u1 top right, u2 right, u3 top wrong (no right frame at all) -> 2/3; neg: u1 wrong -> 1/3
    assert out["r"]["top_precision"] == pytest.approx(2 / 3)
    assert out["neg"]["top_precision"] == pytest.approx(1 / 3)
    assert out["r"]["frame_reward_auc"] == 1.0 and out["neg"]["frame_reward_auc"] == 0.0
    assert out["r"]["top_precision_by_part"] == {"field": 0.5, "seen": 1.0}
    # ties: the greedy candidate wins, so a blind reward is greedy pseudo-labelling (u1 greedy wrong)
    assert out["flat"]["top_precision"] == pytest.approx(1 / 3) and out["flat"]["frame_reward_auc"] == 0.5


def test_kept_by_and_against_say_what_abstaining_gave_up():
    """Round A (abstains on u3, u4) next to round B (labels every clip): on A's kept clips both are judged,
    on the clips A left out only B; per group, the share labelled and their precision."""
    from assistant.rsft.diagnostics import against, kept_by, kept_frames

    gold = {**GOLD, "u4": ("weather_query", {})}
    scored = SCORED + [_s("u4", 0, "weather | weather_query |", 0.1, greedy=True)]
    a = kept_frames(scored, [Decision("u1", 1, True, ""), Decision("u2", 0, True, ""),
                             Decision("u3", 1, False, "abstain: test"), Decision("u4", 0, False, "abstain: test")])
    b = kept_frames(scored, [Decision("u1", 0, True, ""), Decision("u2", 0, True, ""), Decision("u3", 0, True, ""),
                             Decision("u4", 0, True, "")])
    assert set(a) == {"u1", "u2"} and set(b) == {"u1", "u2", "u3", "u4"}
    out = against(a, b, gold)
    # A kept u1 (right), u2 (right); B has u1 wrong (greedy alarm_query), u2 right
    assert out["kept"]["this"] == {"n": 2, "labelled": 2, "labelled_share": 1.0, "intent_precision": 1.0,
                                   "frame_precision": 1.0}
    assert out["kept"]["other"]["intent_precision"] == 0.5
    # left out: u3 (B: alarm_set, a wrong slot) and u4 (B right): intent 1.0, frame 0.5
    assert out["left_out"]["other"] == {"n": 2, "labelled": 2, "labelled_share": 1.0, "intent_precision": 1.0,
                                        "frame_precision": 0.5}
    assert out["all"]["this"]["labelled_share"] == 0.5
    by = kept_by(a, gold, {"u1": "room", "u2": "clean", "u3": "room"})
    assert by == {"clean": {"n": 1, "labelled": 1, "labelled_share": 1.0, "intent_precision": 1.0, "frame_precision": 1.0},
                  "room": {"n": 2, "labelled": 1, "labelled_share": 0.5, "intent_precision": 1.0, "frame_precision": 1.0},
                  "unknown": {"n": 1, "labelled": 0, "labelled_share": 0.0, "intent_precision": None,
                              "frame_precision": None}}


def test_against_from_persisted_round_folders(tmp_path):
    """The command reads two round folders and the pool manifest (its hidden labels and conditions)."""
    from assistant.rsft.diagnostics import main
    from assistant.rsft.types import write_records

    pool = tmp_path / "pool.jsonl"
    rows = [{"audio": f"{u}.flac", "text": "x", "intent": gold[0], "slots": gold[1], "id": u, "labels_hidden": True,
             "condition": cond} for (u, gold), cond in zip(GOLD.items(), ["clean", "room", "room"])]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, decisions in (("a", DECISIONS), ("b", [Decision(d.utt_id, d.index, d.index == 0, "") for d in DECISIONS])):
        (tmp_path / name).mkdir()
        write_records(SCORED, tmp_path / name / "scored.jsonl")
        write_records(decisions, tmp_path / name / "decisions.jsonl")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(tmp_path / "a"), str(pool), "--against", str(tmp_path / "b")]) == 0
    out = json.loads(buf.getvalue())
    assert out["kept"] == 3 and out["kept_by"]["condition"]["room"]["labelled"] == 2
    # a keeps u1#1 (right), u2 (right), u3#1 (wrong intent); b keeps the greedy ones: u1 wrong, u2 right, u3 right
    assert out["against"]["kept"]["this"]["intent_precision"] == pytest.approx(2 / 3)
    assert out["against"]["kept"]["other"]["intent_precision"] == pytest.approx(2 / 3)
    assert out["against"]["left_out"]["other"]["n"] == 0
    assert out["against"]["other_kept_by"]["condition"]["clean"]["intent_precision"] == 0.0
    assert "targets" not in out                               # no kept.jsonl in these folders


def test_target_transcripts_wer_against_gold_text(tmp_path):
    """The fine-tuning targets' transcripts (kept.jsonl) against the gold text, next to greedy's."""
    from assistant.rsft.diagnostics import target_transcripts

    gold_text = {"u1": "set an alarm for seven", "u2": "weather", "u3": "alarm six"}
    kept = tmp_path / "kept.jsonl"
    rows = [{"id": "u1#1", "target": "set an alarm for seven | alarm_set | time=seven"},   # 0 edits / 5 words
            {"id": "u2#0", "target": "whether | weather_query |"},                         # 1 / 1
            {"id": "lab-1", "target": "gold | alarm_set |"}]                               # the labelled set
    kept.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = target_transcripts(kept, SCORED, gold_text)
    assert out["n_clips"] == 2 and out["target_wer"] == pytest.approx(1 / 6)
    # one draw per clip in SCORED with the kept frame: u1's MBR is its kept sample's, u2's the greedy "weather"
    assert out["mbr_target_wer"] == pytest.approx(2 / 6)
    # greedy: u1 "set an alarm" (2 deletions / 5), u2 "weather" (0 / 1); pool adds u3 "alarm six" (0 / 2)
    assert out["greedy_wer_same_clips"] == pytest.approx(2 / 6)
    assert out["greedy_wer_pool"] == pytest.approx(2 / 8)
    assert target_transcripts(tmp_path / "missing.jsonl", SCORED, gold_text) is None


def test_mbr_transcript_votes_over_words_not_whole_transcripts():
    """Three draws disagree on one word each; no whole transcript wins a majority, the word-level vote does."""
    from assistant.rsft.diagnostics import mbr_transcript

    def c(i, text, count=1, greedy=False, source="sample"):
        return Candidate(utt_id="u", index=i, text=text, count=count, greedy=greedy, source=source)

    cands = [c(0, "set alarm for seven | alarm_set | time=seven", greedy=True),
             c(1, "set an alarm at seven | alarm_set | time=seven"),
             c(2, "set an alarm for seven | alarm_set | time=seven", count=0, source="text"),   # a reading
             c(3, "sat an alarm for seven | alarm_set | time=seven"),
             c(4, "weather please | weather_query |", count=2)]
    # word edits to the draws with the chosen frame (0, 1, 3): "set an alarm for seven" 1+1+1 = 3 beats each
    # draw's own (4 each); the other frame's draws neither compete nor vote
    assert mbr_transcript(cands, cands[0]) == "set an alarm for seven"
    assert mbr_transcript(cands, cands[4]) == "weather please"
    assert mbr_transcript([cands[2]], cands[2]) == "set an alarm for seven"       # no draws: the chosen one's


def test_confidence_curve_replays_the_rule_with_curriculum_shares(tmp_path):
    """The surest clips (vote share) carry the right labels here: precision falls as the share grows; the
    command draws the curve."""
    from assistant.rsft.diagnostics import confidence_curve, main
    from assistant.rsft.types import write_records

    gold = {"a": ("alarm_set", {}), "b": ("alarm_set", {}), "c": ("alarm_set", {}), "d": ("alarm_set", {})}
    votes = {"a": (9, 1), "b": (8, 2), "c": (5, 4), "d": (4, 3)}     # candidate 0's frame is right for a, b, d
    scored = [Scored(Candidate(u, i, f"x | {intent} |", [1], count=n), {"r": float(n)}, float(n))
              for u, counts in votes.items()
              for i, (n, intent) in enumerate(zip(counts, ("alarm_set" if u != "c" else "weather_query",
                                                            "weather_query" if u != "c" else "alarm_set")))]
    curve = confidence_curve(scored, gold, [0.5, 0.75, 1.0])
    assert [c["labelled"] for c in curve] == [2, 3, 4]
    assert [c["intent_precision"] for c in curve] == pytest.approx([1.0, 1.0, 0.75])   # d (0.57) before c (0.56)
    (tmp_path / "run" / "round_1").mkdir(parents=True)
    write_records(scored, tmp_path / "run" / "round_1" / "scored.jsonl")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"audio": f"{u}.flac", "text": "x", "intent": g[0], "id": u,
                                        "labels_hidden": True}) + "\n" for u, g in gold.items()))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(tmp_path / "run" / "round_1"), str(pool), "--shares", "0.5,1",
                     "--plot", str(tmp_path / "curve.png")]) == 0
    out = json.loads(buf.getvalue())
    assert out["rule"] == "best_of_n" and [c["intent_precision"] for c in out["confidence_curve"]] == [1.0, 0.75]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(tmp_path / "run" / "round_1"), str(pool), "--shares", "0"]) != 0


def test_weight_grid_tries_every_weighting_against_total_and_oracle(tmp_path):
    from dataclasses import replace

    from assistant.rsft.diagnostics import main, parse_grid, weight_grid
    from assistant.rsft.types import write_records

    # "r" is right on u1 and wrong on u3; "neg" the reverse order; u3 has no right frame at all
    scored = [replace(s, rewards={"r": s.reward, "neg": -s.reward}) for s in SCORED]
    parts = {"u1": "field", "u2": "seen", "u3": "field"}
    out = weight_grid(scored, GOLD, {"r": [0.0, 1.0], "neg": [0.0, 1.0]}, parts)
    assert out["combinations"] == 4
    assert out["best"][0]["weights"] == {"neg": 0.0, "r": 1.0}
    assert out["best"][0]["top_precision"] == pytest.approx(2 / 3)
    # every other weighting picks u1's wrong greedy frame (all-zero weights tie: greedy wins) -> 1/3
    assert [r["top_precision"] for r in out["best"][1:]] == pytest.approx([1 / 3] * 3)
    zero = next(r for r in out["best"] if r["weights"] == {"neg": 0.0, "r": 0.0})
    assert zero["top_precision_by_part"] == {"field": 0.0, "seen": 1.0}
    assert out["round_total"]["top_precision"] == pytest.approx(2 / 3)
    assert out["oracle"]["top_precision"] == pytest.approx(2 / 3)      # u3 cannot be right
    with pytest.raises(ValueError, match="does not hold"):
        weight_grid(scored, GOLD, {"vote": [1.0]})
    assert parse_grid("agreement=0,0.5; vote=1") == {"agreement": [0.0, 0.5], "vote": [1.0]}
    for bad in ("agreement", "agreement=a,b", "=1", ""):
        with pytest.raises(ValueError, match="--grid"):
            parse_grid(bad)
    # through the CLI on a persisted round folder
    write_records(scored, tmp_path / "scored.jsonl")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": u, "audio": f"{u}.flac", "text": "x", "intent": i, "slots": sl}) + "\n"
                            for u, (i, sl) in GOLD.items()))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(tmp_path), str(pool), "--grid", "r=1;neg=0,1"]) == 0
    assert json.loads(buf.getvalue())["best"][0]["weights"] == {"neg": 0.0, "r": 1.0}
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path), str(pool), "--grid", "r=1", "--shares", "1"]) != 0


def test_pick_misses_sorts_each_wrong_pick_by_what_could_have_fixed_it(tmp_path):
    from assistant.rsft.diagnostics import main, pick_misses
    from assistant.rsft.types import write_records

    gold = {**GOLD, "u4": ("alarm_set", {"time": "six"}), "u5": ("alarm_set", {"time": "six"})}
    scored = SCORED + [
        # u4: the top frame mis-reads a right hearing (a right frame shares its transcript)
        _s("u4", 0, "alarm six | alarm_query | time=six", 0.9, greedy=True),
        _s("u4", 1, "alarm six | alarm_set | time=six", 0.5),
        # u5: the top frame comes from a mis-hearing; the right frame was heard otherwise, ranked 2nd
        _s("u5", 0, "alarm sex | weather_query |", 0.9, greedy=True),
        _s("u5", 1, "alarm six | alarm_set | time=six", 0.3),
    ]
    groups = {"u1": "field/room", "u3": "field/room", "u4": "field/room", "u2": "seen/clean", "u5": "seen/clean"}
    out = pick_misses(scored, gold, groups)
    assert out["utterances"] == 5
    assert out["counts"]["all"] == {"top_right": 2, "right_same_transcript": 1, "right_other_transcript": 1,
                                    "none_right": 1}                     # u1, u2 | u4 | u5 | u3 (slot wrong)
    assert out["counts"]["field/room"] == {"top_right": 1, "right_same_transcript": 1,
                                           "right_other_transcript": 0, "none_right": 1}
    assert out["shares"]["seen/clean"]["right_other_transcript"] == 0.5
    assert out["rank_coverage"] == pytest.approx({"1": 0.4, "2": 0.8, "3": 0.8, "any": 0.8})
    # through the CLI; one question per call
    write_records(scored, tmp_path / "scored.jsonl")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": u, "audio": f"{u}.flac", "text": "x", "intent": i, "slots": sl,
                                        "part": groups[u].split("/")[0], "condition": groups[u].split("/")[1]}) + "\n"
                            for u, (i, sl) in gold.items()))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main([str(tmp_path), str(pool), "--misses"]) == 0
    assert json.loads(buf.getvalue())["counts"]["seen/clean"]["top_right"] == 1
    with contextlib.redirect_stderr(io.StringIO()):
        assert main([str(tmp_path), str(pool), "--misses", "--grid", "r=1"]) != 0
