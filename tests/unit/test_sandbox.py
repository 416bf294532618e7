"""The sandbox stops runaway programs, keeps secrets out of their environment and never hangs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from training_tasks.sandbox.runner import ResourceLimits, SandboxResult, allowed_env, run_sandboxed

LIMITS = ResourceLimits(memory_mb=1024, file_size_mb=16)


def run_script(
    tmp_path: Path,
    source: str,
    *,
    timeout_s: float = 20.0,
    limits: ResourceLimits = LIMITS,
    **kw: Any,
) -> SandboxResult:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return run_sandboxed(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=kw.pop("env", allowed_env()),
        timeout_s=timeout_s,
        limits=limits,
        **kw,
    )


def leftovers(marker: str) -> list[str]:
    """Processes (zombies aside) whose command line holds `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(
            proc.info["cmdline"] or []
        ):
            found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])}")
    return found


def wait_until_gone(marker: str, timeout_s: float = 2.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := leftovers(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def spawn_grandchild(marker: str) -> str:
    """Script lines that start a 60 s sleeper with `marker` in its command line."""
    return (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "print('started', flush=True)\n"
    )


def test_a_timeout_kills_the_script_and_its_grandchild(tmp_path: Path) -> None:
    marker = f"grandchild-{uuid.uuid4()}"
    result = run_script(tmp_path, spawn_grandchild(marker) + "time.sleep(60)\n", timeout_s=1.0)

    assert result.timed_out
    assert result.reason() == "killed after 1 s timeout"
    assert result.elapsed_s < 4.0
    assert wait_until_gone(marker) == []
    assert wait_until_gone(str(tmp_path)) == []


def test_a_grandchild_holding_stdout_open_does_not_keep_the_run_waiting(tmp_path: Path) -> None:
    marker = f"grandchild-{uuid.uuid4()}"
    lines: list[str] = []
    started = time.monotonic()
    result = run_script(tmp_path, spawn_grandchild(marker) + "print('bye')\n", on_line=lines.append)

    assert time.monotonic() - started < 3.0
    assert result.ok, result.reason()
    assert lines[-1] == "bye"
    assert wait_until_gone(marker) == []


def test_the_environment_holds_no_database_redis_or_secret_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "DATABASE_URL": "postgresql://u:p@db/x",
        "REDIS_URL": "redis://r:6379/0",
        "AWS_SECRET_ACCESS_KEY": "s",
        "SIGNING_KEY": "k",
        "GITHUB_TOKEN": "t",
        "PGPASSWORD": "p",
        "ACME_SCADA_URL": "postgresql://scada/x",
        "ML_MASTER_KEYS": "k1:AAAA",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    lines: list[str] = []

    result = run_script(
        tmp_path, "import json, os; print(json.dumps(dict(os.environ)))", on_line=lines.append
    )

    seen = json.loads(lines[0])
    assert result.ok
    assert not set(secrets) & set(seen)
    assert seen["OMP_NUM_THREADS"] == "2"
    assert "PATH" in seen


@pytest.mark.parametrize(
    "name",
    [
        *("DATABASE_URL", "ML_MASTER_KEYS", "SIGNING_KEY", "ACME_SCADA_URL", "PGPASSWORD"),
        *("BROKER_URL", "MODEL_STORE_URL", "AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL"),
    ],
)
def test_passing_a_secret_on_purpose_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        allowed_env({name: "x"})


def test_a_memory_bomb_dies_and_the_reason_mentions_memory(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        "blocks = [bytearray(64 << 20) for _ in range(64)]",
        limits=ResourceLimits(memory_mb=512),
    )

    assert not result.ok
    assert result.reason() == "hit the memory limit of 512 MB — exited with code 1: MemoryError"


def test_a_program_killed_by_sigkill_is_reported_as_a_likely_memory_kill(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")

    assert result.signal == 9
    assert result.reason() == "killed by SIGKILL — most likely the memory limit of 1024 MB"


def test_a_huge_file_writer_is_stopped_at_the_file_size_limit(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        with open("big.bin", "wb") as out:
            for _ in range(100):
                out.write(b"x" * (1 << 20))
        """,
        limits=ResourceLimits(file_size_mb=2),
    )

    assert not result.ok
    assert "file size limit of 2 MB" in result.reason()
    assert (tmp_path / "big.bin").stat().st_size <= 2 << 20


def test_cancel_stops_a_running_program_within_a_second(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()

    marker = f"grandchild-{uuid.uuid4()}"
    result = run_script(tmp_path, spawn_grandchild(marker) + "time.sleep(60)\n", cancel=cancel)

    assert result.cancelled
    assert result.elapsed_s < 1.5
    assert result.reason().startswith("cancelled after")
    assert wait_until_gone(marker) == []


def test_a_failing_program_is_explained_by_its_last_error_line(tmp_path: Path) -> None:
    result = run_script(tmp_path, "raise SystemExit('the sensor table is empty')")

    assert result.returncode == 1
    assert result.reason() == "exited with code 1: the sensor table is empty"


def test_a_missing_program_is_reported_not_raised(tmp_path: Path) -> None:
    result = run_sandboxed(
        ["no-such-program-here"], cwd=tmp_path, env=allowed_env(), timeout_s=5, limits=LIMITS
    )

    assert result.returncode == 127
    assert "cannot run 'no-such-program-here'" in result.reason()


def test_lines_reach_the_callback_and_the_log_holds_stdout_and_stderr(tmp_path: Path) -> None:
    lines: list[str] = []
    log = tmp_path / "train.log"

    result = run_script(
        tmp_path,
        "import sys\nprint('one')\nprint('warn', file=sys.stderr)\nprint('two')",
        on_line=lines.append,
        log_path=log,
    )

    assert result.ok
    assert lines == ["one", "two"]
    text = log.read_text()
    assert {"one", "two", "warn"} <= set(text.splitlines())
    assert result.stderr_tail == ("warn",)


def test_the_log_stays_bounded_and_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "train.log"

    run_script(
        tmp_path,
        "for i in range(200_000): print('line', i)",
        log_path=log,
        max_log_mb=0.1,
    )

    text = log.read_text()
    assert len(text) < 120_000
    assert "log size limit reached" in text
    assert "line 199999" in text


def test_two_runs_in_parallel_threads_each_get_their_own_result(tmp_path: Path) -> None:
    results: dict[int, SandboxResult] = {}

    def work(code: int) -> None:
        folder = tmp_path / str(code)
        folder.mkdir()
        results[code] = run_script(
            folder, f"import time; time.sleep(0.3); raise SystemExit({code})"
        )

    threads = [threading.Thread(target=work, args=(code,)) for code in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {code: r.returncode for code, r in results.items()} == {3: 3, 4: 4}


def test_a_program_that_burns_its_cpu_time_limit_is_stopped(tmp_path: Path) -> None:
    result = run_script(tmp_path, "while True: pass", limits=ResourceLimits(cpu_s=1))

    assert result.reason().startswith("stopped by SIGXCPU")
    assert result.cpu_s > 0.9


def test_the_sandbox_reports_cost_of_a_finished_run(tmp_path: Path) -> None:
    result = run_script(
        tmp_path, "blob = bytearray(200 << 20); blob[::4096] = b'x' * len(blob[::4096])"
    )

    assert result.ok
    assert result.peak_rss_mb > 200
    assert result.reason().startswith("finished in")


def test_without_network_allowed_a_program_cannot_open_a_socket(tmp_path: Path) -> None:
    result = run_script(tmp_path, "import socket; socket.socket()")

    assert result.reason().startswith("tried to use the network, which training scripts may not")
    assert {"net", "seccomp"} & result.isolation


def test_with_network_allowed_a_program_may_open_sockets(tmp_path: Path) -> None:
    result = run_script(
        tmp_path, "import socket; socket.socket().close()", limits=ResourceLimits(network=True)
    )

    assert result.ok, result.reason()
    assert not {"net", "seccomp"} & result.isolation


def test_where_the_host_allows_the_program_is_pid_2_of_its_own_namespace(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_script(
        tmp_path,
        "import os; print(os.getpid(), os.listdir('/proc').count('1'))",
        on_line=lines.append,
    )

    if "pid" not in result.isolation:
        pytest.skip(f"this host allows no PID namespace (isolation: {sorted(result.isolation)})")
    assert result.ok and lines == ["2 1"]


# Runs run_sandboxed where unshare() fails, as in Docker's default seccomp profile.
WITHOUT_NAMESPACES = """
import ctypes, json, logging, sys, time
from pathlib import Path
from training_tasks.sandbox import launcher as io
from training_tasks.sandbox.runner import ResourceLimits, allowed_env, run_sandboxed

logging.basicConfig(format="%(levelname)s %(message)s")
program = [(0x20, 0, 0, 0), (0x15, 0, 1, int(sys.argv[1])), (0x06, 0, 0, 0x50001), (0x06, 0, 0, 0x7FFF0000)]
filters = (io._SockFilter * 4)(*(io._SockFilter(*line) for line in program))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)
assert libc.prctl(22, 2, ctypes.byref(io._SockFprog(4, filters)), 0, 0) == 0
folder = Path(sys.argv[2])
out = {}
for name in ("network", "grandchild"):
    script = folder / f"{name}.py"
    started = time.monotonic()
    result = run_sandboxed([sys.executable, str(script)], cwd=folder, env=allowed_env(),
                           timeout_s=10, limits=ResourceLimits(memory_mb=1024))
    out[name] = [result.reason(), sorted(result.isolation), time.monotonic() - started]
print(json.dumps(out))
"""
UNSHARE_SYSCALL = {"x86_64": 272, "aarch64": 97}


@pytest.mark.skipif(os.uname().machine not in UNSHARE_SYSCALL, reason="needs x86_64 or aarch64")
def test_without_namespaces_sockets_stay_shut_leftovers_die_and_a_warning_says_so_once(
    tmp_path: Path,
) -> None:
    marker = f"grandchild-{uuid.uuid4()}"
    (tmp_path / "network.py").write_text(
        "import socket; socket.create_connection(('127.0.0.1', 9))"
    )
    (tmp_path / "grandchild.py").write_text(
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n"
        "    os._exit(0)\n"
    )
    harness = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_NAMESPACES,
            str(UNSHARE_SYSCALL[os.uname().machine]),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).parents[2],
    )

    out = json.loads(harness.stdout)
    network, network_isolation, _ = out["network"]
    assert network.startswith("tried to use the network") and "seccomp" in network_isolation
    assert "pid" not in network_isolation
    _, _, grandchild_s = out["grandchild"]
    assert grandchild_s < 3.0 and wait_until_gone(marker) == []
    warnings = [line for line in harness.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 3, harness.stderr  # /proc, read-only files and /tmp, once each
    assert any("worker's environment" in line for line in warnings)
    assert any("share the host's /tmp" in line for line in warnings)
