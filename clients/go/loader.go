package cachecoord

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cachecoord/cachecoord/clients/go/internal/pb"
)

// LoadRequest is a key cachecoord asks a loader for, already split into its parts.
type LoadRequest struct {
	// Key is the whole key, e.g. `user:123:posts`.
	Key string
	// Entity is the first segment (`user`), ID the second (`123`), Field the rest joined by `:` (`posts`).
	Entity, ID, Field string
	// Namespace is the calling token's namespace when the server has auth on; Key never includes it.
	Namespace string
}

// Loaded is a loader's answer.
type Loaded struct {
	// Found is false when the source has no such key (cachecoord then caches the absence briefly).
	Found bool
	// Value is the bytes to cache and return.
	Value []byte
	// TTL overrides the entity policy's TTL when non-zero.
	TTL time.Duration
	// Version, when non-nil, is the row's version: the fill is refused if a newer version was written.
	Version *uint64
}

// LoaderFunc answers one key from the source of truth. cachecoord calls it at most once per key at a time across
// all of its replicas, so it can simply query the database. An error fails the load (the caller of Get sees
// LOADER_FAILED); return a status error (google.golang.org/grpc/status) to choose the code.
type LoaderFunc func(ctx context.Context, req LoadRequest) (Loaded, error)

// NewLoaderServer returns a gRPC server serving cachecoord.v1.LoaderService from fn, for callers that manage the
// listener and shutdown themselves (Serve, GracefulStop). BatchLoad runs fn for its keys concurrently.
func NewLoaderServer(fn LoaderFunc, opts ...grpc.ServerOption) *grpc.Server {
	server := grpc.NewServer(opts...)
	pb.RegisterLoaderServiceServer(server, &loaderService{fn: fn})
	return server
}

// ServeLoader serves cachecoord.v1.LoaderService from fn on address (e.g. `0.0.0.0:50061`) until the listener
// fails; point an entity's loader route at it in the server's config.
func ServeLoader(fn LoaderFunc, address string, opts ...grpc.ServerOption) error {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return err
	}
	return NewLoaderServer(fn, opts...).Serve(listener)
}

type loaderService struct {
	pb.UnimplementedLoaderServiceServer
	fn LoaderFunc
}

func requestOf(r *pb.LoadRequest) LoadRequest {
	return LoadRequest{Key: r.Key, Entity: r.Entity, ID: r.Id, Field: r.Field, Namespace: r.Namespace}
}

func ttlOf(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func (s *loaderService) Load(ctx context.Context, req *pb.LoadRequest) (*pb.LoadResponse, error) {
	loaded, err := s.fn(ctx, requestOf(req))
	if err != nil {
		return nil, err
	}
	return &pb.LoadResponse{Found: loaded.Found, Value: loaded.Value, Ttl: ttlOf(loaded.TTL), Version: loaded.Version}, nil
}

func (s *loaderService) BatchLoad(ctx context.Context, req *pb.BatchLoadRequest) (*pb.BatchLoadResponse, error) {
	results := make([]*pb.BatchLoadResult, len(req.Requests))
	errs := make([]error, len(req.Requests))
	var wg sync.WaitGroup
	for i, r := range req.Requests {
		wg.Add(1)
		go func(i int, r *pb.LoadRequest) {
			defer wg.Done()
			loaded, err := s.fn(ctx, requestOf(r))
			errs[i] = err
			results[i] = &pb.BatchLoadResult{Key: r.Key, Found: loaded.Found, Value: loaded.Value, Ttl: ttlOf(loaded.TTL), Version: loaded.Version}
		}(i, r)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return &pb.BatchLoadResponse{Results: results}, nil
}
