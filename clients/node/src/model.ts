/**
 * Load one deployed ONNX model as the Python model cache does: the path must lie in the
 * organization's model folder, the file's sha256 must be the deployment's, the ONNX checks must
 * pass, the metadata must name the deployment's organization and version, the input and outputs
 * must follow the model contract, and one warm-up inference must give a probability.
 *
 * A model takes rows (input `input` [N, features]) or, a window model, windows (input `window`
 * [N, length, columns], its metadata `window` saying the length, interval and columns; see
 * `window.ts`).
 *
 * A model's decision is its own: the `failure_alarm` output where it has one, made in the graph
 * at its `decision_threshold`; a model exported without them decides at probability >= 0.5.
 * The file is read once; the hash is taken over those bytes and the session built from them.
 */

import { createHash } from "node:crypto";
import { open, realpath } from "node:fs/promises";
import path from "node:path";

import * as ort from "onnxruntime-node";

import { ModelRejectedError } from "./errors.js";
import { checkOrgId, type Deployment } from "./hotswap.js";
import { inspectOnnx } from "./onnx-file.js";
import {
  checkWindowModel,
  type Row,
  WINDOW_INPUT,
  type Window,
  windowOf,
  type WindowSpec,
  windowTensorData,
} from "./window.js";

export const PROBABILITY_OUTPUT = "failure_probability";
export const ALARM_OUTPUT = "failure_alarm";
export const DEFAULT_THRESHOLD = 0.5;
export const MAX_MODEL_BYTES = 512 * 1024 * 1024;
const INPUT_NAME = "input";
const SEALED_MAGIC = "MLENC1\n";

export interface LoadOptions {
  /** The model store (ML_BASE_PATH); a relative `modelPath` is taken relative to it. */
  mlBasePath?: string;
  /** onnxruntime's intra-op threads for this session (default 1). */
  intraOpNumThreads?: number;
}

/** What `predict` answers: one probability and one decision per row or window. */
export interface Prediction {
  probabilities: number[];
  alarms: boolean[];
  threshold: number;
}

/** A verified, warmed model of one deployment. */
export interface LoadedModel {
  organizationId: string;
  version: string;
  sequence: number;
  path: string;
  featureColumns: readonly string[];
  /** The decision threshold of the model's metadata (0.5 for an old model). */
  threshold: number;
  /** Whether the model makes its decision itself (a `failure_alarm` output). */
  hasAlarm: boolean;
  /** What one window holds, for a window model (input `window`); null for a model on rows. */
  window: WindowSpec | null;
  /**
   * Probabilities and alarms of rows given in `featureColumns` order, or, for a window model,
   * of windows [n][length][columns] (or one window [length][columns]), oldest bucket first.
   */
  predict(input: readonly Row[] | readonly Window[]): Promise<Prediction>;
  /** Free the native session. */
  release(): Promise<void>;
}

/** Check, open and warm the model of `deployment`; ModelRejectedError says why not. */
export async function loadModel(
  deployment: Deployment,
  options: LoadOptions = {},
): Promise<LoadedModel> {
  const org = deployment.organizationId;
  const base = options.mlBasePath ?? process.env.ML_BASE_PATH ?? "./ml";
  const file = await checkModelPath(base, org, deployment.modelPath);
  const data = await readModel(file);
  checkSha256(data, deployment.sha256, file);
  if (Buffer.from(data.subarray(0, SEALED_MAGIC.length)).toString("latin1") === SEALED_MAGIC) {
    throw new ModelRejectedError(
      `model file ${file} is sealed (the service sets ML_MASTER_KEYS); this client reads plain ` +
        "ONNX files only, serve sealed models with the Python model cache or `trainctl serve`",
    );
  }
  const label = `model file ${file} (organization ${org}, version ${deployment.version})`;
  const { metadata } = inspectOnnx(data, label);
  const featureColumns = checkMetadata(metadata, deployment, file);
  const window = windowOf(metadata, file);
  const session = await createSession(data, file, options.intraOpNumThreads ?? 1);
  let shape: Shape;
  try {
    shape = checkContract(session, file, featureColumns, metadata, window);
  } catch (error) {
    await session.release(); // a refused model keeps no native session
    throw error;
  }
  const model = new Model(
    deployment,
    file,
    featureColumns,
    thresholdOf(metadata, file),
    shape,
    session,
    window,
  );
  await warm(model, file);
  return model;
}

async function checkModelPath(base: string, org: string, modelPath: string): Promise<string> {
  const root = path.resolve(base, "models", checkOrgId(org));
  const candidate = path.resolve(base, modelPath);
  let resolved: string;
  let realRoot: string;
  try {
    [resolved, realRoot] = await Promise.all([realpath(candidate), realpath(root)]);
  } catch {
    throw new ModelRejectedError(
      `model file ${modelPath} of organization ${org} is missing; check that ${root} is the ` +
        "folder the training service deploys to (mlBasePath, ML_BASE_PATH)",
    );
  }
  if (!resolved.startsWith(realRoot + path.sep)) {
    throw new ModelRejectedError(
      `model path ${modelPath} resolves to ${resolved}, outside ${realRoot}, the model folder ` +
        `of organization ${org}; deploy the model into that folder`,
    );
  }
  return resolved;
}

async function readModel(file: string): Promise<Uint8Array> {
  // O_NONBLOCK: opening a FIFO would otherwise wait for a writer for ever.
  const handle = await open(file, "r").catch((error: Error) => {
    throw new ModelRejectedError(
      `cannot open model file ${file}: ${error.message}; check its permissions`,
    );
  });
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new ModelRejectedError(`${file} is not a regular file`);
    if (info.size === 0 || info.size > MAX_MODEL_BYTES) {
      throw new ModelRejectedError(
        `model file ${file} is ${info.size} bytes; a model is 1 byte to ${MAX_MODEL_BYTES} bytes`,
      );
    }
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

function checkSha256(data: Uint8Array, expected: string, file: string): void {
  const actual = createHash("sha256").update(data).digest("hex");
  if (actual !== expected.toLowerCase()) {
    throw new ModelRejectedError(
      `model file ${file} has sha256 ${actual}, the deployment says ${expected}; the file was ` +
        "changed or only partly copied, deploy the version again",
    );
  }
}

function checkMetadata(
  metadata: Map<string, string>,
  deployment: Deployment,
  file: string,
): string[] {
  const expected: [string, string][] = [
    ["organization_id", deployment.organizationId],
    ["version", deployment.version],
  ];
  for (const [key, value] of expected) {
    if (metadata.get(key) !== value) {
      throw new ModelRejectedError(
        `model file ${file} has metadata ${key}=${JSON.stringify(metadata.get(key) ?? null)}, the ` +
          `deployment expects ${JSON.stringify(value)}; the file belongs to another model, ` +
          "deploy the right one",
      );
    }
  }
  let columns: unknown;
  try {
    columns = JSON.parse(metadata.get("feature_columns") ?? "");
  } catch {
    columns = null;
  }
  if (
    !Array.isArray(columns) ||
    columns.length === 0 ||
    !columns.every((c) => typeof c === "string")
  ) {
    throw new ModelRejectedError(
      `model file ${file} lacks a JSON list of names in metadata feature_columns; export it ` +
        "with the training script's metadata",
    );
  }
  return columns as string[];
}

function thresholdOf(metadata: Map<string, string>, file: string): number {
  const raw = metadata.get("decision_threshold");
  if (raw === undefined) return DEFAULT_THRESHOLD;
  const value = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(value) || value < 0 || value > 1) {
    throw new ModelRejectedError(
      `model file ${file} has decision_threshold ${JSON.stringify(raw.slice(0, 40))}, not a ` +
        "probability between 0 and 1; export the model again",
    );
  }
  return value;
}

async function createSession(
  data: Uint8Array,
  file: string,
  threads: number,
): Promise<ort.InferenceSession> {
  try {
    return await ort.InferenceSession.create(data, {
      executionProviders: ["cpu"],
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: "sequential",
      logSeverityLevel: 3,
    });
  } catch (error) {
    throw new ModelRejectedError(
      `model file ${file} is not a loadable ONNX model (${String(error).slice(0, 300)}); ` +
        "deploy a valid version",
    );
  }
}

interface Shape {
  inputName: string;
  outputName: string;
  /** A float32 [N, 2] class-probability output, failure in column 1. */
  probabilityPair: boolean;
  hasAlarm: boolean;
}

function checkContract(
  session: ort.InferenceSession,
  file: string,
  featureColumns: readonly string[],
  metadata: Map<string, string>,
  window: WindowSpec | null,
): Shape {
  const width = featureColumns.length;
  const inputs = session.inputMetadata;
  const known = inputs.filter((i) => i.name === INPUT_NAME || i.name === WINDOW_INPUT);
  const input = known.length === 1 ? known[0] : inputs.length === 1 ? inputs[0] : undefined;
  const dims = input?.isTensor ? input.shape : [];
  if (input !== undefined) {
    checkWindowModel(window, input.name, dims, metadata, featureColumns, file);
  }
  if (
    input === undefined ||
    (window === null && (dims.length !== 2 || (typeof dims[1] === "number" && dims[1] !== width)))
  ) {
    throw new ModelRejectedError(
      `model file ${file} takes inputs ${JSON.stringify(inputs.map((i) => i.name))} of shape ` +
        `${JSON.stringify(dims)}; the model contract is one float32 input ${JSON.stringify(INPUT_NAME)} ` +
        `[N, ${width}] (its feature_columns), or "window" [N, length, columns] with window metadata`,
    );
  }
  const outputs = session.outputMetadata;
  const named = outputs.find((o) => o.name === PROBABILITY_OUTPUT);
  const pair = outputs.find((o) => o.isTensor && o.shape.length === 2 && o.shape[1] === 2);
  const chosen = named ?? pair;
  if (chosen === undefined) {
    throw new ModelRejectedError(
      `model file ${file} has outputs ${JSON.stringify(outputs.map((o) => o.name))}; the model ` +
        `contract needs ${JSON.stringify(PROBABILITY_OUTPUT)} [N] or an [N, 2] probabilities output`,
    );
  }
  const alarm = outputs.find((o) => o.name === ALARM_OUTPUT);
  if (alarm !== undefined && !(alarm.isTensor && alarm.type === "bool")) {
    throw new ModelRejectedError(
      `model file ${file} gives ${ALARM_OUTPUT} not as bool [N]; export the model again`,
    );
  }
  return {
    inputName: input.name,
    outputName: chosen.name,
    probabilityPair: named === undefined,
    hasAlarm: alarm !== undefined,
  };
}

class Model implements LoadedModel {
  readonly organizationId: string;
  readonly version: string;
  readonly sequence: number;
  readonly hasAlarm: boolean;
  private readonly outputs: string[];
  private readonly threshold32: number;

  constructor(
    deployment: Deployment,
    readonly path: string,
    readonly featureColumns: readonly string[],
    readonly threshold: number,
    private readonly shape: Shape,
    private readonly session: ort.InferenceSession,
    readonly window: WindowSpec | null,
  ) {
    this.organizationId = deployment.organizationId;
    this.version = deployment.version;
    this.sequence = deployment.sequence;
    this.hasAlarm = shape.hasAlarm;
    this.outputs = shape.hasAlarm ? [shape.outputName, ALARM_OUTPUT] : [shape.outputName];
    // Probabilities are float32: compare them with the threshold in float32, as the graph does.
    this.threshold32 = Math.fround(threshold);
  }

  async predict(input: readonly Row[] | readonly Window[]): Promise<Prediction> {
    const tensor = this.window === null ? this.rowTensor(input) : this.windowTensor(input);
    const count = tensor.dims[0] as number;
    const result = await this.session.run({ [this.shape.inputName]: tensor }, this.outputs);
    const raw = result[this.shape.outputName]?.data as Float32Array;
    const probabilities = this.shape.probabilityPair
      ? Array.from({ length: count }, (_, i) => raw[i * 2 + 1] as number)
      : Array.from(raw);
    const alarms = this.shape.hasAlarm
      ? Array.from(result[ALARM_OUTPUT]?.data as Uint8Array, Boolean)
      : probabilities.map((p) => p >= this.threshold32);
    return { probabilities, alarms, threshold: this.threshold };
  }

  private rowTensor(input: readonly Row[] | readonly Window[]): ort.Tensor {
    const rows = input as readonly Row[];
    const width = this.featureColumns.length;
    if (
      !Array.isArray(rows) ||
      rows.length === 0 ||
      rows.some((r) => !Array.isArray(r) || r.length !== width)
    ) {
      throw new TypeError(
        `rows must be a non-empty array of rows of ${width} numbers in the order ` +
          `${JSON.stringify(this.featureColumns)} (${this.label()})`,
      );
    }
    const features = new Float32Array(rows.length * width);
    rows.forEach((row, i) => features.set(row, i * width));
    return new ort.Tensor("float32", features, [rows.length, width]);
  }

  private windowTensor(input: readonly Row[] | readonly Window[]): ort.Tensor {
    const window = this.window as WindowSpec;
    const { data, count } = windowTensorData(input, window, this.label());
    return new ort.Tensor("float32", data, [count, window.length, window.columns.length]);
  }

  private label(): string {
    return `organization ${this.organizationId}, version ${this.version}`;
  }

  release(): Promise<void> {
    return this.session.release();
  }
}

async function warm(model: Model, file: string): Promise<void> {
  let probabilities: number[];
  try {
    const zeros = model.featureColumns.map(() => 0);
    const input =
      model.window === null ? [zeros] : Array.from({ length: model.window.length }, () => zeros);
    ({ probabilities } = await model.predict(input));
  } catch (error) {
    await model.release();
    throw new ModelRejectedError(
      `model file ${file} failed its warm-up inference (${String(error).slice(0, 300)}); ` +
        "deploy a valid version",
    );
  }
  if (probabilities.length !== 1 || !Number.isFinite(probabilities[0])) {
    await model.release();
    throw new ModelRejectedError(
      `model file ${file} returned ${JSON.stringify(probabilities)} for one warm-up input; ` +
        "expected one finite probability",
    );
  }
}
