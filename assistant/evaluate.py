"""`assistant evaluate`: score a model on any manifest (our JSONL, FSC CSV, SLURP JSONL).

    assistant evaluate --model runs/sft_default/best --manifest data/generated/default/test.jsonl --json
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from assistant import distributed as dist
from assistant.config import parse_command
from assistant.data.manifest import ManifestError, Utterance, condition_of_utterance, engine_of, read_manifest
from assistant.inference import Prediction, predict_files
from assistant.metrics import grouped_accuracy, score_frames
from assistant.model.slu import SLUModel
from assistant.paths import resolve_model_dir
from assistant.schema import load_schema
from assistant.text import normalize_text


def predict_manifest(model, utterances: list[Utterance], schema=None, batch_size: int = 16,
                     desc: str = "decode", use_nlu: bool = True, stock: list[str] | None = None) -> list[Prediction]:
    """One Prediction per utterance, in order. Decoded in fixed slices of ``batch_size`` utterances;
    under ``accelerate launch`` each process takes every P-th slice and every process gets all the
    predictions back (so every process must call this together)."""
    starts = dist.batch_starts(len(utterances), batch_size)
    bar = tqdm(total=sum(len(utterances[s:s + batch_size]) for s in starts), desc=desc, unit="utt", leave=False,
               disable=None)
    lookup = None if stock is None else {str(u.audio): t for u, t in zip(utterances, stock)}
    rows: dict[int, Prediction] = {}
    for start in starts:
        chunk = [u.audio for u in utterances[start:start + batch_size]]
        for i, p in enumerate(predict_files(model, chunk, schema, batch_size=batch_size, use_nlu=use_nlu,
                                            stock=lookup), start):
            rows[i] = p
            bar.update(1)
    bar.close()
    return dist.gather_rows(rows, len(utterances))


def by_engine_condition(utterances: list[Utterance], systems: dict[str, list[Prediction]]) -> dict:
    """{engine: {condition: {system: intent accuracy, ..., "n": clips}}}, every system on the same clips."""
    cells: dict[str, dict[str, list[int]]] = {}
    table: dict = {}
    for i, u in enumerate(utterances):
        if any(preds[i].error for preds in systems.values()):
            continue
        cells.setdefault(engine_of(u), {}).setdefault(condition_of_utterance(u), []).append(i)
    for engine, conditions in sorted(cells.items()):
        for condition, rows in sorted(conditions.items()):
            cell = {name: sum(preds[i].valid and preds[i].intent == utterances[i].intent for i in rows) / len(rows)
                    for name, preds in systems.items()}
            table.setdefault(engine, {})[condition] = {**cell, "n": len(rows)}
    return table


def stock_cascade_predictions(teacher, utterances: list[Utterance], stock: list[str]) -> list[Prediction]:
    """The peer a user would build with no training: stock Whisper's transcript -> our text NLU."""
    words = [normalize_text(t) for t in stock]
    read = iter(teacher.predict([w for w in words if w]))
    preds = []
    for u, w in zip(utterances, words):
        p = Prediction(path=str(u.audio), transcript=w, stock_transcript=w, reader="stock")
        if w:
            p.intent, slots, p.confidence = next(read)
            p.slots, p.valid = dict(slots), True
            p.stock_intent, p.stock_slots = p.intent, dict(slots)
        preds.append(p)
    return preds


def evaluation_report(utterances: list[Utterance], preds: list[Prediction]) -> dict:
    """Metrics over the readable utterances; unreadable files are counted, not scored."""
    pairs = [(u, p) for u, p in zip(utterances, preds) if not p.error]
    gold = [{"intent": u.intent, "slots": u.slots, "text": u.text} for u, _ in pairs]
    pred = [{"valid": p.valid, "intent": p.intent, "slots": p.slots, "transcript": p.transcript} for _, p in pairs]
    score = score_frames(gold, pred)
    correct = [p.valid and p.intent == u.intent for u, p in pairs]
    return {
        **asdict(score),
        "n_unreadable": len(preds) - len(pairs),
        "per_speaker": grouped_accuracy([u.speaker for u, _ in pairs], correct),
        "per_intent": grouped_accuracy([u.intent for u, _ in pairs], correct),
        "per_engine": grouped_accuracy([engine_of(u) for u, _ in pairs], correct),
        "per_condition": grouped_accuracy([condition_of_utterance(u) for u, _ in pairs], correct),
        # the phrasing: seen in train, field (the unlabelled pool says it too) or novel (see assistant.data.synth)
        "per_part": grouped_accuracy([str(u.meta.get("part", "unknown")) for u, _ in pairs], correct),
        "mean_latency_s": sum(p.latency_s for _, p in pairs) / max(len(pairs), 1),
        "text_reader_share": sum(p.reader == "text" for _, p in pairs) / max(len(pairs), 1),
        "stock_reader_share": sum(p.reader == "stock" for _, p in pairs) / max(len(pairs), 1),
        "sample_reader_share": sum(p.reader.startswith("sample") for _, p in pairs) / max(len(pairs), 1),
        **error_sources(pairs, correct),
    }


def error_sources(pairs: list[tuple[Utterance, Prediction]], correct: list[bool]) -> dict:
    """Where the intent errors come from: clips whose transcript is word-exact (errors there are the
    NLU's: unseen phrasings) vs the rest (errors there start with a mis-heard word). Tells a user
    whether more speech data or more text/phrasings will pay. Empty when the manifest has no transcripts."""
    scored = [(normalize_text(p.transcript) == normalize_text(u.text), ok)
              for (u, p), ok in zip(pairs, correct) if u.text]
    if not scored:
        return {}
    exact = [ok for is_exact, ok in scored if is_exact]
    misheard = [ok for is_exact, ok in scored if not is_exact]
    errors = len(scored) - sum(ok for _, ok in scored)
    return {"exact_transcript_rate": len(exact) / len(scored),
            "intent_accuracy_exact_transcript": sum(exact) / len(exact) if exact else None,
            "intent_accuracy_misheard": sum(misheard) / len(misheard) if misheard else None,
            "intent_errors_misheard_share": (len(misheard) - sum(misheard)) / max(errors, 1)}


def evaluate_model(model, utterances: list[Utterance], schema=None, batch_size: int = 16,
                   desc: str = "evaluate", use_nlu: bool = True, stock: list[str] | None = None
                   ) -> tuple[dict, list[Prediction]]:
    preds = predict_manifest(model, utterances, schema, batch_size, desc, use_nlu=use_nlu, stock=stock)
    return evaluation_report(utterances, preds), preds


def write_predictions(utterances: list[Utterance], preds: list[Prediction], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for u, p in zip(utterances, preds):
            row = {"id": u.id, "audio": u.audio, "speaker": u.speaker, "gold_intent": u.intent,
                   "gold_slots": u.slots, "gold_text": u.text, **p.to_dict()}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def plot_confusion(utterances: list[Utterance], preds: list[Prediction], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted({u.intent for u in utterances})
    index = {l: i for i, l in enumerate(labels)}
    other = len(labels)  # predictions outside the gold label set (invalid / unseen intents)
    m = np.zeros((len(labels), len(labels) + 1), dtype=int)
    for u, p in zip(utterances, preds):
        if not p.error:
            m[index[u.intent], index.get(p.intent, other) if p.valid else other] += 1
    size = max(6, 0.22 * len(labels))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels) + 1), labels + ["(invalid/other)"], rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_xlabel("predicted intent")
    ax.set_ylabel("gold intent")
    ax.set_title("Intent confusion (row-normalised)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def format_report(report: dict) -> str:
    lines = [
        f"utterances       {report['n']}  (unreadable: {report['n_unreadable']})",
        f"intent accuracy  {report['intent_accuracy']:.4f}",
        f"frame accuracy   {report['frame_accuracy']:.4f}  (intent + all slots exact)",
        f"slot F1          {report['slot_f1']:.4f}",
        f"SLU-F1           {report['slu_f1']:.4f}",
        f"WER              {report['wer']:.4f}",
        f"invalid outputs  {report['invalid_rate']:.4f}",
    ]
    if report.get("text_reader_share") or report.get("stock_reader_share") or report.get("sample_reader_share"):
        lines.append(f"text NLU pass    changed {report['text_reader_share']:.1%} of the frames; the stock "
                     f"transcript's reading won on {report.get('stock_reader_share', 0):.1%}, the n-best's on "
                     f"{report.get('sample_reader_share', 0):.1%}")
    for key, label in (("per_engine", "per engine      "), ("per_condition", "per condition   "),
                       ("per_part", "per phrasing    ")):
        if len(report.get(key, {})) > 1:
            lines.append(label + ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in report[key].items()))
    if report.get("exact_transcript_rate") is not None:
        acc = lambda key: "-" if report[key] is None else f"{report[key]:.4f}"
        lines.append(f"error sources    transcript word-exact on {report['exact_transcript_rate']:.1%} of clips: "
                     f"intent acc {acc('intent_accuracy_exact_transcript')} there, {acc('intent_accuracy_misheard')} "
                     f"on the rest; {report['intent_errors_misheard_share']:.0%} of intent errors follow a "
                     "mis-heard word")
    worst = sorted(report["per_intent"].items(), key=lambda kv: kv[1]["accuracy"])[:5]
    lines.append("weakest intents  " + ", ".join(f"{k} {v['accuracy']:.2f} (n={v['n']})" for k, v in worst))
    worst_spk = sorted(report["per_speaker"].items(), key=lambda kv: kv[1]["accuracy"])[:5]
    lines.append("weakest speakers " + ", ".join(f"{k} {v['accuracy']:.2f}" for k, v in worst_spk))
    return "\n".join(lines)


@dataclass
class EvaluateConfig:
    model: str | None = field(default=None, metadata={"help": "a folder saved by `assistant train` / `assistant rsft` "
                                                              "(required)"})
    manifest: str | None = field(default=None, metadata={"help": "JSONL manifest, FSC CSV or SLURP JSONL (or --dataset)"})
    dataset: str | None = field(default=None, metadata={"help": "a Hugging Face dataset instead: a save_to_disk "
                                                                "folder, an audiofolder or a hub id"})
    split: str = field(default="test", metadata={"help": "--dataset: the split to score"})
    columns: str | None = field(default=None, metadata={"help": "--dataset: FIELD=COLUMN pairs where its names "
                                                                "differ from ours, e.g. text=sentence,intent=label"})
    audio_root: str | None = field(default=None, metadata={"help": "SLURP only: folder holding the recordings"})
    json: bool = field(default=False, metadata={"help": "print one JSON object instead of a table"})
    out: str | None = field(default=None, metadata={"help": "folder for predictions.jsonl + confusion.png"})
    batch_size: int = field(default=16, metadata={"help": "utterances decoded together"})
    limit: int | None = field(default=None, metadata={"help": "score only the first N utterances (none: all)"})
    nlu: bool = field(default=True, metadata={"help": "the folder's text second pass (nlu/); false: the speech "
                                                      "model alone"})

    def validate(self) -> None:
        if not self.model:
            raise ValueError("--model is required: pass --model DIR, a folder saved by `assistant train` / `rsft`")
        if bool(self.manifest) == bool(self.dataset):
            raise ValueError("pass one of --manifest FILE (JSONL manifest, FSC CSV or SLURP JSONL) or --dataset "
                             "PATH_OR_ID (a Hugging Face dataset)")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit} (leave it out to score every utterance)")


def cli(argv: list[str]) -> int:
    cfg = parse_command(EvaluateConfig, "assistant evaluate", __doc__, argv)

    # Only the command loads the text pass: evaluate_model (training's dev score) stays free of assistant.nlu.
    from assistant.nlu import load_pipeline

    try:
        if cfg.dataset:
            from assistant.data.hf import read_dataset

            utts = read_dataset(cfg.dataset, cfg.split, cfg.columns)
        else:
            utts = read_manifest(cfg.manifest, audio_root=cfg.audio_root) if cfg.audio_root else read_manifest(cfg.manifest)
    except ManifestError as e:
        print(f"assistant evaluate: {e}", file=sys.stderr)
        return 2
    utts = utts[: cfg.limit]
    model_dir, problem = resolve_model_dir(cfg.model)       # the one check every inference command uses
    if problem:
        print(f"assistant evaluate: {problem}", file=sys.stderr)
        return 2
    model = load_pipeline(model_dir) if cfg.nlu else SLUModel.from_pretrained(model_dir)
    report, preds = evaluate_model(model, utts, load_schema(), cfg.batch_size)

    if not dist.is_main():                 # under accelerate launch: the others decoded their share
        return 0
    for p in preds:
        if p.error:
            print(f"skipped: {p.error}", file=sys.stderr)
    if cfg.out:
        write_outputs(utts, preds, report, Path(cfg.out))
    if cfg.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        if cfg.out:
            print(f"wrote {cfg.out}/predictions.jsonl, confusion.png, report.json")
    return 0


def write_outputs(utts: list[Utterance], preds: list[Prediction], report: dict, out: Path) -> None:
    write_predictions(utts, preds, out / "predictions.jsonl")
    plot_confusion(utts, preds, out / "confusion.png")
    (out / "report.json").write_text(json.dumps(report, indent=2))
