// The generated half of the package: the .proto files copied into ../proto at build time, loaded once with
// @grpc/proto-loader, and typed by the declarations proto-loader-gen-types wrote into ./generated. Nothing here
// is hand-written protocol: the message shapes come from proto/.
import * as path from 'path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as protobuf from 'protobufjs';

import type { ProtoGrpcType as CacheProto } from './generated/cache_service';
import type { ProtoGrpcType as LoaderProto } from './generated/loader_service';

/** Where the build placed the .proto files: beside dist/. */
export const PROTO_DIR = path.join(__dirname, '..', 'proto');

/** Must match the flags scripts/generate.js gives proto-loader-gen-types, or the types lie about the values. */
const LOAD_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

function load<T>(file: string): T {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOAD_OPTIONS)) as unknown as T;
}

let cache: CacheProto | undefined;
let loader: LoaderProto | undefined;

/** cachecoord.v1 of cache_service.proto (CacheService and its messages), loaded on first use. */
export function cacheProto(): CacheProto['cachecoord']['v1'] {
  cache ??= load<CacheProto>('cachecoord/v1/cache_service.proto');
  return cache.cachecoord.v1;
}

/** cachecoord.v1 of loader_service.proto (LoaderService), loaded on first use. */
export function loaderProto(): LoaderProto['cachecoord']['v1'] {
  loader ??= load<LoaderProto>('cachecoord/v1/loader_service.proto');
  return loader.cachecoord.v1;
}

let rpcRoot: protobuf.Root | undefined;

/** google.rpc (Status, ErrorInfo) as protobufjs types, to decode the grpc-status-details-bin trailer. */
export function rpcTypes(): { status: protobuf.Type; errorInfo: protobuf.Type } {
  if (!rpcRoot) {
    rpcRoot = new protobuf.Root();
    rpcRoot.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(PROTO_DIR, target));
    // keepCase: the generated google.rpc types keep the proto's field names (Any.type_url).
    rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
  }
  return {
    status: rpcRoot.lookupType('google.rpc.Status'),
    errorInfo: rpcRoot.lookupType('google.rpc.ErrorInfo'),
  };
}
