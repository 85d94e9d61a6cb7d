"""An HTTP endpoint over a predictor (``dynroute serve``): dynamic batching, bounded work,
supervised workers, and what operators expect of a model server.

A plain ASGI application served by uvicorn's httptools protocol (the HTTP parser in C),
in one process or in several supervised ones sharing one listening socket (``workers``).

- ``POST /predict`` takes one file as the body, anything ``dynroute predict`` reads and
  read the same way (``dynroute.data.formats``): an image file, or several images at once
  as an ``.npy`` or ``.npz`` array; ``?name=`` sets the ``file`` field. It answers with the
  JSON row(s) ``dynroute predict`` writes: file, class, confidence, exit, MACs; ``?top=K``
  adds the K most likely classes and their scores.
- ``GET /model``: what runs (policy, k_cpt, how it was chosen) and the guarantee its
  operating point holds with, if any; ``GET /health`` (counters of every worker),
  ``/livez`` (the process answers) and ``/readyz`` (the model is loaded and not draining);
  ``GET /metrics``: Prometheus text, summed over the workers.

Where the time goes: the event loop only moves bytes. Bodies are decoded by a pool of
threads, the model runs in its own thread on batches of at most ``batch_size`` images
(an array of more is split), and large answers are made in a thread, so that no
body, however slow or hostile, holds up the loop (``/livez`` answers within milliseconds).

Work is bounded so that hostile or simply heavy clients cannot take the server down: every
option has a range (``limits``); a body is refused by its declared length before it is read
and read under a deadline; a request head is bounded (64 KB); decoding holds its pixels'
bytes of a memory budget first, and a file of far more pieces than its size warrants is
refused; connections are capped, and one that sends no complete request in time (or idles)
is closed, each with one log line. Every refusal is a 4xx or 503 with a JSON reason, counted
in ``/metrics``. On SIGTERM the server stops accepting, lets in-flight requests finish
(``shutdown_timeout``), answers what is left with 503, and exits 0.

The modules: ``limits`` (ranges and ``Limits``), ``bodies`` (reading and decoding),
``batching``, ``metrics`` (the shared counters), ``app`` (the ASGI routes), ``protocol``
(the guarded HTTP protocol) and ``workers`` (sockets, signals, supervision).
"""

from __future__ import annotations

from .app import ServeApp
from .batching import Batcher
from .bodies import ClientError, DecodeBudget
from .limits import Limits, check, default_decode_threads, ranges
from .metrics import LATENCY_BUCKETS, Metrics
from .protocol import MAX_HEAD_BYTES
from .workers import listening_socket, run_app, serve

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_HEAD_BYTES",
    "Batcher",
    "ClientError",
    "DecodeBudget",
    "Limits",
    "Metrics",
    "ServeApp",
    "check",
    "default_decode_threads",
    "listening_socket",
    "ranges",
    "run_app",
    "serve",
]
