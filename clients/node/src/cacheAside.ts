// The leased cache-aside loop (docs/leases.md, examples/node/cache_aside.js), once, for every caller:
// Get with a lease; a hit (or another caller's fill we waited for) is the answer; with a lease token, load and
// Set under the token (LEASE_LOST: the key changed while we loaded — answer the loaded value, uncached); a load
// that fails gives the lease back so the next waiter takes over at once; no value and no token (the wait for
// another holder ran out) — load and answer without caching, since a plain Set would void the holder's lease.
// A stale answer that carries a token makes this caller the one to refresh it, in the background.
import * as grpc from '@grpc/grpc-js';

import { toBuffer, type Bytes } from './bytes';
import type { CallOptions, GetOptions, GetOrLoadOptions, Leased, SetEntry, SetOptions } from './types';
import { CacheError } from './errors';

/**
 * The calls the loop makes, as the Client provides them: the leased reads on its main channel; the holder's fills
 * and releases on a connection of its own, since the Gets waiting for them may hold every stream of the main one.
 */
export interface LeaseCalls {
  getWithLease(key: string, options: GetOptions): Promise<Leased>;
  getManyWithLease(keys: string[], options: GetOptions): Promise<Leased[]>;
  /** Set under `options.leaseToken`. */
  fill(key: string, value: Bytes, options: SetOptions): Promise<void>;
  /** BatchSet of lease fills; entries whose lease was lost are not written, and that is not an error. */
  fillMany(entries: SetEntry[], options: CallOptions): Promise<void>;
  releaseLease(key: string, leaseToken: Buffer): Promise<boolean>;
}

/** Loads one key from the caller's own source of truth. */
export type LoadFn = (key: string) => Bytes | Promise<Bytes>;

/** Loads several keys at once; keys left out of the answer have no value (nothing is cached for them). */
export type BatchLoadFn = (
  keys: string[],
) => Map<string, Bytes> | Record<string, Bytes> | Promise<Map<string, Bytes> | Record<string, Bytes>>;

export async function getOrLoad(client: LeaseCalls, key: string, load: LoadFn, options: GetOrLoadOptions): Promise<Buffer> {
  const call = { timeoutMs: options.timeoutMs };
  const { entry, leaseToken } = await client.getWithLease(key, call);
  if (entry) {
    if (leaseToken) void refresh(client, key, load, leaseToken, options);
    return entry.value;
  }
  let value: Buffer;
  try {
    value = toBuffer(await load(key));
  } catch (error) {
    if (leaseToken) await release(client, key, leaseToken);
    throw error;
  }
  if (leaseToken) {
    try {
      await client.fill(key, value, { ...call, ttlMs: options.ttlMs, leaseToken });
    } catch (error) {
      if (!leaseLost(error)) throw error;
    }
  }
  return value;
}

export async function getManyOrLoad(
  client: LeaseCalls,
  keys: string[],
  load: BatchLoadFn,
  options: GetOrLoadOptions,
): Promise<(Buffer | null)[]> {
  const call = { timeoutMs: options.timeoutMs };
  const unique = [...new Set(keys)];
  const answers = await client.getManyWithLease(unique, call);
  const values = new Map<string, Buffer>();
  const stale = new Map<string, Buffer>(); // found, with the refresh duty
  const leases = new Map<string, Buffer>(); // missing, and ours to fill
  const missing: string[] = [];
  unique.forEach((key, i) => {
    const { entry, leaseToken } = answers[i];
    if (entry) {
      values.set(key, entry.value);
      if (leaseToken) stale.set(key, leaseToken);
    } else {
      missing.push(key);
      if (leaseToken) leases.set(key, leaseToken);
    }
  });
  if (stale.size > 0) void refreshMany(client, stale, load, options);
  if (missing.length > 0) {
    let loaded: Map<string, Buffer>;
    try {
      loaded = loadedMap(await load(missing));
    } catch (error) {
      await releaseAll(client, leases);
      throw error;
    }
    const fills: SetEntry[] = [];
    const unfilled = new Map<string, Buffer>();
    for (const key of missing) {
      const value = loaded.get(key);
      if (value !== undefined) values.set(key, value);
      const leaseToken = leases.get(key);
      if (!leaseToken) continue;
      if (value === undefined) unfilled.set(key, leaseToken);
      else fills.push({ key, value, leaseToken, ttlMs: options.ttlMs });
    }
    await releaseAll(client, unfilled);
    // Entries whose lease was lost come back in leaseLostKeys: their loaded values are answered all the same.
    if (fills.length > 0) await client.fillMany(fills, call);
  }
  return keys.map((key) => values.get(key) ?? null);
}

/** Reloads a stale key and caches it under `leaseToken`, or gives the lease back. Best effort: never throws. */
async function refresh(client: LeaseCalls, key: string, load: LoadFn, leaseToken: Buffer, options: GetOrLoadOptions) {
  let value: Buffer;
  try {
    value = toBuffer(await load(key));
  } catch {
    await release(client, key, leaseToken);
    return;
  }
  await client.fill(key, value, { timeoutMs: options.timeoutMs, ttlMs: options.ttlMs, leaseToken }).catch(() => {});
}

/** refresh for the stale keys of a batch: one load, one BatchSet. Best effort: never throws. */
async function refreshMany(client: LeaseCalls, stale: Map<string, Buffer>, load: BatchLoadFn, options: GetOrLoadOptions) {
  let loaded: Map<string, Buffer>;
  try {
    loaded = loadedMap(await load([...stale.keys()]));
  } catch {
    await releaseAll(client, stale);
    return;
  }
  const fills: SetEntry[] = [];
  const unfilled = new Map<string, Buffer>();
  for (const [key, leaseToken] of stale) {
    const value = loaded.get(key);
    if (value === undefined) unfilled.set(key, leaseToken);
    else fills.push({ key, value, leaseToken, ttlMs: options.ttlMs });
  }
  await releaseAll(client, unfilled);
  if (fills.length > 0) await client.fillMany(fills, { timeoutMs: options.timeoutMs }).catch(() => {});
}

/** Gives a lease back so the next waiter takes it now rather than at its expiry; if this fails, it expires. */
async function release(client: LeaseCalls, key: string, leaseToken: Buffer): Promise<void> {
  await client.releaseLease(key, leaseToken).catch(() => {});
}

async function releaseAll(client: LeaseCalls, leases: Map<string, Buffer>): Promise<void> {
  await Promise.all([...leases].map(([key, leaseToken]) => release(client, key, leaseToken)));
}

/**
 * A fill refused with FAILED_PRECONDITION: LEASE_LOST (the key was written or invalidated while we loaded), or
 * STALE_VERSION. What was loaded is still the caller's answer; it is just not cached.
 */
function leaseLost(error: unknown): boolean {
  return error instanceof CacheError && error.code === grpc.status.FAILED_PRECONDITION;
}

function loadedMap(loaded: Map<string, Bytes> | Record<string, Bytes>): Map<string, Buffer> {
  const entries = loaded instanceof Map ? [...loaded] : Object.entries(loaded);
  return new Map(entries.map(([key, value]) => [key, toBuffer(value)]));
}
