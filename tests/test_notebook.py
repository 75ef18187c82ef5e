"""The walkthrough notebook runs top to bottom on the smoke corpus (real TTS, real Whisper weights)."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "rsft_walkthrough.ipynb"


@pytest.fixture(scope="module")
def smoke_corpus(tmp_path_factory):
    from assistant.config import load_config
    from assistant.data.synth import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("smoke")
    run_synth(load_config(SynthConfig, None, profile="smoke", out_dir=str(out), workers=1))
    return out


# Run after the notebook's own cells, in its kernel: what the cells computed, as one JSON line.
CHECK_CELL = """
import json, math
print("NB_CHECK " + json.dumps({
    "n_candidates": len(candidates[0]),
    "n_greedy": sum(c.greedy for c in candidates[0]),
    "n_draws": sum(c.count for c in candidates[0]),
    "reward_keys": sorted({k for s in scored[0] for k in s.rewards}),
    "rewards_finite": all(math.isfinite(s.reward) for s in scored[0]),
    "combined_ok": all(abs(s.reward - (s.rewards["verifier"] + 0.1 * s.rewards["acoustic"])) < 1e-6 for s in scored[0]),
    "n_decisions": len(decisions[0]),
    "kept": [d.accepted for d in decisions[0]],
    "kept_not_drawn": any(d.accepted and c.count == 0 for c, d in zip(candidates[0], decisions[0])),
    "round_kept": [sum(d.accepted for d in ds) for ds in dec],
    "round_kept_parsed": sum(d.accepted and s.candidate.frame is not None for ss, ds in zip(sc, dec) for s, d in zip(ss, ds)),
    "n_examples": len(examples),
    "n_dev": len(dev),
    "best_dev": result["best_dev"],
}))
"""


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def test_walkthrough_executes(smoke_corpus, monkeypatch):
    import json

    monkeypatch.setenv("ASSISTANT_NB_CORPUS", str(smoke_corpus))
    monkeypatch.setenv("ASSISTANT_NB_STEPS", "2")
    monkeypatch.setenv("ASSISTANT_NB_MODEL", "")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELL))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    check = json.loads(_text(code[-1]).split("NB_CHECK ", 1)[1])

    # 1. generate: the greedy frame + 6 samples (repeats merged into one candidate with a count)
    assert check["n_greedy"] == 1 and check["n_draws"] == 6 and 1 <= check["n_candidates"] <= 7
    generated = [line for line in _text(code[2]).splitlines() if line.strip()]
    assert len(generated) == check["n_candidates"] and sum(line.startswith("greedy") for line in generated) == 1
    # 2. score: both rewards, finite, combined with the weights 1.0 / 0.1
    assert check["reward_keys"] == ["acoustic", "verifier"] and check["rewards_finite"] and check["combined_ok"]
    # 3. accept (statistical, k=2, M = the best draw's reward): 1 or 2 kept, only real draws, as printed
    kept = check["kept"]
    assert check["n_decisions"] == check["n_candidates"] and 1 <= sum(kept) <= 2 and not check["kept_not_drawn"]
    printed = [line.split()[0] for line in _text(code[4]).splitlines() if line.strip()]
    assert printed == ["KEEP" if k else "drop" for k in kept]
    assert any(o.get("output_type") == "display_data" for o in code[5].get("outputs", []))   # the plot
    # 4. the mini round: one kept sample per pool clip (k=1), the parseable ones become examples, dev scored
    assert check["round_kept"] == [1] * 8
    assert check["n_examples"] == check["round_kept_parsed"]
    best = check["best_dev"]
    assert best["n"] == min(8, check["n_dev"]) and 0.0 <= best["intent_accuracy"] <= 1.0 and best["wer"] >= 0.0
    assert f"kept {check['n_examples']} pool samples" in _text(code[6])
    assert "dev after the mini round:" in _text(code[6])
