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


def test_walkthrough_executes(smoke_corpus, monkeypatch):
    monkeypatch.setenv("ASSISTANT_NB_CORPUS", str(smoke_corpus))
    monkeypatch.setenv("ASSISTANT_NB_STEPS", "2")
    monkeypatch.setenv("ASSISTANT_NB_MODEL", "")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "greedy" in outputs                 # candidates were generated
    assert "KEEP" in outputs or "drop" in outputs
    assert "dev after the mini round" in outputs
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))  # the plot
