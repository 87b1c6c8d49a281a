"""keybuzz.runner.parse_changes on what pyinfra 3.10 really prints (a `pyinfra -y @local` run, no host contacted):
the number of changes it reports is the number of operations that changed something, 0 on a second run, and None
when the run stops before its Results table."""

from __future__ import annotations

from helpers import run
from keybuzz.runner import parse_changes


def _deploy(dest):
    result = run(["pyinfra", "-y", "@local", "tests/fixtures/directory_deploy.py"], env={"DIRECTORY_DEST": str(dest)},
                 timeout=120)
    return result, result.stdout + result.stderr


def test_parse_changes_reads_the_results_table_pyinfra_prints(tmp_path):
    dest = tmp_path / "made"
    first, output = _deploy(dest)
    assert first.returncode == 0, output[-2000:]
    assert dest.is_dir() and (dest / "copy.py").is_file()
    assert parse_changes(output) == 2, output[-2000:]  # the directory and the file
    (dest / "copy.py").unlink()
    _, output = _deploy(dest)
    assert parse_changes(output) == 1, output[-2000:]  # only the file again
    _, output = _deploy(dest)
    assert parse_changes(output) == 0, output[-2000:]


def test_a_run_that_stops_before_its_results_has_no_change_count(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    failed, output = _deploy(blocker)  # files.directory refuses a path that is a file
    assert failed.returncode != 0 and "exists and is not a directory" in output, output[-2000:]
    assert parse_changes(output) is None, output[-2000:]
