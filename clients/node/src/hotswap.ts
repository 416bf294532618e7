/**
 * The hot-swap protocol: the Redis key `ml:model:<org>:current` holds the deployment as JSON, and
 * the same JSON with an `event` field is published on `ml:models:<org>`. `sequence` grows by one
 * on every deploy or rollback of that organization, so a reader ignores stale or repeated ones.
 */

import { DeploymentFormatError } from "./errors.js";

/** What a prediction service needs to load a deployed model and check it. */
export interface Deployment {
  organizationId: string;
  version: string;
  /** The deployed copy, `<ML_BASE_PATH>/models/<org>/deployed_<version>/model.onnx`. */
  modelPath: string;
  /** The sha256 (hex) of the file's bytes as stored. */
  sha256: string;
  deployedAt: string;
  sequence: number;
}

export type SwapEvent = "deployed" | "rolled_back";

/** A deployment delivered to an `onModelSwap` callback. */
export interface ModelSwap {
  deployment: Deployment;
  /** The announced event; null when found by re-reading the current key. */
  event: SwapEvent | null;
  source: "message" | "reread";
}

const EVENTS: readonly string[] = ["deployed", "rolled_back"];
const FIELDS = ["organizationId", "version", "modelPath", "sha256", "deployedAt"] as const;
const ORG_ID_PATTERN = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** The key holding an organization's current deployment. */
export function currentKey(orgId: string): string {
  return `ml:model:${checkOrgId(orgId)}:current`;
}

/** The channel announcing an organization's deployments and rollbacks. */
export function channel(orgId: string): string {
  return `ml:models:${checkOrgId(orgId)}`;
}

/** `orgId` if it is a valid organization id; else a TypeError saying what one looks like. */
export function checkOrgId(orgId: string): string {
  if (typeof orgId !== "string" || !ORG_ID_PATTERN.test(orgId)) {
    throw new TypeError(
      `${JSON.stringify(orgId)} is not a valid organization id; use 1-63 lowercase letters, ` +
        "digits and inner hyphens (for example 'acme-corp')",
    );
  }
  return orgId;
}

/** Parse a key value or a channel message into its event (null for a key) and deployment. */
export function parseDeployment(data: string): { event: SwapEvent | null; deployment: Deployment } {
  let doc: unknown;
  try {
    doc = JSON.parse(data);
  } catch {
    throw new DeploymentFormatError(`hot-swap message is not JSON: ${data.slice(0, 80)}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) {
    throw new DeploymentFormatError("hot-swap message is not a JSON object");
  }
  const record = doc as Record<string, unknown>;
  const event = record.event ?? null;
  if (event !== null && !EVENTS.includes(event as string)) {
    throw new DeploymentFormatError(`unknown hot-swap event ${JSON.stringify(event)}`);
  }
  const missing = [...FIELDS, "sequence"].filter((name) => !(name in record));
  if (missing.length > 0) {
    throw new DeploymentFormatError(`hot-swap message lacks ${missing.join(", ")}`);
  }
  const wrong = FIELDS.filter((name) => typeof record[name] !== "string");
  if (wrong.length > 0) {
    throw new DeploymentFormatError(`hot-swap message field ${wrong.join(", ")} is not a string`);
  }
  if (!Number.isSafeInteger(record.sequence)) {
    throw new DeploymentFormatError("hot-swap sequence must be an integer");
  }
  const deployment = Object.fromEntries(
    [...FIELDS, "sequence"].map((name) => [name, record[name]]),
  ) as unknown as Deployment;
  return { event: event as SwapEvent | null, deployment };
}

/**
 * One follower of one organization: delivers each deployment newer than the last one it
 * delivered, whether it came as a message or from re-reading the key. Deliveries run one at a
 * time, in order, so a slow callback (loading a model) never sees an older one after a newer.
 */
export class SwapFollower {
  private lastSequence = -Infinity;
  private queue: Promise<void> = Promise.resolve();

  constructor(
    readonly orgId: string,
    private readonly callback: (swap: ModelSwap) => void | Promise<void>,
    private readonly onError: (error: Error) => void,
  ) {}

  /** Offer a key value or message; stale, repeated and other organizations' ones are dropped. */
  offer(data: string, source: ModelSwap["source"]): Promise<void> {
    let parsed: ReturnType<typeof parseDeployment>;
    try {
      parsed = parseDeployment(data);
    } catch (error) {
      this.onError(error as Error);
      return this.queue;
    }
    const { deployment, event } = parsed;
    if (deployment.organizationId !== this.orgId) {
      this.onError(
        new DeploymentFormatError(
          `a deployment of ${deployment.organizationId} arrived for ${this.orgId}; only the ` +
            "service should write the hot-swap key and channel",
        ),
      );
      return this.queue;
    }
    this.queue = this.queue.then(() => this.deliver({ deployment, event, source }));
    return this.queue;
  }

  private async deliver(swap: ModelSwap): Promise<void> {
    if (swap.deployment.sequence <= this.lastSequence) return;
    this.lastSequence = swap.deployment.sequence;
    try {
      await this.callback(swap);
    } catch (error) {
      this.onError(error instanceof Error ? error : new Error(String(error)));
    }
  }
}
