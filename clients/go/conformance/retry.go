package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	cachecoord "github.com/cachecoord/cachecoord/clients/go"
	"google.golang.org/grpc"
)

func logf(format string, args ...interface{}) { log.Printf(format, args...) }

// attemptCounter is the call-counting hook: a unary interceptor handed to the library through WithDialOptions,
// so it sees every attempt the library's retry loop makes.
type attemptCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

func (a *attemptCounter) intercept(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	a.mu.Lock()
	a.counts[method[strings.LastIndex(method, "/")+1:]]++
	a.mu.Unlock()
	return invoker(ctx, method, req, reply, cc, opts...)
}

// since runs call and answers how many attempts of method it made.
func (a *attemptCounter) since(method string, call func()) int {
	a.mu.Lock()
	before := a.counts[method]
	a.mu.Unlock()
	call()
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.counts[method] - before
}

// retryPolicy allows 8 attempts over 0.2+0.4+0.8+1.5·4 = 7.4 s of backoff (±20% jitter: at least 5.9 s).
var retryPolicy = cachecoord.RetryPolicy{MaxAttempts: 8, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 1500 * time.Millisecond, Multiplier: 2}

// runRetry is the retry protocol with the harness (stdin `go`, stdout `ready` / `calling` / one JSON line).
func runRetry(target, dead, key, token string) error {
	counter := &attemptCounter{counts: map[string]int{}}
	connect := func(addr string) (*cachecoord.Client, error) {
		return cachecoord.New(addr, cachecoord.WithToken(token), cachecoord.WithTimeout(30*time.Second),
			cachecoord.WithRetryPolicy(retryPolicy), cachecoord.WithDialOptions(grpc.WithChainUnaryInterceptor(counter.intercept)))
	}
	live, err := connect(target)
	if err != nil {
		return err
	}
	defer live.Close()
	ctx := context.Background()
	if _, err := live.Get(ctx, key); err != nil {
		return fmt.Errorf("warm-up get: %w", err)
	}
	fmt.Println("ready")
	stdin := bufio.NewScanner(os.Stdin)
	for stdin.Scan() && strings.TrimSpace(stdin.Text()) != "go" {
	}
	fmt.Println("calling")

	var getErr error
	out := map[string]interface{}{}
	out["get_attempts"] = counter.since("Get", func() { _, getErr = live.Get(ctx, key) })
	out["get_ok"] = getErr == nil
	if getErr != nil {
		logf("get after restart: %v", getErr)
	}

	if dead == "" {
		if dead, err = unusedAddress(); err != nil {
			return err
		}
	}
	gone, err := connect(dead)
	if err != nil {
		return err
	}
	defer gone.Close()
	var plainErr, versionedErr, invalidErr error
	out["plain_set_attempts"] = counter.since("Set", func() { _, plainErr = gone.Set(ctx, key+":plain", []byte("v")) })
	out["plain_set_code"] = codeOf(plainErr)
	out["versioned_set_attempts"] = counter.since("Set", func() {
		_, versionedErr = gone.Set(ctx, key+":plain", []byte("v"), cachecoord.WithVersion(1))
	})
	out["versioned_set_code"] = codeOf(versionedErr)
	out["invalid_attempts"] = counter.since("Get", func() { _, invalidErr = live.Get(ctx, "bad key!") })
	out["invalid_code"] = codeOf(invalidErr)
	out["invalid_reason"] = ""
	if cerr := asError(invalidErr); cerr != nil {
		out["invalid_reason"] = cerr.Reason
	}
	emit(out)
	return nil
}

func codeOf(err error) string {
	if err == nil {
		return "OK"
	}
	if cerr := asError(err); cerr != nil {
		return codeName(cerr.Code)
	}
	return "UNKNOWN"
}

// unusedAddress is a loopback address nothing listens on (a port the kernel handed out and we gave back).
func unusedAddress() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
