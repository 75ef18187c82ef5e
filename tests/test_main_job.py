"""`assistant run` end to end on the `smoke` corpus (real TTS), a tiny random speech model and an
untrained MiniLM teacher: every stage runs and hands its result to the next."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import torch

import pytest

from assistant.config import ConfigError, load_config
from assistant.main_job import STAGES, MainConfig, run_main


def test_main_job_runs_every_stage_and_picks_the_deployed_pair_on_dev(tmp_path, monkeypatch):
    import assistant.nlu as nlu
    from assistant.schema import load_schema

    monkeypatch.setenv("ASSISTANT_DATA", str(tmp_path / "data"))
    schema = load_schema()
    torch.manual_seed(0)
    fresh = nlu.TextTeacher.fresh(list(schema.intents), sorted(schema.slots), implied_slots={}, intent_slots={})
    monkeypatch.setattr(nlu, "default_teacher", lambda *a, **k: fresh)   # no 6-minute training here
    taught = []                                # ... nor for the field teacher: what it would be taught is kept
    monkeypatch.setattr("assistant.nlu.training.train_teacher", lambda sentences, *a, **k: taught.append(sentences) or fresh)
    # a tiny random speech model keeps no readable transcript: here RSFT's kept frames are the pool's own
    # (kept_frames itself reads a real kept set in test_field_teacher_learns_from_a_kept_set)
    from assistant.data.manifest import read_manifest
    from assistant.frames import Frame

    def kept_frames(round_dir):
        pool = read_manifest(tmp_path / "data" / "smoke" / "pool.jsonl")
        return [Frame(u.intent, dict(u.slots), u.text) for u in pool]
    monkeypatch.setattr("assistant.rsft.loop.kept_frames", kept_frames)
    sft = tmp_path / "sft.yaml"
    sft.write_text("tiny_random: true\nmax_steps: 2\nbatch_size: 4\ndev_limit: 4\nlr: 0.001\nwarmup_steps: 1\n")
    rsft = tmp_path / "rsft.yaml"
    rsft.write_text("rounds: 1\ngenerate: {num_samples: 2, max_new_tokens: 12}\nrewards: {verifier: 1.0}\n"
                    "accept: {rule: best_of_n, k: 1}\npool_limit: 4\nlabelled_limit: 4\n"
                    "finetune: {epochs: 1, batch_size: 4, dev_limit: 4}\n")
    cfg = load_config(MainConfig, None, profile="smoke", sft=str(sft), rsft=str(rsft), real_speech=False,
                      field_teacher=True, output_dir=str(tmp_path / "run"))   # sections given as whole recipe files
    summary = run_main(cfg)

    out = tmp_path / "run"
    assert (tmp_path / "data" / "smoke" / "test.jsonl").is_file()               # the corpus was synthesised
    assert summary["sft_model"] == "tiny.en"         # the model its supervised stage started from (the report's row)
    nlu = summary["nlu"]
    # the RSFT model is also read by the field teacher: the default text + the pool transcripts RSFT kept
    field = summary["field_teacher"]
    pool_texts = sorted(json.loads(line)["text"] for line in (tmp_path / "data" / "smoke" / "pool.jsonl").open())
    assert field["from_round"] == 1 and field["field_sentences"] == len(pool_texts) == 8
    assert sorted(s.text for s in taught[0] if s.template_id == "field") == pool_texts
    assert len(taught[0]) > len(pool_texts)                      # ... added to the default text, not instead
    by_model = nlu["dev_intent_accuracy_by_model"]
    assert set(by_model) == {"supervised", "rsft round 1", "rsft round 1 + field text pass"}
    assert nlu["system"] in ({"rsft round 1 + field text pass"} | {f"{m} + text pass" for m in by_model})
    assert by_model[nlu["speech_model"] if not nlu["teacher_dir"] else nlu["system"]] == max(by_model.values())
    assert 0.0 <= nlu["teacher_dev_gold_transcript_accuracy"] <= 1.0
    assert json.loads((out / "final" / "nlu" / "nlu.json").read_text())["weight"] == nlu["weight"]
    final_row = f"final = {nlu['system']}"
    peer = "peer: stock Whisper tiny.en + our text NLU"
    pairs = {"supervised + text pass", "rsft round 1 + text pass", "rsft round 1 + field text pass"}
    # every pair that does not ship is scored too (RSFT's effect on the deployed pair, the field teacher's)
    assert set(summary["test"]) == {"supervised", "rsft round 1", final_row, peer} | (pairs - {nlu["system"]})
    cells = summary["test_by_engine_condition"]
    assert sum(c["n"] for conds in cells.values() for c in conds.values()) == 8
    for conds in cells.values():
        for cell in conds.values():
            assert set(cell) == {"shipped", "stock_cascade", "n"} and 0 <= cell["shipped"] <= 1
    assert summary["test"][final_row]["n"] == 8
    parts = summary["test_by_part"][final_row]               # field / novel phrasings of the field corpus
    assert set(parts) == {"field", "novel"} and set(summary["test_by_part"]) == set(summary["test"])
    assert sum(summary["test"][final_row]["per_part"][p]["n"] for p in parts) == 8
    assert json.loads((out / "summary.json").read_text())["nlu"]["speech_model"] == nlu["speech_model"]
    assert len((out / "test_predictions.jsonl").read_text().splitlines()) == 8

    # a re-run finds every stage done and runs nothing; the summary is the same
    stamps = {p: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json") if p.name != "timings.json"}
    again = run_main(cfg)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and set(stamps) == {
        out / "stages" / f"{name}.json" for name in STAGES}
    assert again["test"] == summary["test"] and again["nlu"] == summary["nlu"]
    # --stage evaluate runs evaluation again (from the kept predictions: same numbers), nothing before it
    earlier = STAGES[:STAGES.index("evaluate")]
    before = {n: (out / "stages" / f"{n}.json").stat().st_mtime_ns for n in earlier}
    redo = run_main(load_config(MainConfig, None, **{**cfg.__dict__, "stage": "evaluate"}))
    assert redo["test"] == summary["test"]
    assert {n: (out / "stages" / f"{n}.json").stat().st_mtime_ns for n in earlier} == before
    # one more RSFT round: RSFT resumes (round 1 kept) and every later stage runs again on the new results
    rsft2 = tmp_path / "rsft2.yaml"                           # the same recipe, one round more
    rsft2.write_text(rsft.read_text().replace("rounds: 1", "rounds: 2"))
    two = run_main(load_config(MainConfig, None, **{**cfg.__dict__, "rsft": str(rsft2)}))
    assert [r["round"] for r in two["rsft_rounds"]] == [1, 2] and "rsft round 2" in two["nlu"]["dev_intent_accuracy_by_model"]
    assert "rsft round 2" in two["test"] and two["field_teacher"]["from_round"] == 2
    assert "rsft round 2 + field text pass" in two["nlu"]["dev_intent_accuracy_by_model"]
    # a corpus built with another seed is not silently reused; --stage needs the stages before it done
    with pytest.raises(ConfigError, match="corpus-seed 0"):
        run_main(load_config(MainConfig, None, **{**cfg.__dict__, "seed": 1}))
    with pytest.raises(ConfigError, match="stage 'sft' before it is not done"):
        run_main(load_config(MainConfig, None, **{**cfg.__dict__, "output_dir": str(tmp_path / "new"),
                                                  "stage": "rsft"}))


def test_a_stage_key_holds_the_results_before_it_and_only_its_own_settings(tmp_path):
    """A stage without settings keys on the earlier results alone, so run folders made before a setting
    was added to another stage stay done; the text pass's key changes with its n-best size."""
    import hashlib

    from assistant.main_job import MainJob

    def job(**kw):
        return MainJob(load_config(MainConfig, None, output_dir=str(tmp_path / "run"), **kw))

    stages = tmp_path / "run" / "stages"
    stages.mkdir(parents=True)
    (stages / "corpus.json").write_text('{"corpus": "x"}')
    assert job()._inputs_key("sft") == hashlib.sha256(b'{"corpus": "x"}').hexdigest()[:16]
    assert job(nlu_samples=0)._inputs_key("sft") == job(nlu_samples=8)._inputs_key("sft")
    assert job(nlu_samples=0)._inputs_key("text_pass") != job(nlu_samples=8)._inputs_key("text_pass")


def test_a_text_pass_choice_is_reused_whether_its_model_folder_is_named_relative_or_absolute(tmp_path, monkeypatch):
    """`--sft-from runs/main` names the supervised folder relative; the run that made it wrote it absolute:
    the kept dev choice is the same folder's and must not be computed again (8 minutes of dev decoding)."""
    from dataclasses import asdict

    import assistant.main_job as mj

    model = tmp_path / "sft" / "best"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    job = mj.MainJob(load_config(MainConfig, None, output_dir=str(tmp_path / "run"), nlu_samples=0,
                                 text_pass_alpha=1.0))                  # dev's best ships
    record = {"w=0 b=-inf": "1100", "w=1 b=-inf": "1110", "w=2 b=-8": "1111"}     # per dev clip, 1: right
    kept = mj.TextPassChoice(name="supervised", model_dir=str(model.resolve()), fingerprint=mj.fingerprint(model),
                             dev_accuracy=1.0, weight=2.0, stock_bonus=-8.0, samples=0, correct_by_choice=record,
                             by_choice={"w=0 b=-inf": 0.5, "w=1 b=-inf": 0.75, "w=2 b=-8": 1.0})
    (tmp_path / "run" / "cache").mkdir(parents=True)
    (tmp_path / "run" / "cache" / "text_pass_supervised.json").write_text(json.dumps(asdict(kept)))

    def decode(*args, **kwargs):
        raise AssertionError("the kept choice should have been used")

    monkeypatch.setattr(mj, "text_pass_on_dev", decode)
    job.__dict__.update(dev=[], teacher=None, dev_stock=[])     # what decoding would read: never loaded here
    monkeypatch.chdir(tmp_path)
    assert job.text_pass_choice("supervised", mj.Path("sft/best")) == kept
    # another rule re-reads the kept record: dev's best wins 1 clip of 1 where it differs from the configured
    # pass (weight 1), sign-test p 0.5, so at the default alpha 0.05 the configured pass ships -- without decoding
    strict = mj.MainJob(load_config(MainConfig, None, output_dir=str(tmp_path / "run"), nlu_samples=0))
    strict.__dict__.update(dev=[], teacher=None, dev_stock=[])
    assert strict.text_pass_choice("supervised", mj.Path("sft/best")) == replace(kept, weight=1.0,
                                                                                 stock_bonus=-math.inf,
                                                                                 dev_accuracy=0.75)
    # ... while RSFT's agreement reward keeps dev's best (w 2, stock bonus -8): the RSFT runs were measured so
    (tmp_path / "run" / "stages").mkdir()
    (tmp_path / "run" / "stages" / "sft.json").write_text(json.dumps({"best_dir": "sft/best", "dev": {}}))
    seen = []
    monkeypatch.setattr("assistant.rsft.loop.run_rsft", lambda rcfg: seen.append(rcfg) or {"best_dir": "", "rounds": []})
    strict.rsft_run()
    assert seen[0].rewards["agreement"]["text_weight"] == 2.0 and seen[0].rewards["agreement"]["stock_bonus"] == -8.0
    (model / "model.safetensors").write_bytes(b"other weights")    # another model in the same folder: decode
    with pytest.raises(AssertionError, match="kept choice"):
        job.text_pass_choice("supervised", mj.Path("sft/best"))
