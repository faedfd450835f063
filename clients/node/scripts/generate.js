#!/usr/bin/env node
// Build step 1: places the .proto files the package loads at run time into ./proto, and generates the TypeScript
// types of their messages and services into ./src/generated with proto-loader-gen-types. Nothing it writes is
// committed: the repository's proto/ is the only source of truth.
//
// cachecoord's protos come from the repository's proto/ (or CACHECOORD_PROTO_DIR when the package is built outside
// the repository); google/rpc/status.proto and error_details.proto (for the ErrorInfo reason in
// grpc-status-details-bin) come from the google-proto-files package. The load options below must match
// LOAD_OPTIONS in src/proto.ts.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const protoSource = path.resolve(process.env.CACHECOORD_PROTO_DIR || path.join(root, '..', '..', 'proto'));
const googleSource = path.resolve(path.dirname(require.resolve('google-proto-files/google/rpc/status.proto')), '..', '..');
const protoOut = path.join(root, 'proto');
const typesOut = path.join(root, 'src', 'generated');

const FILES = [
  [protoSource, 'cachecoord/v1/cache_service.proto'],
  [protoSource, 'cachecoord/v1/loader_service.proto'],
  [googleSource, 'google/rpc/status.proto'],
  [googleSource, 'google/rpc/error_details.proto'],
];

fs.rmSync(protoOut, { recursive: true, force: true });
fs.rmSync(typesOut, { recursive: true, force: true });
for (const [dir, file] of FILES) {
  const from = path.join(dir, file);
  if (!fs.existsSync(from)) {
    console.error(`generate: ${from} is missing (set CACHECOORD_PROTO_DIR to the repository's proto/)`);
    process.exit(1);
  }
  fs.mkdirSync(path.dirname(path.join(protoOut, file)), { recursive: true });
  fs.copyFileSync(from, path.join(protoOut, file));
}

const genTypes = require.resolve('@grpc/proto-loader/build/bin/proto-loader-gen-types.js');
execFileSync(
  process.execPath,
  [
    genTypes,
    '--longs=Number',
    '--enums=String',
    '--defaults',
    '--oneofs',
    '--includeComments',
    '--grpcLib=@grpc/grpc-js',
    `--includeDirs=${protoOut}`,
    `--outDir=${typesOut}`,
    ...FILES.map(([, file]) => file),
  ],
  { stdio: 'inherit' },
);
