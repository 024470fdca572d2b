"""The plan the README's "Use it on your app" shows is what `rotate --dry-run` prints."""

from __future__ import annotations

import pytest

from tests.support.cloudflare_project import with_overlap
from tests.support.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow


def _readme_plan() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use it on your app\n"):text.index("## Data-plane commands\n")]
    lines = section.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("plan for MASTER_KEY"))
    plan = []
    for ln in lines[start:]:
        if not ln.startswith("    "):
            break
        plan.append(ln[4:])
    return plan


def test_the_readme_dry_run_is_the_real_one(project):
    with_overlap(project[0])
    res = run_cli("rotate", "MASTER_KEY", "--env", "staging", "--dry-run")
    assert res.exit_code == 0, res.output
    assert _readme_plan() == res.output.rstrip("\n").splitlines()
