/**
 * The training request and the run status as they travel: camelCase JSON, checked by the
 * service (an unknown key or an out-of-range value is refused naming the field). A field left
 * out comes from the organization's `mlModelConfig`.
 */

/** LightGBM settings under their wire names; each one is optional. */
export interface Hyperparameters {
  numLeaves?: number;
  learningRate?: number;
  featureFraction?: number;
  baggingFraction?: number;
  baggingFreq?: number;
  minDataInLeaf?: number;
  /** -1 means no limit. */
  maxDepth?: number;
  numIterations?: number;
  objective?: "binary" | "cross_entropy";
  metric?: "auc" | "binary_logloss" | "binary_error" | "average_precision";
  verbosity?: number;
  seed?: number;
  /** Weighs the rare class; not together with `isUnbalance: true`. */
  scalePosWeight?: number;
  isUnbalance?: boolean;
  minSumHessianInLeaf?: number;
  lambdaL1?: number;
  lambdaL2?: number;
  maxBin?: number;
  earlyStoppingRounds?: number;
}

/** How the version's decision threshold is chosen on the inner validation fold. */
export type DecisionPolicy =
  | { type: "fixed"; threshold: number }
  | { type: "maxF1" }
  | { type: "precisionAtLeast"; value: number }
  | { type: "recallAtLeast"; value: number };

/** Per-asset windows of a window model (`mlModelConfig.windows`). */
export interface WindowsConfig {
  /** The bucket width: "30s", "10min", "2h", "1d". */
  interval: string;
  /** Buckets per window; the last one ends at the example's time. */
  length: number;
  /** The raw columns a bucket holds (the mean of its readings), in the window's order. */
  columns: string[];
  /** The statistics the model computes per column (default: all seven). */
  stats?: ("mean" | "std" | "min" | "max" | "slope" | "last" | "delta")[];
  /** The longest gap forward-filled; a longer one breaks the series (default: 3 intervals). */
  maxGap?: string;
}

/** A training request for one organization (the `training.submit` argument). */
export interface TrainingConfig {
  organizationId: string;
  /** ISO 8601 times; without it the last `dataWindowDays` days up to `windowEnd`. */
  dataRange?: { startDate: string; endDate: string };
  /** Days of data when no `dataRange` is given (1 to 3650; default: the org's, else 90). */
  dataWindowDays?: number;
  /** Where that window ends: now (the default) or at the newest row of the SCADA table. */
  windowEnd?: "now" | "latestData";
  hyperparameters?: Hyperparameters;
  /** The last share (by time) of the range kept as the holdout. */
  validationSplit?: number;
  /** The last share (by time) of the training rows, for early stopping and the threshold. */
  innerValidationSplit?: number;
  targetColumn?: string;
  featureColumns?: string[];
  /**
   * New columns as expressions over raw columns: `{"temp_diff": "process_temp - air_temp"}`
   * (for a window model, over the window statistics: `vibration__slope`).
   */
  derivedFeatures?: Record<string, string>;
  /** Train a window model on per-asset windows; null trains on single readings. */
  windows?: WindowsConfig | null;
  decisionPolicy?: DecisionPolicy;
  /** Keep the extracted training split after success (for debugging). */
  keepScratch?: boolean;
}

/** What `training.submit` answers: the run it queued. */
export interface SubmittedRun {
  runId: string;
  version: string;
  /** The organization's own queue, `org.<organizationId>`. */
  queue: string;
}

export type RunState =
  "queued" | "running" | "succeeded" | "validated" | "rejected" | "failed" | "cancelled";

/** What `training.status` answers: the run as the service's training log records it. */
export interface RunStatus {
  runId: string;
  organizationId: string;
  version: string;
  status: RunState;
  /** Whether the status is final (not queued or running). */
  finished: boolean;
  stage: string | null;
  stagesDone: number;
  progress: Record<string, unknown> | null;
  trigger: string;
  queuedAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** The run's recorded error, without secrets or a traceback. */
  error: string | null;
}
