"""README's test command is the one CI runs."""

import re

import pytest

from tests.support.helpers import ROOT, cli_commands


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


# ---- README synopses against click's own command tree --------------------------------

_OPTION = re.compile(r"(?<![\w\-/.:=#])(--?[A-Za-z][\w-]*)")
# options every synopsis leaves out, each stated once in README.md (the test checks the
# statement is there): -v/-q go before or after any command; --manifest rides with --env
_STATED_ONCE = {"--help", "-v", "--verbose", "-q", "--quiet"}
_STATEMENTS = ["`--env ENV` also takes `--manifest PATH`", "`-v` and `-q` go before or after"]


def _readme_command_lines() -> list[str]:
    """Lines of README code blocks that run keyrotate, continuation lines joined, comments
    dropped."""
    lines = (ROOT / "README.md").read_text().splitlines()
    out: list[str] = []
    fence: str | None = None
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else line.strip()[3:]
            continue
        in_code = fence in ("", "sh", "bash", "console") if fence is not None else line.startswith("    ")
        text = line.strip()
        if not in_code or not (text == "keyrotate" or text.startswith("keyrotate ")):
            continue
        indent = len(line) - len(line.lstrip())
        for nxt in lines[i + 1:]:
            more = nxt.strip()
            if text.endswith("\\"):
                text = text[:-1].rstrip() + " " + more
            elif more.startswith(("[", "--")) and len(nxt) - len(nxt.lstrip()) > indent:
                text += " " + more
            else:
                break
        out.append(text.split("  #", 1)[0].strip())
    return out


def _resolve(words: list[str]):
    """(command path, click command) named by the words after `keyrotate`."""
    import click

    from keyrotate.cli import main

    command, path = main, []
    for word in words:
        if not isinstance(command, click.Group) or word.startswith("-"):
            break
        names = word.split("|")   # `migrations list|apply`
        if names[0] not in command.commands:
            break
        path.append(names[0])
        command = command.commands[names[0]]
    return path, command


def _options(command) -> dict[str, set[str]]:
    """Each option of a command by its names: {'--json': {'--json'}, '-v': {'-v', '--verbose'}}."""
    names: dict[str, set[str]] = {}
    for p in command.params:
        opts = set(getattr(p, "opts", [])) | set(getattr(p, "secondary_opts", []))
        if p.param_type_name == "option":
            for o in opts:
                names[o] = opts
    return names


def test_every_readme_synopsis_matches_the_cli():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for statement in _STATEMENTS:
        assert statement in readme, f"README.md should state once: {statement}"
    leaves = cli_commands()
    synopses: dict[str, int] = {}
    problems = []
    for line in _readme_command_lines():
        words = line.split()[1:]
        path, command = _resolve(words)
        name = " ".join(path)
        if not path:       # the group itself: `keyrotate --version`
            assert set(words) <= {"--version", "--help"}, line
            synopses["--version"] = 1
            continue
        has = _options(command)
        said = set(_OPTION.findall(" ".join(words[len(path):])))
        unknown = said - set(has)
        if unknown:
            problems.append(f"`keyrotate {name}` has no {', '.join(sorted(unknown))}: {line}")
        if "[" not in line:
            continue       # an example, not a synopsis: its options must exist, that is all
        synopses[name] = synopses.get(name, 0) + 1
        implied = _STATED_ONCE | ({"--manifest"} if "--env" in said else set())
        missing = {min(opts) for o, opts in has.items()
                   if not opts & said and not opts & implied}
        if missing:
            problems.append(f"the synopsis of `keyrotate {name}` lacks "
                            f"{', '.join(sorted(missing))}: {line}")
    problems += [f"no synopsis for `keyrotate {name}`" for name in leaves if name not in synopses]
    if "--version" not in synopses:
        problems.append("no `keyrotate --version` line")
    assert not problems, "\n".join(problems)


def test_the_synopsis_check_catches_a_missing_option(monkeypatch):
    """The check above can fail: drop one option from the README it reads."""
    text = (ROOT / "README.md").read_text()
    assert "[--failed-ids FILE]" in text
    broken = text.replace("[--failed-ids FILE]", "", 1)
    real_read = type(ROOT).read_text

    def read(self, *a, **k):
        return broken if self.name == "README.md" else real_read(self, *a, **k)

    monkeypatch.setattr(type(ROOT), "read_text", read)
    with pytest.raises(AssertionError, match="synopsis of `keyrotate verify` lacks --failed-ids"):
        test_every_readme_synopsis_matches_the_cli()


def test_readme_installs_as_a_user_and_the_license_is_the_one_pyproject_names():
    import tomllib

    from keyrotate import __version__

    readme = (ROOT / "README.md").read_text()
    assert "\n    pipx install .\n    keyrotate --version\n" in readme
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in (ROOT / "LICENSE").read_text()
    from tests.support.helpers import run_cli

    res = run_cli("--version")
    assert res.exit_code == 0 and res.output.strip() == f"keyrotate, version {project['version']}"
    assert __version__ == project["version"]


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    return text[start:text.index("\n## ", start + 3)]


def test_use_it_on_your_app_names_what_exists():
    """The walk-through names files, functions and manifest keys that are really there."""
    from keyrotate.config.template import TEMPLATE

    section = _section("Use it on your app")
    for path in re.findall(r"`(examples/[\w./-]+)`", section):
        assert (ROOT / path).exists(), path
    route = (ROOT / "examples/durable-objects/keyrotate-objects.js").read_text()
    envelope = (ROOT / "examples/worker/envelope.js").read_text()
    for name in ("keyrotateRoute", "accountKeyrotate"):
        assert f"export async function {name}(" in route, name
    for name in ("loadKeys", "openEnvelope", "sealEnvelope"):
        assert f"export async function {name}(" in envelope, name
    assert "keyrotateRoute(request, env, env.ACCOUNT)" in (
        ROOT / "examples/durable-objects/index.js").read_text()
    for key in ("worker_name", "workers_dir", "deploy_order", "wrangler", "migrations_dir",
                "database", "secrets", "health", "objects", "workers", "format", "previous",
                "table", "column", "object", "ids", "ledger", "token"):
        assert re.search(rf"`{key}[` ]", section) and re.search(rf"^{key} = ", TEMPLATE, re.M), key
    assert "reads no `MASTER_KEY_PREVIOUS`" in section   # /work/notes/tminus.md, section 1f
