"""`assistant demo [--model DIR] [--host 127.0.0.1] [--port 7860] [--max-connections 64]`: a web page to try the model.

Upload an audio file or record a clip in the browser and see the transcript, intent, slots, the
assistant's response, the confidence and the latency. No web framework: the standard library's
ThreadingHTTPServer serves one page (assistant/demo_page.html) and a JSON API:

    GET  /                page
    GET  /api/info        {"model", "context_seconds", "max_upload_bytes", "intents"}
    POST /api/classify    body = the raw audio bytes (file name in the X-Filename header or
                          ?filename=...) or multipart/form-data with a file field
                          -> 200 the Prediction dict (assistant.inference.Prediction)
                          -> 400 {"error": "..."} for unusable audio or a bad request

    curl --data-binary @clip.wav -H 'X-Filename: clip.wav' http://127.0.0.1:7860/api/classify

The model is loaded once. Requests that arrive together are decoded together: a worker takes the
first waiting clip, waits a few milliseconds for others (at most 16 in a batch) and runs them as one
batch, so 16 concurrent clients do not queue behind each other one clip at a time. A connection that
stalls gets a read timeout (408); past --max-connections open connections the server answers 503.
"""

from __future__ import annotations

import json
import queue
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from assistant.config import parse_command
from assistant.model.interface import SpeechModel
from assistant.paths import resolve_model_dir
from assistant.schema import load_schema

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
PAGE_FILE = Path(__file__).with_name("demo_page.html")
# A body this much larger than the limit is not even read to the end: the connection is dropped.
_DRAIN_FACTOR = 8


class DemoError(ValueError):
    """A request the demo cannot serve; ``str(err)`` is shown to the person as is."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


def safe_filename(name: str | None, default: str = "upload") -> str:
    """The last path component with only harmless characters (it names a temp file and the result)."""
    base = Path(str(name or "").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._ -]+", "_", base).strip(" .")[:120]
    return base or default


class Batcher:
    """Clips submitted from many threads, decoded in batches by one worker thread.

    The worker takes the first waiting clip, then whatever else arrives within ``wait_s`` (up to
    ``max_batch``), calls ``run(waves, names)`` once and hands every caller its own result (or the
    batch's exception). Clips that queued while a batch ran go into the next batch at once.
    """

    def __init__(self, run, max_batch: int = 16, wait_s: float = 0.005):
        self.run, self.max_batch, self.wait_s = run, max_batch, wait_s
        self._queue: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="assistant-demo-batcher", daemon=True)
        self._worker.start()
        self.batch_sizes: list[int] = []          # what the worker ran, for the load benchmark

    def submit(self, wave, name: str):
        job = {"wave": wave, "name": name, "done": threading.Event(), "result": None, "error": None}
        self._queue.put(job)
        job["done"].wait()
        if job["error"] is not None:
            raise job["error"]
        return job["result"]

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=max(deadline - time.monotonic(), 0.0)))
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            try:
                for job, result in zip(batch, self.run([j["wave"] for j in batch], [j["name"] for j in batch])):
                    job["result"] = result
            except Exception as e:  # noqa: BLE001 - every caller of the batch gets the error
                for job in batch:
                    job["error"] = e
            finally:
                for job in batch:
                    job["done"].set()


class Classifier:
    """The model, loaded once, behind a batching worker: uploaded bytes -> Prediction dict."""

    def __init__(self, model: SpeechModel, schema=None, model_dir: str | Path = "", max_batch: int = 16, wait_s: float = 0.005):
        self.model = model
        self.schema = schema
        self.model_dir = str(model_dir)
        self.batcher = Batcher(self._decode, max_batch=max_batch, wait_s=wait_s)

    def _decode(self, waves, names):
        from assistant.inference import predict_waves   # torch: loaded with the model, not for --help

        return predict_waves(self.model, waves, self.schema, names)

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "Classifier":
        from assistant.nlu import load_pipeline         # torch and both models: only when serving

        model = load_pipeline(model_dir)
        model.eval()
        return cls(model, load_schema(), model_dir)

    @property
    def max_seconds(self) -> float:
        return float(self.model.context_seconds)

    def info(self) -> dict:
        intents = sorted(self.schema.intents) if self.schema is not None else []
        return {"model": self.model_dir, "context_seconds": self.max_seconds,
                "max_upload_bytes": MAX_UPLOAD_BYTES, "intents": intents}

    def classify_bytes(self, data: bytes, filename: str = "upload") -> dict:
        """Decode one uploaded clip; DemoError (naming `filename`) when it is not usable audio."""
        from assistant.audio import AudioError, load_audio

        name = safe_filename(filename)
        if not data:
            raise DemoError(f"{name}: the upload is empty (0 bytes). Fix: choose an audio file "
                            "(WAV, FLAC, OGG or MP3) or record a clip.")
        # load_audio reads files (libsndfile sniffs the format from the bytes, not the name); the temp
        # file keeps the upload's name so messages and suggested fixes name what the person sent.
        with tempfile.TemporaryDirectory(prefix="assistant-demo-") as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            try:
                wave = load_audio(path, max_seconds=self.max_seconds)
            except AudioError as e:
                raise DemoError(_upload_message(e, path, name, self.max_seconds)) from None
        return self.batcher.submit(wave, name).to_dict()


def _upload_message(e, path: Path, name: str, max_seconds: float) -> str:
    """The AudioError told about the upload: its name instead of the temp path, and a fix that fits a
    web page (the library's fixes talk about manifests and config values)."""
    problem = e.problem or str(e).replace(str(path), name)
    fix = e.fix.replace(str(path), name) if e.fix else ""
    if problem.startswith("audio is too long"):
        fix = f"send one spoken command of at most {max_seconds:g} s"
    elif not fix or "manifest" in fix:
        fix = "upload a WAV, FLAC, OGG or MP3 recording of one spoken command, or record one on this page"
    return f"{name}: {problem}. Fix: {fix}."


# ------------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------------

def _upload_from_multipart(content_type: str, body: bytes) -> tuple[bytes, str]:
    """The first file field (or a field named 'audio') of a multipart/form-data body."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    msg = BytesParser(policy=HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise DemoError("malformed multipart/form-data upload (no parts found). Fix: send the file as a "
                        "form field named 'audio', or POST the raw audio bytes")
    for part in msg.iter_parts():
        params = dict(part.get_params(header="content-disposition") or [])
        if part.get_filename() is not None or params.get("name") == "audio":
            return part.get_payload(decode=True) or b"", part.get_filename() or "upload"
    raise DemoError("the multipart upload has no file field. Fix: send the audio as a form field named 'audio'")


class DemoHandler(BaseHTTPRequestHandler):
    server_version = "assistant-demo/1"
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        # seconds a read may wait: a client that stops sending does not hold a thread
        self.timeout = self.server.read_timeout
        super().setup()

    # ---------------------------------------------------------------- routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        route = urlsplit(self.path).path
        if route in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif route == "/api/info":
            self._send_json(HTTPStatus.OK, self.server.classifier.info())
        elif route == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})

    def do_POST(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path != "/api/classify":
            self._drain_or_close()
            self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: POST {parts.path}"})
            return
        try:
            data, name = self._read_upload(parts.query)
            result = self.server.classifier.classify_bytes(data, name)
        except DemoError as e:
            self._send_json(e.status, {"error": str(e)})
            return
        except Exception as e:  # noqa: BLE001 - the page must get an answer, the server must live on
            self.log_error("classify failed: %r", e)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR,
                            {"error": f"internal error while classifying: {type(e).__name__}: {e}"})
            return
        self._send_json(HTTPStatus.OK, result)

    # ---------------------------------------------------------------- request body
    def _content_length(self) -> int:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise DemoError("chunked uploads are not supported. Fix: send the file with a Content-Length "
                            "(browsers and curl --data-binary @file do)", HTTPStatus.LENGTH_REQUIRED)
        raw = self.headers.get("Content-Length")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except (TypeError, ValueError):
            self.close_connection = True
            raise DemoError(f"missing or invalid Content-Length ({raw!r}). Fix: POST the audio file as the "
                            "request body", HTTPStatus.LENGTH_REQUIRED) from None
        return length

    def _drain_or_close(self) -> None:
        """Consume an unwanted body so the connection stays usable, or drop the connection."""
        try:
            length = self._content_length()
        except DemoError:
            return
        if length > _DRAIN_FACTOR * MAX_UPLOAD_BYTES:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def _read_upload(self, query: str) -> tuple[bytes, str]:
        length = self._content_length()
        name = safe_filename(unquote(self.headers.get("X-Filename", ""))
                             or (parse_qs(query).get("filename") or [""])[0])
        if length > MAX_UPLOAD_BYTES:
            self._drain_or_close()
            raise DemoError(f"{name + ': ' if name != 'upload' else ''}upload too large ({length / 1e6:.1f} MB; the limit is "
                            f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB). Fix: send one spoken command of a few "
                            f"seconds (the model hears at most {self.server.classifier.max_seconds:g} s)")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise DemoError(f"{name}: the upload stalled (nothing arrived for {self.timeout:g} s). Fix: send it "
                            "again", HTTPStatus.REQUEST_TIMEOUT) from None
        if len(body) < length:
            self.close_connection = True
            raise DemoError(f"{name}: the upload was cut off ({len(body)} of {length} bytes arrived). "
                            "Fix: send it again")
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            data, part_name = _upload_from_multipart(content_type, body)
            return data, safe_filename(part_name if part_name != "upload" else name)
        return body, name

    # ---------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def log_message(self, fmt: str, *args) -> None:
        if self.server.verbose:
            sys.stderr.write(f"assistant demo: {self.address_string()} {fmt % args}\n")


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, classifier: Classifier, host: str = "127.0.0.1", port: int = 7860,
                 page: bytes | None = None, verbose: bool = True, max_connections: int = 64,
                 read_timeout: float = 15.0):
        self.classifier = classifier
        self.page = page if page is not None else PAGE_FILE.read_bytes()
        self.verbose = verbose
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), DemoHandler)

    def process_request(self, request, client_address) -> None:
        """One thread per connection, at most ``max_connections`` at once; past that a short 503."""
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": f"the server is busy ({self.max_connections} open connections). "
                                        "Fix: retry in a moment"}).encode("utf-8")
            head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
                    f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
            try:
                request.sendall(head.encode("latin-1") + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/"


def make_server(classifier: Classifier, host: str = "127.0.0.1", port: int = 7860,
                verbose: bool = True, max_connections: int = 64, read_timeout: float = 15.0) -> DemoServer:
    """A bound, not yet serving server (port 0 = any free port; see `.url`)."""
    return DemoServer(classifier, host, port, verbose=verbose, max_connections=max_connections,
                      read_timeout=read_timeout)


@dataclass
class DemoConfig:
    model: str | None = field(default=None, metadata={"help": "model folder (default: what `assistant run` built)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on (0.0.0.0 = every interface)"})
    port: int = field(default=7860, metadata={"help": "port to listen on (0 = any free port)"})
    quiet: bool = field(default=False, metadata={"help": "do not log each request"})
    max_connections: int = field(default=64, metadata={
        "help": "open connections served at once; more get 503 (each holds a thread)"})

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in 0..65535, got {self.port}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be >= 1, got {self.max_connections}")


def cli(argv: list[str]) -> int:
    cfg = parse_command(DemoConfig, "assistant demo", __doc__, argv)
    model_dir, problem = resolve_model_dir(cfg.model)
    if problem:
        print(f"assistant demo: {problem}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    classifier = Classifier.from_dir(model_dir)
    try:
        server = make_server(classifier, cfg.host, cfg.port, verbose=not cfg.quiet,
                             max_connections=cfg.max_connections)
    except OSError as e:
        print(f"assistant demo: cannot listen on {cfg.host}:{cfg.port} ({e.strerror or e}); "
              "pass a free --port", file=sys.stderr)
        return 2
    print(f"assistant demo: model {model_dir} loaded in {time.perf_counter() - start:.1f} s; "
          f"open {server.url}  (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("assistant demo: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
