"""Hostile scripts forked from the fork server meet the same sandbox as in a fresh interpreter.

Each attack runs in-process in a fork server's child (the result says `forked`), fails naming
the limit it hit and leaves nothing behind. The fork server itself holds no secret: not in its
environment, not in its memory, and no earlier run's data, so a run that scans its own memory
finds none of it.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.security.conftest import needs
from tests.unit.test_sandbox import wait_until_gone
from training_tasks.sandbox.runner import ResourceLimits, SandboxResult, allowed_env, run_sandboxed

LIMITS = ResourceLimits(memory_mb=1024, file_size_mb=16, processes=64)
SECRETS = {
    "DATABASE_URL": "postgresql://svc:db-password-1@db/training",
    "REDIS_URL": "redis://:redis-password-2@queue:6379/0",
    "ML_MASTER_KEYS": "k1:bWFzdGVyLWtleS0z",
    "ACME_SCADA_URL": "postgresql://scada:scada-password-4@plant/sensors",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-5-a8d1c0e2",
}
# Looks for each target in every readable mapping of its own memory, without ever holding a
# target whole: it matches a prefix, then compares the SHA-256 of the bytes that follow.
MEMORY_SCAN = """
import hashlib, json, sys
targets = json.loads(sys.argv[1])
found = {}
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", buffering=0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if "r" not in perms:
            continue
        start, end = (int(part, 16) for part in span.split("-"))
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        for name, (prefix, size, digest) in targets.items():
            at = data.find(prefix.encode())
            while at != -1:
                if hashlib.sha256(data[at:at + size]).hexdigest() == digest:
                    found[name] = found.get(name, 0) + 1
                at = data.find(prefix.encode(), at + 1)
environ = open("/proc/self/environ", "rb").read().decode(errors="replace")
print(json.dumps({"found": found, "environ": environ, "os_environ": dict(__import__("os").environ)}))
"""


def attack(folder: Path, body: str, *args: str, **kw: Any) -> tuple[SandboxResult, list[str]]:
    """Run `body` as a script forked from the fork server; the result and its stdout lines."""
    script = folder / "attack.py"
    script.write_text(textwrap.dedent(body))
    lines: list[str] = []
    result = run_sandboxed(
        [sys.executable, str(script), *args],
        cwd=folder,
        env=kw.pop("env", allowed_env()),
        timeout_s=kw.pop("timeout_s", 20.0),
        limits=kw.pop("limits", LIMITS),
        on_line=lines.append,
        fork_server=True,
        **kw,
    )
    assert result.forked, "the run did not go through the fork server"
    return result, lines


def targets(values: dict[str, str]) -> str:
    """MEMORY_SCAN's argument: a prefix, the length and the SHA-256 of each value."""
    return json.dumps(
        {
            name: [value[:8], len(value), hashlib.sha256(value.encode()).hexdigest()]
            for name, value in values.items()
        }
    )


def fork_server_of(tag: str) -> psutil.Process:
    """The fork server this process started for the environment holding `tag`."""
    for child in psutil.Process().children():
        try:
            if "training_tasks.sandbox.zygote" in " ".join(child.cmdline()) and tag in " ".join(
                child.environ().values()
            ):
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no fork server for {tag}")


def memory_holds(pid: int, values: dict[str, str]) -> list[str]:
    """Which of `values` appear anywhere in the readable memory of process `pid`."""
    wanted = {name: value.encode() for name, value in values.items()}
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(part, 16) for part in span.split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            found |= {name for name, value in wanted.items() if value in data}
    return sorted(found)


def test_no_secret_is_in_a_forked_runs_environment_or_memory_nor_in_the_fork_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    tag = uuid.uuid4().hex
    env = allowed_env({"SANDBOX_TEST_RUN": tag})  # a fork server started with the secrets set

    control = {"control": tag}  # in the run's environment: proves that the scan finds things
    result, lines = attack(tmp_path, MEMORY_SCAN, targets({**SECRETS, **control}), env=env)

    seen = json.loads(lines[0])
    assert result.ok, result.reason()
    assert set(seen["found"]) == {"control"}
    assert not [value for value in SECRETS.values() if value in seen["environ"]]
    assert not set(SECRETS) & set(seen["os_environ"])
    server = fork_server_of(tag)
    assert not set(SECRETS) & set(server.environ())
    assert memory_holds(server.pid, {**SECRETS, **control}) == ["control"]


def test_a_run_finds_nothing_of_another_organizations_earlier_run_in_its_memory(
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex
    env = allowed_env({"SANDBOX_TEST_RUN": tag})
    theirs = {"path": f"/ml/artifacts/other-org-{tag}/training_config.json"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()

    control = {"control": tag}  # in every run's environment: proves that the scan finds things

    first, _ = attack(tmp_path / "a", "import time; time.sleep(0.2)", theirs["path"], env=env)
    second, lines = attack(tmp_path / "b", MEMORY_SCAN, targets({**theirs, **control}), env=env)

    assert first.ok and second.ok, second.reason()
    assert set(json.loads(lines[0])["found"]) == {"control"}
    assert memory_holds(fork_server_of(tag).pid, {**theirs, **control}) == ["control"]


def test_the_network_is_refused_to_a_forked_run(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result, _ = attack(
            tmp_path, f"import socket\nsocket.create_connection(('127.0.0.1', {port}))"
        )
        listener.settimeout(0.1)
        with pytest.raises(TimeoutError):
            listener.accept()

    assert result.reason().startswith("tried to use the network, which training scripts may not")


def test_other_processes_stay_out_of_a_forked_runs_proc(
    tmp_path: Path, isolation: frozenset[str]
) -> None:
    needs(isolation, "pid", "proc")
    result, lines = attack(
        tmp_path, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))"
    )

    assert result.ok and lines == ["[1, 2]"]  # its init and itself; not the fork server


def test_a_forked_run_writes_only_into_its_working_folder(
    tmp_path: Path, isolation: frozenset[str]
) -> None:
    needs(isolation, "readonly")
    outside = Path(tempfile.mkdtemp(dir=Path.home(), prefix="other-tenant-"))
    try:
        (outside / "model.onnx").write_bytes(b"the real model")
        result, _ = attack(
            tmp_path,
            f"""
            from pathlib import Path
            Path("mine.txt").write_text("ok")
            Path({str(outside)!r}, "model.onnx").write_bytes(b"evil")
            """,
        )
        assert (outside / "model.onnx").read_bytes() == b"the real model"
    finally:
        for path in outside.iterdir():
            path.unlink()
        outside.rmdir()

    assert (tmp_path / "mine.txt").read_text() == "ok"
    assert result.reason().startswith("wrote outside its working folder")


def test_a_fork_bomb_from_a_forked_run_is_killed_with_all_its_processes(tmp_path: Path) -> None:
    marker = f"bomb-{uuid.uuid4()}"
    result, _ = attack(
        tmp_path,
        """
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.01)
        """,
        marker,
        timeout_s=30.0,
    )

    assert result.process_limit_hit or "process limit" in result.reason()
    assert wait_until_gone(marker, timeout_s=5.0) == []


def test_a_forked_run_past_its_timeout_is_killed_with_its_grandchild(tmp_path: Path) -> None:
    marker = f"grandchild-{uuid.uuid4()}"
    result, _ = attack(
        tmp_path,
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        time.sleep(60)
        """,
        timeout_s=1.0,
    )

    assert result.timed_out and result.reason() == "killed after 1 s timeout"
    assert wait_until_gone(marker) == []


def test_a_memory_bomb_in_a_forked_run_fails_naming_the_memory_limit(tmp_path: Path) -> None:
    result, _ = attack(
        tmp_path, "blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n"
    )

    assert result.reason().startswith("hit the memory limit of 1024 MB")


def test_a_forked_run_cannot_raise_its_limits_or_regain_privileges(tmp_path: Path) -> None:
    result, lines = attack(
        tmp_path,
        """
        import resource
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
        print(status["CapEff"].strip(), status["NoNewPrivs"].strip(), status["Seccomp"].strip())
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2)
        """,
    )

    capabilities, no_new_privs, seccomp = lines[0].split()
    assert int(capabilities, 16) == 0 and no_new_privs == "1"
    assert seccomp == ("2" if "seccomp" in result.isolation else "0")
    assert "not allowed to raise maximum limit" in result.reason()
