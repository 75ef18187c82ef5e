"""libespeak-ng in a process of its own: a fresh interpreter that forks one child per request.

Run as a script by :mod:`assistant.data.tts` (``python espeak_server.py``), never imported by it:
it must start from a clean ``exec`` so that nothing the caller did before (heap, stack, threads,
file descriptors, libraries loaded) can reach the synthesiser. Two facts make this necessary:

* libespeak-ng keeps state between clips (e.g. a static pitch-flutter phase) that no API resets,
  so every request runs in a child forked from the never-used engine;
* forking from the *caller* was not enough: after some unrelated test had run in a pytest
  process, a child forked from it produced the same 0.53 s clip whatever the text or voice
  (measured; the full sentence is 1.6 s). The forked child inherits all of the caller's process
  state; this server's state is always the same few lines of setup.

Protocol over stdin / stdout, one request at a time: a request is a 4-byte big-endian length and
that many bytes of JSON (``{"op": "synthesize", "voice", "text", "rate", "pitch", "range",
"seed"}``, ``{"op": "phonemize", "voice", "text"}`` or ``{"op": "voices", "names": [...]}``);
the reply is one status byte (0 = ok, 3 = the request failed: the payload is the message) and
an 8-byte big-endian length, then the payload (16-bit little-endian PCM, UTF-8 text or JSON).
The first reply, before any request, carries the sample rate as JSON.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000      # report errors instead of calling exit()
CHARS_UTF8 = 1
POS_CHARACTER = 1
PARAM = {"rate": 1, "pitch": 3, "range": 4}
# espeak_TextToPhonemes mode: IPA (bit 1), with bits 8-23 as the tie inside multi-letter phonemes (bit 7)
PHONEMES_IPA_TIED = 0x02 | 0x80 | (ord("^") << 8)
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class RequestError(Exception):
    """A request the engine cannot serve (unknown voice, failed synthesis)."""


def load_library():
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [SYNTH_CALLBACK]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(),
                                 INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RequestError(f"espeak: espeak_Initialize failed with data at {espeakng_loader.get_data_path()}; "
                           "reinstall espeakng-loader")
    return lib, rate


class Engine:
    def __init__(self) -> None:
        self.lib, self.sample_rate = load_library()
        self.chunks: list[bytes] = []
        self.callback = SYNTH_CALLBACK(self.collect)     # keep a reference: C holds the pointer
        self.lib.espeak_SetSynthCallback(self.callback)

    def collect(self, wav, n, _events) -> int:
        if n > 0 and wav:
            self.chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    def set_voice(self, name: str) -> None:
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise RequestError(f"espeak: no voice {name!r}; see list_voices(['espeak'])")

    def synthesize(self, request: dict) -> bytes:
        self.set_voice(request["voice"])
        for key, code in PARAM.items():
            self.lib.espeak_SetParameter(code, int(request[key]), 0)
        self.lib.espeak_ng_SetRandSeed(int(request["seed"]) % 2_147_483_647)
        data = request["text"].encode("utf-8") + b"\0"
        status = self.lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if status != 0:
            raise RequestError(f"espeak: espeak_Synth failed (status {status}) for voice {request['voice']!r}")
        return b"".join(self.chunks)

    def phonemize(self, request: dict) -> bytes:
        """IPA as espeak-ng speaks it, stress marks kept, '^' tying the letters of one phoneme, clauses
        joined by spaces."""
        self.set_voice(request["voice"])
        buffer = ctypes.create_string_buffer(request["text"].encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        clauses = []
        while pointer.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), CHARS_UTF8, PHONEMES_IPA_TIED)
            if out:
                clauses.append(out.decode("utf-8", "replace").strip())
        return " ".join(c for c in clauses if c).encode("utf-8")

    def voices(self, request: dict) -> bytes:
        """The names among ``request["names"]`` whose voice file loads."""
        ok = [name for name in request["names"] if self.lib.espeak_SetVoiceByName(name.encode()) == 0]
        return json.dumps(ok).encode()


def reply(out, status: int, payload: bytes) -> None:
    out.write(struct.pack(">BQ", status, len(payload)) + payload)
    out.flush()


def serve(engine: Engine, stdin, stdout) -> None:
    while True:
        header = stdin.read(4)
        if len(header) < 4:
            return                                   # the caller is gone
        body = stdin.read(struct.unpack(">I", header)[0])
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:                                 # child: serve the request on the pristine engine
            code = 4
            try:
                os.close(read_fd)
                request = json.loads(body)
                try:
                    payload, status = getattr(engine, request["op"])(request), 0
                except RequestError as e:
                    payload, status = str(e).encode("utf-8", "replace"), 3
                view = memoryview(struct.pack(">B", status) + payload)
                while view:
                    view = view[os.write(write_fd, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read()
        _, wait_status = os.waitpid(pid, 0)
        exit_code = os.waitstatus_to_exitcode(wait_status)
        if exit_code != 0 or not answer:
            reply(stdout, 3, f"espeak: the process serving {body[:80]!r} died (exit {exit_code})".encode())
        else:
            reply(stdout, answer[0], answer[1:])


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr                          # nothing else may write into the reply stream
    try:
        engine = Engine()
    except (RequestError, ImportError, OSError) as e:
        reply(stdout, 3, str(e).encode("utf-8", "replace"))
        return
    reply(stdout, 0, json.dumps({"sample_rate": engine.sample_rate}).encode())
    serve(engine, stdin, stdout)


if __name__ == "__main__":
    main()
