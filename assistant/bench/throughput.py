"""Training-side throughput, and the peer trained for the bench.

* ``bench_training``: ``assistant.train.fine_tune`` step time (difference of a 1 and a 1 + N step run);
* ``bench_rsft``: RSFT candidate generation (N=8 + greedy), without and with the reference model;
* ``bench_scoring``: reward scoring (verifier, teacher, both) in candidates/s;
* ``bench_classifier_peer``: peer (2), WhisperForAudioClassification after a short HF Trainer run, then
  the same latency and accuracy measurements as the other systems (intent only: no slots, no transcript).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from assistant.bench.harness import Clip, accuracy, latency, timed
from assistant.bench.systems import ClassifierSystem, build_classifier_peer
from assistant.config import ConfigError, load_config
from assistant.rsft.rewards import build_reward_fns


# ==================================================================================================
# Training / RSFT throughput
# ==================================================================================================

def _training_recipe(model_dir: Path):
    """The recipe that trained this model (runs/NAME/config.yaml next to best/), else the defaults."""
    from assistant.train import TrainConfig

    recipe, source = TrainConfig(), "TrainConfig defaults"
    if (model_dir.parent / "config.yaml").is_file():
        try:
            recipe, source = load_config(TrainConfig, model_dir.parent / "config.yaml"), str(model_dir.parent / "config.yaml")
        except ConfigError:
            pass
    return recipe, source


def bench_training(model_dir: Path, train_utts, dev_utts, steps: int, batch_size: int, threads: int) -> dict:
    """Step time = (time of a 1 + ``steps`` step run - time of a 1 step run) / steps: both runs pay the same
    fixed costs (final dev evaluation, checkpoint writes), so the difference is pure training steps."""
    from assistant.nlu import load_pipeline
    from assistant.train import examples_from_utterances, fine_tune

    recipe, source = _training_recipe(model_dir)
    examples = examples_from_utterances(train_utts[: max(batch_size * (steps + 1), batch_size)])
    runs = {}
    for n_steps in (1, 1 + steps):
        model = load_pipeline(model_dir)     # as deployed: fine_tune's dev score reads with the text pass
        cfg = replace(recipe, max_steps=n_steps, batch_size=batch_size, warmup_steps=1, resume=False,
                      save_every_steps=10**9, threads=threads, context_seconds=model.context_seconds,
                      tiny_random=False)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = fine_tune(model, examples, dev_utts, cfg, Path(tmp), desc=f"bench-train-{n_steps}")
            runs[n_steps] = {"loop_s": result["seconds"], "total_s": time.perf_counter() - start}
        del model
    step_s = max(runs[1 + steps]["loop_s"] - runs[1]["loop_s"], 1e-9) / steps
    return {"batch_size": batch_size, "steps_timed": steps, "step_s": step_s, "utt_per_s": batch_size / step_s,
            "setup_s": runs[1]["total_s"] - runs[1]["loop_s"], "runs": {str(k): v for k, v in runs.items()},
            "recipe": source, "freeze_encoder_layers": recipe.freeze_encoder_layers,
            "cache_encoder": recipe.cache_encoder,
            "note": "setup_s = audio load + frozen-trunk encoding of the examples, paid once per fine_tune call"}


def bench_rsft(model, model_dir: Path, pool_utts, batch_size: int) -> tuple[dict, list, list]:
    """Candidate generation (N=8 + greedy) as the RSFT loop runs it: without and with the reference model."""
    from assistant.model.slu import SLUModel
    from assistant.rsft.generate import GenerateConfig, generate_candidates

    params = GenerateConfig(num_samples=8, greedy=True, batch_size=batch_size)
    rows = len(pool_utts) * (params.num_samples + 1)
    out = {"utterances": len(pool_utts), "decoded_per_utt": params.num_samples + 1}
    ref = SLUModel.from_pretrained(model_dir)
    cands = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, ref_model in (("generate", None), ("generate_with_ref", ref)):
            path = Path(tmp) / f"{label}.jsonl"
            result, wall, _ = timed(lambda: generate_candidates(model, pool_utts, path, params, ref_model=ref_model,
                                                                seed=0, desc=label))
            kept = sum(len(c) for c in result)
            out[label] = {"seconds": wall, "decoded_per_s": rows / wall, "distinct_candidates": kept,
                          "distinct_per_s": kept / wall}
            cands = result
    return out, pool_utts, cands


def bench_scoring(utts, cands, teacher) -> dict:
    n = sum(len(c) for c in cands)
    out = {"candidates": n}
    if not n:
        return out
    fns = {"verifier": build_reward_fns({"verifier": 1.0})}
    if teacher is not None:
        fns["teacher"] = build_reward_fns({"teacher": 1.0}, teacher=teacher)
        fns["verifier+teacher"] = build_reward_fns({"verifier": 1.0, "teacher": 1.0}, teacher=teacher)
    for name, fn in fns.items():
        fn(utts[:1], cands[:1])                                   # warm-up
        _, wall, _ = timed(fn, utts, cands)
        out[name] = {"seconds": wall, "candidates_per_s": n / wall}
    return out


# ==================================================================================================
# Peer (2): an audio classifier trained with the HF Trainer (intent only: no slots, no transcript)
# ==================================================================================================

def _classifier_examples(train_utts, intents: list[str], n_frames: int) -> tuple[list, list[int]]:
    """Log-mels and intent indices of the readable, labelled utterances."""
    from assistant.audio import AudioError, load_audio
    from assistant.features import batch_log_mel

    index = {k: i for i, k in enumerate(intents)}
    feats, labels = [], []
    for u in train_utts:
        try:
            feats.append(batch_log_mel([load_audio(u.audio)], n_frames)[0])
            labels.append(index[u.intent])
        except (AudioError, KeyError):
            continue
    return feats, labels


def _train_classifier(model, feats: list, labels: list[int], steps: int, batch_size: int) -> dict:
    """``steps`` HF Trainer steps on (feats, labels); the Trainer's metrics."""
    import torch
    from transformers import Trainer, TrainingArguments

    class _Split(torch.utils.data.Dataset):
        def __len__(self):
            return len(feats)

        def __getitem__(self, i):
            return {"input_features": feats[i], "labels": torch.tensor(labels[i])}

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch_size, max_steps=steps,
                                 learning_rate=3e-4, warmup_steps=max(1, steps // 10), weight_decay=0.01,
                                 logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                                 dataloader_num_workers=0, disable_tqdm=True, seed=0)
        return Trainer(model=model, args=args, train_dataset=_Split()).train().metrics


def bench_classifier_peer(schema, train_utts, test_utts, clips: dict[str, list[Clip]], steps: int, batch_size: int,
                          context_seconds: float, reps: int) -> dict:
    """A short HF Trainer run (``steps`` x ``batch_size``), then the same latency / accuracy measurements."""
    intents = sorted(schema.intents)
    model, n_frames = build_classifier_peer(intents, context_seconds)
    feats, labels = _classifier_examples(train_utts[: steps * batch_size], intents, n_frames)
    metrics = _train_classifier(model, feats, labels, steps, batch_size)
    system = ClassifierSystem(model, intents, n_frames)
    return {"steps": steps, "batch_size": batch_size, "train_utterances": len(feats),
            "train_seconds": float(metrics["train_runtime"]),           # transformers 5 reports strings
            "train_utt_per_s": float(metrics["train_samples_per_second"]),
            "latency": latency(system, {"3s": clips["3s"]}, reps, 1, batch_size),
            "accuracy": accuracy(system, test_utts, batch_size),
            "note": f"{steps} steps x {batch_size} with conv + 3 encoder layers frozen (as our recipe), no trunk "
                    "caching (the Trainer runs the frozen layers every step); not trained to convergence: the "
                    "accuracy is what this budget buys, and the output is an intent only (no slots/transcript)"}
