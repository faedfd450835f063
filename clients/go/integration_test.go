package cachecoord

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// These tests run the library against a real cachecoord: set CC_SERVER_BIN to the server binary (e.g.
// target/debug/cachecoord); without it they are skipped. (Not CACHECOORD_*: the server reads those as settings.) Each test starts its own server (embedded store) on free
// loopback ports.

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer runs cachecoord with extra TOML appended to a minimal config and answers a Client connected with
// opts.
func startServer(t *testing.T, extra string, opts ...Option) *Client {
	t.Helper()
	bin := os.Getenv("CC_SERVER_BIN")
	if bin == "" {
		t.Skip("CC_SERVER_BIN is not set")
	}
	addr, dir := freeAddr(t), t.TempDir()
	config := fmt.Sprintf("listen_addr = %q\n[telemetry]\nmetrics_addr = %q\n%s", addr, freeAddr(t), extra)
	path := filepath.Join(dir, "cachecoord.toml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path)
	cmd.Stderr, cmd.Stdout = os.Stderr, nil
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
	client, err := New(addr, append([]Option{WithTimeout(10 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) { // until the server listens
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("server exited: %v", err)
		default:
		}
		if _, err := client.Stats(context.Background()); err == nil {
			return client
		} else if time.Since(start) > 20*time.Second {
			t.Fatalf("server did not come up: %v", err)
		}
	}
}

// A bad key is INVALID_ARGUMENT with reason INVALID_KEY, usable with errors.As and status.Code.
func TestInvalidKeyError(t *testing.T) {
	client := startServer(t, "")
	_, err := client.Get(context.Background(), "bad key!")
	var cerr *Error
	if !errors.As(err, &cerr) || cerr.Code != codes.InvalidArgument || cerr.Reason != ReasonInvalidKey || cerr.Attempts != 1 {
		t.Fatalf("got %v", err)
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("status.Code = %v", status.Code(err))
	}
}

// The server fills misses through a LoaderService served by ServeLoader from a plain function (Load and BatchLoad).
func TestServeLoader(t *testing.T) {
	loaderAddr := freeAddr(t)
	var calls int64
	go func() {
		err := ServeLoader(func(ctx context.Context, req LoadRequest) (Loaded, error) {
			atomic.AddInt64(&calls, 1)
			if req.ID == "missing" {
				return Loaded{Found: false}, nil
			}
			return Loaded{Found: true, Value: []byte(req.Entity + "/" + req.ID + "/" + req.Field)}, nil
		}, loaderAddr)
		if err != nil {
			t.Error(err)
		}
	}()
	client := startServer(t, fmt.Sprintf("[[loaders]]\npattern = \"product:*\"\nkind = \"grpc\"\nendpoint = \"http://%s\"\n", loaderAddr))
	ctx := context.Background()
	result, err := client.Get(ctx, "product:7:price")
	if err != nil || result == nil || string(result.Value) != "product/7/price" || result.Source != SourceLoaded {
		t.Fatalf("Get through the loader: %+v, %v", result, err)
	}
	results, err := client.GetMany(ctx, []string{"product:8", "product:missing", "product:7:price"})
	if err != nil {
		t.Fatal(err)
	}
	if results[0] == nil || string(results[0].Value) != "product/8/" || results[1] != nil || results[2].Source != SourceHit {
		t.Fatalf("GetMany through the loader: %+v %+v %+v", results[0], results[1], results[2])
	}
	if n := atomic.LoadInt64(&calls); n != 3 {
		t.Fatalf("loader calls = %d, want 3 (7, 8, missing)", n)
	}
}

// While one GetManyOrLoad holds the leases of cold keys, concurrent callers wait for its fill: each key is loaded
// once. Keys the load leaves out are neither cached nor returned (each later caller loads them again, in turn).
func TestGetManyOrLoadLoadsEachKeyOnce(t *testing.T) {
	client := startServer(t, "")
	ctx := context.Background()
	if _, err := client.Set(ctx, "order:1", []byte("cached")); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	loads := map[string]int{}
	holding, proceed := make(chan struct{}), make(chan struct{})
	var first int32
	load := func(ctx context.Context, keys []string) (map[string][]byte, error) {
		if atomic.CompareAndSwapInt32(&first, 0, 1) { // the lease holder: keep the leases until the others wait
			close(holding)
			<-proceed
		}
		mu.Lock()
		defer mu.Unlock()
		out := map[string][]byte{}
		for _, key := range keys {
			loads[key]++
			if key != "order:404" {
				out[key] = []byte("db:" + key)
			}
		}
		return out, nil
	}
	keys := []string{"order:1", "order:2", "order:3", "order:404", "order:2"}
	check := func(values map[string][]byte, err error) error {
		if err == nil && (string(values["order:1"]) != "cached" || string(values["order:2"]) != "db:order:2" ||
			string(values["order:3"]) != "db:order:3" || values["order:404"] != nil || len(values) != 3) {
			err = fmt.Errorf("values %q", values)
		}
		return err
	}
	errs := make(chan error, 20)
	go func() { errs <- check(client.GetManyOrLoad(ctx, keys, load)) }()
	<-holding
	var wg sync.WaitGroup
	for i := 0; i < 19; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- check(client.GetManyOrLoad(ctx, keys, load))
		}()
	}
	time.Sleep(200 * time.Millisecond) // sequencing: let the 19 BatchGets reach the server and wait
	close(proceed)
	wg.Wait()
	for i := 0; i < 20; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if loads["order:1"] != 0 || loads["order:2"] != 1 || loads["order:3"] != 1 {
		t.Fatalf("loads %v", loads)
	}
}

// A failing load releases the lease (the next caller takes it at once) and surfaces the load's own error.
func TestGetOrLoadFailureReleasesLease(t *testing.T) {
	client := startServer(t, "")
	ctx := context.Background()
	boom := errors.New("database down")
	_, err := client.GetOrLoad(ctx, "invoice:9", func(context.Context, string) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("got %v, want the load error", err)
	}
	_, token, err := client.GetWithLease(ctx, "invoice:9")
	if err != nil || token == nil {
		t.Fatalf("the lease should be free again: token %v, %v", token, err)
	}
	// A fill whose lease an invalidation voided is LEASE_LOST.
	if _, err := client.Invalidate(ctx, "invoice:9"); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Set(ctx, "invoice:9", []byte("old"), WithLeaseToken(token)); !IsLeaseLost(err) {
		t.Fatalf("got %v, want LEASE_LOST", err)
	}
}

// A stale value with a lease token is served at once and refreshed in the background.
func TestGetOrLoadRefreshesStale(t *testing.T) {
	client := startServer(t, "[[policies]]\nname = \"feed\"\npattern = \"feed:*\"\nttl_secs = 60\nstale_while_revalidate_secs = 60\n")
	ctx := context.Background()
	if _, err := client.Set(ctx, "feed:1", []byte("v1"), WithTTL(time.Second)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // sequencing: let the TTL run out (the stale window keeps the value)
	refreshed := make(chan struct{})
	value, err := client.GetOrLoad(ctx, "feed:1", func(context.Context, string) ([]byte, error) {
		defer close(refreshed)
		return []byte("v2"), nil
	})
	if err != nil || string(value) != "v1" {
		t.Fatalf("got %q, %v; want the stale v1", value, err)
	}
	<-refreshed
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) { // the fill lands just after the load returns
		result, err := client.Get(ctx, "feed:1")
		if err == nil && result != nil && string(result.Value) == "v2" {
			return
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("never refreshed: %+v, %v", result, err)
		}
	}
}
