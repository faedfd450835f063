// `run scenarios`: every scenario of the language-neutral file (clients/conformance/README.md describes it),
// executed step by step through the library; one JSON line per scenario: {"scenario", "pass", "detail"}.
import * as fs from 'fs';
import { CacheError, Client, type SetEntry } from '@cachecoord/client';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Obj = { [key: string]: Json };

interface Scenario {
  name: string;
  auth: 'token' | 'none' | 'wrong';
  steps: Obj[];
}

/** What the runner's load function threw in a get_or_load step (the scenario's error code `LOAD_FN`). */
class LoadFnError extends Error {}

/** A step's outcome that does not match its expectation. */
class Mismatch extends Error {}

/** One Client per auth mode, shared by the scenarios that use it (one channel each, as an application would). */
class Clients {
  private readonly clients = new Map<string, Client>();
  constructor(private readonly target: string, private readonly token: string | undefined) {}

  for(auth: Scenario['auth']): Client {
    let client = this.clients.get(auth);
    if (!client) {
      const token = auth === 'token' ? this.token : auth === 'wrong' ? 'wrong-token' : undefined;
      // Longer than the server's lease wait, so a leased Get that waits is answered rather than cut off.
      client = new Client(this.target, { token, timeoutMs: 15_000 });
      this.clients.set(auth, client);
    }
    return client;
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
  }
}

export async function runScenarios(target: string, file: string, runId: string, token?: string): Promise<void> {
  const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { version: number; scenarios: Scenario[] };
  if (parsed.version !== 1) throw new Error(`${file}: scenario format version ${parsed.version}, this runner reads 1`);
  const clients = new Clients(target, token);
  for (const scenario of parsed.scenarios) {
    let detail = '';
    const leases = new Map<string, Buffer>();
    for (const [index, raw] of scenario.steps.entries()) {
      const step = withRunId(raw, runId);
      try {
        await runStep(clients.for(scenario.auth), step, leases);
      } catch (error) {
        const why = error instanceof Mismatch ? error.message : `runner error: ${String(error)}`;
        detail = `step ${index + 1} (${String(step.op)}): ${why}`;
        break;
      }
    }
    console.log(JSON.stringify({ scenario: scenario.name, pass: detail === '', detail }));
  }
  clients.close();
}

/** The step with every `{run}` replaced by the run id (keys, patterns, values and the expected keys alike). */
function withRunId(step: Obj, runId: string): Obj {
  const replace = (value: Json): Json => {
    if (typeof value === 'string') return value.split('{run}').join(runId);
    if (Array.isArray(value)) return value.map(replace);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, replace(v)]));
    return value;
  };
  return replace(step) as Obj;
}

async function runStep(client: Client, step: Obj, leases: Map<string, Buffer>): Promise<void> {
  const expect = (step.expect ?? {}) as Obj;
  const wanted = expect.error as Obj | undefined;
  let actual: Obj;
  try {
    actual = await perform(client, step, leases);
  } catch (error) {
    if (error instanceof Mismatch) throw error;
    const code = error instanceof LoadFnError ? 'LOAD_FN' : error instanceof CacheError ? error.codeName : undefined;
    if (code === undefined) throw error;
    const reason = error instanceof CacheError ? error.reason ?? '' : '';
    if (!wanted) throw new Mismatch(`expected success, got ${code}${reason ? ` ${reason}` : ''}: ${(error as Error).message}`);
    if (wanted.code !== code || (wanted.reason !== undefined && wanted.reason !== reason)) {
      throw new Mismatch(`expected ${wanted.code} ${wanted.reason ?? ''}, got ${code} ${reason}`);
    }
    return;
  }
  if (wanted) throw new Mismatch(`expected ${wanted.code} ${wanted.reason ?? ''}, got success ${JSON.stringify(actual)}`);
  compare(expect, actual);
}

/** Runs one op through the library and answers what it observed, in the expectation's vocabulary. */
async function perform(client: Client, step: Obj, leases: Map<string, Buffer>): Promise<Obj> {
  const key = step.key as string;
  switch (step.op) {
    case 'get': {
      const answer = await client.lookup(key, { cacheOnly: step.cache_only === true });
      return { found: answer.found, value: answer.value?.toString() ?? null, source: answer.source };
    }
    case 'get_with_lease': {
      const { entry, leaseToken } = await client.getWithLease(key);
      if (typeof step.save === 'string' && leaseToken) leases.set(step.save, leaseToken);
      return { found: entry !== null, value: entry?.value.toString() ?? null, lease: leaseToken !== null };
    }
    case 'get_many': {
      const keys = step.keys as string[];
      const results = await client.getMany(keys);
      return {
        results: results.map((entry, i) => ({ key: keys[i], found: entry !== null, value: entry?.value.toString() ?? null })),
      };
    }
    case 'set': {
      const entry = setEntry(step, leases);
      await client.set(entry.key, entry.value, entry);
      return {};
    }
    case 'set_many': {
      const result = await client.setMany((step.entries as Obj[]).map((entry) => setEntry(entry, leases)));
      return { written: result.written, stale_keys: result.staleKeys, lease_lost_keys: result.leaseLostKeys };
    }
    case 'invalidate':
      return { deleted: await client.invalidate(step.keys as string[]) };
    case 'invalidate_pattern':
      return { deleted: await client.invalidatePattern(step.pattern as string) };
    case 'release_lease':
      return { released: await client.releaseLease(key, lease(step, leases)) };
    case 'renew_lease':
      await client.renewLease(key, lease(step, leases));
      return {};
    case 'get_or_load': {
      let loads = 0;
      const load = () => {
        loads += 1;
        if (step.load_fails === true) throw new LoadFnError('the load function failed (as the scenario asks)');
        return String(step.load_value ?? '');
      };
      const ttlMs = typeof step.ttl_secs === 'number' ? step.ttl_secs * 1000 : undefined;
      const value = await client.getOrLoad(key, load, { ttlMs });
      return { value: value.toString(), loads };
    }
    case 'stats':
      await client.stats();
      return {};
    default:
      throw new Mismatch(`unknown op ${JSON.stringify(step.op)}`);
  }
}

function lease(step: Obj, leases: Map<string, Buffer>): Buffer {
  const token = leases.get(step.lease as string);
  if (!token) throw new Mismatch(`no lease saved as ${JSON.stringify(step.lease)}`);
  return token;
}

function setEntry(step: Obj, leases: Map<string, Buffer>): SetEntry {
  return {
    key: step.key as string,
    value: String(step.value ?? ''),
    ttlMs: typeof step.ttl_secs === 'number' ? step.ttl_secs * 1000 : undefined,
    version: typeof step.version === 'number' ? step.version : undefined,
    leaseToken: step.lease === undefined ? undefined : lease(step, leases),
  };
}

/** Every field the expectation names must match; `deleted_at_least` bounds `deleted`; key lists compare as sets. */
function compare(expect: Obj, actual: Obj): void {
  for (const [field, want] of Object.entries(expect)) {
    if (field === 'deleted_at_least') {
      if (!((actual.deleted as number) >= (want as number))) throw new Mismatch(`deleted ${actual.deleted}, expected at least ${want}`);
    } else if (field === 'results') {
      const got = actual.results as Obj[];
      const wantResults = want as Obj[];
      if (got.length !== wantResults.length) throw new Mismatch(`${got.length} results, expected ${wantResults.length}`);
      wantResults.forEach((one, i) => {
        try {
          compare(one, got[i]);
        } catch (error) {
          throw new Mismatch(`result ${i + 1}: ${(error as Error).message}`);
        }
      });
    } else if (field === 'stale_keys' || field === 'lease_lost_keys') {
      const sorted = (keys: Json) => JSON.stringify([...(keys as string[])].sort());
      if (sorted(actual[field]) !== sorted(want)) throw new Mismatch(`${field} ${JSON.stringify(actual[field])}, expected ${JSON.stringify(want)}`);
    } else if (JSON.stringify(actual[field]) !== JSON.stringify(want)) {
      throw new Mismatch(`${field} ${JSON.stringify(actual[field])}, expected ${JSON.stringify(want)}`);
    }
  }
}
