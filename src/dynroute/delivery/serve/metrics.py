"""The counters behind ``/metrics`` and ``/health``, shared by every worker.

Each worker writes its own row of a table in memory that every worker maps (an anonymous
shared mapping made before the workers fork), and any worker answering ``/metrics`` or
``/health`` reads all rows: the totals do not depend on which worker takes the connection.
A worker that replaces a dead one continues its row, so counters never go back. One
process alone uses the same table with one row. Prometheus text format, no dependency.
"""

from __future__ import annotations

import bisect
import math
import mmap
import os
import time
from typing import Any

import numpy as np

#: Latency buckets of ``/metrics`` (seconds).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: The paths requests are counted under; any other is counted as "other" (a bounded set of
#: labels, whatever clients ask for).
PATHS = ("/predict", "/health", "/livez", "/readyz", "/model", "/metrics", "other")
#: The statuses the server answers with; any other is counted as 0.
STATUSES = (200, 400, 404, 405, 408, 413, 415, 431, 499, 500, 503, 0)
#: Exits counted per exit; a tree with more counts the rest under the last.
MAX_EXITS = 256
#: What a worker's row says of it (the supervisor writes it).
DOWN, STARTING, READY = 0.0, 1.0, 2.0
STATES = {DOWN: "down", STARTING: "starting", READY: "ready"}
#: Gauges of a budget held online (``--hold``), in this order.
HOLD_GAUGES = ("target_macs", "window_mean_macs", "drift_ratio", "point_macs", "moves")


def _columns() -> dict[str, slice]:
    """Where each field sits in a worker's row."""
    sizes = {
        "pid": 1, "state": 1, "started": 1, "restarts": 1, "served": 1, "batches": 1,
        "queued": 1, "decode_free": 1, "warm_up_ms": 1, "refused": 1, "images": 1, "macs": 1,
        "latency_sum": 1, "latency": len(LATENCY_BUCKETS) + 1,
        "requests": len(PATHS) * len(STATUSES), "exits": MAX_EXITS, "hold": len(HOLD_GAUGES),
        "holds": 1,
    }  # fmt: skip
    columns, at = {}, 0
    for name, size in sizes.items():
        columns[name] = slice(at, at + size)
        at += size
    return columns


COLUMNS = _columns()
WIDTH = max(s.stop for s in COLUMNS.values())
_PATH_INDEX = {path: k for k, path in enumerate(PATHS)}
_STATUS_INDEX = {status: k for k, status in enumerate(STATUSES)}


class MetricTable:
    """One row of float64 counters per worker, in shared anonymous memory (children made by
    ``os.fork`` after this see the same pages)."""

    def __init__(self, workers: int) -> None:
        self.memory = mmap.mmap(-1, max(1, workers) * WIDTH * 8)
        self.rows = np.frombuffer(self.memory, dtype=np.float64).reshape(workers, WIDTH)

    def get(self, worker: int, name: str) -> float:
        return float(self.rows[worker, COLUMNS[name].start])

    def set(self, worker: int, name: str, value: float) -> None:
        self.rows[worker, COLUMNS[name].start] = value

    def add(self, worker: int, name: str, value: float = 1) -> None:
        self.rows[worker, COLUMNS[name].start] += value


class Metrics:
    """This worker's counters (its row of ``table``) and the totals over every worker."""

    def __init__(
        self, exit_names: dict[int, str], table: MetricTable | None = None, worker: int = 0
    ):
        self.exit_names = exit_names
        leaves = list(exit_names)
        self._exit_position = np.full(max(leaves, default=0) + 1, MAX_EXITS - 1, dtype=np.intp)
        self._exit_position[leaves] = np.minimum(np.arange(len(leaves)), MAX_EXITS - 1)
        self.attach(table or MetricTable(1), worker)
        if table is None:  # one process alone: it serves once it answers
            self.set("state", READY)

    def attach(self, table: MetricTable, worker: int) -> None:
        """Write into ``worker``'s row of ``table`` from now on (set before serving)."""
        self.table, self.worker = table, worker
        self.row = table.rows[worker]
        self._requests = self.row[COLUMNS["requests"]]
        self._latency = self.row[COLUMNS["latency"]]
        self._exits = self.row[COLUMNS["exits"]]
        self.set("pid", os.getpid())
        self.set("started", time.time())

    def set(self, name: str, value: float) -> None:
        self.table.set(self.worker, name, value)

    def add(self, name: str, value: float = 1) -> None:
        self.row[COLUMNS[name].start] += value

    # ---------------------------------------------------------------- writers

    def request(self, path: str, status: int, seconds: float) -> None:
        where = _PATH_INDEX.get(path, len(PATHS) - 1)
        code = _STATUS_INDEX.get(status, len(STATUSES) - 1)
        self._requests[where * len(STATUSES) + code] += 1
        self._latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.add("latency_sum", seconds)

    def prediction(self, exits: np.ndarray, macs: np.ndarray) -> None:
        """A batch's exits and MACs (called where the model runs, once a batch)."""
        positions = self._exit_position[np.asarray(exits, dtype=np.intp)]
        self._exits += np.bincount(positions, minlength=MAX_EXITS)[:MAX_EXITS]
        self.add("macs", float(np.asarray(macs).sum()))
        self.add("images", len(exits))

    def hold(self, state: dict[str, Any]) -> None:
        """The held budget's state after a batch (``BudgetHold.state``)."""
        values = [state["target_macs"], state["window_mean_macs"] or 0.0, state["drift_ratio"],
                  state["point_validation_macs"], state["moves"]]  # fmt: skip
        self.row[COLUMNS["hold"]] = values
        self.set("holds", 1)

    # ---------------------------------------------------------------- readers

    def live(self) -> np.ndarray:
        """The rows of workers serving now."""
        rows = self.table.rows
        return rows[rows[:, COLUMNS["state"].start] == READY]

    def total(self, name: str, live_only: bool = False) -> float:
        rows = self.live() if live_only else self.table.rows
        return float(rows[:, COLUMNS[name]].sum())

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's state and counters, for ``/health``."""
        now = time.time()
        return [
            {
                "worker": k,
                "pid": int(row[COLUMNS["pid"].start]),
                "state": STATES.get(float(row[COLUMNS["state"].start]), "down"),
                "up_s": round(now - row[COLUMNS["started"].start], 1),
                "restarts": int(row[COLUMNS["restarts"].start]),
                "served": int(row[COLUMNS["served"].start]),
                "queued": int(row[COLUMNS["queued"].start]),
            }
            for k, row in enumerate(self.table.rows)
        ]

    def render(self) -> str:
        """Prometheus text: counters summed over every worker (a dead one's included),
        gauges over the live ones."""
        rows, live = self.table.rows, self.live()
        requests = rows[:, COLUMNS["requests"]].sum(axis=0).reshape(len(PATHS), len(STATUSES))
        lines = [
            "# HELP dynroute_requests_total Requests answered, by path and status.",
            "# TYPE dynroute_requests_total counter",
        ]
        for p, path in enumerate(PATHS):
            for s, status in enumerate(STATUSES):
                if requests[p, s]:
                    label = f'path="{path}",status="{status or "other"}"'
                    lines.append(f"dynroute_requests_total{{{label}}} {int(requests[p, s])}")
        lines += [
            "# HELP dynroute_request_seconds Request latency.",
            "# TYPE dynroute_request_seconds histogram",
        ]
        latency = rows[:, COLUMNS["latency"]].sum(axis=0)
        total = 0
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), latency, strict=True):
            total += int(count)
            label = "+Inf" if bound == math.inf else f"{bound:g}"
            lines.append(f'dynroute_request_seconds_bucket{{le="{label}"}} {total}')
        exits = rows[:, COLUMNS["exits"]].sum(axis=0)
        images, macs = self.total("images"), self.total("macs")
        lines += [
            f"dynroute_request_seconds_sum {self.total('latency_sum'):.6f}",
            f"dynroute_request_seconds_count {total}",
            "# HELP dynroute_exits_total Images classified at each exit.",
            "# TYPE dynroute_exits_total counter",
        ]
        for position, name in enumerate(self.exit_names.values()):
            if position < MAX_EXITS:
                lines.append(f'dynroute_exits_total{{exit="{name}"}} {int(exits[position])}')
        lines += [
            "# TYPE dynroute_images_total counter",
            f"dynroute_images_total {int(images)}",
            "# TYPE dynroute_macs_total counter",
            f"dynroute_macs_total {int(macs)}",
            "# HELP dynroute_mean_macs Mean MACs per image since the start.",
            "# TYPE dynroute_mean_macs gauge",
            f"dynroute_mean_macs {macs / images if images else 0:.1f}",
            "# TYPE dynroute_refused_connections_total counter",
            f"dynroute_refused_connections_total {int(self.total('refused'))}",
            "# TYPE dynroute_worker_restarts_total counter",
            f"dynroute_worker_restarts_total {int(self.total('restarts'))}",
            "# TYPE dynroute_workers gauge",
            f"dynroute_workers {len(live)}",
            "# TYPE dynroute_queued gauge",
            f"dynroute_queued {int(self.total('queued', live_only=True))}",
            "# TYPE dynroute_decode_budget_free_bytes gauge",
            f"dynroute_decode_budget_free_bytes {int(self.total('decode_free', live_only=True))}",
        ]
        holding = live[live[:, COLUMNS["holds"].start] > 0]
        if len(holding):  # each worker holds the budget on its own window: their mean
            gauges = holding[:, COLUMNS["hold"]].mean(axis=0)
            gauges[-1] = holding[:, COLUMNS["hold"]][:, -1].sum()  # moves: a total
            for name, value in zip(HOLD_GAUGES, gauges, strict=True):
                lines += [f"# TYPE dynroute_budget_{name} gauge",
                          f"dynroute_budget_{name} {value:.6g}"]  # fmt: skip
        return "\n".join(lines) + "\n"
