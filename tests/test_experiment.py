"""`assistant experiment`: the label-scarce table over seeds (mean, per seed, spread, gap closed, selected
round, fall-back to the start), its JSON, the config it runs by default, a 2-seed run of every condition
(training, RSFT and scoring stubbed: what each condition runs with, resuming) and one condition for real on
a tiny random model, fixture audio and an untrained MiniLM teacher."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from assistant.config import load_config, save_yaml
from assistant.rsft.experiment import (MAIN_CONDITIONS, Experiment, ExperimentConfig, condition_names,
                                       rsft_conditions, summarize)
from assistant.rsft.types import Candidate, Decision, Scored, write_records

ROOT = Path(__file__).resolve().parents[1]
FSC = Path(__file__).parent / "fixtures" / "fsc" / "data"
CONDITION_KEYS = {"test_intent_accuracy_mean", "test_intent_accuracy_per_seed", "gap_closed", "selected_round",
                  "fell_back_to_start", "test_text_pass_intent_accuracy_mean", "test_text_pass_intent_accuracy_per_seed",
                  "text_pass_gap_closed"}


def _result(name, acc, seed=0, best_round=None, rounds=()):
    test = {"intent_accuracy": acc, "frame_accuracy": acc - 0.1, "slot_f1": 0.5, "slu_f1": 0.6, "wer": 0.2,
            "invalid_rate": 0.0, "n": 10}
    return {"name": name, "seed": seed, "test": test, "minutes": 1.0, "rounds": list(rounds), "best_round": best_round}


def _two_seeds():
    return [_result("a_supervised_slice", 0.40, 0), _result("a_supervised_slice", 0.44, 1),
            _result("b_pseudo_label", 0.42, 0, 1), _result("b_pseudo_label", 0.46, 1, 2),
            _result("c_rsft_label_free", 0.50, 0, 2), _result("c_rsft_label_free", 0.44, 1, 0),
            _result("e_oracle_supervised", 0.60, 0), _result("e_oracle_supervised", 0.64, 1)]


def test_summary_means_over_seeds_gap_from_the_means_and_fall_back():
    s = summarize(_two_seeds(), [0, 1])
    assert list(s) == ["a_supervised_slice", "b_pseudo_label", "c_rsft_label_free", "e_oracle_supervised"]
    assert all(set(row) == CONDITION_KEYS for row in s.values())
    assert s["a_supervised_slice"]["test_intent_accuracy_mean"] == pytest.approx(0.42)
    assert s["c_rsft_label_free"]["test_intent_accuracy_per_seed"] == [0.50, 0.44]
    # gap closed from the means: a 0.42, e 0.62, b 0.44 -> 10 %, c 0.47 -> 25 %
    assert s["a_supervised_slice"]["gap_closed"] == pytest.approx(0.0)
    assert s["e_oracle_supervised"]["gap_closed"] == pytest.approx(1.0)
    assert s["b_pseudo_label"]["gap_closed"] == pytest.approx(0.10)
    assert s["c_rsft_label_free"]["gap_closed"] == pytest.approx(0.25)
    # c's seed 1 selected round 0: the starting model; supervised rows have no round and never fall back
    assert s["c_rsft_label_free"]["selected_round"] == [2, 0]
    assert s["c_rsft_label_free"]["fell_back_to_start"] == [False, True]
    assert s["b_pseudo_label"]["fell_back_to_start"] == [False, False]
    assert s["a_supervised_slice"]["selected_round"] == [None, None]
    assert s["a_supervised_slice"]["fell_back_to_start"] == [False, False]
    # no oracle: no gap; a missing seed is None and left out of the mean
    s = summarize([r for r in _two_seeds() if r["name"] != "e_oracle_supervised"][:-1], [0, 1])
    assert s["b_pseudo_label"]["gap_closed"] is None
    assert s["c_rsft_label_free"]["test_intent_accuracy_per_seed"] == [0.50, None]
    assert s["c_rsft_label_free"]["test_intent_accuracy_mean"] == pytest.approx(0.50)
    # the gap is relative to condition a: none without it
    assert summarize([_result("b_pseudo_label", 0.45)], [0])["b_pseudo_label"]["gap_closed"] is None


def test_write_table_reports_seeds_fall_back_json_and_diagnostics(tmp_path, monkeypatch):
    import assistant.rsft.experiment as exp_mod

    monkeypatch.setattr(exp_mod, "REPO_ROOT", tmp_path)
    cfg = ExperimentConfig(output_dir=str(tmp_path / "out"), results_file="results.md")
    exp = Experiment(cfg)
    exp.pool, exp.test = [object()] * 2, [object()] * 10
    exp.seed_info = {0: {"slice": 3, "voices": ["v1"]}, 1: {"slice": 4, "voices": ["v2"]}}
    exp.peer = {"intent_accuracy": 0.55, "wer": 0.1, "n": 10, "intent_accuracy_by_part": {"seen": 0.6, "novel": 0.5}}
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"id": "u1", "audio": "a.wav", "text": "t", "intent": "alarm_set", "slots": {}}\n'
                    '{"id": "u2", "audio": "b.wav", "text": "t", "intent": "weather_query", "slots": {}}\n')
    exp.pool_path = str(pool)
    round_dir = tmp_path / "out" / "seed_0" / "c_rsft_label_free" / "round_1"
    round_dir.mkdir(parents=True)
    scored = [Scored(Candidate("u1", 0, "t | alarm_query |", greedy=True), {"r": 0.1}, 0.1),
              Scored(Candidate("u1", 1, "t | alarm_set |"), {"r": 0.9}, 0.9),
              Scored(Candidate("u2", 0, "t | weather_query |", greedy=True), {"r": 0.5}, 0.5)]
    write_records(scored, round_dir / "scored.jsonl")
    write_records([Decision("u1", 1, True, ""), Decision("u1", 0, False, ""), Decision("u2", 0, True, "")],
                  round_dir / "decisions.jsonl")
    rd = {"round": 1, "dev_intent_accuracy": 0.5, "acceptance_rate": 0.667, "kept_frame_precision": 1.0,
          "kept_nothing": 0, "mean_reward_all": 0.5, "mean_reward_kept": 0.7, "candidates_per_second": 10.0}
    results = _two_seeds()
    results[4] = _result("c_rsft_label_free", 0.50, 0, 1, [rd])
    text = exp.write_table(results)
    assert (tmp_path / "results.md").read_text() == text
    rows = {}   # the first row of each condition: the main table
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    c = rows["c_rsft_label_free"].split(" | ")
    assert c[1:5] == ["0.4700", "0.5000, 0.4400", "0.0600", "+25%"]
    assert c[5] == "1, 0 (fell back to start)"
    assert "fell back" not in rows["b_pseudo_label"] and "+10%" in rows["b_pseudo_label"]
    assert rows["a_supervised_slice"].split(" | ")[5] == "-" and "+100%" in rows["e_oracle_supervised"]
    assert "seed 0: 3 utterances of voices v1; seed 1: 4 utterances of voices v2" in text
    diag = [line for line in text.splitlines() if line.startswith("| c_rsft_label_free | 0 | 1 | 1.000 |")]
    # coverage 1.0, greedy accuracy 0.5, 1 mixed utterance, top-reward pick right, greedy wrong, AUC 1, kept all right
    assert diag and "| 0.500 | 1 | 1.000 | 0.000 | 1.000 | 1.000 |" in diag[0]
    assert diag[0].endswith("| 1 | 0 | 0 | - |")   # u1 corrected (greedy wrong, kept right); u2 confirmed right
    assert "stock Whisper's transcript -> the text NLU: intent accuracy 0.5500 (novel 0.5000, seen 0.6000), " \
           "WER 0.1000" in text
    assert rows["c_rsft_label_free"].split(" | ")[11:15] == ["-", "-, -", "-", "-"]   # no text pass scored here
    table = json.loads((tmp_path / "results.json").read_text())
    assert set(table) == {"conditions", "config", "n_test", "stock_cascade"} and table["n_test"] == 10
    assert table["stock_cascade"]["intent_accuracy"] == 0.55
    assert table["config"]["seeds"] == [0, 1]
    assert table["conditions"]["c_rsft_label_free"]["fell_back_to_start"] == [False, True]
    assert table["conditions"]["c_rsft_label_free"]["gap_closed"] == pytest.approx(0.25)
    assert (Path(cfg.output_dir) / "results.json").is_file()      # every seed's raw results


def test_default_config_is_the_issue_table():
    cfg = load_config(ExperimentConfig, ROOT / "recipes" / "configs" / "experiment.yaml")
    assert cfg.seeds == [0, 1] and cfg.test_limit is None and cfg.corpus == "data/generated/default"
    assert cfg.train.dev_limit is None and cfg.rsft.finetune.dev_limit is None
    # c is the readings recipe, its nested sections included (a key set here leaves the others alone)
    readings = load_config(type(cfg.rsft), ROOT / "recipes" / "configs" / "rsft_readings.yaml")
    for key in ("generate", "rewards", "accept", "transcript_target", "mix_labelled", "from_base"):
        assert getattr(cfg.rsft, key) == getattr(readings, key), key
    # ... but each round trains with the supervised recipe's schedule (dev 0.78 vs 0.70 for one light epoch),
    # and (a), (e) and every round keep the 2 frozen encoder layers the ledger's rows were measured with
    assert cfg.train.freeze_encoder_layers == 2
    schedule = {"epochs": 5, "lr": 0.001, "warmup_steps": 30, "freeze_encoder_layers": 2}
    assert replace(cfg.rsft.finetune, dev_limit=None) == replace(readings.finetune, dev_limit=None, **schedule)
    names = condition_names(cfg)
    assert names[:6] == list(MAIN_CONDITIONS)
    assert names[6:] == ["x_reward_agreement_only", "x_abstention_off", "x_abstention_soft",
                         "x_abstention_curriculum", "x_abstention_intent", "x_targets_sampled", "x_encoder_frozen", "x_n_16",
                         "x_finetune_light", "x_rounds_3"]
    assert "x_reward_target_likelihood" in condition_names(replace(cfg, include_target_likelihood=True))
    assert condition_names(replace(cfg, ablation=False)) == list(MAIN_CONDITIONS)
    specs = dict(rsft_conditions(cfg))
    assert specs["b_prime_pseudo_label_text_pass"] == {
        "generate": {"num_samples": 0, "readings": ["text", "stock"]}, "rewards": {"agreement": 1.0},
        "accept": {"rule": "best_of_n", "k": 1, "min_vote": 0.0, "min_text_confidence": 0.0}}
    assert specs["c_rsft_label_free"] == {}
    assert specs["x_encoder_frozen"] == {"finetune": {"freeze_encoder_layers": None}}
    assert specs["x_abstention_curriculum"] == {"accept": {"min_vote": 0.0, "min_text_confidence": 0.0,
                                                           "curriculum": [0.7, 1.0]}}
    assert specs["x_abstention_intent"] == {"accept": {"abstain_weight": 1.0, "abstain_scope": "intent"}}
    assert specs["x_rounds_3"] == {"rounds": 3}


def test_a_record_saved_before_a_setting_existed_is_unchanged_while_it_has_its_default():
    """Ledger records keep the config they ran with; a setting added since (at its default) is no change."""
    from assistant.config import to_dict
    from assistant.rsft.experiment import _changed
    from assistant.rsft.loop import RSFTConfig

    cfg = RSFTConfig(rounds=2)
    saved = json.loads(json.dumps(to_dict(cfg)))
    for key in ("curriculum", "abstain_weight"):
        del saved["accept"][key]
    assert _changed(saved, cfg, "c_rsft_label_free") == []
    assert _changed(saved, replace(cfg, accept=replace(cfg.accept, abstain_weight=0.25)), "c_rsft_label_free") \
        == ["accept"]
    assert _changed({**saved, "rounds": 1}, cfg, "c_rsft_label_free") == ["rounds"]


@pytest.fixture
def tiny_corpus(tmp_path):
    """train / pool / dev / test from the FSC fixture (two train voices; the pool's labels hidden)."""
    from assistant.data.manifest import read_manifest, write_jsonl

    train, valid = read_manifest(FSC / "train_data.csv"), read_manifest(FSC / "valid_data.csv")
    corpus = tmp_path / "corpus"
    write_jsonl(train, corpus / "train.jsonl", relative=False)
    write_jsonl([replace(u, id=f"pool-{i}", meta={**u.meta, "labels_hidden": True}) for i, u in enumerate(train + valid)],
                corpus / "pool.jsonl", relative=False)
    write_jsonl(train[:2], corpus / "dev.jsonl", relative=False)
    write_jsonl(valid + train[:1], corpus / "test.jsonl", relative=False)
    (corpus / "holdout.json").write_text("{}")   # read by the teacher only, which is a fresh one here
    return corpus


def _record(w: float, b: float) -> dict:
    """text_pass_on_dev's per-clip record on 10 dev clips: alone 5 right, the pass with (w, b) 6."""
    return {"w=0 b=-inf": np.arange(10) < 5, f"w={w:g} b={b:g}": np.arange(10) < 6}


def _tiny_config(corpus, out, **kw):
    values = dict(corpus=str(corpus), output_dir=str(out / "out"), results_file="results/table.md", labelled_voices=1,
                  seeds=[0, 1],
                  train={"tiny_random": True, "max_steps": 2, "batch_size": 4, "dev_limit": 4, "warmup_steps": 1,
                         "lora_rank": 0, "freeze_encoder_layers": None},
                  rsft={"rounds": 1, "generate": {"num_samples": 2, "max_new_tokens": 12},
                        "finetune": {"max_steps": 1, "batch_size": 4, "dev_limit": 4, "warmup_steps": 1, "lora_rank": 0}})
    values.update(kw)
    return load_config(ExperimentConfig, None, **values)


def test_two_seed_run_writes_every_condition_per_seed_and_resumes(tiny_corpus, tmp_path, monkeypatch, capsys):
    """The orchestration over 2 seeds, with training, RSFT, the dev text pass and test scoring stubbed:
    what each condition is run with, the JSON's keys and names, fall-back rows, and resuming."""
    import math

    import assistant.rsft.experiment as exp_mod

    monkeypatch.setattr(exp_mod, "REPO_ROOT", tmp_path)
    calls = []

    def fake_train(tcfg):
        calls.append(("train", tcfg))
        best = Path(tcfg.output_dir) / "best"
        best.mkdir(parents=True, exist_ok=True)
        save_yaml(tcfg, Path(tcfg.output_dir) / "config.yaml")          # as recipe_main does
        return {"best_dir": str(best), "best_dev": {"intent_accuracy": 0.5}}

    def fake_rsft(rcfg):
        calls.append(("rsft", rcfg))
        out = Path(rcfg.output_dir)
        # x_abstention_off's seed 1: no round beats the start on dev, selection falls back to (a)
        fell_back = out.name == "x_abstention_off" and rcfg.seed == 1
        best = out / "round_1" / "train" / "best"
        best.mkdir(parents=True, exist_ok=True)
        save_yaml(rcfg, out / "config.yaml")                            # as run_rsft does
        rd = {"round": 1, "dev": {"intent_accuracy": 0.5}, "candidates_per_second": 1.0,
              "acceptance": {"acceptance_rate": 0.5, "n_utterances_kept_nothing": 1, "mean_reward_all": 0.0,
                             "mean_reward_kept": 1.0}, "oracle_diagnostics": {"kept_frame_precision": 0.9}}
        return {"best_dir": rcfg.init_model if fell_back else str(best), "best_round": 0 if fell_back else 1,
                "init_dev": {"intent_accuracy": 0.5}, "rounds": [rd]}

    names = condition_names(ExperimentConfig(ablation=True))

    def fake_test(model_dir, test, schema):       # the condition's index + the seed, read from the folder
        seed_dir = next(p for p in Path(model_dir).parents if p.name.startswith("seed_"))
        name = Path(model_dir).relative_to(seed_dir).parts[0].replace("a_retrained_start", "a_supervised_slice")
        return {"intent_accuracy": 0.4 + 0.01 * names.index(name) + 0.1 * int(seed_dir.name[5:]),
                "frame_accuracy": 0.3, "slot_f1": 0.5, "slu_f1": 0.6, "wer": 0.2, "invalid_rate": 0.0, "n": len(test)}

    def fake_text_pass(name, model_dir, dev, teacher, dev_stock):
        w, b = (2.0, 4.0) if "seed 0" in name else (3.0, -math.inf)    # seed 1's pass never uses the stock reading
        return _record(w, b)

    monkeypatch.setattr(exp_mod, "recipe_main", fake_train)
    monkeypatch.setattr(exp_mod, "run_rsft", fake_rsft)
    monkeypatch.setattr(exp_mod, "_test_scores", fake_test)
    monkeypatch.setattr(exp_mod, "text_pass_on_dev", fake_text_pass)
    monkeypatch.setattr(Experiment, "teacher", lambda self: None)
    monkeypatch.setattr(Experiment, "stock", lambda self, split, model_dir: None)
    deployed = []

    def fake_text_pass_scores(model_dir, nlu_pass, test, schema, stock):
        deployed.append((model_dir, nlu_pass.weight))
        return {**fake_test(model_dir, test, schema), "intent_accuracy_by_part": {"seen": 1.0}}

    monkeypatch.setattr(exp_mod, "_text_pass_scores", fake_text_pass_scores)
    cfg = _tiny_config(tiny_corpus, tmp_path)
    exp = Experiment(cfg)
    exp.setup()
    exp.write_table(exp.run())

    table = json.loads((tmp_path / "results" / "table.json").read_text())
    assert set(table) == {"conditions", "config", "n_test", "stock_cascade"} and table["n_test"] == 3
    assert list(table["conditions"]) == names == [
        "a_supervised_slice", "b_pseudo_label", "b_prime_pseudo_label_text_pass", "c_rsft_label_free",
        "d_rsft_gold_label", "e_oracle_supervised", "x_reward_agreement_only", "x_abstention_off",
        "x_abstention_soft", "x_abstention_curriculum", "x_abstention_intent", "x_targets_sampled",
        "x_encoder_frozen", "x_n_16",
        "x_finetune_light", "x_rounds_3"]
    out = tmp_path / "out"
    for name, row in table["conditions"].items():
        assert set(row) == CONDITION_KEYS, name
        i = names.index(name)
        assert row["test_intent_accuracy_per_seed"] == pytest.approx([0.4 + 0.01 * i, 0.5 + 0.01 * i]) or \
            (name, row["fell_back_to_start"]) == ("x_abstention_off", [False, True])
        assert row["test_intent_accuracy_mean"] == pytest.approx(sum(row["test_intent_accuracy_per_seed"]) / 2)
        assert row["gap_closed"] == pytest.approx((row["test_intent_accuracy_mean"] - 0.45) / 0.05)
        assert row["selected_round"] == ([None, None] if name in ("a_supervised_slice", "e_oracle_supervised") else
                                         [1, 0] if name == "x_abstention_off" else [1, 1])
        for seed in (0, 1):
            assert (out / f"seed_{seed}" / name / "result.json").is_file()
    # a row that fell back reports the selected model, i.e. (a)'s test score for that seed, and says so
    fell = table["conditions"]["x_abstention_off"]
    assert fell["fell_back_to_start"] == [False, True]
    assert fell["test_intent_accuracy_per_seed"][1] == pytest.approx(0.5)
    md = (tmp_path / "results" / "table.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("| x_abstention_off |")][0].split(" | ")[5] == \
        "1, 0 (fell back to start)"

    # what each condition ran with: its seed's slice, (a) as the start, the seed, (a)'s text pass, the hold-out
    trained = {(Path(c.output_dir).name, c.seed): c for kind, c in calls if kind == "train"}
    runs = {(Path(c.output_dir).name, c.seed): c for kind, c in calls if kind == "rsft"}
    assert set(trained) == {(n, s) for n in ("a_supervised_slice", "e_oracle_supervised") for s in (0, 1)}
    assert set(runs) == {(n, s) for n in names[1:] if n != "e_oracle_supervised" for s in (0, 1)}
    for seed in (0, 1):
        slice_path = str(out / f"seed_{seed}" / "manifests" / "labelled_slice.jsonl")
        assert trained[("a_supervised_slice", seed)].train_manifest == slice_path
        assert trained[("e_oracle_supervised", seed)].train_manifest.endswith("slice_plus_pool_labelled.jsonl")
        for (name, s), rcfg in runs.items():
            if s == seed:
                assert rcfg.labelled_manifest == slice_path and rcfg.seed == seed
                assert rcfg.init_model == str(out / f"seed_{seed}" / "a_supervised_slice" / "best")
                assert rcfg.holdout_file == str(tiny_corpus / "holdout.json")
                if "agreement" in rcfg.rewards:                            # b and d score without it
                    assert rcfg.rewards["agreement"]["text_weight"] == (2.0 if seed == 0 else 3.0)
    assert runs[("c_rsft_label_free", 0)].generate.readings == ["text", "stock"]
    assert runs[("c_rsft_label_free", 0)].rewards["agreement"]["stock_bonus"] == 4.0
    assert runs[("c_rsft_label_free", 1)].generate.readings == ["text"]          # bonus -inf: no stock reading
    assert runs[("b_prime_pseudo_label_text_pass", 1)].generate.readings == ["text"]
    b, bp, c, d = (runs[(n, 0)] for n in names[1:5])
    assert (b.generate.num_samples, b.generate.readings, b.accept.rule, b.accept.min_vote) == (0, [], "best_of_n", 0.0)
    assert (bp.generate.num_samples, bp.accept.rule, bp.accept.min_vote) == (0, "best_of_n", 0.0)
    assert set(bp.rewards) == {"agreement"} and bp.rewards["agreement"]["weight"] == 1.0
    assert (set(c.rewards), c.accept.min_vote, c.accept.min_text_confidence) == (set(cfg.rsft.rewards), 0.5, 0.9)
    assert d.rewards == {"label": {"weight": 1.0, "reveal_labels": True}} and "label" not in c.rewards
    assert set(runs[("x_reward_agreement_only", 0)].rewards) == {"agreement", "teacher"}
    assert runs[("x_abstention_off", 0)].accept.min_vote == 0.0
    assert runs[("x_targets_sampled", 0)].transcript_target == "sampled" and c.transcript_target == "majority"
    assert runs[("x_encoder_frozen", 0)].finetune.freeze_encoder_layers is None and None != c.finetune.freeze_encoder_layers
    assert runs[("x_n_16", 0)].generate.num_samples == 16
    assert runs[("x_abstention_soft", 0)].accept.abstain_weight == 0.25 and c.accept.abstain_weight == 0.0
    assert runs[("x_abstention_curriculum", 0)].accept.keep_fraction(2) == 1.0 and c.accept.curriculum == []
    light = runs[("x_finetune_light", 0)].finetune
    assert (light.epochs, light.lr, light.warmup_steps) == (1, 0.0003, 10)
    assert light.lora_rank == c.finetune.lora_rank and light.freeze_encoder_layers == c.finetune.freeze_encoder_layers
    assert json.loads((out / "seed_1" / "a_supervised_slice" / "text_pass.json").read_text())["stock_bonus"] == "-inf"

    # every condition's deployed pipeline: its model + its own text pass (seed 0's weight 2, seed 1's 3), kept
    # (x_abstention_off's seed 1 fell back: its model is (a)'s, scored for each row)
    assert len(deployed) == 2 * len(names) and len({d for d, _ in deployed}) == len(deployed) - 1
    assert all(w == (2.0 if "seed_0" in d else 3.0) for d, w in deployed)
    c0 = json.loads((out / "seed_0" / "c_rsft_label_free" / "result.json").read_text())
    assert c0["test_text_pass"]["weight"] == 2.0 and c0["test_text_pass"]["intent_accuracy_by_part"] == {"seen": 1.0}
    assert (out / "seed_0" / "c_rsft_label_free" / "text_pass.json").is_file()
    row = table["conditions"]["c_rsft_label_free"]
    assert row["test_text_pass_intent_accuracy_per_seed"] == row["test_intent_accuracy_per_seed"]   # the stub's
    assert row["text_pass_gap_closed"] == pytest.approx(row["gap_closed"])
    assert table["stock_cascade"] is None                                # no stock path: no peer
    c_line = [line for line in md.splitlines() if line.startswith("| c_rsft_label_free |")][0].split(" | ")
    assert c_line[11:14] == [f"{row['test_intent_accuracy_mean']:.4f}", "0.4300, 0.5300", "+60%"]
    assert c_line[14] == "seen 1.0000"

    # a rerun resumes: nothing runs again
    calls.clear()
    deployed.clear()
    exp2 = Experiment(cfg)
    exp2.setup()
    assert len(exp2.run()) == 2 * len(names) and calls == [] and deployed == []

    # ... from another working directory too (paths are the experiment's own), but a finished condition that
    # ran with another setting is refused, naming its folder and the setting, never reported as today's
    moved = replace(cfg, output_dir=str(Path(cfg.output_dir).relative_to(tmp_path)))
    monkeypatch.chdir(tmp_path)
    exp3 = Experiment(moved)
    exp3.setup()
    assert len(exp3.run()) == 2 * len(names) and calls == []
    changed = replace(moved, rsft=replace(cfg.rsft, accept=replace(cfg.rsft.accept, min_vote=0.25)))
    exp4 = Experiment(changed)
    exp4.setup()
    with pytest.raises(exp_mod.ExperimentError, match=r"seed_0/c_rsft_label_free ran with another config \(accept differ"):
        exp4.run()
    assert calls == []

    # a condition `--only` leaves out is reported when finished with today's config and never run; a stale
    # one is left out of the table with a note instead of stopping the run of the others
    exp5 = Experiment(replace(changed, only=["nothing"]))
    exp5.setup()
    stale = {"c_rsft_label_free", "x_reward_agreement_only", "x_abstention_soft", "x_abstention_intent", "x_targets_sampled",
             "x_encoder_frozen", "x_n_16", "x_finetune_light", "x_rounds_3"}    # the rows whose acceptance follows min_vote
    assert sorted((r["name"], r["seed"]) for r in exp5.run()) == sorted(
        (n, s) for n in names if n not in stale for s in (0, 1)) and calls == []
    err = capsys.readouterr().err
    assert {n for n in names if f"seed_0/{n} ran with another config" in err} == stale

    # the ledger: every finished condition next to the table (in git), with its config and the corpus's
    # fingerprint. A fresh machine (no run folders) reports the same table from it and runs nothing
    import shutil

    ledger = tmp_path / "results" / "table"
    assert {p.relative_to(ledger).as_posix() for p in ledger.glob("seed_*/*.json")} == {
        f"seed_{s}/{n}.json" for n in names for s in (0, 1)}
    record = json.loads((ledger / "seed_0" / "c_rsft_label_free.json").read_text())
    assert record["config"]["accept"]["min_vote"] == 0.5 and record["corpus"] == exp.fingerprint
    assert record["text_pass"]["weight"] == 2.0 and record["result"]["test_text_pass"]["weight"] == 2.0
    shutil.rmtree(tmp_path / "out")
    calls.clear()
    deployed.clear()
    fresh = Experiment(replace(moved, report_only=True))
    fresh.setup()
    fresh.write_table(fresh.run())
    assert calls == [] and deployed == []
    again = json.loads((tmp_path / "results" / "table.json").read_text())
    assert again["conditions"] == table["conditions"]

    # a row still to run there retrains its seed's (a) first (the ledger has (a)'s scores, not its weights)
    # into a folder of its own, then runs from that model; the ledger's (a) stays the seed's row (the rows
    # beside it grew from it), the other seed and rows are the ledger's
    a_record = (ledger / "seed_1" / "a_supervised_slice.json").read_text()
    (ledger / "seed_1" / "c_rsft_label_free.json").unlink()
    exp6 = Experiment(replace(moved, only=["c"]))
    exp6.setup()
    assert len(exp6.run()) == 2 * len(names)
    assert [(kind, Path(c.output_dir).name, c.seed) for kind, c in calls] == [
        ("train", "a_retrained_start", 1), ("rsft", "c_rsft_label_free", 1)]
    assert calls[1][1].init_model == str(Path("out") / "seed_1" / "a_retrained_start" / "best")
    assert (ledger / "seed_1" / "c_rsft_label_free.json").is_file()
    assert (ledger / "seed_1" / "a_supervised_slice.json").read_text() == a_record
    assert not (ledger / "seed_1" / "a_retrained_start.json").exists()
    c1 = json.loads((ledger / "seed_1" / "c_rsft_label_free.json").read_text())["result"]
    assert c1["start"]["condition"] == "a_retrained_start" and "off_table" not in c1
    exp6.write_table(exp6.run())       # the table says which rows grew from a retrained (a)
    assert ("Grown from (a) retrained on the machine that ran them (the ledger's (a) was trained elsewhere; same "
            "config and text pass, another training run): c_rsft_label_free seed 1 (that (a): test intent "
            "accuracy 0.5000).") in (tmp_path / "results" / "table.md").read_text()
    calls.clear()
    exp6b = Experiment(replace(moved, only=["c"]))     # a rerun finds both here: nothing trains again
    exp6b.setup()
    assert len(exp6b.run()) == 2 * len(names) and calls == []

    # ... and where the retrained (a) chose another text pass on dev, the row it grew from is kept in the
    # ledger but left out of the table (its agreement reward differs from the rows beside it)
    monkeypatch.setattr(exp_mod, "text_pass_on_dev", lambda name, *a: (
        _record(2.0, 8.0) if "a_retrained_start" in name else fake_text_pass(name, *a)))
    c0_record = (ledger / "seed_0" / "c_rsft_label_free.json").read_text()
    (ledger / "seed_0" / "c_rsft_label_free.json").unlink()
    exp6c = Experiment(replace(moved, only=["c"]))
    exp6c.setup()
    rows = {(r["name"], r["seed"]) for r in exp6c.run()}
    assert ("c_rsft_label_free", 0) not in rows and ("c_rsft_label_free", 1) in rows
    assert [(kind, Path(c.output_dir).name, c.seed) for kind, c in calls] == [
        ("train", "a_retrained_start", 0), ("rsft", "c_rsft_label_free", 0)]
    c0 = json.loads((ledger / "seed_0" / "c_rsft_label_free.json").read_text())
    assert c0["config"]["rewards"]["agreement"]["stock_bonus"] == 8.0 and "rewards differ" in c0["result"]["off_table"]
    assert "seed_0/c_rsft_label_free grew from (a) retrained on this machine" in capsys.readouterr().err
    monkeypatch.setattr(exp_mod, "text_pass_on_dev", fake_text_pass)
    for folder in ("c_rsft_label_free", "a_retrained_start"):
        shutil.rmtree(tmp_path / "out" / "seed_0" / folder)
    (ledger / "seed_0" / "c_rsft_label_free.json").write_text(c0_record)
    calls.clear()

    # `--only` matches the oracle by its name too (it once matched against "e" alone, so "e_oracle" ran nothing)
    (ledger / "seed_1" / "e_oracle_supervised.json").unlink()
    calls.clear()
    exp_e = Experiment(replace(moved, only=["e_oracle"]))
    exp_e.setup()
    assert len(exp_e.run()) == 2 * len(names)
    assert [(kind, Path(c.output_dir).name, c.seed) for kind, c in calls] == [("train", "e_oracle_supervised", 1)]

    # a record made with another config is not reused: the row runs again (or is left out of a report)
    changed_c = replace(moved, only=["c"], rsft=replace(cfg.rsft, accept=replace(cfg.rsft.accept, min_vote=0.25)))
    shutil.rmtree(tmp_path / "out" / "seed_1" / "c_rsft_label_free")
    calls.clear()
    exp7 = Experiment(replace(changed_c, report_only=True))
    exp7.setup()
    assert ("c_rsft_label_free", 1) not in {(r["name"], r["seed"]) for r in exp7.run()} and calls == []
    assert "seed_1/c_rsft_label_free.json ran with another config or corpus (accept differ)" in capsys.readouterr().err

    # report_only runs nothing; a seed still running for a row is "-", and its gap is measured against (a)
    # and (e) on the seeds it has: seed 0's c 0.43, a 0.40, e 0.45 -> 60 % (the all-seed means would say -40 %)
    (ledger / "seed_1" / "c_rsft_label_free.json").unlink()
    exp8 = Experiment(replace(moved, report_only=True))
    exp8.setup()
    exp8.write_table(exp8.run())
    assert calls == []
    row = json.loads((tmp_path / "results" / "table.json").read_text())["conditions"]["c_rsft_label_free"]
    assert row["test_intent_accuracy_per_seed"] == [pytest.approx(0.43), None]
    assert row["gap_closed"] == pytest.approx(0.6)


def test_one_condition_end_to_end_on_a_tiny_model(tiny_corpus, tmp_path, monkeypatch):
    """(a), its text pass on dev and label-free RSFT (c) for real: tiny random model, fixture audio, an
    untrained MiniLM teacher."""
    import torch
    import yaml

    import assistant.nlu as nlu
    import assistant.rsft.experiment as exp_mod
    from assistant.schema import load_schema

    monkeypatch.setattr(exp_mod, "REPO_ROOT", tmp_path)
    schema = load_schema()
    torch.manual_seed(0)
    fresh = nlu.TextTeacher.fresh(list(schema.intents), sorted(schema.slots), implied_slots={}, intent_slots={})
    monkeypatch.setattr(nlu, "default_teacher", lambda *a, **k: fresh)   # no minutes of training here
    cfg = _tiny_config(tiny_corpus, tmp_path, seeds=[0], only=["c"])
    exp = Experiment(cfg)
    exp.setup()
    exp.write_table(exp.run())
    table = json.loads((tmp_path / "results" / "table.json").read_text())
    assert list(table["conditions"]) == ["a_supervised_slice", "c_rsft_label_free"]
    c = table["conditions"]["c_rsft_label_free"]
    assert set(c) == CONDITION_KEYS and c["selected_round"][0] in (0, 1)
    assert c["fell_back_to_start"] == [c["selected_round"][0] == 0]
    text_pass = json.loads((tmp_path / "out" / "seed_0" / "a_supervised_slice" / "text_pass.json").read_text())
    used = yaml.safe_load((tmp_path / "out" / "seed_0" / "c_rsft_label_free" / "config.yaml").read_text())
    assert used["rewards"]["agreement"]["text_weight"] == text_pass["weight"] and used["seed"] == 0
    assert used["holdout_file"] == str(tiny_corpus / "holdout.json")
    assert (tmp_path / "out" / "seed_0" / "c_rsft_label_free" / "round_1" / "scored.jsonl").is_file()
