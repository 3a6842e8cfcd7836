"""How many callers one sidecar process can hold at once, and what happens past that.

An LLM gateway's load is open streams: each chat a user watches scroll holds two descriptors here for tens
of seconds (the caller's connection and the upstream one). A process may open as many descriptors as its
soft ``RLIMIT_NOFILE`` allows - 1024 under systemd's default and under container runtimes that stopped
raising it (containerd #8924, moby #45534: soft 1024, hard 524288), which programs are expected to raise
themselves, as Go's runtime does and nginx's ``worker_rlimit_nofile``. So at start each process raises its
soft limit to the hard one (``max_open_files`` caps it) - ``raise_open_files``.

Past the limit a server does not degrade, it collapses: ``accept`` and ``connect`` fail, streams already open
die with the new ones, health probes fail and every failure looks like LiteLLM being unreachable. So the
sidecar stops short of it (``connection_bound``): it keeps a reserve of descriptors (the listening socket,
logs, the admin client, idle pooled connections, health probes) and holds at most
``(limit - reserve) / 2`` caller connections. A request on a connection past that bound is answered at once
with ``503`` in OpenAI's error shape and ``Retry-After: 1`` (``inbound.py``): the official clients retry a
503 after the time it says, a refused connection would look like the sidecar being down. ``/healthz``,
``/readyz`` and ``/sidecar/metrics`` are always answered - a busy pod is not a dead one. A connect that fails
for want of local descriptors or memory anyway is ``local_exhausted``, not ``unreachable``
(``http1.LocalExhausted``).
"""

from __future__ import annotations

import errno
import resource
from dataclasses import dataclass

# Descriptors besides callers' and their upstream connections: the listening socket, stdio and logs, the
# admin client's pool (bounded by ``admin_lookup_concurrency`` and a few shared views), health probes and
# the connections being answered 503.
BASE_RESERVE = 64
MAX_IDLE = 512  # idle pooled upstream connections at most (fewer under a low limit: ``idle_bound``)
# What a failing ``connect``/``accept`` says when the sidecar, not LiteLLM, is out of something.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
LOW_STREAMS = 1000  # fewer concurrent streams than this: a start-up warning
# What a caller is told past the bound, or when a connect fails for want of local resources (503).
AT_CAPACITY = "the sidecar is at its limit of open connections; retry shortly"


@dataclass(frozen=True, slots=True)
class OpenFiles:
    soft: int  # the limit in force now
    hard: int
    was: int  # the soft limit before ``raise_open_files``


def _finite(value: int) -> int:
    return 1 << 20 if value == resource.RLIM_INFINITY else value


def raise_open_files(cap: int | None = None) -> OpenFiles:
    """Raise this process's soft descriptor limit to its hard limit, or to ``cap`` if lower (never lower
    it). A limit the kernel refuses (``nr_open``) is left as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _finite(hard) if cap is None else min(cap, _finite(hard))
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return OpenFiles(soft, _finite(hard), soft)
        return OpenFiles(target, _finite(hard), soft)
    return OpenFiles(soft, _finite(hard), soft)


def open_files_now() -> int:
    return _finite(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def idle_bound(open_files: int) -> int:
    """How many idle upstream connections the pool may keep under this limit."""
    return max(8, min(MAX_IDLE, open_files // 8))


def connection_bound(open_files: int, setting: int | None = None) -> int:
    """Caller connections one process holds at most: ``setting`` if given (never past the descriptors),
    else what the descriptors allow with the reserve kept."""
    allowed = max(1, (open_files - BASE_RESERVE - idle_bound(open_files)) // 2)
    return allowed if setting is None else max(1, min(setting, allowed))
