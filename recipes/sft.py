"""Supervised fine-tuning, spelled out: read it top to bottom.

    python recipes/sft.py --config recipes/configs/sft_default.yaml [--epochs 3 ...]
    python recipes/sft.py --config recipes/configs/fsc.yaml --corpus /data/fluent_speech_commands_dataset

Same flags, same results as `assistant train` (both build the same `TrainConfig`); this file shows the
steps in one place so you can copy it and change one of them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant.config import add_dataclass_arguments, parse_config, save_yaml
from assistant.paths import runs_dir
from assistant.schema import load_schema
from assistant.train import TrainConfig, build_model, examples_from_utterances, fine_tune, load_splits, vocabulary_texts


def setup(cfg: TrainConfig):
    """Data (our manifests, or FSC / SLURP in their own layouts) and the pretrained model."""
    schema = load_schema()
    train_utts, dev_utts = load_splits(cfg)                   # --corpus/--train-manifest/default corpus
    examples = examples_from_utterances(train_utts)           # audio -> "transcript | intent | slot=value ; ..."
    # Whisper tiny.en (or --model), its output vocabulary cut to the frames' tokens, LoRA adapters on.
    model = build_model(cfg, vocabulary_texts(schema, [e.target for e in examples]))
    return schema, model, examples, dev_utts


def train(cfg: TrainConfig, schema, model, examples, dev) -> dict:
    """Fine-tune; the best dev checkpoint goes to <output_dir>/best, resumable from <output_dir>/last."""
    out = Path(cfg.output_dir or runs_dir() / "sft_default")
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    result = fine_tune(model, examples, dev, cfg, out, desc="sft", schema=schema)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def cleanup(result: dict) -> None:
    print(f"best checkpoint {result['best_dir']}: dev {json.dumps(result['best_dev'])} "
          f"({result['steps']} steps, {result['seconds']} s)")


def recipe_main(cfg: TrainConfig) -> dict:
    schema, model, examples, dev = setup(cfg)
    result = train(cfg, schema, model, examples, dev)
    cleanup(result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(parser, TrainConfig)
    recipe_main(parse_config(TrainConfig, parser.parse_args(sys.argv[1:])))
