"""What the ``multiprocessing`` pool's parent and its workers say to each other, and the framing.

Every message is one pickled record below, framed by its length (8 bytes, big-endian), on a Unix
socket pair. The two ends behave differently, and that is the point:

- The worker's end blocks: a worker has nothing else to do while it reads a batch or writes its
  results.
- The parent's end never blocks (:class:`Channel`): what the manager sends is queued and written
  as the socket accepts it, what arrives is read as it comes. So the manager cannot wait on a
  worker's pipe while that worker waits on it (a big batch going out while big results come
  back), and one slow or stopped worker never holds up the others or the deadlines.
"""

from __future__ import annotations

import enum
import pickle
import socket
import struct
from collections import deque
from typing import Any, NamedTuple

from ... import failures
from ...failures import TaskFailure
from ...graph.shared import ShareOwner
from ...worker.transfer import dumps_work

__all__ = [
    "Channel",
    "JobResult",
    "JobStatus",
    "Preloaded",
    "ResultWindow",
    "RunBatch",
    "StartFailed",
    "Stop",
    "Unloadable",
    "BatchWork",
    "recv_message",
    "send_message",
]

_HEADER = struct.Struct("!Q")
#: below this a message is copied behind its header, so it goes out in one write
_COALESCE_BYTES = 64 * 1024


class JobStatus(enum.IntEnum):
    """How a job ended in the worker; says what :attr:`JobResult.data` holds."""

    #: the task ran; data is its pickled value
    OK = 0
    #: a task of the unit raised; data is a pickled TaskFailure
    FAILED = 1
    #: the batch could not be unpickled in the worker (e.g. a module it cannot import); data is
    #: a pickled :class:`Unloadable`. Distinct from FAILED: no task ran, and the worker cannot
    #: tell which task of the batch it could not load
    UNLOADABLE = 2


# -- parent -> worker -------------------------------------------------------------------------


class BatchWork(NamedTuple):
    """The work of a :class:`RunBatch`'s jobs, what its payload pickles: one record per batch,
    not per job (a record per job would cost the manager a Python-level reduction per job;
    pickling is its hot path)."""

    #: the WorkUnit of each job, in the batch's order
    units: list[Any]
    #: the inputs of each job (its dependencies' values by key), in the same order
    inputs: list[Any]


def pickle_work(jobs: list[Any], owner: ShareOwner) -> bytes:
    """The payload of a batch of jobs (Shared handles of ``owner`` only: see ``dumps_work``)."""
    return dumps_work(BatchWork([job.unit for job in jobs], [job.inputs for job in jobs]), owner)


class RunBatch(NamedTuple):
    """Run these jobs in order; ``payload`` pickles their :class:`BatchWork` (pickled apart from
    the message: see ``MultiprocessingBackend._pickle_batch``)."""

    job_ids: list[int]
    payload: bytes


class Stop(NamedTuple):
    """Finish the jobs already sent, then exit."""


# -- worker -> parent -------------------------------------------------------------------------


class JobResult(NamedTuple):
    job_id: int
    status: JobStatus
    data: Any
    started: float  # epoch seconds
    walls: list[float]  # one per task that ran, the failed one last
    growth_mb: list[float] | None  # loop testing only


class Unloadable(NamedTuple):
    """Why a worker could not unpickle a batch: what the unpickling raised (made portable) and
    its traceback text. The parent names each task of the batch in the error, which says what
    a dask worker says of a task it cannot load."""

    exception: BaseException
    traceback_text: str

    def failure(self, key: str, name: str) -> TaskFailure:
        error = failures.unimportable_task(name, self.exception)
        return TaskFailure(key, name, error, self.traceback_text)


class ResultWindow(NamedTuple):
    """Results of the jobs finished since the last window, with the CPU seconds and peak memory
    the worker used over that window."""

    results: list[JobResult]
    cpu_seconds: float
    peak_rss_mb: float


class Preloaded(NamedTuple):
    """The worker imported the ``preload`` modules (sent only when there are some), or could not:
    then ``failure`` names the module and its error, and the worker exits."""

    failure: str | None


class StartFailed(NamedTuple):
    """The worker could not set itself up (profiler, log file...); it exits after sending this."""

    traceback_text: str


# -- the worker's end: blocking ---------------------------------------------------------------


def send_message(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) < _COALESCE_BYTES:
        sock.sendall(_HEADER.pack(len(data)) + data)
    else:
        sock.sendall(_HEADER.pack(len(data)))
        sock.sendall(data)


def recv_message(sock: socket.socket) -> Any:
    """The next message; None when the parent has closed its end."""
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _HEADER.unpack(header)[0])
    return None if body is None else pickle.loads(body)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return buffer


# -- the parent's end: never blocks -----------------------------------------------------------


class Channel:
    """The parent's non-blocking end of one worker's socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.eof = False  # the worker's end is closed (or broken): nothing more will come
        self._out: deque[memoryview] = deque()
        self._header = bytearray(_HEADER.size)
        self._body: bytearray | None = None  # the message being read, once its size is known
        self._got = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def sending(self) -> bool:
        """Whether some of what was queued is not written yet (wait for the socket to drain)."""
        return bool(self._out)

    def send(self, message: Any) -> None:
        """Queue ``message`` and write what the socket takes now."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        header = _HEADER.pack(len(data))
        if len(data) < _COALESCE_BYTES:
            self._out.append(memoryview(header + data))
        else:
            self._out.extend((memoryview(header), memoryview(data)))
        self.flush()

    def flush(self) -> None:
        """Write queued bytes until the socket is full. A broken socket drops them: the worker
        is gone, and its sentinel accounts for its jobs."""
        out = self._out
        while out:
            view = out[0]
            try:
                count = self.sock.send(view)
            except BlockingIOError:
                return
            except OSError:
                out.clear()
                return
            if count < len(view):
                out[0] = view[count:]
                return
            out.popleft()

    def receive(self) -> list[Any]:
        """The messages that have arrived in full (read until the socket is empty)."""
        messages = []
        while not self.eof:
            body = self._body
            target = memoryview(self._header if body is None else body)[self._got :]
            try:
                count = self.sock.recv_into(target) if len(target) else 0
            except BlockingIOError:
                break
            except OSError:
                count = -1
            if count <= 0 and len(target):
                self.eof = True
                break
            self._got += count
            if self._got < (len(self._header) if body is None else len(body)):
                continue
            self._got = 0
            if body is None:
                self._body = bytearray(_HEADER.unpack(self._header)[0])
            else:
                self._body = None
                messages.append(pickle.loads(body))
        return messages

    def close(self) -> None:
        self._out.clear()
        self.sock.close()
