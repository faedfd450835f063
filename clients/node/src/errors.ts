// One error type for every failed call: the gRPC status code, its name, and the ErrorInfo reason cachecoord
// attaches to every non-OK status (google.rpc.Status in the grpc-status-details-bin trailer).
import * as grpc from '@grpc/grpc-js';

import type { ErrorInfo__Output } from './generated/google/rpc/ErrorInfo';
import type { Status__Output } from './generated/google/rpc/Status';
import { rpcTypes } from './proto';

const ERROR_INFO_TYPE = 'type.googleapis.com/google.rpc.ErrorInfo';

/** The name of a gRPC status code, e.g. `UNAVAILABLE` for `grpc.status.UNAVAILABLE`. */
export function codeName(code: grpc.status): string {
  return grpc.status[code] ?? `CODE_${code}`;
}

/**
 * A call cachecoord (or the channel) refused. `code` is the gRPC status (compare with `status.X`), `reason` the
 * ErrorInfo reason such as `INVALID_KEY`, `LEASE_LOST`, `STALE_VERSION`, `BACKEND_UNAVAILABLE` (undefined when
 * the status carried none, e.g. a connection that could not be made).
 */
export class CacheError extends Error {
  /** The gRPC status code. */
  readonly code: grpc.status;
  /** The status code's name, e.g. `INVALID_ARGUMENT`. */
  readonly codeName: string;
  /** The ErrorInfo reason, e.g. `INVALID_KEY`. */
  readonly reason: string | undefined;
  /** The ErrorInfo domain (`cachecoord.v1` for cachecoord's own errors). */
  readonly domain: string | undefined;
  /** The ErrorInfo metadata (e.g. the offending field). */
  readonly errorMetadata: Record<string, string>;
  /** The status message, without the code prefix grpc-js adds to `message`. */
  readonly details: string;
  /** The trailers the server sent. */
  readonly metadata: grpc.Metadata | undefined;

  constructor(
    code: grpc.status,
    details: string,
    info?: { reason?: string; domain?: string; metadata?: Record<string, string> },
    metadata?: grpc.Metadata,
  ) {
    const reason = info?.reason || undefined;
    super(`${codeName(code)}${reason ? ` (${reason})` : ''}: ${details}`);
    this.name = 'CacheError';
    this.code = code;
    this.codeName = codeName(code);
    this.reason = reason;
    this.domain = info?.domain || undefined;
    this.errorMetadata = info?.metadata ?? {};
    this.details = details;
    this.metadata = metadata;
  }

  /** Wraps the ServiceError grpc-js hands a failed call, decoding the ErrorInfo of its status details. */
  static fromServiceError(error: grpc.ServiceError): CacheError {
    return new CacheError(error.code, error.details ?? error.message, errorInfo(error.metadata), error.metadata);
  }
}

/** The first ErrorInfo in the google.rpc.Status of `grpc-status-details-bin`, if the trailer is there and decodes. */
function errorInfo(metadata: grpc.Metadata | undefined): ErrorInfo__Output | undefined {
  const raw = metadata?.get('grpc-status-details-bin')[0];
  if (!Buffer.isBuffer(raw)) return undefined;
  try {
    const types = rpcTypes();
    const status = types.status.toObject(types.status.decode(raw), { defaults: true }) as Status__Output;
    const detail = status.details.find((any) => any.type_url === ERROR_INFO_TYPE);
    if (!detail?.value) return undefined;
    return types.errorInfo.toObject(types.errorInfo.decode(detail.value), { defaults: true }) as ErrorInfo__Output;
  } catch {
    return undefined; // a malformed trailer: the code and message still say what happened
  }
}
