#!/usr/bin/env python3
"""Train a LightGBM failure classifier from Parquet files and export it to ONNX.

The script contract (an organization may supply its own script that honours it):

    python train_model.py <config.json>

The config holds `organizationId`, `version`, `featureColumns` (the raw columns), `targetColumn`,
`hyperparameters` (camelCase), `validationSplit`, `innerValidationSplit`, `decisionPolicy`,
`derivedFeatures`, `windows`, `purgeGapSeconds`, `labelHorizonSeconds`, `dataRange`,
`outputPath`, `trainDataPath` and `holdoutDataPath`; unknown keys are ignored. The script reads
only those files and writes, each atomically, into `outputPath`:

- `model.onnx`: input `input` float32 [N, raw features]; the derived features the trees split on
  are computed inside the graph; outputs `failure_probability` float32 [N] and `failure_alarm`
  bool [N] (probability >= the decision threshold, which the metadata also holds);
- `model.txt`: the native LightGBM model over [raw..., derived...] columns;
- `metrics.json`: holdout metrics at the decision threshold, and what the training chose.

A window model (`windows` {interval, intervalSeconds, length, columns, stats} is not null, and
`featureColumns` are its columns) learns from the recent buckets of an asset. Its files hold one
row per asset and bucket, grouped by asset in bucket order, with `timestamp` (the bucket's end),
`asset_id`, the columns, the target and `example` (1 where the row and the length - 1 rows
before it are consecutive buckets of its asset: an example; 0 for context). The features of an
example are the statistics of its window (`<column>__<stat>`), and derived features are
expressions over those names. Its model.onnx takes `window` float32 [N, length, columns], oldest
bucket first, computes `window_features` and the derived features in the graph, and holds the
spec in its metadata (`window`, `window_feature_columns`); model.txt is over [window
features..., derived...].

Training is reproducible: the same config on the same data gives the same trees. The training
examples are put in time order; the last `innerValidationSplit` share of them is the inner fold,
on which early stopping and the decision threshold are decided. The model is fit on the examples
earlier than the inner fold's first one minus `purgeGapSeconds` (default 0: all before it), so
no label horizon or window reaches from a fit example into the fold. The holdout decides
nothing: its examples are only scored for the (informational) metrics.

Progress goes to stdout as JSON lines (`start`, `loaded`, `iteration`, `exported`, `done`, or
`error`); LightGBM's own logging stays on stderr. This file imports nothing from the service, and
its heavy imports happen inside functions: start-up time counts against every training run. It is
one file, above the usual module size, because it is the unit an organization copies and adapts.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightgbm
    import numpy as np
    import onnx
    import pyarrow as pa

REQUIRED_KEYS = (
    "organizationId",
    "version",
    "featureColumns",
    "targetColumn",
    "hyperparameters",
    "outputPath",
    "trainDataPath",
    "holdoutDataPath",
)
# camelCase wire names -> LightGBM names; other camelCase keys are converted mechanically.
PARAM_NAMES = {
    "numLeaves": "num_leaves",
    "learningRate": "learning_rate",
    "featureFraction": "feature_fraction",
    "baggingFraction": "bagging_fraction",
    "baggingFreq": "bagging_freq",
    "minDataInLeaf": "min_data_in_leaf",
    "maxDepth": "max_depth",
    "numIterations": "num_iterations",
    "objective": "objective",
    "metric": "metric",
    "verbosity": "verbosity",
    "seed": "seed",
    "scalePosWeight": "scale_pos_weight",
    "isUnbalance": "is_unbalance",
    "minSumHessianInLeaf": "min_sum_hessian_in_leaf",
    "lambdaL1": "lambda_l1",
    "lambdaL2": "lambda_l2",
    "maxBin": "max_bin",
    "earlyStoppingRounds": "early_stopping_round",
}
DEFAULT_ITERATIONS = 100
DEFAULT_SEED = 42
DEFAULT_INNER_SPLIT = 0.2
DEFAULT_POLICY: dict[str, Any] = {"type": "fixed", "threshold": 0.5}
POLICY_TYPES = ("fixed", "maxF1", "precisionAtLeast", "recallAtLeast")
TIMESTAMP_COLUMN = "timestamp"  # the extract stage's name for the time of a row
# A window file's asset, and its flag of the rows that end an example's window.
ASSET_COLUMN = "asset_id"
EXAMPLE_COLUMN = "example"
# Window statistics are computed this many window values at a time (float64 copies of ~8 MB).
WINDOW_CHUNK_VALUES = 1 << 20
PROGRESS_INTERVAL_S = 0.1
INPUT_NAME = "input"
OUTPUT_NAME = "failure_probability"
ALARM_NAME = "failure_alarm"
# What the trees read when derived features are computed: the input, then computed tensors.
TREE_INPUT_NAME = "tree_input"
# GreaterOrEqual needs opset 12; models are written at 13, which every current runtime runs.
MIN_OPSET = 13
MIN_IR_VERSION = 7  # the IR version that came with opset 13
# The script's own metrics are informational (the service scores the whole holdout itself), so
# an evenly spread sample of the holdout keeps their cost small on large data.
METRICS_MAX_ROWS = 50_000
# Expression operations -> ONNX operators; log1p(a) is built as Log(Add(a, 1)): ONNX has no Log1p.
UNARY = {"neg": "Neg", "abs": "Abs", "sqrt": "Sqrt", "exp": "Exp", "log1p": "Log"}
BINARY = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "min": "Min", "max": "Max"}
_PROGRESS: list[IO[str]] = []  # where progress lines go once stdout is reserved


class ScriptError(Exception):
    """A problem with the config or the data that the caller must fix; the message says how."""


def emit(event: str, **fields: Any) -> None:
    """Print one JSON progress line on stdout and flush it so the caller sees it at once."""
    stream = _PROGRESS[0] if _PROGRESS else sys.stdout
    stream.write(json.dumps({"event": event, **fields}) + "\n")
    stream.flush()


def reserve_stdout() -> None:
    """Keep stdout for progress lines; send everything else printed there to stderr.

    LightGBM's C++ code prints its log with printf on stdout (its log callback is per thread),
    and so may any other library; moving file descriptor 1 catches them all.
    """
    _PROGRESS.append(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    sys.stdout.flush()
    os.dup2(2, 1)


# --- the config -------------------------------------------------------------------------------


def load_config(path: Path) -> dict[str, Any]:
    """Read the JSON config, check the keys this script relies on and fill in the defaults."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScriptError(
            f"config file {path} does not exist; pass the path of the JSON config"
        ) from None
    except (OSError, ValueError) as exc:
        raise ScriptError(f"config file {path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ScriptError(f"config file {path} must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ScriptError(f"config file {path} lacks {', '.join(missing)}")
    features = config["featureColumns"]
    if not (isinstance(features, list) and features and all(isinstance(c, str) for c in features)):
        raise ScriptError("featureColumns must be a non-empty list of column names")
    if len(set(features)) != len(features):
        raise ScriptError("featureColumns lists a column more than once")
    if not isinstance(config["targetColumn"], str) or config["targetColumn"] in features:
        raise ScriptError("targetColumn must be a column name that is not a feature column")
    if not isinstance(config["hyperparameters"], dict):
        raise ScriptError("hyperparameters must be a JSON object")
    config["innerValidationSplit"] = inner_split(
        config.get("innerValidationSplit", DEFAULT_INNER_SPLIT)
    )
    config["decisionPolicy"] = decision_policy(config.get("decisionPolicy", DEFAULT_POLICY))
    config["purgeGapSeconds"] = purge_gap(config.get("purgeGapSeconds", 0))
    config["windows"] = windows = model_windows(config.get("windows"), features)
    names = window_feature_names(windows) if windows else features
    config["derivedFeatures"] = derived_features(config.get("derivedFeatures", []), names)
    return config


def is_number(value: Any) -> bool:
    """A JSON number (not a boolean) that is finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def inner_split(value: Any) -> float:
    """The inner fold's share of the training rows: a number strictly between 0 and 1."""
    if not (is_number(value) and 0 < value < 1):
        raise ScriptError(
            f"innerValidationSplit {value!r} must be a number between 0 and 1 (0.2 is usual)"
        )
    return float(value)


def purge_gap(value: Any) -> float:
    """The seconds left out between the fit rows and the inner fold: a number >= 0."""
    if not (is_number(value) and value >= 0):
        raise ScriptError(f"purgeGapSeconds {value!r} must be a number of seconds >= 0")
    return float(value)


def model_windows(value: Any, features: Sequence[str]) -> dict[str, Any] | None:
    """The checked window spec of a window model (stats default to all), or None."""
    if value is None:
        return None
    spec = window_spec({"stats": list(WINDOW_STATS), **value} if isinstance(value, dict) else value)
    if "intervalSeconds" not in spec:
        raise ScriptError('windows needs "intervalSeconds", the bucket width in seconds')
    if list(features) != spec["columns"]:
        raise ScriptError(
            f"featureColumns {list(features)} must be the window columns {spec['columns']}: a "
            "window model reads exactly those columns"
        )
    return spec


def decision_policy(value: Any) -> dict[str, Any]:
    """Check `decisionPolicy`; returns it with its number as a float."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in POLICY_TYPES:
        raise ScriptError(
            f"decisionPolicy {json.dumps(value)[:200]} must be an object whose type is one of "
            f"{', '.join(POLICY_TYPES)}"
        )
    if kind == "maxF1":
        return {"type": kind}
    key = "threshold" if kind == "fixed" else "value"
    number = value.get(key)
    if not (is_number(number) and 0 <= number <= 1):
        raise ScriptError(f"decisionPolicy {kind} needs {key!r}, a number from 0 to 1")
    return {"type": kind, key: float(number)}


def derived_features(value: Any, features: Sequence[str]) -> list[dict[str, Any]]:
    """Check `derivedFeatures` ([{name, expression, ast}]): unique new names, known columns."""
    if not isinstance(value, list):
        raise ScriptError("derivedFeatures must be a list of {name, expression, ast} objects")
    names = set(features)
    for feature in value:
        name = feature.get("name") if isinstance(feature, dict) else None
        if not isinstance(name, str) or not name:
            raise ScriptError(f"derivedFeatures entry {json.dumps(feature)[:200]} has no name")
        if name in names:
            raise ScriptError(
                f"derived feature {name!r} repeats the name of a feature column or of an "
                "earlier derived feature; give it another name"
            )
        names.add(name)
        check_ast(feature.get("ast"), features, name)
    return value


def check_ast(ast: Any, features: Sequence[str], name: str) -> None:
    """Refuse an expression tree this script cannot compute, naming the derived feature."""
    problem = ""
    if not isinstance(ast, dict):
        problem = f"{json.dumps(ast)[:100]} is not an expression node"
    elif "num" in ast:
        problem = "" if is_number(ast["num"]) else f"{ast['num']!r} is not a finite number"
    elif "col" in ast:
        problem = "" if ast["col"] in features else f"{ast['col']!r} is not in featureColumns"
    else:
        operation = ast.get("op", ast.get("fn"))
        arity = 1 if operation in UNARY else 2 if operation in BINARY else 0
        args = ast.get("args")
        if arity == 0 or not isinstance(args, list) or len(args) != arity:
            problem = f"{json.dumps(ast)[:100]} is not an operation with its arguments"
        else:
            for arg in args:
                check_ast(arg, features, name)
    if problem:
        raise ScriptError(
            f"derived feature {name!r}: {problem}; compile derivedFeatures with the service "
            "(training_tasks.config.derived)"
        )


def lightgbm_params(hyperparameters: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Map camelCase hyperparameters to LightGBM names; returns (params, number of iterations).

    The seed (42 unless given), `deterministic` and a fixed row-wise histogram layout make the
    same config on the same data give the same trees: left to itself, LightGBM picks row- or
    column-wise by timing a trial, and the two sum the histograms in different orders.
    """
    params: dict[str, Any] = {"objective": "binary", "verbosity": -1}
    for key, value in hyperparameters.items():
        name = PARAM_NAMES.get(key) or re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
        params[name] = value
    params.setdefault("seed", DEFAULT_SEED)
    params["deterministic"] = True
    if not params.get("force_col_wise"):
        params["force_row_wise"] = True
    iterations = int(params.pop("num_iterations", DEFAULT_ITERATIONS))
    if not str(params["objective"]).startswith(("binary", "cross_entropy", "xentropy")):
        raise ScriptError(
            f"objective {params['objective']!r} is not a binary objective; "
            "use binary or cross_entropy"
        )
    return params, iterations


# --- the data ---------------------------------------------------------------------------------


@dataclass
class Data:
    """The training rows split by time, and the holdout rows the metrics are computed on."""

    fit: list[Any]  # [features, labels]; the features are dropped once LightGBM binned them
    inner: tuple[np.ndarray, np.ndarray]  # the last share of the training rows in time order
    holdout: tuple[np.ndarray, np.ndarray]  # an evenly spread sample of the holdout
    train_rows: int
    holdout_rows: int


def load_data(config: Mapping[str, Any]) -> Data:
    """Read both files into float32 matrices of [features..., derived...] and split training."""
    import numpy as np

    spec, columns = config["windows"], data_columns(config)
    path = Path(config["trainDataPath"])
    table = open_parquet(path, columns, optional=[TIMESTAMP_COLUMN])
    times = timestamps(table, path)
    examples = example_rows(table, spec, times, path)
    rows = table.num_rows if examples is None else len(examples)
    parts = training_parts(times, examples, rows, config, path)
    (fit_x, fit_y), inner = read_examples(table, config, parts, path)
    del table
    path = Path(config["holdoutDataPath"])
    table = open_parquet(path, columns)
    examples = example_rows(table, spec, timestamps(table, path) if spec else None, path)
    count = table.num_rows if examples is None else len(examples)
    step = max(1, -(-count // METRICS_MAX_ROWS))
    sample: Any = slice(0, count) if step == 1 else np.arange(0, count, step)
    if examples is not None:
        sample = examples[sample]
    (holdout,) = read_examples(table, config, [sample], path)
    return Data([fit_x, fit_y], inner, holdout, rows, count)


def data_columns(config: Mapping[str, Any]) -> list[str]:
    """The columns both files must have: a window file also has its time, asset and flag."""
    features, target = config["featureColumns"], config["targetColumn"]
    if config["windows"] is None:
        return [*features, target]
    return [TIMESTAMP_COLUMN, ASSET_COLUMN, *features, target, EXAMPLE_COLUMN]


def read_examples(
    table: pa.Table, config: Mapping[str, Any], parts: Sequence[Any], path: Path
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (features, labels) pair per part of the examples, read as the model's kind needs."""
    if config["windows"] is not None:
        return read_windows(table, config, parts, path)
    features, target = config["featureColumns"], config["targetColumn"]
    return read_rows(table, features, target, config["derivedFeatures"], parts, path)


def open_parquet(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> pa.Table:
    """Read `columns` (and those of `optional` the file has) from a Parquet file."""
    # Arrow's mimalloc pool reserves address space in large arenas, which makes a memory limit
    # (RLIMIT_AS) fail at unpredictable points; the system allocator keeps the need steady.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ScriptError(f"data file {path} does not exist; run the extract stage first")
    # ParquetFile, unlike read_table, does not import pyarrow.dataset (and pandas with it).
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise ScriptError(
            f"{path} is not a readable Parquet file ({exc}); run the extract stage again"
        ) from None
    names = parquet.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ScriptError(
            f"{path.name} has no column {', '.join(map(repr, missing))}; "
            f"its columns are {', '.join(names)}; fix featureColumns/targetColumn"
        )
    present = [c for c in optional if c in names]
    return parquet.read(columns=[*columns, *present], use_threads=True)


def timestamps(table: pa.Table, path: Path) -> tuple[np.ndarray, int] | None:
    """The rows' times as integer ticks and the ticks per second, or None with no time column."""
    import pyarrow as pa

    if TIMESTAMP_COLUMN not in table.column_names:
        return None
    stamps = table.column(TIMESTAMP_COLUMN)
    if stamps.null_count:
        raise ScriptError(
            f"{path.name}: column {TIMESTAMP_COLUMN!r} has {stamps.null_count} empty values; "
            "every row needs its time: run the extract stage again"
        )
    if not pa.types.is_timestamp(stamps.type):
        raise ScriptError(f"{path.name}: column {TIMESTAMP_COLUMN!r} holds {stamps.type}")
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[stamps.type.unit]
    return stamps.cast(pa.int64()).to_numpy(), per_second


def time_order(ticks: np.ndarray | None) -> np.ndarray | None:
    """Row numbers in time order, or None when the rows already are (or have no time).

    The extract stage writes rows in the order the database returns them, which SQL does not
    promise to be time order; a stable sort keeps the file order among equal timestamps.
    """
    import numpy as np

    if ticks is None or bool(np.all(ticks[1:] >= ticks[:-1])):
        return None
    return np.argsort(ticks, kind="stable")


def training_parts(
    times: tuple[np.ndarray, int] | None,
    examples: np.ndarray | None,
    rows: int,
    config: Mapping[str, Any],
    path: Path,
) -> list[Any]:
    """The fit examples and the inner fold's: row numbers, or slices of a file in time order.

    The inner fold is the last `innerValidationSplit` of the examples by time; the fit examples
    are those earlier than its first one minus `purgeGapSeconds` (with no gap, all before it).
    A label looks ahead (a failure within the horizon) and a window looks back, so examples
    closer than that to the fold share its events or its readings and would flatter it.
    """
    ticks = None if times is None else times[0]
    if ticks is not None and examples is not None:
        ticks = ticks[examples]
    cut = rows - int(rows * config["innerValidationSplit"])
    order = time_order(ticks)
    end = cut
    if config["purgeGapSeconds"] and cut < rows:
        if times is None or ticks is None:
            raise ScriptError(
                f"{path.name} has no {TIMESTAMP_COLUMN!r} column, which purgeGapSeconds "
                f"{config['purgeGapSeconds']:.15g} needs to leave a gap before the inner fold"
            )
        ordered = ticks if order is None else ticks[order]
        end = purged_end(ordered, cut, times[1], config, path)
    parts: list[Any] = [slice(0, end), slice(cut, rows)]
    if order is not None:
        parts = [order[:end], order[cut:]]
    return parts if examples is None else [examples[part] for part in parts]


def purged_end(
    ordered: np.ndarray, cut: int, per_second: int, config: Mapping[str, Any], path: Path
) -> int:
    """How many of the examples (times in order) lie before the inner fold minus the gap."""
    import numpy as np

    gap_s = config["purgeGapSeconds"]
    # t < first - gap, with t and first whole ticks, holds exactly when t < first - floor(gap).
    limit = int(ordered[cut]) - math.floor(gap_s * per_second)
    end = int(np.searchsorted(ordered[:cut], limit, side="left"))
    if end == 0:
        first, before, earliest = (moment(t, per_second) for t in (ordered[cut], limit, ordered[0]))
        raise ScriptError(
            f"{path.name}: purgeGapSeconds {gap_s:.15g} leaves no example to fit on: the inner "
            f"fold (the last {config['innerValidationSplit']:g} of the {len(ordered)} training "
            f"examples by time) starts at {first}, fit examples must lie before {before} (its "
            f"start minus the gap), and the first example is at {earliest}: widen dataRange, "
            "lower innerValidationSplit, or shorten the gap (labels.horizonHours, windows "
            "length x interval)"
        )
    return end


def moment(tick: Any, per_second: int) -> str:
    """A time in ticks as UTC text to the second, for messages."""
    import numpy as np

    return f"{np.datetime64(int(tick) * 10**9 // per_second, 'ns')!s:.19}Z"


def read_rows(
    table: pa.Table,
    features: Sequence[str],
    target: str,
    derived: Sequence[Mapping[str, Any]],
    parts: Sequence[Any],
    path: Path,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (features, labels) pair per part of the rows; derived columns follow the raw ones.

    The matrices are column-major: each Arrow column lands in one contiguous slice, LightGBM
    reads column-major input directly, and each derived column is computed into its own slice.
    """
    import numpy as np

    width = len(features) + len(derived)
    matrices = [np.empty((part_rows(p), width), dtype=np.float32, order="F") for p in parts]
    for j, name in enumerate(features):
        fill_column([m[:, j] for m in matrices], table.column(name), parts)
    y = flags(table, target, "target column", path)
    for matrix in matrices:
        add_derived(matrix, features, derived)
    return [(matrix, y[part]) for matrix, part in zip(matrices, parts, strict=True)]


def flags(table: pa.Table, name: str, what: str, path: Path) -> np.ndarray:
    """A column that must hold only 0 and 1 (the target, the example flag), as numbers."""
    import numpy as np

    column = table.column(name)
    if column.null_count:
        raise ScriptError(f"{path.name}: {what} {name!r} has {column.null_count} nulls")
    values = column.to_numpy()
    if np.count_nonzero((values != 0) & (values != 1)):
        raise ScriptError(f"{path.name}: {what} {name!r} must hold only 0 and 1")
    return values


def part_rows(part: Any) -> int:
    """The number of rows a part selects."""
    return part.stop - part.start if isinstance(part, slice) else len(part)


def fill_column(
    outputs: Sequence[np.ndarray], column: pa.ChunkedArray, parts: Sequence[Any]
) -> None:
    """Copy the rows of each part of one Arrow column (nulls become NaN) into its output."""
    values = None
    for out, part in zip(outputs, parts, strict=True):
        if isinstance(part, slice):
            row = 0
            for chunk in column.slice(part.start, part.stop - part.start).chunks:
                piece = chunk.to_numpy(zero_copy_only=False)
                out[row : row + len(piece)] = piece
                row += len(piece)
        else:
            values = column.to_numpy() if values is None else values
            out[:] = values[part]


def add_derived(
    matrix: np.ndarray, features: Sequence[str], derived: Sequence[Mapping[str, Any]]
) -> None:
    """Compute each derived column from the raw ones, in float32 one operation at a time."""
    index = {name: j for j, name in enumerate(features)}
    for i, feature in enumerate(derived):
        matrix[:, len(features) + i] = evaluate(feature["ast"], lambda c: matrix[:, index[c]])


def evaluate(ast: Mapping[str, Any], column: Callable[[str], np.ndarray]) -> Any:
    """One expression in float32, exactly as the ONNX graph computes it (log1p as log(a + 1))."""
    import numpy as np

    if "num" in ast:
        return np.float32(ast["num"])
    if "col" in ast:
        return column(ast["col"])
    args = [evaluate(arg, column) for arg in ast["args"]]
    name = ast.get("op", ast.get("fn"))
    with np.errstate(all="ignore"):  # nan and inf flow on, as they do in the graph
        if name == "log1p":
            return np.log(args[0] + np.float32(1))
        function = {
            "+": np.add,
            "-": np.subtract,
            "*": np.multiply,
            "/": np.divide,
            "min": np.minimum,
            "max": np.maximum,
            "neg": np.negative,
            "abs": np.abs,
            "sqrt": np.sqrt,
            "exp": np.exp,
        }[name]
        return function(*args)


def example_rows(
    table: pa.Table,
    spec: Mapping[str, Any] | None,
    times: tuple[np.ndarray, int] | None,
    path: Path,
) -> np.ndarray | None:
    """The row numbers of a window file's examples, each checked to end `length` consecutive
    buckets of one asset (its window); None for a file of single readings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if spec is None or times is None:  # a window file's time is a required column
        return None
    rows = np.flatnonzero(flags(table, EXAMPLE_COLUMN, "column", path))
    ticks, per_second = times
    asset = table.column(ASSET_COLUMN)
    if pa.types.is_dictionary(asset.type):
        asset = asset.cast(asset.type.value_type)
    following = max(table.num_rows - 1, 0)
    same = pc.fill_null(pc.equal(asset.slice(1), asset.slice(0, following)), False)
    step = spec["intervalSeconds"] * per_second
    # steps[i]: row i is the next bucket of row i - 1's asset. A window is whole when all the
    # length - 1 steps inside it are, which the running count of steps tells at once.
    steps = np.cumsum(np.r_[False, same.to_numpy() & (np.diff(ticks) == step)])
    length = spec["length"]
    first = rows - (length - 1)
    whole = first >= 0
    whole[whole] = steps[rows[whole]] - steps[first[whole]] == length - 1
    if not whole.all():
        row = int(rows[np.argmin(whole)])
        raise ScriptError(
            f"{path.name}: example row {row} (asset {asset[row]}, bucket ending "
            f"{moment(ticks[row], per_second)}) is not the last of {length} consecutive "
            f"{spec['interval']} buckets of its asset, which its window must be: run the extract "
            "stage again"
        )
    return rows


def read_windows(
    table: pa.Table, config: Mapping[str, Any], parts: Sequence[np.ndarray], path: Path
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (features, labels) pair per part of the example rows: the statistics of each
    example's window, then the derived columns.

    The window of example row i is rows i - length + 1 .. i of the file: a sliding view of the
    columns, copied only a chunk of examples at a time to compute their statistics.
    """
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    spec, derived = config["windows"], config["derivedFeatures"]
    names, length = window_feature_names(spec), spec["length"]
    # One row per column, at least one window long, so the view exists even for a file too
    # short for an example. Indexing the view keeps its layout: each column's buckets side by
    # side, which the statistics reduce over about ten times faster than over interleaved ones.
    values = np.empty((len(spec["columns"]), max(table.num_rows, length)), np.float32)
    for j, name in enumerate(spec["columns"]):
        fill_column([values[j]], table.column(name), [slice(0, table.num_rows)])
    y = flags(table, config["targetColumn"], "target column", path)
    # [rows - length + 1, columns, length]: windows[i - length + 1] is example row i's window
    windows = sliding_window_view(values, length, axis=1).transpose(1, 0, 2)
    chunk = max(1, WINDOW_CHUNK_VALUES // (length * len(spec["columns"])))
    pairs = []
    for part in parts:
        matrix = np.empty((len(part), len(names) + len(derived)), np.float32, order="F")
        for start in range(0, len(part), chunk):
            rows = part[start : start + chunk]
            window = windows[rows - (length - 1)].transpose(0, 2, 1)  # [rows, length, columns]
            matrix[start : start + len(rows), : len(names)] = window_features(window, spec)
        add_derived(matrix, names, derived)
        pairs.append((matrix, y[part]))
    return pairs


def check_rows(data: Data, split: float, policy: Mapping[str, Any], early_stopping: bool) -> None:
    """Refuse data that cannot give a classifier, or an inner fold that cannot decide."""
    train_y = [data.fit[1], data.inner[1]]
    rows, positives = sum(map(len, train_y)), int(sum(y.sum() for y in train_y))
    if rows == 0 or data.holdout_rows == 0:
        raise ScriptError(
            f"the training data has {rows} rows and the holdout {data.holdout_rows}; "
            "both need rows: widen dataRange or change validationSplit"
        )
    if positives in (0, rows):
        raise ScriptError(
            f"the training data holds only class {int(positives > 0)}; a failure classifier "
            "needs both failures and normal rows: widen dataRange"
        )
    fold = f"the inner validation fold (the last {split:g} of the training rows by time"
    fit_positives, inner_positives = int(data.fit[1].sum()), int(data.inner[1].sum())
    if fit_positives in (0, len(data.fit[1])):
        raise ScriptError(
            f"the training rows before {fold}) hold only class {int(fit_positives > 0)}; "
            "widen dataRange or lower innerValidationSplit"
        )
    needs_both = early_stopping or policy["type"] != "fixed"
    if needs_both and inner_positives in (0, len(data.inner[1])):
        reason = "early stopping" if early_stopping else f"decisionPolicy {policy['type']}"
        raise ScriptError(
            f"{fold}, {len(data.inner[1])} rows) holds {inner_positives} failures; {reason} "
            "needs failures and normal rows in it: widen dataRange or raise innerValidationSplit"
        )


# --- training and the decision threshold ------------------------------------------------------


class Progress:
    """A LightGBM callback printing iteration events, at most one per PROGRESS_INTERVAL_S."""

    order = 100  # LightGBM runs callbacks by `order`; this one goes after its own

    def __init__(self, total: int) -> None:
        self.total = total
        self.seen = 0
        self.shown = 0
        self.shown_at = 0.0

    def __call__(self, env: Any) -> None:
        self.seen = env.iteration - env.begin_iteration + 1
        now = time.monotonic()
        if self.seen == self.total or now - self.shown_at >= PROGRESS_INTERVAL_S:
            self.show(now)

    def show(self, now: float) -> None:
        """Print the latest iteration (also used once more after early stopping)."""
        self.shown, self.shown_at = self.seen, now
        emit("iteration", iteration=self.seen, total=self.total)


def fit(
    params: dict[str, Any],
    iterations: int,
    train: list[Any],
    inner: tuple[np.ndarray, np.ndarray],
    feature_names: Sequence[str],
) -> lightgbm.Booster:
    """Train the booster; early stopping, when asked for, watches the inner fold only.

    `train` is [features, labels]; the feature matrix is dropped from it once LightGBM has
    binned it, which roughly halves the peak memory of a large training.
    """
    import lightgbm as lgb

    # LightGBM refuses some characters in names; model.txt then names the columns by number.
    names = list(feature_names) if not re.search(r'[",:\[\]{}]', "".join(feature_names)) else None
    dataset = lgb.Dataset(
        train[0],
        label=train[1],
        params=dict(params),
        free_raw_data=True,
        feature_name=names or "auto",
    )
    dataset.construct()
    train[0] = None  # the binned Dataset is all training needs
    valid: list[Any] = []
    if params.get("early_stopping_round"):
        valid = [lgb.Dataset(inner[0], label=inner[1], reference=dataset)]
    progress = Progress(iterations)
    booster = lgb.train(
        params, dataset, num_boost_round=iterations, valid_sets=valid or None, callbacks=[progress]
    )
    if progress.shown != progress.seen:
        progress.show(time.monotonic())
    return booster


def inner_probability(booster: lightgbm.Booster, data: Data, policy: Mapping[str, Any]) -> Any:
    """The model's probabilities on the inner fold; a fixed policy needs none."""
    import numpy as np

    if policy["type"] == "fixed":
        return np.empty(0)
    return booster.predict(data.inner[0])


def choose_threshold(policy: Mapping[str, Any], probability: np.ndarray, y: np.ndarray) -> float:
    """The decision threshold by the policy, from the inner fold's probabilities and labels.

    The result is a float32 value, so `probability >= threshold` decides the same whether a
    reader compares in float32 (the graph) or float64. A fixed threshold becomes the smallest
    float32 at or above it, which keeps every float32 probability on the same side.
    """
    import numpy as np

    if policy["type"] == "fixed":
        wanted = policy["threshold"]
        single = np.float32(wanted)
        # Compared in float64: numpy would compare a float32 with a Python float in float32.
        return float(single if float(single) >= wanted else np.nextafter(single, np.float32(1)))
    thresholds, tp, fp = candidates(probability.astype(np.float32), y)
    positives = int(np.count_nonzero(y == 1))
    precision, recall = tp / (tp + fp), tp / positives
    if policy["type"] == "maxF1":
        # argmax takes the first of equal values: candidates run from the highest threshold.
        return float(thresholds[np.argmax(2 * tp / (tp + fp + positives))])
    if policy["type"] == "recallAtLeast":
        chosen = np.flatnonzero(recall >= policy["value"])  # never empty: the lowest has recall 1
        return float(thresholds[chosen[np.argmax(precision[chosen])]])
    chosen = np.flatnonzero(precision >= policy["value"])
    if len(chosen) == 0:
        best = int(np.argmax(precision))
        raise ScriptError(
            f"decisionPolicy precisionAtLeast {policy['value']:g}: no threshold reaches that "
            f"precision on the inner validation fold ({len(y)} rows, {positives} failures); the "
            f"best reached is {precision[best]:.3f} (threshold {thresholds[best]:.4g}, recall "
            f"{recall[best]:.3f}): lower the value, use maxF1 or recallAtLeast, or train on more "
            "data (widen dataRange)"
        )
    return float(thresholds[chosen[np.argmax(recall[chosen])]])


def candidates(probability: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each distinct probability, highest first, with the true and false positives at it."""
    import numpy as np

    order = np.argsort(probability, kind="stable")[::-1]
    ordered = probability[order]
    failures = (y[order] == 1).astype(np.int64)
    ends = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # last row of each value
    tp = np.cumsum(failures)[ends]
    return ordered[ends], tp, ends + 1 - tp


# --- the ONNX model ---------------------------------------------------------------------------


def convert(model_text: str, config: Mapping[str, Any]) -> onnx.ModelProto:
    """Convert to ONNX: the raw input (rows or windows), the window statistics and derived
    columns computed in the graph, the probability."""
    import lightgbm
    from onnx import TensorProto, helper
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    derived, spec = config["derivedFeatures"], config.get("windows")
    features = window_feature_names(spec) if spec else config["featureColumns"]
    source = WINDOW_OUTPUT_NAME if spec else INPUT_NAME  # what the trees' columns come from
    text = float32_thresholds(model_text)
    cross_entropy = re.search(r"^objective=(cross_entropy|xentropy)", text, re.MULTILINE)
    if cross_entropy:
        # The converter knows only `binary`; with sigmoid 1 it computes the same probability.
        text = re.sub(r"^objective=.*$", "objective=binary sigmoid:1", text, flags=re.MULTILINE)
    booster = lightgbm.Booster(model_str=text)
    if cross_entropy:
        booster.params["objective"] = "binary"  # the converter reads it from here first
    width = len(features) + len(derived)
    model = convert_lightgbm(
        booster,
        name="failure_classifier",
        initial_types=[(TREE_INPUT_NAME if derived else source, FloatTensorType([None, width]))],
        zipmap=False,
    )
    keep_probability_of_failure(model)
    if derived:
        compute_derived_in_graph(model.graph, features, derived, source)
    if spec:
        nodes, initializers, _, _ = window_front(spec)
        shape = ["N", spec["length"], len(spec["columns"])]
        window = helper.make_tensor_value_info(WINDOW_INPUT_NAME, TensorProto.FLOAT, shape)
        put_in_front(model.graph, nodes, initializers, window)
    return model


def finish(model: onnx.ModelProto, config: Mapping[str, Any], threshold: float, seed: int) -> bytes:
    """Add the alarm at `threshold` and the metadata; returns the serialized model."""
    add_alarm(model, threshold)
    metadata = [
        ("feature_columns", json.dumps(config["featureColumns"])),
        ("organization_id", str(config["organizationId"])),
        ("version", str(config["version"])),
        ("decision_threshold", repr(threshold)),
        ("decision_policy", json.dumps(config["decisionPolicy"])),
        ("derived_features", json.dumps(config["derivedFeatures"])),
        ("seed", str(seed)),
    ]
    spec = config.get("windows")
    if spec:
        window = {key: spec[key] for key in ("interval", "intervalSeconds", "length", "columns")}
        metadata += [
            ("window", json.dumps({**window, "stats": spec["stats"]})),
            ("window_feature_columns", json.dumps(window_feature_names(spec))),
        ]
    for key, value in metadata:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def float32_thresholds(model_text: str) -> str:
    """Round every split threshold down to a float32 without changing any float32 decision.

    LightGBM compares a float32 input with a float64 threshold t; ONNX compares it with float32(t).
    Where float32(t) rounds up past t, an input equal to it goes the other way in ONNX. The largest
    float32 <= t sends every float32 input the same way as t does, and ONNX stores it exactly.
    """
    import numpy as np

    def round_down(match: re.Match[str]) -> str:
        exact = np.array(match.group(1).split(), dtype=np.float64)
        with np.errstate(over="ignore"):  # beyond float32: inf, then stepped down below
            single = exact.astype(np.float32)
        above = single.astype(np.float64) > exact
        single[above] = np.nextafter(single[above], np.float32(-np.inf))
        return "threshold=" + " ".join(repr(float(v)) for v in single)

    text = re.sub(r"^threshold=(.*)$", round_down, model_text, flags=re.MULTILINE)
    # tree_sizes holds byte offsets that no longer fit; without it LightGBM parses tree by tree.
    return re.sub(r"^tree_sizes=.*\n", "", text, count=1, flags=re.MULTILINE)


def keep_probability_of_failure(model: onnx.ModelProto) -> None:
    """Make P(class 1), shape [N], the graph's only output and drop what no longer feeds it."""
    from onnx import TensorProto, helper

    graph = model.graph
    probabilities = next(o.name for o in graph.output if o.name == "probabilities")
    index = helper.make_tensor("failure_class_index", TensorProto.INT64, [], [1])
    graph.initializer.append(index)
    graph.node.append(
        helper.make_node("Gather", [probabilities, index.name], [OUTPUT_NAME], axis=1)
    )
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"]))
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    needed = {OUTPUT_NAME}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


class Lanes:
    """Builds the operators computing derived values from the raw input, side by side.

    A value lives in one column of a tensor [N, width]. Each round of the build gives every
    operation whose arguments are ready a column and computes all of one kind with one operator
    over whole rows: `a * b` and `c * d` become Mul(X, Gather(X, perm)) with b's column under a
    and d's under c, and the result's other columns are never read. Single-row inference pays
    per operator (a fraction of a microsecond each), not per column, so a few derived features
    cost a few operators.
    """

    def __init__(self, features: Sequence[str], source: str = INPUT_NAME) -> None:
        self.source = source  # the tensor [N, features] the expressions' columns are read from
        self.index = {name: j for j, name in enumerate(features)}
        self.width = {source: len(features)}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.constants: dict[Any, str] = {}
        # expression -> (tensor, column) of a value read from a column, or a scalar's tensor
        self.placed: dict[str, tuple[str, int] | str] = {}

    def columns(self, asts: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
        """Where each expression's value is, for expressions that read a column."""
        pending: dict[str, Mapping[str, Any]] = {}

        def collect(ast: Mapping[str, Any]) -> None:
            if "num" in ast:  # a literal: goes into the operator that uses it
                return
            if "col" in ast:
                self.placed[key(ast)] = (self.source, self.index[ast["col"]])
            elif not uses_a_column(ast):
                self.scalar(ast)
            else:
                for arg in ast["args"]:
                    collect(arg)
                pending.setdefault(key(ast), ast)

        for ast in asts:
            collect(ast)
        while pending:
            ready = [
                ast
                for ast in pending.values()
                if all("num" in arg or key(arg) in self.placed for arg in ast["args"])
            ]
            for done in self.round(ready):
                del pending[done]
        places = [self.placed[key(ast)] for ast in asts]
        assert all(isinstance(place, tuple) for place in places)
        return places  # type: ignore[return-value]

    def round(self, ready: Sequence[Mapping[str, Any]]) -> list[str]:
        """Place what fits side by side; an operation whose column is taken waits a round.

        A step is one operator: (operation, anchor tensor, the anchor's side, the other side),
        the other side being nothing (unary), ("column", tensor) lined up by a Gather,
        ("number",) a row of constants, or ("scalar", tensor).
        """
        import numpy as np

        members: dict[tuple[Any, ...], list[tuple[str, int]]] = {}
        lined_up: dict[tuple[str, str], dict[int, int]] = {}  # (anchor, source): column -> column
        numbers: dict[tuple[Any, ...], dict[int, float]] = {}
        for ast in ready:
            name = ast.get("op", ast.get("fn"))
            args = [self.placed.get(key(arg), arg) for arg in ast["args"]]
            if len(args) == 1:
                tensor, column = args[0]
                members.setdefault((name, tensor, 0, None), []).append((key(ast), column))
                continue
            # + and * are exactly commutative in IEEE arithmetic (NaN included): either side
            # may be the anchor; otherwise the side that is a column is.
            sides = [0, 1] if name in ("+", "*") else [0 if isinstance(args[0], tuple) else 1]
            for side in sides:
                if not isinstance(args[side], tuple):
                    continue
                tensor, column = args[side]
                other = args[1 - side]
                step: tuple[Any, ...]
                if isinstance(other, tuple):
                    step = (name, tensor, side, ("column", other[0]))
                    wanted = lined_up.setdefault((tensor, other[0]), {})
                    if wanted.setdefault(column, other[1]) != other[1]:
                        continue
                elif isinstance(other, str):
                    step = (name, tensor, side, ("scalar", other))
                else:
                    step = (name, tensor, side, ("number",))
                    number = float(np.float32(other["num"]))
                    if numbers.setdefault(step, {}).setdefault(column, number) != number:
                        continue
                members.setdefault(step, []).append((key(ast), column))
                break
        lined = {pair: self.gather(*pair, columns) for pair, columns in lined_up.items()}
        done = []
        for step, placed in members.items():
            name, tensor, side, other = step
            if other is None:
                inputs = [tensor]
            else:
                if other[0] == "column":
                    value = lined[(tensor, other[1])]
                elif other[0] == "scalar":
                    value = other[1]
                else:
                    value = self.numbers(numbers[step], self.width[tensor])
                inputs = [tensor, value] if side == 0 else [value, tensor]
            output = self.operation(name, inputs)
            self.width[output] = self.width[tensor]
            for done_key, column in placed:
                self.placed[done_key] = (output, column)
                done.append(done_key)
        return done

    def gather(self, anchor: str, source: str, columns: Mapping[int, int]) -> str:
        """A tensor as wide as `anchor` with source's column `columns[j]` in column j."""
        import numpy as np
        from onnx import helper

        width = self.width[source]
        index = [columns.get(j, j if j < width else 0) for j in range(self.width[anchor])]
        if anchor == source and index == list(range(width)):
            return source
        name = f"derived/{len(self.nodes)}_gather"
        self.nodes.append(
            helper.make_node("Gather", [source, self.initializer(np.array(index))], [name], axis=1)
        )
        self.width[name] = len(index)
        return name

    def operation(self, name: str, inputs: Sequence[str]) -> str:
        """One operation's node (log1p: Log(Add(a, 1)), as training computes it)."""
        from onnx import helper

        if name == "log1p":
            inputs = [self.operation("+", [inputs[0], self.constant(1.0)])]
        op = {**UNARY, **BINARY}[name]
        output = f"derived/{len(self.nodes)}_{op.lower()}"
        self.nodes.append(helper.make_node(op, list(inputs), [output]))
        return output

    def repeat(self, scalar: str) -> str:
        """A scalar as a column [N, 1], N the source's rows."""
        import numpy as np
        from onnx import helper

        first = self.initializer(np.array([0]))
        names = [f"derived/{len(self.nodes)}_{op}" for op in ("gather", "shape", "expand")]
        self.nodes += [
            helper.make_node("Gather", [self.source, first], [names[0]], axis=1),
            helper.make_node("Shape", [names[0]], [names[1]]),
            helper.make_node("Expand", [scalar, names[1]], [names[2]]),
        ]
        self.width[names[2]] = 1
        return names[2]

    def scalar(self, ast: Mapping[str, Any]) -> str:
        """The tensor of an expression that reads no column: a scalar, computed in the graph."""
        if "num" in ast:
            return self.constant(ast["num"])
        if key(ast) not in self.placed:
            name = ast.get("op", ast.get("fn"))
            self.placed[key(ast)] = self.operation(name, [self.scalar(a) for a in ast["args"]])
        return self.placed[key(ast)]  # type: ignore[return-value]

    def constant(self, value: float) -> str:
        """A float32 scalar."""
        import numpy as np

        return self.initializer(np.array(value, np.float32))

    def numbers(self, values: Mapping[int, float], width: int) -> str:
        """Constants to line up with a tensor's columns: a scalar when they agree, else a row
        (1 in the columns nobody reads)."""
        import numpy as np

        if len(set(values.values())) == 1:
            return self.constant(next(iter(values.values())))
        row = np.ones(width, np.float32)
        row[list(values)] = list(values.values())
        return self.initializer(row)

    def initializer(self, array: Any) -> str:
        """A constant tensor in the graph, added once."""
        from onnx import numpy_helper

        lookup = (array.dtype.str, array.shape, array.tobytes())
        if lookup not in self.constants:
            name = f"derived/{array.dtype.name}_{len(self.constants)}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self.constants[lookup] = name
        return self.constants[lookup]


def key(ast: Mapping[str, Any]) -> str:
    """One text per expression, so a value used twice is computed once."""
    return json.dumps(ast, sort_keys=True)


def uses_a_column(ast: Mapping[str, Any]) -> bool:
    """Whether an expression reads any raw column."""
    return "col" in ast or any(uses_a_column(arg) for arg in ast.get("args", ()))


def rising_steps(ast: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[tuple[str, float]]]:
    """Split `core * c + d ...` (c > 0) into the core and its last steps, each a constant added,
    subtracted or multiplied by. Such steps never lower a value, so a tree can compare the core
    with a moved threshold instead (`fold_into_thresholds`) and the graph computes them not."""
    import numpy as np

    steps: list[tuple[str, float]] = []
    while ast.get("op") in ("+", "-", "*"):
        left, right = ast["args"]
        core, number = (left, right) if "num" in right else (right, left)
        if "num" not in number or not uses_a_column(core) or (ast["op"] == "-" and core is right):
            break
        constant = np.float32(number["num"])
        if not np.isfinite(constant) or (ast["op"] == "*" and constant <= 0):
            break
        steps.append((ast["op"], float(constant)))
        ast = core
    return ast, steps[::-1]


def fold_into_thresholds(steps: Sequence[tuple[str, float]], thresholds: Any) -> Any:
    """For each float32 threshold t, the largest float32 p with f(p) <= t, f the steps in order.

    f rounds each step to float32 as the graph would and never decreases, so `f(p) <= t` holds
    exactly when `p <= that p`: the trees give every input the same branch as before. Found by
    bisection over the float32 values in order, for all thresholds at once.
    """
    import numpy as np

    def f(p: Any) -> Any:
        with np.errstate(all="ignore"):
            for op, constant in steps:
                c = np.float32(constant)
                p = p * c if op == "*" else p + c if op == "+" else p - c
        return p

    def to_float(order: Any) -> Any:  # the order of a float32 -> the float32
        bits = np.where(order >= 0, order, (-order - 1) | 0x80000000)
        return bits.astype(np.uint32).view(np.float32)

    t = np.asarray(thresholds, np.float32)
    infinity = int(np.float32(np.inf).view(np.uint32))
    low = np.full(t.shape, -infinity - 1, np.int64)  # -inf: f(-inf) = -inf <= t
    high = np.full(t.shape, infinity + 1, np.int64)  # beyond +inf
    while np.any(high - low > 1):
        middle = (low + high) // 2
        fits = f(to_float(middle)) <= t
        low, high = np.where(fits, middle, low), np.where(fits, high, middle)
    return to_float(low)


def compute_derived_in_graph(
    graph: onnx.GraphProto,
    features: Sequence[str],
    derived: Sequence[Mapping[str, Any]],
    source: str = INPUT_NAME,
) -> None:
    """Give the graph the input `source` [N, features] and compute in front of the trees the
    derived columns they split on; the trees' feature numbers are changed to the columns where
    those values are."""
    from onnx import TensorProto, helper

    trees = [node for node in graph.node if TREE_INPUT_NAME in node.input]
    if not trees or any(not node.op_type.startswith("TreeEnsemble") for node in trees):
        raise ScriptError(f"the converted model's {TREE_INPUT_NAME} is not read by trees only")
    splits = [TreeSplits(node) for node in trees]
    raw = len(features)
    used = sorted({int(f) - raw for s in splits for f in s.features[s.branch] if f >= raw})
    cores, folds = {}, {}
    for i in used:
        core, steps = rising_steps(derived[i]["ast"])
        if steps and all(s.only_leq(raw + i) for s in splits):
            cores[i], folds[i] = core, steps
        else:
            cores[i] = derived[i]["ast"]
    front, tree_input, columns = derived_front(features, [cores[i] for i in used], source)
    moved = {raw + i: column for i, column in zip(used, columns, strict=True)}
    for s in splits:
        for feature, steps in folds.items():
            at = s.branch & (s.features == raw + feature)
            s.values[at] = fold_into_thresholds(steps, s.values[at])
        s.features[s.branch] = [moved.get(int(f), int(f)) for f in s.features[s.branch]]
        s.write()
    for node in trees:
        node.input[:] = [tree_input if n == TREE_INPUT_NAME else n for n in node.input]
    source_info = helper.make_tensor_value_info(source, TensorProto.FLOAT, ["N", raw])
    put_in_front(graph, front.nodes, front.initializers, source_info)


def put_in_front(
    graph: onnx.GraphProto,
    nodes: Sequence[onnx.NodeProto],
    initializers: Sequence[onnx.TensorProto],
    model_input: onnx.ValueInfoProto,
) -> None:
    """Make `nodes` the graph's first operators and `model_input` its only input."""
    del graph.input[:]
    graph.input.append(model_input)
    graph.initializer.extend(initializers)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])


def derived_front(
    features: Sequence[str], asts: Sequence[Mapping[str, Any]], source: str = INPUT_NAME
) -> tuple[Lanes, str, list[int]]:
    """The operators computing `asts` from `source` [N, features]: (builder, the tensor they
    end in, each value's column in it). That tensor is the source itself, followed by the
    computed tensors that hold a value, or just the source when every value is a column of it."""
    from onnx import helper

    front = Lanes(features, source)
    with_columns = [ast for ast in asts if uses_a_column(ast)]
    found = dict(zip(map(key, with_columns), front.columns(with_columns), strict=True))
    places = [
        found[key(ast)] if key(ast) in found else (front.repeat(front.scalar(ast)), 0)
        for ast in asts  # a constant: never split on in practice, but computed if it is
    ]
    tensors = list(dict.fromkeys([source, *(tensor for tensor, _ in places)]))
    if tensors == [source]:
        return front, source, [column for _, column in places]
    offsets, width = {}, 0
    for tensor in tensors:
        offsets[tensor], width = width, width + front.width[tensor]
    front.nodes.append(helper.make_node("Concat", tensors, [TREE_INPUT_NAME], axis=1))
    return front, TREE_INPUT_NAME, [offsets[tensor] + column for tensor, column in places]


class TreeSplits:
    """The split nodes of a tree-ensemble operator: feature numbers, modes and thresholds."""

    def __init__(self, node: onnx.NodeProto) -> None:
        import numpy as np

        self.node = node
        attributes = {a.name: a for a in node.attribute}
        if not {"nodes_featureids", "nodes_modes", "nodes_values"} <= set(attributes):
            raise ScriptError(f"the converted trees ({node.op_type}) have no nodes_values")
        self.features = np.array(attributes["nodes_featureids"].ints, np.int64)
        self.modes = np.array([m.decode() for m in attributes["nodes_modes"].strings])
        self.values = np.array(attributes["nodes_values"].floats, np.float32)
        self.branch = self.modes != "LEAF"

    def only_leq(self, feature: int) -> bool:
        """Whether every split on `feature` is `x <= threshold`."""
        return bool(all(self.modes[self.branch & (self.features == feature)] == "BRANCH_LEQ"))

    def write(self) -> None:
        for attribute in self.node.attribute:
            if attribute.name == "nodes_featureids":
                attribute.ints[:] = [int(f) for f in self.features]
            elif attribute.name == "nodes_values":
                attribute.floats[:] = [float(v) for v in self.values]


def add_alarm(model: onnx.ModelProto, threshold: float) -> None:
    """Add `failure_alarm` = failure_probability >= threshold, and the opset that needs."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(threshold, np.float32), "threshold"))
    graph.node.append(helper.make_node("GreaterOrEqual", [OUTPUT_NAME, "threshold"], [ALARM_NAME]))
    graph.output.append(helper.make_tensor_value_info(ALARM_NAME, TensorProto.BOOL, ["N"]))
    opsets = {opset.domain: opset.version for opset in model.opset_import}
    for domain in ("", "ai.onnx"):
        if domain in opsets:
            # The converter's own default-domain operators (Identity, Cast, Mul, Gather) mean
            # the same from its opset 9 up to 13.
            opsets[domain] = max(opsets[domain], MIN_OPSET)
    # In domain order: the converter lists them in set order, which varies with the hash seed,
    # and the same training should give the same bytes.
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)


# --- window statistics ------------------------------------------------------------------------
# A window is [N, length, columns] float32, oldest bucket first. Its features are, for each
# column in the spec's order, each statistic in the spec's order, named `<column>__<stat>`.
# Windows hold no NaN or infinity: the extraction forward-fills a gap or leaves the window out.
# NaN-aware statistics would need masks, counts, per-row slope denominators and a search for
# the last present bucket, about three times the operators of the plain ones below, on every
# single-row prediction; filling a gap costs the extraction one pass, the same in training and
# serving. The statistics are population ones: std divides by length, slope is the least-squares
# change per bucket (0 for a window of one bucket), delta is last - first.

WINDOW_INPUT_NAME = "window"
WINDOW_OUTPUT_NAME = "window_features"
WINDOW_STATS = ("mean", "std", "min", "max", "slope", "last", "delta")


def window_spec(value: Any) -> dict[str, Any]:
    """A checked window spec: `interval`, `length` >= 1, distinct `columns`, known `stats`, and
    `intervalSeconds` when given."""
    if not isinstance(value, Mapping):
        raise ScriptError("the window spec must be an object with interval, length, columns, stats")
    length, columns, stats = value.get("length"), value.get("columns"), value.get("stats")
    if not isinstance(value.get("interval"), str) or not value["interval"]:
        raise ScriptError('window spec: "interval" must be a duration such as "10min"')
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ScriptError(f'window spec: "length" must be a whole number >= 1, not {length!r}')
    for field, names, allowed in (("columns", columns, None), ("stats", stats, WINDOW_STATS)):
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ScriptError(f'window spec: "{field}" must be a non-empty list of names')
        if len(set(names)) != len(names):
            raise ScriptError(f'window spec: "{field}" names one entry twice: {names}')
        unknown = [n for n in names if allowed is not None and n not in allowed]
        if unknown:
            raise ScriptError(f"window spec: unknown stats {unknown}; known: {list(WINDOW_STATS)}")
    spec = {"interval": value["interval"], "length": length, "columns": columns, "stats": stats}
    seconds = value.get("intervalSeconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
            raise ScriptError(f'window spec: "intervalSeconds" must be >= 1, not {seconds!r}')
        spec["intervalSeconds"] = seconds
    return spec


def window_feature_names(spec: Mapping[str, Any]) -> list[str]:
    """The features' names in their order: each column, then each statistic of it."""
    return [f"{column}__{stat}" for column in spec["columns"] for stat in spec["stats"]]


def slope_weights(length: int) -> np.ndarray:
    """w with w @ x = the least-squares slope of x per bucket (all zero for one bucket)."""
    import numpy as np

    centred = np.arange(length, dtype=np.float64) - (length - 1) / 2
    spread = float(centred @ centred)
    return centred / spread if spread else centred


def window_features(window: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """The statistics of each window, [N, columns * stats] float32 (computed in float64)."""
    import numpy as np

    spec = window_spec(spec)
    shape = (spec["length"], len(spec["columns"]))
    if window.ndim != 3 or window.shape[1:] != shape:
        raise ScriptError(f"windows must be [N, {shape[0]}, {shape[1]}], not {list(window.shape)}")
    # [N, columns, length], contiguous: every reduction runs over adjacent values (about seven
    # times faster than across the middle axis). The service's reference does the same steps.
    x = np.ascontiguousarray(window.transpose(0, 2, 1), dtype=np.float64)
    finite = np.asarray(np.isfinite(x).all(axis=(0, 2)))
    names = [c for j, c in enumerate(spec["columns"]) if not finite[j]]
    if names:
        raise ScriptError(
            f"windows of {names} hold NaN or infinity: forward-fill gaps or leave the window out"
        )
    mean = x.mean(axis=2)
    centred = x - mean[:, :, None]
    computed = {
        "mean": lambda: mean,
        "std": lambda: np.sqrt((centred**2).mean(axis=2)),
        "min": lambda: x.min(axis=2),
        "max": lambda: x.max(axis=2),
        "slope": lambda: centred @ slope_weights(shape[0]),
        "last": lambda: x[:, :, -1],
        "delta": lambda: x[:, :, -1] - x[:, :, 0],
    }
    stats = np.stack([computed[stat]() for stat in spec["stats"]], axis=2)  # [N, C, S]
    return stats.reshape(len(x), -1).astype(np.float32)


def window_front(spec: Mapping[str, Any]) -> tuple[list[Any], list[Any], str, int]:
    """The operators computing `window_features` from input `window` [N, length, columns]:
    (nodes, initializers, output name, output width).

    The window is turned to [N, columns, length]; each reduction adds one value per column
    behind its buckets (and the window minus its mean behind them, for std and slope), and one
    MatMul with a fixed matrix then gives every statistic in order: mean, slope, last and delta
    are weighted sums, the others are picked. Slope is taken from the centred buckets, so a
    large level does not swamp a small trend in float32.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    spec = window_spec(spec)
    length, stats = spec["length"], spec["stats"]
    nodes = [helper.make_node("Transpose", [WINDOW_INPUT_NAME], ["window/t"], perm=[0, 2, 1])]
    pieces, rows = window_pieces(nodes, length, stats)
    weights = np.zeros((sum(size for _, size in pieces), len(stats)), np.float64)
    start, offset = {}, 0
    for name, size in pieces:
        start[name], offset = offset, offset + size
    for j, stat in enumerate(stats):
        for piece, row, weight in rows[stat]:
            weights[start[piece] + row, j] += weight
    stacked = "window/t"
    if len(pieces) > 1:
        stacked = "window/stacked"
        nodes.append(helper.make_node("Concat", [name for name, _ in pieces], [stacked], axis=2))
    matrix = numpy_helper.from_array(weights.astype(np.float32), "window/weights")
    nodes += [
        helper.make_node("MatMul", [stacked, matrix.name], ["window/stats"]),  # [N, C, S]
        helper.make_node("Flatten", ["window/stats"], [WINDOW_OUTPUT_NAME], axis=1),
    ]
    return nodes, [matrix], WINDOW_OUTPUT_NAME, len(spec["columns"]) * len(stats)


def window_pieces(
    nodes: list[Any], length: int, stats: Sequence[str]
) -> tuple[list[tuple[str, int]], dict[str, list[tuple[str, int, float]]]]:
    """Append the reductions `stats` need; returns the tensors to stack behind the buckets
    (name, size) and, per statistic, the (tensor, index, weight) terms that sum to it."""
    from onnx import helper

    pieces = [("window/t", length)]

    def reduce(op: str, source: str) -> str:
        name = f"window/{op.lower()}"
        nodes.append(helper.make_node(op, [source], [name], axes=[2], keepdims=1))
        pieces.append((name, 1))
        return name

    rows: dict[str, list[tuple[str, int, float]]] = {
        "last": [("window/t", length - 1, 1.0)],
        "delta": [("window/t", length - 1, 1.0), ("window/t", 0, -1.0)],
        "mean": [("window/t", i, 1 / length) for i in range(length)],
    }
    if "std" in stats or "slope" in stats:
        mean = reduce("ReduceMean", "window/t")
        nodes.append(helper.make_node("Sub", ["window/t", mean], ["window/centred"]))
        pieces.append(("window/centred", length))
        rows["mean"] = [(mean, 0, 1.0)]
        rows["slope"] = [("window/centred", i, w) for i, w in enumerate(slope_weights(length))]
        if "std" in stats:  # sqrt(sum of squares / length) = L2 norm / sqrt(length)
            rows["std"] = [(reduce("ReduceL2", "window/centred"), 0, length**-0.5)]
    for stat, op in (("min", "ReduceMin"), ("max", "ReduceMax")):
        if stat in stats:
            rows[stat] = [(reduce(op, "window/t"), 0, 1.0)]
    return pieces, rows


# --- the run ----------------------------------------------------------------------------------


class HideModules:
    """An import hook that makes the named packages look absent, like `pip uninstall` would.

    This script never uses pandas or scikit-learn, but LightGBM imports both when present and
    pyarrow imports pandas on its first conversion to numpy: ~1.2 s of start-up together.
    """

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)


def holdout_metrics(
    probability: np.ndarray, y: np.ndarray, threshold: float
) -> dict[str, float | None]:
    """Accuracy, precision, recall, F1 (at the threshold) and ROC AUC of holdout predictions."""
    import numpy as np

    predicted = probability.astype(np.float32) >= threshold  # as the model's float32 alarm
    actual = y == 1
    tp = int(np.count_nonzero(predicted & actual))
    fp = int(np.count_nonzero(predicted & ~actual))
    fn = int(np.count_nonzero(~predicted & actual))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": float(np.count_nonzero(predicted == actual) / len(y)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "auc": roc_auc(probability, actual),
    }


def roc_auc(score: np.ndarray, actual: np.ndarray) -> float | None:
    """ROC AUC by the rank-sum formula with tied scores sharing their average rank."""
    import numpy as np

    positives = int(np.count_nonzero(actual))
    negatives = len(actual) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(score, kind="stable")
    ordered = score[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(group_rank, ends - starts)
    rank_sum = float(ranks[actual[order]].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name next to `path`, fsync, then rename over it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def run(config_path: Path) -> dict[str, Any]:
    """Do the whole job for one config; returns the metrics written to metrics.json."""
    config = load_config(config_path)
    emit("start", organizationId=config["organizationId"], version=config["version"])
    output = Path(config["outputPath"])
    if not output.is_dir():
        raise ScriptError(f"outputPath {output} is not a directory; create it before training")
    params, iterations = lightgbm_params(config["hyperparameters"])
    policy, seed = config["decisionPolicy"], int(params["seed"])
    data = load_data(config)
    check_rows(
        data, config["innerValidationSplit"], policy, bool(params.get("early_stopping_round"))
    )
    spec, derived = config["windows"], config["derivedFeatures"]
    features = window_feature_names(spec) if spec else config["featureColumns"]
    emit(
        "loaded",
        rows=data.train_rows,
        fitRows=len(data.fit[1]),
        innerRows=len(data.inner[1]),
        holdoutRows=data.holdout_rows,
        features=len(features),
        derivedFeatures=len(derived),
    )
    fit_start = time.perf_counter()
    names = [*features, *(feature["name"] for feature in derived)]
    booster = fit(params, iterations, data.fit, data.inner, names)
    fit_seconds = time.perf_counter() - fit_start
    threshold, probability, export_seconds = export_and_score(booster, data, config, output, seed)
    metrics: dict[str, Any] = holdout_metrics(probability, data.holdout[1], threshold)
    metrics.update(decisions(booster, data, policy, threshold, seed))
    metrics["purge_gap_s"] = config["purgeGapSeconds"]
    metrics.update(fit_seconds=round(fit_seconds, 3), export_seconds=round(export_seconds, 3))
    write_atomically(output / "metrics.json", json.dumps(metrics, indent=2).encode("utf-8"))
    emit("done", metrics=metrics)
    return metrics


def decisions(
    booster: lightgbm.Booster, data: Data, policy: Mapping[str, Any], threshold: float, seed: int
) -> dict[str, Any]:
    """What the training chose, and on how many rows, for metrics.json."""
    used = booster.best_iteration or booster.current_iteration()  # early stopping's, or the last
    return {
        "decision_threshold": threshold,
        "decision_policy": policy,
        "num_iterations": used,
        "best_iteration": used,
        "seed": seed,
        "train_rows": data.train_rows,
        "fit_rows": len(data.fit[1]),
        "inner_rows": len(data.inner[1]),
        "inner_positives": int(data.inner[1].sum()),
        "holdout_rows": data.holdout_rows,
        "holdout_rows_scored": len(data.holdout[1]),
    }


def export_and_score(
    booster: lightgbm.Booster, data: Data, config: Mapping[str, Any], output: Path, seed: int
) -> tuple[float, np.ndarray, float]:
    """Choose the threshold and write model.onnx and model.txt while scoring the holdout.

    Returns (threshold, holdout probabilities, export seconds). Prediction runs in LightGBM's C++
    code without the GIL, so scoring the inner fold and the holdout overlaps the conversion,
    which is mostly Python. predict() uses the best iteration after early stopping.
    """
    import numpy as np

    policy = config["decisionPolicy"]
    with ThreadPoolExecutor(max_workers=1) as pool:
        inner = pool.submit(inner_probability, booster, data, policy)
        scoring = pool.submit(booster.predict, data.holdout[0])
        started = time.perf_counter()
        model_text = booster.model_to_string()
        model = convert(model_text, config)
        threshold = choose_threshold(policy, inner.result(), data.inner[1])
        onnx_bytes = finish(model, config, threshold, seed)
        write_atomically(output / "model.onnx", onnx_bytes)
        write_atomically(output / "model.txt", model_text.encode("utf-8"))
        export_seconds = time.perf_counter() - started
        emit("exported", modelBytes=len(onnx_bytes), seconds=round(export_seconds, 3))
        return threshold, np.asarray(scoring.result()), export_seconds


def main(argv: Sequence[str]) -> int:
    """Entry point: exactly one argument, the config path; exit status 0 on success."""
    if len(argv) != 1:
        message = "usage: train_model.py <config.json> (exactly one argument, the config path)"
        emit("error", message=message)
        print(message, file=sys.stderr)
        return 2
    try:
        run(Path(argv[0]))
    except ScriptError as exc:
        return fail(str(exc))
    except MemoryError:
        return fail("out of memory while training; raise the memory limit or shorten dataRange")
    except Exception as exc:
        return fail(f"{type(exc).__name__}: {exc}")
    return 0


def fail(message: str) -> int:
    """Report an error on stdout (JSON) and stderr (plain); returns the exit status."""
    emit("error", message=message)
    print(f"train_model.py: error: {message}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.meta_path.insert(0, HideModules("pandas", "sklearn"))
    reserve_stdout()
    status = main(sys.argv[1:])
    for stream in (*_PROGRESS, sys.stdout, sys.stderr):
        stream.flush()
    # Every output is written and fsynced; skipping interpreter teardown (freeing the data,
    # stopping OpenMP threads) saves ~0.1 s per run.
    os._exit(status)
