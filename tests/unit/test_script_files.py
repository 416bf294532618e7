"""Files a training script leaves behind are read only as regular files of a bounded size, and
files the service writes into the script's folder never go through a link planted there."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from training_tasks import files
from training_tasks.errors import TrainingError
from training_tasks.files import UnsafeFile, open_append_own, read_script_output, write_json_atomic
from training_tasks.sandbox.output import BoundedLog

LIMIT = 1 << 20


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A file of another organization that a script would like the service to read or overwrite."""
    path = tmp_path / "other-org" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(b"another organization's model")
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def test_a_regular_file_is_read_whole(folder: Path) -> None:
    (folder / "metrics.json").write_text('{"accuracy": 0.9}')

    assert read_script_output(folder / "metrics.json", LIMIT, "metrics.json") == (
        b'{"accuracy": 0.9}'
    )


def test_a_file_of_exactly_the_limit_is_read(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"x" * 1000)

    assert len(read_script_output(folder / "model.onnx", 1000, "model.onnx")) == 1000


def test_a_symlink_is_refused_and_its_target_never_read(folder: Path, outside: Path) -> None:
    (folder / "model.onnx").symlink_to(outside)

    with pytest.raises(UnsafeFile) as refused:
        read_script_output(folder / "model.onnx", LIMIT, "model.onnx")

    message = str(refused.value)
    assert "model.onnx" in message and "is a symbolic link" in message
    assert "only a regular file" in message and "another organization" not in message
    assert isinstance(refused.value, TrainingError)  # fails the run, never retried


def test_a_symlink_to_dev_zero_is_refused_at_once(folder: Path) -> None:
    (folder / "metrics.json").symlink_to("/dev/zero")
    started = time.monotonic()

    with pytest.raises(UnsafeFile, match=r"metrics.json .* is a symbolic link"):
        read_script_output(folder / "metrics.json", LIMIT, "metrics.json")

    assert time.monotonic() - started < 1.0


def test_a_fifo_is_refused_without_waiting_for_a_writer(folder: Path) -> None:
    os.mkfifo(folder / "metrics.json")
    started = time.monotonic()

    with pytest.raises(UnsafeFile, match="is a FIFO"):
        read_script_output(folder / "metrics.json", LIMIT, "metrics.json")

    assert time.monotonic() - started < 1.0


def test_a_device_is_refused() -> None:
    with pytest.raises(UnsafeFile, match="is a character device"):
        read_script_output(Path("/dev/zero"), LIMIT, "metrics.json")


def test_a_folder_is_refused(folder: Path) -> None:
    (folder / "metrics.json").mkdir()

    with pytest.raises(UnsafeFile, match="is a directory"):
        read_script_output(folder / "metrics.json", LIMIT, "metrics.json")


def test_a_hard_link_to_a_file_outside_is_refused(folder: Path, outside: Path) -> None:
    os.link(outside, folder / "model.onnx")

    with pytest.raises(UnsafeFile, match=r"is a hard link \(2 names\)"):
        read_script_output(folder / "model.onnx", LIMIT, "model.onnx")


def test_a_file_over_the_limit_is_refused_naming_its_size_and_the_limit(folder: Path) -> None:
    (folder / "metrics.json").write_bytes(b" " * (2 << 20))

    with pytest.raises(UnsafeFile) as refused:
        read_script_output(folder / "metrics.json", LIMIT, "metrics.json")

    assert "is 2 MB" in str(refused.value) and "at most 1 MB" in str(refused.value)


def test_a_missing_file_is_reported_as_missing(folder: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_script_output(folder / "metrics.json", LIMIT, "metrics.json")


def test_json_written_over_a_planted_symlink_replaces_the_link_not_its_target(
    folder: Path, outside: Path
) -> None:
    (folder / "validation.json").symlink_to(outside)

    write_json_atomic(folder / "validation.json", {"passed": False})

    assert outside.read_bytes() == b"another organization's model"
    assert not (folder / "validation.json").is_symlink()
    assert json.loads((folder / "validation.json").read_text()) == {"passed": False}


def test_json_is_never_written_through_a_link_planted_under_its_temporary_name(
    folder: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files.secrets, "token_hex", lambda _: "guessed")
    (folder / ".manifest.json.tmp-guessed").symlink_to(outside)

    with pytest.raises(FileExistsError):
        write_json_atomic(folder / "manifest.json", {"version": "v"})

    assert outside.read_bytes() == b"another organization's model"
    assert not (folder / "manifest.json").exists()


@pytest.mark.parametrize("planted", ["symlink", "hard link", "fifo", "folder"])
def test_the_training_log_replaces_whatever_was_planted_under_its_name(
    folder: Path, outside: Path, planted: str
) -> None:
    log_path = folder / "train.log"
    if planted == "symlink":
        log_path.symlink_to(outside)
    elif planted == "hard link":
        os.link(outside, log_path)
    elif planted == "fifo":
        os.mkfifo(log_path)
    else:
        (log_path / "inner").mkdir(parents=True)
    log = BoundedLog(log_path, max_bytes=1 << 16)
    log.write("iteration 1")
    log.close("exit 0")

    assert outside.read_bytes() == b"another organization's model"
    assert log_path.read_text() == "iteration 1\nexit 0\n"


def test_the_training_log_appends_to_its_own_regular_file(folder: Path) -> None:
    (folder / "train.log").write_text("attempt 1\n")

    with open(open_append_own(folder / "train.log"), "ab") as log:
        log.write(b"attempt 2\n")

    assert (folder / "train.log").read_text() == "attempt 1\nattempt 2\n"


def test_a_fifo_with_a_reader_is_not_written_to(folder: Path) -> None:
    fifo = folder / "train.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a process left behind, listening
    try:
        fd = open_append_own(fifo)
        os.write(fd, b"secret log line\n")
        os.close(fd)
        received = os.read(reader, 1024)
    finally:
        os.close(reader)

    assert received == b""
    assert not fifo.is_fifo() and fifo.read_bytes() == b"secret log line\n"
