package cachecoord

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
)

// DefaultTimeout bounds a call whose context has no deadline.
const DefaultTimeout = 5 * time.Second

// Option configures a Client (New).
type Option func(*settings)

type settings struct {
	token       string
	tls         *tls.Config
	timeout     time.Duration
	retry       RetryPolicy
	dialOptions []grpc.DialOption
}

// WithToken sends `authorization: Bearer <token>` on every call (needed when the server has auth on).
func WithToken(token string) Option { return func(s *settings) { s.token = token } }

// WithTLS connects over TLS with cfg (nil: the system roots). For mutual TLS put the client certificate in
// cfg.Certificates; TLSConfig builds such a config from PEM files. Without WithTLS the connection is plaintext
// (h2c), as for a server on loopback or behind a mesh.
func WithTLS(cfg *tls.Config) Option {
	return func(s *settings) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		s.tls = cfg
	}
}

// WithTimeout sets the default deadline of a call whose context has none (default DefaultTimeout). It covers the
// whole call, retries included. A context deadline always wins, shorter or longer. 0 sets no default deadline.
func WithTimeout(d time.Duration) Option { return func(s *settings) { s.timeout = d } }

// WithRetryPolicy replaces DefaultRetryPolicy. RetryPolicy{MaxAttempts: 1} turns retries off.
func WithRetryPolicy(p RetryPolicy) Option { return func(s *settings) { s.retry = p } }

// WithDialOptions passes options to grpc.Dial after the client's own, e.g. grpc.WithChainUnaryInterceptor for
// metrics or tracing (an interceptor sees every attempt of a retried call), or grpc.WithConnectParams.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(s *settings) { s.dialOptions = append(s.dialOptions, opts...) }
}

// TLSConfig builds a TLS config from PEM files: caFile (empty: the system roots) verifies the server; certFile
// and keyFile, when both are given, are the client certificate for mutual TLS. serverName overrides the name
// checked in the server certificate (empty: the host of the target).
func TLSConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("cachecoord: reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cachecoord: no certificate in CA file %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("cachecoord: mutual TLS needs both a certificate and a key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("cachecoord: loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
