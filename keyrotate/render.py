"""Rendering results: one JSON object as the last line of stdout, or short text for people.

Results are plain dicts built by the library; nothing here reads keys or values.
"""

from __future__ import annotations

import json
from typing import Any

import click


def emit_json(result: dict[str, Any]) -> None:
    click.echo(json.dumps(result, sort_keys=False, default=str))


def say(message: str) -> None:
    """Human progress and logs go to stderr, keeping stdout for results."""
    click.echo(message, err=True)


def reencrypt_text(r: dict[str, Any]) -> str:
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


def verify_text(r: dict[str, Any]) -> str:
    verdict = "clean" if r["clean"] else "NOT clean"
    lines = [f"{r['target']}: {verdict}: {r['rows']:,} rows, {r['ok']:,} ok (kid {r['kid']}), "
             f"{r['old']:,} old, {r['null']:,} null, {r['failed']:,} failed"]
    lines += failure_lines(r["failures"], r["failed"])
    return "\n".join(lines)


def failure_lines(failures: list[dict[str, str]], total: int) -> list[str]:
    out = [f"  row {f['id']}: {f['reason']}" for f in failures[:20]]
    if total > len(out):
        out.append(f"  ... {total - len(out)} more (see `keyrotate runs RUN_ID --json`)")
    return out


def runs_text(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs recorded"
    return "\n".join(
        f"{r['run_id']}  {r['status']:<24} {r['target']:<32} {r['mode']:<9} "
        f"scanned {r['rows_scanned']:,} rewritten {r['rows_rewritten']:,} "
        f"failed {r['rows_failed']:,}  started {r['started_at']}" for r in runs)


def secrets_list_text(r: dict[str, Any]) -> str:
    lines = [f"secrets on {r['env']} Workers" + (" (drift)" if r["drift"] else " (as the manifest says)")]
    for w in r["workers"]:
        state = "ok"
        if w["missing"] or w["extra"]:
            state = ", ".join(filter(None, [
                "missing " + " ".join(w["missing"]) if w["missing"] else "",
                "extra " + " ".join(w["extra"]) if w["extra"] else ""]))
        lines.append(f"  {w['name']:<32} {len(w['present'])} secrets  {state}")
    return "\n".join(lines)


def push_text(r: dict[str, Any]) -> str:
    head = "plan (dry run, nothing pushed):" if r["dry_run"] else "pushed:"
    return "\n".join([head] + [
        f"  {s['name']:<32} " + " ".join(f"{n}={fp}" for n, fp in s["secrets"].items())
        for s in r["steps"]])


def validate_text(r: dict[str, Any]) -> str:
    lines = [f"health of {r['env']}: {'ok' if r['ok'] else 'FAILED'}"]
    lines += [f"  {w['worker']:<16} {w['status']:<12} {w['url']} {w['detail']}" for w in r["workers"]]
    return "\n".join(lines)


def deploy_text(r: dict[str, Any]) -> str:
    if r["dry_run"]:
        return "\n".join(["plan (dry run, nothing deployed):"] + [
            f"  {i + 1}. {s['name']} from {s['dir']}" + (f", then health {s['health']}" if s["health"] else "")
            for i, s in enumerate(r["steps"])])
    if r["ok"]:
        return f"deployed {', '.join(r['deployed'])}; all healthy"
    return (f"health check failed after deploying {r['failed_at']}; rolled back "
            f"{', '.join(r['rolled_back']) or 'nothing'}")


def rollback_text(r: dict[str, Any]) -> str:
    lines = ["rolled back:" if r["done"] else "plan (nothing rolled back; add --yes):"]
    for s in r["plan"]:
        target = s["target"] or "no earlier version"
        cross = f"  crosses {s['crosses']['secret']} change" if s["crosses"] else ""
        lines.append(f"  {s['name']:<32} -> {target}{cross}")
    if r["done"]:
        lines.append("health: " + ("ok" if r["ok"] else "FAILED"))
    return "\n".join(lines)


def rotate_text(r: dict[str, Any]) -> str:
    if r["dry_run"]:
        lines = [f"plan for {r['secret']} on {r['env']} ({r['plan']}"
                 + (", compromised" if r["compromised"] else "") + "), nothing changed:"]
        if r.get("warning"):
            lines.append(f"  NOTE: {r['warning']}")
        lines += [f"  {'done' if s['done'] else '    '} {s['step']:<16} {s['what']}" for s in r["steps"]]
        return "\n".join(lines)
    lines = [f"{r['secret']} on {r['env']}: {r['state']} (rotation {r['rotation_id']})",
             f"  old {r['old_fingerprint']}  new {r['new_fingerprint']}", f"  {r['note']}"]
    for item in r["detail"].get("checklist", []):
        lines.append(f"  [ ] {item}")
    return "\n".join(lines)


def status_text(r: dict[str, Any]) -> str:
    lines = [f"secrets on {r['env']}:"]
    for s in r["secrets"]:
        age = f"{s['age_days']} days" if s["age_days"] is not None else "age unknown"
        flag = "  DUE" if s["due"] else ""
        rot = f"  rotation {s['rotation']['state']}" if s["rotation"] else ""
        lines.append(f"  {s['secret']:<24} {s['kind']:<11} {age}{flag}{rot}")
        for target, c in (s.get("rows") or {}).items():
            lines.append(f"      {target}: {c['current']} current, {c['previous']} previous, "
                         f"{c['other']} other, {c['null']} null")
    return "\n".join(lines)
