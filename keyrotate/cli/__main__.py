from keyrotate.cli import run

run()
