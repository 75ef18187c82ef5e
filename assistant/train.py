"""Supervised fine-tuning: pretrained Whisper -> "transcript | intent | slots" frames.

    assistant train --config recipes/configs/sft_default.yaml [--epochs 4 ...]

Read top to bottom: `recipe_main(cfg)` -> `SupervisedRecipe.setup()` -> `.train()` -> `.cleanup()`.
`fine_tune(...)` is the reusable core (RSFT fine-tunes on its kept set with it).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from assistant.config import ConfigError, parse_command, run_command, save_yaml
from assistant.model.slu import stock_style
from assistant.paths import generated_dir, runs_dir


@dataclass
class TrainConfig:
    train_manifest: str | None = field(default=None, metadata={"help": "training manifest (None = the default "
                                                                        "corpus's train split)"})
    dev_manifest: str | None = field(default=None, metadata={"help": "dev manifest for checkpoint selection (None "
                                                                      "= the default corpus's dev split)"})
    corpus: str | None = field(default=None, metadata={"help": "folder of a downloaded FSC or SLURP corpus: fills "
                                                                "the train/dev manifests from its official layout"})
    corpus_format: str | None = field(default=None, metadata={"help": "layout of --corpus: fsc or slurp"})
    audio_root: str | None = field(default=None, metadata={"help": "SLURP only: folder with the recordings"})
    dataset: str | None = field(default=None, metadata={"help": "a Hugging Face dataset instead of manifests: a "
                                                                "save_to_disk folder, an audiofolder or a hub id"})
    train_split: str = field(default="train", metadata={"help": "--dataset: the split to train on"})
    dev_split: str = field(default="validation", metadata={"help": "--dataset: the split to select on"})
    columns: str | None = field(default=None, metadata={"help": "--dataset: FIELD=COLUMN pairs where its names "
                                                                "differ from ours (audio, text, intent, slots, "
                                                                "speaker, id), e.g. text=sentence,intent=label"})
    model: str = field(default="tiny.en", metadata={"help": "pretrained start: tiny.en = packaged Whisper tiny.en, "
                                                            "base = packaged multilingual Whisper base (converted "
                                                            "once), a folder or a hub id"})
    output_dir: str | None = field(default=None, metadata={"help": "where best/ and last/ checkpoints go (None = "
                                                                    "runs/sft_default)"})
    context_seconds: float = 6.0
    epochs: int = 4
    max_steps: int | None = None      # None = run all epochs
    batch_size: int = 16
    lr: float = 3e-4
    encoder_lr_scale: float = 0.3     # unfrozen encoder layers learn slower: they are already good
    weight_decay: float = 0.01
    warmup_steps: int = 30
    freeze_encoder_layers: int | None = None   # None = the whole encoder frozen (its output cached once per clip)
    cache_encoder: bool = True        # run the frozen encoder layers once, not every step (~5x faster on CPU)
    train_embeddings: bool = False    # the tied 51,864 x d token matrix: a dense gradient + Adam update per step
    asr_weight: float = 0.5           # weight of the plain-transcription loss (stock prompt) that keeps ASR alive
    asr_rows: int = 4                 # clips per batch that also get the ASR loss (its 51,864-way softmax is costly)
    lora_rank: int = 0                # > 0: train LoRA adapters (off for the stock ASR prompt) instead of the weights
    lora_alpha: float | None = None   # adapter scale alpha / rank (None = rank, i.e. scale 1)
    spec_augment: bool = False        # SpecAugment on log-mels (with cache_encoder: on the cached copies below)
    augment_copies: int = 1           # cache_encoder + spec_augment: differently masked copies of each clip,
                                      # encoded once; epoch e trains on copy e mod N (memory: N x the cache)
    spec_freq_mask: int = 15          # SpecAugment: widest frequency mask (mel bins), 2 masks per clip
    spec_time_mask: int = 15          # ... widest time mask (10 ms frames): short, a command can hinge on "off"
    train_limit: int | None = None    # use only the first N training utterances (None = all)
    dev_limit: int | None = 200       # dev utterances scored per evaluation (None = all)
    eval_every_steps: int | None = None   # None = once per epoch
    save_every_steps: int = 50        # 'last' checkpoint cadence (resume granularity)
    resume: bool = True
    seed: int = 0
    threads: int | None = None        # torch threads (None = all cores)
    tiny_random: bool = False         # tests: a tiny random model that shares every code path

    def validate(self) -> None:
        if self.epochs < 1 and self.max_steps is None:
            raise ValueError("epochs must be >= 1 (or set max_steps)")
        for name in ("max_steps", "train_limit", "dev_limit", "eval_every_steps", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, or null for none (got {getattr(self, name)})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not (1.0 <= self.context_seconds <= 30.0):
            raise ValueError(f"context_seconds must be between 1 and 30, got {self.context_seconds}")
        if self.save_every_steps < 1:
            raise ValueError(f"save_every_steps must be >= 1, got {self.save_every_steps}")
        if not (0.0 <= self.asr_weight <= 10.0):
            raise ValueError(f"asr_weight must be in [0, 10], got {self.asr_weight}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0, or null for the rank (scale 1); got {self.lora_alpha}")
        if self.augment_copies < 1:
            raise ValueError(f"augment_copies must be >= 1, got {self.augment_copies}")
        if self.dataset and (self.train_manifest or self.dev_manifest or self.corpus):
            raise ValueError("--dataset replaces --train-manifest / --dev-manifest / --corpus: pass one source")
        for name in ("spec_freq_mask", "spec_time_mask", "lora_rank", "asr_rows", "warmup_steps", "freeze_encoder_layers"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class TrainDataError(ValueError):
    """No usable training data; the message says where to look."""


@dataclass
class Example:
    """One training pair: audio file -> target frame string."""
    audio: str
    target: str
    id: str = ""
    transcript: str = ""   # plain words for the ASR-retention loss ('' = none)
    weight: float = 1.0    # the target's loss weight (RSFT: a pseudo-label the rule was less sure of < 1)
    scope: str = "frame"   # what the target teaches: "frame" (all of it) or "intent" (only the intent's tokens:
                           # RSFT, a pseudo-label whose intent is trusted more than its words and slots)


def default_manifest(split: str, profile: str = "default") -> str:
    return str(generated_dir() / profile / f"{split}.jsonl")


def frame_target(utt) -> str:
    from assistant.frames import Frame, format_frame

    return format_frame(Frame(intent=utt.intent, slots=dict(utt.slots), transcript=utt.text))


def examples_from_utterances(utts) -> list[Example]:
    return [Example(audio=u.audio, target=frame_target(u), id=u.id, transcript=u.text or "") for u in utts]


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Checkpoint state (safetensors only: no pickles anywhere)
# ----------------------------------------------------------------------------------------------

def save_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors, meta = {}, {"param_groups": [], "steps": {}}
    for gi, group in enumerate(optimizer.param_groups):
        meta["param_groups"].append({k: v for k, v in group.items() if k != "params"})
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = optimizer.state.get(p, {})
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{i}.{k}"] = v.detach().contiguous().clone()
            else:
                meta["steps"][f"{i}.{k}"] = v
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == str(i)}
        state.update({k.split(".", 1)[1]: v for k, v in meta["steps"].items() if k.split(".", 1)[0] == str(i)})
        if state:
            optimizer.state[p] = state
    for group, saved in zip(optimizer.param_groups, meta["param_groups"]):
        group.update(saved)


def atomic_save_dir(write, final: Path) -> None:
    """Write a checkpoint folder into a temp sibling, then swap it in: a kill never leaves half a folder."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_save(final: Path) -> None:
    """A kill between atomic_save_dir's two renames leaves only the complete `<final>.old`: put it back."""
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.is_dir():
        old.rename(final)


# ----------------------------------------------------------------------------------------------
# The reusable core
# ----------------------------------------------------------------------------------------------

class _LossModule(torch.nn.Module):
    """forward() = the training loss, so accelerate/DDP can wrap it.

    With `trunk_layers` set, inputs are cached outputs of the frozen encoder trunk, not log-mels. With
    ``world`` > 1 (DDP) each process holds a share of the global batch; its summed token NLL is divided
    by the whole batch's token count (times ``world``, which DDP's gradient averaging divides out again),
    so the step is the one a single process takes on the whole batch.
    """

    def __init__(self, slu, trunk_layers: int | None = None, world: int = 1):
        super().__init__()
        self.slu = slu
        self.trunk_layers = trunk_layers
        self.world = world

    def _mean(self, total: torch.Tensor, count: torch.Tensor) -> torch.Tensor | None:
        if self.world > 1:
            count = count.detach().to(torch.float64)
            torch.distributed.all_reduce(count)
            total = total * self.world
        return total / count if count > 0 else None

    def forward(self, inputs: torch.Tensor, targets: list[str], transcripts: list[str] | None = None,
                asr_weight: float = 0.0, asr_rows: int = 4, weights: list[float] | None = None,
                scopes: list[str] | None = None) -> torch.Tensor:
        if self.trunk_layers is None:
            enc = self.slu.encode(inputs)
        else:
            enc = self.slu.encode_head(inputs, self.trunk_layers)
        loss = self._mean(*self.slu.token_nll(enc, targets, weights=weights, scopes=scopes))
        # The same encoder states also teach plain transcription; a LoRA model needs no such loss: its
        # adapters are off for the stock prompt, which therefore stays the pretrained model exactly.
        # ``transcripts`` are "" except on the rows picked for it (see asr_rows_of_batch).
        if asr_weight > 0 and transcripts and self.slu.adapters is None:
            rows = [i for i, t in enumerate(transcripts) if t.strip()][:asr_rows]
            if rows:
                total, count = self.slu.token_nll(enc[rows], [stock_style(transcripts[i]) for i in rows], asr=True)
            else:                                   # this process has none, others may: still count along
                total, count = enc.sum() * 0.0, torch.zeros((), dtype=torch.long)
            asr = self._mean(total, count)
            if asr is not None:
                loss = loss + asr_weight * asr
        return loss


def asr_rows_of_batch(batch: list[int], transcripts: list[str], asr_rows: int) -> set[int]:
    """The rows of a global batch (shuffled) whose transcript also trains plain transcription: the first
    ``asr_rows`` that have one, chosen before the batch is shared out so DDP picks the same rows."""
    return set([i for i in batch if transcripts[i].strip()][:asr_rows])


def shard_of_batch(idx: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This process's rows of a global batch (every ``world``-th). A batch smaller than the number of
    processes lends its rows round-robin, since every DDP process must take part in every step."""
    if world == 1:
        return idx
    if len(idx) >= world:
        return idx[rank::world]
    return idx[rank % len(idx):][:1]


def drop_unlearnable(model, examples: list[Example], desc: str) -> list[Example]:
    """Targets the restricted output vocabulary cannot spell are reported and dropped.

    A sampled RSFT candidate, re-tokenised canonically, can need a token the model never emitted
    (BPE splits differ); one such sample must not stop a round.
    """
    ok, bad = [], []
    for ex, ids in zip(examples, model.tokenize([ex.target for ex in examples])):
        (bad if model.vocab.missing(ids) else ok).append(ex)
    if bad:
        print(f"{desc}: dropped {len(bad)} target(s) outside the output vocabulary, e.g. {bad[0].target!r}",
              file=sys.stderr)
    return ok


def load_waves(examples: list[Example], max_seconds: float, desc: str = "load audio"):
    """Read every clip once; bad files are reported and dropped, the rest go on."""
    from assistant.audio import AudioError, load_audio

    kept, waves, bad = [], [], []
    for ex in tqdm(examples, desc=desc, unit="clip", leave=False, disable=None):
        try:
            waves.append(load_audio(ex.audio, max_seconds=max_seconds))
            kept.append(ex)
        except AudioError as e:
            bad.append(str(e))
    for msg in bad[:10]:
        print(f"skipped: {msg}", file=sys.stderr)
    if len(bad) > 10:
        print(f"skipped {len(bad) - 10} more unreadable clips", file=sys.stderr)
    return kept, waves


def compute_inputs(model, waves: list[torch.Tensor], trunk_layers: int | None, batch_size: int = 32,
                   desc: str = "features", augment=None) -> torch.Tensor:
    """Log-mels, or (with trunk_layers) the frozen encoder trunk's output, for every clip, once.

    ``augment`` (e.g. a SpecAugment module) masks the log-mels before the trunk runs, so a cached
    copy can still be augmented."""
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(waves), batch_size), desc=desc, unit="batch", leave=False, disable=None):
            x = model.features(waves[i:i + batch_size])
            if augment is not None:
                x = augment(x)
            if trunk_layers is not None:
                x = model.encode_trunk(x, trunk_layers)
            chunks.append(x)
    return torch.cat(chunks) if chunks else torch.empty(0)


def freeze_for_training(model, frozen: int, n_layers: int, cfg: TrainConfig) -> None:
    model.freeze(frozen if frozen < n_layers else "all")
    if not cfg.train_embeddings:
        model.whisper.model.decoder.embed_tokens.requires_grad_(False)


def build_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    enc, dec = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            is_encoder = ".encoder." in f".{name}" or name.startswith("encoder")
            (enc if is_encoder else dec).append(p)
    groups = [{"params": dec, "lr": cfg.lr}]
    if enc:
        groups.append({"params": enc, "lr": cfg.lr * cfg.encoder_lr_scale})
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def dev_score(model, dev_utts, schema) -> dict:
    from assistant.evaluate import evaluate_model

    was_training = model.training
    model.eval()
    report, _ = evaluate_model(model, dev_utts, schema, batch_size=32, desc="dev")
    model.train(was_training)
    return report


@dataclass
class TrainingInputs:
    """What fine-tuning reads each step: the encoded clips (the cached frozen trunk's output, or mels),
    their targets and ASR transcripts."""
    kept: list[Example]
    copies: list[torch.Tensor]          # one per SpecAugment copy (epoch e reads copy e mod N); else one
    targets: list[str]
    transcripts: list[str]
    weights: list[float] | None         # per target (None: all 1, the loss exactly as without weights)
    scopes: list[str] | None            # per target, "frame" or "intent" (None: every target whole)
    spec: Any                           # per-step SpecAugment (only when the trunk is not cached), or None
    trunk_layers: int | None            # encoder layers run once and cached (None: the whole encoder per step)
    frozen: int                         # encoder layers that do not train
    n_layers: int


def encode_training_inputs(model, examples: list[Example], cfg: "TrainConfig", desc: str) -> TrainingInputs:
    from assistant.features import SpecAugment

    if not examples:
        raise TrainDataError("fine_tune: no training examples (check the manifest and the audio paths)")
    examples = drop_unlearnable(model, examples, desc)
    kept, waves = load_waves(examples, model.context_seconds, desc=f"{desc}: load audio")
    if not kept:
        raise TrainDataError(f"fine_tune: no readable training audio: none of the {len(examples)} clips could be "
                             "read (see the 'skipped:' lines above); fix them or point the manifest at others")
    n_layers = len(model.whisper.model.encoder.layers)
    frozen = n_layers if cfg.freeze_encoder_layers is None else min(cfg.freeze_encoder_layers, n_layers)
    trunk_layers = frozen if cfg.cache_encoder else None
    model.eval()
    spec = SpecAugment(cfg.spec_freq_mask, cfg.spec_time_mask).train() if cfg.spec_augment else None
    if spec is not None and trunk_layers is not None:
        # The trunk output is cached, so masks cannot be drawn per step: cache a few masked copies
        # instead (seeded per copy, so a resumed run sees the same ones) and cycle through them by epoch.
        copies = []
        for c in range(cfg.augment_copies):
            torch.manual_seed(cfg.seed * 7919 + c)
            copies.append(compute_inputs(model, waves, trunk_layers, augment=spec,
                                         desc=f"{desc}: encode masked copy {c + 1}/{cfg.augment_copies}"))
        spec = None                                   # the masks are in the copies: none per step
    else:
        copies = [compute_inputs(model, waves, trunk_layers, desc=f"{desc}: encode")]   # once, not per epoch
    return TrainingInputs(kept=kept, copies=copies, targets=[ex.target for ex in kept],
                          transcripts=[ex.transcript for ex in kept],
                          weights=None if all(ex.weight == 1.0 for ex in kept) else [ex.weight for ex in kept],
                          scopes=None if all(ex.scope == "frame" for ex in kept) else [ex.scope for ex in kept],
                          spec=spec, trunk_layers=trunk_layers,
                          frozen=frozen, n_layers=n_layers)


class FineTuneRun:
    """One fine-tuning run's mutable state: the model, its optimizer, the step counter and the best dev
    score so far, with the checkpoints that make it resumable (out_dir/last) and selectable (out_dir/best)."""

    def __init__(self, model, inputs: TrainingInputs, dev_utts: list, cfg: "TrainConfig", out_dir: Path,
                 desc: str, schema):
        self.model, self.inputs, self.dev_utts, self.cfg = model, inputs, dev_utts, cfg
        self.out_dir, self.desc, self.schema = out_dir, desc, schema
        self.last = out_dir / "last"
        self.state = {"step": 0, "best": None, "best_key": None, "history": []}
        freeze_for_training(model, inputs.frozen, inputs.n_layers, cfg)
        self.optimizer = build_optimizer(model, cfg)

    def resume(self, total: int) -> None:
        """Continue from out_dir/last when it holds a run (weights, optimizer, counters)."""
        from assistant import distributed as dist

        if dist.is_main():
            for folder in (self.last, self.out_dir / "best"):
                recover_interrupted_save(folder)
        dist.barrier()
        if not (self.cfg.resume and dist.main_first((self.last / "trainer_state.json").is_file())):
            return
        self.state = json.loads((self.last / "trainer_state.json").read_text())
        trained = type(self.model).from_pretrained(self.last)
        self.model.load_state_dict(trained.state_dict())
        freeze_for_training(self.model, self.inputs.frozen, self.inputs.n_layers, self.cfg)
        self.optimizer = build_optimizer(self.model, self.cfg)
        load_optimizer(self.optimizer, self.last / "optimizer.safetensors")
        print(f"{self.desc}: resumed from {self.last} at step {self.state['step']}/{total}")

    def save_last(self) -> None:
        from assistant import distributed as dist

        def write(tmp: Path):
            self.model.save_pretrained(tmp)
            save_optimizer(self.optimizer, tmp / "optimizer.safetensors")
            (tmp / "trainer_state.json").write_text(json.dumps(self.state, indent=1))
        if dist.is_main():
            atomic_save_dir(write, self.last)
        dist.barrier()

    def evaluate_and_keep_best(self) -> None:
        from assistant import distributed as dist

        report = dev_score(self.model, self.dev_utts, self.schema)
        key = (report["intent_accuracy"], report["slot_f1"], -report["wer"])
        state = self.state
        state["history"].append({"step": state["step"], "dev_intent_accuracy": report["intent_accuracy"],
                                 "dev_slot_f1": report["slot_f1"], "dev_wer": report["wer"]})
        if state["best_key"] is None or list(key) > list(state["best_key"]):
            state["best_key"], state["best"] = list(key), {k: report[k] for k in
                                                          ("intent_accuracy", "slot_f1", "slu_f1", "wer", "invalid_rate", "n")}
            if dist.is_main():
                atomic_save_dir(self.model.save_pretrained, self.out_dir / "best")
        dist.barrier()
        if dist.is_main():
            tqdm.write(f"{self.desc}: step {state['step']} dev intent acc {report['intent_accuracy']:.4f} "
                       f"slot F1 {report['slot_f1']:.4f} WER {report['wer']:.4f}")


def _train_step(run: FineTuneRun, loss_module, optimizer, accelerator, whole: torch.Tensor, epoch: int,
                total: int) -> float:
    """One optimizer step on this process's share of the global batch ``whole``; returns the loss."""
    from assistant import distributed as dist

    cfg, inputs, step = run.cfg, run.inputs, run.state["step"]
    asr_ids = asr_rows_of_batch(whole.tolist(), inputs.transcripts, cfg.asr_rows)
    idx = shard_of_batch(whole, dist.rank(), dist.world_size())
    batch = inputs.copies[epoch % len(inputs.copies)][idx]
    if inputs.spec is not None:
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        batch = inputs.spec(batch)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * lr_factor(step, total, cfg.warmup_steps)
    rows = idx.tolist()
    loss = loss_module(batch.to(accelerator.device), [inputs.targets[i] for i in rows],
                       [inputs.transcripts[i] if i in asr_ids else "" for i in rows], cfg.asr_weight, cfg.asr_rows,
                       None if inputs.weights is None else [inputs.weights[i] for i in rows],
                       None if inputs.scopes is None else [inputs.scopes[i] for i in rows])
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{run.desc}: loss became {loss.item()} at step {step}; lower --lr or check the data")
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(loss_module.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def fine_tune(model, examples: list[Example], dev_utts: list, cfg: TrainConfig, out_dir: Path,
              desc: str = "train", schema=None) -> dict:
    """Fine-tune `model` on examples; keep the best dev checkpoint in out_dir/best; resumable via out_dir/last.

    Returns {"best_dev": report, "best_dir": path, "steps": n, "seconds": t}.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from assistant import distributed as dist

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_seed(cfg.seed)
    # Under `accelerate launch` (P processes) this is DDP: each process takes its share of every global
    # batch, gradients are averaged, and only the main process writes checkpoints. Parameters some steps
    # do not reach (the ASR loss's rows are optional) must not stall the gradient reduction.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    inputs = encode_training_inputs(model, examples, cfg, desc)
    steps_per_epoch = math.ceil(len(inputs.kept) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every_steps or steps_per_epoch
    run = FineTuneRun(model, inputs, dev_utts, cfg, out_dir, desc, schema)
    run.resume(total)
    loss_module, optimizer = accelerator.prepare(_LossModule(model, inputs.trunk_layers, dist.world_size()),
                                                 run.optimizer)
    run.optimizer = optimizer
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, initial=run.state["step"], desc=desc, unit="step", disable=None if dist.is_main() else True)
    while run.state["step"] < total:
        epoch, offset = divmod(run.state["step"], steps_per_epoch)
        # Order depends only on (seed, epoch): a resumed run sees exactly the batches it would have.
        order = torch.randperm(len(inputs.kept), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        for b in range(offset, steps_per_epoch):
            if run.state["step"] >= total:
                break
            loss = _train_step(run, loss_module, optimizer, accelerator,
                               order[b * cfg.batch_size:(b + 1) * cfg.batch_size], epoch, total)
            run.state["step"] += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch + 1)
            if run.state["step"] % eval_every == 0 or run.state["step"] == total:
                run.evaluate_and_keep_best()
            if run.state["step"] % cfg.save_every_steps == 0 or run.state["step"] == total:
                run.save_last()
    bar.close()
    if not dist.main_first((out_dir / "best").exists()):     # resumed after the final step: make sure best exists
        run.evaluate_and_keep_best()
    # Drop the DDP wrapper now, while every process still holds the process group: freed later (by the
    # garbage collector at exit, after the group is gone) its reducer can abort a rank at teardown.
    del loss_module, optimizer
    run.optimizer = None
    accelerator.free_memory()
    return {"best_dev": run.state["best"], "best_dir": str(out_dir / "best"), "steps": run.state["step"],
            "seconds": round(time.perf_counter() - start, 1), "history": run.state["history"]}


# ----------------------------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------------------------

class SupervisedRecipe:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out_dir = Path(cfg.output_dir or runs_dir() / "sft_default")

    def setup(self) -> None:
        from assistant.schema import load_schema

        cfg = self.cfg
        self.schema = load_schema()
        self.train_utts, self.dev_utts = load_splits(cfg)
        self.examples = examples_from_utterances(self.train_utts)
        from assistant import distributed as dist

        with dist.main_process_first():            # the packaged weights convert into the cache once
            self.model = build_model(cfg, vocabulary_texts(self.schema, [e.target for e in self.examples]))
        self.out_dir.mkdir(parents=True, exist_ok=True)

        if dist.is_main():
            save_yaml(cfg, self.out_dir / "config.yaml")

    def train(self) -> dict:
        self.result = fine_tune(self.model, self.examples, self.dev_utts, self.cfg, self.out_dir,
                                desc="sft", schema=self.schema)
        from assistant import distributed as dist

        if dist.is_main():
            (self.out_dir / "result.json").write_text(json.dumps(self.result, indent=2))
        return self.result

    def cleanup(self) -> None:
        print(f"sft: best checkpoint {self.result['best_dir']}  dev {self.result['best_dev']}  "
              f"({self.result['steps']} steps, {self.result['seconds']} s)")


def load_splits(cfg: TrainConfig) -> tuple[list, list]:
    """(train, dev) utterances, limits applied; hidden labels in train are an error."""
    from assistant.data.manifest import read_manifest

    if cfg.dataset:
        from assistant.data.hf import read_dataset

        train_path = f"{cfg.dataset} [{cfg.train_split}]"
        train = read_dataset(cfg.dataset, cfg.train_split, cfg.columns)
        dev = read_dataset(cfg.dataset, cfg.dev_split, cfg.columns)
    else:
        kw = {"audio_root": cfg.audio_root} if cfg.audio_root else {}
        train_path, dev_path = manifest_paths(cfg)
        train, dev = read_manifest(train_path, **kw), read_manifest(dev_path, **kw)
    hidden = [u.id for u in train if u.meta.get("labels_hidden")]
    if hidden:
        raise ConfigError(f"{train_path}: {len(hidden)} utterances have hidden labels "
                          "(labels_hidden); supervised training needs labelled data")
    return (train[: cfg.train_limit] if cfg.train_limit else train), (dev[: cfg.dev_limit] if cfg.dev_limit else dev)


def build_model(cfg: TrainConfig, vocab_texts: list[str]):
    """The pretrained model (or a tiny random one) with an output vocabulary covering ``vocab_texts`` --
    every target it will ever be taught -- and LoRA adapters if the config asks for them."""
    from assistant.model.slu import SLUModel

    if cfg.tiny_random:
        model = SLUModel.tiny_random(vocab_texts, seed=cfg.seed, context_seconds=cfg.context_seconds)
    else:
        model = SLUModel.from_pretrained(cfg.model, context_seconds=cfg.context_seconds,
                                         output_vocab=vocab_texts)
    if cfg.lora_rank and model.adapters is None:
        model.add_adapters(lora_config(cfg, len(model.whisper.model.encoder.layers)), seed=cfg.seed)
    return model


def manifest_paths(cfg: TrainConfig) -> tuple[str, str]:
    """(train, dev) manifests: explicit paths win, then --corpus in its official layout, then the default corpus."""
    from assistant.data.manifest import corpus_splits

    if cfg.corpus_format and not cfg.corpus and not (cfg.train_manifest and cfg.dev_manifest):
        raise ConfigError(f"corpus_format {cfg.corpus_format!r} needs --corpus FOLDER (where you unpacked "
                          f"the {cfg.corpus_format.upper()} download)")
    if cfg.corpus and not cfg.corpus_format:
        raise ConfigError("--corpus needs --corpus-format fsc or slurp (or use a recipe config that sets it)")
    splits = corpus_splits(cfg.corpus, cfg.corpus_format) if cfg.corpus else {}
    train = cfg.train_manifest or str(splits.get("train") or default_manifest("train"))
    dev = cfg.dev_manifest or str(splits.get("dev") or default_manifest("dev"))
    return train, dev


def lora_config(cfg: TrainConfig, encoder_layers: int):
    """Adapters on every decoder layer and on the encoder layers that train (none if it is frozen)."""
    from assistant.model.lora import LoraConfig

    first = encoder_layers if cfg.freeze_encoder_layers is None else min(cfg.freeze_encoder_layers, encoder_layers)
    return LoraConfig(rank=cfg.lora_rank, alpha=float(cfg.lora_rank) if cfg.lora_alpha is None else cfg.lora_alpha, encoder_from=first)


def vocabulary_texts(schema, targets: list[str]) -> list[str]:
    """Texts whose tokens make up the restricted output vocabulary: the whole grammar + the targets."""
    from assistant.data.grammar import load_grammar
    from assistant.frames import Frame, format_frame

    texts = list(targets)
    for s in load_grammar().all_sentences(schema, limit_per_template=50):
        texts.append(format_frame(Frame(intent=s.intent, slots=dict(s.slots), transcript=s.text)))
    return texts


def recipe_main(cfg: TrainConfig) -> dict:
    recipe = SupervisedRecipe(cfg)
    recipe.setup()
    result = recipe.train()
    recipe.cleanup()
    return result


def cli(argv: list[str]) -> int:
    cfg = parse_command(TrainConfig, "assistant train", __doc__, argv)
    from assistant.data.manifest import ManifestError

    return run_command("assistant train", lambda: recipe_main(cfg), (ManifestError, TrainDataError))
