"""bench/fedau_participation.py's harness at a tiny size: scoring, tuning, goals, output.

No accuracy figure is checked here (they come from the benchmark alone): two clients and
a few rounds only show that the harness runs end to end and says what it should.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest

from bench import fedau_participation as bench


@pytest.mark.parametrize(("rounds", "scored"), [(1500, 50), (500, 50), (300, 30), (30, 5), (3, 3)])
def test_a_run_is_scored_over_its_last_50_rounds_or_a_tenth_of_a_shorter_one(rounds, scored):
    assert bench.score_rounds(rounds) == scored


def test_only_the_curve_and_the_scored_rounds_are_evaluated_and_scored():
    assert bench.evaluated_rounds(100) == [0, 25, 50, 75, *range(91, 101)]
    accuracy = {t: 0.0 for t in bench.evaluated_rounds(100)} | {91: 0.5, 100: 1.0}
    assert bench.score(accuracy, 100) == pytest.approx(1.5 / 10)


def test_goal_lines_compare_the_mean_scores_and_say_met_or_missed():
    scores = {"participants": [0.80, 0.82], "known-prob": [0.90, 0.90]}
    scores |= {"fedau": [0.85, 0.85], "fedau-K50": [0.88, 0.90]}
    assert bench.goal_lines(scores) == [
        "fedau - participants: +4.00 points (goal >= +3: met)",
        "fedau - known-prob: -5.00 points (goal >= -1: MISSED)",
        "fedau-K50 - participants: +8.00 points (goal >= +3: met)",
        "fedau-K50 - known-prob: -1.00 points (goal >= -1: met)",
    ]


def test_tuning_keeps_the_grid_point_with_the_best_score(monkeypatch):
    best = bench.StepSizes(0.0562, 5.62)

    def fake_run(arm, steps, availability, seed, rounds, clients):
        accuracy = 0.9 if steps == best else 0.5
        return {t: accuracy for t in bench.evaluated_rounds(rounds)}

    monkeypatch.setattr(bench, "run_once", fake_run)
    tried = []
    all_arm = next(a for a in bench.ARMS if a.name == "all")
    assert bench.tune(all_arm, "bernoulli:label:0.1", 100, 20, 4, tried.append) == best
    assert len(tried) == len(bench.CLIENT_LRS) * len(bench.SERVER_LRS["all"])


@pytest.mark.parametrize("text", ["fedau=fast", "median=0.1", "all=0.1:-1", "all"])
def test_a_bad_fixed_learning_rate_is_refused_naming_the_form_and_the_arms(text):
    with pytest.raises(SystemExit, match=r"is not ARM=LR\[:SERVER_LR\] .* arms: fedau, fedau-K50"):
        bench.parse_fixed([text])


def test_the_harness_runs_every_arm_and_writes_its_curves(tmp_path, monkeypatch, capsys):
    argv = ["fedau_participation.py", "--clients", "2", "--rounds", "6", "--seeds", "1"]
    argv += ["--patterns", "cyclic", "--tune-rounds", "0", "--lr", "all=0.1:10"]
    argv += ["--plot", str(tmp_path / "curves.png"), "--json", str(tmp_path / "runs.json")]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        bench.main()
    finally:
        logging.disable(logging.NOTSET)  # main() silences the run's warnings
    out = capsys.readouterr().out
    for arm in bench.ARMS:
        assert f"\n| {arm.name} | " in out
    assert "| all | 0.1:10 | " in out
    goals = [line for line in out.splitlines() if line.startswith("[cyclic] fedau")]
    assert len(goals) == 4 and all(line.endswith(("met)", "MISSED)")) for line in goals)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert sorted(runs["accuracy"]["cyclic"]) == sorted(a.name for a in bench.ARMS)
    # Evaluated: round 0 and the 5 scored rounds (2-6).
    evaluated = [sorted(map(int, run)) for run in runs["accuracy"]["cyclic"]["fedau"]]
    assert evaluated == [[0, 2, 3, 4, 5, 6]]
    # Rescored from the saved accuracies: the same tables and goal lines, run again nowhere.
    tables = [line for line in out.splitlines() if line.startswith(("| ", "[cyclic]"))]
    monkeypatch.setattr(sys, "argv", ["x", "--from-json", str(tmp_path / "runs.json")])
    try:
        bench.main()
    finally:
        logging.disable(logging.NOTSET)
    again = capsys.readouterr().out
    assert [line for line in again.splitlines() if line.startswith(("| ", "[cyclic]"))] == tables
