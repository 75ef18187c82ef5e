"""The systems the bench compares, each ``waves -> list[ParseResult]`` with a ``name`` (``System``).

* ``OursSystem``: our SLU model (eager, ONNX fp32, ONNX int8) through ``assistant.inference.predict_waves``;
* ``CascadeSystem``: the stock transformers ASR pipeline -> the MiniLM text intent classifier;
* ``ClassifierSystem``: peer (2), WhisperForAudioClassification (built by ``build_classifier_peer``;
  trained by ``assistant.bench.throughput.bench_classifier_peer``);
* ``build_system``: a system by name, for the memory probe's fresh process;
* the cascade's accuracy reused from an earlier bench.json (``reusable_cascade_accuracy``): deterministic,
  independent of our model, and the slowest part of a run.

torch, transformers, onnxruntime and the models are imported inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Protocol

from assistant.frames import Frame, ParseResult
from assistant.model.convert import default_pretrained_dir
from assistant.model.interface import SpeechModel

SAMPLE_RATE = 16000       # what every system takes: 16 kHz mono waves (torch tensors)


class System(Protocol):
    name: str

    def __call__(self, waves) -> list[ParseResult]: ...


class OursSystem:
    """The SLU model (eager SLUModel or OnnxSLU) through assistant.inference.predict_waves."""

    def __init__(self, name: str, model: SpeechModel, schema):
        self.name, self.model, self.schema = name, model, schema

    def __call__(self, waves) -> list[ParseResult]:
        from assistant.inference import predict_waves

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # 8 s clips are longer than a 6 s context: expected, noted
            preds = predict_waves(self.model, list(waves), self.schema)
        return [ParseResult(p.valid, Frame(p.intent, p.slots, p.transcript)) for p in preds]


class CascadeSystem:
    """Stock transformers ASR pipeline (30 s padding, default generation) -> MiniLM text intent classifier."""

    name = "cascade"

    def __init__(self, teacher, schema, batch_size: int):
        from transformers import pipeline

        self.asr = pipeline("automatic-speech-recognition", model=str(default_pretrained_dir()), device="cpu")
        self.teacher, self.schema, self.batch_size = teacher, schema, batch_size

    def __call__(self, waves) -> list[ParseResult]:
        inputs = [{"raw": w.numpy(), "sampling_rate": SAMPLE_RATE} for w in waves]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.asr(inputs, batch_size=min(self.batch_size, len(inputs)))
        texts = [o["text"].strip() for o in out]
        frames = []
        for text, (intent, slots, _) in zip(texts, self.teacher.predict(texts)):
            self.schema.render_response(intent, slots)     # the response, as ours renders it
            frames.append(ParseResult(True, Frame(intent, slots, text)))
        return frames


class ClassifierSystem:
    """WhisperForAudioClassification: log-mel -> encoder -> mean pool -> intent. Same front end and context."""

    name = "classifier"

    def __init__(self, model, intents: list[str], n_frames: int):
        self.model, self.intents, self.n_frames = model.eval(), intents, n_frames

    def __call__(self, waves) -> list[ParseResult]:
        import torch

        from assistant.features import batch_log_mel

        with torch.inference_mode():
            logits = self.model(input_features=batch_log_mel(list(waves), self.n_frames)).logits
        return [ParseResult(True, Frame(self.intents[int(i)])) for i in logits.argmax(-1)]


def build_classifier_peer(intents: list[str], context_seconds: float, frozen_layers: int = 3):
    """The converted Whisper tiny.en encoder under a classification head, with our context and freezing."""
    import torch
    from torch import nn
    from transformers import WhisperForAudioClassification

    from assistant.features import frames_for_seconds

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = WhisperForAudioClassification.from_pretrained(
            str(default_pretrained_dir()), num_labels=len(intents), id2label=dict(enumerate(intents)),
            label2id={k: i for i, k in enumerate(intents)}, dtype=torch.float32)
    n_frames = frames_for_seconds(context_seconds)
    encoder = model.encoder
    table = encoder.embed_positions.weight.data[: n_frames // 2].clone()   # same truncation as SLUModel
    encoder.embed_positions = nn.Embedding(*table.shape)
    encoder.embed_positions.weight.data.copy_(table)
    encoder.embed_positions.requires_grad_(False)
    model.config.max_source_positions = encoder.config.max_source_positions = n_frames // 2
    for module in (encoder.conv1, encoder.conv2, *encoder.layers[:frozen_layers]):
        module.requires_grad_(False)
    return model, n_frames


def build_system(name: str, model_dir: str, onnx_dir: str, threads: int, schema, batch: int) -> System:
    """One of the systems the main run builds, by name (eager, onnx, onnx-int8, cascade), from its files."""
    if name in ("eager", "onnx", "onnx-int8"):
        from assistant.nlu import load_pipeline

        return OursSystem(name, load_pipeline(model_dir if name == "eager" else onnx_dir, runtime=name,
                                              threads=threads), schema)
    if name == "cascade":
        from assistant.nlu import default_teacher

        return CascadeSystem(default_teacher(schema, progress=False), schema, batch)
    raise ValueError(f"unknown system {name!r}")


# ==================================================================================================
# Reusing the cascade's accuracy (deterministic, independent of our model, and the slowest part)
# ==================================================================================================

def subset_fingerprint(utts) -> str:
    """Identifies the scored utterances: ids, labels and audio file sizes."""
    rows = []
    for u in utts:
        try:
            size = os.path.getsize(u.audio)
        except OSError:
            size = -1
        rows.append([u.id, u.text, u.intent, sorted((u.slots or {}).items()), size])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def cascade_key(teacher) -> dict:
    """What the cascade's outputs depend on: the ASR weights, the text classifier and transformers."""
    import transformers

    weights = default_pretrained_dir() / "model.safetensors"
    return {"asr": str(default_pretrained_dir()), "asr_bytes": weights.stat().st_size if weights.exists() else -1,
            "teacher": (getattr(teacher, "info", {}) or {}).get("fingerprint"), "transformers": transformers.__version__}


def reusable_cascade_accuracy(path: str, fingerprint: str, key: dict) -> tuple[dict | None, str]:
    try:
        old = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        return None, f"{path}: unreadable ({e})"
    if old.get("accuracy_subset", {}).get("fingerprint") != fingerprint:
        return None, f"{path}: a different test subset"
    if old.get("cascade_key") != key:
        return None, f"{path}: a different cascade (weights, teacher or transformers version)"
    acc = old.get("accuracy", {}).get("cascade")
    if not acc or acc.get("reused_from"):
        return None, f"{path}: no measured cascade accuracy"
    return {**acc, "reused_from": str(path), "measured_at": old.get("meta", {}).get("time")}, "reused"
