"""`status --format openmetrics` and `--metrics-file`: the status as OpenMetrics text, for
Prometheus (node_exporter's textfile collector reads the file; it is replaced atomically,
so a scrape never sees half of it). Rendered by prometheus-client, which owns the format's
escaping and `# EOF` rules.

Rows per target are given by key: `current` (the key rows are moving to: the pending
value during a rotation), `old` (any other value in the store) and `failed` (opens under
none); alert on `old` long after a rotation and on any `failed`.

What status could not read is never given a value: a secret of unknown age has no
`keyrotate_secret_age_seconds` (nor `keyrotate_secret_due`), a target that could not be
counted no `keyrotate_rows`; `keyrotate_status_errors` counts, per secret, the checks
that could not be made. Alert on it above 0.

Each key id's lifecycle state is a StateSet, `keyrotate_key_state{secret,key,
keyrotate_key_state="active"} 1` (one series per state, 1 for the key's own).
"""

from __future__ import annotations

from typing import Iterator

from prometheus_client.core import (
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from keyrotate.evidence.lifecycle import STATES
from keyrotate.files import atomic_write_public
from keyrotate.rotation.status import SecretStatus, StatusResult
from keyrotate.timeutil import parse_utc


def _by_key(s: SecretStatus, counts: dict[str, int]) -> dict[str, int]:
    if s.pending:
        current, old = counts.get("pending", 0), counts.get("current", 0) + counts.get("previous", 0)
    else:
        current, old = counts.get("current", 0), counts.get("pending", 0) + counts.get("previous", 0)
    return {"current": current, "old": old, "failed": counts.get("other", 0)}


class _StatusCollector(Collector):
    def __init__(self, result: StatusResult):
        self.r = result

    def collect(self) -> Iterator[Metric]:
        env = self.r.env
        age = GaugeMetricFamily("keyrotate_secret_age_seconds", "Age of the secret's current "
                                "value in its store.", labels=["env", "secret", "kind"], unit="seconds")
        due = GaugeMetricFamily("keyrotate_secret_due", "1 when the secret is older than --due.",
                                labels=["env", "secret"])
        last = GaugeMetricFamily("keyrotate_secret_last_rotation_timestamp_seconds", "When the "
                                 "secret's last rotation finished here.", labels=["env", "secret"],
                                 unit="seconds")
        running = GaugeMetricFamily("keyrotate_rotation_in_progress", "1 while a rotation of the "
                                    "secret is open.", labels=["env", "secret"])
        step = InfoMetricFamily("keyrotate_rotation", "The open rotation and the last step it "
                                "completed.", labels=["env", "secret", "rotation_id", "state", "step"])
        rows = GaugeMetricFamily("keyrotate_rows", "Rows (or Durable Objects) of a target by the "
                                 "key they open under.", labels=["env", "secret", "target", "key"])
        errors = GaugeMetricFamily("keyrotate_status_errors", "Checks status could not make "
                                   "for the secret (its value, age or rows unreadable).",
                                   labels=["env", "secret"])
        missing = GaugeMetricFamily("keyrotate_objects_missing", "Objects listed in D1 that the "
                                    "Worker could not find.", labels=["env", "secret", "target"])
        key_state = StateSetMetricFamily("keyrotate_key_state", "Lifecycle state of each key id "
                                         "(NIST SP 800-57).", labels=["env", "secret", "key"])
        for s in self.r.secrets:
            if s.age_seconds is not None:
                age.add_metric([env, s.secret, s.kind], s.age_seconds)
                due.add_metric([env, s.secret], 1.0 if s.due else 0.0)
            errors.add_metric([env, s.secret], float(len(s.errors)))
            finished = parse_utc(s.last_rotated_at)
            if finished is not None:
                last.add_metric([env, s.secret], finished.timestamp())
            running.add_metric([env, s.secret], 1.0 if s.rotation else 0.0)
            if s.rotation:
                steps = s.rotation.get("steps_done") or []
                step.add_metric([env, s.secret, s.rotation["rotation_id"], s.rotation["state"],
                                 steps[-1] if steps else "none"], {})
            for k in s.keys:
                if k["state"] in STATES:
                    key_state.add_metric([env, s.secret, k["key"]],
                                         {state: state == k["state"] for state in STATES})
            for target, counts in (s.rows or {}).items():
                for key, n in _by_key(s, counts).items():
                    rows.add_metric([env, s.secret, target, key], n)
                if "missing" in counts:
                    missing.add_metric([env, s.secret, target], counts["missing"])
        stamp = parse_utc(self.r.at)
        yield from (age, due, errors, last, running, step, rows, missing, key_state)
        if stamp is not None:
            at = GaugeMetricFamily("keyrotate_status_timestamp_seconds", "When this status was "
                                   "taken.", labels=["env"], unit="seconds")
            at.add_metric([env], stamp.timestamp())
            yield at


def openmetrics(result: StatusResult) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(result))
    return generate_latest(registry).decode()


def write_metrics_file(result: StatusResult, path: str) -> None:
    atomic_write_public(path, openmetrics(result))
