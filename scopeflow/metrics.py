"""Per-node counters, exported to Prometheus and summarised in status heartbeats.

Every counter a node may increment is declared here once. Each node owns its own registry (no
process-wide state), so several nodes can live in one process (inproc tests, the demo).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, start_http_server

# name -> (help text, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "frames_sent": ("Frames published by an acquisition node", ()),
    "acquire_failures": ("Frames the microscope failed to acquire in continuous mode", ()),
    "frames_received": ("Frames received by a consumer", ()),
    "frames_skipped": ("Frames a 'latest' consumer skipped to stay on the newest", ()),
    "frames_lost": ("Gaps in image_id seen on a lossless stream (an error)", ()),
    "overruns": ("Lossless sends that timed out under backpressure (an error)", ()),
    "messages_rejected": ("Malformed or invalid messages rejected", ("code",)),
    "commands_ok": ("Commands carried out", ("command",)),
    "commands_rejected": ("Commands refused", ("code",)),
    "results_published": ("Results published by an inference node", ()),
    "frames_failed": ("Frames a model could not process (shape, channels, values)", ("model",)),
    "stale_results_ignored": ("Results for frames taken before the last command", ()),
    "frames_recorded": ("Frames a recorder wrote to its dataset", ()),
    "frames_not_recorded": ("Frames a recorder received but could not write (an error)", ()),
    "recording_errors": ("Datasets a recorder could not write on (disk full, …)", ()),
}


class NodeMetrics:
    """The counters of one node, in a registry of its own."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            name: Counter(f"scopeflow_{name}", help_text, labels, registry=self.registry)
            for name, (help_text, labels) in COUNTERS.items()
        }

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        """Increment counter ``name`` (labels as declared in COUNTERS)."""
        counter = self._counters[name]
        (counter.labels(**labels) if labels else counter).inc(amount)

    def value(self, name: str, **labels: str) -> int:
        """Current value of a counter; with no labels on a labelled counter, the sum over labels."""
        total = 0.0
        for metric in self._counters[name].collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    total += sample.value
        return int(total)

    def snapshot(self) -> dict[str, int]:
        """Non-zero counters as ``{"name": n, "name.label": n}`` for status heartbeats."""
        out: dict[str, int] = {}
        for name, counter in self._counters.items():
            for metric in counter.collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_total") or sample.value == 0:
                        continue
                    key = ".".join([name, *sample.labels.values()])
                    out[key] = int(sample.value)
        return out

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose the counters for Prometheus at ``http://addr:port/metrics``."""
        start_http_server(port, addr=addr, registry=self.registry)
