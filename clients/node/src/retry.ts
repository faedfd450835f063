// Which calls may be retried, and how long to wait between attempts. A call is retried only when it failed
// with UNAVAILABLE (the server or the connection was not there) and repeating it cannot change the outcome:
// reads, invalidations, lease releases and renewals, Stats, and writes whose every entry is conditional (a
// version, or a lease token). A plain Set is never retried: a first attempt that did land followed by another
// writer's Set would be overwritten by the retry. Nothing is retried on any other code (INVALID_ARGUMENT is
// permanent; DEADLINE_EXCEEDED may have been applied).

/** How a Client retries; every field has a default (DEFAULT_RETRY). */
export interface RetryPolicy {
  /** Attempts in all, the first included (1 = never retry). Default 4. */
  maxAttempts: number;
  /** Backoff ceiling before the first retry, in ms. Default 50. */
  initialBackoffMs: number;
  /** Largest backoff ceiling, in ms. Default 1000. */
  maxBackoffMs: number;
  /** Growth of the ceiling per retry. Default 2. */
  multiplier: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 50,
  maxBackoffMs: 1000,
  multiplier: 2,
});

/** A policy from the Client's `retry` option: `false` turns retries off, a partial policy overrides defaults. */
export function retryPolicy(option: Partial<RetryPolicy> | false | undefined): RetryPolicy {
  if (option === false) return { ...DEFAULT_RETRY, maxAttempts: 1 };
  const policy = { ...DEFAULT_RETRY, ...option };
  if (!(policy.maxAttempts >= 1)) throw new RangeError('retry.maxAttempts must be at least 1');
  return policy;
}

/**
 * The wait before retry number `retry` (1 for the first retry): uniformly random between half and all of
 * min(maxBackoffMs, initialBackoffMs * multiplier^(retry-1)), so callers that failed together do not come back
 * together, yet every wait keeps at least half its ceiling.
 */
export function backoffMs(policy: RetryPolicy, retry: number): number {
  const ceiling = Math.min(policy.maxBackoffMs, policy.initialBackoffMs * policy.multiplier ** (retry - 1));
  return ceiling / 2 + (Math.random() * ceiling) / 2;
}

/** Methods retried on UNAVAILABLE whatever their request holds. */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set([
  'Get',
  'BatchGet',
  'Invalidate',
  'InvalidatePattern',
  'ReleaseLease',
  'RenewLease',
  'Stats',
]);

/** A Set entry is safe to repeat when it is conditional: it carries a version or a lease token. */
export function conditionalWrite(entry: { version?: unknown; leaseToken?: Uint8Array | string }): boolean {
  return entry.version !== undefined || (entry.leaseToken !== undefined && entry.leaseToken.length > 0);
}

/**
 * UNAVAILABLE reasons that are answers, not accidents: the server reached the entity's loader and it failed.
 * Repeating the call would only load the failing database again (and trip the server's loader breaker sooner).
 */
export const FINAL_REASONS: ReadonlySet<string> = new Set(['LOADER_FAILED']);
