"""The train stage runs the script sandboxed and turns every way it can fail into a clear error."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_train_script import FEATURES, TARGET, write_dataset
from training_tasks.config.settings import BUNDLED_SCRIPT
from training_tasks.config.training import DEFAULT_HYPERPARAMETERS, TrainingConfig
from training_tasks.errors import Cancelled, TrainingError, TrainingKilled
from training_tasks.sandbox.runner import ResourceLimits
from training_tasks.stages.train import TrainResult, train

ORG = "acme-plant"
VERSION = "v2026-06-01T12-00-00-000Z_a1b2c3d4"
LIMITS = ResourceLimits(memory_mb=4096, file_size_mb=64)


def training_config() -> TrainingConfig:
    return TrainingConfig(
        organization_id=ORG,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 6, 1, tzinfo=UTC),
        hyperparameters={**DEFAULT_HYPERPARAMETERS, "numIterations": 30, "numLeaves": 15},
        validation_split=0.2,
        target_column=TARGET,
        feature_columns=tuple(FEATURES),
    )


def run_train(tmp_path: Path, script: Path = BUNDLED_SCRIPT, **kw: Any) -> TrainResult:
    data = tmp_path / "data"
    if not (data / "train.parquet").exists():
        write_dataset(data, train_rows=3000, holdout_rows=800)
    return train(
        kw.pop("config", training_config()),
        version=VERSION,
        train_path=data / "train.parquet",
        holdout_path=data / "holdout.parquet",
        output_dir=tmp_path / "artifacts",
        script=script,
        python=sys.executable,
        timeout_s=kw.pop("timeout_s", 60.0),
        limits=LIMITS,
        **kw,
    )


def fake_script(tmp_path: Path, body: str) -> Path:
    """A stand-in training script; `config` and `out` are defined for the body."""
    script = tmp_path / "fake_train.py"
    header = (
        "import json, sys, time\nfrom pathlib import Path\n"
        "config = json.loads(Path(sys.argv[1]).read_text())\nout = Path(config['outputPath'])\n"
    )
    script.write_text(header + textwrap.dedent(body))
    return script


GOOD_METRICS = '{"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "auc": 0.93}'


def test_a_successful_training_returns_the_model_metrics_and_costs(tmp_path: Path) -> None:
    updates: list[dict[str, Any]] = []

    result = run_train(tmp_path, progress=updates.append)

    out = tmp_path / "artifacts"
    assert result.model_path == out / "model.onnx" and result.model_path.stat().st_size > 0
    assert result.native_model_path == out / "model.txt"
    assert result.metrics["auc"] > 0.85
    assert result.metrics["train_rows"] == 3000
    assert result.elapsed_s > 0 and result.cpu_s > 0 and result.peak_rss_mb > 50
    assert updates[-1] == {"stage": "train", "iteration": 30, "total": 30}
    assert '"event": "done"' in (out / "train.log").read_text()


def test_the_script_gets_the_contract_config_with_absolute_paths(tmp_path: Path) -> None:
    run_train(
        tmp_path,
        fake_script(
            tmp_path,
            f"(out / 'model.onnx').write_bytes(b'x')\n"
            f"(out / 'metrics.json').write_text('{GOOD_METRICS}')\n",
        ),
    )

    config = json.loads((tmp_path / "artifacts" / "training_config.json").read_text())
    assert config["organizationId"] == ORG and config["version"] == VERSION
    assert config["featureColumns"] == FEATURES and config["targetColumn"] == TARGET
    assert config["hyperparameters"]["numIterations"] == 30
    assert config["dataRange"]["startDate"].startswith("2026-01-01")
    assert config["outputPath"] == str((tmp_path / "artifacts").resolve())
    assert Path(config["trainDataPath"]).is_absolute()
    assert Path(config["holdoutDataPath"]).name == "holdout.parquet"


def test_the_result_round_trips_through_json(tmp_path: Path) -> None:
    result = TrainResult(
        model_path=tmp_path / "model.onnx",
        native_model_path=None,
        metrics={"auc": 0.9, "accuracy": None},
        elapsed_s=1.5,
        cpu_s=2.5,
        peak_rss_mb=300.0,
    )

    assert TrainResult.from_dict(json.loads(json.dumps(result.as_dict()))) == result


def test_a_failing_script_is_reported_with_its_own_message_and_the_log(tmp_path: Path) -> None:
    script = fake_script(
        tmp_path,
        """
        print(json.dumps({"event": "error", "message": "column 'rpm' is missing"}))
        print("train_model.py: error: column 'rpm' is missing", file=sys.stderr)
        sys.exit(1)
        """,
    )

    with pytest.raises(TrainingError) as caught:
        run_train(tmp_path, script)

    message = str(caught.value)
    assert f"organization {ORG} version {VERSION}" in message
    assert "exited with code 1: train_model.py: error: column 'rpm' is missing" in message
    assert str(tmp_path / "artifacts" / "train.log") in message


def test_the_bundled_script_names_a_missing_feature_column(tmp_path: Path) -> None:
    config = replace(training_config(), feature_columns=(*FEATURES, "humidity"))

    with pytest.raises(TrainingError) as caught:
        run_train(tmp_path, config=config)

    assert "exited with code 1" in str(caught.value)
    assert "has no column 'humidity'" in str(caught.value)


def test_a_corrupt_data_file_is_named_in_the_error(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", train_rows=300, holdout_rows=100)
    (tmp_path / "data" / "train.parquet").write_bytes(b"not parquet")

    with pytest.raises(TrainingError, match=r"train\.parquet is not a readable Parquet file"):
        run_train(tmp_path)


def test_a_timeout_says_so_and_how_to_fix_it(tmp_path: Path) -> None:
    script = fake_script(tmp_path, "time.sleep(30)\n")

    with pytest.raises(TrainingError) as caught:
        run_train(tmp_path, script, timeout_s=1.0)

    assert "killed after 1 s timeout" in str(caught.value)
    assert "TRAINING_TIMEOUT_S" in str(caught.value)


def test_a_cancelled_training_fails_as_cancelled(tmp_path: Path) -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()

    with pytest.raises(Cancelled, match="cancelled after"):
        run_train(tmp_path, fake_script(tmp_path, "time.sleep(30)\n"), cancel=cancel)


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSEGV"])
def test_a_script_killed_by_a_signal_is_worth_another_attempt(
    tmp_path: Path, signal_name: str
) -> None:
    script = fake_script(
        tmp_path, f"import os, signal\nos.kill(os.getpid(), signal.{signal_name})\n"
    )
    with pytest.raises(TrainingKilled, match=signal_name) as err:
        run_train(tmp_path, script)
    assert err.value.transient


def test_a_script_that_exits_with_an_error_is_not_retried(tmp_path: Path) -> None:
    with pytest.raises(TrainingError) as err:
        run_train(tmp_path, fake_script(tmp_path, "raise SystemExit('bad input')\n"))
    assert not err.value.transient


def test_exiting_zero_without_a_model_is_a_broken_contract(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"exited 0 but it wrote no model\.onnx"):
        run_train(tmp_path, fake_script(tmp_path, "print('all good')\n"))


def test_an_empty_model_is_a_broken_contract(tmp_path: Path) -> None:
    script = fake_script(tmp_path, "(out / 'model.onnx').write_bytes(b'')\n")

    with pytest.raises(TrainingError, match=r"no model\.onnx \(or an empty one\)"):
        run_train(tmp_path, script)


def test_a_model_left_by_an_earlier_attempt_does_not_count(tmp_path: Path) -> None:
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "model.onnx").write_bytes(b"old model")

    with pytest.raises(TrainingError, match=r"no model\.onnx"):
        run_train(tmp_path, fake_script(tmp_path, "pass\n"))


@pytest.mark.parametrize(
    ("metrics", "problem"),
    [
        (None, r"wrote no metrics\.json"),
        ("{not json", r"metrics\.json is not valid JSON"),
        ("[1, 2]", r"metrics\.json is not a JSON object"),
        ('{"accuracy": 0.9}', r"lacks a number for precision, recall, f1, auc"),
    ],
)
def test_missing_or_malformed_metrics_are_a_broken_contract(
    tmp_path: Path, metrics: str | None, problem: str
) -> None:
    body = "(out / 'model.onnx').write_bytes(b'model')\n"
    if metrics is not None:
        body += f"(out / 'metrics.json').write_text({metrics!r})\n"

    with pytest.raises(TrainingError, match=problem) as caught:
        run_train(tmp_path, fake_script(tmp_path, body))

    assert f"organization {ORG} version {VERSION}" in str(caught.value)


def test_non_json_output_is_ignored_and_a_failing_progress_callback_does_not_stop_training(
    tmp_path: Path,
) -> None:
    script = fake_script(
        tmp_path,
        f"""
        print("plain text from a custom script")
        print(json.dumps({{"event": "iteration", "iteration": 1, "total": 2}}), flush=True)
        (out / "model.onnx").write_bytes(b"model")
        (out / "metrics.json").write_text('{GOOD_METRICS}')
        """,
    )

    def broken_progress(update: dict[str, Any]) -> None:
        raise RuntimeError("redis is down")

    result = run_train(tmp_path, script, progress=broken_progress)

    assert result.native_model_path is None
    assert result.metrics["auc"] == 0.93


def test_a_missing_script_is_named_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"training script .*nope\.py does not exist"):
        run_train(tmp_path, tmp_path / "nope.py")

    assert not (tmp_path / "artifacts" / "train.log").exists()
