// The Client: one long-lived channel to cachecoord (and a second, on a connection of its own, for a lease holder's
// fills and releases), a Promise per call, the bearer token on every call, a default deadline overridable per call,
// retries where they are safe (./retry.ts), errors as CacheError (./errors.ts).
import * as grpc from '@grpc/grpc-js';

import { toBuffer, type Bytes } from './bytes';
import { getManyOrLoad, getOrLoad, type BatchLoadFn, type LeaseCalls, type LoadFn } from './cacheAside';
import { CacheError } from './errors';
import type { CacheServiceClient } from './generated/cachecoord/v1/CacheService';
import type { BatchGetRequest } from './generated/cachecoord/v1/BatchGetRequest';
import type { BatchGetResponse__Output } from './generated/cachecoord/v1/BatchGetResponse';
import type { BatchGetResult__Output } from './generated/cachecoord/v1/BatchGetResult';
import type { BatchSetRequest } from './generated/cachecoord/v1/BatchSetRequest';
import type { BatchSetResponse__Output } from './generated/cachecoord/v1/BatchSetResponse';
import type { GetRequest } from './generated/cachecoord/v1/GetRequest';
import type { GetResponse__Output } from './generated/cachecoord/v1/GetResponse';
import type { InvalidatePatternRequest } from './generated/cachecoord/v1/InvalidatePatternRequest';
import type { InvalidatePatternResponse__Output } from './generated/cachecoord/v1/InvalidatePatternResponse';
import type { InvalidateRequest } from './generated/cachecoord/v1/InvalidateRequest';
import type { InvalidateResponse__Output } from './generated/cachecoord/v1/InvalidateResponse';
import type { ReleaseLeaseRequest } from './generated/cachecoord/v1/ReleaseLeaseRequest';
import type { ReleaseLeaseResponse__Output } from './generated/cachecoord/v1/ReleaseLeaseResponse';
import type { RenewLeaseRequest } from './generated/cachecoord/v1/RenewLeaseRequest';
import type { RenewLeaseResponse__Output } from './generated/cachecoord/v1/RenewLeaseResponse';
import type { SetRequest } from './generated/cachecoord/v1/SetRequest';
import type { SetResponse__Output } from './generated/cachecoord/v1/SetResponse';
import type { StatsRequest } from './generated/cachecoord/v1/StatsRequest';
import type { StatsResponse__Output } from './generated/cachecoord/v1/StatsResponse';
import type { Duration__Output } from './generated/google/protobuf/Duration';
import { cacheProto } from './proto';
import type {
  CallOptions,
  ClientOptions,
  Entry,
  GetOptions,
  GetOrLoadOptions,
  Leased,
  Lookup,
  SetEntry,
  SetManyResult,
  SetOptions,
  Source,
  TlsOptions,
} from './types';
import { backoffMs, conditionalWrite, FINAL_REASONS, IDEMPOTENT_METHODS, retryPolicy, type RetryPolicy } from './retry';

/**
 * Channel options applied unless overridden: reconnect after a lost server within about a second instead of
 * grpc-js's default backoff that grows to two minutes, so a restarted server is reached while calls still retry.
 */
export const DEFAULT_CHANNEL_OPTIONS: Readonly<grpc.ChannelOptions> = Object.freeze({
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 1000,
});

const DEFAULT_TIMEOUT_MS = 5000;

/** Each CacheService method's request and answer, as generated from cache_service.proto. */
interface Methods {
  Get: [GetRequest, GetResponse__Output];
  BatchGet: [BatchGetRequest, BatchGetResponse__Output];
  Set: [SetRequest, SetResponse__Output];
  BatchSet: [BatchSetRequest, BatchSetResponse__Output];
  Invalidate: [InvalidateRequest, InvalidateResponse__Output];
  InvalidatePattern: [InvalidatePatternRequest, InvalidatePatternResponse__Output];
  ReleaseLease: [ReleaseLeaseRequest, ReleaseLeaseResponse__Output];
  RenewLease: [RenewLeaseRequest, RenewLeaseResponse__Output];
  Stats: [StatsRequest, StatsResponse__Output];
}

type Unary<M extends keyof Methods> = (
  request: Methods[M][0],
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: grpc.requestCallback<Methods[M][1]>,
) => grpc.ClientUnaryCall;

/**
 * A cachecoord client over one long-lived channel; create one per process (or per target) and share it. It opens
 * a second connection for getOrLoad's lease holder (see `fills`).
 */
export class Client {
  private readonly stub: CacheServiceClient;
  /**
   * A channel on a connection of its own for the calls other callers wait on: the lease holder's Set/BatchSet
   * under its token and its ReleaseLease. The server allows `limits.max_concurrent_streams` streams per
   * connection, and leased Gets waiting for a fill hold theirs until it lands; with that many waiters on the main
   * connection the fill would queue behind them until their lease wait ran out, and each would load the key itself.
   */
  private readonly fills: CacheServiceClient;
  /** The calls of the cache-aside loop: reads on the main channel, the holder's fills and releases on `fills`. */
  private readonly leaseCalls: LeaseCalls;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly retry: RetryPolicy;

  /** `target` is `host:port` (or any grpc-js target such as `dns:///name:port`). */
  constructor(target: string, options: ClientOptions = {}) {
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retry = retryPolicy(options.retry);
    const channelOptions: grpc.ClientOptions = { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions };
    const tls = options.tls === true ? {} : options.tls || undefined;
    if (tls?.serverName) {
      channelOptions['grpc.ssl_target_name_override'] = tls.serverName;
      channelOptions['grpc.default_authority'] = tls.serverName;
    }
    if (options.interceptors) channelOptions.interceptors = options.interceptors;
    const credentials = tls
      ? grpc.credentials.createSsl(tls.ca ?? null, tls.key ?? null, tls.cert ?? null)
      : grpc.credentials.createInsecure();
    this.stub = new (cacheProto().CacheService)(target, credentials, channelOptions);
    // grpc-js shares one subchannel (one connection) between channels of equal target and options through a
    // process-wide pool; a local pool gives the fill channel a connection of its own.
    const fillOptions = { ...channelOptions, 'grpc.use_local_subchannel_pool': 1 };
    this.fills = new (cacheProto().CacheService)(target, credentials, fillOptions);
    this.leaseCalls = {
      getWithLease: (key, options) => this.getWithLease(key, options),
      getManyWithLease: (keys, options) => this.getManyWithLease(keys, options),
      fill: async (key, value, options) => {
        const request = setRequest({ key, value, ...options });
        await this.call('Set', request, options, conditionalWrite(options), this.fills);
      },
      fillMany: async (entries, options) => {
        const request = { entries: entries.map(setRequest) };
        await this.call('BatchSet', request, options, entries.every(conditionalWrite), this.fills);
      },
      releaseLease: async (key, leaseToken) => {
        const reply = await this.call('ReleaseLease', { key, leaseToken }, {}, false, this.fills);
        return reply.released;
      },
    };
  }

  /** Connects now rather than on the first call; rejects if the channel is not ready within `timeoutMs`. */
  connect(timeoutMs: number = this.timeoutMs): Promise<void> {
    return new Promise((resolve, reject) => {
      this.stub.waitForReady(Date.now() + timeoutMs, (error) => (error ? reject(error) : resolve()));
    });
  }

  /** Closes both channels; calls after this fail. */
  close(): void {
    this.stub.close();
    this.fills.close();
  }

  /** The value of `key`, or null on a miss. */
  async get(key: string, options: GetOptions = {}): Promise<Entry | null> {
    const { found, value, source, ttlRemainingMs } = await this.lookup(key, options);
    return found && value ? { key, value, source, ttlRemainingMs } : null;
  }

  /** Like get, but a miss is answered too, with its source (`MISS`, or `NEGATIVE` when the loader found nothing). */
  async lookup(key: string, options: GetOptions = {}): Promise<Lookup> {
    const reply = await this.call('Get', { key, cacheOnly: options.cacheOnly ?? false }, options);
    return reply.found ? { ...entry(key, reply), found: true } : { ...entry(key, reply), found: false, value: null };
  }

  /** The values of `keys`, in request order (null for a miss). */
  async getMany(keys: string[], options: GetOptions = {}): Promise<(Entry | null)[]> {
    const request = { keys, cacheOnly: options.cacheOnly ?? false };
    const reply = await this.call('BatchGet', request, options);
    return reply.results.map((result) => (result.found ? entry(result.key, result) : null));
  }

  /**
   * Get with a lease: on a miss of a key no loader fills, exactly one caller across every replica gets a lease
   * token (and must fill or release it); the others wait for its fill. See getOrLoad for the whole loop.
   */
  async getWithLease(key: string, options: GetOptions = {}): Promise<Leased> {
    const request = { key, cacheOnly: options.cacheOnly ?? false, lease: true };
    const reply = await this.call('Get', request, options);
    return leased(key, reply);
  }

  /** Leased BatchGet: one Leased per key, in request order. */
  async getManyWithLease(keys: string[], options: GetOptions = {}): Promise<Leased[]> {
    const request = { keys, cacheOnly: options.cacheOnly ?? false, lease: true };
    const reply = await this.call('BatchGet', request, options);
    return reply.results.map((result) => leased(result.key, result));
  }

  /** Writes `key`; answers the TTL the server applied, in ms. Retried only with a version or a lease token. */
  async set(key: string, value: Bytes, options: SetOptions = {}): Promise<number | undefined> {
    const request = setRequest({ key, value, ...options });
    const reply = await this.call('Set', request, options, conditionalWrite(options));
    return durationMs(reply.ttl);
  }

  /** Writes many keys in one call. Retried only when every entry carries a version or a lease token. */
  async setMany(entries: SetEntry[], options: CallOptions = {}): Promise<SetManyResult> {
    const request = { entries: entries.map(setRequest) };
    const reply = await this.call('BatchSet', request, options, entries.every(conditionalWrite));
    return { written: reply.written, staleKeys: reply.staleKeys, leaseLostKeys: reply.leaseLostKeys };
  }

  /** Deletes `keys` (one key or many); answers how many existed. */
  async invalidate(keys: string | string[], options: CallOptions = {}): Promise<number> {
    const request = { keys: typeof keys === 'string' ? [keys] : keys };
    return (await this.call('Invalidate', request, options)).deleted;
  }

  /** Deletes every key matching a glob (`*`, `?`; the entity segment literal); answers how many. */
  async invalidatePattern(pattern: string, options: CallOptions = {}): Promise<number> {
    return (await this.call('InvalidatePattern', { pattern }, options)).deleted;
  }

  /** Gives back a lease without filling it (the load failed); true if the token still held it. */
  async releaseLease(key: string, leaseToken: Buffer, options: CallOptions = {}): Promise<boolean> {
    const request = { key, leaseToken };
    return (await this.call('ReleaseLease', request, options)).released;
  }

  /** Extends a lease by the entity's lease TTL; answers how long it now holds, in ms. LEASE_LOST if it is gone. */
  async renewLease(key: string, leaseToken: Buffer, options: CallOptions = {}): Promise<number | undefined> {
    const reply = await this.call('RenewLease', { key, leaseToken }, options);
    return durationMs(reply.ttl);
  }

  /** The answering replica's counters per entity, and its Redis nodes' health. */
  async stats(options: CallOptions = {}): Promise<StatsResponse__Output> {
    return this.call('Stats', {}, options);
  }

  /**
   * The value of `key`: from the cache, or loaded by `load(key)` and cached under a lease, so that however many
   * callers miss at once, on every replica, one of them loads. A fill refused because the key was written or
   * invalidated meanwhile (LEASE_LOST) still answers the loaded value; a failing `load` releases the lease and
   * its error is thrown as is.
   */
  getOrLoad(key: string, load: LoadFn, options: GetOrLoadOptions = {}): Promise<Buffer> {
    return getOrLoad(this.leaseCalls, key, load, options);
  }

  /**
   * The batch form of getOrLoad: one leased BatchGet, one `load(missingKeys)` for the keys this caller must load,
   * one BatchSet of those it holds leases for. Answers values in request order; null for a key `load` left out.
   */
  getManyOrLoad(keys: string[], load: BatchLoadFn, options: GetOrLoadOptions = {}): Promise<(Buffer | null)[]> {
    return getManyOrLoad(this.leaseCalls, keys, load, options);
  }

  /**
   * One call on `stub` (the main channel's, or `fills`), retried on UNAVAILABLE when its method is idempotent or
   * it is a `conditional` write.
   */
  private async call<M extends keyof Methods>(
    name: M,
    request: Methods[M][0],
    options: CallOptions,
    conditional = false,
    stub: CacheServiceClient = this.stub,
  ): Promise<Methods[M][1]> {
    const mayRetry = IDEMPOTENT_METHODS.has(name) || conditional;
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.attempt(name, request, options, stub);
      } catch (error) {
        const again =
          mayRetry &&
          attempt < this.retry.maxAttempts &&
          error instanceof CacheError &&
          error.code === grpc.status.UNAVAILABLE &&
          !FINAL_REASONS.has(error.reason ?? '');
        if (!again) throw error;
        await new Promise((resolve) => setTimeout(resolve, backoffMs(this.retry, attempt)));
      }
    }
  }

  private attempt<M extends keyof Methods>(
    name: M,
    request: Methods[M][0],
    options: CallOptions,
    stub: CacheServiceClient,
  ): Promise<Methods[M][1]> {
    const method = stub[name] as unknown as Unary<M>;
    const metadata = new grpc.Metadata();
    if (this.token !== undefined) metadata.set('authorization', `Bearer ${this.token}`);
    const deadline = Date.now() + (options.timeoutMs ?? this.timeoutMs);
    return new Promise((resolve, reject) => {
      method.call(stub, request, metadata, { deadline }, (error, reply) => {
        if (error) reject(CacheError.fromServiceError(error));
        else resolve(reply as Methods[M][1]);
      });
    });
  }
}

function entry(key: string, reply: GetResponse__Output | BatchGetResult__Output): Entry {
  return {
    key,
    value: reply.value,
    source: reply.source.replace(/^SOURCE_/, '') as Source,
    ttlRemainingMs: durationMs(reply.ttlRemaining),
  };
}

function leased(key: string, reply: GetResponse__Output | BatchGetResult__Output): Leased {
  return {
    entry: reply.found ? entry(key, reply) : null,
    leaseToken: reply.leaseToken.length > 0 ? reply.leaseToken : null,
  };
}

function setRequest(entry: SetEntry): SetRequest {
  return {
    key: entry.key,
    value: toBuffer(entry.value),
    ttl: entry.ttlMs === undefined ? null : msDuration(entry.ttlMs),
    // A string, so a bigint version keeps every bit of its uint64.
    ...(entry.version === undefined ? {} : { version: String(entry.version) }),
    ...(entry.leaseToken === undefined ? {} : { leaseToken: entry.leaseToken }),
  };
}

function durationMs(duration: Duration__Output | null): number | undefined {
  return duration ? duration.seconds * 1000 + duration.nanos / 1e6 : undefined;
}

function msDuration(ms: number): { seconds: number; nanos: number } {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}
