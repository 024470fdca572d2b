"""Forward migration, then its compensating migration: schema and data come back exactly,
on real SQLite and on local D1 (wrangler d1 execute --local); d1_migrations as wrangler
keeps it; staging before production."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from keyrotate.db.migration_ledger import discover, split_sql
from keyrotate.migrations.compensate import write_compensation
from tests.support.helpers import ROOT, last_json, run_cli

CORPUS = ROOT / "tests" / "migrations_corpus"
WRANGLER = ROOT / "node_modules" / ".bin" / "wrangler"
FILES = sorted(p.name for p in CORPUS.glob("0*.sql"))


def normalized_schema(conn: sqlite3.Connection) -> dict:
    """Columns, types, defaults, NOT NULL, primary keys, foreign keys, indexes, CHECKs,
    views and triggers: everything but the literal CREATE text."""
    out: dict = {}
    for type_, name, sql in conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT "
                                         "LIKE 'sqlite_%' AND name != 'd1_migrations' AND substr(name, 1, 4) != '_cf_' "
                                         "AND type IN ('table', 'view', 'trigger') ORDER BY name"):
        if type_ != "table":
            out[f"{type_}:{name}"] = re.sub(r"\s+", " ", sql).strip().lower()
            continue
        q = f'"{name}"'
        out[f"table:{name}"] = {
            "columns": [tuple(r[1:6]) for r in conn.execute(f"PRAGMA table_xinfo({q})")],
            "fks": sorted(tuple(r[2:]) for r in conn.execute(f"PRAGMA foreign_key_list({q})")),
            "indexes": sorted((r[1], r[2], r[3], r[4], tuple(c[2] for c in conn.execute(
                f"PRAGMA index_info(\"{r[1]}\")"))) for r in conn.execute(f"PRAGMA index_list({q})")),
            "checks": sorted(re.sub(r"\s+", " ", c).lower() for c in _checks(sql)),
        }
    return out


def _checks(sql: str) -> list[str]:
    found = []
    for m in re.finditer(r"\bCHECK\s*\(", sql, re.I):
        depth, i = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        found.append(sql[m.start():i])
    return found


def data_of(conn: sqlite3.Connection, schema: dict) -> dict:
    out = {}
    for key, info in schema.items():
        if key.startswith("table:"):
            name = key[6:]
            cols = ", ".join(f'"{c[0]}"' for c in info["columns"])
            out[name] = sorted(conn.execute(f'SELECT {cols} FROM "{name}"').fetchall(), key=repr)
    return out


def seed(conn: sqlite3.Connection, tag: str) -> None:
    """Rows in whatever tables exist at this point, using the columns every stage has."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for i in range(3):
        if "users" in tables:
            conn.execute("INSERT INTO users (user_id, email) VALUES (?, ?)", (f"u{tag}{i}", f"{tag}{i}@x"))
        if "accounts" in tables:
            conn.execute("INSERT INTO accounts (account_id, user_id, encrypted_tokens) VALUES (?, ?, ?)",
                         (f"a{tag}{i}", f"u{tag}{i}", '{"iv":"x"}'))
        if "sync_jobs" in tables:
            conn.execute("INSERT INTO sync_jobs (account_id, kind) VALUES (?, 'full')", (f"a{tag}{i}",))


def run_script(conn: sqlite3.Connection, path: Path) -> None:
    """A migration in one transaction, then SQLite's own foreign-key check. (With foreign
    keys enforced, plain SQLite refuses any table rebuild under a referenced table: the
    DROP's implicit delete is counted and the rename does not uncount it; the local-D1
    test below shows D1's behaviour with defer_foreign_keys.)"""
    conn.execute("BEGIN")
    for statement in split_sql(path.read_text()):
        conn.execute(statement)
    conn.execute("COMMIT")
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)  # SQLite's defaults


@pytest.mark.parametrize("name", FILES)
def test_forward_then_compensate_on_sqlite(tmp_path, name):
    folder = tmp_path / "migrations"
    shutil.copytree(CORPUS, folder)
    conn = _connect(tmp_path / "app.db")
    target = folder / name
    for m in discover(folder):
        if m.name == name:
            break
        run_script(conn, m.path)
    seed(conn, "before")
    schema, data = normalized_schema(conn), None
    data = data_of(conn, schema)
    run_script(conn, target)
    seed(conn, "after")  # the application keeps writing; rows made after may go
    written = write_compensation(target).written
    assert written.name.startswith(f"{len(FILES) + 1:04d}_rollback_")
    run_script(conn, written)
    assert normalized_schema(conn) == schema
    restored = data_of(conn, schema)
    for table, rows in data.items():
        assert set(rows) <= set(restored[table]), f"{table} lost rows"


def test_compensation_warnings_for_what_cannot_be_undone(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_a.sql").write_text("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b TEXT);\n"
                                       "CREATE TABLE gone (id INTEGER PRIMARY KEY);")
    (folder / "0002_b.sql").write_text("ALTER TABLE t DROP COLUMN b;\nDROP TABLE gone;\n"
                                       "UPDATE t SET a = 'x';")
    res = run_cli("migrations", "compensate", str(folder / "0002_b.sql"), "--json")
    assert res.exit_code == 0, res.output
    out = last_json(res.output)
    text = (folder / "0003_rollback_b.sql").read_text()
    assert out["written"].endswith("0003_rollback_b.sql")
    for needle in ("dropped column(s) b of t", "dropped table gone", "changes data (UPDATE on t)"):
        assert any(needle in w for w in out["warnings"]), needle
        assert needle in text and needle in res.output and "WARNING" in res.output
    conn = _connect(tmp_path / "x.db")
    for p in ("0001_a.sql", "0002_b.sql", "0003_rollback_b.sql"):
        run_script(conn, folder / p)
    assert [c[1] for c in conn.execute("PRAGMA table_info(t)")] == ["id", "a", "b"]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'gone'").fetchone()


def test_drop_column_falls_back_to_rebuild_before_sqlite_3_35(tmp_path):
    from keyrotate.migrations.compensate import compensate

    folder = tmp_path / "m"
    shutil.copytree(CORPUS, folder)
    assert "DROP COLUMN" in compensate(folder / "0002_add_columns.sql").sql
    old = compensate(folder / "0002_add_columns.sql", sqlite_version=(3, 34, 1)).sql
    assert "DROP COLUMN" not in old and "_keyrotate_copy_accounts" in old


# --- local D1 through the real wrangler ---------------------------------------------------

@pytest.fixture
def d1_project(tmp_path, monkeypatch):
    if not WRANGLER.exists():
        pytest.fail("wrangler is not installed: run `npm ci` (setup-dev.sh)")
    project = tmp_path / "app"
    shutil.copytree(CORPUS, project / "migrations")
    (project / "wrangler.toml").write_text(
        'name = "tminus-api"\nmain = "index.js"\ncompatibility_date = "2024-12-01"\n'
        '[[d1_databases]]\nbinding = "DB"\ndatabase_name = "tminus-registry"\n'
        'database_id = "00000000-0000-0000-0000-000000000000"\nmigrations_dir = "migrations"\n')
    (project / "index.js").write_text("export default { fetch() { return new Response('ok') } }\n")
    monkeypatch.setenv("WRANGLER_SEND_METRICS", "false")
    monkeypatch.setenv("CI", "true")
    return project


def wrangler(project: Path, *args: str) -> str:
    proc = subprocess.run([str(WRANGLER), *args], cwd=project, capture_output=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-1500:]
    return proc.stdout.decode()


def local_d1_file(project: Path) -> Path:
    files = [p for p in (project / ".wrangler").rglob("*.sqlite")
             if "d1" in str(p) and p.name != "metadata.sqlite"]
    assert len(files) == 1, files
    return files[0]


@pytest.mark.slow  # three starts of the real wrangler each
@pytest.mark.parametrize("name", FILES)
def test_forward_then_compensate_on_local_d1(d1_project, tmp_path, name):
    folder = d1_project / "migrations"
    earlier = [m for m in discover(folder) if m.name < name]
    setup = tmp_path / "setup.sql"
    setup.write_text("\n".join(m.sql() for m in earlier) or "SELECT 1;")
    wrangler(d1_project, "d1", "execute", "DB", "--local", "--file", str(setup))
    db = local_d1_file(d1_project)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    seed(conn, "before")
    conn.execute("COMMIT")
    schema = normalized_schema(conn)
    data = data_of(conn, schema)
    conn.close()
    wrangler(d1_project, "d1", "execute", "DB", "--local", "--file", str(folder / name))
    written = write_compensation(folder / name).written
    wrangler(d1_project, "d1", "execute", "DB", "--local", "--file", str(written))
    conn = sqlite3.connect(db)
    assert normalized_schema(conn) == schema
    assert data_of(conn, schema) == data


@pytest.mark.slow  # three starts of the real wrangler
def test_d1_migrations_table_is_shared_with_wrangler(d1_project):
    wrangler(d1_project, "d1", "execute", "DB", "--local", "--command", "SELECT 1")
    db = local_d1_file(d1_project)
    (d1_project / "keyrotate.toml").write_text(
        '[project]\nname = "tminus"\ndeploy_order = ["api"]\nmigrations_dir = "migrations"\n'
        f'[environments.staging]\ndatabase = "file:{db}"\nsecrets = "dotenv:.env"\n')
    # wrangler applies the first three; keyrotate sees them and applies the rest
    for name in FILES[3:]:
        (d1_project / "migrations" / name).rename(d1_project / name)
    wrangler(d1_project, "d1", "migrations", "apply", "DB", "--local")
    for name in FILES[3:]:
        (d1_project / name).rename(d1_project / "migrations" / name)
    listed = last_json(run_cli("migrations", "list", "--env", "staging", "--json",
                               "--manifest", str(d1_project / "keyrotate.toml")).output)
    assert listed["pending"] == FILES[3:]
    res = run_cli("migrations", "apply", "--env", "staging", "--json",
                  "--manifest", str(d1_project / "keyrotate.toml"))
    assert res.exit_code == 0 and last_json(res.output)["applied"] == FILES[3:]
    assert "No migrations to apply" in wrangler(d1_project, "d1", "migrations", "list", "DB", "--local")


def test_production_waits_for_staging(tmp_path):
    shutil.copytree(CORPUS, tmp_path / "migrations")
    for env in ("staging", "production"):
        sqlite3.connect(tmp_path / f"{env}.db").close()
    manifest = tmp_path / "keyrotate.toml"
    manifest.write_text('[project]\nname = "t"\ndeploy_order = ["api"]\nmigrations_dir = "migrations"\n'
                        '[environments.staging]\ndatabase = "file:staging.db"\nsecrets = "dotenv:.env"\n'
                        '[environments.production]\ndatabase = "file:production.db"\nsecrets = "dotenv:.env"\n')
    args = ["--manifest", str(manifest), "--json"]
    refused = run_cli("migrations", "apply", "--env", "production", *args)
    assert refused.exit_code == 2 and "not applied to staging yet" in refused.output
    dry = run_cli("migrations", "apply", "--env", "staging", "--dry-run", *args)
    assert last_json(dry.output)["would_apply"] == FILES
    assert run_cli("migrations", "apply", "--env", "staging", *args).exit_code == 0
    done = run_cli("migrations", "apply", "--env", "production", *args)
    assert done.exit_code == 0 and last_json(done.output)["applied"] == FILES
    again = run_cli("migrations", "apply", "--env", "production", *args)
    assert last_json(again.output)["applied"] == []


def _compensated(tmp_path, first: str, second: str):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "0001_a.sql").write_text(first)
    (folder / "0002_b.sql").write_text(second)
    res = run_cli("migrations", "compensate", str(folder / "0002_b.sql"), "--json")
    return folder, res


@pytest.mark.parametrize("second,table,columns", [
    ("ALTER TABLE t RENAME COLUMN a TO renamed;", "t", ["id", "a"]),
    ("ALTER TABLE t RENAME TO u;", "t", ["id", "a"]),
    ('ALTER TABLE t RENAME TO "new name";\nALTER TABLE "new name" RENAME a TO "b c";', "t", ["id", "a"]),
])
def test_a_rename_is_undone_by_a_rename_keeping_the_data(tmp_path, second, table, columns):
    folder, res = _compensated(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL);\n"
                                         "INSERT INTO t (a) VALUES ('kept'), ('also kept');", second)
    assert res.exit_code == 0, res.output
    assert not last_json(res.output)["warnings"]
    conn = _connect(tmp_path / "x.db")
    for p in ("0001_a.sql", "0002_b.sql", "0003_rollback_b.sql"):
        run_script(conn, folder / p)
    assert [c[1] for c in conn.execute(f"PRAGMA table_info({table})")] == columns
    assert sorted(r[0] for r in conn.execute(f"SELECT a FROM {table}")) == ["also kept", "kept"]


def test_a_rebuild_that_cannot_refill_a_not_null_column_is_refused(tmp_path):
    folder, res = _compensated(tmp_path, "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL, "
                                         "b TEXT, UNIQUE (b));",
                               "CREATE TABLE t2 (id INTEGER PRIMARY KEY, b TEXT, UNIQUE (b));\n"
                               "INSERT INTO t2 SELECT id, b FROM t;\nDROP TABLE t;\n"
                               "ALTER TABLE t2 RENAME TO t;")
    assert res.exit_code == 2 and "NOT NULL without a default" in res.output
    assert not (folder / "0003_rollback_b.sql").exists()


@pytest.mark.parametrize("second,needle", [
    ('CREATE TABLE "other t" (x TEXT);\nINSERT INTO "my table" (v) VALUES (1);', "INSERT on my table"),
    ("WITH s AS (SELECT 1 AS v) INSERT INTO t (v) SELECT v FROM s;", "INSERT on t"),
    ("WITH s AS (SELECT 1) UPDATE [my table] SET v = 2;", "UPDATE on my table"),
])
def test_data_changes_are_found_behind_quotes_and_ctes(tmp_path, second, needle):
    _, res = _compensated(tmp_path, 'CREATE TABLE t (v INTEGER);\nCREATE TABLE "my table" (v INTEGER);',
                          second)
    assert res.exit_code == 0, res.output
    assert any(needle in w for w in last_json(res.output)["warnings"]), res.output


def test_every_schema_change_and_new_secret_is_in_the_trail(tmp_path):
    """`migrations apply` commits each migration, its d1_migrations row and its audit event
    in one transaction; `compensate --env` and `keygen --to --env` are recorded too (the
    file's SHA-256, the new secret's fingerprint: never its value)."""
    import hashlib

    from keyrotate.secrets.dotenv import DotenvStore

    shutil.copytree(CORPUS, tmp_path / "migrations")
    sqlite3.connect(tmp_path / "staging.db").close()
    manifest = tmp_path / "keyrotate.toml"
    manifest.write_text('[project]\nname = "t"\ndeploy_order = ["api"]\nmigrations_dir = "migrations"\n'
                        '[environments.staging]\ndatabase = "file:staging.db"\nsecrets = "dotenv:.env"\n')
    args = ["--env", "staging", "--manifest", str(manifest)]
    broken = tmp_path / "migrations" / f"{len(FILES) + 1:04d}_broken.sql"
    broken.write_text("CREATE TABLE fine (id INTEGER);\nALTER TABLE nowhere ADD COLUMN x TEXT;\n")
    failed = run_cli("migrations", "apply", *args)
    assert failed.exit_code != 0
    broken.unlink()

    def trail(kind):
        shown = last_json(run_cli("audit", "show", "--json", *args).output)["events"]
        return [e["detail"] for e in shown if e["event"] == kind]

    conn = sqlite3.connect(tmp_path / "staging.db")
    applied = [r[0] for r in conn.execute("SELECT name FROM d1_migrations ORDER BY id")]
    recorded = [d["migration"] for d in trail("schema.migration")]
    assert applied == recorded == FILES            # the failed one left neither
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'fine'").fetchall()
    for d in trail("schema.migration"):
        sql = (tmp_path / "migrations" / d["migration"]).read_bytes()
        assert d["sha256"] == hashlib.sha256(sql).hexdigest()

    assert run_cli("migrations", "compensate", str(tmp_path / "migrations" / FILES[1])).exit_code == 0
    assert trail("schema.compensation") == []      # no environment: no trail to write
    res = run_cli("migrations", "compensate", str(tmp_path / "migrations" / FILES[2]), "--json", *args)
    assert res.exit_code == 0, res.output
    [comp] = trail("schema.compensation")
    written = Path(last_json(res.output)["written"])
    assert (comp["undoes"], comp["written"]) == (FILES[2], written.name)
    assert comp["sha256"] == hashlib.sha256(written.read_bytes()).hexdigest()

    made = run_cli("keygen", "--format", "hex", "--to", f"dotenv:{tmp_path}/.env#NEW_TOKEN", *args)
    assert made.exit_code == 0, made.output
    [created] = trail("secret.created")
    assert created["ref"] == f"dotenv:{tmp_path}/.env#NEW_TOKEN"
    value = DotenvStore(str(tmp_path / ".env")).read("NEW_TOKEN")
    assert value.encode() not in (tmp_path / "staging.db").read_bytes()
    assert value.encode() not in (tmp_path / ".keyrotate" / "audit-staging.jsonl").read_bytes()
    assert run_cli("audit", "verify", *args).exit_code == 0
