// Package cachecoord is the Go client of cachecoord, the gRPC cache-coordination service.
//
// A Client holds one long-lived gRPC connection and is safe for concurrent use; make one per process and target.
// Every call takes a context.Context first: its deadline, when it has one, bounds the whole call (every retry
// attempt and the backoff between them); otherwise the client's default timeout (WithTimeout, 5 s) does.
//
//	client, err := cachecoord.New("127.0.0.1:50051", cachecoord.WithToken(token))
//	value, err := client.GetOrLoad(ctx, "user:123", func(ctx context.Context, key string) ([]byte, error) {
//		return db.LoadUser(ctx, key) // runs once per key across every caller and replica
//	})
//
// Errors from the service are *Error values (errors.As) carrying the gRPC code and the ErrorInfo reason, such as
// INVALID_KEY or LEASE_LOST. Calls are retried with jittered exponential backoff on UNAVAILABLE only when they are
// safe to repeat: Get, GetMany, Invalidate, InvalidatePattern, ReleaseLease, RenewLease, Stats, and Set/SetMany
// when every entry carries a version or a lease token (see RetryPolicy).
//
// GetOrLoad runs the leased cache-aside loop of docs/leases.md; ServeLoader serves a LoaderService from a plain
// function so the server can fill misses itself.
//
// The gRPC stubs in internal/pb are generated from proto/ and never committed: run `go generate ./...` first.
package cachecoord
