import os

# Nothing may reach a model hub in tests; everything is packaged or built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import shutil
import subprocess

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (small models: threads cost more than they give; CI shares cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def espeak_wave(text: str, path):
    """Real TTS (espeak-ng, en-us) -> 16 kHz mono float32 waveform; skips the test without the binary."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng binary missing: `apt-get install espeak-ng`")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(path), text], check=True)
    wave, sr = sf.read(str(path), dtype="float32")
    return AF.resample(torch.from_numpy(wave), sr, 16000)


@pytest.fixture(scope="session")
def speak():
    """``speak(text, path)``: :func:`espeak_wave` as a fixture."""
    return espeak_wave
