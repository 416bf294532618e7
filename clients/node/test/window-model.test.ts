/**
 * loadModel on a window model (input `window` [N, length, columns]): exactly the probabilities
 * and alarms the Python model cache computes on the same windows (NODE_TEST_WINDOW_EXPECTED,
 * written by the pytest wrapper), the shape and gap refusals, and files whose window metadata
 * and input disagree refused at load.
 */

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";

import { type Deployment, loadModel, ModelRejectedError, type WindowSpec } from "../src/index.js";
import { setting } from "./support.js";

interface Expected {
  deployment: Deployment;
  window: WindowSpec;
  windows: number[][][];
  probabilities: number[];
  alarms: boolean[];
  threshold: number;
  /** Deployed files that must be refused, and a pattern of the reason. */
  refused: { deployment: Deployment; reason: string }[];
}

const ML_BASE_PATH = setting("ML_BASE_PATH");
const expected = JSON.parse(
  await readFile(setting("NODE_TEST_WINDOW_EXPECTED"), "utf-8"),
) as Expected;

test("a window model predicts exactly what the Python model cache predicts on the same windows", async () => {
  const model = await loadModel(expected.deployment, { mlBasePath: ML_BASE_PATH });
  try {
    assert.deepEqual(model.window, expected.window);
    assert.deepEqual(model.featureColumns, expected.window.columns);
    const prediction = await model.predict(expected.windows);
    assert.deepEqual(prediction.probabilities, expected.probabilities);
    assert.deepEqual(prediction.alarms, expected.alarms);
    assert.equal(prediction.threshold, expected.threshold);
    assert.ok(prediction.alarms.some(Boolean) && !prediction.alarms.every(Boolean));
  } finally {
    await model.release();
  }
});

test("one window alone gets the probability it gets in a batch", async () => {
  const model = await loadModel(expected.deployment, { mlBasePath: ML_BASE_PATH });
  try {
    const one = await model.predict(expected.windows[2] as number[][]);
    assert.deepEqual(one.probabilities, [expected.probabilities[2]]);
  } finally {
    await model.release();
  }
});

test("windows of another shape, and rows, are refused naming the window's shape and columns", async () => {
  const model = await loadModel(expected.deployment, { mlBasePath: ML_BASE_PATH });
  const { length, columns } = expected.window;
  const bucket = columns.map(() => 1);
  try {
    for (const input of [
      [Array.from({ length: length - 1 }, () => bucket)],
      [Array.from({ length }, () => [...bucket, 1])],
      [bucket],
      [],
    ]) {
      await assert.rejects(
        model.predict(input),
        (error) =>
          error instanceof TypeError &&
          error.message.includes(`[nWindows, ${length}, ${columns.length}]`) &&
          error.message.includes(JSON.stringify(columns)) &&
          error.message.includes("oldest first"),
      );
    }
  } finally {
    await model.release();
  }
});

test("a window holding NaN or infinity is refused naming the window and column", async () => {
  const model = await loadModel(expected.deployment, { mlBasePath: ML_BASE_PATH });
  const windows = expected.windows.slice(0, 4).map((w) => w.map((bucket) => [...bucket]));
  (windows[3] as number[][])[5] = [1, Number.NaN];
  try {
    await assert.rejects(
      model.predict(windows),
      (error) =>
        error instanceof RangeError &&
        /window 3 holds NaN or infinity in "temperature"/.test(error.message),
    );
  } finally {
    await model.release();
  }
});

test("a window model whose metadata and input disagree is refused at load", async () => {
  assert.ok(expected.refused.length > 0);
  for (const { deployment, reason } of expected.refused) {
    await assert.rejects(
      loadModel(deployment, { mlBasePath: ML_BASE_PATH }),
      (error) => error instanceof ModelRejectedError && new RegExp(reason).test(error.message),
      `${deployment.version} should be refused with ${reason}`,
    );
  }
});
