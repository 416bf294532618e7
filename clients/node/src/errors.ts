/** Errors of the client; each message names what failed and says what to do next. */

/** Base of every error the client raises on purpose. */
export class TrainingClientError extends Error {
  override name = "TrainingClientError";
}

/** A task ran and failed (or was revoked); `excType` is the service's error class. */
export class TaskFailedError extends TrainingClientError {
  override name = "TaskFailedError";

  constructor(
    readonly taskName: string,
    readonly taskId: string,
    readonly excType: string,
    readonly excMessage: string,
  ) {
    super(`${taskName} failed (task ${taskId}): ${excType}: ${excMessage}`);
  }
}

/** No result arrived in time: no worker took the task, or it is still running. */
export class TaskTimeoutError extends TrainingClientError {
  override name = "TaskTimeoutError";

  constructor(
    readonly taskName: string,
    readonly taskId: string,
    readonly queue: string,
    readonly timeoutMs: number,
    /** Redis itself did not answer (rather than no worker). */
    readonly redisDown = false,
  ) {
    super(
      redisDown
        ? `Redis did not answer while waiting for ${taskName} (task ${taskId}) for ` +
            `${timeoutMs / 1000} s; check that Redis runs at the client's redisUrl (REDIS_URL)`
        : `no result of ${taskName} (task ${taskId}) within ${timeoutMs / 1000} s; check that ` +
            `a worker consumes the queue ${queue} (celery -A training_tasks worker) on the ` +
            "Redis the client uses (redisUrl, REDIS_URL)",
    );
  }
}

/** A run did not finish within the time `waitForRun` was given; `last` is its latest status. */
export class RunTimeoutError extends TrainingClientError {
  override name = "RunTimeoutError";

  constructor(
    readonly runId: string,
    readonly timeoutMs: number,
    readonly last: { status: string; stage: string | null } | null,
  ) {
    const where = last ? `it is ${last.status}${last.stage ? ` at stage ${last.stage}` : ""}` : "";
    super(
      `run ${runId} did not finish within ${timeoutMs / 1000} s${where ? ` (${where})` : ""}; ` +
        "wait longer, or see `trainctl history` and the worker's log",
    );
  }
}

/** A deployed model failed a check (path, sha256, ONNX file, metadata) and was not loaded. */
export class ModelRejectedError extends TrainingClientError {
  override name = "ModelRejectedError";
}

/** A hot-swap key value or channel message that is not a deployment. */
export class DeploymentFormatError extends TrainingClientError {
  override name = "DeploymentFormatError";
}
