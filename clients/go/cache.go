package cachecoord

import (
	"context"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cachecoord/cachecoord/clients/go/internal/pb"
)

// Source says where an answer came from: the proto's Source value name without its SOURCE_ prefix.
type Source string

// The sources the service answers with.
const (
	SourceHit       Source = "HIT"
	SourceMiss      Source = "MISS"
	SourceLoaded    Source = "LOADED"
	SourceCoalesced Source = "COALESCED"
	SourceStale     Source = "STALE"
	SourceFallback  Source = "FALLBACK"
	SourceNegative  Source = "NEGATIVE"
	SourceNearHit   Source = "NEAR_HIT"
)

func sourceOf(s pb.Source) Source { return Source(strings.TrimPrefix(s.String(), "SOURCE_")) }

// Result is a found value.
type Result struct {
	// Value is the stored bytes, exactly as they were set.
	Value []byte
	// Source says where it came from (HIT, LOADED, COALESCED, ...).
	Source Source
	// TTLRemaining is how long the value stays fresh.
	TTLRemaining time.Duration
}

// LeaseToken makes its holder the one caller that fills a key (GetWithLease). Opaque; never parse it.
type LeaseToken []byte

// GetOption adjusts a Get or GetMany.
type GetOption func(*getSettings)

type getSettings struct{ cacheOnly bool }

// CacheOnly answers from the cache alone: a miss stays a miss even when the entity has a loader.
func CacheOnly() GetOption { return func(g *getSettings) { g.cacheOnly = true } }

func getOptions(opts []GetOption) getSettings {
	var g getSettings
	for _, opt := range opts {
		opt(&g)
	}
	return g
}

// SetOption adjusts a Set (and the fill of GetOrLoad / GetManyOrLoad).
type SetOption func(*Entry)

// WithTTL overrides the entity policy's TTL. It is sent as given: the server refuses a TTL outside its bounds
// (below 1 s, 0 included, or above 7 days by default) with INVALID_ARGUMENT, TTL_OUT_OF_BOUNDS.
func WithTTL(ttl time.Duration) SetOption { return func(e *Entry) { e.TTL = &ttl } }

// WithVersion makes the write conditional: refused (FAILED_PRECONDITION, STALE_VERSION) if a higher version was
// written to the key. A versioned Set is safe to retry.
func WithVersion(version uint64) SetOption { return func(e *Entry) { e.Version = &version } }

// WithLeaseToken makes the Set a fill under a lease GetWithLease handed out: refused with FAILED_PRECONDITION,
// LEASE_LOST (see IsLeaseLost) when the lease no longer holds. A leased Set is safe to retry.
func WithLeaseToken(token LeaseToken) SetOption { return func(e *Entry) { e.LeaseToken = token } }

// Entry is one write of SetMany; NewEntry builds one from the same options as Set.
type Entry struct {
	Key   string
	Value []byte
	// TTL, when non-nil, overrides the entity policy's TTL (WithTTL).
	TTL *time.Duration
	// Version, when non-nil, makes the write conditional (WithVersion).
	Version *uint64
	// LeaseToken, when non-empty, makes the write a fill under that lease (WithLeaseToken).
	LeaseToken LeaseToken
}

// NewEntry is an Entry for SetMany with the options of Set (WithTTL, WithVersion, WithLeaseToken).
func NewEntry(key string, value []byte, opts ...SetOption) Entry {
	entry := Entry{Key: key, Value: value}
	for _, opt := range opts {
		opt(&entry)
	}
	return entry
}

func (e *Entry) proto() *pb.SetRequest {
	req := &pb.SetRequest{Key: e.Key, Value: e.Value, Version: e.Version, LeaseToken: e.LeaseToken}
	if e.TTL != nil {
		req.Ttl = durationpb.New(*e.TTL)
	}
	return req
}

// safeToRetry: a write is repeatable only when a version or a lease token makes a repeat harmless.
func (e *Entry) safeToRetry() bool { return e.Version != nil || len(e.LeaseToken) > 0 }

// SetManyResult reports a SetMany.
type SetManyResult struct {
	// Written is the number of entries written.
	Written int
	// StaleKeys lists versioned entries refused because a newer version is stored.
	StaleKeys []string
	// LeaseLostKeys lists leased entries not written because their lease no longer held.
	LeaseLostKeys []string
}

func resultOf(found bool, value []byte, source pb.Source, ttl *durationpb.Duration) *Result {
	if !found {
		return nil
	}
	return &Result{Value: value, Source: sourceOf(source), TTLRemaining: ttl.AsDuration()}
}

// Get reads key: nil (and no error) on a miss.
func (c *Client) Get(ctx context.Context, key string, opts ...GetOption) (*Result, error) {
	result, _, err := c.get(ctx, key, false, opts)
	return result, err
}

// GetWithLease reads key asking for a lease (docs/leases.md): on a miss exactly one caller across every replica
// gets a nil Result and a token, and must load the value and Set it WithLeaseToken (or ReleaseLease it); the others
// wait for that fill. A found Result with a token is a stale value whose refresh is this caller's. A nil Result
// without a token means the wait ran out: load the value and return it, but do not Set it. GetOrLoad does all this.
func (c *Client) GetWithLease(ctx context.Context, key string, opts ...GetOption) (*Result, LeaseToken, error) {
	return c.get(ctx, key, true, opts)
}

func (c *Client) get(ctx context.Context, key string, lease bool, opts []GetOption) (*Result, LeaseToken, error) {
	req := &pb.GetRequest{Key: key, CacheOnly: getOptions(opts).cacheOnly, Lease: lease}
	var reply *pb.GetResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.Get(ctx, req)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return resultOf(reply.Found, reply.Value, reply.Source, reply.TtlRemaining), tokenOf(reply.LeaseToken), nil
}

func tokenOf(token []byte) LeaseToken {
	if len(token) == 0 {
		return nil
	}
	return token
}

// GetMany reads keys in one call: one Result per key in request order, nil for a miss.
func (c *Client) GetMany(ctx context.Context, keys []string, opts ...GetOption) ([]*Result, error) {
	results, _, err := c.getMany(ctx, keys, false, opts)
	return results, err
}

// GetManyWithLease is GetWithLease for many keys: the tokens are in request order too (nil where none was
// handed out).
func (c *Client) GetManyWithLease(ctx context.Context, keys []string, opts ...GetOption) ([]*Result, []LeaseToken, error) {
	return c.getMany(ctx, keys, true, opts)
}

func (c *Client) getMany(ctx context.Context, keys []string, lease bool, opts []GetOption) ([]*Result, []LeaseToken, error) {
	req := &pb.BatchGetRequest{Keys: keys, CacheOnly: getOptions(opts).cacheOnly, Lease: lease}
	var reply *pb.BatchGetResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.BatchGet(ctx, req)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	results := make([]*Result, len(reply.Results))
	tokens := make([]LeaseToken, len(reply.Results))
	for i, r := range reply.Results {
		results[i] = resultOf(r.Found, r.Value, r.Source, r.TtlRemaining)
		tokens[i] = tokenOf(r.LeaseToken)
	}
	return results, tokens, nil
}

// Set writes key and answers the TTL the server applied. Without WithVersion or WithLeaseToken it is sent once,
// never retried.
func (c *Client) Set(ctx context.Context, key string, value []byte, opts ...SetOption) (time.Duration, error) {
	return c.set(ctx, c.cache, key, value, opts)
}

// set is Set over stub: the main connection's, or the fill connection's for a lease holder's fill.
func (c *Client) set(ctx context.Context, stub pb.CacheServiceClient, key string, value []byte, opts []SetOption) (time.Duration, error) {
	entry := NewEntry(key, value, opts...)
	req := entry.proto()
	var reply *pb.SetResponse
	err := c.call(ctx, entry.safeToRetry(), func(ctx context.Context) (err error) {
		reply, err = stub.Set(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return reply.Ttl.AsDuration(), nil
}

// SetMany writes entries in one call (validated as a whole: one bad entry writes nothing). It is retried only
// when every entry carries a version or a lease token.
func (c *Client) SetMany(ctx context.Context, entries []Entry) (*SetManyResult, error) {
	return c.setMany(ctx, c.cache, entries)
}

// setMany is SetMany over stub (see set).
func (c *Client) setMany(ctx context.Context, stub pb.CacheServiceClient, entries []Entry) (*SetManyResult, error) {
	req := &pb.BatchSetRequest{Entries: make([]*pb.SetRequest, len(entries))}
	retryable := true
	for i := range entries {
		req.Entries[i] = entries[i].proto()
		retryable = retryable && entries[i].safeToRetry()
	}
	var reply *pb.BatchSetResponse
	err := c.call(ctx, retryable, func(ctx context.Context) (err error) {
		reply, err = stub.BatchSet(ctx, req)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &SetManyResult{Written: int(reply.Written), StaleKeys: reply.StaleKeys, LeaseLostKeys: reply.LeaseLostKeys}, nil
}

// Invalidate deletes keys and answers how many existed. It voids any lease out for them.
func (c *Client) Invalidate(ctx context.Context, keys ...string) (int, error) {
	req := &pb.InvalidateRequest{Keys: keys}
	var reply *pb.InvalidateResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.Invalidate(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(reply.Deleted), nil
}

// InvalidatePattern deletes every key matching a glob (`*` any run, `?` one character; the entity must be
// literal, e.g. `user:123:*`) and answers how many.
func (c *Client) InvalidatePattern(ctx context.Context, pattern string) (int, error) {
	req := &pb.InvalidatePatternRequest{Pattern: pattern}
	var reply *pb.InvalidatePatternResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.InvalidatePattern(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return int(reply.Deleted), nil
}

// ReleaseLease gives back a lease whose load failed, so the next waiter takes it at once. It answers whether the
// token still held the lease.
func (c *Client) ReleaseLease(ctx context.Context, key string, token LeaseToken) (bool, error) {
	return c.releaseLease(ctx, c.cache, key, token)
}

// releaseLease is ReleaseLease over stub (see set).
func (c *Client) releaseLease(ctx context.Context, stub pb.CacheServiceClient, key string, token LeaseToken) (bool, error) {
	req := &pb.ReleaseLeaseRequest{Key: key, LeaseToken: token}
	var reply *pb.ReleaseLeaseResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = stub.ReleaseLease(ctx, req)
		return err
	})
	if err != nil {
		return false, err
	}
	return reply.Released, nil
}

// RenewLease extends a lease for a slow load and answers how long it now holds; LEASE_LOST when it is no longer
// the caller's.
func (c *Client) RenewLease(ctx context.Context, key string, token LeaseToken) (time.Duration, error) {
	req := &pb.RenewLeaseRequest{Key: key, LeaseToken: token}
	var reply *pb.RenewLeaseResponse
	err := c.call(ctx, true, func(ctx context.Context) (err error) {
		reply, err = c.cache.RenewLease(ctx, req)
		return err
	})
	if err != nil {
		return 0, err
	}
	return reply.Ttl.AsDuration(), nil
}
