package cachecoord

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the ErrorInfo domain cachecoord puts on every error it answers.
const ErrorDomain = "cachecoord.v1"

// Reasons the service names in ErrorInfo (the list in docs/api.md is authoritative; these are the ones callers
// usually branch on).
const (
	ReasonInvalidKey       = "INVALID_KEY"
	ReasonLeaseLost        = "LEASE_LOST"
	ReasonStaleVersion     = "STALE_VERSION"
	ReasonValueTooLarge    = "VALUE_TOO_LARGE"
	ReasonTTLOutOfBounds   = "TTL_OUT_OF_BOUNDS"
	ReasonUnauthenticated  = "UNAUTHENTICATED"
	ReasonOutOfScope       = "OUT_OF_SCOPE"
	ReasonLeaseWaitTimeout = "LEASE_WAIT_TIMEOUT"
	ReasonLoaderFailed     = "LOADER_FAILED"
)

// Error is every failure a call reports once it reached gRPC: the status code, the ErrorInfo reason (empty when
// the answer carried none, e.g. a connection refused) and the message. Match it with errors.As:
//
//	var cerr *cachecoord.Error
//	if errors.As(err, &cerr) && cerr.Reason == cachecoord.ReasonInvalidKey { ... }
//
// status.Code(err) works too (Error implements GRPCStatus).
type Error struct {
	// Code is the gRPC status code, e.g. codes.InvalidArgument.
	Code codes.Code
	// Reason is the ErrorInfo reason, UPPER_SNAKE, e.g. INVALID_KEY.
	Reason string
	// Message is the status message.
	Message string
	// Metadata is the ErrorInfo metadata (may be nil).
	Metadata map[string]string
	// Attempts is how many attempts the call made before failing (1 unless it was retried).
	Attempts int

	status *status.Status
}

func (e *Error) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("cachecoord: %s (%s): %s", e.Code, e.Reason, e.Message)
	}
	return fmt.Sprintf("cachecoord: %s: %s", e.Code, e.Message)
}

// GRPCStatus lets status.Code and status.FromError see the original status.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Is reports context.Canceled and context.DeadlineExceeded for the matching codes, so
// errors.Is(err, context.DeadlineExceeded) holds for a call that ran out of time.
func (e *Error) Is(target error) bool {
	switch target {
	case context.DeadlineExceeded:
		return e.Code == codes.DeadlineExceeded
	case context.Canceled:
		return e.Code == codes.Canceled
	}
	return false
}

// IsLeaseLost reports whether err is a fill refused because its lease no longer held (FAILED_PRECONDITION,
// LEASE_LOST): the loaded value is still a correct answer, it is just not cached.
func IsLeaseLost(err error) bool {
	var cerr *Error
	return errors.As(err, &cerr) && cerr.Code == codes.FailedPrecondition && cerr.Reason == ReasonLeaseLost
}

// toError turns what a stub returned into *Error, decoding the ErrorInfo detail (grpc-status-details-bin).
func toError(err error, attempts int) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	out := &Error{Code: st.Code(), Message: st.Message(), Attempts: attempts, status: st}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok {
			out.Reason, out.Metadata = info.GetReason(), info.GetMetadata()
			break
		}
	}
	return out
}
