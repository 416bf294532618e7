/** Helpers of the client's tests: the settings the pytest wrapper passes, bounded waits. */

import { setTimeout as sleep } from "node:timers/promises";

/** An environment variable the wrapper (tests/integration/test_node_client.py) sets. */
export function setting(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set; these tests need a worker and Redis, run them through ` +
        "tests/integration/test_node_client.py (pytest)",
    );
  }
  return value;
}

/** Poll `probe` until it returns a value; fail naming `what` after `timeoutMs`. */
export async function waitFor<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
}
