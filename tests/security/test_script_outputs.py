"""What a training script leaves behind is hostile: each attack is a script, run in the real
sandbox (and the worst of them on a real Celery worker), and each fails only its own run with a
reason that names the file and what is allowed.

- metrics.json as a link to /dev/zero, or as a FIFO, must neither exhaust nor hang the worker;
- model.onnx as a link to another organization's model or to /etc/passwd must not be copied;
- links planted by a first attempt must not redirect what the retry writes;
- a script that rewrites its holdout must not change the verdict of validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.security.test_hostile_scripts import GOOD_SCRIPT, Attack
from tests.support.processes import Worker, celery_worker, service_env, wait_for
from training_tasks.config.settings import BUNDLED_SCRIPT, Settings
from training_tasks.demo import scada
from training_tasks.errors import TrainingError, TrainingKilled
from training_tasks.files import write_json_atomic
from training_tasks.runtime import build_runtime
from training_tasks.service.api import TrainingHandle, TrainingService
from training_tasks.stages.train import store_model

GOOD_METRICS = '{"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75, "auc": 0.93}'
PRECIOUS = b"another organization's model, which no script may read or overwrite"


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[Attack]:
    attacker = Attack(tmp_path)
    yield attacker
    for line in attacker.leftovers():  # never leave a failed test's processes running
        psutil.Process(int(line.split(":")[0])).kill()


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "globex" / "current" / "model.onnx"
    path.parent.mkdir(parents=True)
    path.write_bytes(PRECIOUS)
    return path


def test_a_metrics_json_linked_to_dev_zero_fails_the_run_at_once_naming_the_file(
    attack: Attack,
) -> None:
    error, took_s = attack.fails(
        """
        out = Path(config["outputPath"])
        (out / "model.onnx").write_bytes(b"onnx")
        os.symlink("/dev/zero", out / "metrics.json")
        """
    )

    assert "metrics.json" in error and "is a symbolic link" in error
    assert "only a regular file" in error and "at most 1 MB" in error
    assert "check that the script writes its outputs into outputPath" in error
    assert took_s < 10.0
    attack.assert_nothing_left_and_training_still_works()


def test_a_fifo_in_place_of_metrics_json_fails_the_run_within_seconds(attack: Attack) -> None:
    error, took_s = attack.fails(
        """
        out = Path(config["outputPath"])
        (out / "model.onnx").write_bytes(b"onnx")
        os.mkfifo(out / "metrics.json")
        """
    )

    assert "metrics.json" in error and "is a FIFO" in error
    assert took_s < 10.0
    attack.assert_nothing_left_and_training_still_works()


def test_a_metrics_json_past_its_size_limit_fails_naming_the_limit(attack: Attack) -> None:
    error, _ = attack.fails(
        """
        out = Path(config["outputPath"])
        (out / "model.onnx").write_bytes(b"onnx")
        (out / "metrics.json").write_text(" " * (8 << 20) + "{}")
        """
    )

    assert "metrics.json" in error and "is 8 MB" in error and "at most 1 MB" in error
    attack.assert_nothing_left_and_training_still_works()


@pytest.mark.parametrize("target", ["other organization", "/etc/passwd"])
def test_a_model_onnx_linked_elsewhere_fails_the_run(
    attack: Attack, precious: Path, target: str
) -> None:
    pointed = str(precious) if target == "other organization" else "/etc/passwd"
    error, _ = attack.fails(
        f"""
        out = Path(config["outputPath"])
        os.symlink({pointed!r}, out / "model.onnx")
        (out / "metrics.json").write_text({GOOD_METRICS!r})
        """
    )

    assert "model.onnx" in error and "is a symbolic link" in error and pointed not in error
    assert precious.read_bytes() == PRECIOUS
    attack.assert_nothing_left_and_training_still_works()


def test_a_model_txt_fifo_fails_the_run_before_lightgbm_is_handed_it(attack: Attack) -> None:
    error, took_s = attack.fails(
        f"""
        out = Path(config["outputPath"])
        (out / "model.onnx").write_bytes(b"onnx")
        (out / "metrics.json").write_text({GOOD_METRICS!r})
        os.mkfifo(out / "model.txt")
        """
    )

    assert "model.txt" in error and "is a FIFO" in error and took_s < 10.0
    attack.assert_nothing_left_and_training_still_works()


def test_the_store_never_receives_what_a_model_link_names(tmp_path: Path, precious: Path) -> None:
    # A model.onnx that turned into a link after the train stage looked at it.
    script_folder = tmp_path / "artifacts"
    script_folder.mkdir()
    (script_folder / "model.onnx").symlink_to(precious)
    stored = tmp_path / "models" / "acme" / "model_v.onnx"

    with pytest.raises(TrainingError) as refused:
        store_model(script_folder / "model.onnx", stored, max_bytes=1 << 20, where="acme v")

    assert "acme v: model.onnx" in str(refused.value) and "is a symbolic link" in str(refused.value)
    assert not stored.exists() and precious.read_bytes() == PRECIOUS


def test_links_planted_by_a_killed_first_attempt_are_replaced_not_followed_by_the_retry(
    attack: Attack, precious: Path
) -> None:
    names = [
        "train.log",
        "training_config.json",
        f".training_config.json.{os.getpid()}.tmp",  # the temporary name the worker once used
        "validation.json",
        "manifest.json",
    ]
    with pytest.raises(TrainingKilled):  # killed by a signal: worth another attempt
        attack.train(
            f"""
            out = Path(config["outputPath"])
            for name in {names!r}:
                (out / name).unlink(missing_ok=True)
                os.symlink({str(precious)!r}, out / name)
            os.kill(os.getpid(), signal.SIGKILL)
            """
        )

    result = attack.train(GOOD_SCRIPT, name="good.py")
    out = result.model_path.parent
    write_json_atomic(out / "validation.json", {"passed": True})  # as validation writes them
    write_json_atomic(out / "manifest.json", {"version": "v"})

    assert precious.read_bytes() == PRECIOUS
    for name in ("train.log", "training_config.json", "validation.json", "manifest.json"):
        assert not (out / name).is_symlink() and (out / name).is_file(), name
    assert json.loads((out / "training_config.json").read_text())["outputPath"] == str(out)


# ----- Through a real worker -----

START = datetime(2026, 1, 1, tzinfo=UTC)
RANGE = {"startDate": "2026-01-01T00:00:00Z", "endDate": "2026-01-22T00:00:00Z"}
RUN_TIMEOUT_S = 180.0
HEADER = "import json, os, pathlib, signal, sys\nfrom pathlib import Path\n"
HEADER += "config = json.loads(Path(sys.argv[1]).read_text())\nout = Path(config['outputPath'])\n"
# The bundled script ends with os._exit, so it runs as a child for the attack to go on after it.
TRAIN_AS_BUNDLED = f"""
import subprocess
status = subprocess.run([sys.executable, {str(BUNDLED_SCRIPT)!r}, sys.argv[1]]).returncode
if status:
    sys.exit(status)
"""
OUTPUT_ATTACKS = {
    "zero_metrics.py": """
        (out / "model.onnx").write_bytes(b"onnx")
        os.symlink("/dev/zero", out / "metrics.json")
        """,
    "fifo_metrics.py": """
        (out / "model.onnx").write_bytes(b"onnx")
        os.mkfifo(out / "metrics.json")
        """,
    "steal_model.py": f"""
        theirs = out.parents[2] / "models" / "globex" / "current" / "model.onnx"
        os.symlink(theirs, out / "model.onnx")
        (out / "metrics.json").write_text({GOOD_METRICS!r})
        """,
    "passwd_model.py": f"""
        os.symlink("/etc/passwd", out / "model.onnx")
        (out / "metrics.json").write_text({GOOD_METRICS!r})
        """,
}
# Trains as the bundled script, then keeps only the holdout rows its model gets right.
FORGE_HOLDOUT = (
    TRAIN_AS_BUNDLED
    + """
import numpy as np, onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
holdout = Path(config["holdoutDataPath"])
table = pq.read_table(holdout)
features = np.column_stack(
    [table.column(c).to_numpy(zero_copy_only=False) for c in config["featureColumns"]]
).astype(np.float32)
session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
scores = session.run(["failure_probability"], {"input": features})[0]
labels = table.column(config["targetColumn"]).to_numpy(zero_copy_only=False)
right = (scores >= 0.5) == (labels == 1)
try:
    pq.write_table(table.filter(pa.array(right)), holdout)
    written = True
except OSError:
    written = False
(out / "forged.json").write_text(json.dumps({"written": written, "kept": int(right.sum())}))
"""
)
# Trains as the bundled script, says so, and waits (bounded) for the test to tamper with the holdout.
TRAIN_AND_WAIT = (
    TRAIN_AS_BUNDLED
    + """
import time
(out / "trained").write_text("1")
deadline = time.monotonic() + 60
while not (out / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""
)
# Attempt 1 plants links to the file named in scripts/target for every name the worker writes
# in its folder (also the temporary name it once derived from its pid) and dies by a signal.
PLANT_LINKS = (
    """
scripts = Path(__file__).parent
if not (out / "attempted").exists():
    (out / "attempted").write_text("1")
    names = ["train.log", "training_config.json", "validation.json", "manifest.json"]
    pids = json.loads((scripts / "worker_pids.json").read_text())
    names += [f".training_config.json.{pid}.tmp" for pid in pids]
    for name in names:
        (out / name).unlink(missing_ok=True)
        os.symlink((scripts / "target").read_text(), out / name)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    + TRAIN_AS_BUNDLED
)


@dataclass
class Plant:
    """Two organizations on one service and one real worker; scripts in ML_BASE_PATH/scripts."""

    service: TrainingService
    base: Path
    scada_url: str
    worker: Worker

    def use(self, org_id: str, script: str | None, **thresholds: Any) -> None:
        layout = scada.ACME_LAYOUT if org_id == "acme" else scada.GLOBEX_LAYOUT
        doc = scada.demo_org_config(org_id, self.scada_url, layout)
        if script:
            doc["mlModelConfig"]["script"] = script
        if thresholds:
            doc["mlModelConfig"]["thresholds"] = thresholds
        self.service.update_organization(org_id, doc)

    def train(self, org_id: str) -> dict[str, Any]:
        run = self.service.train_model(org_id, {"dataRange": RANGE}, timeout_s=RUN_TIMEOUT_S)
        assert isinstance(run, dict)
        return run

    def deployed(self, org_id: str) -> tuple[str | None, str | None]:
        """The deployed version as the database and as the Redis hot-swap key tell it."""
        version = self.service.get_organization(org_id)["deployedVersion"]
        raw = self.service.rt.redis.get(f"ml:model:{org_id}:current")
        return version, json.loads(raw)["version"] if raw else None

    def sha256s(self, org_id: str) -> set[str]:
        return {v["sha256"] for v in self.service.list_versions(org_id)}


@pytest.fixture
def plant(tmp_path: Path, redis_url: str, postgres_factory: Any) -> Iterator[Plant]:
    service_db, scada_db = postgres_factory(), postgres_factory()
    for seed, layout in ((7, scada.ACME_LAYOUT), (8, scada.GLOBEX_LAYOUT)):
        frames = scada.iter_sensor_frames(
            assets=3, days=21, interval_min=10, seed=seed, start=START
        )
        scada.write_scada_postgres(scada_db, frames, layout)
    base = tmp_path / "ml"
    (base / "scripts").mkdir(parents=True)
    scripts = {
        **OUTPUT_ATTACKS,
        "forge_holdout.py": FORGE_HOLDOUT,
        "train_and_wait.py": TRAIN_AND_WAIT,
        "plant_links.py": PLANT_LINKS,
    }
    for name, body in scripts.items():
        (base / "scripts" / name).write_text(HEADER + textwrap.dedent(body))
    env = service_env(
        redis_url=redis_url,
        database_url=service_db,
        ml_base_path=base,
        extra={"RETRY_BACKOFF_S": "0.5"},
    )
    service = TrainingService(build_runtime(Settings.from_env(env)))
    for org_id, layout in (("acme", scada.ACME_LAYOUT), ("globex", scada.GLOBEX_LAYOUT)):
        service.register_organization(org_id, scada.demo_org_config(org_id, scada_db, layout))
    try:
        with celery_worker(env, tmp_path) as worker:
            yield Plant(service, base, scada_db, worker)
    finally:
        service.close()


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_on_a_real_worker_hostile_outputs_fail_only_their_run_and_the_worker_trains_on(
    plant: Plant,
) -> None:
    first = plant.train("globex")
    assert first["status"] == "succeeded", first["error"] or plant.worker.log_tail()
    theirs = plant.sha256s("globex")
    outcomes: dict[str, tuple[dict[str, Any], float]] = {}
    for script in OUTPUT_ATTACKS:
        plant.use("acme", script)
        started = time.monotonic()
        outcomes[script] = (plant.train("acme"), time.monotonic() - started)
    plant.use("acme", None)
    after = plant.train("globex")
    log = plant.worker.log_tail(200)

    expected = {
        "zero_metrics.py": "metrics.json (",
        "fifo_metrics.py": "metrics.json (",
        "steal_model.py": "model.onnx (",
        "passwd_model.py": "model.onnx (",
    }
    for script, (run, took_s) in outcomes.items():
        error = run["error"] or ""
        assert run["status"] == "failed", (script, run["status"], log)
        assert expected[script] in error and "only a regular file" in error, (script, error)
        assert f"organization acme version {run['version']}" in error
        assert run["attempt"] == 1, "a script's broken output is not worth another attempt"
        assert took_s < 60.0, (script, took_s)  # a FIFO read blocked for hours before
    assert "is a symbolic link" in outcomes["zero_metrics.py"][0]["error"]
    assert "is a FIFO" in outcomes["fifo_metrics.py"][0]["error"]
    assert plant.service.list_versions("acme") == []  # nothing of globex's, nor /etc/passwd
    assert not plant.sha256s("acme") & theirs
    assert after["status"] == "succeeded", after["error"] or log  # the worker lived on
    assert plant.worker.proc.poll() is None
    assert plant.deployed("globex") == (after["version"], after["version"])


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_on_a_real_worker_rewriting_the_holdout_cannot_change_the_verdict(plant: Plant) -> None:
    honest = plant.train("acme")
    assert honest["status"] == "succeeded", honest["error"] or plant.worker.log_tail()
    strict = {"accuracy": 0.995, "precision": 0.995, "recall": 0.995}
    plant.use("acme", "forge_holdout.py", **strict)

    run = plant.train("acme")

    folder = plant.base / "artifacts/acme" / run["version"]
    error = run["error"] or ""
    assert run["status"] == "rejected", (run["status"], error, (folder / "train.log").read_text())
    forged = json.loads((folder / "forged.json").read_text())
    assert forged["kept"] > 0  # without the checks below, this forgery scored 1.0 and deployed
    if forged["written"]:
        holdout = Path(run["data"]["holdoutPath"])
        changed = hashlib.sha256(holdout.read_bytes()).hexdigest()
        recorded = run["data"]["holdoutSha256"]
        assert f"was changed after extraction (sha256 {changed} != {recorded}" in error
    else:  # the sandbox refused the write: the honest holdout judged an honest model
        assert "below the threshold" in error
        assert min(run["metrics"][name] for name in strict) < 0.995
    assert plant.deployed("acme") == (honest["version"], honest["version"])
    assert plant.service.list_versions("acme")[0]["validationPassed"] is False


def keep_what_the_model_gets_right(holdout: Path, model: Path) -> int:
    """Rewrite the holdout with only the rows `model` classifies right; returns how many."""
    table = pq.read_table(holdout)
    features = np.column_stack(
        [table.column(name).to_numpy(zero_copy_only=False) for name in scada.FEATURES]
    ).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    scores = session.run(["failure_probability"], {"input": features})[0]
    labels = table.column(scada.TARGET).to_numpy(zero_copy_only=False)
    right = (scores >= 0.5) == (labels == 1)
    pq.write_table(table.filter(pa.array(right)), holdout)
    return int(right.sum())


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_on_a_real_worker_a_holdout_changed_after_extract_rejects_the_version_unscored(
    plant: Plant,
) -> None:
    honest = plant.train("acme")
    assert honest["status"] == "succeeded", honest["error"] or plant.worker.log_tail()
    plant.use("acme", "train_and_wait.py", accuracy=0.995, precision=0.995, recall=0.995)
    handle = plant.service.train_model("acme", {"dataRange": RANGE}, wait=False)
    assert isinstance(handle, TrainingHandle)
    folder = plant.base / "artifacts/acme" / handle.version
    wait_for(lambda: (folder / "trained").exists(), 90, "the script to finish training")
    holdout = Path(plant.service.get_training_status("acme")["latestRun"]["data"]["holdoutPath"])

    kept = keep_what_the_model_gets_right(holdout, folder / "model.onnx")
    (folder / "go").write_text("1")
    run = handle.wait(RUN_TIMEOUT_S)

    error = run["error"] or ""
    assert kept > 0 and run["status"] == "rejected", (run["status"], error)
    changed = hashlib.sha256(holdout.read_bytes()).hexdigest()
    assert f"the holdout {holdout} was changed after extraction (sha256 {changed} != " in error
    assert run["data"]["holdoutSha256"] in error and "train again" in error
    assert run["metrics"]["accuracy"] is None  # nothing was scored on the forged rows
    assert plant.deployed("acme") == (honest["version"], honest["version"])
    deployed_model = plant.base / "models/acme" / f"deployed_{honest['version']}" / "model.onnx"
    report = plant.service.validate_model("acme", deployed_model)  # `trainctl validate`
    assert report["holdoutVersion"] == run["version"] and not report["passed"]
    assert "was changed after extraction" in report["failures"][0]


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.redis
def test_on_a_real_worker_links_planted_by_a_killed_attempt_do_not_redirect_the_retry(
    plant: Plant, tmp_path: Path
) -> None:
    target = tmp_path / "outside" / "precious.txt"
    target.parent.mkdir()
    target.write_bytes(PRECIOUS)
    (plant.base / "scripts" / "target").write_text(str(target))
    pids = [plant.worker.proc.pid] + [
        child.pid for child in psutil.Process(plant.worker.proc.pid).children(recursive=True)
    ]
    (plant.base / "scripts" / "worker_pids.json").write_text(json.dumps(pids))
    plant.use("acme", "plant_links.py")

    run = plant.train("acme")

    assert run["status"] == "succeeded", run["error"] or plant.worker.log_tail()
    assert run["attempt"] == 2  # the first attempt died by its own SIGKILL and was retried
    assert target.read_bytes() == PRECIOUS
    folder = plant.base / "artifacts/acme" / run["version"]
    for name in ("train.log", "training_config.json", "validation.json", "manifest.json"):
        assert not (folder / name).is_symlink() and (folder / name).is_file(), name
    assert json.loads((folder / "manifest.json").read_text())["version"] == run["version"]
    assert plant.deployed("acme") == (run["version"], run["version"])
