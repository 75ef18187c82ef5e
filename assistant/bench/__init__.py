"""`assistant bench`: speed, memory and accuracy side by side with the peers (``run``: BenchConfig, run_bench, cli).

* ``assistant.bench.run``: the command (``assistant bench``, ``python -m assistant.bench``): BenchConfig,
  the steps of a run, ``run_bench``, ``cli`` (which hands ``--sampler`` / ``--serving`` on);
* ``assistant.bench.systems``: the systems compared (ours eager / ONNX / int8, the cascade, the audio
  classifier peer), each ``waves -> list[ParseResult]``; reusing the cascade's accuracy;
* ``assistant.bench.harness``: clip selection, timing, the latency and accuracy tables, the memory probe;
* ``assistant.bench.profiling``: phase breakdowns and torch.profiler top operators;
* ``assistant.bench.throughput``: training, RSFT generation and scoring throughput; the HF Trainer peer;
* ``assistant.bench.report``: goals, the int8 decision, findings, the table; the focused benches' output;
* ``assistant.bench.sampler``: ``assistant bench --sampler`` (our RSFT sampler vs transformers generate);
* ``assistant.bench.serving``: ``assistant bench --serving`` (the demo server under concurrent load).

Layers: within the package, systems <- harness <- profiling, throughput <- run; report stands alone;
sampler and serving use harness, profiling and report. The package uses the model, nlu, data and rsft
layers; none of them imports it.
"""
