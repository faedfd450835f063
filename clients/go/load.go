package cachecoord

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
)

// LoadFunc loads one key's value from the caller's source of truth (its database).
type LoadFunc func(ctx context.Context, key string) ([]byte, error)

// BatchLoadFunc loads several keys at once. Keys it leaves out of the map do not exist: they are neither
// returned nor cached.
type BatchLoadFunc func(ctx context.Context, keys []string) (map[string][]byte, error)

// refreshTimeout bounds a background refresh of a stale value: the default lease TTL, after which the lease is
// someone else's anyway.
const refreshTimeout = 10 * time.Second

// GetOrLoad answers key's value from the cache, or loads it with load and caches it, running the leased
// cache-aside loop of docs/leases.md: however many callers on however many replicas miss at once, load runs once
// per key (the lease holder's), and the others get its value. opts (WithTTL, WithVersion) apply to the fill.
//
//   - a hit, or a fill another caller made while this one waited: the value;
//   - this caller got the lease: load, then Set with the token. LEASE_LOST (an update invalidated the key while
//     loading) is not an error: the loaded value is returned, just not cached;
//   - load failed: the lease is released, so a waiter takes over at once, and load's error is returned as is;
//   - the wait for another holder ran out: load and return the value without caching it;
//   - a stale value with a token: the value is returned and refreshed in the background (load, Set with the token).
func (c *Client) GetOrLoad(ctx context.Context, key string, load LoadFunc, opts ...SetOption) ([]byte, error) {
	result, token, err := c.GetWithLease(ctx, key)
	if err != nil {
		return nil, err
	}
	if result != nil {
		if token != nil { // stale (stale_while_revalidate), and the refresh is ours
			go c.refresh(key, token, load, opts)
		}
		return result.Value, nil
	}
	value, err := load(ctx, key) // only the lease holder gets here, or a caller whose wait ran out
	if err != nil {
		if token != nil {
			c.release(key, token)
		}
		return nil, err
	}
	if token != nil { // no token: another caller holds the lease; answer without caching
		if err := c.fill(ctx, key, value, token, opts); err != nil {
			return nil, err
		}
	}
	return value, nil
}

// fill Sets value under token, on the fill connection (Client.fillConn: the waiters may hold every stream of the
// main one). FAILED_PRECONDITION (LEASE_LOST, or STALE_VERSION for a versioned fill) means a newer write won: the
// value is still the caller's answer, it is just not cached.
func (c *Client) fill(ctx context.Context, key string, value []byte, token LeaseToken, opts []SetOption) error {
	_, err := c.set(ctx, c.fills, key, value, append(opts[:len(opts):len(opts)], WithLeaseToken(token)))
	var cerr *Error
	if errors.As(err, &cerr) && cerr.Code == codes.FailedPrecondition {
		return nil
	}
	return err
}

// release gives a lease back after a failed load, on its own deadline (the caller's context may be what failed)
// and on the fill connection, as fill.
func (c *Client) release(key string, token LeaseToken) {
	ctx, cancel := context.WithTimeout(context.Background(), c.releaseTimeout())
	defer cancel()
	_, _ = c.releaseLease(ctx, c.fills, key, token) // best effort: an unreleased lease runs out at its TTL
}

func (c *Client) releaseTimeout() time.Duration {
	if c.timeout > 0 {
		return c.timeout
	}
	return DefaultTimeout
}

// refresh is the refresh duty of a stale answer: reload key and Set it under token, or give the lease back.
func (c *Client) refresh(key string, token LeaseToken, load LoadFunc, opts []SetOption) {
	ctx, cancel := context.WithTimeout(context.Background(), refreshTimeout)
	defer cancel()
	value, err := load(ctx, key)
	if err != nil {
		c.release(key, token)
		return
	}
	_ = c.fill(ctx, key, value, token, opts) // best effort: the stale value was already served
}

// GetManyOrLoad is GetOrLoad for many keys: one BatchGet with leases, then one load call for every key that
// missed, then one SetMany filling the keys this caller holds leases for. It answers the keys that have a value
// (duplicates in keys are read once). When load fails every lease taken is released and load's error returned.
func (c *Client) GetManyOrLoad(ctx context.Context, keys []string, load BatchLoadFunc, opts ...SetOption) (map[string][]byte, error) {
	unique := uniqueKeys(keys)
	results, tokens, err := c.GetManyWithLease(ctx, unique)
	if err != nil {
		return nil, err
	}
	values := make(map[string][]byte, len(unique))
	var missing []string
	stale := map[string]LeaseToken{}
	held := map[string]LeaseToken{}
	for i, key := range unique {
		switch {
		case results[i] != nil:
			values[key] = results[i].Value
			if tokens[i] != nil {
				stale[key] = tokens[i]
			}
		default:
			missing = append(missing, key)
			if tokens[i] != nil {
				held[key] = tokens[i]
			}
		}
	}
	if len(stale) > 0 {
		go c.refreshMany(stale, load, opts)
	}
	if len(missing) == 0 {
		return values, nil
	}
	loaded, err := load(ctx, missing)
	if err != nil {
		for key, token := range held {
			c.release(key, token)
		}
		return nil, err
	}
	for _, key := range missing {
		if value, ok := loaded[key]; ok {
			values[key] = value
		}
	}
	if err := c.fillMany(ctx, loaded, held, opts); err != nil {
		return nil, err
	}
	return values, nil
}

// fillMany Sets the loaded keys held under a lease in one SetMany (entries whose lease was lost are simply not
// written), then releases the leases of keys load did not find, so waiters woken by the fill take those at once.
func (c *Client) fillMany(ctx context.Context, loaded map[string][]byte, held map[string]LeaseToken, opts []SetOption) error {
	var entries []Entry
	for key, token := range held {
		if value, ok := loaded[key]; ok {
			entries = append(entries, NewEntry(key, value, append(opts[:len(opts):len(opts)], WithLeaseToken(token))...))
		}
	}
	var err error
	if len(entries) > 0 {
		_, err = c.setMany(ctx, c.fills, entries) // on the fill connection, as fill
	}
	for key, token := range held {
		if _, ok := loaded[key]; !ok {
			c.release(key, token)
		}
	}
	return err
}

// refreshMany is refresh for the stale keys of a GetManyOrLoad.
func (c *Client) refreshMany(stale map[string]LeaseToken, load BatchLoadFunc, opts []SetOption) {
	ctx, cancel := context.WithTimeout(context.Background(), refreshTimeout)
	defer cancel()
	keys := make([]string, 0, len(stale))
	for key := range stale {
		keys = append(keys, key)
	}
	loaded, err := load(ctx, keys)
	if err != nil {
		for key, token := range stale {
			c.release(key, token)
		}
		return
	}
	_ = c.fillMany(ctx, loaded, stale, opts) // best effort: the stale values were already served
}

func uniqueKeys(keys []string) []string {
	seen := make(map[string]bool, len(keys))
	unique := make([]string, 0, len(keys))
	for _, key := range keys {
		if !seen[key] {
			seen[key] = true
			unique = append(unique, key)
		}
	}
	return unique
}
