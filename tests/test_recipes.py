"""The real-corpus recipes (FSC, SLURP) on the fixture corpora in their official layouts, and recipes/sft.py."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.config import ConfigError, load_config
from assistant.data.manifest import ManifestError, corpus_splits
from assistant.train import TrainConfig, recipe_main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TINY = dict(tiny_random=True, max_steps=2, batch_size=2, save_every_steps=1, warmup_steps=1, dev_limit=None)


@pytest.mark.parametrize("name, corpus, n_dev", [("fsc", FIXTURES / "fsc", 2), ("slurp", FIXTURES / "slurp", 2)])
def test_corpus_recipe_trains_from_the_corpus_folder(tmp_path, name, corpus, n_dev):
    cfg = load_config(TrainConfig, ROOT / "recipes" / "configs" / f"{name}.yaml", corpus=str(corpus),
                      output_dir=str(tmp_path / name), **TINY)
    assert cfg.lora_rank > 0 and cfg.corpus_format == name
    result = recipe_main(cfg)
    assert result["steps"] == 2
    assert result["best_dev"]["n"] == n_dev            # dev = the corpus's own dev split, not train
    assert (Path(result["best_dir"]) / "lora" / "adapter_model.safetensors").is_file()


def test_corpus_splits_follow_the_official_layouts(tmp_path):
    fsc = corpus_splits(FIXTURES / "fsc", "fsc")
    assert fsc["train"].name == "train_data.csv" and fsc["dev"].name == "valid_data.csv" and fsc["test"] is None
    repo = tmp_path / "slurp" / "dataset" / "slurp"
    repo.mkdir(parents=True)
    for split in ("train", "devel", "test"):
        (repo / f"{split}.jsonl").write_text("{}\n")
    assert corpus_splits(tmp_path / "slurp", "slurp")["test"] == repo / "test.jsonl"
    (repo / "devel.jsonl").unlink()
    with pytest.raises(ManifestError, match="devel.jsonl missing"):
        corpus_splits(tmp_path / "slurp", "slurp")


def test_corpus_mistakes_are_clear_errors(tmp_path):
    fsc_yaml = ROOT / "recipes" / "configs" / "fsc.yaml"
    with pytest.raises(ConfigError, match="--corpus FOLDER"):
        recipe_main(load_config(TrainConfig, fsc_yaml, output_dir=str(tmp_path / "a"), **TINY))
    with pytest.raises(ManifestError, match="no such corpus folder"):
        recipe_main(load_config(TrainConfig, fsc_yaml, corpus=str(tmp_path / "nope"), output_dir=str(tmp_path / "b"), **TINY))
    with pytest.raises(ManifestError, match="not a FSC folder"):
        recipe_main(load_config(TrainConfig, fsc_yaml, corpus=str(FIXTURES / "slurp"), output_dir=str(tmp_path / "c"), **TINY))


def test_readable_recipe_script_runs(tmp_path):
    out = tmp_path / "script"
    args = [sys.executable, str(ROOT / "recipes" / "sft.py"), "--config", str(ROOT / "recipes" / "configs" / "fsc.yaml"),
            "--corpus", str(FIXTURES / "fsc"), "--output-dir", str(out), "--tiny-random", "true", "--max-steps", "1",
            "--batch-size", "2", "--dev-limit", "null"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best checkpoint" in done.stdout
    assert json.loads((out / "result.json").read_text())["steps"] == 1
