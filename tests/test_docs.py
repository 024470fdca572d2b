"""README's test command is the one CI runs."""

from tests.support.helpers import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.strip() in [line.strip() for line in readme.splitlines()]
    assert "pytest" in ci


def _schedule_calls(command):
    """(file, argv) of every `keyrotate COMMAND ...` in scripts/schedules/, each parsed by
    the command itself: an option it does not have raises. Every file must have one."""
    import re

    import click

    from keyrotate.cli import main

    found = []
    for path in sorted((ROOT / "scripts" / "schedules").iterdir()):
        calls = re.findall(rf"keyrotate (?:-q )?({command} [^\n>]*)", path.read_text())
        assert calls, path.name
        for call in calls:
            args = call.split()
            with click.Context(main.commands[command]) as ctx:
                main.commands[command].parse_args(ctx, args[1:])
            found.append((path.name, args))
    return found


def test_the_schedules_call_keyrotate_with_options_it_has():
    for name, args in _schedule_calls("status"):
        assert "--notify" in args and "--metrics-file" in args, name


def test_the_schedules_run_rollover_with_options_it_has():
    for name, args in _schedule_calls("rollover"):
        assert "--env" in args and "--dry-run" not in args, name
