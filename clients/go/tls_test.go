package cachecoord

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCert issues a certificate (signed by parent, or self-signed when parent is nil) and writes it and its key
// as PEM files dir/name.crt and dir/name.key.
func writeCert(t *testing.T, dir, name string, template *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template.SerialNumber = big.NewInt(time.Now().UnixNano())
	template.NotBefore, template.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = template, key
	}
	der, err := x509.CreateCertificate(rand.Reader, template, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(file, kind string, der []byte) {
		if err := os.WriteFile(filepath.Join(dir, file), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(name+".crt", "CERTIFICATE", der)
	write(name+".key", "PRIVATE KEY", pkcs8)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// Mutual TLS: a client with a certificate the server's CA signed gets through; one without is refused.
func TestMutualTLS(t *testing.T) {
	if os.Getenv("CC_SERVER_BIN") == "" {
		t.Skip("CC_SERVER_BIN is not set")
	}
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{
		Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{
		Subject: pkix.Name{CommonName: "cachecoord"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	writeCert(t, dir, "client", &x509.Certificate{
		Subject: pkix.Name{CommonName: "billing"}, DNSNames: []string{"billing"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	path := func(file string) string { return filepath.Join(dir, file) }
	withCert, err := TLSConfig(path("ca.crt"), path("client.crt"), path("client.key"), "")
	if err != nil {
		t.Fatal(err)
	}
	client := startServer(t, fmt.Sprintf("[tls]\ncert_file = %q\nkey_file = %q\nclient_ca_file = %q\n",
		path("server.crt"), path("server.key"), path("ca.crt")), WithTLS(withCert))
	ctx := context.Background()
	if _, err := client.Set(ctx, "tls:1", []byte("secret")); err != nil {
		t.Fatal(err)
	}
	if result, err := client.Get(ctx, "tls:1"); err != nil || result == nil || string(result.Value) != "secret" {
		t.Fatalf("get over mutual TLS: %+v, %v", result, err)
	}
	serverOnly, err := TLSConfig(path("ca.crt"), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	anonymous, err := New(client.conn.Target(), WithTLS(serverOnly), WithRetryPolicy(RetryPolicy{MaxAttempts: 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	if _, err := anonymous.Get(ctx, "tls:1"); err == nil {
		t.Fatal("a client without a certificate got through")
	}
}
