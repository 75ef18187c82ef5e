"""Audio in and out: every waveform the project touches goes through here.

``load_audio`` turns any file libsndfile can decode (WAV, FLAC, OGG/Vorbis, MP3, AIFF, ...) into the one
format the model eats: a float32, mono, 16 kHz, 1-D tensor. Anything that would silently poison training
or evaluation (empty, truncated, corrupt, NaN, silent, absurdly long files) is rejected with ONE
``AudioError`` whose message names the file, what is wrong, and how to fix it. Batch callers use
``load_many`` so one bad file never stops a corpus.

Loud audio is accepted: if the peak exceeds 1.0 (float files can, and resampling full-scale PCM can
overshoot a little) the waveform is scaled down so its peak is exactly 1.0; quieter audio is returned
untouched, so levels stay comparable between files.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000

_FFMPEG_FIX = "convert it, e.g. `ffmpeg -i {name} -ac 1 -ar 16000 {stem}.flac`, and point the manifest at the .flac"
_REPLACE_FIX = "re-export or re-download the recording, or drop it from the manifest"


class AudioError(ValueError):
    """One audio file that cannot be used. ``str(err)`` names the file, the problem and the fix.

    Constructed with a single message so it survives pickling across DataLoader workers; the parts are
    kept as attributes (``path``, ``problem``, ``fix``) for callers that report them separately.
    """

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, problem: str = "",
                 fix: str = "") -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix

    @classmethod
    def for_file(cls, path: str | os.PathLike, problem: str, fix: str) -> "AudioError":
        return cls(f"{path}: {problem}. Fix: {fix}.", path=path, problem=problem, fix=fix)

    def __reduce__(self):  # keep the attributes through pickle (multiprocessing workers)
        return (_rebuild_audio_error, (str(self), self.path, self.problem, self.fix))


def _rebuild_audio_error(message: str, path: str | None, problem: str, fix: str) -> AudioError:
    return AudioError(message, path=path, problem=problem, fix=fix)


# --------------------------------------------------------------------------------------------------
# In-memory conversion
# --------------------------------------------------------------------------------------------------

def _as_float_array(wave: np.ndarray | torch.Tensor) -> np.ndarray:
    """Any numeric array -> float32 in [-1, 1] scale (integer PCM is scaled by its full range)."""
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    arr = np.asarray(wave)
    if arr.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        return (arr.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.float32) / float(-np.iinfo(arr.dtype).min)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise TypeError(f"audio must be a numeric array, got dtype {arr.dtype}")


def _mix_to_mono(arr: np.ndarray) -> np.ndarray:
    """1-D stays; 2-D is mixed over the channel axis, taken to be the shorter one.

    soundfile yields (frames, channels) and torchaudio (channels, frames); a recording always has more
    frames than channels, so the shorter axis is unambiguous in practice.
    """
    if arr.ndim == 1:
        return arr
    if arr.ndim != 2:
        raise ValueError(f"audio must be 1-D (frames) or 2-D (channels x frames), got shape {arr.shape}")
    channel_axis = 0 if arr.shape[0] <= arr.shape[1] else 1
    return arr.mean(axis=channel_axis, dtype=np.float32) if arr.shape[channel_axis] > 1 else arr.reshape(-1)


def _peak_normalise(wave: torch.Tensor) -> torch.Tensor:
    peak = float(wave.abs().max()) if wave.numel() else 0.0
    return wave / peak if peak > 1.0 else wave


def _check_sample_rate(sr: float) -> int:
    if sr <= 0 or int(sr) != sr:
        raise ValueError(f"sample rate must be a positive whole number of Hz, got {sr!r}")
    return int(sr)


def to_mono_16k(wave: np.ndarray | torch.Tensor, sr: int) -> torch.Tensor:
    """Mix to mono, resample to 16 kHz, return a contiguous float32 1-D tensor.

    Accepts 1-D audio or 2-D audio in either (channels, frames) or (frames, channels) layout; integer
    PCM (int16/int32/uint8) is scaled to [-1, 1]. Peaks above 1.0 are normalised down to 1.0.
    """
    sr = _check_sample_rate(sr)
    mono = torch.from_numpy(np.ascontiguousarray(_mix_to_mono(_as_float_array(wave))))
    if sr != SAMPLE_RATE and mono.numel() > 0:
        mono = AF.resample(mono, orig_freq=sr, new_freq=SAMPLE_RATE)
    return _peak_normalise(mono).to(torch.float32).contiguous()


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------

def _sniff_format(head: bytes) -> str | None:
    """Name the container from its magic bytes, so errors can say *what* the file is."""
    if head[4:8] == b"ftyp":
        return "an MP4/M4A/MOV container"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "a WebM/Matroska container"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "an AVI video"
    if head.startswith((b"RIFF", b"RIFX", b"RF64")):
        return "WAV"
    if head.startswith(b"fLaC"):
        return "FLAC"
    if head.startswith(b"OggS"):
        return "Ogg"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "MP3"
    if head.startswith(b"FORM"):
        return "AIFF"
    if head.startswith((b"PK\x03\x04", b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return "an archive (zip/gzip/bzip2/xz), not audio"
    if head.startswith((b"{", b"[")) or _looks_like_text(head):
        return "a text file, not audio"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return sum(ch.isprintable() or ch in "\r\n\t" for ch in text) >= 0.95 * len(text)


def _read_head(path: Path, n: int = 64) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def _undecodable_error(path: Path, head: bytes, detail: str) -> AudioError:
    kind = _sniff_format(head)
    if kind in ("WAV", "FLAC", "Ogg", "MP3", "AIFF"):
        return AudioError.for_file(
            path, f"{kind} file is truncated or corrupt (libsndfile: {detail})", _REPLACE_FIX)
    if kind is None:
        problem = f"unrecognised audio format (libsndfile: {detail})"
    else:
        problem = f"unreadable format: this is {kind}"
    if kind and "not audio" in kind:
        fix = "point the manifest at the audio file itself (WAV, FLAC, OGG or MP3)"
    else:
        fix = _FFMPEG_FIX.format(name=path.name, stem=path.stem)
    return AudioError.for_file(path, problem, fix)


def _truncated_wav_data(info: sf._SoundFileInfo) -> tuple[int, int] | None:
    """libsndfile quietly plays what is left of a WAV whose data chunk was cut short; its header log
    says ``data : <declared> (should be <actual>)``. Return (declared, actual) bytes if truncated."""
    if info.format not in ("WAV", "WAVEX", "RF64", "W64"):
        return None
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info, re.MULTILINE)
    if not m:
        return None
    declared, actual = int(m.group(1)), int(m.group(2))
    # Writers that stream (sox to a pipe, some recorders) leave 0 or ~2**31 / 2**32 placeholders in
    # the header; such files are complete even though the header "claims" otherwise.
    if declared == 0 or declared >= 0x7FFF0000 or declared <= actual:
        return None
    return declared, actual


def _open_checked(path: Path, max_seconds: float | None) -> sf._SoundFileInfo:
    """Existence, size, format and length checks that need no decoding."""
    if not path.exists():
        raise AudioError.for_file(path, "audio file not found",
                                  "check the path (relative paths are resolved against the manifest's folder)")
    if not path.is_file():
        raise AudioError.for_file(path, "not a regular file (a folder?)", "point the manifest at an audio file")
    try:
        size = path.stat().st_size
        head = _read_head(path)
    except OSError as e:
        raise AudioError.for_file(path, f"cannot open the file ({e.strerror or e})",
                                  "check its permissions and that the disk is mounted") from None
    if size == 0:
        raise AudioError.for_file(path, "file is empty (0 bytes)", _REPLACE_FIX)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise _undecodable_error(path, head, _libsndfile_detail(e)) from None
    if info.frames <= 0:
        raise AudioError.for_file(path, f"{info.format} file holds no audio samples (header only)", _REPLACE_FIX)
    truncated = _truncated_wav_data(info)
    if truncated:
        declared, actual = truncated
        raise AudioError.for_file(
            path, f"WAV file is truncated: header declares {declared} bytes of audio, only {actual} are present",
            _REPLACE_FIX)
    _check_length(path, info.frames / info.samplerate, max_seconds)
    return info


def _libsndfile_detail(e: Exception) -> str:
    msg = str(e)
    # soundfile prefixes "Error opening '<path>': " -- the path is already in our message.
    return re.sub(r"^Error opening .*?: ", "", msg).strip().rstrip(".")


def _check_length(path: Path, seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError.for_file(
            path, f"audio is too long: {seconds:.1f} s > max_seconds={max_seconds:g} s",
            "split it into utterances (one command each) or raise max_seconds if long audio is intended")


def load_audio(path: str | os.PathLike, max_seconds: float | None = 30.0, min_rms: float = 1e-5) -> torch.Tensor:
    """Read ``path`` as a float32 mono 16 kHz 1-D tensor, or raise one clear ``AudioError``.

    Rejects: missing file, empty file, header-only file (zero samples), truncated or corrupt data,
    formats libsndfile cannot decode (MP4/M4A, WebM, text, ...), NaN/Inf samples, silence
    (RMS < ``min_rms``), and audio longer than ``max_seconds`` (``None`` disables the limit).
    Multi-channel audio is averaged to mono; any sample rate is resampled to 16 kHz.
    Clipping-loud audio is accepted but peak-normalised to 1.0 (see the module docstring).
    """
    path = Path(path)
    info = _open_checked(path, max_seconds)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise _undecodable_error(path, _read_head(path), _libsndfile_detail(e)) from None
    if data.shape[0] == 0:
        raise AudioError.for_file(path, f"{info.format} file holds no audio samples", _REPLACE_FIX)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError.for_file(path, f"{bad} NaN/Inf sample(s) in the audio",
                                  "re-export it from the source; a float WAV written by buggy DSP code can hold NaN")
    _check_length(path, data.shape[0] / sr, max_seconds)
    wave = to_mono_16k(data, sr)
    rms = float(wave.square().mean().sqrt())
    if rms < min_rms:
        raise AudioError.for_file(
            path, f"audio is silent (RMS {rms:.1e} < min_rms={min_rms:g})",
            "check the microphone/recording; drop the file from the manifest if it holds no speech")
    return wave


def load_many(paths: Iterable[str | os.PathLike], max_seconds: float | None = 30.0, min_rms: float = 1e-5,
              progress: bool | str = False) -> Iterator[tuple[str | os.PathLike, torch.Tensor | AudioError]]:
    """Yield ``(path, waveform)`` or ``(path, AudioError)`` for each path, in order, never stopping early.

    Only ``AudioError`` is caught: a bad file is data, a bug elsewhere should still crash loudly.
    ``progress`` shows a tqdm bar (a string is used as its description).
    """
    items: Iterable = paths
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(paths, desc=progress if isinstance(progress, str) else "loading audio", unit="file")
    for p in items:
        try:
            yield p, load_audio(p, max_seconds=max_seconds, min_rms=min_rms)
        except AudioError as e:
            yield p, e


# --------------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------------

_WRITE_FORMATS = {".flac": ("FLAC", "PCM_16"), ".wav": ("WAV", "PCM_16")}


def write_audio(path: str | os.PathLike, wave: np.ndarray | torch.Tensor, sr: int = SAMPLE_RATE) -> Path:
    """Write 16-bit FLAC or WAV (chosen by suffix) atomically: a crash never leaves half a file.

    ``wave`` is 1-D (mono) or 2-D (channels x frames, or frames x channels) float in [-1, 1] or integer
    PCM; samples beyond full scale are clipped. Returns the path written.
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError.for_file(path, f"cannot write audio with suffix {path.suffix!r}",
                                  "use a .flac (smaller, lossless) or .wav file name")
    sr = _check_sample_rate(sr)
    arr = _as_float_array(wave)
    if arr.ndim == 2 and arr.shape[0] < arr.shape[1]:
        arr = arr.T  # soundfile wants (frames, channels)
    if arr.size == 0:
        raise AudioError.for_file(path, "refusing to write an empty waveform", "check the code producing it")
    if not np.isfinite(arr).all():
        raise AudioError.for_file(path, "refusing to write NaN/Inf samples", "check the code producing the waveform")
    arr = np.clip(arr, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        sf.write(str(tmp), arr, sr, format=fmt[0], subtype=fmt[1])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def duration_seconds(path: str | os.PathLike) -> float:
    """Length of an audio file from its header (no decoding); raises AudioError if unreadable."""
    info = _open_checked(Path(path), max_seconds=None)
    return info.frames / info.samplerate
