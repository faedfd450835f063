// `run retry`: the retry rule seen from outside. Attempts are counted per method by an interceptor passed through
// the Client's options (each attempt of a retried call goes through it again). The harness stops the server
// before `go` and restarts it ~1 s after `calling`: the Get must ride that out. Then, against an address where
// nothing listens, a plain Set is tried exactly once and a versioned Set is retried; an invalid key is never
// retried.
import * as readline from 'readline';
import { CacheError, Client, InterceptingCall, type Interceptor } from '@cachecoord/client';

/** Attempts per method name (`Get`, `Set`, …), and the interceptor that counts them. */
function counter(): { counts: Map<string, number>; interceptor: Interceptor } {
  const counts = new Map<string, number>();
  const interceptor: Interceptor = (options, nextCall) => {
    const method = options.method_definition.path.split('/').pop() ?? '';
    counts.set(method, (counts.get(method) ?? 0) + 1);
    return new InterceptingCall(nextCall(options));
  };
  return { counts, interceptor };
}

/** The CacheError a call failed with, or null if it succeeded. */
async function failure(call: Promise<unknown>): Promise<CacheError | null> {
  try {
    await call;
    return null;
  } catch (error) {
    if (error instanceof CacheError) return error;
    throw error;
  }
}

function nextLine(lines: AsyncIterator<string>): Promise<string | undefined> {
  return lines.next().then((line) => (line.done ? undefined : line.value.trim()));
}

export async function runRetry(target: string, dead: string, key: string, token?: string): Promise<void> {
  const live = counter();
  // Up to 15 attempts; waits of 100–200, 200–400, 400–800, then 500–1000 ms: 6.2 to 12.4 s of backoff in all.
  const client = new Client(target, {
    token,
    timeoutMs: 2000,
    retry: { maxAttempts: 15, initialBackoffMs: 200, maxBackoffMs: 1000, multiplier: 2 },
    interceptors: [live.interceptor],
  });
  await client.get(key);
  console.log('ready');

  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  let line: string | undefined;
  while ((line = await nextLine(lines)) !== 'go') {
    if (line === undefined) throw new Error('stdin closed before `go`');
  }
  console.log('calling');
  live.counts.clear();
  const getError = await failure(client.get(key));
  if (getError) console.error(`get after the restart failed: ${getError.message}`);
  const getAttempts = live.counts.get('Get') ?? 0;

  const gone = counter();
  const deadClient = new Client(dead, {
    token,
    timeoutMs: 2000,
    retry: { maxAttempts: 4, initialBackoffMs: 50, maxBackoffMs: 400, multiplier: 2 },
    interceptors: [gone.interceptor],
  });
  const plainError = await failure(deadClient.set(`${key}:plain`, 'v'));
  const plainAttempts = gone.counts.get('Set') ?? 0;
  gone.counts.clear();
  const versionedError = await failure(deadClient.set(`${key}:versioned`, 'v', { version: 1 }));
  const versionedAttempts = gone.counts.get('Set') ?? 0;
  deadClient.close();

  live.counts.clear();
  const invalidError = await failure(client.get('bad key!'));
  const invalidAttempts = live.counts.get('Get') ?? 0;
  client.close();

  console.log(
    JSON.stringify({
      get_ok: getError === null,
      get_attempts: getAttempts,
      plain_set_attempts: plainAttempts,
      plain_set_code: plainError?.codeName ?? 'OK',
      versioned_set_attempts: versionedAttempts,
      versioned_set_code: versionedError?.codeName ?? 'OK',
      invalid_attempts: invalidAttempts,
      invalid_code: invalidError?.codeName ?? 'OK',
      invalid_reason: invalidError?.reason ?? '',
    }),
  );
}
