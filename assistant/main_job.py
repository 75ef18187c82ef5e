"""`assistant run`: the main job on the embedded default.

corpus (synth, if missing) -> supervised fine-tuning -> RSFT rounds on the unlabelled pool
-> the text NLU second pass (the speech model it joins and its weight are chosen on `dev`)
-> evaluation on the held-out `test` split (unseen voices and phrasings) -> a per-round table.
Every stage skips what already exists, so re-running after a crash resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import add_dataclass_arguments, load_config, override, parse_config
from assistant.paths import REPO_ROOT, generated_dir, runs_dir
from assistant.schema import load_schema


@dataclass
class MainConfig:
    profile: str = field(default="default", metadata={"help": "synth profile of the corpus"})
    sft_config: str = "recipes/configs/sft_default.yaml"
    # the readings recipe: +2.0 test points over supervised + text pass where rsft_default tied (one seed each)
    rsft_config: str = "recipes/configs/rsft_readings.yaml"
    rsft_rounds: int = 1                      # 0 = supervised only (a round over the whole pool: ~25 min)
    nlu: bool = True                          # give the final model the text NLU second pass (assistant.nlu)
    real_speech: bool = True                  # WER of the ASR path on real recordings, before/after
    output_dir: str = ""                      # '' = runs/main
    sft_from: str = ""                        # another run's folder (e.g. runs/main): reuse its supervised model
                                              # instead of training one (RSFT with another seed on the same start)
    seed: int = 0


def _stage(name: str) -> float:
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def run_main(cfg: MainConfig) -> dict:
    # torch, the speech and text models: imported when the job runs, not for `assistant run --help`
    from assistant import distributed as dist
    from assistant import train as sft
    from assistant.data.manifest import read_manifest
    from assistant.evaluate import (by_engine_condition, evaluate_model, evaluation_report, format_report,
                                    plot_confusion, stock_cascade_predictions, write_predictions)
    from assistant.model.slu import SLUModel
    from assistant.nlu import NluPass, attach, default_teacher, load_pipeline, stock_transcripts
    from assistant.train import TrainConfig

    out = Path(cfg.output_dir or runs_dir() / "main")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus = generated_dir() / cfg.profile

    t = _stage(f"1. corpus ({corpus})")
    # Under `accelerate launch` the main process builds the corpus, copies the model and writes reports;
    # training, RSFT and test decoding are shared out; the rest (cheap) runs on every process alike.
    if not dist.main_first(all((corpus / f).is_file() for f in ("train.jsonl", "pool.jsonl", "dev.jsonl",
                                                                "test.jsonl", "holdout.json"))):
        from assistant.data.synth import SynthConfig, run_synth

        if dist.is_main():
            run_synth(load_config(SynthConfig, None, profile=cfg.profile, seed=cfg.seed, out_dir=str(corpus)))
        dist.barrier()
    else:
        print("corpus exists: skipping synthesis")
    timings["corpus_s"] = time.perf_counter() - t

    t = _stage("2. supervised fine-tuning on `train`")
    sft_cfg = load_config(TrainConfig, REPO_ROOT / cfg.sft_config if not Path(cfg.sft_config).is_absolute() else cfg.sft_config,
                          train_manifest=str(corpus / "train.jsonl"), dev_manifest=str(corpus / "dev.jsonl"),
                          output_dir=str(out / "sft"), seed=cfg.seed)
    sft_dir = Path(cfg.sft_from) / "sft" if cfg.sft_from else out / "sft"
    if dist.main_first((sft_dir / "result.json").is_file() and (sft_dir / "best").is_dir()):
        print(f"supervised model exists ({sft_dir}): skipping")
        sft_result = json.loads((sft_dir / "result.json").read_text())
        sft_result["best_dir"] = str(sft_dir / "best")
    elif cfg.sft_from:
        raise FileNotFoundError(f"--sft-from {cfg.sft_from}: no finished supervised model in {sft_dir} "
                                "(result.json + best/); run `assistant run` there first or leave --sft-from out")
    else:
        sft_result = sft.recipe_main(sft_cfg)
    timings["sft_s"] = time.perf_counter() - t
    final_dir = Path(sft_result["best_dir"])

    # Every speech model this run trains; the text pass picks one, evaluation scores them all.
    speech_models = [("supervised", Path(sft_result["best_dir"]))]
    schema = load_schema()
    final = out / "final"
    nlu_info = None
    teacher = None
    weight, stock_bonus = 0.0, -math.inf
    dev, test = read_manifest(corpus / "dev.jsonl"), read_manifest(corpus / "test.jsonl")
    # Stock Whisper's transcripts do not depend on the fine-tuning: decoded once per clip, shared by every
    # speech model's text pass and by the peer (stock transcript + our text NLU).
    stock_model = SLUModel.from_pretrained(speech_models[0][1])
    scored = []
    if cfg.nlu:
        with dist.main_process_first():           # trained once, cached; the others load it
            teacher = default_teacher(schema, holdout_file=corpus / "holdout.json")
        dev_stock = stock_transcripts(stock_model, dev, desc="nlu: stock transcripts of dev")

        def score_on_dev(name: str, model_dir: Path) -> tuple:
            return text_pass_on_dev(name, model_dir, dev, teacher, dev_stock)

        # The supervised model's text-pass weight first: RSFT's agreement reward is that pass.
        scored.append(score_on_dev(*speech_models[0]))

    rounds_table = []
    if cfg.rsft_rounds > 0:
        t = _stage(f"3. RSFT: {cfg.rsft_rounds} round(s) on the unlabelled field `pool`, the labelled `train` mixed in")
        from assistant.rsft.loop import RSFTConfig, run_rsft

        rcfg_path = REPO_ROOT / cfg.rsft_config if not Path(cfg.rsft_config).is_absolute() else Path(cfg.rsft_config)
        rcfg = load_config(RSFTConfig, rcfg_path, init_model=str(final_dir), rounds=cfg.rsft_rounds,
                           pool_manifest=str(corpus / "pool.jsonl"), dev_manifest=str(corpus / "dev.jsonl"),
                           labelled_manifest=str(corpus / "train.jsonl"), output_dir=str(out / "rsft"),
                           holdout_file=str(corpus / "holdout.json"), seed=cfg.seed)
        if scored:
            rcfg = with_text_pass(rcfg, weight=scored[0][3], stock_bonus=scored[0][4])
        rsft_result = run_rsft(rcfg)
        final_dir = Path(rsft_result["best_dir"])      # without the text pass: RSFT's own dev choice
        rounds_table = rsft_result.get("rounds", [])
        timings["rsft_s"] = time.perf_counter() - t
    speech_models += [(f"rsft round {r['round']}", Path(r["model_dir"])) for r in rounds_table if r.get("model_dir")]

    if cfg.nlu:
        t = _stage("4. text NLU second pass (MiniLM teacher) over our and stock Whisper's transcripts: "
                   "speech model, weight and stock bonus chosen on all of `dev`")
        # RSFT picks its round on dev with the speech model alone; what ships is speech model + text pass,
        # so pick that pair on every dev clip.
        scored += [score_on_dev(name, model_dir) for name, model_dir in speech_models[1:]]
        best_acc = max(s[0] for s in scored)
        _, chosen, final_dir, weight, stock_bonus, by_choice = next(s for s in scored if s[0] == best_acc)  # ties: earlier
        # The text model on the *gold* dev transcripts: what the NLU alone does on unseen phrasings,
        # the ceiling the speech side works under.
        gold_text = sum(p[0] == u.intent for p, u in zip(teacher.predict([u.text for u in dev]), dev)) / len(dev)
        dev_cascade = evaluation_report(dev, stock_cascade_predictions(teacher, dev, dev_stock))["intent_accuracy"]
        nlu_info = {"speech_model": chosen, "weight": weight, "stock_bonus": str(stock_bonus),
                    "dev_intent_accuracy_by_choice": {f"w={w:g} b={b:g}": a for (w, b), a in by_choice.items()},
                    "dev_intent_accuracy_by_model": {s[1]: s[0] for s in scored},
                    "dev_stock_cascade_accuracy": dev_cascade,
                    "teacher_dev_gold_transcript_accuracy": gold_text}
        print(f"-> {chosen} + text pass (weight {weight:g}, stock bonus {stock_bonus:g}); stock Whisper + text "
              f"NLU on dev: {dev_cascade:.4f}; the text model alone on the gold dev transcripts: {gold_text:.4f}")
        timings["nlu_s"] = time.perf_counter() - t
    if dist.is_main():
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(final_dir, final, ignore=shutil.ignore_patterns("optimizer.safetensors", "trainer_state.json"))
        if teacher is not None:
            attach(final, teacher, weight, stock_bonus)
    dist.barrier()

    t = _stage("5. evaluation on `test` (unseen voices and phrasings)")
    test_stock = stock_transcripts(stock_model, test, desc="test: stock transcripts")
    stock_wer = stock_wer_by_speaker(test, test_stock, dev if cfg.nlu else [], dev_stock if cfg.nlu else [])
    rows = []
    candidates = [(name, model_dir, None) for name, model_dir in speech_models]
    if nlu_info is not None:
        if nlu_info["speech_model"] != "supervised":   # the baseline RSFT must beat: supervised + its text pass
            sup = next(s for s in scored if s[1] == "supervised")
            candidates.append(("supervised + text pass", Path(sft_result["best_dir"]), NluPass(teacher, sup[3], sup[4])))
        candidates.append((f"final = {nlu_info['speech_model']} + text pass", final, "saved"))
    systems: dict[str, list] = {}
    for name, model_dir, nlu_pass in candidates:
        model = load_pipeline(model_dir) if nlu_pass == "saved" else SLUModel.from_pretrained(model_dir)
        if nlu_pass not in (None, "saved"):
            model.nlu = nlu_pass
        model.eval()
        report, preds = evaluate_model(model, test, schema, desc=f"test: {name}", use_nlu=nlu_pass is not None,
                                       stock=test_stock)
        rows.append((name, report))
        if model_dir in (final_dir, final):     # the last match is the deployed model
            if dist.is_main():
                write_predictions(test, preds, out / "test_predictions.jsonl")
                plot_confusion(test, preds, out / "test_confusion.png")
            final_report, final_preds = report, preds
    if teacher is not None:
        cascade = stock_cascade_predictions(teacher, test, test_stock)
        rows.append(("peer: stock Whisper tiny.en + our text NLU", evaluation_report(test, cascade)))
        by_cell = by_engine_condition(test, {"shipped": final_preds, "stock_cascade": cascade})
    else:
        by_cell = by_engine_condition(test, {"shipped": final_preds})
    timings["evaluate_s"] = time.perf_counter() - t
    if not dist.is_main():
        return {}

    print("\n=== results on test ===")
    width = max(len(name) for name, _ in rows)
    print(f"{'model':<{width}} {'intent acc':>10} {'slot F1':>8} {'SLU-F1':>7} {'WER':>7} {'invalid':>8}")
    for name, r in rows:
        print(f"{name:<{width}} {r['intent_accuracy']:>10.4f} {r['slot_f1']:>8.4f} {r['slu_f1']:>7.4f} "
              f"{r['wer']:>7.4f} {r['invalid_rate']:>8.4f}")
    print("\nfinal model:", final, "\n" + format_report(final_report))
    print("\n" + format_cells(by_cell))
    print("stock Whisper WER per engine (dev + test): " + ", ".join(f"{e} {w:.3f}" for e, w in stock_wer["by_engine"].items())
          + "; worst Kokoro speakers: " + ", ".join(f"{k} {w:.3f}" for k, w in sorted(
              stock_wer["kokoro_speakers"].items(), key=lambda kv: -kv[1])[:3]))

    real = None
    if cfg.real_speech:
        t = _stage("6. real human speech (pocketsphinx test audio): stock ASR WER before / after fine-tuning")
        from assistant.realspeech import compare      # clips ship with the package: nothing to fetch

        real = compare({"stock tiny.en": None, "fine-tuned": str(final)})
        for name, r in real.items():
            print(f"{name:<14} stock-prompt ASR WER {r['wer']:.4f} on {r['n_clips']} clips"
                  + (f"; SLU-output transcript WER {r['slu_wer']:.4f} on the {r['slu_n_clips']} clips that "
                     "fit its context" if "slu_wer" in r else ""))
        timings["real_speech_s"] = time.perf_counter() - t
    print("time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    summary = {"final_model": str(final), "test": {n: r for n, r in rows}, "test_by_engine_condition": by_cell,
               # seen / field / novel phrasings (assistant.data.synth): where adaptation to the field shows
               "test_by_part": {n: {p: v["accuracy"] for p, v in r["per_part"].items()} for n, r in rows},
               "stock_wer": stock_wer,
               "timings_s": timings,
               "rsft_rounds": rounds_table, "nlu": nlu_info, "real_speech": real}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def text_pass_on_dev(name: str, model_dir: Path, dev, teacher, dev_stock) -> tuple:
    """(dev accuracy, name, folder, weight, stock bonus, accuracy per choice) of speech model + text pass:
    the text pass's weight and stock bonus (``assistant.nlu.choose_weight``) chosen on the ``dev``
    utterances, whose stock transcripts are ``dev_stock`` (used when the model has a stock path)."""
    from assistant.model.slu import SLUModel      # torch and both models: only when it runs
    from assistant.nlu import STOCK_BONUSES, NluPass, choose_weight, dev_readings

    model = SLUModel.from_pretrained(model_dir)
    readings = dev_readings(model, dev, NluPass(teacher), desc=f"nlu: dev readings, {name}",
                            stock=dev_stock if model.has_stock_path else None)
    bonuses = STOCK_BONUSES if model.has_stock_path else (-math.inf,)
    (w, b), by_choice = choose_weight(readings, [u.intent for u in dev], stock_bonuses=bonuses)
    print(f"{name}: dev intent accuracy {by_choice[(0.0, -math.inf)]:.4f} alone, "
          f"{by_choice[(w, -math.inf)]:.4f} with the text pass on its transcript, {by_choice[(w, b)]:.4f} "
          f"with the stock reading too (weight {w:g}, stock bonus {b:g})")
    return by_choice[(w, b)], name, model_dir, w, b, by_choice


def with_text_pass(rcfg, weight: float, stock_bonus: float):
    """RSFT's agreement reward and readings follow the supervised model's text pass as chosen on dev:
    its weight and stock bonus; a pass that never uses the stock reading (bonus -inf) gets no stock
    readings either."""
    from assistant.rsft.rewards import with_reward_options

    if stock_bonus == -math.inf:
        return override(rcfg, rewards=with_reward_options(rcfg.rewards, "agreement", text_weight=weight),
                         generate={"readings": [r for r in rcfg.generate.readings if r != "stock"]})
    return override(rcfg, rewards=with_reward_options(rcfg.rewards, "agreement", text_weight=weight,
                                                      stock_bonus=min(stock_bonus, 1e3)))


def stock_wer_by_speaker(test, test_stock, dev, dev_stock) -> dict:
    """Stock Whisper's WER per engine, and per Kokoro speaker, on dev + test: the derived neural speakers
    must stay intelligible (a speaker stock Whisper cannot follow is a bad voice, not a hard test)."""
    from assistant.evaluate import engine_of
    from assistant.metrics import wer

    pairs = list(zip(test, test_stock)) + list(zip(dev, dev_stock))
    def score(rows):
        return wer([u.text for u, _ in rows], [h for _, h in rows])     # wer normalises both
    engines = sorted({engine_of(u) for u, _ in pairs})
    speakers = sorted({u.speaker for u, _ in pairs if engine_of(u) == "kokoro"})
    return {"by_engine": {e: score([p for p in pairs if engine_of(p[0]) == e]) for e in engines},
            "kokoro_speakers": {k: score([p for p in pairs if p[0].speaker == k]) for k in speakers}}


def format_cells(cells: dict) -> str:
    """The engine x condition table: intent accuracy of each system on the same test clips."""
    systems = sorted({k for conds in cells.values() for c in conds.values() for k in c if k != "n"},
                     key=lambda k: (k != "shipped", k))
    lines = [f"{'engine':<9} {'condition':<9} {'n':>4} " + " ".join(f"{s:>13}" for s in systems)]
    for engine, conds in cells.items():
        for condition, cell in conds.items():
            lines.append(f"{engine:<9} {condition:<9} {cell['n']:>4} " + " ".join(f"{cell[s]:>13.4f}" for s in systems))
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="assistant run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(ap, MainConfig)
    cfg = parse_config(MainConfig, ap.parse_args(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_main(cfg)
    return 0
