// The public types of Client's calls and answers (apart from Client, so cacheAside.ts can use them too).
import type * as grpc from '@grpc/grpc-js';

import type { Bytes } from './bytes';
import type { RetryPolicy } from './retry';
import type { Source__Output } from './generated/cachecoord/v1/Source';

/** Where an answer came from: the proto's Source value without its `SOURCE_` prefix (`HIT`, `COALESCED`, …). */
export type Source = Source__Output extends `SOURCE_${infer Name}` ? Name : never;

/** A value the cache answered. */
export interface Entry {
  key: string;
  value: Buffer;
  source: Source;
  /** How long the value stays fresh, in ms (undefined if the server did not say). */
  ttlRemainingMs: number | undefined;
}

/** The whole answer of a Get, misses included: a miss says whether it is remembered as absent (`NEGATIVE`). */
export interface Lookup {
  key: string;
  found: boolean;
  /** The value; null when not found. */
  value: Buffer | null;
  source: Source;
  ttlRemainingMs: number | undefined;
}

/** TLS to the server: `true` for the system's roots, or PEM contents (a CA, and a client pair for mutual TLS). */
export interface TlsOptions {
  /** CA certificate(s) to verify the server with; the system's roots when absent. */
  ca?: Buffer;
  /** Client certificate chain, for mutual TLS (with `key`). */
  cert?: Buffer;
  /** Client private key, for mutual TLS (with `cert`). */
  key?: Buffer;
  /** The name to verify the server's certificate against, when it differs from the target's host. */
  serverName?: string;
}

export interface ClientOptions {
  /** Bearer token, sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS or mutual TLS; plaintext (h2c) when absent or false. */
  tls?: boolean | TlsOptions;
  /** Default deadline of each attempt, in ms (5000). Every call takes `{ timeoutMs }` to override it. */
  timeoutMs?: number;
  /** Retry policy (see RetryPolicy; DEFAULT_RETRY when absent), or false for a single attempt per call. */
  retry?: Partial<RetryPolicy> | false;
  /** grpc-js channel options, merged over this library's defaults (DEFAULT_CHANNEL_OPTIONS). */
  channelOptions?: grpc.ChannelOptions;
  /** grpc-js client interceptors; each attempt of a retried call passes through them again. */
  interceptors?: grpc.Interceptor[];
}

/** Per-call options. */
export interface CallOptions {
  /** Deadline of each attempt of this call, in ms, instead of the Client's timeoutMs. */
  timeoutMs?: number;
}

export interface GetOptions extends CallOptions {
  /** Answer from the cache alone: a miss stays a miss even when the entity has a loader. */
  cacheOnly?: boolean;
}

export interface SetOptions extends CallOptions {
  /** TTL in ms instead of the entity policy's (within the server's bounds). */
  ttlMs?: number;
  /** Makes the write conditional (refused with STALE_VERSION below the key's version); retried on UNAVAILABLE. */
  version?: number | bigint;
  /** Fills the lease a getWithLease handed out (refused with LEASE_LOST if it no longer holds). */
  leaseToken?: Buffer;
}

/** One entry of setMany. */
export interface SetEntry {
  key: string;
  value: Bytes;
  ttlMs?: number;
  version?: number | bigint;
  leaseToken?: Buffer;
}

export interface SetManyResult {
  written: number;
  /** Entries refused because a newer version is stored. */
  staleKeys: string[];
  /** Entries refused because their lease no longer held. */
  leaseLostKeys: string[];
}

/** What getWithLease answers: the value if there is one, and the lease if this caller is to fill (or refresh) it. */
export interface Leased {
  entry: Entry | null;
  /** Non-null: load the value and `set(key, value, { leaseToken })`, or `releaseLease`. With an entry, it is stale. */
  leaseToken: Buffer | null;
}

export interface GetOrLoadOptions extends CallOptions {
  /** TTL in ms for the value this caller loads and caches. */
  ttlMs?: number;
}
