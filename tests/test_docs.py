"""README's test command is the one CI runs."""

from tests.support.helpers import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.strip() in [line.strip() for line in readme.splitlines()]
    assert "pytest" in ci


def test_the_schedules_call_keyrotate_with_options_it_has():
    import re

    import click

    from keyrotate.cli import main

    for path in sorted((ROOT / "scripts" / "schedules").iterdir()):
        calls = re.findall(r"keyrotate (?:-q )?(status [^\n>]*)", path.read_text())
        assert calls, path.name
        for call in calls:
            args = call.split()
            command = main.commands[args[0]]
            with click.Context(command) as ctx:
                command.parse_args(ctx, args[1:])   # raises on an option it does not have
            assert "--notify" in args and "--metrics-file" in args, path.name


def test_the_schedules_run_rollover_with_options_it_has():
    import re

    import click

    from keyrotate.cli import main

    for path in sorted((ROOT / "scripts" / "schedules").iterdir()):
        calls = re.findall(r"keyrotate (?:-q )?(rollover [^\n>]*)", path.read_text())
        assert calls, path.name
        for call in calls:
            args = call.split()
            command = main.commands[args[0]]
            with click.Context(command) as ctx:
                command.parse_args(ctx, args[1:])   # raises on an option it does not have
            assert "--env" in args and "--dry-run" not in args, path.name
