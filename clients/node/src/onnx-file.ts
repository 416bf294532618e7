/**
 * What an ONNX file says that onnxruntime-node does not show, read from its protobuf wire
 * format: the metadata (`organization_id`, `version`, `feature_columns`, `decision_threshold`),
 * and the checks the Python model cache makes before loading: no tensor kept in external data
 * (onnxruntime would read that path from disk), no operator outside the standard domains (a
 * custom domain needs a native library), no model-local functions.
 *
 * Field numbers are those of onnx.proto (ModelProto, GraphProto, NodeProto, AttributeProto,
 * TensorProto, SparseTensorProto, TrainingInfoProto), which ONNX keeps stable.
 */

import { ModelRejectedError } from "./errors.js";

const ALLOWED_DOMAINS: readonly string[] = ["", "ai.onnx", "ai.onnx.ml"];
const EXPORT_HINT = "export the model again with the training script";
const EXTERNAL = 1; // TensorProto.DataLocation.EXTERNAL

interface Field {
  number: number;
  /** A varint field's value. */
  value: number;
  /** A length-delimited field's bytes (strings, messages). */
  bytes: Uint8Array | null;
}

/** What was read from a model file that passed the checks. */
export interface OnnxFacts {
  metadata: Map<string, string>;
}

/** Read the metadata of ONNX `data`, refusing an unsafe model with ModelRejectedError. */
export function inspectOnnx(data: Uint8Array, label: string): OnnxFacts {
  try {
    return inspect(data, label);
  } catch (error) {
    if (error instanceof ModelRejectedError) throw error;
    throw new ModelRejectedError(
      `${label} is not an ONNX model (${(error as Error).message}); the file is damaged or not ` +
        `a model, ${EXPORT_HINT}`,
    );
  }
}

function inspect(data: Uint8Array, label: string): OnnxFacts {
  const metadata = new Map<string, string>();
  const graphs: Uint8Array[] = [];
  for (const field of fields(data)) {
    if (field.number === 14) {
      const [key, value] = entry(message(field));
      metadata.set(key, value);
    } else if (field.number === 8) {
      checkDomain(stringOf(first(message(field), 1)), "imports the operator set of", label);
    } else if (field.number === 25) {
      throw new ModelRejectedError(
        `${label} defines model-local functions; only operators of the domains ` +
          `${JSON.stringify(ALLOWED_DOMAINS)} are allowed, ${EXPORT_HINT}`,
      );
    } else if (field.number === 7) {
      graphs.push(message(field));
    } else if (field.number === 20) {
      graphs.push(...children(message(field), 1, 2));
    }
  }
  for (let graph = graphs.pop(); graph !== undefined; graph = graphs.pop()) {
    graphs.push(...checkGraph(graph, label));
  }
  return { metadata };
}

/** Check one graph's nodes and tensors; returns its subgraphs (If, Loop, Scan bodies). */
function checkGraph(graph: Uint8Array, label: string): Uint8Array[] {
  const subgraphs: Uint8Array[] = [];
  for (const field of fields(graph)) {
    if (field.number === 5) checkTensor(message(field), label);
    else if (field.number === 15)
      children(message(field), 1, 2).forEach((t) => checkTensor(t, label));
    else if (field.number === 1) subgraphs.push(...checkNode(message(field), label));
  }
  return subgraphs;
}

function checkNode(node: Uint8Array, label: string): Uint8Array[] {
  const subgraphs: Uint8Array[] = [];
  let domain = "";
  for (const field of fields(node)) {
    if (field.number === 7) domain = stringOf(field);
    if (field.number !== 5) continue;
    for (const part of fields(message(field))) {
      if (part.number === 5 || part.number === 10) checkTensor(message(part), label);
      else if (part.number === 6 || part.number === 11) subgraphs.push(message(part));
      else if (part.number === 22 || part.number === 23) {
        children(message(part), 1, 2).forEach((t) => checkTensor(t, label));
      }
    }
  }
  checkDomain(domain, "uses an operator of", label);
  return subgraphs;
}

function checkTensor(tensor: Uint8Array, label: string): void {
  let name = "";
  let external = false;
  for (const field of fields(tensor)) {
    if (field.number === 8) name = stringOf(field);
    else if (field.number === 13) external = true;
    else if (field.number === 14 && field.value === EXTERNAL) external = true;
  }
  if (external) {
    throw new ModelRejectedError(
      `${label} keeps tensor ${JSON.stringify(name.slice(0, 80))} in external data; only ` +
        `models with every tensor inside the one .onnx file are allowed, ${EXPORT_HINT}`,
    );
  }
}

function checkDomain(domain: string, what: string, label: string): void {
  if (!ALLOWED_DOMAINS.includes(domain)) {
    throw new ModelRejectedError(
      `${label} ${what} domain ${JSON.stringify(domain.slice(0, 80))}; only the domains ` +
        `${JSON.stringify(ALLOWED_DOMAINS)} are allowed (a custom domain needs a native ` +
        `library), ${EXPORT_HINT}`,
    );
  }
}

/** The key and value of a StringStringEntryProto. */
function entry(data: Uint8Array): [string, string] {
  return [stringOf(first(data, 1)), stringOf(first(data, 2))];
}

function children(data: Uint8Array, ...numbers: number[]): Uint8Array[] {
  return [...fields(data)].filter((f) => numbers.includes(f.number)).map(message);
}

function first(data: Uint8Array, number: number): Field | undefined {
  for (const field of fields(data)) if (field.number === number) return field;
  return undefined;
}

function message(field: Field): Uint8Array {
  if (field.bytes === null) throw new Error(`field ${field.number} is not a message`);
  return field.bytes;
}

function stringOf(field: Field | undefined): string {
  return field === undefined
    ? ""
    : new TextDecoder("utf-8", { fatal: true }).decode(message(field));
}

/** The fields of one protobuf message, in order (wire types 0, 1, 2 and 5). */
function* fields(data: Uint8Array): Generator<Field> {
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    for (let shift = 1; ; shift *= 128) {
      if (pos >= data.length) throw new Error("truncated varint");
      const byte = data[pos++] as number;
      result += (byte & 0x7f) * shift;
      if (byte < 0x80) return result;
      if (shift > 2 ** 56) throw new Error("varint longer than 64 bits");
    }
  };
  while (pos < data.length) {
    const key = varint();
    const number = Math.floor(key / 8);
    const wireType = key % 8;
    if (wireType === 0) {
      yield { number, value: varint(), bytes: null };
    } else if (wireType === 2) {
      const length = varint();
      if (pos + length > data.length) throw new Error(`field ${number} runs past the end`);
      yield { number, value: length, bytes: data.subarray(pos, pos + length) };
      pos += length;
    } else if (wireType === 1 || wireType === 5) {
      pos += wireType === 1 ? 8 : 4;
      if (pos > data.length) throw new Error(`field ${number} runs past the end`);
    } else {
      throw new Error(`unsupported protobuf wire type ${wireType} at byte ${pos}`);
    }
  }
}
