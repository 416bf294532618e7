/** The wire formats, without a service: the task envelope, stored errors, hot-swap messages. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { excText, taskMessage } from "../src/celery.js";
import { channel, currentKey, DeploymentFormatError, parseDeployment } from "../src/index.js";

const DEPLOYMENT = {
  organizationId: "acme-corp",
  version: "v2026-06-01T12-00-01-000Z_00000001",
  modelPath: "/srv/ml/models/acme-corp/deployed_v2026-06-01T12-00-01-000Z_00000001/model.onnx",
  sha256: "ab".repeat(32),
  deployedAt: "2026-06-01T12:00:00.000Z",
  sequence: 3,
};

test("a task message is kombu's envelope around the protocol-2 body", () => {
  const expiresAt = new Date("2026-06-01T12:00:30.000Z");
  const call = {
    name: "training.submit",
    args: [{ organizationId: "acme-corp" }],
    queue: "training.requests",
    expiresAt,
  };
  const message = JSON.parse(taskMessage(call, "task-1"));
  assert.equal(message["content-type"], "application/json");
  assert.equal(message.properties.body_encoding, "base64");
  assert.deepEqual(message.properties.delivery_info, {
    exchange: "",
    routing_key: "training.requests",
  });
  assert.equal(message.headers.task, "training.submit");
  assert.equal(message.headers.id, "task-1");
  assert.equal(message.headers.expires, "2026-06-01T12:00:30.000Z");
  const body = JSON.parse(Buffer.from(message.body, "base64").toString("utf-8"));
  assert.deepEqual(body[0], [{ organizationId: "acme-corp" }]);
  assert.deepEqual(body[1], {});
});

test("a stored service error reads as its message, a config error with its field", () => {
  assert.equal(
    excText("ConfigError", ["validationSplit", "must be below 0.5"]),
    "validationSplit: must be below 0.5",
  );
  assert.equal(excText("NotFoundError", ["run 00 does not exist"]), "run 00 does not exist");
  assert.equal(excText("ValueError", "plain text"), "plain text");
});

test("a hot-swap message parses into its event and deployment", () => {
  const parsed = parseDeployment(JSON.stringify({ ...DEPLOYMENT, event: "rolled_back" }));
  assert.equal(parsed.event, "rolled_back");
  assert.deepEqual(parsed.deployment, DEPLOYMENT);
  assert.equal(parseDeployment(JSON.stringify(DEPLOYMENT)).event, null);
  assert.equal(currentKey("acme-corp"), "ml:model:acme-corp:current");
  assert.equal(channel("acme-corp"), "ml:models:acme-corp");
});

test("a malformed hot-swap message is refused saying what is wrong", () => {
  const { sha256: _sha256, ...noHash } = DEPLOYMENT;
  assert.throws(() => parseDeployment(JSON.stringify(noHash)), /lacks sha256/);
  assert.throws(
    () => parseDeployment(JSON.stringify({ ...DEPLOYMENT, sequence: 1.5 })),
    /sequence must be an integer/,
  );
  assert.throws(
    () => parseDeployment(JSON.stringify({ ...DEPLOYMENT, event: "deleted" })),
    DeploymentFormatError,
  );
  assert.throws(() => parseDeployment("not json"), /not JSON/);
  assert.throws(() => currentKey("Acme Corp"), /not a valid organization id/);
});
