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


def test_speech_models_side_by_side(tmp_path, capsys):
    """One row per run: the model its supervised stage trained (summary, else sft/config.yaml), training time
    per epoch, real-speech WER and, where the run has a bench.json, latency and peak memory."""
    for name, model, seconds, bench in (("tiny", "tiny.en", 1000.0, None), ("base", "base", 2500.0, (300, 150, 80))):
        run = tmp_path / name
        (run / "sft").mkdir(parents=True)
        summary = _summary("final = supervised + text pass", 0.9, 0.93 if model == "base" else 0.88, (0.7, 0.6))
        summary["test"]["supervised"] = {"intent_accuracy": 0.85, "slot_f1": 0.8, "wer": 0.09}
        summary["nlu"]["dev_intent_accuracy_by_model"] = {"supervised": 0.91}
        if model == "base":    # supervised ships: the text pass's grid holds its dev accuracy alone
            summary["nlu"].update(speech_model="supervised", dev_intent_accuracy_by_choice={"w=0 b=-inf": 0.87})
        summary["real_speech"] = {"fine-tuned": {"wer": 0.05, "slu_wer": 0.6}}
        if model == "base":
            summary["sft_model"] = "base"
        else:
            (run / "sft" / "config.yaml").write_text("model: tiny.en\nepochs: 5\n")
        (run / "sft" / "result.json").write_text(json.dumps({"seconds": seconds}))
        (run / "summary.json").write_text(json.dumps(summary))
        if bench:
            lat = {k: {"3s": {"batch1": {"p50_ms": v, "rtf_p50": v / 3000}}} for k, v in zip(("eager", "onnx", "onnx-int8"), bench)}
            (run / "bench.json").write_text(json.dumps({"latency": lat, "memory": {"eager": {"rss_peak_mb": 900},
                                                                                  "onnx-int8": {"rss_peak_mb": 400}}}))
    assert main([str(tmp_path / "tiny"), str(tmp_path / "base")]) == 0
    rows = [line for line in capsys.readouterr().out.split("## speech models")[1].splitlines() if line.startswith("| ")]
    assert rows[1] == ("| tiny | tiny.en | - / 0.9100 | 0.8500 | 0.8800 | 0.8000 | 0.0900 | 1000 (200) | 0.0500 / 0.60 "
                       "| - | - | - |")
    # no config.yaml: no per-epoch figure; the bench's 3 s row: 300 / 150 / 80 ms, RTF 80 / 3000
    assert rows[2] == ("| base | base | 0.8700 / 0.9100 | 0.8500 | 0.9300 | 0.8000 | 0.0900 | 2500 | 0.0500 / 0.60 "
                       "| 300 / 150 / 80 | 0.027 | 900 / 400 |")


def test_shipped_vs_supervised_text_pass_clip_by_clip(tmp_path):
    """Discordant clips, an exact sign test per run and pooled, and the RSFT fixes the text pass already had."""
    from assistant.main_job import test_predictions_file
    from assistant.report import paired_lines

    shipped = "final = rsft round 1 + text pass"
    # 10 clips, gold intent "x"; 1 = right
    right = {"supervised": [0, 0, 0, 0, 1, 1, 1, 1, 1, 1], "rsft round 1": [1, 1, 1, 0, 1, 1, 1, 1, 1, 0],
             "supervised + text pass": [1, 0, 0, 0, 1, 1, 1, 1, 1, 1], shipped: [1, 1, 1, 1, 1, 1, 1, 1, 1, 0]}
    ids = [f"t{i}" for i in range(10)]
    run = tmp_path / "run"
    (run / "cache").mkdir(parents=True)
    (run / "test_predictions.jsonl").write_text("".join(json.dumps({"id": i, "gold_intent": "x"}) + "\n" for i in ids))
    for system, marks in right.items():
        preds = [{"intent": "x" if m else "y"} for m in marks]
        test_predictions_file(run, system).write_text(json.dumps({"key": "k", "ids": ids, "predictions": preds}))
    summary = {"test": {s: {} for s in right}}
    out = paired_lines([str(run), str(run)], [("a", summary), ("b", summary)])
    # shipped right / supervised + text pass wrong on t1, t2, t3; the reverse on t9: p = P(X >= 3 | n 4) = 5/16
    assert "wrong on 3 clips, the reverse on 1 (sign test p = 0.312), both wrong on 0;" in out
    # rsft alone fixes t0, t1, t2 over supervised alone; t0 was already right with the text pass
    assert "rsft round 1 alone fixes 3 clips over supervised alone, 1 of them already right" in out
    assert "- pooled: 6 vs 2 (sign test p = 0.145)" in out     # P(X >= 6 | n 8) = 37/256
    (run / "cache" / "test_supervised.json").unlink()
    assert "test predictions not kept for supervised" in paired_lines([str(run)], [("a", summary)])
