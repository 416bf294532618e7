"""A RabbitMQ node of the test's own, with the settings the test needs (a consumer_timeout of
seconds), started and stopped by its process id. The machine's RabbitMQ is never touched.

The node has its own name, AMQP and distribution ports, data and log folders, configuration,
enabled-plugins file and Erlang cookie (HOME); it registers with the machine's epmd as any node
does. `rabbitmq-server` is run from RabbitMQ's own folder: the wrapper in /usr/sbin would switch
to the `rabbitmq` user, who may not write the test's folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.support.processes import free_port
from training_tasks.demo.child_process import die_with_parent

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)


def server_program() -> str | None:
    """The rabbitmq-server script to run (TEST_RABBITMQ_SERVER overrides); None if absent."""
    given = os.environ.get("TEST_RABBITMQ_SERVER")
    if given:
        return given
    for candidate in SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("rabbitmq-server")


class RabbitNode:
    """A private RabbitMQ node: `start()`, `wait_answering()`, `stop()`; `url` is known at once."""

    def __init__(self, folder: Path, program: str, config: dict[str, str]) -> None:
        self.folder, self.program = folder, program
        self.port, self.dist_port = free_port(), free_port()
        self.name = f"rabbit_test_{uuid.uuid4().hex[:8]}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log_path = folder / "node.log"
        self.proc: subprocess.Popen[bytes] | None = None
        settings = {"listeners.tcp.default": f"127.0.0.1:{self.port}", **config}
        for sub in ("mnesia", "log", "home"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        # RabbitMQ checks consumer timeouts on each channel tick, once a minute by default.
        (folder / "advanced.config").write_text("[{rabbit, [{channel_tick_interval, 500}]}].\n")
        (folder / "enabled_plugins").write_text("[].\n")
        (folder / "rabbitmq-env.conf").write_text("")  # not the machine's NODENAME and flags

    def environment(self) -> dict[str, str]:
        """What rabbitmq-server reads: this node's name, ports, folders and files only."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.folder / "home"),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.folder / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.folder / "log"),
            RABBITMQ_CONFIG_FILE=str(self.folder / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.folder / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.folder / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.folder / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.folder / "node.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def start(self) -> None:
        """Start the node in a session of its own (its Erlang VM and helpers stop with it)."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.program],
                env=self.environment(),
                cwd=self.folder,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def wait_answering(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until the node accepts AMQP connections; fail with its log after `timeout_s`."""
        from kombu import Connection
        from kombu.exceptions import OperationalError

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited early:\n{self.log_tail()}")
            try:
                with Connection(self.url, connect_timeout=2) as connection:
                    connection.ensure_connection(max_retries=1)
                return
            except (OSError, OperationalError):
                time.sleep(0.3)  # still booting
        raise RuntimeError(f"rabbitmq-server not answering in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the node by its process group: TERM (it shuts down cleanly), then KILL."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        self.proc.poll()  # reap the script itself; the Erlang VM may still be shutting down
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        logs = [self.log_path, *sorted((self.folder / "log").glob("*.log"))]
        text = "\n".join(p.read_text(errors="replace") for p in logs if p.is_file())
        return "\n".join(text.splitlines()[-lines:])
