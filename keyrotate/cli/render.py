"""Results as short text for people: one function per result type, in one place.

Results come ready-made from the library; nothing here reads keys or values.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Any

from keyrotate.controlplane.compensate import CompensateResult
from keyrotate.controlplane.deploy import DeployResult
from keyrotate.controlplane.health import ValidateResult
from keyrotate.controlplane.init import InitResult
from keyrotate.controlplane.migrations_cmd import MigrationsApplyResult, MigrationsListResult
from keyrotate.controlplane.rollback import RollbackResult
from keyrotate.controlplane.secrets_cmd import PushResult, SecretsListResult
from keyrotate.dataplane.objects.driver import ObjectsCensus, ObjectsRewrap
from keyrotate.dataplane.reencrypt import ReencryptResult
from keyrotate.dataplane.runs import RunsResult
from keyrotate.dataplane.verify import Census
from keyrotate.demo.run import DemoResult
from keyrotate.evidence.record import NotifyTestResult
from keyrotate.evidence.trail import AuditShowResult, AuditVerifyResult
from keyrotate.rotation.rotate import RotatePlan, RotateResult
from keyrotate.rotation.status import StatusResult
from keyrotate.secrets.describe import SecretInfo
from keyrotate.secrets.keygen import KeygenResult


@singledispatch
def text(result: Any) -> str:
    raise TypeError(f"no text rendering for {type(result).__name__}")


def failure_lines(failures: list[dict[str, str]], total: int) -> list[str]:
    out = [f"  row {f['id']}: {f['reason']}" for f in failures[:20]]
    if total > len(out):
        out.append(f"  ... {total - len(out)} more (see `keyrotate runs RUN_ID --json`)")
    return out


@text.register
def _reencrypt(result: ReencryptResult) -> str:
    r = result.as_dict()
    lines = [
        f"{'dry run: ' if r['dry_run'] else ''}{r['target']}: {r['status']}"
        + (f" (run {r['run_id']}{', resumed' if r['resumed'] else ''})" if r["run_id"] else ""),
        f"  scanned {r['rows_scanned']:,}  rewritten {r['rows_rewritten']:,}  "
        f"already current {r['rows_already_current']:,}  null {r['rows_null']:,}  "
        f"failed {r['rows_failed']:,}  conflicts {r['rows_conflicted']:,}",
        f"  {r['seconds']:.2f} s"
        + (f", {r['rows_per_second']:,} rows/s" if r["rows_per_second"] else "")
        + f"  (mode {r['mode']}, kid {r['old_kid']} -> {r['new_kid']})",
    ]
    lines += failure_lines(r["failures"], r["rows_failed"])
    lines += [f"  WARNING: {w}" for w in r.get("warnings", [])]
    if r["rows_unsettled"]:
        lines.append(f"  {r['rows_unsettled']} rows kept changing during the run: run again")
    return "\n".join(lines)


@text.register
def _census(c: Census) -> str:
    verdict = "clean" if c.clean else "NOT clean"
    lines = [f"{c.target}: {verdict}: {c.rows:,} rows, {c.ok:,} ok (kid {c.key_kid}), "
             f"{c.old:,} old, {c.null:,} null, {c.failed:,} failed"]
    return "\n".join(lines + failure_lines(c.failures, c.failed))


def _runs_lines(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded"
    return "\n".join(
        f"{r['run_id']}  {r['status']:<24} {r['target']:<32} {r['mode']:<9} "
        f"scanned {r['rows_scanned']:,} rewritten {r['rows_rewritten']:,} "
        f"failed {r['rows_failed']:,}  started {r['started_at']}" for r in runs)


@text.register
def _runs(r: RunsResult) -> str:
    if r.failures is None:
        return _runs_lines(r.runs)
    return "\n".join([_runs_lines(r.runs),
                      *failure_lines(r.failures, int(r.runs[0]["rows_failed"]))]).rstrip()


@text.register
def _keygen(r: KeygenResult) -> str:
    return r.value or ""   # with --to, the command says where it went (on stderr)


@text.register
def _secret_info(r: SecretInfo) -> str:
    return "\n".join(f"{k}: {v}" for k, v in r.as_dict().items() if v is not None)


@text.register
def _demo(r: DemoResult) -> str:
    rot = r.reencrypt.as_dict()
    return "\n".join([
        f"demo: {r.rows:,} synthetic accounts in {r.database} (built in {r.build_seconds:.1f} s)",
        f"reencrypt: {rot['rows_rewritten']:,} rows rewrapped in {rot['seconds']:.2f} s "
        f"({rot['rows_per_second'] or 0:,} rows/s, {rot['workers']} crypto workers), "
        f"{rot['rows_failed']} failed",
        f"verify: {r.verify.ok:,} ok, {r.verify.old} old, {r.verify.failed} failed -> "
        + ("clean" if r.clean else "NOT clean"),
        f"keys are in {r.env_file} (0600); try it yourself:",
        *("  " + c for c in r.commands),
    ])


@text.register
def _secrets_list(r: SecretsListResult) -> str:
    lines = [f"secrets on {r.env} Workers" + (" (drift)" if r.drift else " (as the manifest says)")]
    for w in r.workers:
        state = ", ".join(filter(None, [
            "missing " + " ".join(w.missing) if w.missing else "",
            "extra " + " ".join(w.extra) if w.extra else ""])) or "ok"
        lines.append(f"  {w.name:<32} {len(w.present)} secrets  {state}")
    return "\n".join(lines)


@text.register
def _push(r: PushResult) -> str:
    head = "plan (dry run, nothing pushed):" if r.dry_run else "pushed:"
    return "\n".join([head] + [f"  {s.name:<32} " + " ".join(f"{n}={fp}" for n, fp in s.secrets.items())
                               for s in r.steps])


@text.register
def _validate(r: ValidateResult) -> str:
    lines = [f"health of {r.env}: {'ok' if r.ok else 'FAILED'}"]
    lines += [f"  {w.worker:<16} {w.status:<12} {w.url} {w.detail}" for w in r.workers]
    return "\n".join(lines)


@text.register
def _deploy(r: DeployResult) -> str:
    if r.dry_run:
        return "\n".join(["plan (dry run, nothing deployed):"] + [
            f"  {i + 1}. {s.name} from {s.dir}" + (f", then health {s.health}" if s.health else "")
            for i, s in enumerate(r.steps)])
    if r.ok:
        return f"deployed {', '.join(r.deployed)}; all healthy"
    return (f"health check failed after deploying {r.failed_at}; rolled back "
            f"{', '.join(r.rolled_back) or 'nothing'}")


@text.register
def _rollback(r: RollbackResult) -> str:
    lines = ["rolled back:" if r.done else "plan (nothing rolled back; add --yes):"]
    for s in r.plan:
        cross = f"  CROSSES A ROTATION: {s.crossing_text()} (needs --force)" if s.crosses else ""
        lines.append(f"  {s.name:<32} -> {s.target or 'no earlier version'}{cross}")
    if r.done:
        lines.append("health: " + ("ok" if r.ok else "FAILED"))
    return "\n".join(lines)


@text.register
def _audit_show(r: AuditShowResult) -> str:
    lines = [f"audit trail of {r.env}: {len(r.events)} events"]
    for e in r.events:
        what = " ".join(x for x in (e.get("secret"), e.get("rotation_id"), e.get("step")) if x)
        lines.append(f"  #{e['seq']:<5} {e.get('at')}  {e.get('event'):<22} {what}")
        lines.append(f"         {e.get('summary')}  ({e.get('operator')})")
    return "\n".join(lines)


@text.register
def _audit_verify(r: AuditVerifyResult) -> str:
    if r.problem is None:
        return (f"audit trail of {r.env}: {r.events} events, chain intact (head {r.head[:16]}); "
                f"{r.witnessed} written from this machine, all present as written")
    return f"audit trail of {r.env}: TAMPERED: {r.problem.message}"


@text.register
def _notify_test(r: NotifyTestResult) -> str:
    return "\n".join(f"{d.sink}: " + (f"delivered (try {d.tries})" if d.ok else f"FAILED: {d.reason}")
                     for d in r.deliveries)


@text.register
def _init(r: InitResult) -> str:
    return f"wrote {r.written}"


@text.register
def _migrations_list(r: MigrationsListResult) -> str:
    d = r.as_dict()
    body = "\n".join(f"  {'applied' if m['applied'] else 'PENDING':<8} {m['name']}"
                     for m in d["migrations"]) or "  no migrations"
    return f"migrations on {r.env}:\n{body}"


@text.register
def _migrations_apply(r: MigrationsApplyResult) -> str:
    verb = "would apply" if r.dry_run else "applied"
    return f"{verb}: {', '.join(r.names) if r.names else 'nothing'}"


@text.register
def _compensate(r: CompensateResult) -> str:
    return f"wrote {r.written}"


@text.register
def _rotate_plan(r: RotatePlan) -> str:
    lines = [f"plan for {r.secret} on {r.env} ({r.plan}"
             + (", compromised" if r.compromised else "") + "), nothing changed:"]
    if r.warning:
        lines.append(f"  NOTE: {r.warning}")
    lines += [f"  {'done' if s.done else '    '} {s.step:<16} {s.what}" for s in r.steps]
    return "\n".join(lines)


@text.register
def _rotate(r: RotateResult) -> str:
    rot = r.rotation
    lines = [f"{rot.secret} on {rot.environment}: {rot.state} (rotation {rot.rotation_id})",
             f"  old {rot.old_fp}  new {rot.new_fp}", f"  {r.note}"]
    lines += [f"  [ ] {item}" for item in rot.detail.get("checklist", [])]
    return "\n".join(lines)


@text.register
def _status(r: StatusResult) -> str:
    lines = [f"secrets on {r.env}:"]
    for s in r.secrets:
        age = f"{s.age_days} days" if s.age_days is not None else "age unknown"
        flag = "  DUE" if s.due else ""
        rot = f"  rotation {s.rotation['state']}" if s.rotation else ""
        last = f"  last rotated {s.last_rotated_at}" if s.last_rotated_at else ""
        lines.append(f"  {s.secret:<24} {s.kind:<11} {age}{flag}{rot}{last}")
        for target, c in (s.rows or {}).items():
            extra = ", ".join(f"{c[k]} {k}" for k in ("null", "missing") if k in c)
            lines.append(f"      {target}: {c['current']} current, {c['pending']} pending, "
                         f"{c['previous']} previous, {c['other']} other, {extra}")
    for n in r.notified:
        lines.append(f"notified {n['sink']} of {n['event']} ({n['secret']}): "
                     + ("delivered" if n["ok"] else f"FAILED: {n['reason']}"))
    return "\n".join(lines)


@text.register
def _objects_rewrap(r: ObjectsRewrap) -> str:
    d = r.as_dict()
    lines = [f"{'dry run: ' if r.dry_run else ''}{r.target}: {d['status']} (rotation id {r.run_id})",
             f"  objects {d['objects_scanned']:,}  rewrapped {d['objects_rewrapped']:,}  "
             f"already current {d['objects_already_current']:,}  missing {d['objects_missing']:,}  "
             f"conflicts {d['objects_conflicted']:,}  stale {d['objects_stale']:,}  "
             f"failed {d['objects_failed']:,}",
             f"  {d['requests']:,} requests, {d['seconds']:.2f} s"]
    lines += [f"  object {f['id']}: {f['reason']}" for f in d["failed"][:20]]
    lines += [f"  object {s['id']}: still answers with key {s['kid']} (old version?)"
              for s in d["stale"][:20]]
    if d["status"] == "incomplete":
        lines.append("  incomplete: run the same command again")
    return "\n".join(lines)


@text.register
def _objects_census(c: ObjectsCensus) -> str:
    d = c.as_dict()
    lines = [f"{c.target}: {'clean' if c.clean else 'NOT clean'}: {c.objects:,} objects, "
             f"{c.current:,} current (kid {c.new_kid}), {d['old']:,} old, {d['stale']:,} stale, "
             f"{c.missing:,} missing, {d['failed']:,} failed"]
    lines += [f"  object {f['id']}: {f['reason']}" for f in d["failures"][:20]]
    return "\n".join(lines)
