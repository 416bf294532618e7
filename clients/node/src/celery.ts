/**
 * The Celery protocol (message protocol 2, JSON) over kombu's Redis transport, as far as a
 * client needs it: send a task by name, read its result.
 *
 * kombu's Redis transport keeps a queue as a Redis list named after the queue (no key prefix is
 * configured; a message of priority 0 goes to the list itself, not to a priority sub-list),
 * LPUSHes a JSON envelope onto it and has workers BRPOP it. The envelope carries the body base64
 * encoded: `[args, kwargs, embed]` as JSON. Celery's Redis result backend stores a finished
 * task's result as JSON under `celery-task-meta-<task id>`.
 */

import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";

import { TaskFailedError, TaskTimeoutError, TrainingClientError } from "./errors.js";

/** The Redis commands this module uses; a node-redis client has them. */
export interface RedisCommands {
  get(key: string): Promise<string | null>;
  lPush(key: string, value: string): Promise<number>;
  del(key: string): Promise<number>;
}

/** A task to send: its name, positional arguments and queue. */
export interface TaskCall {
  name: string;
  args: unknown[];
  queue: string;
  /** A worker that receives the message after this drops it (stored as REVOKED). */
  expiresAt?: Date;
}

const RESULT_PREFIX = "celery-task-meta-";
const READY_STATES = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
const FIRST_POLL_MS = 20;
const LONGEST_POLL_MS = 250;
// Errors whose arguments are (field, problem) and whose text is "field: problem".
const FIELD_ERRORS = new Set(["ConfigError", "SettingsError"]);

/** The kombu envelope of a protocol-2 task message, as a JSON string. */
export function taskMessage(call: TaskCall, taskId: string): string {
  const embed = { callbacks: null, errbacks: null, chain: null, chord: null };
  const body = Buffer.from(JSON.stringify([call.args, {}, embed]), "utf-8").toString("base64");
  // No argsrepr/kwargsrepr: the worker builds them from the arguments, with secrets masked.
  const headers = {
    lang: "js",
    task: call.name,
    id: taskId,
    shadow: null,
    eta: null,
    expires: call.expiresAt ? call.expiresAt.toISOString() : null,
    group: null,
    group_index: null,
    retries: 0,
    timelimit: [null, null],
    root_id: taskId,
    parent_id: null,
    origin: `${process.pid}@${hostname()}`,
    ignore_result: false,
    stamped_headers: null,
    stamps: {},
  };
  const properties = {
    correlation_id: taskId,
    reply_to: "",
    delivery_mode: 2,
    delivery_info: { exchange: "", routing_key: call.queue },
    priority: 0,
    body_encoding: "base64",
    delivery_tag: randomUUID(),
  };
  return JSON.stringify({
    body,
    "content-encoding": "utf-8",
    "content-type": "application/json",
    headers,
    properties,
  });
}

/** Put a task message on its queue; returns the task id. */
export async function sendTask(redis: RedisCommands, call: TaskCall): Promise<string> {
  const taskId = randomUUID();
  try {
    await redis.lPush(call.queue, taskMessage(call, taskId));
  } catch (error) {
    throw new TrainingClientError(
      `could not send ${call.name} to the queue ${call.queue}: ${(error as Error).message}; ` +
        "check that Redis runs at the client's redisUrl (REDIS_URL)",
    );
  }
  return taskId;
}

/** How long `awaitResult` waits, and whether it deletes the result once read. */
export interface AwaitOptions {
  timeoutMs: number;
  /** Delete the result key once read: for queries nobody else reads. */
  forget?: boolean;
}

/** Wait for a task's result: its value, or TaskFailedError / TaskTimeoutError. */
export async function awaitResult(
  redis: RedisCommands,
  call: TaskCall,
  taskId: string,
  options: AwaitOptions,
): Promise<unknown> {
  const key = RESULT_PREFIX + taskId;
  const deadline = Date.now() + options.timeoutMs;
  let pollMs = FIRST_POLL_MS;
  for (;;) {
    let raw: string | null;
    try {
      raw = await redis.get(key);
    } catch (error) {
      // The client's commands are aborted at the deadline when Redis does not answer.
      const redisDown = (error as Error).name === "AbortError";
      if (!redisDown) throw error;
      throw new TaskTimeoutError(call.name, taskId, call.queue, options.timeoutMs, redisDown);
    }
    const meta = raw === null ? null : parseMeta(raw, call.name, taskId);
    if (meta !== null && READY_STATES.has(meta.status)) {
      if (options.forget) await redis.del(key);
      return resultOf(meta, call.name, taskId);
    }
    const left = deadline - Date.now();
    if (left <= 0) throw new TaskTimeoutError(call.name, taskId, call.queue, options.timeoutMs);
    // Results of these tasks come within milliseconds to a second: poll fast, then back off.
    await sleep(Math.min(pollMs, left));
    pollMs = Math.min(pollMs * 2, LONGEST_POLL_MS);
  }
}

interface ResultMeta {
  status: string;
  result: unknown;
}

function parseMeta(raw: string, taskName: string, taskId: string): ResultMeta {
  let meta: unknown;
  try {
    meta = JSON.parse(raw);
  } catch {
    meta = null;
  }
  if (
    typeof meta !== "object" ||
    meta === null ||
    typeof (meta as ResultMeta).status !== "string"
  ) {
    throw new TrainingClientError(
      `the result of ${taskName} (task ${taskId}) is not Celery JSON; the worker must use ` +
        "result_serializer json (celeryconfig.py)",
    );
  }
  return meta as ResultMeta;
}

function resultOf(meta: ResultMeta, taskName: string, taskId: string): unknown {
  if (meta.status === "SUCCESS") return meta.result;
  if (meta.status === "REVOKED") {
    throw new TaskFailedError(
      taskName,
      taskId,
      "TaskRevoked",
      "the task was revoked or expired before a worker ran it; send it again",
    );
  }
  const exc = (meta.result ?? {}) as { exc_type?: unknown; exc_message?: unknown };
  const excType = typeof exc.exc_type === "string" ? exc.exc_type : "Error";
  throw new TaskFailedError(taskName, taskId, excType, excText(excType, exc.exc_message));
}

/** The text of an error stored by Celery (`exc_message` holds the exception's arguments). */
export function excText(excType: string, message: unknown): string {
  if (!Array.isArray(message)) return String(message ?? "");
  if (FIELD_ERRORS.has(excType) && message.length === 2) return `${message[0]}: ${message[1]}`;
  const first = message[0];
  return typeof first === "string" ? first : JSON.stringify(message);
}
