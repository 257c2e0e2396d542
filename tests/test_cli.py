"""The `fedq` command's answers to bad input: one line, the allowed values, exit code 2."""

import subprocess
import sys
from pathlib import Path

import pytest

FEDQ = str(Path(sys.executable).parent / "fedq")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FEDQ, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["demo", "--strategy", "fedsgd"], "strategy='fedsgd' is not known; allowed: fedavg"),
        (["demo", "--model", "vit"], "model='vit' is not known; allowed: mlp, cnn"),
        (["demo", "--partitioner", "zipf"], "allowed: iid, dirichlet, pathological"),
        (["demo", "--clients", "0"], "--clients=0 is out of range for the deployment engine"),
        (["demo", "--clients", "100000"], "allowed: 1..64 (each client is a SuperNode process"),
        (["demo", "--timeout", "-5"], "--timeout=-5.0 must be a positive number of seconds"),
        (["demo", "--monitor-address", "nohostport"], "monitor='nohostport' must be HOST:PORT"),
        (["demo", "--set", "min-clients=2"], "--set min-clients is set by fedq demo itself"),
        (["demo", "--set", "lr=inf"], "lr=inf must be a finite number"),
        (["demo", "--summary", "/nonexistent/dir/s.json"], "/nonexistent/dir does not exist"),
        (["demo", "--data", "0=parquet:x"], "data='parquet:x' is not a data source"),
        (["data", "check", "csv:/nonexistent.csv"], "/nonexistent.csv: no such file or directory"),
        (["demo", "--rounds", "0"], "num-server-rounds=0 must be >= 1"),
        (["demo", "--clients", "two"], "'two' is not a valid integer"),
        (
            ["demo", "--engine", "ray"],
            "--engine='ray' is not known; allowed: deployment, simulation",
        ),
        (["demo", "--set", "lr=-1"], "lr=-1.0 must be > 0, or 0 for the default"),
        (["demo", "--set", "epochs=2"], "unknown run-config key 'epochs'; allowed:"),
        (["demo", "--set", "nonsense"], "--set 'nonsense' is not KEY=VALUE"),
        (["demo", "--no-such-flag"], "No such option '--no-such-flag'"),
    ],
)
def test_bad_input_is_one_line_naming_value_and_allowed_set(args, expected, tmp_path):
    output = ["--output-dir", str(tmp_path)] if args[0] == "demo" else []
    result = _run(*args, *output)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fedq: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not any(tmp_path.iterdir()), "nothing is started or written on bad input"


def test_help_lists_the_demo_command():
    result = _run("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout


def test_an_output_dir_that_is_a_file_is_refused_before_anything_starts(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = _run("demo", "--output-dir", str(a_file / "runs"))
    assert result.returncode == 2
    assert f"is not a directory ({a_file} is a file)" in result.stderr
