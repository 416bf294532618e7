/**
 * loadModel on the model the training test deployed: the same probabilities and decisions as the
 * Python model cache on the same rows (NODE_TEST_EXPECTED, written by the pytest wrapper), and
 * the refusals a prediction service relies on.
 */

import assert from "node:assert/strict";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { test } from "node:test";

import { type Deployment, loadModel, ModelRejectedError } from "../src/index.js";
import { setting } from "./support.js";

interface Expected {
  deployment: Deployment;
  featureColumns: string[];
  rows: number[][];
  probabilities: number[];
  alarms: boolean[];
  threshold: number;
}

const ML_BASE_PATH = setting("ML_BASE_PATH");
const SCRATCH = setting("NODE_TEST_SCRATCH");
const expected = JSON.parse(await readFile(setting("NODE_TEST_EXPECTED"), "utf-8")) as Expected;
const deployment = expected.deployment;

test("a deployed model predicts what the Python model cache predicts on the same rows", async () => {
  const model = await loadModel(deployment, { mlBasePath: ML_BASE_PATH });
  try {
    assert.equal(model.version, deployment.version);
    assert.deepEqual(model.featureColumns, expected.featureColumns);
    const prediction = await model.predict(expected.rows);
    assert.equal(prediction.threshold, expected.threshold);
    assert.equal(prediction.probabilities.length, expected.rows.length);
    const worst = Math.max(
      ...prediction.probabilities.map((p, i) =>
        Math.abs(p - (expected.probabilities[i] as number)),
      ),
    );
    assert.ok(worst <= 1e-6, `probabilities differ from Python's by up to ${worst}`);
    assert.deepEqual(prediction.alarms, expected.alarms);
    assert.ok(
      prediction.alarms.some(Boolean) && !prediction.alarms.every(Boolean),
      "rows of both classes",
    );
  } finally {
    await model.release();
  }
});

test("a model file whose sha256 differs from the deployment's is refused", async () => {
  const data = await readFile(deployment.modelPath);
  data.writeUInt8((data.at(-1) as number) ^ 0xff, data.length - 1);
  const tampered = await place(data, "tampered");
  await assert.rejects(
    loadModel({ ...deployment, modelPath: tampered }, { mlBasePath: ML_BASE_PATH }),
    (error) =>
      error instanceof ModelRejectedError &&
      /has sha256 [0-9a-f]{64}, the deployment says/.test(error.message),
  );
});

test("a model file of another version is refused by its metadata", async () => {
  const other = { ...deployment, version: "v2026-01-01T00-00-00-000Z_00000000" };
  await assert.rejects(
    loadModel(other, { mlBasePath: ML_BASE_PATH }),
    (error) => error instanceof ModelRejectedError && /metadata version=/.test(error.message),
  );
});

test("a model path outside the organization's folder is refused", async () => {
  const outside = path.join(SCRATCH, "model.onnx");
  await mkdir(SCRATCH, { recursive: true });
  await copyFile(deployment.modelPath, outside);
  await assert.rejects(
    loadModel({ ...deployment, modelPath: outside }, { mlBasePath: ML_BASE_PATH }),
    (error) =>
      error instanceof ModelRejectedError && /outside .*the model folder/.test(error.message),
  );
});

/** Write `data` as a model file inside the organization's folder, under `name`. */
async function place(data: Uint8Array, name: string): Promise<string> {
  const dir = path.join(ML_BASE_PATH, "models", deployment.organizationId, name);
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, "model.onnx");
  await writeFile(file, data);
  return file;
}
