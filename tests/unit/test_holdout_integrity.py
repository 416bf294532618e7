"""Validation scores only the holdout extract wrote: its sha256 is recorded at extract and checked
on the very file descriptor the rows are then read from; model files are read only as regular
files. Old runs without a recorded hash keep validating."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.onnx_fixtures import (
    FEATURES,
    TARGET,
    check,
    judge,
    make_data,
    save_model,
    train_booster,
    write_holdout,
)
from tests.unit.test_extract import ACME_SCHEMA, acme_db, config, frame  # noqa: F401  # fixtures
from training_tasks.stages.extract.stage import ExtractResult, extract


@pytest.fixture(scope="module")
def booster() -> lgb.Booster:
    return train_booster(*make_data(3000, seed=1))


@pytest.fixture
def holdout(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "data").mkdir()
    path = write_holdout(tmp_path / "data" / "holdout.parquet", *make_data(2000, seed=2))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_holdout_extract_recorded_is_scored(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str]
) -> None:
    path, sha256 = holdout

    report = judge(save_model(tmp_path / "m", booster), path, holdout_sha256=sha256)

    assert report.passed, report.failures
    assert report.rows == 2000 and report.metrics["accuracy"] > 0.8  # type: ignore[operator]


def test_a_holdout_stripped_of_the_rows_the_model_gets_wrong_is_refused_unscored(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str]
) -> None:
    path, sha256 = holdout
    model = save_model(tmp_path / "m", booster)
    table = pq.read_table(path)
    features = table.select(FEATURES).to_pandas().to_numpy(dtype="float32")
    scores = np.asarray(booster.predict(features))
    right = (scores >= 0.5) == table.column(TARGET).to_numpy().astype(bool)
    pq.write_table(table.filter(right), path)  # what a script with write access would do
    assert judge(model, path).metrics["accuracy"] == 1.0  # the forgery works without the hash

    report = judge(model, path, holdout_sha256=sha256)

    assert not report.passed and report.rows == 0
    assert report.metrics["accuracy"] is None
    changed = hashlib.sha256(path.read_bytes()).hexdigest()
    assert check(report, "holdout")["detail"] == (
        f"the holdout {path} was changed after extraction (sha256 {changed} != {sha256} "
        "recorded by extract), so no score on it can be trusted; train again to extract a "
        "fresh holdout"
    )
    assert "was changed after extraction" in report.failures[0]


def test_a_holdout_without_a_recorded_hash_is_still_scored(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str]
) -> None:
    report = judge(save_model(tmp_path / "m", booster), holdout[0], holdout_sha256=None)

    assert report.passed and report.rows == 2000


def test_a_holdout_that_is_a_symlink_is_refused(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str]
) -> None:
    link = tmp_path / "link.parquet"
    link.symlink_to(holdout[0])

    report = judge(save_model(tmp_path / "m", booster), link)

    assert not report.passed
    assert "the holdout" in check(report, "holdout")["detail"]
    assert "is a symbolic link" in check(report, "holdout")["detail"]


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_native_model_that_is_not_a_regular_file_fails_parity_at_once(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str], kind: str
) -> None:
    model = save_model(tmp_path / "m", booster)
    native = model.with_name("model.txt")
    native.rename(tmp_path / "elsewhere.txt")
    if kind == "symlink":
        native.symlink_to(tmp_path / "elsewhere.txt")
    else:
        os.mkfifo(native)

    report = judge(model, holdout[0], holdout_sha256=holdout[1])

    parity = check(report, "parity")
    assert not report.passed and not parity["passed"]
    assert "model.txt" in parity["detail"] and "only a regular file" in parity["detail"]


def test_a_model_file_that_is_a_symlink_is_not_loaded(
    tmp_path: Path, booster: lgb.Booster, holdout: tuple[Path, str]
) -> None:
    real = save_model(tmp_path / "m", booster)
    link = tmp_path / "link" / "model.onnx"
    link.parent.mkdir()
    link.symlink_to(real)

    report = judge(link, holdout[0], native_model_path=None)

    assert not check(report, "load")["passed"] and report.model_sha256 is None
    assert "is a symbolic link" in check(report, "load")["detail"]


def test_extract_records_the_holdouts_own_sha256(acme_db: str, tmp_path: Path) -> None:  # noqa: F811
    result = extract(acme_db, ACME_SCHEMA, config(), tmp_path / "data")

    assert result.holdout_sha256 == hashlib.sha256(result.holdout_path.read_bytes()).hexdigest()
    wire = json.loads(json.dumps(result.as_dict()))
    assert ExtractResult.from_dict(wire).holdout_sha256 == result.holdout_sha256


def test_a_run_recorded_before_the_holdout_hash_existed_still_reads() -> None:
    old_row = {
        "train_path": "/ml/artifacts/acme/v/data/train.parquet",
        "holdout_path": "/ml/artifacts/acme/v/data/holdout.parquet",
        "rows_train": 10,
        "rows_holdout": 2,
        "positives_train": 1,
        "positives_holdout": 1,
        "split_at": "2024-03-17T00:00:00Z",
        "data_hash": "0" * 64,
        "elapsed_s": 0.5,
    }

    assert ExtractResult.from_dict(old_row).holdout_sha256 is None
