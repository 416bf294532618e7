"""Finding and killing every process below a given one, from one scan of /proc at a time.

Used by the worker (to count and stop a run's processes) and by the launcher (to kill what a
program leaves where there is no PID namespace), so it imports only the standard library.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def processes_below(root: int, *, zombies: bool = False) -> list[int]:
    """Descendants of `root`, parents first, from one scan of /proc; zombies only if asked."""
    children: dict[int, list[int]] = {}
    dead = set()
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
            except OSError:
                continue  # it exited meanwhile
            if fields[0] == b"Z":
                dead.add(int(entry.name))
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            todo.append(child)
            if zombies or child not in dead:
                found.append(child)
    return found


def kill_processes_below(root: int, *, rounds: int = 100) -> None:
    """SIGKILL every descendant of `root`, scanning again until none is left, zombies included.

    A scan lists /proc first and reads each process after, so a child forked in between is
    missed while its parent may already read as a zombie: only a scan that finds nothing at all
    shows that nothing is left. Zombies go once their parent, or `root`, reaps them.
    """
    for _ in range(rounds):
        if root == os.getpid():
            _reap_zombies()
        found = processes_below(root, zombies=True)
        if not found:
            return
        family = {root, *found}
        for pid in found:
            _kill_if_child_of(pid, family)
        time.sleep(0.005)


def _reap_zombies() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _kill_if_child_of(pid: int, parents: set[int]) -> None:
    """SIGKILL `pid` through a pidfd, after checking that the pid was not reused meanwhile."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone already
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            parent = int(stat.read().rpartition(b")")[2].split()[1])
        if parent in parents:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)
