// @cachecoord/client: the Node client of cachecoord. See README.md.
export { InterceptingCall, Metadata, status } from '@grpc/grpc-js';
export type { Interceptor, ChannelOptions } from '@grpc/grpc-js';

export { Client, DEFAULT_CHANNEL_OPTIONS } from './client';
export type {
  CallOptions,
  ClientOptions,
  Entry,
  GetOptions,
  GetOrLoadOptions,
  Leased,
  Lookup,
  SetEntry,
  SetManyResult,
  SetOptions,
  Source,
  TlsOptions,
} from './types';
export type { BatchLoadFn, LoadFn } from './cacheAside';
export type { Bytes } from './bytes';
export { CacheError, codeName } from './errors';
export { serveLoader, type LoadRequest, type Loaded, type LoaderFn, type LoaderServer, type ServeLoaderOptions } from './loader';
export { DEFAULT_RETRY, type RetryPolicy } from './retry';
export type { StatsResponse__Output as Stats } from './generated/cachecoord/v1/StatsResponse';
export type { EntityStats__Output as EntityStats } from './generated/cachecoord/v1/EntityStats';
export type { RedisNode__Output as RedisNode } from './generated/cachecoord/v1/RedisNode';
