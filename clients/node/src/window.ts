/**
 * The window a window model takes, as `workers/model_cache/window.py` reads it: input `window`
 * float32 [N, length, columns] (for each example the last `length` buckets of `interval` of one
 * asset, oldest first), described by the metadata `window`; the graph computes the statistics.
 * A file whose input and metadata disagree is refused, and so are windows of another shape or
 * holding NaN or infinity (the model was trained on windows without gaps).
 */

import { ModelRejectedError } from "./errors.js";

export const WINDOW_INPUT = "window";
const EXPORT_AGAIN = "export the model again with the training script";
/** Values in one window, as the Python model cache allows: a larger claim would make the warm-up allocate it. */
const MAX_WINDOW_VALUES = 2 ** 20;

/** What one window of a window model holds: its metadata `window`. */
export interface WindowSpec {
  interval: string;
  intervalSeconds: number;
  length: number;
  columns: string[];
  stats: string[];
}

/** One row of `featureColumns` values, or one bucket of a window's columns. */
export type Row = readonly number[];
/** One window: `length` buckets, oldest first. */
export type Window = readonly Row[];

/** The window of a model's metadata; null for a model on single readings. */
export function windowOf(metadata: Map<string, string>, file: string): WindowSpec | null {
  const raw = metadata.get("window");
  if (raw === undefined) return null;
  let doc: unknown;
  try {
    doc = JSON.parse(raw);
  } catch {
    doc = null;
  }
  const spec = doc as Partial<WindowSpec> | null;
  if (
    spec === null ||
    typeof spec !== "object" ||
    typeof spec.interval !== "string" ||
    !isWhole(spec.intervalSeconds) ||
    !isWhole(spec.length) ||
    !isNames(spec.columns) ||
    !isNames(spec.stats)
  ) {
    throw new ModelRejectedError(
      `model file ${file} has malformed metadata window (${raw.slice(0, 200)}); it must be JSON ` +
        `{"interval", "intervalSeconds", "length", "columns", "stats"}, ${EXPORT_AGAIN}`,
    );
  }
  const { interval, intervalSeconds, length, columns, stats } = spec as WindowSpec;
  if (length * columns.length > MAX_WINDOW_VALUES) {
    throw new ModelRejectedError(
      `model file ${file} takes windows of ${length} x ${columns.length} values, more than the ` +
        `${MAX_WINDOW_VALUES} this client takes; train it on a shorter window or fewer columns`,
    );
  }
  return { interval, intervalSeconds, length, columns, stats };
}

/** The statistics the graph computes, in its order: `<column>__<stat>`. */
export function windowFeatureNames(window: WindowSpec): string[] {
  return window.columns.flatMap((column) => window.stats.map((stat) => `${column}__${stat}`));
}

/** Refuse a model whose input and metadata disagree on taking windows, or on their shape. */
export function checkWindowModel(
  window: WindowSpec | null,
  inputName: string,
  dims: readonly (number | string)[],
  metadata: Map<string, string>,
  featureColumns: readonly string[],
  file: string,
): void {
  if (window === null) {
    if (inputName === WINDOW_INPUT || dims.length === 3) {
      throw new ModelRejectedError(
        `model file ${file} takes input ${JSON.stringify(inputName)} of shape ` +
          `${JSON.stringify(dims)}, a window, but has no window metadata saying its length and ` +
          `columns; ${EXPORT_AGAIN}`,
      );
    }
    return;
  }
  const expected = [window.length, window.columns.length];
  const fits =
    dims.length === 3 &&
    expected.every((want, i) => typeof dims[i + 1] !== "number" || dims[i + 1] === want);
  if (!fits) {
    throw new ModelRejectedError(
      `model file ${file} has metadata window for windows [N, ${expected.join(", ")}], but ` +
        `takes input ${JSON.stringify(inputName)} of shape ${JSON.stringify(dims)}; ` +
        `${EXPORT_AGAIN} (input "window" [N, ${expected.join(", ")}])`,
    );
  }
  if (JSON.stringify(featureColumns) !== JSON.stringify(window.columns)) {
    throw new ModelRejectedError(
      `model file ${file} has feature_columns ${JSON.stringify(featureColumns)}, but its window ` +
        `holds the columns ${JSON.stringify(window.columns)}; ${EXPORT_AGAIN}`,
    );
  }
  const names = metadata.get("window_feature_columns");
  if (names !== undefined && !sameJson(names, windowFeatureNames(window))) {
    throw new ModelRejectedError(
      `model file ${file} has metadata window_feature_columns ${names.slice(0, 200)}, not the ` +
        `statistics of its window ${JSON.stringify(windowFeatureNames(window))}; ${EXPORT_AGAIN}`,
    );
  }
}

/**
 * Windows [n][length][columns] (or one window [length][columns]) as one float32 buffer;
 * TypeError naming the shape and columns expected, RangeError for NaN or infinity.
 */
export function windowTensorData(
  input: readonly Row[] | readonly Window[],
  window: WindowSpec,
  label: string,
): { data: Float32Array; count: number } {
  const windows: readonly Window[] = isOneWindow(input)
    ? [input as Window]
    : (input as readonly Window[]);
  const { length } = window;
  const width = window.columns.length;
  const fits =
    Array.isArray(windows) &&
    windows.length > 0 &&
    windows.every(
      (w) =>
        Array.isArray(w) &&
        w.length === length &&
        w.every((bucket) => Array.isArray(bucket) && bucket.length === width),
    );
  if (!fits) {
    throw new TypeError(
      `windows must be a non-empty array of windows [nWindows, ${length}, ${width}] ` +
        `(${length} buckets of ${window.interval}, oldest first, each with the columns ` +
        `${JSON.stringify(window.columns)}; ${label}), or one window [${length}, ${width}]`,
    );
  }
  const data = new Float32Array(windows.length * length * width);
  windows.forEach((w: Window, i: number) =>
    w.forEach((bucket: Row, j: number) => data.set(bucket, (i * length + j) * width)),
  );
  const bad = data.findIndex((value) => !Number.isFinite(value));
  if (bad >= 0) {
    const index = Math.floor(bad / (length * width));
    const column = window.columns[bad % width];
    throw new RangeError(
      `window ${index} holds NaN or infinity in ${JSON.stringify(column)} (${label}); the model ` +
        "was trained on windows without gaps: forward-fill a short gap with the last value, or " +
        "skip the asset until it has a whole window",
    );
  }
  return { data, count: windows.length };
}

/** A single window [length][columns]: its first element is a bucket of numbers. */
function isOneWindow(input: unknown): boolean {
  const first = Array.isArray(input) ? (input[0] as unknown) : undefined;
  return Array.isArray(first) && (first.length === 0 || typeof first[0] === "number");
}

function isWhole(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value >= 1;
}

function isNames(value: unknown): value is string[] {
  return Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === "string");
}

function sameJson(raw: string, expected: unknown): boolean {
  try {
    return JSON.stringify(JSON.parse(raw)) === JSON.stringify(expected);
  } catch {
    return false;
  }
}
