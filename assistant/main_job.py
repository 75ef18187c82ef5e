"""`assistant run`: the main job on the embedded default.

corpus (synth, if missing) -> supervised fine-tuning -> RSFT rounds on the unlabelled pool
-> the text NLU second pass (the speech model it joins and its weight are chosen on `dev`)
-> evaluation on the held-out `test` split (unseen voices and phrasings) -> a per-round table.
Every stage skips what already exists, so re-running after a crash resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.config import add_dataclass_arguments, load_yaml, parse_config
from assistant.paths import REPO_ROOT, generated_dir, runs_dir


@dataclass
class MainConfig:
    profile: str = field(default="default", metadata={"help": "synth profile of the corpus"})
    sft_config: str = "recipes/configs/sft_default.yaml"
    rsft_config: str = "recipes/configs/rsft_default.yaml"
    rsft_rounds: int = 2                      # 0 = supervised only
    nlu: bool = True                          # give the final model the text NLU second pass (assistant.nlu)
    real_speech: bool = True                  # WER of the ASR path on real recordings, before/after
    output_dir: str = ""                      # '' = runs/main
    seed: int = 0


def _stage(name: str) -> float:
    print(f"\n=== {name} ===", flush=True)
    return time.perf_counter()


def run_main(cfg: MainConfig) -> dict:
    from assistant.data.manifest import read_manifest
    from assistant.evaluate import evaluate_model, format_report, plot_confusion, write_predictions
    from assistant.model.slu import SLUModel
    from assistant.schema import load_schema
    from assistant.train import TrainConfig
    from assistant.config import load_config
    from assistant import train as sft

    out = Path(cfg.output_dir or runs_dir() / "main")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    corpus = generated_dir() / cfg.profile

    t = _stage(f"1. corpus ({corpus})")
    if not all((corpus / f"{s}.jsonl").is_file() for s in ("train", "pool", "dev", "test")):
        from assistant.data.synth import SynthConfig, run_synth

        run_synth(load_config(SynthConfig, None, profile=cfg.profile, seed=cfg.seed, out_dir=str(corpus)))
    else:
        print("corpus exists: skipping synthesis")
    timings["corpus_s"] = time.perf_counter() - t

    t = _stage("2. supervised fine-tuning on `train`")
    sft_cfg = load_config(TrainConfig, REPO_ROOT / cfg.sft_config if not Path(cfg.sft_config).is_absolute() else cfg.sft_config,
                          train_manifest=str(corpus / "train.jsonl"), dev_manifest=str(corpus / "dev.jsonl"),
                          output_dir=str(out / "sft"), seed=cfg.seed)
    if (out / "sft" / "result.json").is_file() and (out / "sft" / "best").is_dir():
        print("supervised model exists: skipping")
        sft_result = json.loads((out / "sft" / "result.json").read_text())
    else:
        sft_result = sft.recipe_main(sft_cfg)
    timings["sft_s"] = time.perf_counter() - t
    final_dir = Path(sft_result["best_dir"])
    rounds_table = []

    if cfg.rsft_rounds > 0:
        t = _stage(f"3. RSFT: {cfg.rsft_rounds} rounds on the unlabelled `pool`")
        from assistant.rsft.loop import RSFTConfig, run_rsft

        rcfg_path = REPO_ROOT / cfg.rsft_config if not Path(cfg.rsft_config).is_absolute() else Path(cfg.rsft_config)
        rcfg = load_config(RSFTConfig, rcfg_path, init_model=str(final_dir), rounds=cfg.rsft_rounds,
                           pool_manifest=str(corpus / "pool.jsonl"), dev_manifest=str(corpus / "dev.jsonl"),
                           labelled_manifest=str(corpus / "train.jsonl"), output_dir=str(out / "rsft"),
                           seed=cfg.seed)
        rsft_result = run_rsft(rcfg)
        final_dir = Path(rsft_result["best_dir"])
        rounds_table = rsft_result.get("rounds", [])
        timings["rsft_s"] = time.perf_counter() - t

    # Every speech model this run trained; the text pass picks one, evaluation scores them all.
    speech_models = [("supervised", Path(sft_result["best_dir"]))]
    speech_models += [(f"rsft round {r['round']}", Path(r["model_dir"])) for r in rounds_table if r.get("model_dir")]

    # The model `transcribe-and-classify` uses by default: a speech model + the text pass.
    schema = load_schema()
    final = out / "final"
    nlu_info = None
    teacher = weight = None
    if cfg.nlu:
        t = _stage("4. text NLU second pass (MiniLM teacher): speech model and weight chosen on all of `dev`")
        from assistant.nlu import NluPass, choose_weight, dev_readings
        from assistant.rsft.teacher import default_teacher

        teacher = default_teacher(schema)
        dev = read_manifest(corpus / "dev.jsonl")
        # RSFT picks its round on a dev slice with the speech model alone; what ships is speech model +
        # text pass, so pick that pair on every dev clip (one clip of a 150-clip slice is 0.7 points).
        scored = []
        for name, model_dir in speech_models:
            model = SLUModel.from_pretrained(model_dir, nlu=False)
            readings = dev_readings(model, dev, NluPass(teacher), desc=f"nlu: dev readings, {name}")
            w, by_weight = choose_weight(readings, [u.intent for u in dev])
            scored.append((by_weight[w], name, model_dir, w, by_weight))
            print(f"{name}: dev intent accuracy {by_weight[0.0]:.4f} alone, {by_weight[w]:.4f} with the text "
                  f"pass (weight {w:g})")
        best_acc = max(s[0] for s in scored)
        _, chosen, final_dir, weight, dev_accuracy = next(s for s in scored if s[0] == best_acc)  # ties: earlier
        # The text model on the *gold* dev transcripts: what the NLU alone does on unseen phrasings,
        # the ceiling the speech side works under.
        gold_text = sum(p[0] == u.intent for p, u in zip(teacher.predict([u.text for u in dev]), dev)) / len(dev)
        nlu_info = {"speech_model": chosen, "weight": weight, "dev_intent_accuracy_by_weight": dev_accuracy,
                    "dev_intent_accuracy_by_model": {s[1]: s[0] for s in scored},
                    "teacher_dev_gold_transcript_accuracy": gold_text}
        print(f"-> {chosen} + text pass (weight {weight:g}); the text model alone on the gold dev transcripts: "
              f"{gold_text:.4f}")
        timings["nlu_s"] = time.perf_counter() - t
    shutil.rmtree(final, ignore_errors=True)
    shutil.copytree(final_dir, final, ignore=shutil.ignore_patterns("optimizer.safetensors", "trainer_state.json"))
    if teacher is not None:
        from assistant.nlu import attach

        attach(final, teacher, weight)

    t = _stage("5. evaluation on `test` (unseen voices and phrasings)")
    test = read_manifest(corpus / "test.jsonl")
    rows = []
    candidates = [(name, model_dir, False) for name, model_dir in speech_models]
    if nlu_info is not None:
        candidates.append((f"final = {nlu_info['speech_model']} + text pass", final, True))
    for name, model_dir, use_nlu in candidates:
        model = SLUModel.from_pretrained(model_dir, nlu=use_nlu)
        model.eval()
        report, preds = evaluate_model(model, test, schema, desc=f"test: {name}")
        rows.append((name, report))
        if model_dir in (final_dir, final):     # the last match is the deployed model
            write_predictions(test, preds, out / "test_predictions.jsonl")
            plot_confusion(test, preds, out / "test_confusion.png")
            final_report = report
    timings["evaluate_s"] = time.perf_counter() - t

    print("\n=== results on test ===")
    width = max(len(name) for name, _ in rows)
    print(f"{'model':<{width}} {'intent acc':>10} {'slot F1':>8} {'SLU-F1':>7} {'WER':>7} {'invalid':>8}")
    for name, r in rows:
        print(f"{name:<{width}} {r['intent_accuracy']:>10.4f} {r['slot_f1']:>8.4f} {r['slu_f1']:>7.4f} "
              f"{r['wer']:>7.4f} {r['invalid_rate']:>8.4f}")
    print("\nfinal model:", final, "\n" + format_report(final_report))

    real = None
    if cfg.real_speech:
        t = _stage("6. real human speech (pocketsphinx test audio): stock ASR WER before / after fine-tuning")
        try:
            from assistant.realspeech import compare

            real = compare({"stock tiny.en": None, "fine-tuned": str(final)})
            for name, r in real.items():
                print(f"{name:<14} stock-prompt ASR WER {r['wer']:.4f} on {r['n_clips']} clips"
                      + (f"; SLU-output transcript WER {r['slu_wer']:.4f} on the {r['slu_n_clips']} clips that "
                         "fit its context" if "slu_wer" in r else ""))
        except OSError as e:  # no registry access: say so, keep the rest
            print(f"skipped: could not fetch the pocketsphinx test audio ({e})")
        timings["real_speech_s"] = time.perf_counter() - t
    print("time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    summary = {"final_model": str(final), "test": {n: r for n, r in rows}, "timings_s": timings,
               "rsft_rounds": rounds_table, "nlu": nlu_info, "real_speech": real}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="assistant run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(ap, MainConfig)
    cfg = parse_config(MainConfig, ap.parse_args(argv))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run_main(cfg)
    return 0
