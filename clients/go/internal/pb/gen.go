// Package pb holds the stubs protoc generates from proto/cachecoord/v1 (cache_service.proto and
// loader_service.proto, both package cachecoord.v1). They are generated, never committed: run `go generate ./...`
// in clients/go (needs protoc, protoc-gen-go and protoc-gen-go-grpc on PATH) before `go build`.
package pb

//go:generate protoc -I ../../../../proto -I /usr/include --go_out=. --go_opt=module=github.com/cachecoord/cachecoord/clients/go/internal/pb --go_opt=Mcachecoord/v1/cache_service.proto=github.com/cachecoord/cachecoord/clients/go/internal/pb;pb --go_opt=Mcachecoord/v1/loader_service.proto=github.com/cachecoord/cachecoord/clients/go/internal/pb;pb --go-grpc_out=. --go-grpc_opt=module=github.com/cachecoord/cachecoord/clients/go/internal/pb --go-grpc_opt=Mcachecoord/v1/cache_service.proto=github.com/cachecoord/cachecoord/clients/go/internal/pb;pb --go-grpc_opt=Mcachecoord/v1/loader_service.proto=github.com/cachecoord/cachecoord/clients/go/internal/pb;pb cachecoord/v1/cache_service.proto cachecoord/v1/loader_service.proto
