"""assistant.report: README's tables from main-job summaries, runs side by side."""

import json

from assistant.report import main, system_key


def _summary(final_name, sup, final, cells):
    rep = lambda a: {"intent_accuracy": a, "slot_f1": 0.8, "wer": 0.1}   # noqa: E731
    return {
        "test": {"supervised + text pass": rep(sup), final_name: rep(final)},
        "test_by_part": {"supervised + text pass": {"field": sup, "novel": sup}, final_name: {"field": final, "novel": sup}},
        "test_by_engine_condition": {"kokoro": {"room": {"shipped": cells[0], "stock_cascade": cells[1], "n": 54}}},
        "rsft_rounds": [{"round": 1, "dev": {"intent_accuracy": 0.9}, "utterances": 10,
                         "acceptance": {"n_accepted": 6, "n_candidates": 40, "n_utterances_kept_nothing": 4},
                         "oracle_diagnostics": {"kept_frame_precision": 0.95, "per_part": {"field": {"kept_frame_precision": 0.9}},
                                                "teaches": {"field": {"corrected": 3, "corrupted": 1, "abstained_greedy_wrong": 2}}}}],
        "nlu": {"speech_model": "rsft round 1", "weight": 4, "stock_bonus": "-8",
                "dev_intent_accuracy_by_model": {"supervised": 0.9, "rsft round 1": 0.92}},
        "timings_s": {"sft_s": 10.0},
    }


def test_two_runs_side_by_side(tmp_path, capsys):
    for name, final, sup in (("a", 0.90, 0.88), ("b", 0.86, 0.87)):
        (tmp_path / name).mkdir()
        fname = "final = rsft round 1 + text pass" if name == "a" else "final = supervised + text pass"
        (tmp_path / name / "summary.json").write_text(json.dumps(_summary(fname, sup, final, (0.7, 0.6))))
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    # both runs' finals share one row whatever speech model each shipped: mean 0.88, spread 0.04
    row = next(l for l in out.splitlines() if l.startswith("| final |"))
    assert "| 0.9000 | 0.8600 | 0.8800 | 0.0400 |" in row
    sup = next(l for l in out.splitlines() if l.startswith("| supervised + text pass |"))
    assert "| 0.8800 | 0.8700 | 0.8750 | 0.0100 |" in sup
    assert "shipped: a: final = rsft round 1 + text pass; b: final = supervised + text pass" in out
    assert "| kokoro | room | 54 | 0.7000 | 0.6000 | 0.7000 | 0.6000 |" in out
    assert "| a | 1 | 0.9000 | 6 / 40 | 0.400 | 0.950 | - | 0.900 |" in out and "| 3 / 1 / 2 |" in out
    assert system_key("final = x") == "final" and system_key("supervised") == "supervised"


def test_missing_run_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match="assistant run --output-dir"):
        main([str(tmp_path / "nope")])
