"""CARS's ``orchestrix`` cluster mode: CARS's cluster API delegated to an orchestrix Orchestrator.

CARS builds a cluster per pipeline step (and one more after a reset), through
``AbstractCluster(conf, out_dir, log_dir, launch_worker, data_to_propagate)``: here each is one
:class:`~orchestrix.Orchestrator`. What CARS does around a task, orchestrix does itself:

- CARS wraps every task in its profiler (a thread per task, ~200 ms each) and, on its process
  clusters, in a worker-logging wrapper that adds a file handler per task. Here the task is the
  application's function itself, named after it: orchestrix times every task, writes worker
  logs once per worker and profiles on request (``profiling``). In sequential mode this also
  keeps CARS's handlers off the caller's logger.
- CARS's ``task_timeout`` (time since the last finished task) is orchestrix's stall watchdog:
  it restarts the stalled workers once, then the run raises StallError, a TimeoutError, which
  CARS's orchestrator catches to reset the cluster and retry the tiles not yet computed.
- A failed task raises its TaskError from ``future_iterator`` (CARS handed dependants the string
  "Failed depending task"), and closes the orchestrator first: CARS's ``with`` block skips its
  cleanup when the breakpoint of its exit raises.

Every orchestrator of one CARS run writes to one ``out_dir`` (CARS's log directory's
``orchestrix/`` unless the section sets ``out_dir``) and keeps the tasks of the ones before it in
the journal, so that ``python -m orchestrix status`` shows the whole run.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from cars.orchestrator.cluster import abstract_cluster

from ..config import Config
from ..graph.shared import Shared
from ..graph.tasks import Delayed, TaskFunction
from ..orchestrator import Orchestrator
from .settings import MODE, check_cars_conf, orchestrix_config

__all__ = ["OrchestrixCluster"]

#: the directory, under CARS's log directory, where the orchestrators of a run write
OUT_DIR_NAME = "orchestrix"
#: modules each worker imports before its first task: CARS's import takes 6-13 s, and in a dask
#: worker it must happen in the main thread (dask_jobqueue, which CARS imports, sets a signal
#: handler), not in the thread that unpickles a task
PRELOAD = ("cars",)
_SHARED_KEY = "orchestrix_shared"

# The out_dirs this process has run an orchestrator in: the first run there starts a new
# journal, the next ones (later steps of the same CARS run, a reset) keep its tasks.
_journals_started: set[str] = set()
_journals_lock = threading.Lock()


@abstract_cluster.AbstractCluster.register_subclass(MODE)
class OrchestrixCluster(abstract_cluster.AbstractCluster):
    """CARS's cluster API on an orchestrix Orchestrator (see the module's docstring)."""

    def __init__(
        self,
        conf_cluster: dict[str, Any] | None,
        out_dir: str | None,
        log_dir: str,
        launch_worker: bool = True,
        data_to_propagate: Any = None,
    ) -> None:
        super().__init__(
            conf_cluster, out_dir, log_dir, launch_worker=launch_worker,
            data_to_propagate=data_to_propagate,
        )  # fmt: skip
        self.launch_worker = launch_worker
        self.orchestrator: Orchestrator | None = None
        # what a reset hands the next cluster: the handles scattered here and their values
        propagated = dict(data_to_propagate or {})
        self._shared: list[tuple[Shared, Any]] = propagated.get(_SHARED_KEY, [])
        self.data_to_propagate = {**propagated, _SHARED_KEY: self._shared}
        if launch_worker:
            self.orchestrator = Orchestrator(self._config(log_dir))
            for handle, value in self._shared:
                # the tiles CARS retries after a reset hold the old cluster's handles
                handle.rebind(self.orchestrator.scatter(value))

    # -- configuration ----------------------------------------------------------------------

    def check_conf(self, conf: dict[str, Any] | None) -> dict[str, Any]:
        return check_cars_conf(conf)

    def _config(self, log_dir: str) -> Config:
        conf = dict(self.checked_conf_cluster)
        out_dir = os.path.abspath(conf.pop("out_dir", None) or os.path.join(log_dir, OUT_DIR_NAME))
        preload = tuple(conf.pop("preload", ()))
        overrides: dict[str, Any] = {"out_dir": out_dir, "keep_journal": _keeps_journal(out_dir)}
        if conf["backend"] != "sequential":  # the modes with workers
            overrides["preload"] = PRELOAD + tuple(m for m in preload if m not in PRELOAD)
        return orchestrix_config(conf, **overrides)

    # -- tasks ------------------------------------------------------------------------------

    def get_delayed_type(self) -> type:
        return Delayed

    def create_task_wrapped(self, func: Callable[..., Any], nout: int = 1) -> Callable[..., Any]:
        def build(*args: Any, **kwargs: Any) -> Any:
            function, name = func, None
            if func is abstract_cluster.cars_profile_wrapper:  # unwrap: see the docstring
                function, name = kwargs.pop("func"), kwargs.pop("func_name")
            return _task(function, nout, name)(*args, **kwargs)

        return build

    def start_tasks(self, task_list: Iterable[Any]) -> list[Any]:
        # The run starts when CARS iterates (future_iterator follows at once): one graph for
        # all the tiles, fused and scheduled together.
        return list(task_list)

    def future_iterator(
        self, future_list: list[Any], timeout: float | None = None
    ) -> Iterator[Any]:
        # ``timeout`` is CARS's task_timeout, the stall watchdog's limit in orchestrix's config.
        try:
            for _index, value in self._open().as_completed(list(future_list)):
                yield value
        except (TimeoutError, GeneratorExit):
            raise  # a stall: CARS resets the cluster (cleanup, then a new one) and retries
        except BaseException:
            # CARS catches nothing else, and its ``with`` block's exit, whose breakpoint runs
            # the pipeline's last tasks, skips its cleanup when they raise: the workers would
            # outlive the run. Closed here; CARS's cleanup, if it comes, closes nothing twice.
            self.cleanup()
            raise

    def scatter(self, data: Any, broadcast: bool = True) -> Any:
        handle = self._open().scatter(data, broadcast=broadcast)
        self._shared.append((handle, data))
        return handle

    def cleanup(self, keep_shared_dir: bool = False, **_kwargs: Any) -> None:
        if self.orchestrator is not None:
            self.orchestrator.close()
        if not keep_shared_dir:
            self._shared.clear()  # no next cluster will scatter them again

    def _open(self) -> Orchestrator:
        if self.orchestrator is None:
            raise RuntimeError(
                "this CARS cluster was built with launch_worker=False: it checks a "
                "configuration and runs no task"
            )
        return self.orchestrator


@functools.lru_cache(maxsize=1024)
def _task(function: Callable[..., Any], nout: int, name: str | None) -> TaskFunction:
    """One TaskFunction per CARS function (its signature is read once). ``pure=False``: a CARS
    task is a call (it may write files), each one runs, as in CARS's own clusters."""
    return TaskFunction(function, nout=nout, name=name, pure=False)


def _keeps_journal(out_dir: str) -> bool:
    with _journals_lock:
        if out_dir in _journals_started:
            return True
        _journals_started.add(out_dir)
        return False
