"""`assistant bench --serving`: the demo server under load, measured as a user would.

    assistant bench --serving --json                     # one JSON object on stdout
    assistant bench --serving --model runs/main/final    # default: what `assistant run` built, else tiny.en

The real HTTP server (`assistant demo`'s, on a loopback port) and real clips (espeak-ng voices reading
commands, WAV bytes POSTed to /api/classify), in one run:

* **sequential**: one client, one request at a time: the latency a single user sees;
* **concurrent, one at a time**: ``--clients`` clients at once, the server decoding one clip per batch
  (``max_batch = 1``: how the demo served before it batched);
* **concurrent, batched**: the same clients, the server forming batches of what arrives together
  (``max_batch = 16``, a few milliseconds' wait).

Each load run stops after ``--requests`` answers or ``--max-seconds``, whichever comes first; it reports
requests/s, p50 / p95 latency, errors and the batch sizes the server ran.
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from assistant.bench.harness import synth_clips
from assistant.bench.report import BenchReportConfig, emit, parse_bench_config
from assistant.demo import Classifier, make_server
from assistant.paths import resolve_model_dir
from assistant.schema import load_schema


def _say(msg: str) -> None:
    print(f"bench --serving: {msg}", file=sys.stderr, flush=True)


def wav_bytes(waves) -> list[bytes]:
    import soundfile as sf

    out = []
    for w in waves:
        buf = io.BytesIO()
        sf.write(buf, w.numpy(), 16000, format="WAV", subtype="PCM_16")
        out.append(buf.getvalue())
    return out


def post_clip(url: str, data: bytes, name: str, timeout: float = 120.0) -> tuple[int, float]:
    """(HTTP status, seconds) of one classify request; status 0 for a connection failure."""
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"X-Filename": name, "Content-Type": "application/octet-stream"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = 0
    return status, time.perf_counter() - start


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    q = sorted(latencies)
    pick = lambda f: round(q[min(len(q) - 1, int(f * len(q)))], 4) if q else None
    return {"n": len(latencies), "errors": errors, "seconds": round(seconds, 4),
            "requests_per_second": round(len(latencies) / max(seconds, 1e-9), 2),
            "p50_s": round(statistics.median(q), 4) if q else None, "p95_s": pick(0.95)}


def sequential(url: str, clips: list[bytes], n: int) -> dict:
    lat, errors, start = [], 0, time.perf_counter()
    for i in range(n):
        status, sec = post_clip(url, clips[i % len(clips)], f"clip{i}.wav")
        lat.append(sec)
        errors += status != 200
    return _summary(lat, errors, time.perf_counter() - start)


def concurrent(url: str, clips: list[bytes], clients: int, requests: int, max_seconds: float) -> dict:
    """``clients`` threads send clips back to back until ``requests`` answers or ``max_seconds``."""
    lock, lat, counter = threading.Lock(), [], {"sent": 0, "errors": 0}
    clock = {}

    def start_clock() -> None:            # when every client is ready, not when the threads were made
        clock["deadline"] = time.perf_counter() + max_seconds

    go = threading.Barrier(clients, action=start_clock)

    def client(k: int) -> None:
        go.wait()
        while time.perf_counter() < clock["deadline"]:
            with lock:
                if counter["sent"] >= requests:
                    return
                i = counter["sent"]
                counter["sent"] += 1
            status, sec = post_clip(url, clips[i % len(clips)], f"c{k}-{i}.wav")
            with lock:
                lat.append(sec)
                counter["errors"] += status != 200

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**_summary(lat, counter["errors"], time.perf_counter() - start), "clients": clients}


def run_serving_bench(model_path: str | None = None, clients: int = 16, requests: int = 96, max_seconds: float = 120.0,
                      n_sequential: int = 16, threads: int | None = None) -> dict:
    import torch

    from assistant.nlu import load_pipeline       # torch and both models: only when the bench runs

    if threads:
        torch.set_num_threads(threads)
    model_dir, problem = resolve_model_dir(model_path or None)
    if problem:
        if model_path:
            raise FileNotFoundError(problem)
        model_dir = None                      # no trained model yet: the packaged tiny.en
    _say(f"model {model_dir or 'packaged tiny.en'}; {clients} clients, up to {requests} requests / {max_seconds:g} s")
    model = load_pipeline(model_dir).eval()
    waves, _ = synth_clips(8)
    clips = wav_bytes(waves)
    schema = load_schema()
    result = {"model": str(model_dir or "packaged tiny.en"), "threads": torch.get_num_threads(),
              "load_average_before": list(os.getloadavg()), "clip_seconds": [round(len(w) / 16000, 2) for w in waves]}
    for name, max_batch in (("one_at_a_time", 1), ("batched", 16)):
        classifier = Classifier(model, schema, model_dir or "", max_batch=max_batch)
        server = make_server(classifier, "127.0.0.1", 0, verbose=False)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = server.url + "api/classify"
        try:
            post_clip(url, clips[0], "warmup.wav")
            if name == "batched":
                _say(f"sequential: {n_sequential} requests")
                result["sequential"] = sequential(url, clips, n_sequential)
            _say(f"concurrent, {name.replace('_', ' ')}")
            before = len(classifier.batcher.batch_sizes)
            run = concurrent(url, clips, clients, requests, max_seconds)
            sizes = classifier.batcher.batch_sizes[before:]
            run["mean_batch"] = round(sum(sizes) / max(len(sizes), 1), 2)
            result[f"concurrent_{name}"] = run
        finally:
            server.shutdown()
            server.server_close()
    result["load_average_after"] = list(os.getloadavg())
    one, batched = result["concurrent_one_at_a_time"], result["concurrent_batched"]
    result["speedup_requests_per_second"] = round(batched["requests_per_second"] / max(one["requests_per_second"], 1e-9), 2)
    return result


def format_table(r: dict) -> str:
    lines = [f"demo server under load ({r['model']}, {r['threads']} torch threads)",
             f"{'run':<28} {'n':>4} {'errors':>6} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} {'mean batch':>10}"]
    for key, label in (("sequential", "sequential (1 client)"),
                       ("concurrent_one_at_a_time", f"{r['concurrent_batched']['clients']} clients, one at a time"),
                       ("concurrent_batched", f"{r['concurrent_batched']['clients']} clients, batched")):
        x = r[key]
        lines.append(f"{label:<28} {x['n']:>4} {x['errors']:>6} {x['requests_per_second']:>7.2f} {x['p50_s']:>7.3f} "
                     f"{x['p95_s']:>7.3f} {x.get('mean_batch', 1.0):>10}")
    lines.append(f"batching: {r['speedup_requests_per_second']}x the requests/s of one-at-a-time decoding")
    return "\n".join(lines)


@dataclass
class BenchServingConfig(BenchReportConfig):
    model: str | None = field(default=None, metadata={
        "help": "SLU model folder (none = what `assistant run` built, else tiny.en)"})
    clients: int = field(default=16, metadata={"help": "concurrent clients of the load runs"})
    requests: int = field(default=96, metadata={"help": "answers per load run (bounded)"})
    max_seconds: float = field(default=120.0, metadata={"help": "time bound of each load run"})
    sequential: int = field(default=16, metadata={"help": "requests of the one-client run"})
    threads: int | None = field(default=None, metadata={"help": "torch threads (none = all cores)"})

    def validate(self) -> None:
        for name in ("clients", "requests", "sequential", "max_seconds", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def cli(argv: list[str]) -> int:
    cfg = parse_bench_config(BenchServingConfig, "assistant bench --serving", __doc__, argv)
    try:
        results = run_serving_bench(cfg.model, cfg.clients, cfg.requests, cfg.max_seconds, cfg.sequential,
                                    cfg.threads)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"assistant bench --serving: {e}", file=sys.stderr)
        return 2
    emit(results, cfg, format_table)
    return 0
