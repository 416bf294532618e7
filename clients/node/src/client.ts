/**
 * The training service as a Node service sees it: submit training and follow a run through
 * Celery tasks sent by name (`training.submit`, `training.status` on `training.requests`), and
 * follow an organization's deployments on the hot-swap key and channel.
 */

import { setTimeout as sleep } from "node:timers/promises";

import { createClient } from "redis";

import { awaitResult, sendTask, type TaskCall } from "./celery.js";
import type { RunStatus, SubmittedRun, TrainingConfig } from "./config.js";
import { RunTimeoutError, TrainingClientError } from "./errors.js";
import { channel, checkOrgId, currentKey, type ModelSwap, SwapFollower } from "./hotswap.js";

export const REQUESTS_QUEUE = "training.requests";
export const SUBMIT_TASK = "training.submit";
export const STATUS_TASK = "training.status";

type Redis = ReturnType<typeof createClient>;

export interface TrainingClientOptions {
  /** The service's Redis (broker, results, hot-swap); REDIS_URL or 127.0.0.1:6379/0 by default. */
  redisUrl?: string;
  /** The name the client's Redis connections show in CLIENT LIST. */
  clientName?: string;
  /** How often `onModelSwap` re-reads the current keys besides reconnects (default 30 s). */
  resyncIntervalMs?: number;
  /** How long `connect` waits for Redis (default 10 s). */
  connectTimeoutMs?: number;
  /** Where errors with no caller to throw to go (a bad message, a failing callback). */
  onError?: (error: Error) => void;
}

export interface TaskOptions {
  /** How long to wait for the worker's answer (default 30 s). */
  timeoutMs?: number;
}

export interface WaitOptions {
  /** How long the run may take (default one hour). */
  timeoutMs?: number;
  /** The pause between two status requests (default 2 s). */
  pollIntervalMs?: number;
  /** Called with each status that differs from the last one seen (state, stage or progress). */
  onProgress?: (status: RunStatus) => void;
}

/** Ends an `onModelSwap` subscription; `ready` resolves once subscribed and the key is read. */
export type Unsubscribe = (() => Promise<void>) & { ready: Promise<void> };

const DEFAULT_TASK_TIMEOUT_MS = 30_000;

/** A client of the training service on one Redis; `close()` it when done. */
export class TrainingClient {
  private subscriber: Promise<Redis> | null = null;
  private readonly followers = new Set<SwapFollower>();
  private resyncTimer: NodeJS.Timeout | null = null;
  private readonly onError: (error: Error) => void;

  private constructor(
    private readonly redis: Redis,
    private readonly options: TrainingClientOptions,
  ) {
    this.onError =
      options.onError ?? ((error) => console.error(`training client: ${error.message}`));
  }

  /** Connect to the service's Redis; rejects if it does not answer within `connectTimeoutMs`. */
  static async connect(options: TrainingClientOptions = {}): Promise<TrainingClient> {
    const url = options.redisUrl ?? process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0";
    const redis = createClient({ url, name: options.clientName });
    const client = new TrainingClient(redis, options);
    redis.on("error", (error: Error) => client.onError(error));
    const timeoutMs = options.connectTimeoutMs ?? 10_000;
    // node-redis retries a first connection for ever; a caller gets an answer instead.
    const connecting = redis.connect();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(
        () => reject(new Error(`no answer within ${timeoutMs / 1000} s`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([connecting, timeout]);
    } catch (error) {
      connecting.catch(() => undefined);
      redis.destroy();
      throw new TrainingClientError(
        `cannot connect to Redis at ${shownUrl(url)}: ${(error as Error).message}; check that ` +
          "Redis runs there and that redisUrl (REDIS_URL) names the training service's Redis",
      );
    } finally {
      clearTimeout(timer);
    }
    return client;
  }

  /** Send a training request; resolves with the queued run, or rejects naming the bad field. */
  async submitTraining(config: TrainingConfig, options: TaskOptions = {}): Promise<SubmittedRun> {
    checkOrgId(config.organizationId);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TASK_TIMEOUT_MS;
    // A request no worker took in time expires, so a timed-out submit never starts a run later.
    const call: TaskCall = {
      name: SUBMIT_TASK,
      args: [config],
      queue: REQUESTS_QUEUE,
      expiresAt: new Date(Date.now() + timeoutMs),
    };
    const redis = this.bounded(timeoutMs);
    const taskId = await sendTask(redis, call);
    return (await awaitResult(redis, call, taskId, { timeoutMs })) as SubmittedRun;
  }

  /** The run's status as the service's training log records it. */
  async runStatus(runId: string, options: TaskOptions = {}): Promise<RunStatus> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_TASK_TIMEOUT_MS;
    const call: TaskCall = {
      name: STATUS_TASK,
      args: [runId],
      queue: REQUESTS_QUEUE,
      expiresAt: new Date(Date.now() + timeoutMs),
    };
    const redis = this.bounded(timeoutMs);
    const taskId = await sendTask(redis, call);
    // A status answer is read once by its asker: delete it instead of leaving it to expire.
    return (await awaitResult(redis, call, taskId, { timeoutMs, forget: true })) as RunStatus;
  }

  /** Poll the run's status until it is finished; resolves with the final status, whatever it is. */
  async waitForRun(runId: string, options: WaitOptions = {}): Promise<RunStatus> {
    const timeoutMs = options.timeoutMs ?? 3_600_000;
    const pollMs = options.pollIntervalMs ?? 2_000;
    const deadline = Date.now() + timeoutMs;
    let last: RunStatus | null = null;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new RunTimeoutError(runId, timeoutMs, last);
      const status = await this.runStatus(runId, {
        timeoutMs: Math.max(1_000, Math.min(left, DEFAULT_TASK_TIMEOUT_MS)),
      });
      if (last === null || progressKey(status) !== progressKey(last)) options.onProgress?.(status);
      last = status;
      if (status.finished) return status;
      await sleep(Math.max(0, Math.min(pollMs, deadline - Date.now())));
    }
  }

  /**
   * Follow an organization's deployments: `callback` gets each one newer than the last it got,
   * from the channel, and from re-reading the current key when the subscriber (re)connects and
   * every `resyncIntervalMs` (pub/sub drops messages while disconnected).
   */
  onModelSwap(orgId: string, callback: (swap: ModelSwap) => void | Promise<void>): Unsubscribe {
    const follower = new SwapFollower(checkOrgId(orgId), callback, this.onError);
    const listener = (message: string): void => void follower.offer(message, "message");
    this.followers.add(follower);
    const ready = (async () => {
      const subscriber = await this.subscriberConnection();
      await subscriber.subscribe(channel(orgId), listener);
      await this.resync(follower);
    })();
    ready.catch(() => undefined); // the caller sees the error through `ready`
    const unsubscribe = async (): Promise<void> => {
      this.followers.delete(follower);
      await ready.catch(() => undefined);
      const subscriber = await this.subscriber?.catch(() => null);
      if (subscriber?.isOpen) await subscriber.unsubscribe(channel(orgId), listener);
    };
    return Object.assign(unsubscribe, { ready });
  }

  /** Close the client's connections. */
  async close(): Promise<void> {
    if (this.resyncTimer !== null) clearInterval(this.resyncTimer);
    this.followers.clear();
    const subscriber = await this.subscriber?.catch(() => null);
    this.subscriber = null;
    await Promise.all([subscriber, this.redis].map((c) => (c?.isOpen ? c.close() : undefined)));
  }

  /** The client's commands, aborted if Redis has not answered them within `timeoutMs`. */
  private bounded(timeoutMs: number): Redis {
    return this.redis.withAbortSignal(AbortSignal.timeout(timeoutMs)) as Redis;
  }

  /** The one subscriber connection of this client, connected on first use. */
  private subscriberConnection(): Promise<Redis> {
    this.subscriber ??= this.connectSubscriber();
    return this.subscriber;
  }

  private async connectSubscriber(): Promise<Redis> {
    const subscriber = this.redis.duplicate();
    subscriber.on("error", (error: Error) => this.onError(error));
    // Every reconnect: what was announced meanwhile is on the current keys. The first
    // connect's read is made by each subscription itself, once it is subscribed.
    let connects = 0;
    subscriber.on("ready", () => {
      if (connects++ > 0) this.resyncAll();
    });
    const intervalMs = this.options.resyncIntervalMs ?? 30_000;
    this.resyncTimer = setInterval(() => this.resyncAll(), intervalMs).unref();
    await subscriber.connect();
    return subscriber;
  }

  private resyncAll(): void {
    for (const follower of this.followers) {
      this.resync(follower).catch((error: Error) =>
        this.onError(
          new TrainingClientError(
            `could not re-read ${currentKey(follower.orgId)}: ${error.message}; retried on the ` +
              "next reconnect or resync",
          ),
        ),
      );
    }
  }

  private async resync(follower: SwapFollower): Promise<void> {
    const timeoutMs = this.options.resyncIntervalMs ?? 30_000;
    const value = await this.bounded(timeoutMs).get(currentKey(follower.orgId));
    if (value !== null) await follower.offer(value, "reread");
  }
}

function progressKey(status: RunStatus): string {
  return JSON.stringify([status.status, status.stage, status.stagesDone, status.progress]);
}

/** A Redis URL with its password masked, for messages. */
function shownUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(an unparsable URL)";
  }
}
