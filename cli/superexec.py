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

Only our own packages (the app) are imported per task, from the FAB, as Flower does; torch,
numpy, scikit-learn and flwr come warm. Other task types go to Flower's subprocess executor.

This module relies on Flower internals (`run_superexec`'s executor factory, the executor
protocol, `run_clientapp`), which the flwr 1.39 pin keeps stable;
tests/test_superexec.py fails loudly if they move.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import traceback

from flwr.supercore.cli import flower_superexec  # the `flower-superexec` entry point
from flwr.supercore.constant import TaskType
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import run_clientapp

from fedq import trace

# The ClientApp's module (pyproject.toml, [tool.flwr.app.components]) and the app's own
# top-level packages, which tasks import from the FAB (tests/test_superexec.py checks both).
APP_MODULE = "client.client_app"
APP_PACKAGES = frozenset({"client", "fedq", "proto", "quant", "server", "strategies", "monitor"})
ADDRESS_FLAG = "--runtime-api-address"
# The module whose `get_executor` `run_superexec` calls to build its executor.
SUPEREXEC_MODULE = "flwr.supercore.superexec.run_superexec"
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


class WarmForkExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that ClientApp tasks run in forked children."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child that runs the ClientApp task described by ``spec``."""
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        trace.mark("superexec-fork", task=spec.task_id)
        pid = os.fork()
        if pid == 0:  # the child: never returns
            # Not the loop's: its Flower signal handlers would close the loop's connection
            # and signal the siblings. run_clientapp installs the task's own.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.children.clear()
            _run_task(spec)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that finished (called once per SuperExec loop)."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)

    def close(self) -> None:
        """Stop the children still running (SuperExec is shutting down)."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


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

    SIGTERM and SIGINT end every loop (and this process, with code 0).
    """
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
