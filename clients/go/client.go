package cachecoord

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	"github.com/cachecoord/cachecoord/clients/go/internal/pb"
)

// Client talks to one cachecoord target over two long-lived gRPC connections: one for every call, and one that
// carries only a lease holder's fills and releases in GetOrLoad and GetManyOrLoad (see fillConn). It is safe for
// concurrent use; share it. Close it when done.
type Client struct {
	conn  *grpc.ClientConn
	cache pb.CacheServiceClient
	// fillConn is a second connection (a ClientConn of its own always dials its own) for the calls other callers
	// wait on: the holder's Set/SetMany under its lease token and its ReleaseLease. The server allows
	// limits.max_concurrent_streams streams per connection, and leased Gets waiting for a fill hold theirs until
	// it lands; with that many waiters on conn, the fill would queue behind them until their lease wait ran out,
	// and each waiter would then load the key itself.
	fillConn *grpc.ClientConn
	fills    pb.CacheServiceClient
	token    string
	timeout  time.Duration
	retry    RetryPolicy
}

// New connects to target (`host:port`, or any grpc-go target such as `dns:///cachecoord:50051`). The connections
// are made in the background: New does not wait for the server, the first call does.
func New(target string, opts ...Option) (*Client, error) {
	s := settings{timeout: DefaultTimeout, retry: DefaultRetryPolicy}
	for _, opt := range opts {
		opt(&s)
	}
	dial := []grpc.DialOption{
		// Reconnect quickly after a server restart (grpc's default waits 1 s, then up to 120 s): retried calls fail
		// fast while the connection is down, so a long reconnect backoff would spend their attempts.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if s.tls != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(s.tls)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	dial = append(dial, s.dialOptions...)
	conn, err := grpc.Dial(target, dial...)
	if err != nil {
		return nil, err
	}
	fillConn, err := grpc.Dial(target, dial...)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return &Client{
		conn: conn, cache: pb.NewCacheServiceClient(conn),
		fillConn: fillConn, fills: pb.NewCacheServiceClient(fillConn),
		token: s.token, timeout: s.timeout, retry: s.retry,
	}, nil
}

// Close closes both connections; calls in flight fail with CANCELED.
func (c *Client) Close() error {
	err := c.conn.Close()
	if fillErr := c.fillConn.Close(); err == nil {
		err = fillErr
	}
	return err
}

// call runs one RPC: the default deadline when ctx has none, the token, retries when retryable, and errors as *Error.
func (c *Client) call(ctx context.Context, retryable bool, attempt func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	attempts, err := c.retry.run(ctx, retryable, attempt)
	return toError(err, attempts)
}
