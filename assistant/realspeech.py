"""Real human recordings with transcripts, to check fine-tuning does not destroy Whisper's ASR.

The pocketsphinx source package on PyPI ships test audio recorded by people: five LibriVox
sentences (Sense and Sensibility), five spoken card names and "go forward ten meters". We fetch that
sdist once from PyPI (the registry's JSON API gives its address), keep only those clips in
.cache/realspeech, and score the stock ASR path (standard prefix, full vocabulary, 30 s context)
before and after fine-tuning.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from assistant.audio import load_audio, to_mono_16k
from assistant.paths import cache_dir

PACKAGE, VERSION = "pocketsphinx", "5.1.1"
ROOT = f"{PACKAGE}-{VERSION}/test/data/"
WANTED = re.compile(r"^" + re.escape(ROOT) + r"(librivox/.*\.(wav|txt)|cards/.*\.(wav|transcription)|goforward\.raw)$")


def clips_dir() -> Path:
    return cache_dir() / "realspeech" / f"{PACKAGE}-{VERSION}"


def fetch(timeout: float = 60.0) -> Path:
    """Download the sdist once (about 34 MB) and extract the clips; returns the clip folder."""
    out = clips_dir()
    if (out / "DONE").is_file():
        return out
    meta = json.load(urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/json", timeout=timeout))
    files = meta.get("releases", {}).get(VERSION) or meta["urls"]
    url = next(u["url"] for u in files if u["packagetype"] == "sdist")
    data = urllib.request.urlopen(url, timeout=timeout).read()
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and WANTED.match(member.name):
                target = out / member.name[len(ROOT):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    (out / "DONE").write_text(url + "\n")
    return out


def load_clips(folder: Path | None = None) -> list[tuple[str, torch.Tensor, str]]:
    """(name, 16 kHz wave, reference transcript) for every clip with a known transcript."""
    folder = folder or fetch()
    clips = []
    for txt in sorted((folder / "librivox").glob("*.txt")):
        clips.append((txt.stem, load_audio(txt.with_suffix(".wav")), txt.read_text().strip()))
    cards = (folder / "cards" / "cards.transcription")
    for line in cards.read_text().splitlines():
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\w+)\)", line)
        if m:
            clips.append((f"cards/{m.group(2)}", load_audio(folder / "cards" / f"{m.group(2)}.wav"), m.group(1)))
    raw = folder / "goforward.raw"
    if raw.is_file():  # headerless 16 kHz 16-bit little-endian PCM
        pcm = np.frombuffer(raw.read_bytes(), dtype="<i2").astype(np.float32) / 32768.0
        clips.append(("goforward", to_mono_16k(pcm, 16000), "go forward ten meters"))
    return clips


def asr_wer(model, clips, context_seconds: float = 30.0) -> tuple[float, list[str]]:
    """Corpus WER of the model's stock ASR path on the clips (numbers normalised to words)."""
    from assistant.metrics import wer

    hyps = [model.transcribe([w], context_seconds=context_seconds)[0] for _, w, _ in clips]
    norm = [_digits_to_words(h) for h in hyps]
    return wer([ref for _, _, ref in clips], norm), hyps


_DIGITS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
           "7": "seven", "8": "eight", "9": "nine", "10": "ten", "4,": "four", "Mr.": "mister"}


def _digits_to_words(text: str) -> str:
    words = []
    for w in text.replace("-", " ").split():
        key = w.strip(".,!?;:")
        words.append(_DIGITS.get(w, _DIGITS.get(key, w)))
    return " ".join(words)


def slu_transcript_wer(model, clips) -> tuple[float, dict[str, str]]:
    """WER of the transcript inside the SLU output (the words `transcribe-and-classify` prints), on the
    clips that fit the model's context, and {clip name: transcript}. Not the stock path: this shows what
    the command model hears."""
    from assistant.inference import predict_waves
    from assistant.metrics import wer

    fit = [c for c in clips if c[1].numel() <= model.context_seconds * 16000]
    hyps = {name: predict_waves(model, [w], use_nlu=False)[0].transcript for name, w, _ in fit}
    if not fit:
        return float("nan"), hyps
    return wer([ref for _, _, ref in fit], [_digits_to_words(hyps[name]) for name, _, _ in fit]), hyps


def compare(model_dirs: dict[str, str | None]) -> dict[str, dict]:
    """{name: model folder (None = packaged tiny.en)} -> {name: {"wer", "hypotheses", ...}}; SLU folders
    also get ``slu_wer`` (see slu_transcript_wer)."""
    from assistant.model.slu import SLU_CONFIG_FILE, SLUModel

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
