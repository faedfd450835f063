// The cache-aside loop with leases, in Go: one database call per key however many callers miss at once, on every
// replica, and never an old row cached after an update.
//
//	examples/go/build /tmp/cache_aside && /tmp/cache_aside [127.0.0.1:50051] [key]
//
// It runs 50 goroutines through cachedGet on one cold key with a 200 ms "database" (one call), then races a slow
// read against an update (the late fill is refused, LEASE_LOST, and the cache keeps nothing old). Exits non-zero if
// either does not hold.
package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	pb "cachecoord.example/gen/cachecoord/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// leaseLost counts fills refused because an update invalidated the key while its value was being loaded.
var leaseLost int

// refresh reloads key and caches it under token, or gives the lease back: the refresh duty of a stale answer.
func refresh(cache pb.CacheServiceClient, key string, load func(string) ([]byte, error), token []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	value, err := load(key)
	if err != nil {
		cache.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Key: key, LeaseToken: token})
		return
	}
	// LEASE_LOST: a newer write came first. A refresh is best effort.
	cache.Set(ctx, &pb.SetRequest{Key: key, Value: value, LeaseToken: token})
}

// cachedGet answers key's value: from the cache, or loaded by load and cached under a lease.
func cachedGet(ctx context.Context, cache pb.CacheServiceClient, key string, load func(string) ([]byte, error)) ([]byte, error) {
	reply, err := cache.Get(ctx, &pb.GetRequest{Key: key, Lease: true})
	if err != nil {
		return nil, err
	}
	if reply.Found {
		if len(reply.LeaseToken) > 0 { // a stale value (stale_while_revalidate), and the refresh is ours
			go refresh(cache, key, load, reply.LeaseToken)
		}
		return reply.Value, nil // a hit, or another caller's fill we waited for (SOURCE_COALESCED)
	}
	value, err := load(key) // only the lease holder gets here, or a caller whose wait ran out
	if err != nil {
		if len(reply.LeaseToken) > 0 { // let the next waiter take over now rather than at the lease's expiry
			cache.ReleaseLease(ctx, &pb.ReleaseLeaseRequest{Key: key, LeaseToken: reply.LeaseToken})
		}
		return nil, err
	}
	if len(reply.LeaseToken) > 0 { // no token: another caller holds the lease; return the value uncached
		_, err := cache.Set(ctx, &pb.SetRequest{Key: key, Value: value, LeaseToken: reply.LeaseToken})
		// FAILED_PRECONDITION (reason LEASE_LOST; STALE_VERSION only for a versioned Set): the row was updated and
		// the key invalidated while we loaded. What we loaded is still our answer; it is just not cached.
		if status.Code(err) == codes.FailedPrecondition {
			leaseLost++
		} else if err != nil {
			return nil, err
		}
	}
	return value, nil
}

// update is the writer's side: update the row, then invalidate the key (this voids any lease out for it).
func update(ctx context.Context, cache pb.CacheServiceClient, db *database, key string, value []byte) error {
	db.put(key, value)
	_, err := cache.Invalidate(ctx, &pb.InvalidateRequest{Keys: []string{key}})
	return err
}

// database stands in for the service's own database: counts queries, and each takes delay.
type database struct {
	mu    sync.Mutex
	rows  map[string][]byte
	calls int
	delay time.Duration
}

func (db *database) put(key string, value []byte) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.rows[key] = value
}

func (db *database) load(key string) ([]byte, error) {
	db.mu.Lock()
	db.calls++
	row, delay := db.rows[key], db.delay
	db.mu.Unlock()
	time.Sleep(delay)
	return row, nil
}

func (db *database) callCount() int {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.calls
}

func main() {
	addr, key := "127.0.0.1:50051", "product:42"
	if len(os.Args) > 1 {
		addr = os.Args[1]
	}
	if len(os.Args) > 2 {
		key = os.Args[2]
	}
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	check(err)
	defer conn.Close()
	cache := pb.NewCacheServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = cache.Invalidate(ctx, &pb.InvalidateRequest{Keys: []string{key}})
	check(err)

	// 1. The stampede: 50 callers miss at once; one database call.
	db := &database{rows: map[string][]byte{key: []byte(`{"price": 42}`)}, delay: 200 * time.Millisecond}
	var wg sync.WaitGroup
	answers := make([][]byte, 50)
	for i := range answers {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			value, err := cachedGet(ctx, cache, key, db.load)
			check(err)
			answers[i] = value
		}(i)
	}
	wg.Wait()
	fmt.Printf("stampede: %d callers, %d database call(s)\n", len(answers), db.callCount())
	for _, answer := range answers {
		expect(string(answer) == `{"price": 42}`, "every caller gets the value")
	}
	expect(db.callCount() == 1, "one database call")

	// 2. The race: a slow read of the old row, an update landing during it. The late fill is refused.
	_, err = cache.Invalidate(ctx, &pb.InvalidateRequest{Keys: []string{key}})
	check(err)
	db.delay = 300 * time.Millisecond
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := cachedGet(ctx, cache, key, db.load)
		check(err)
	}()
	for db.callCount() < 2 { // the reader's query has read the old row
		time.Sleep(5 * time.Millisecond)
	}
	check(update(ctx, cache, db, key, []byte(`{"price": 43}`)))
	<-done
	left, err := cache.Get(ctx, &pb.GetRequest{Key: key, CacheOnly: true})
	check(err)
	fmt.Printf("race: fills refused LEASE_LOST: %d; cached afterwards: found=%v\n", leaseLost, left.Found)
	// Nothing old is cached. (The fill is refused, unless the update was so slow that it came after the fill: its
	// Invalidate then deleted the old value.)
	expect(!left.Found, "nothing old is cached")
	value, err := cachedGet(ctx, cache, key, db.load)
	check(err)
	expect(string(value) == `{"price": 43}`, "the next read loads the new row")
	fmt.Println("ok")
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func expect(ok bool, what string) {
	if !ok {
		fmt.Fprintln(os.Stderr, "failed:", what)
		os.Exit(1)
	}
}
