package cachecoord

import (
	"context"
	"math/rand"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy says how often and how patiently a call that is safe to repeat is retried on UNAVAILABLE.
//
// Only UNAVAILABLE is retried (the server could not be reached or asked to be tried again), never
// INVALID_ARGUMENT, FAILED_PRECONDITION, any other code or UNAVAILABLE with the reason LOADER_FAILED, and only for calls whose repetition cannot change the
// outcome: Get, GetMany, Invalidate, InvalidatePattern, ReleaseLease, RenewLease, Stats, and Set/SetMany when
// every entry carries a version or a lease token. A plain Set is sent once: a repeat could overwrite a newer
// write that landed in between.
//
// Attempt n (n ≥ 1) is followed by a sleep of min(InitialBackoff·Multiplier^(n-1), MaxBackoff), jittered by
// ±20%. The call's deadline (context or WithTimeout) bounds everything: attempts and sleeps.
type RetryPolicy struct {
	// MaxAttempts counts the first attempt too; 1 (or less) disables retries.
	MaxAttempts int
	// InitialBackoff is the sleep after the first failed attempt.
	InitialBackoff time.Duration
	// MaxBackoff caps each sleep.
	MaxBackoff time.Duration
	// Multiplier grows the sleep after each failed attempt (values below 1 count as 1).
	Multiplier float64
}

// DefaultRetryPolicy: 5 attempts over about 1.5 s of backoff, inside the default 5 s deadline.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}

// backoff is the jittered sleep after failed attempt number attempt (1-based).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := float64(p.InitialBackoff)
	mult := p.Multiplier
	if mult < 1 {
		mult = 1
	}
	for i := 1; i < attempt && d < float64(p.MaxBackoff); i++ {
		d *= mult
	}
	if d > float64(p.MaxBackoff) {
		d = float64(p.MaxBackoff)
	}
	return time.Duration(d * (0.8 + 0.4*rand.Float64()))
}

// finalReason reports an UNAVAILABLE that is an answer, not an accident: LOADER_FAILED means the server reached
// the entity's loader and it failed, so a retry would only load the failing database again (and trip the
// server's loader breaker sooner).
func finalReason(err error) bool {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			return info.GetReason() == ReasonLoaderFailed
		}
	}
	return false
}

// run calls attempt until it succeeds, fails with a code other than UNAVAILABLE, the call is not retryable, the
// attempts are spent or ctx is done. It returns how many attempts it made.
func (p RetryPolicy) run(ctx context.Context, retryable bool, attempt func(context.Context) error) (int, error) {
	for n := 1; ; n++ {
		err := attempt(ctx)
		if err == nil || !retryable || n >= p.MaxAttempts || status.Code(err) != codes.Unavailable || finalReason(err) {
			return n, err
		}
		timer := time.NewTimer(p.backoff(n))
		select {
		case <-ctx.Done():
			timer.Stop()
			return n, err // the last UNAVAILABLE says more than "deadline exceeded"
		case <-timer.C:
		}
	}
}
