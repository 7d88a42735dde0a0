"""``rsg-fast bench``: time RSG against the reference implementation (the project's main job).

One job per module, read in this order:

- ``settings``: the benchmark shapes and the long-tailed label mix of a batch (no torch).
- ``inputs``: ``InputPool``, rotated inputs so no call reuses cache-hot tensors.
- ``cases``: the PUBLIC cases module: what is timed (module and training-step variants), shared by
  this command, ``benchmarks/`` (pytest-benchmark) and ``benchmarks/gpu_check.sh``; it re-exports
  ``settings`` and ``inputs``.
- ``op_cases``: each fused op on its own (the only file that knows the ops' signatures).
- ``timers``: interleaved CPU timing, ``triton.testing`` on CUDA, the copy bandwidth.
- ``memory_probe``: peak memory of one call (CUDA in-process; CPU in a child process, with its
  protocol documented there: ``python -m rsg_fast.bench.memory_probe SPEC_JSON``).
- ``environment``: device, versions, commit, CPU, threads, load.
- ``targets``: the project's targets, reported as met / missed / not measured.
- ``report`` (table, JSON, CSV) and ``chart`` (PNG).
- ``runner``: one run, from plan to result document; ``cli``: the command line.

How it measures (benchmarks/results/README.md says it for readers of the numbers):

- Warm-up calls first (they include allocation, cuDNN/oneDNN set-up, torch.compile and Triton
  compiles).
- Inputs rotate: each call gets the next of several input sets (feature maps, images and a
  permutation of one long-tailed label multiset), together larger than the caches.
- CPU: variants interleaved round by round so drifting machine load hits all of them alike;
  medians and IQR from ``torch.utils.benchmark.Measurement``; the thread count is recorded.
- CUDA: ``triton.testing.do_bench`` per case (events, L2 flushed before each call); the fused ops
  also replayed from a CUDA graph (``do_bench_cudagraph``). RSG's forward synchronises with the
  host once (the head count), so whole-module calls are not captured in graphs; the ``rsg-host``
  rows give it the labels on the host (``host_target``), its path without that synchronisation.
- Peak memory of one call; achieved GB/s = compulsory bytes of the call / median time, and its
  share of the device copy bandwidth measured in the same run.
"""


def main(argv=None) -> int:
    """``rsg-fast bench``: see ``rsg_fast.bench.cli``."""
    from rsg_fast.bench.cli import main as cli_main
    return cli_main(argv)
