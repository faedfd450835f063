// The cache-aside loop with leases, in Node: one database call per key however many callers miss at once, on
// every replica, and never an old row cached after an update.
//
//   npm install --prefix examples/node && node examples/node/cache_aside.js [127.0.0.1:50051] [key]
//
// It runs 50 concurrent calls of cachedGet on one cold key with a 200 ms "database" (one call), then races a slow
// read against an update (the late fill is refused, LEASE_LOST, and the cache keeps nothing old). Exits non-zero
// if either does not hold.
'use strict';
const path = require('path');
const { promisify } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_DIR = path.join(__dirname, '..', '..', 'proto');

function connect(addr) {
  const definition = protoLoader.loadSync('cachecoord/v1/cache_service.proto', {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: Number,
    defaults: true,
  });
  const { CacheService } = grpc.loadPackageDefinition(definition).cachecoord.v1;
  const client = new CacheService(addr, grpc.credentials.createInsecure());
  // Promise versions of the calls used here.
  const cache = {};
  for (const rpc of ['Get', 'Set', 'Invalidate', 'ReleaseLease']) {
    cache[rpc] = promisify(client[rpc].bind(client));
  }
  return cache;
}

let leaseLost = 0;

/** Reloads `key` and caches it under `token`, or gives the lease back: the refresh duty of a stale answer. */
async function refresh(cache, key, load, token) {
  let value;
  try {
    value = await load(key);
  } catch (error) {
    await cache.ReleaseLease({ key, lease_token: token }).catch(() => {});
    return;
  }
  // LEASE_LOST: a newer write came first. A refresh is best effort.
  await cache.Set({ key, value, lease_token: token }).catch(() => {});
}

/** The value of `key`: from the cache, or loaded by `load(key)` and cached under a lease. */
async function cachedGet(cache, key, load) {
  const reply = await cache.Get({ key, lease: true });
  if (reply.found) {
    // A stale value (stale_while_revalidate) with a token: the refresh is ours, in the background (not awaited).
    if (reply.lease_token.length) refresh(cache, key, load, reply.lease_token);
    return reply.value; // a hit, or another caller's fill we waited for (SOURCE_COALESCED)
  }
  let value;
  try {
    value = await load(key); // only the lease holder gets here, or a caller whose wait ran out
  } catch (error) {
    if (reply.lease_token.length) { // let the next waiter take over now rather than at the lease's expiry
      await cache.ReleaseLease({ key, lease_token: reply.lease_token });
    }
    throw error;
  }
  if (reply.lease_token.length) { // no token: another caller holds the lease; return the value uncached
    try {
      await cache.Set({ key, value, lease_token: reply.lease_token });
    } catch (error) {
      // FAILED_PRECONDITION (reason LEASE_LOST; STALE_VERSION only for a versioned Set): the row was updated and
      // the key invalidated while we loaded. What we loaded is still our answer; it is just not cached.
      if (error.code !== grpc.status.FAILED_PRECONDITION) throw error;
      leaseLost += 1;
    }
  }
  return value;
}

/** The writer's side: update the row, then invalidate the key (this voids any lease out for it). */
async function update(cache, db, key, value) {
  db.rows.set(key, value);
  await cache.Invalidate({ keys: [key] });
}

/** Stands in for the service's own database: counts queries, and each takes `delay` ms. */
class Database {
  constructor(delay) {
    this.rows = new Map();
    this.calls = 0;
    this.delay = delay;
  }

  async load(key) {
    this.calls += 1;
    const row = this.rows.get(key);
    await new Promise((resolve) => setTimeout(resolve, this.delay));
    return row;
  }
}

function expect(ok, what) {
  if (!ok) {
    console.error(`failed: ${what}`);
    process.exit(1);
  }
}

async function main() {
  const cache = connect(process.argv[2] || '127.0.0.1:50051');
  const key = process.argv[3] || 'product:42';
  await cache.Invalidate({ keys: [key] });

  // 1. The stampede: 50 callers miss at once; one database call.
  const db = new Database(200);
  db.rows.set(key, Buffer.from('{"price": 42}'));
  const load = (k) => db.load(k);
  const answers = await Promise.all(Array.from({ length: 50 }, () => cachedGet(cache, key, load)));
  console.log(`stampede: ${answers.length} callers, ${db.calls} database call(s)`);
  expect(answers.every((a) => a.toString() === '{"price": 42}'), 'every caller gets the value');
  expect(db.calls === 1, 'one database call');

  // 2. The race: a slow read of the old row, an update landing during it. The late fill is refused.
  await cache.Invalidate({ keys: [key] });
  db.delay = 300;
  const reader = cachedGet(cache, key, load);
  while (db.calls < 2) await new Promise((resolve) => setTimeout(resolve, 5)); // the reader's query read the row
  await update(cache, db, key, Buffer.from('{"price": 43}'));
  await reader;
  const left = await cache.Get({ key, cache_only: true });
  console.log(`race: fills refused LEASE_LOST: ${leaseLost}; cached afterwards: found=${left.found}`);
  // Nothing old is cached. (The fill is refused, unless the update was so slow that it came after the fill: its
  // Invalidate then deleted the old value.)
  expect(!left.found, 'nothing old is cached');
  const value = await cachedGet(cache, key, load);
  expect(value.toString() === '{"price": 43}', 'the next read loads the new row');
  console.log('ok');
  process.exit(0);
}

main().catch((error) => {
  console.error(`error: ${error.message}`);
  process.exit(1);
});
