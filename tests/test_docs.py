"""README's test command is the one CI runs."""

from tests.support.helpers import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.strip() in [line.strip() for line in readme.splitlines()]
    assert "pytest" in ci
