"""fedq-superexec (cli/superexec.py): the Flower internals it relies on, and its own logic.

The end-to-end tests (tests/test_e2e_demo.py) run every `fedq demo` through it: Context state
crossing rounds (error feedback, LoDAdaC's agents) and every reply reaching the server.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import subprocess
import sys
import time
import tomllib
import types
from pathlib import Path

import flwr.supernode.runtime.run_clientapp as run_clientapp_module
import pytest
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec
from flwr.supernode.runtime.run_clientapp import run_clientapp

from cli import superexec

ROOT = Path(__file__).resolve().parents[1]


def test_flower_still_builds_its_executor_through_the_function_we_replace() -> None:
    module = importlib.import_module(superexec.SUPEREXEC_MODULE)
    assert callable(module.get_executor)
    assert "get_executor" in module.run_superexec.__code__.co_names


def test_flowers_executor_protocol_and_task_spec_are_what_we_implement() -> None:
    for method in ("launch", "reconcile", "close", "get_eligible_capacity", "wait_for_capacity"):
        assert callable(getattr(SubprocessExecutor, method)), method
    fields = set(inspect.signature(ExecutionSpec).parameters)
    assert fields >= {
        "task_type",
        "runtime_api_address",
        "token",
        "insecure",
        "root_certificates_path",
        "runtime_dependency_install",
        "parent_pid",
    }


def test_run_clientapp_takes_the_arguments_we_pass() -> None:
    parameters = set(inspect.signature(run_clientapp).parameters)
    assert parameters == {
        "runtime_api_address",
        "token",
        "insecure",
        "certificates",
        "parent_pid",
        "runtime_dependency_install",
    }


def test_flower_superexecs_own_parser_reads_our_arguments() -> None:
    parser_module = importlib.import_module("flwr.supercore.cli.flower_superexec")
    parser: argparse.ArgumentParser = parser_module._parse_args()
    args = parser.parse_args(["--insecure", "--runtime-api-address", "127.0.0.1:9094"])
    assert (args.runtime_api_address, args.insecure) == ("127.0.0.1:9094", True)


def test_the_app_module_and_packages_match_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    clientapp = project["tool"]["flwr"]["app"]["components"]["clientapp"]
    assert clientapp.split(":")[0] == superexec.APP_MODULE
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages - {"cli"} == superexec.APP_PACKAGES


def test_warm_up_imports_the_libraries_but_forgets_the_app() -> None:
    program = (
        "import sys; from cli import superexec; superexec.warm_up(); "
        "ours = [m for m in sys.modules if m.split('.')[0] in superexec.APP_PACKAGES]; "
        "print(int('torch._dynamo' in sys.modules), int('networkx' in sys.modules), len(ours))"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.split() == ["1", "1", "0"]


@pytest.mark.parametrize(
    ("argv", "addresses"),
    [
        (["--insecure", "--runtime-api-address", "a:1,b:2"], ["a:1", "b:2"]),
        (["--runtime-api-address=a:1", "--insecure"], ["a:1"]),
        (["--insecure"], []),
    ],
)
def test_runtime_addresses_are_read_from_either_spelling(argv, addresses) -> None:
    assert superexec._runtime_addresses(argv) == addresses


def test_each_loop_gets_flowers_arguments_with_its_one_address() -> None:
    argv = ["--insecure", "--runtime-api-address", "a:1,b:2", "--parent-pid", "7"]
    assert superexec._with_address(argv, "b:2") == [
        "--insecure",
        "--parent-pid",
        "7",
        "--runtime-api-address",
        "b:2",
    ]


def test_the_supervisor_passes_by_other_children_and_ends_with_a_loops_code() -> None:
    # In a container the supervisor may be PID 1 and be handed orphans; a loop ending
    # (code 3 here) ends it, with that loop named.
    program = """
import os, time
from cli import superexec
other = os.fork()
if other == 0:
    os._exit(0)
loop = os.fork()
if loop == 0:
    time.sleep(0.5)
    os._exit(3)
superexec._supervise({loop: "a:1"})
"""
    done = _run_program(program)
    assert done.returncode == 3, done.stderr
    assert "the loop for a:1 ended (code 3)" in done.stderr


def test_finished_children_are_reaped_and_the_rest_kept() -> None:
    executor = superexec.WarmForkExecutor()
    finished = os.fork()
    if finished == 0:
        os._exit(0)
    running = os.fork()
    if running == 0:
        time.sleep(60)
        os._exit(0)
    executor.children = {finished, running}
    try:
        for _ in range(500):  # the finished child exits at once; give it up to 5 s
            executor.reconcile()
            if finished not in executor.children:
                break
            time.sleep(0.01)
        assert executor.children == {running}
    finally:
        executor.close()  # SIGTERM to the running child
        os.waitpid(running, 0)


def test_a_child_forked_after_the_warm_up_computes_with_torch_and_numpy() -> None:
    program = """
import os, sys
from cli import superexec
superexec.warm_up()
pid = os.fork()
if pid == 0:
    import numpy as np, torch
    a = np.random.default_rng(0).standard_normal((300, 300))
    t = torch.from_numpy(a) @ torch.from_numpy(a).T
    os._exit(0 if abs(float(t.trace()) - float(np.trace(a @ a.T))) < 1e-6 else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    done = _run_program(program)
    assert done.stdout.split() == ["0"], done.stderr


@pytest.mark.parametrize(
    ("raise_", "code", "stderr"),
    [
        ("raise SystemExit(None)", 0, ""),
        ("raise SystemExit(5)", 5, ""),
        ("raise RuntimeError('boom')", 1, "RuntimeError: boom"),
    ],
)
def test_a_task_exits_with_its_code_and_a_crash_says_why(raise_, code, stderr) -> None:
    program = f"""
import os
from cli import superexec
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec

def fake_run_clientapp(**kwargs):
    {raise_}

superexec.run_clientapp = fake_run_clientapp
spec = ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:1", "token", True, None, False, None, False, 1)
pid = os.fork()
if pid == 0:
    superexec._run_task(spec)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    done = _run_program(program)
    assert done.stdout.split() == [str(code)], done.stderr
    assert stderr in done.stderr


def test_a_task_runs_its_own_exit_and_atexit_handlers_not_the_loops() -> None:
    # The loop registers Flower's signal and exit handlers (run_superexec does); a task
    # exiting through flwr_exit (run_clientapp does) must run only those it registered.
    program = """
import atexit, signal, time
from flwr.supercore.telemetry import EventType
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import add_exit_handler, flwr_exit, register_signal_handlers
from flwr.supercore.superexec.executor.types import ExecutionSpec
from cli import superexec

register_signal_handlers(EventType.RUN_SUPEREXEC_LEAVE, exit_handlers=[lambda: print("loop")])
atexit.register(lambda: print("loop atexit", flush=True))

def task(**kwargs):
    defaults = [signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGQUIT)]
    print("defaults", *defaults, flush=True)
    add_exit_handler(lambda: print("task", flush=True))
    atexit.register(lambda: print("task-atexit", flush=True))
    flwr_exit(0, emit_telemetry=False)

superexec.run_clientapp = task
executor = superexec.WarmForkExecutor(pacing=superexec.NO_PACING)
executor.launch(ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:1", "token", True, None, False,
                              None, False, 1))
while executor.children:
    executor.reconcile()
    time.sleep(0.01)
print("parent", signal.getsignal(signal.SIGQUIT) != signal.SIG_DFL, flush=True)
atexit._clear()
"""
    done = _run_program(program)
    lines = done.stdout.split()
    assert lines == ["defaults", "True", "True", "task", "task-atexit", "parent", "True"], (
        done.stderr
    )


# --- The warm app: one installed FAB's ClientApp imported in the loop, inherited by tasks ---

APP_PYPROJECT = """
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "warmapp"
version = "1.0.0"
dependencies = ["flwr>=1.39"]

[tool.flwr.app]
publisher = "fedqtest"

[tool.flwr.app.components]
serverapp = "warmapp_pkg.client:app"
clientapp = "warmapp_pkg.client:app"
"""


def _install_app(tmp_path: Path, value: str, *, body: str = "") -> str:
    """Build and install (Flower's own code) a one-module app; return its FAB hash."""
    source = tmp_path / f"source-{value}"
    (source / "warmapp_pkg").mkdir(parents=True)
    (source / "pyproject.toml").write_text(APP_PYPROJECT)
    (source / "warmapp_pkg" / "__init__.py").write_text("")
    (source / "warmapp_pkg" / "client.py").write_text(
        f"from flwr.clientapp import ClientApp\nVALUE = {value!r}\napp = ClientApp()\n{body}"
    )
    program = f"""
import hashlib
from pathlib import Path
from flwr.cli.build import build_fab_from_disk
from flwr.cli.install import install_from_fab
fab = build_fab_from_disk(Path({str(source)!r}))
install_from_fab(fab, skip_prompt=True)
print(hashlib.sha256(fab).hexdigest())
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def _run_program(program: str, flwr_home: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLWR_HOME": str(flwr_home)} if flwr_home else None
    return subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=env,
    )


def test_the_warm_app_is_found_where_flowers_install_puts_it(tmp_path: Path) -> None:
    fab_hash = _install_app(tmp_path, "A")
    program = f"""
from cli import superexec
from flwr.common.config import get_project_dir
found = superexec.installed_app_dir({fab_hash!r})
print(found == get_project_dir("fedqtest/warmapp", "1.0.0", {fab_hash!r}))
print(superexec.installed_app_dir("0" * 64), superexec.installed_app_dir(None))
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    assert done.stdout.split() == ["True", "None", "None"], done.stderr


def test_run_clientapp_looks_its_loader_up_when_it_runs() -> None:
    # guard_loader replaces the module attribute: Flower must read it at call time.
    assert "get_load_client_app_fn" in run_clientapp.__code__.co_names


def _tasks_program(tasks: list[tuple[str, str]]) -> str:
    """A loop that launches one ClientApp task per (FAB hash the loop is told, FAB hash the
    task's run names); each task runs Flower's loader as run_clientapp does and prints the
    app's VALUE and whether it was imported before the load; the loop then prints its own."""
    return f"""
import sys, time
import flwr.supernode.runtime.run_clientapp as run_clientapp_module
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec
from cli import superexec

def task_loading(fab_hash):
    def task(**kwargs):
        warm = "warmapp_pkg.client" in sys.modules
        load = run_clientapp_module.get_load_client_app_fn("", None, True)
        load("fedqtest/warmapp", "1.0.0", fab_hash)
        print(sys.modules["warmapp_pkg.client"].VALUE, warm, flush=True)
    return task

executor = superexec.WarmForkExecutor()
executor.app.settle_seconds = 0.0  # installed just now, by a program that has ended
for told, named in {tasks!r}:
    superexec.run_clientapp = task_loading(named)
    executor.launch(ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:1", "token", True, None,
                                  False, None, False, 1, fab_hash=told))
    while executor.children:
        executor.reconcile()
        time.sleep(0.01)
    print("loop", getattr(sys.modules.get("warmapp_pkg.client"), "VALUE", None), flush=True)
"""


def test_tasks_inherit_the_warm_app_and_a_new_fab_replaces_it(tmp_path: Path) -> None:
    a, b = _install_app(tmp_path, "A"), _install_app(tmp_path, "B")
    done = _run_program(_tasks_program([(a, a), (a, a), (b, b)]), flwr_home=tmp_path / "flwr")
    # Both FABs are installed beforehand, so even a FAB's first task finds its app warm.
    lines = done.stdout.splitlines()
    assert lines == ["A True", "loop A", "A True", "loop A", "B True", "loop B"], done.stderr


def test_a_task_of_another_installed_app_forgets_the_warm_one(tmp_path: Path) -> None:
    a, b = _install_app(tmp_path, "A"), _install_app(tmp_path, "B")
    # The loop is told FAB A, but the task's run names FAB B (Flower's loader decides).
    done = _run_program(_tasks_program([(a, b)]), flwr_home=tmp_path / "flwr")
    assert done.stdout.splitlines() == ["B True", "loop A"], done.stderr


def test_another_app_is_forgotten_with_a_relative_flwr_home(tmp_path: Path) -> None:
    # FLWR_HOME=./flwr: Flower's paths are relative, the modules' files absolute.
    a, b = _install_app(tmp_path, "A"), _install_app(tmp_path, "B")
    relative_home = Path(os.path.relpath(tmp_path / "flwr", ROOT))
    done = _run_program(_tasks_program([(a, a), (a, b)]), flwr_home=relative_home)
    assert done.stdout.splitlines() == ["A True", "loop A", "B True", "loop A"], done.stderr


def test_a_fab_not_installed_yet_gets_no_warm_app(tmp_path: Path) -> None:
    a = _install_app(tmp_path, "A")
    done = _run_program(_tasks_program([(None, a), ("f" * 64, a)]), flwr_home=tmp_path / "flwr")
    assert done.stdout.splitlines() == ["A False", "loop None", "A False", "loop None"], done.stderr


def test_an_app_that_fails_to_import_is_left_to_each_task(tmp_path: Path) -> None:
    fab_hash = _install_app(tmp_path, "A", body="raise RuntimeError('broken app')\n")
    program = f"""
import sys
from cli import superexec
app = superexec.WarmApp(settle_seconds=0.0)
app.prepare({fab_hash!r})
app.prepare({fab_hash!r})  # not tried again
print(app.app_dir, "warmapp_pkg.client" in sys.modules, len(app.broken))
print(any("apps" in p for p in sys.path))
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    assert done.stdout.split() == ["None", "False", "1", "False"], done.stderr


def test_an_app_directory_still_changing_is_not_imported_yet(tmp_path: Path) -> None:
    # As while Flower's install copies files into it: the loop waits for it to settle.
    fab_hash = _install_app(tmp_path, "A")
    program = f"""
import os, sys, time
from pathlib import Path
from cli import superexec
app = superexec.WarmApp(settle_seconds=1.0)
module = superexec.installed_app_dir({fab_hash!r}) / "warmapp_pkg" / "client.py"
os.utime(module)  # a file written just now
print(app.prepare({fab_hash!r}), app.app_dir is None, "warmapp_pkg.client" in sys.modules)
time.sleep(1.2)
print(app.prepare({fab_hash!r}), app.app_dir is None, "warmapp_pkg.client" in sys.modules)
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    assert done.stdout.split() == ["False", "True", "False", "True", "False", "True"], done.stderr


def test_no_warm_app_with_runtime_dependency_installation(tmp_path: Path) -> None:
    fab_hash = _install_app(tmp_path, "A")
    program = f"""
import sys, time
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec
from cli import superexec
executor = superexec.WarmForkExecutor()
spec = ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:1", "token", True, None, True, None,
                     False, 1, fab_hash={fab_hash!r})
superexec.run_clientapp = lambda **kwargs: print("warmapp_pkg.client" in sys.modules, flush=True)
executor.launch(spec)
while executor.children:
    executor.reconcile()
    time.sleep(0.01)
print("parent", "warmapp_pkg.client" in sys.modules)
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    assert done.stdout.split() == ["False", "parent", "False"], done.stderr


def test_forgetting_the_warm_app_keeps_the_libraries_its_import_pulled_in(tmp_path: Path) -> None:
    # Re-running a library's module code (torch's among them) can fail: only the app goes.
    fab_hash = _install_app(tmp_path, "A", body="import tabnanny\n")
    program = f"""
import sys
from cli import superexec
assert "tabnanny" not in sys.modules
app = superexec.WarmApp(settle_seconds=0.0)
app.prepare({fab_hash!r})
print("warmapp_pkg.client" in sys.modules, "tabnanny" in sys.modules)
app.forget()
print("warmapp_pkg" in sys.modules, "warmapp_pkg.client" in sys.modules, "tabnanny" in sys.modules)
"""
    done = _run_program(program, flwr_home=tmp_path / "flwr")
    lines = done.stdout.splitlines()
    assert lines == ["True True", "False False True"], done.stderr


def test_forgetting_the_warm_app_drops_its_modules_only(tmp_path: Path, monkeypatch) -> None:
    class MadeUp(types.ModuleType):  # like torch.classes: any attribute, even __path__
        def __getattr__(self, name: str) -> object:
            return object()

    ours = types.ModuleType("warmapp_pkg.client")
    ours.__file__ = str(tmp_path / "warmapp_pkg" / "client.py")
    theirs = types.ModuleType("elsewhere")
    theirs.__file__ = str(tmp_path.parent / "elsewhere.py")
    for name, module in [
        ("warmapp_pkg.client", ours),
        ("elsewhere", theirs),
        ("madeup", MadeUp("madeup")),
    ]:
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    app = superexec.WarmApp()
    app.app_dir = tmp_path
    app.forget()
    assert "warmapp_pkg.client" not in sys.modules
    assert "elsewhere" in sys.modules and "madeup" in sys.modules
    assert str(tmp_path) not in sys.path and app.app_dir is None


# --- Accepted FABs: Flower's per-task install redone only for bytes not accepted before ---


def test_run_clientapp_looks_its_install_up_when_it_runs() -> None:
    # AcceptedFabs.guard_install replaces the module attribute: read at call time, with
    # the arguments the replacement takes.
    assert "install_from_fab" in run_clientapp.__code__.co_names
    parameters = list(inspect.signature(run_clientapp_module.install_from_fab).parameters)
    assert parameters == ["fab_file", "install_dir", "skip_prompt"]


def test_a_task_gets_the_directory_flower_accepted_for_the_same_bytes(tmp_path: Path) -> None:
    sources = {}
    for value in ("A", "B"):
        source = tmp_path / f"source-{value}"
        (source / "warmapp_pkg").mkdir(parents=True)
        (source / "pyproject.toml").write_text(APP_PYPROJECT)
        (source / "warmapp_pkg" / "__init__.py").write_text("")
        (source / "warmapp_pkg" / "client.py").write_text(f"VALUE = {value!r}\n")
        sources[value] = str(source)
    program = f"""
import hashlib, shutil, sys
from pathlib import Path
import flwr.supernode.runtime.run_clientapp as run_clientapp_module
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.types import ExecutionSpec
from cli import superexec

fabs = {{k: build_fab_from_disk(Path(v)) for k, v in {sources!r}.items()}}
fabs["A tampered"] = fabs["A"][:-30] + bytes(30)
flower_install = run_clientapp_module.install_from_fab
calls = []
run_clientapp_module.install_from_fab = lambda *a, **k: calls.append(1) or flower_install(*a, **k)

def task_installing(name):
    def task(**kwargs):
        try:
            path = run_clientapp_module.install_from_fab(fabs[name], skip_prompt=True)
        except Exception as error:
            print(name, "rejected", len(calls), flush=True)
            raise SystemExit(1)
        value = (path / "warmapp_pkg" / "client.py").read_text().split()[-1]
        print(name, value, len(calls), path.is_dir(), flush=True)
    return task

executor = superexec.WarmForkExecutor(pacing=superexec.NO_PACING)
for name in ["A", "A", "B", "A tampered", "A", "remove A", "A", "B"]:
    if name == "remove A":
        prefix = hashlib.sha256(fabs["A"]).hexdigest()[:8]
        shutil.rmtree(next(Path(sys.argv[1]).glob(f"apps/fedqtest.warmapp.*.{{prefix}}")))
        continue
    superexec.run_clientapp = task_installing(name)
    executor.launch(ExecutionSpec(TaskType.CLIENT_APP, "127.0.0.1:1", "token", True, None,
                                  False, None, False, 1))
    while executor.children:
        executor.reconcile()
print("accepted", len(executor.accepted.directories))
"""
    home = tmp_path / "flwr"
    home.mkdir()
    env = {**os.environ, "FLWR_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", program, str(home)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=env,
    )
    # "<task> <app> <Flower installs run in this task> <directory there>": Flower's install
    # runs for new bytes, tampered bytes and a removed directory, and nowhere else.
    lines = [line for line in done.stdout.splitlines() if not line.startswith("Successfully")]
    assert lines == [
        "A 'A' 1 True",
        "A 'A' 0 True",
        "B 'B' 1 True",
        "A tampered rejected 1",
        "A 'A' 0 True",
        "A 'A' 1 True",
        "B 'B' 0 True",
        "accepted 2",
    ], done.stderr


def test_the_loop_takes_in_well_formed_reports_only(tmp_path: Path) -> None:
    accepted = superexec.AcceptedFabs()
    good, other = "a" * 64, "b" * 64
    reports = [
        f"{good} {tmp_path}\n".encode(),
        f"{other} relative/dir\n".encode(),  # not absolute
        f"{'A' * 64} {tmp_path}\n".encode(),  # not a lowercase SHA-256
        f"{good[:-1]} {tmp_path}\n".encode(),  # too short
        b"no space at all\n",
        other.encode() + b" " + os.fsencode(tmp_path / "caf\udce9") + b"\n",  # not UTF-8
        f"{'c' * 64} {tmp_path}".encode(),  # not ended yet
    ]
    for report in reports:
        os.write(accepted._write_end, report)
    accepted.collect()
    assert accepted.directories == {good: tmp_path, other: tmp_path / "caf\udce9"}
    os.write(accepted._write_end, b"\n")
    accepted.collect()
    assert accepted.directories["c" * 64] == tmp_path


# --- Poll pacing: no look for a task while none can appear ---


def test_pacing_looks_slowly_after_a_task_and_when_idle_and_at_full_speed_in_between() -> None:
    pacing = superexec.PollPacing(
        busy_wait=0.5, quiet_after_task=2.5, idle_after_task=10.0, relaxed_seconds=0.25
    )
    assert pacing.pause(None) == 0.25  # no task yet
    assert pacing.pause(0.0) == 0.25
    assert pacing.pause(2.4) == pytest.approx(0.1)  # never past the quiet time's end
    assert pacing.pause(2.5) == 0.0  # the next task is due: the loop's own interval
    assert pacing.pause(9.9) == 0.0
    assert pacing.pause(10.0) == 0.25  # idle
    assert superexec.NO_PACING.pause(None) == superexec.NO_PACING.pause(0.0) == 0.0


def test_reconcile_waits_for_a_running_task_a_bounded_time() -> None:
    pacing = superexec.PollPacing(
        busy_wait=0.3, quiet_after_task=0.0, idle_after_task=1e9, relaxed_seconds=0.0
    )
    executor = superexec.WarmForkExecutor(pacing=pacing)
    short = os.fork()
    if short == 0:
        time.sleep(0.05)
        os._exit(0)
    executor.children = {short}
    executor.reconcile()  # waits for the short task, up to 0.3 s at a time
    for _ in range(100):
        if not executor.children:
            break
        executor.reconcile()
    assert executor.children == set()
    assert executor.last_task_end is not None
    long = os.fork()
    if long == 0:
        time.sleep(60)
        os._exit(0)
    executor.children = {long}
    try:
        started = time.monotonic()
        executor.reconcile()  # returns while the task still runs: the loop looks again
        assert executor.children == {long}
        assert time.monotonic() - started < 30
    finally:
        executor.close()
        os.waitpid(long, 0)
