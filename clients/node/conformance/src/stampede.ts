// `run stampede`: N callers all getOrLoad one cold key at once; the load function sleeps ~100 ms and counts its
// calls. Prints {"loads", "errors", "values_ok"}. The callers share `count` Clients (caller i uses client i % count,
// client j targets j % 3); count 0 gives each caller its own.
import { Client } from '@cachecoord/client';

export async function runStampede(
  targets: string[],
  key: string,
  callers: number,
  count: number,
  token?: string,
): Promise<void> {
  const size = count > 0 ? count : callers;
  const clients = Array.from({ length: size }, (_, i) => new Client(targets[i % targets.length], { token, timeoutMs: 10_000 }));
  // Every channel connected first, so the callers really do arrive together.
  await Promise.all(clients.map((client) => client.connect(10_000)));
  const expected = `loaded:${key}`;
  let loads = 0;
  const load = async (k: string) => {
    loads += 1;
    await new Promise((resolve) => setTimeout(resolve, 100));
    return `loaded:${k}`;
  };
  const calls = Array.from({ length: callers }, (_, i) => clients[i % size].getOrLoad(key, load));
  const outcomes = await Promise.allSettled(calls);
  let errors = 0;
  let valuesOk = true;
  for (const outcome of outcomes) {
    if (outcome.status === 'rejected') {
      errors += 1;
      valuesOk = false;
      console.error(`stampede caller failed: ${String(outcome.reason)}`);
    } else if (outcome.value.toString() !== expected) {
      valuesOk = false;
    }
  }
  for (const client of clients) client.close();
  console.log(JSON.stringify({ loads, errors, values_ok: valuesOk }));
}
