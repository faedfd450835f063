package cachecoord

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A retryable call is repeated on UNAVAILABLE until the attempts are spent; any other code ends it at once.
func TestRetryOnlyOnUnavailable(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 4, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Multiplier: 2}
	for _, tc := range []struct {
		code      codes.Code
		retryable bool
		attempts  int
	}{
		{codes.Unavailable, true, 4},
		{codes.Unavailable, false, 1},
		{codes.InvalidArgument, true, 1},
		{codes.FailedPrecondition, true, 1},
		{codes.DeadlineExceeded, true, 1},
	} {
		calls := 0
		n, err := p.run(context.Background(), tc.retryable, func(context.Context) error {
			calls++
			return status.Error(tc.code, "no")
		})
		if n != tc.attempts || calls != tc.attempts || status.Code(err) != tc.code {
			t.Errorf("%v retryable=%v: %d attempts (%d calls), %v; want %d", tc.code, tc.retryable, n, calls, err, tc.attempts)
		}
	}
}

// A call that recovers stops retrying; a done context stops the backoff.
func TestRetryStopsOnSuccessAndOnContext(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Multiplier: 1}
	calls := 0
	n, err := p.run(context.Background(), true, func(context.Context) error {
		if calls++; calls < 3 {
			return status.Error(codes.Unavailable, "down")
		}
		return nil
	})
	if n != 3 || err != nil {
		t.Fatalf("%d attempts, %v; want 3, nil", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n, err = RetryPolicy{MaxAttempts: 10, InitialBackoff: time.Hour, MaxBackoff: time.Hour}.run(ctx, true,
		func(context.Context) error { return status.Error(codes.Unavailable, "down") })
	if n != 1 || status.Code(err) != codes.Unavailable {
		t.Fatalf("%d attempts, %v; want 1, UNAVAILABLE", n, err)
	}
}

// Backoff grows by the multiplier up to the cap, jittered within ±20%.
func TestBackoffBounds(t *testing.T) {
	p := RetryPolicy{MaxAttempts: 8, InitialBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}
	for attempt, base := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 9: time.Second} {
		for i := 0; i < 50; i++ {
			d := p.backoff(attempt)
			if d < base*8/10 || d > base*12/10 {
				t.Fatalf("backoff(%d) = %v, want %v ± 20%%", attempt, d, base)
			}
		}
	}
}

// Only writes carrying a version or a lease token are safe to repeat.
func TestSetRetryRule(t *testing.T) {
	v := uint64(1)
	if (&Entry{Key: "a:b"}).safeToRetry() {
		t.Error("a plain Set must not be retried")
	}
	if !(&Entry{Key: "a:b", Version: &v}).safeToRetry() || !(&Entry{Key: "a:b", LeaseToken: LeaseToken("t")}).safeToRetry() {
		t.Error("a versioned or leased Set is safe to retry")
	}
}

// Errors are *Error with the ErrorInfo reason, and still carry their gRPC status.
func TestErrorCarriesReason(t *testing.T) {
	err := toError(status.Error(codes.Unavailable, "connection refused"), 3)
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Code != codes.Unavailable || cerr.Reason != "" || cerr.Attempts != 3 {
		t.Fatalf("got %#v", err)
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("status.Code = %v", status.Code(err))
	}
	st, _ := status.New(codes.FailedPrecondition, "lease gone").WithDetails(&errdetails.ErrorInfo{Reason: ReasonLeaseLost, Domain: ErrorDomain})
	if err := toError(st.Err(), 1); !IsLeaseLost(err) {
		t.Fatalf("%v should be LEASE_LOST", err)
	}
	if !errors.Is(toError(status.Error(codes.DeadlineExceeded, "late"), 1), context.DeadlineExceeded) {
		t.Fatal("DEADLINE_EXCEEDED should match context.DeadlineExceeded")
	}
}
