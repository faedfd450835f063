// Command conformance runs the cross-language conformance checks (clients/conformance/README.md) through the Go
// client library. Machine-read JSON goes to stdout, logs to stderr.
//
//	conformance scenarios --target ADDR --scenarios FILE --run-id ID [--token T]
//	conformance stampede --targets A,B,C --key KEY --callers N [--clients M] [--token T]
//	conformance retry --target ADDR --dead ADDR --key KEY [--token T]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	cachecoord "github.com/cachecoord/cachecoord/clients/go"
	"google.golang.org/grpc/codes"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("conformance(go): ")
	if len(os.Args) < 2 {
		log.Fatal("usage: conformance scenarios|stampede|retry [flags]")
	}
	flags := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	token := flags.String("token", "", "bearer token (absent: none)")
	var err error
	switch os.Args[1] {
	case "scenarios":
		target := flags.String("target", "", "server address")
		file := flags.String("scenarios", "", "scenario file")
		runID := flags.String("run-id", "", "replaces {run} in keys and values")
		_ = flags.Parse(os.Args[2:])
		err = runScenarios(*target, *file, *runID, *token)
	case "stampede":
		targets := flags.String("targets", "", "comma-separated server addresses")
		key := flags.String("key", "", "the cold key")
		callers := flags.Int("callers", 150, "concurrent callers")
		clients := flags.Int("clients", 0, "clients the callers share (0: one per caller)")
		_ = flags.Parse(os.Args[2:])
		err = runStampede(strings.Split(*targets, ","), *key, *callers, *clients, *token)
	case "retry":
		target := flags.String("target", "", "live server address")
		dead := flags.String("dead", "", "an address where nothing listens")
		key := flags.String("key", "", "the key to read")
		_ = flags.Parse(os.Args[2:])
		err = runRetry(*target, *dead, *key, *token)
	default:
		log.Fatalf("unknown sub-command %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

// emit prints one JSON line on stdout.
func emit(v interface{}) {
	line, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(line))
}

// codeName is the canonical UPPER_SNAKE name of a gRPC code, as the scenario file and other languages spell it.
func codeName(c codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
		codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
		codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if name, ok := names[c]; ok {
		return name
	}
	return c.String()
}

// asError unwraps the library's error type; nil when err is something else (or nil).
func asError(err error) *cachecoord.Error {
	var cerr *cachecoord.Error
	if errors.As(err, &cerr) {
		return cerr
	}
	return nil
}
