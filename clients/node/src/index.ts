/** The training service's TypeScript client: submit and follow training, follow and load models. */

export { TrainingClient, REQUESTS_QUEUE, STATUS_TASK, SUBMIT_TASK } from "./client.js";
export type { TaskOptions, TrainingClientOptions, Unsubscribe, WaitOptions } from "./client.js";
export type {
  DecisionPolicy,
  Hyperparameters,
  RunState,
  RunStatus,
  SubmittedRun,
  TrainingConfig,
  WindowsConfig,
} from "./config.js";
export {
  DeploymentFormatError,
  ModelRejectedError,
  RunTimeoutError,
  TaskFailedError,
  TaskTimeoutError,
  TrainingClientError,
} from "./errors.js";
export { channel, currentKey, parseDeployment } from "./hotswap.js";
export type { Deployment, ModelSwap, SwapEvent } from "./hotswap.js";
export { DEFAULT_THRESHOLD, loadModel } from "./model.js";
export type { LoadedModel, LoadOptions, Prediction } from "./model.js";
export type { Row, Window, WindowSpec } from "./window.js";
