/**
 * The client against a real worker and Redis: a refused request, an unknown run, then one
 * training from submit to the deployment announced on the channel, re-read after a reconnect.
 * The deployment is written to NODE_TEST_OUT for the model test that follows.
 */

import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { createClient } from "redis";

import {
  channel,
  currentKey,
  type ModelSwap,
  type RunStatus,
  TaskFailedError,
  TrainingClient,
} from "../src/index.js";
import { setting, waitFor } from "./support.js";

const REDIS_URL = setting("REDIS_URL");
const ORG = setting("TEST_ORG");
const DATA_RANGE = JSON.parse(setting("TEST_DATA_RANGE")) as { startDate: string; endDate: string };
const RUN_TIMEOUT_MS = Number(setting("TEST_RUN_TIMEOUT_MS"));
const OUT = setting("NODE_TEST_OUT");
const CLIENT_NAME = `node-client-test-${process.pid}`;

let client: TrainingClient;
const errors: Error[] = [];

before(async () => {
  // No timed re-read during the test: a delivery after the reconnect comes from the reconnect.
  client = await TrainingClient.connect({
    redisUrl: REDIS_URL,
    clientName: CLIENT_NAME,
    resyncIntervalMs: 600_000,
    onError: (error) => errors.push(error),
  });
});

after(async () => {
  await client.close();
});

test("a request with an out-of-range field is refused naming the field", async () => {
  await assert.rejects(
    client.submitTraining({ organizationId: ORG, validationSplit: 2 }),
    (error) => {
      assert.ok(error instanceof TaskFailedError, String(error));
      assert.equal(error.excType, "ConfigError");
      assert.match(error.message, /validationSplit/);
      return true;
    },
  );
});

test("the status of an unknown run is refused naming the run", async () => {
  const runId = "0".repeat(32);
  await assert.rejects(client.runStatus(runId), (error) => {
    assert.ok(error instanceof TaskFailedError, String(error));
    assert.equal(error.excType, "NotFoundError");
    assert.match(error.message, new RegExp(runId));
    return true;
  });
});

test("a submitted training succeeds and its deployment arrives, again after a reconnect", async () => {
  const swaps: ModelSwap[] = [];
  const unsubscribe = client.onModelSwap(ORG, (swap) => void swaps.push(swap));
  await unsubscribe.ready;

  const queued = await client.submitTraining({ organizationId: ORG, dataRange: DATA_RANGE });
  assert.equal(queued.queue, `org.${ORG}`);
  const seen: RunStatus[] = [];
  const final = await client.waitForRun(queued.runId, {
    timeoutMs: RUN_TIMEOUT_MS,
    pollIntervalMs: 500,
    onProgress: (status) => seen.push(status),
  });
  assert.equal(final.status, "succeeded", final.error ?? "");
  assert.equal(final.finished, true);
  assert.equal(final.version, queued.version);
  assert.equal(final.organizationId, ORG);
  assert.ok(seen.length >= 2 && !seen[0]?.finished, JSON.stringify(seen.map((s) => s.status)));

  const deployed = await waitFor(
    () => swaps.find((swap) => swap.deployment.version === queued.version),
    10_000,
    "the deploy message",
  );
  assert.equal(deployed.event, "deployed");
  assert.equal(deployed.source, "message");
  await writeFile(OUT, JSON.stringify(deployed.deployment));

  const admin = createClient({ url: REDIS_URL });
  await admin.connect();
  try {
    await checkRereadAfterReconnect(admin, swaps, deployed);
    await checkStaleMessagesIgnored(admin, swaps, deployed);
    await unsubscribe();
    const later = { ...deployed.deployment, sequence: deployed.deployment.sequence + 9 };
    await admin.publish(channel(ORG), JSON.stringify({ ...later, event: "deployed" }));
    await sleep(300);
    assert.ok(
      !swaps.some((swap) => swap.deployment.sequence === later.sequence),
      "delivered after unsubscribe",
    );
  } finally {
    await admin.close();
  }
  // The killed connection is reported (node-redis's error event); nothing else went wrong.
  const unexpected = errors.filter((error) => !/Socket closed unexpectedly/.test(error.message));
  assert.deepEqual(unexpected, []);
});

type Admin = ReturnType<typeof createClient>;

/** A deploy whose message is lost (only the key moves) reaches the client when it reconnects. */
async function checkRereadAfterReconnect(
  admin: Admin,
  swaps: ModelSwap[],
  deployed: ModelSwap,
): Promise<void> {
  const newer = { ...deployed.deployment, sequence: deployed.deployment.sequence + 1 };
  await admin.set(currentKey(ORG), JSON.stringify(newer));
  const killed = await killSubscriber(admin);
  assert.equal(killed, 1, "the client's subscriber connection was not found in CLIENT LIST");
  const reread = await waitFor(
    () => swaps.find((swap) => swap.deployment.sequence === newer.sequence),
    10_000,
    "the re-read after the reconnect",
  );
  assert.equal(reread.source, "reread");
  assert.equal(reread.event, null);
}

/** Stale and repeated messages are dropped; a newer one (a rollback) is delivered. */
async function checkStaleMessagesIgnored(
  admin: Admin,
  swaps: ModelSwap[],
  deployed: ModelSwap,
): Promise<void> {
  const sequence = deployed.deployment.sequence;
  const publish = (seq: number, event: string) =>
    admin.publish(channel(ORG), JSON.stringify({ ...deployed.deployment, sequence: seq, event }));
  // Re-subscribed after the reconnect: a message published now reaches the client.
  await waitFor(
    async () => ((await publish(sequence, "deployed")) > 0 ? true : undefined),
    10_000,
    "the re-subscription",
  );
  await publish(sequence + 1, "deployed");
  await publish(sequence + 2, "rolled_back");
  const rollback = await waitFor(
    () => swaps.find((swap) => swap.deployment.sequence === sequence + 2),
    10_000,
    "the rollback message",
  );
  assert.equal(rollback.event, "rolled_back");
  assert.deepEqual(
    swaps.map((swap) => swap.deployment.sequence),
    [sequence, sequence + 1, sequence + 2],
  );
}

/** Kill the client's subscriber connection (named, with a subscription) the way a network drop would. */
async function killSubscriber(admin: Admin): Promise<number> {
  const listing = String(await admin.sendCommand(["CLIENT", "LIST", "TYPE", "pubsub"]));
  const ids = listing
    .split("\n")
    .filter((line) => line.includes(` name=${CLIENT_NAME} `))
    .map((line) => /(?:^|\s)id=(\d+)/.exec(line)?.[1])
    .filter((id): id is string => id !== undefined);
  for (const id of ids) await admin.sendCommand(["CLIENT", "KILL", "ID", id]);
  return ids.length;
}
