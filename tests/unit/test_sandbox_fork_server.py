"""A fork server runs scripts as a fresh interpreter would, in the same sandbox, and never lets a
run's state reach the next; when it fails, runs go on without it."""

from __future__ import annotations

import json
import logging
import signal
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

from tests.unit.test_sandbox import leftovers, wait_until_gone
from tests.unit.test_train_stage import fake_script, run_train
from training_tasks.config.settings import read_fork_server
from training_tasks.errors import SettingsError
from training_tasks.sandbox import forkserver
from training_tasks.sandbox.runner import ResourceLimits, SandboxResult, allowed_env, run_sandboxed

LIMITS = ResourceLimits(memory_mb=2048, file_size_mb=16)


def run_forked(
    folder: Path, source: str, *args: str, timeout_s: float = 30.0, **kw: Any
) -> tuple[SandboxResult, list[str]]:
    """Run `source` as a script through the fork server; the result and its stdout lines."""
    script = folder / "script.py"
    script.write_text(textwrap.dedent(source))
    lines: list[str] = []
    result = run_sandboxed(
        [kw.pop("python", sys.executable), str(script), *args],
        cwd=folder,
        env=kw.pop("env", allowed_env()),
        timeout_s=timeout_s,
        limits=kw.pop("limits", LIMITS),
        on_line=lines.append,
        fork_server=kw.pop("fork_server", True),
        **kw,
    )
    return result, lines


def fork_servers(tag: str = "") -> list[psutil.Process]:
    """The live fork servers this test process started (with `tag` in their environment)."""
    found = []
    for child in psutil.Process().children():
        try:
            command, environ = " ".join(child.cmdline()), " ".join(child.environ().values())
            if "training_tasks.sandbox.zygote" in command and tag in environ:
                found.append(child)
        except psutil.Error:  # a zombie: one that ended and is not reaped yet
            continue
    return found


def test_a_script_runs_as_python_would_run_it(tmp_path: Path) -> None:
    result, lines = run_forked(
        tmp_path,
        """
        import json, os, sys
        print(json.dumps({
            "argv": sys.argv, "file": __file__, "name": __name__, "path0": sys.path[0],
            "cwd": os.getcwd(), "cmdline": open("/proc/self/cmdline").read().split("\\0")[:3],
            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        }))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """,
        "--flag",
    )

    seen = json.loads(lines[0])
    script = str(tmp_path / "script.py")
    assert result.forked and result.returncode == 3 and result.stderr_tail == ("to stderr",)
    assert seen["argv"] == [script, "--flag"] and seen["file"] == script
    assert seen["name"] == "__main__" and seen["path0"] == str(tmp_path)
    assert seen["cwd"] == str(tmp_path)
    assert seen["cmdline"] == [sys.executable, script, "--flag"]
    assert seen["fds"] == [0, 1, 2, 3]  # stdio and the listing itself: nothing inherited


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(tmp_path: Path) -> None:
    result, _ = run_forked(tmp_path, "def load():\n    raise KeyError('rpm')\nload()\n")

    assert result.forked and result.returncode == 1
    assert result.stderr_tail[0] == "Traceback (most recent call last):"
    assert result.stderr_tail[1].startswith(f'  File "{tmp_path / "script.py"}", line 3')
    assert result.reason() == "exited with code 1: KeyError: 'rpm'"


def test_a_forked_run_is_isolated_exactly_as_a_fresh_interpreter(tmp_path: Path) -> None:
    forked, _ = run_forked(tmp_path, "pass")
    fresh, _ = run_forked(tmp_path, "pass", fork_server=False)

    assert forked.forked and not fresh.forked
    assert forked.isolation == fresh.isolation


def test_nothing_a_run_changes_reaches_the_next_run(tmp_path: Path) -> None:
    source = """
    import json, os, sys, tempfile
    import numpy
    state = {
        "env": os.environ.get("LEFT_BEHIND"), "module": getattr(json, "left_behind", None),
        "tmp": os.listdir(tempfile.gettempdir()), "draw": numpy.random.random(),
    }
    print(json.dumps(state))
    os.environ["LEFT_BEHIND"] = "1"
    json.left_behind = 1
    open(os.path.join(tempfile.gettempdir(), "left-behind"), "w").close()
    numpy.random.seed(7)
    """
    first, first_lines = run_forked(tmp_path, source)
    second, second_lines = run_forked(tmp_path, source)

    one, two = json.loads(first_lines[0]), json.loads(second_lines[0])
    assert first.forked and second.forked
    assert two["env"] is None and two["module"] is None
    assert "left-behind" not in two["tmp"]
    assert two["draw"] != one["draw"]  # numpy's global generator is seeded afresh each run


def test_the_bundled_script_trains_the_same_model_forked_as_in_a_fresh_interpreter(
    tmp_path: Path,
) -> None:
    forked = run_train(tmp_path / "forked", fork_server=True)
    fresh = run_train(tmp_path / "fresh", fork_server=False)

    for name in ("model.txt", "model.onnx"):
        assert forked.model_path.with_name(name).read_bytes() == (
            fresh.model_path.with_name(name).read_bytes()
        )
    assert forked.metrics["auc"] == fresh.metrics["auc"]
    assert (tmp_path / "forked" / "artifacts" / "train.log").read_text().endswith("(fork server)\n")
    assert (
        not (tmp_path / "fresh" / "artifacts" / "train.log").read_text().endswith("(fork server)\n")
    )


def test_an_organizations_own_script_starts_a_fresh_interpreter(tmp_path: Path) -> None:
    script = fake_script(
        tmp_path,
        """
        (out / "model.onnx").write_bytes(b"onnx")
        (out / "loaded.json").write_text(json.dumps(sorted(sys.modules)))
        (out / "metrics.json").write_text(
            '{"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "auc": 0.93}'
        )
        """,
    )

    run_train(tmp_path, script, fork_server=True)

    assert "lightgbm" not in json.loads((tmp_path / "artifacts" / "loaded.json").read_text())


def test_training_fork_server_0_turns_it_off_and_a_bad_value_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert read_fork_server({}) is True
    assert read_fork_server({"TRAINING_FORK_SERVER": "0"}) is False
    with pytest.raises(SettingsError, match="TRAINING_FORK_SERVER"):
        read_fork_server({"TRAINING_FORK_SERVER": "sometimes"})

    monkeypatch.setenv("TRAINING_FORK_SERVER", "0")
    run_train(tmp_path)

    assert not (tmp_path / "artifacts" / "train.log").read_text().endswith("(fork server)\n")


def test_runs_from_parallel_threads_share_one_fork_server(tmp_path: Path) -> None:
    env = allowed_env({"SANDBOX_TEST_RUN": uuid.uuid4().hex})  # a fork server of its own
    results: dict[int, SandboxResult] = {}

    def work(code: int) -> None:
        folder = tmp_path / str(code)
        folder.mkdir()
        source = f"import time; time.sleep(0.3); raise SystemExit({code})"
        results[code], _ = run_forked(folder, source, env=env)

    threads = [threading.Thread(target=work, args=(code,)) for code in (3, 4, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {code: r.returncode for code, r in results.items()} == {3: 3, 4: 4, 5: 5}
    assert all(r.forked for r in results.values())
    assert (
        sum(env["SANDBOX_TEST_RUN"] in " ".join(p.environ().values()) for p in fork_servers()) == 1
    )


def test_a_missing_working_folder_is_raised_as_without_a_fork_server(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text("pass")

    with pytest.raises(FileNotFoundError):
        run_sandboxed(
            [sys.executable, str(script)],
            cwd=tmp_path / "gone",
            env=allowed_env(),
            timeout_s=10,
            limits=LIMITS,
            fork_server=True,
        )


def test_when_the_fork_server_dies_its_run_is_killed_worth_a_retry_and_a_new_one_starts(
    tmp_path: Path,
) -> None:
    env = allowed_env({"SANDBOX_TEST_RUN": uuid.uuid4().hex})
    run_forked(tmp_path, "pass", env=env)
    (server,) = fork_servers(env["SANDBOX_TEST_RUN"])
    threading.Timer(0.5, server.kill).start()
    marker = f"held-run-{uuid.uuid4()}"

    held, _ = run_forked(tmp_path, "import time; time.sleep(30)", marker, env=env)
    after, _ = run_forked(tmp_path, "pass", env=env)

    assert held.fork_server_lost and held.signal == signal.SIGKILL and not held.ok
    assert "fork server it was started from died" in held.reason()
    assert wait_until_gone(marker) == []
    assert after.ok and after.forked
    (replacement,) = fork_servers(env["SANDBOX_TEST_RUN"])
    assert replacement.pid != server.pid


def test_runs_go_on_in_a_fresh_interpreter_when_the_fork_server_cannot_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An interpreter that runs scripts but fails to start as a fork server (`-c`).
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = "-c" ] && exit 3\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)

    with caplog.at_level(logging.WARNING, logger=forkserver.log.name):
        result, lines = run_forked(tmp_path, "print('trained')", python=str(python))

    assert result.ok and not result.forked and lines == ["trained"]
    assert "fork server" in caplog.text and "exited with code 3" in caplog.text


def test_a_memory_limit_below_what_the_fork_server_maps_starts_a_fresh_interpreter(
    tmp_path: Path,
) -> None:
    result, lines = run_forked(tmp_path, "print('small')", limits=ResourceLimits(memory_mb=256))

    assert result.ok and not result.forked and lines == ["small"]


WORKER = """
import sys
from pathlib import Path
from training_tasks.sandbox.runner import ResourceLimits, allowed_env, run_sandboxed
script = Path(sys.argv[1])
run_sandboxed([sys.executable, str(script), sys.argv[2]], cwd=script.parent, env=allowed_env(),
              timeout_s=60, limits=ResourceLimits(memory_mb=2048), fork_server=True, on_line=print)
"""


def test_the_fork_server_and_its_runs_die_with_the_worker_process_that_started_them(
    tmp_path: Path,
) -> None:
    marker = f"orphan-{uuid.uuid4()}"
    script = tmp_path / "script.py"
    script.write_text("import time\nprint('running', flush=True)\ntime.sleep(60)\n")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(script), marker],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert worker.stdout is not None and worker.stdout.readline() == b"running\n"
    servers = [
        p for p in psutil.Process(worker.pid).children() if "zygote" in " ".join(p.cmdline())
    ]
    assert servers and leftovers(marker)  # the run shows its own command line

    worker.kill()
    worker.wait()

    assert wait_until_gone(marker, timeout_s=5.0) == []
    deadline = time.monotonic() + 5.0
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in servers):
        assert time.monotonic() < deadline, "the fork server outlived its worker"
        time.sleep(0.05)
