"""Real human recordings with transcripts, to check fine-tuning does not destroy Whisper's ASR.

Eleven clips recorded by people ship with the package (``assistant/resources/realspeech``, about 0.66 MB
of FLAC; licence and provenance in its README): five LibriVox sentences (Sense and Sensibility), five
spoken card names and "go forward ten meters", all from pocketsphinx 5.1.1's test data. We score the
stock ASR path (standard prefix, full vocabulary, 30 s context) on them before and after fine-tuning.
No network: the clips are read from the installed package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from assistant.audio import load_audio
from assistant.inference import predict_waves
from assistant.metrics import wer
from assistant.model.io import SLU_CONFIG_FILE
from assistant.model.slu import SLUModel

CLIPS_DIR = Path(__file__).parent / "resources" / "realspeech"


def load_clips(folder: Path | None = None) -> list[tuple[str, torch.Tensor, str]]:
    """(name, 16 kHz wave, reference transcript) for every clip listed in ``clips.json``, in its order."""
    folder = Path(folder or CLIPS_DIR)
    listing = json.loads((folder / "clips.json").read_text())
    return [(c["name"], load_audio(folder / c["file"]), c["text"]) for c in listing["clips"]]


def asr_wer(model, clips, context_seconds: float = 30.0) -> tuple[float, list[str]]:
    """Corpus WER of the model's stock ASR path on the clips, and the raw hypotheses. Both sides are
    normalised by ``metrics.wer`` (``assistant.text.normalize_text``: "10" -> "ten", "Mr." -> "mister")."""
    hyps = [model.transcribe([w], context_seconds=context_seconds)[0] for _, w, _ in clips]
    return wer([ref for _, _, ref in clips], hyps), hyps


def slu_transcript_wer(model, clips) -> tuple[float, dict[str, str]]:
    """WER of the transcript inside the SLU output (the words `transcribe-and-classify` prints), on the
    clips that fit the model's context, and {clip name: transcript}. Not the stock path: this shows what
    the command model hears."""
    fit = [c for c in clips if c[1].numel() <= model.context_seconds * 16000]
    hyps = {name: predict_waves(model, [w], use_nlu=False)[0].transcript for name, w, _ in fit}
    if not fit:
        return float("nan"), hyps
    return wer([ref for _, _, ref in fit], [hyps[name] for name, _, _ in fit]), hyps


def compare(model_dirs: dict[str, str | None]) -> dict[str, dict]:
    """{name: model folder (None = packaged tiny.en)} -> {name: {"wer", "hypotheses", ...}}; SLU folders
    also get ``slu_wer`` (see slu_transcript_wer); the ASR path reads the full vocabulary, so a stock
    checkpoint loads without the domain's."""
    clips = load_clips()
    out = {}
    for name, path in model_dirs.items():
        model = SLUModel.from_pretrained(path).eval()
        w, hyps = asr_wer(model, clips)
        out[name] = {"wer": w, "n_clips": len(clips), "lora": model.adapters is not None,
                     "hypotheses": {c[0]: h for c, h in zip(clips, hyps)}}
        if path is not None and (Path(path) / SLU_CONFIG_FILE).is_file():
            slu_wer, slu_hyps = slu_transcript_wer(model, clips)
            out[name].update({"slu_wer": slu_wer, "slu_n_clips": len(slu_hyps), "slu_hypotheses": slu_hyps})
    return out
