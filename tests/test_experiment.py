"""The experiment's results table: gap closed, per-round rows and the oracle diagnostics section."""

from pathlib import Path

import pytest

from assistant.rsft.experiment import Experiment, ExperimentConfig
from assistant.rsft.types import Candidate, Decision, Scored, write_records


def _result(name, acc, rounds=()):
    test = {"intent_accuracy": acc, "frame_accuracy": acc - 0.1, "slot_f1": 0.5, "slu_f1": 0.6, "wer": 0.2,
            "invalid_rate": 0.0, "n": 10}
    return {"name": name, "test": test, "minutes": 1.0, "rounds": list(rounds)}


def test_write_table_reports_gap_rounds_and_diagnostics(tmp_path, monkeypatch):
    import assistant.rsft.experiment as exp_mod

    monkeypatch.setattr(exp_mod, "REPO_ROOT", tmp_path)
    cfg = ExperimentConfig(output_dir=str(tmp_path / "out"), results_file="results.md")
    exp = Experiment(cfg)
    exp.slice, exp.slice_voices, exp.pool, exp.test = [object()] * 3, ["v1"], [object()] * 2, [object()] * 10
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "u1", "audio": "a.wav", "text": "t", "intent": "alarm_set", "slots": {}}\n'
                    '{"id": "u2", "audio": "b.wav", "text": "t", "intent": "weather_query", "slots": {}}\n')
    exp.paths = {"pool": str(pool), "slice": str(pool)}
    round_dir = tmp_path / "out" / "c_rsft_label_free" / "round_1"
    round_dir.mkdir(parents=True)
    scored = [Scored(Candidate("u1", 0, "t | alarm_query |", greedy=True), {"r": 0.1}, 0.1),
              Scored(Candidate("u1", 1, "t | alarm_set |"), {"r": 0.9}, 0.9),
              Scored(Candidate("u2", 0, "t | weather_query |", greedy=True), {"r": 0.5}, 0.5)]
    write_records(scored, round_dir / "scored.jsonl")
    write_records([Decision("u1", 1, True, ""), Decision("u1", 0, False, ""), Decision("u2", 0, True, "")],
                  round_dir / "decisions.jsonl")
    rd = {"round": 1, "dev_intent_accuracy": 0.5, "acceptance_rate": 0.667, "kept_frame_precision": 1.0,
          "kept_nothing": 0, "mean_reward_all": 0.5, "mean_reward_kept": 0.7, "candidates_per_second": 10.0}
    results = [_result("a_supervised_slice", 0.40), _result("b_pseudo_label", 0.45),
               _result("c_rsft_label_free", 0.50, [rd]), _result("e_oracle_supervised", 0.60)]
    text = exp.write_table(results)
    assert (tmp_path / "results.md").read_text() == text
    lines = {}   # the first row of each condition: the main table
    for line in text.splitlines():
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "+25%" in lines["b_pseudo_label"] and "+50%" in lines["c_rsft_label_free"]
    assert "+100%" in lines["e_oracle_supervised"]
    diag = [line for line in text.splitlines() if line.startswith("| c_rsft_label_free | 1 | 1.000 |")]
    # coverage 1.0, greedy accuracy 0.5, 1 mixed utterance, top-reward pick right, greedy wrong, AUC 1, kept all right
    assert diag and "| 0.500 | 1 | 1.000 | 0.000 | 1.000 | 1.000 |" in diag[0]
    assert (Path(cfg.output_dir) / "results.json").is_file()
    with pytest.raises(KeyError):
        exp.write_table([_result("b_pseudo_label", 0.45)])   # the table is relative to condition a
