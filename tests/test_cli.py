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
        (["demo", "--clients", "0"], "--clients=0 must be >= 1"),
        (["demo", "--rounds", "0"], "num-server-rounds=0 must be >= 1"),
        (["demo", "--clients", "two"], "'two' is not a valid integer"),
        (
            ["demo", "--engine", "ray"],
            "--engine='ray' is not known; allowed: deployment, simulation",
        ),
        (["demo", "--set", "lr=-1"], "lr=-1.0 must be > 0"),
        (["demo", "--set", "epochs=2"], "unknown run-config key 'epochs'; allowed:"),
        (["demo", "--set", "nonsense"], "--set 'nonsense' is not KEY=VALUE"),
        (["demo", "--no-such-flag"], "No such option '--no-such-flag'"),
    ],
)
def test_bad_input_is_one_line_naming_value_and_allowed_set(args, expected, tmp_path):
    result = _run(*args, "--output-dir", str(tmp_path))
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
