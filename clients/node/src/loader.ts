// serveLoader: a cachecoord.v1.LoaderService from a plain function, so a team writes only its query. cachecoord
// calls Load at most once per key at a time across all of its replicas, so the function needs no locking.
import * as grpc from '@grpc/grpc-js';

import { toBuffer, type Bytes } from './bytes';
import type { BatchLoadResult } from './generated/cachecoord/v1/BatchLoadResult';
import type { LoadRequest__Output } from './generated/cachecoord/v1/LoadRequest';
import type { LoadResponse } from './generated/cachecoord/v1/LoadResponse';
import type { LoaderServiceHandlers } from './generated/cachecoord/v1/LoaderService';
import { loaderProto } from './proto';

/** A key to load, split into its parts (`user:123:posts` → entity `user`, id `123`, field `posts`). */
export type LoadRequest = LoadRequest__Output;

/**
 * What a loader function answers: the value (bytes or a UTF-8 string), or `{ value, ttlMs?, version? }` to set
 * the TTL or the row's version, or null/undefined when the source has no such key (cachecoord caches the absence
 * for the entity's negative TTL).
 */
export type Loaded = Bytes | { value: Bytes; ttlMs?: number; version?: number | bigint } | null | undefined;

export type LoaderFn = (request: LoadRequest) => Loaded | Promise<Loaded>;

export interface ServeLoaderOptions {
  /** Server TLS (PEM contents); with `ca`, clients must present a certificate it signed (mutual TLS). */
  tls?: { cert: Buffer; key: Buffer; ca?: Buffer };
  /** Answers a BatchLoad in one go (e.g. one `WHERE id IN (…)` query); by default `fn` runs once per key. */
  batch?: (requests: LoadRequest[]) => Map<string, Loaded> | Promise<Map<string, Loaded>>;
}

/** A running LoaderService. */
export interface LoaderServer {
  /** The port it listens on (useful with address `127.0.0.1:0`). */
  port: number;
  /** Stops accepting calls and waits for those in flight. */
  close(): Promise<void>;
}

/** Serves LoaderService on `address` (`host:port`) with `fn` answering each key. */
export async function serveLoader(fn: LoaderFn, address: string, options: ServeLoaderOptions = {}): Promise<LoaderServer> {
  const batch = options.batch ?? (async (requests: LoadRequest[]) => {
    const loaded = await Promise.all(requests.map((request) => fn(request)));
    return new Map(requests.map((request, i) => [request.key, loaded[i]]));
  });
  const handlers: LoaderServiceHandlers = {
    Load: (call, callback) => {
      Promise.resolve()
        .then(() => fn(call.request))
        .then((loaded) => callback(null, response(loaded)), (error) => callback(failure(error)));
    },
    BatchLoad: (call, callback) => {
      Promise.resolve()
        .then(() => batch(call.request.requests))
        .then(
          (loaded) => {
            const results: BatchLoadResult[] = [];
            for (const [key, one] of loaded) results.push({ key, ...response(one) });
            callback(null, { results });
          },
          (error) => callback(failure(error)),
        );
    },
  };
  const server = new grpc.Server();
  server.addService(loaderProto().LoaderService.service, handlers);
  const credentials = options.tls
    ? grpc.ServerCredentials.createSsl(options.tls.ca ?? null, [{ cert_chain: options.tls.cert, private_key: options.tls.key }], options.tls.ca !== undefined)
    : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(address, credentials, (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  return {
    port,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}

function response(loaded: Loaded): LoadResponse {
  if (loaded === null || loaded === undefined) return { found: false };
  if (typeof loaded === 'string' || loaded instanceof Uint8Array) return { found: true, value: toBuffer(loaded) };
  const { value, ttlMs, version } = loaded;
  return {
    found: true,
    value: toBuffer(value),
    ...(ttlMs === undefined ? {} : { ttl: { seconds: Math.floor(ttlMs / 1000), nanos: (ttlMs % 1000) * 1e6 } }),
    ...(version === undefined ? {} : { version: String(version) }),
  };
}

/** A failing loader function: its gRPC code if it carries one (e.g. a CacheError), else UNKNOWN. */
function failure(error: unknown): Partial<grpc.StatusObject> {
  const code = (error as { code?: unknown })?.code;
  return {
    code: typeof code === 'number' && grpc.status[code] !== undefined ? code : grpc.status.UNKNOWN,
    details: error instanceof Error ? error.message : String(error),
  };
}
