"""`fedq-superexec`: Flower's SuperExec, with every ClientApp forked from a warm process.

Flower 1.39 runs each message in a fresh `flwr-clientapp` process, which spends seconds
importing Python, torch and flwr before the ClientApp sees the message. This program is
Flower's own `flower-superexec` — same arguments, same main loop (`run_superexec`), same
task protocol with the SuperNode's Runtime API — except for one thing: it imports the heavy
libraries once, and for each ClientApp task it forks a child that runs Flower's own
`run_clientapp` (pull the message and Context, load the app from the run's FAB, run it,
push the reply and the Context state back). So Flower's semantics hold exactly: the Context
state each task returns (error-feedback residuals, LoDAdaC's agent state) reaches the
SuperNode as before, and a task that raises is reported as an error reply, as Flower does.

Use it beside a SuperNode started with `--isolation process` (Flower's layout for a separate
SuperExec), e.g.::

    flower-supernode --isolation process --port 9094 ...
    fedq-superexec --runtime-api-address 127.0.0.1:9094 --insecure

Torch, numpy, scikit-learn and flwr come warm. The app itself (the run's FAB, installed by
its first task as Flower does) is imported once per FAB hash too, in the loop, once that FAB
is installed on disk: each task still pulls and checks the FAB, and Flower's loader then finds
the app's modules imported from the very directory it would load them from. A task whose
FAB is another (or not installed yet, or with runtime dependency installation on) gets no
warm app and imports its own, as before. Other task types go to Flower's subprocess executor.

Two more things spare the two cores a demo runs on, without changing what a task does:
a task whose FAB bytes Flower's install already accepted in an earlier task of the loop
gets the installed directory without Flower extracting and checking the archive again
(`AcceptedFabs`), and the loop skips its looks for a task while none can appear: while
its task runs, and in the first 2.5 s after, when the SuperNode sleeps (`PollPacing`).

This module relies on Flower internals (`run_superexec`'s executor factory, the executor
protocol, `run_clientapp` and the loader it looks up, the FAB install layout), which the flwr
1.39 pin keeps stable;
tests/test_superexec.py fails loudly if they move.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import logging
import math
import os
import re
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import flwr.supernode.runtime.run_clientapp as run_clientapp_module
from flwr.common.config import get_project_config, get_project_dir
from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION
from flwr.supercore.cli import flower_superexec  # the `flower-superexec` entry point
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler as flower_exit_handlers
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supercore.utils import get_flwr_home
from flwr.supernode.runtime.run_clientapp import run_clientapp

from fedq import trace

# The ClientApp's module (pyproject.toml, [tool.flwr.app.components]) and the app's own
# top-level packages, which tasks import from the FAB (tests/test_superexec.py checks both).
APP_MODULE = "client.client_app"
APP_PACKAGES = frozenset({"client", "fedq", "proto", "quant", "server", "strategies", "monitor"})
ADDRESS_FLAG = "--runtime-api-address"
# The module whose `get_executor` `run_superexec` calls to build its executor.
SUPEREXEC_MODULE = "flwr.supercore.superexec.run_superexec"
_SHA256_HEX = re.compile(rb"[0-9a-f]{64}")
_REAP_SECONDS = 0.02  # how often a running task is checked while the loop waits for it
# Libraries every fedq ClientApp imports, slow to import, some of them lazily on first use.
# Importing them starts a few threads (OpenBLAS's pool, pyarrow's allocator); both libraries
# reset them in a forked child (tests/test_superexec.py runs torch and numpy in one).
WARM_MODULES: tuple[str, ...] = (
    "numpy",
    "torch",
    # torch imports its compiler stack (~3.5 s) when the first optimizer is built.
    "torch._dynamo",
    "torch.optim",
    "sklearn.datasets",
    "sklearn.model_selection",
    "datasets",
    "flwr_datasets.partitioner",
    "google.protobuf",
    "flwr.app",
    "flwr.clientapp",
)


class WarmApp:
    """The ClientApp of one installed FAB, imported in this process so that forks inherit it.

    Flower installs a run's FAB under `$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash>`
    and loads the ClientApp from there with `load_app`, which imports the app's module only
    if it is not in `sys.modules` yet. Importing it here, from that same directory, spares
    every forked task the import (~0.3 s); `guard_loader` keeps it exact: a task loading
    another directory's app gets these modules forgotten first.

    Flower's install creates the directory first and copies the files into it after, and a
    task of another loop sharing FLWR_HOME may be doing so right now: a directory with any
    change in the last ``settle_seconds`` is not imported yet (a half-copied module kept
    here would reach every later task of its FAB).
    """

    def __init__(self, settle_seconds: float = 1.0) -> None:
        self.settle_seconds = settle_seconds
        self.app_dir: Path | None = None  # the installed FAB directory imported here
        self.fab_hash: str | None = None  # its FAB's hash
        self.broken: set[str] = set()  # FAB hashes whose app failed to import here

    def prepare(self, fab_hash: str | None) -> bool:
        """Have the app of FAB ``fab_hash`` imported here if it is installed; else none.

        Returns False when its directory changed too recently to be imported yet (then no
        app is warm; ask again later), True otherwise.
        """
        if fab_hash is not None and fab_hash == self.fab_hash:
            return True
        app_dir = None if fab_hash in self.broken else installed_app_dir(fab_hash)
        if app_dir == self.app_dir:
            return True
        self.forget()
        if app_dir is None:
            return True
        if _last_change(app_dir) > time.time() - self.settle_seconds:
            return False
        self.app_dir = app_dir
        try:
            components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
            module = str(components["clientapp"]).partition(":")[0]
            sys.path.insert(0, str(app_dir))
            importlib.import_module(module)
        except (Exception, SystemExit):  # each task imports it itself and reports the error
            self.broken.add(str(fab_hash))
            self.forget()
            return True
        self.fab_hash = fab_hash
        trace.mark("superexec-app-warm", app=app_dir.name)
        return True

    def forget(self) -> None:
        """Drop every module imported from the warm app's directory (a library the app
        pulled in stays imported), and the directory."""
        if self.app_dir is None:
            return
        for name, module in list(sys.modules.items()):
            if _is_under(module, self.app_dir):
                del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(self.app_dir))
        importlib.invalidate_caches()
        self.app_dir = self.fab_hash = None

    def guard_loader(self) -> None:
        """In a forked task: forget the warm app if the task's FAB is installed elsewhere.

        Wraps the loader factory `run_clientapp` looks up; the loader it returns compares the
        directory Flower is about to load from with the warm one before loading.
        """
        factory = run_clientapp_module.get_load_client_app_fn

        def guarded_factory(*args: object, **kwargs: object) -> Callable[[str, str, str], object]:
            load = factory(*args, **kwargs)

            def guarded_load(fab_id: str, fab_version: str, fab_hash: str) -> object:
                try:
                    directory = get_project_dir(fab_id, fab_version, fab_hash).absolute()
                    same = directory == self.app_dir
                except ValueError:  # a malformed FAB id: Flower's loader reports it
                    same = False
                if not same:
                    self.forget()
                return load(fab_id, fab_version, fab_hash)

            return guarded_load

        run_clientapp_module.get_load_client_app_fn = guarded_factory


class AcceptedFabs:
    """The FABs Flower's install accepted in this loop's tasks, so later tasks skip the redo.

    For every task, Flower's `run_clientapp` calls `install_from_fab(fab_bytes,
    skip_prompt=True)`: it hashes the bytes, extracts every file of the archive into a
    temporary directory, checks each against the FAB's manifest and validates its
    pyproject.toml, and then, finding the app's directory there already, returns it
    (0.1-0.25 s of CPU a task for fedq's app, four tasks at once on two cores). Its answer
    for bytes it accepted before is that same directory for as long as it exists, so a
    task whose FAB bytes (by SHA-256) Flower accepted in an earlier task of this loop gets
    that directory at once; any other call goes to Flower's install as it is. A task that
    ran Flower's install tells the loop through a pipe what it accepted (one line: the
    bytes' SHA-256 and the directory's absolute path, written whole or dropped), which
    `collect` reads before the next fork; a line that is not that is ignored.
    """

    def __init__(self) -> None:
        self.directories: dict[str, Path] = {}  # SHA-256 of accepted FAB bytes -> its install
        self._read_end, self._write_end = os.pipe()
        os.set_blocking(self._read_end, False)
        self._partial = b""

    def collect(self) -> None:
        """In the loop: take in what the finished tasks accepted."""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        for line in lines:
            digest, _, directory = line.partition(b" ")
            path = Path(os.fsdecode(directory))
            if _SHA256_HEX.fullmatch(digest) and path.is_absolute():
                self.directories[digest.decode()] = path

    def guard_install(self) -> None:
        """In a forked task: answer `install_from_fab` for accepted bytes; report new ones."""
        install = run_clientapp_module.install_from_fab
        os.close(self._read_end)
        # A report the loop cannot take now (a full pipe) is dropped, never waited for.
        os.set_blocking(self._write_end, False)

        def install_once(
            fab_file: Path | bytes, install_dir: Path | None = None, skip_prompt: bool = False
        ) -> Path:
            if not isinstance(fab_file, bytes) or install_dir is not None or not skip_prompt:
                return install(fab_file, install_dir, skip_prompt)
            digest = hashlib.sha256(fab_file).hexdigest()
            directory = self.directories.get(digest)
            if directory is not None and directory.is_dir():
                return directory
            directory = install(fab_file, install_dir, skip_prompt)
            report = digest.encode() + b" " + os.fsencode(Path(directory).absolute()) + b"\n"
            if len(report) <= select.PIPE_BUF:  # written whole or not at all
                with contextlib.suppress(OSError):  # the task goes on; later ones reinstall
                    os.write(self._write_end, report)
            return directory

        run_clientapp_module.install_from_fab = install_once


def installed_app_dir(fab_hash: str | None) -> Path | None:
    """Where Flower installed the FAB with SHA-256 ``fab_hash``, as an absolute path (None:
    not installed, or unknown). Absolute, as the files of the modules imported from it are,
    even when FLWR_HOME is relative."""
    if not fab_hash:
        return None
    apps = get_flwr_home() / APP_DIR
    matches = list(apps.glob(f"*.{fab_hash[:FAB_HASH_TRUNCATION]}")) if apps.is_dir() else []
    # Two installs with the same hash prefix: which one a task loads is not known here.
    return matches[0].absolute() if len(matches) == 1 and matches[0].is_dir() else None


def _last_change(directory: Path) -> float:
    """The latest status change (st_ctime, s since the epoch) of ``directory`` or anything in
    it: a file being written or copied, or its times being set, moves it to now."""
    latest = directory.stat().st_ctime
    for parent, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                latest = max(latest, os.stat(os.path.join(parent, name)).st_ctime)
        with contextlib.suppress(OSError):
            latest = max(latest, os.stat(parent).st_ctime)
    return latest


def _is_under(module: object, directory: Path) -> bool:
    """Whether ``module`` (a module or package) was imported from inside ``directory``."""
    try:
        paths = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or [])]
    except Exception:  # a module that makes attributes up on access (torch.classes)
        return False
    return any(isinstance(p, str) and Path(p).is_relative_to(directory) for p in paths)


@dataclass(frozen=True)
class PollPacing:
    """When the SuperExec loop's look for a new task (an HTTP request to the SuperNode's
    Runtime API, every 50 ms in `fedq demo`) cannot find one, and is skipped.

    A Flower 1.39 SuperNode handles one message at a time: it pulls a message, waits for
    its reply, sends it and pulls again; an empty pull makes it sleep 3 s (hard-coded).
    So no new task can appear while this loop's task runs, and after the task ends the
    next one normally appears a whole 3 s sleep later: the SuperNode's pull right after
    its reply finds the round still open. Only a message queued before the reply (a
    ServerApp that sends a node two at once) comes sooner, and then waits at most
    ``relaxed_seconds`` longer. All times in seconds.
    """

    busy_wait: float = 0.5  # longest wait for a running task inside one `reconcile`
    quiet_after_task: float = 2.5  # after a task ends: look every relaxed_seconds
    idle_after_task: float = 10.0  # no task for this long (or none yet): relaxed again
    relaxed_seconds: float = 0.25  # the slower looks' spacing

    def pause(self, since_last_task: float | None) -> float:
        """Seconds to wait before the next look, ``since_last_task`` s after a task ended
        (None: no task yet); 0 when the loop's own interval should decide."""
        if since_last_task is None or since_last_task >= self.idle_after_task:
            return self.relaxed_seconds
        if since_last_task < self.quiet_after_task:
            return min(self.relaxed_seconds, self.quiet_after_task - since_last_task)
        return 0.0


NO_PACING = PollPacing(
    busy_wait=0.0, quiet_after_task=0.0, idle_after_task=math.inf, relaxed_seconds=0.0
)
"""Look as often as Flower's loop does (its task poll interval), never wait for a task."""


class WarmForkExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that ClientApp tasks run in forked children,
    and the loop skips looks for tasks that cannot find one (`PollPacing`)."""

    def __init__(self, pacing: PollPacing | None = None) -> None:
        self.children: set[int] = set()
        self.app = WarmApp()
        self.pending_fab_hash: str | None = None  # of a task launched since the last warm-up
        self.pacing = PollPacing() if pacing is None else pacing
        self.accepted = AcceptedFabs()
        self.last_task_end: float | None = None  # time.monotonic() when a task last ended

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child that runs the ClientApp task described by ``spec``."""
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        # Dependencies installed at run time change what the app imports: no warm app then.
        fab_hash = None if spec.runtime_dependency_install else spec.fab_hash
        self.app.prepare(fab_hash)
        self.pending_fab_hash = fab_hash
        trace.mark("superexec-fork", task=spec.task_id)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _forget_the_loops_exit_handling()
            self.children.clear()
            self.app.guard_loader()
            self.accepted.guard_install()
            _run_task(spec)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that finished (called once per SuperExec loop, before it
        looks for a task), and hold the loop while a look could find nothing.

        While a task runs, wait up to ``pacing.busy_wait`` for it to end. Once none is left
        running, import the last task's app if its FAB is installed by now (the first task
        of a run installs it), so that the next task finds it warm; then pause as
        `PollPacing.pause` says.
        """
        deadline = time.monotonic() + self.pacing.busy_wait
        self._reap()
        while self.children and time.monotonic() < deadline:
            time.sleep(_REAP_SECONDS)
            self._reap()
        self.accepted.collect()
        if self.children:
            return
        if self.pending_fab_hash and self.app.prepare(self.pending_fab_hash):
            self.pending_fab_hash = None
        since = None if self.last_task_end is None else time.monotonic() - self.last_task_end
        if pause := self.pacing.pause(since):
            time.sleep(pause)

    def _reap(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)
            self.last_task_end = time.monotonic()

    def close(self) -> None:
        """Stop the children still running (SuperExec is shutting down)."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _forget_the_loops_exit_handling() -> None:
    """In a forked task: drop the exit handling the loop registered with Flower.

    The loop's signal handlers and exit handlers (close its Runtime API connection, stop
    its tasks) are the loop's, not the task's: a task running them on exit or on a signal
    would act on the loop's behalf. `run_clientapp` registers the task's own, as in a
    process of its own. The same for `atexit`: only what the task registers runs when it
    ends (and logging's flush, which a fresh process has from its start).
    """
    for signal_number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signal_number, signal.SIG_DFL)
    del flower_exit_handlers.registered_exit_handlers[:]
    atexit._clear()
    atexit.register(logging.shutdown)


def _run_task(spec: ExecutionSpec) -> None:
    """In the forked child: Flower's `run_clientapp` for ``spec``, then exit with its code."""
    code = 1
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
        code = 0
    except SystemExit as exc:  # run_clientapp always ends in flwr_exit
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # anything else: say what, as a process of its own would
        traceback.print_exc()
    finally:
        # What a process's normal end runs (atexit, as `_forget_the_loops_exit_handling`
        # left it), then an exit that skips the loop's own ends (threads, finalizers).
        atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def warm_up() -> None:
    """Import the libraries the app uses once, in the parent, before any task is forked.

    The app itself is imported too, to pull in every library it uses, and then forgotten:
    each task imports the app's own packages afresh from its run's FAB, as Flower does.
    """
    for name in (*WARM_MODULES, APP_MODULE):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for name in list(sys.modules):
        if name.split(".")[0] in APP_PACKAGES:
            del sys.modules[name]


def main() -> None:
    """`fedq-superexec`: `flower-superexec`'s arguments and loop, a warm forking executor.

    One fedq extension: `--runtime-api-address` may list several SuperNodes' addresses,
    comma-separated (`fedq demo` runs all its SuperNodes on one machine). The libraries are
    then imported once, and one forked SuperExec loop serves each address.
    """
    addresses = _runtime_addresses(sys.argv[1:])
    warm_up()
    trace.mark("superexec-ready", at_start=trace.process_start_time())
    if len(addresses) <= 1:
        _serve()
    loops: dict[int, str] = {}

    def stop(_signal: int, _frame: object) -> None:
        _stop_loops(loops)
        sys.exit(0)

    # Before the forks: a signal in between must not leave loops behind.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for address in addresses:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            sys.argv = [sys.argv[0], *_with_address(sys.argv[1:], address)]
            _serve()
        loops[pid] = address
    _supervise(loops)


def _serve() -> None:
    """Flower's SuperExec main loop with the warm executor; does not return."""
    executor = WarmForkExecutor()
    importlib.import_module(SUPEREXEC_MODULE).get_executor = lambda *args, **kwargs: executor
    try:
        flower_superexec()
    finally:
        executor.close()
    sys.exit(0)


def _supervise(loops: dict[int, str]) -> None:
    """Wait for the per-address loops; when one ends, end the others and exit with its code.

    SIGTERM and SIGINT end every loop (and this process, with code 0). A process that is not
    a loop (an orphan handed to this one, as to PID 1 in a container) is reaped and passed by.
    """
    pid, status = os.wait()
    while pid not in loops:
        pid, status = os.wait()
    code = os.waitstatus_to_exitcode(status)
    print(
        f"fedq-superexec: the loop for {loops.pop(pid)} ended (code {code}); stopping the others",
        file=sys.stderr,
    )
    _stop_loops(loops)
    sys.exit(code if code > 0 else 1)


def _stop_loops(loops: dict[int, str]) -> None:
    """SIGTERM every loop, then wait for each (no zombies left behind)."""
    for pid in loops:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in loops:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _runtime_addresses(argv: list[str]) -> list[str]:
    """The comma-separated addresses of `--runtime-api-address` (empty if not given)."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"{ADDRESS_FLAG}="):
            return arg.split("=", 1)[1].split(",")
        if arg == ADDRESS_FLAG and i + 1 < len(argv):
            return argv[i + 1].split(",")
    return []


def _with_address(argv: list[str], address: str) -> list[str]:
    """``argv`` with `--runtime-api-address` naming ``address`` alone."""
    result, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == ADDRESS_FLAG:
            skip = True
            continue
        if not arg.startswith(f"{ADDRESS_FLAG}="):
            result.append(arg)
    return [*result, ADDRESS_FLAG, address]


if __name__ == "__main__":
    main()
