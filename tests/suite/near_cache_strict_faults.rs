//! Strict near-cache mode under faults, over three cachecoord processes on one Redis Cluster: A writes, B and C
//! hold the key in their near-caches. A replica that is SIGSTOPped, then one that is killed, delays A's next write
//! until its membership lease has lapsed (never less, since it cannot acknowledge), and no replica ever answers a
//! value older than the last acknowledged write; after SIGCONT the paused replica serves no near hit of the old
//! value, and near-caches again once it has rejoined. The delays are printed; no assertion has a wall-clock bound.

use crate::support::cluster::RedisCluster;
use crate::support::postgres::Postgres;
use crate::support::process::{ServerProcess, migrate};
use crate::support::strict::{
    MEMBERS, lease_end_ms, member_id, store_now_ms, strict_toml, timed_set, until_near_hit_of,
};
use crate::support::{Client, assert_error, cached, set_request, unique};
use cachecoord::proto::Source;
use std::time::Duration;
use tonic::Code;

/// Reads `key` a few times on each client: every answer must be `value`.
async fn all_read(clients: &mut [&mut Client], key: &str, value: &str) {
    for client in clients.iter_mut() {
        for _ in 0..5 {
            let answer = cached(client, key).await;
            assert_eq!(
                answer.value,
                value.as_bytes(),
                "{key}: stale read after the ack of {value:?}"
            );
        }
    }
}

/// A SIGSTOPped member delays the next strict write until its lease lapsed, then is out; after SIGCONT it serves
/// no near hit of the old value and rejoins. A killed member likewise delays one write. No stale read throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_and_killed_members_delay_writes_by_their_lease_and_never_serve_stale() {
    let cluster = RedisCluster::start_async(&[]).await;
    let config = strict_toml(&cluster);
    let (a, b, c) = (
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
    );
    let connect = |p: &ServerProcess| Client::connect(p.uri());
    let (mut on_a, mut on_b, mut on_c) = (
        connect(&a).await.unwrap(),
        connect(&b).await.unwrap(),
        connect(&c).await.unwrap(),
    );
    let key = format!("user:{}:k", unique("faults"));

    // Every replica holds v0 in its near-cache.
    timed_set(&mut on_a, &key, "v0").await;
    until_near_hit_of(&mut on_b, &key, "v0").await;
    until_near_hit_of(&mut on_c, &key, "v0").await;
    let healthy = timed_set(&mut on_a, &key, "v1").await;
    until_near_hit_of(&mut on_b, &key, "v1").await;
    until_near_hit_of(&mut on_c, &key, "v1").await;
    println!("strict faults: a write with every member up took {healthy:?}");

    // SIGSTOP B: it can neither acknowledge nor renew.
    let b_member = member_id(&b);
    b.signal("-STOP");
    // A renewal B sent just before the stop may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_lease_end = lease_end_ms(&cluster, &b_member).expect("B is a member");
    let paused_write = timed_set(&mut on_a, &key, "v2").await;
    let acknowledged_at = store_now_ms(&cluster);
    assert!(
        acknowledged_at >= b_lease_end,
        "the write was acknowledged before the paused member's lease lapsed ({acknowledged_at} < {b_lease_end})"
    );
    assert_eq!(lease_end_ms(&cluster, &b_member), None, "B was revoked");
    all_read(&mut [&mut on_a, &mut on_c], &key, "v2").await;
    let next_write = timed_set(&mut on_a, &key, "v3").await;
    all_read(&mut [&mut on_a, &mut on_c], &key, "v3").await;
    println!(
        "strict faults: SIGSTOPped member: the first write waited {paused_write:?} (lease 2 s), the next took \
         {next_write:?}"
    );

    // SIGCONT B: never the old value, near hits again once it rejoined.
    b.signal("-CONT");
    let rejoined = until_near_hit_of(&mut on_b, &key, "v3").await;
    assert!(lease_end_ms(&cluster, &b_member).is_some(), "B rejoined");
    println!(
        "strict faults: after SIGCONT, B served its first near hit (of the new value) after {rejoined:?}"
    );
    let rejoined_write = timed_set(&mut on_a, &key, "v4").await;
    all_read(&mut [&mut on_a, &mut on_b, &mut on_c], &key, "v4").await;
    until_near_hit_of(&mut on_b, &key, "v4").await;
    until_near_hit_of(&mut on_c, &key, "v4").await;
    println!("strict faults: with B back, a write took {rejoined_write:?}");

    // Kill C: its lease must lapse before the next write is acknowledged.
    let c_member = member_id(&c);
    c.signal("-KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c_lease_end = lease_end_ms(&cluster, &c_member).expect("C is a member");
    let killed_write = timed_set(&mut on_a, &key, "v5").await;
    let acknowledged_at = store_now_ms(&cluster);
    assert!(
        acknowledged_at >= c_lease_end,
        "the write was acknowledged before the killed member's lease lapsed ({acknowledged_at} < {c_lease_end})"
    );
    all_read(&mut [&mut on_a, &mut on_b], &key, "v5").await;
    let next_write = timed_set(&mut on_a, &key, "v6").await;
    all_read(&mut [&mut on_a, &mut on_b], &key, "v6").await;
    until_near_hit_of(&mut on_b, &key, "v6").await;
    println!(
        "strict faults: killed member: the first write waited {killed_write:?} (lease 2 s), the next took \
         {next_write:?}"
    );
}

/// Two strict replicas on their own cluster (A writes, B holds `key` in its near-cache at `v0`), and the Redis
/// replica of the members set's primary.
async fn strict_pair(
    cluster: &RedisCluster,
    key: &str,
) -> (ServerProcess, ServerProcess, Client, Client, u16) {
    let config = strict_toml(cluster);
    let (a, b) = (
        ServerProcess::start(&config).await,
        ServerProcess::start(&config).await,
    );
    let mut on_a = Client::connect(a.uri()).await.unwrap();
    let mut on_b = Client::connect(b.uri()).await.unwrap();
    timed_set(&mut on_a, key, "v0").await;
    until_near_hit_of(&mut on_b, key, "v0").await;
    let members_replica = cluster.replica_of(cluster.primary_of(MEMBERS));
    (a, b, on_a, on_b, members_replica)
}

/// A writer that revoked a silent member acknowledges only once the members set's replica holds the revocation:
/// one lost in a failover would let the member, deaf to the write, renew on the promoted replica and serve the
/// older value. While that replica is stopped the write (applied) answers UNAVAILABLE, to be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_the_members_replica_does_not_hold_is_not_relied_on() {
    let cluster = RedisCluster::start_async(&[]).await;
    let key = format!("user:{}:k", unique("revoked"));
    let (_a, b, mut on_a, mut on_b, members_replica) = strict_pair(&cluster, &key).await;

    b.signal("-STOP");
    cluster.pause(members_replica);
    let answer = on_a.set(set_request(&key, b"v1")).await;
    cluster.resume(members_replica);
    b.signal("-CONT");

    assert_error(
        &answer.expect_err("acknowledged on a revocation no replica held"),
        Code::Unavailable,
        "BACKEND_UNAVAILABLE",
    );
    // Applied all the same, and B, revoked on the primary, never serves v0 again.
    all_read(&mut [&mut on_a, &mut on_b], &key, "v1").await;
    until_near_hit_of(&mut on_b, &key, "v1").await;
}

/// A member counts a renewal only once the members set's replica holds it: while that replica is stopped its
/// renewals do not extend its lease, so it stops serving near hits when the lease it had runs out (a renewal lost
/// in a failover would otherwise let it serve past the end writers read on the promoted replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_the_members_replica_does_not_hold_does_not_extend_near_hits() {
    let cluster = RedisCluster::start_async(&[]).await;
    let key = format!("user:{}:k", unique("renewal"));
    let (_a, _b, _on_a, mut on_b, members_replica) = strict_pair(&cluster, &key).await;

    cluster.pause(members_replica);
    // Past the 2 s member lease (sequencing only: the assertion is on what B answers afterwards).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = cached(&mut on_b, &key).await;
    cluster.resume(members_replica);

    assert_eq!(during.value, b"v0".as_slice());
    assert_ne!(
        during.source(),
        Source::NearHit,
        "near hits went on past the member's lease on renewals no replica held"
    );
    until_near_hit_of(&mut on_b, &key, "v0").await;
}

/// A member one writer revoked may still serve until its lease ends: another writer reading the membership
/// meanwhile waits that out too, instead of acknowledging at once because the member is no longer listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_writer_waits_out_a_member_another_writer_revoked() {
    let cluster = RedisCluster::start_async(&[]).await;
    let key = format!("user:{}:k", unique("first-writer"));
    let other = format!("user:{}:k", unique("second-writer"));
    let (_a, b, on_a, _on_b, _) = strict_pair(&cluster, &key).await;
    let c = ServerProcess::start(&strict_toml(&cluster)).await;
    let mut on_c = Client::connect(c.uri()).await.unwrap();
    let b_member = member_id(&b);

    b.signal("-STOP");
    // A renewal B sent just before the stop may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_lease_end = lease_end_ms(&cluster, &b_member).expect("B is a member");
    let first = tokio::spawn({
        let (mut on_a, key) = (on_a.clone(), key.clone());
        async move { timed_set(&mut on_a, &key, "v1").await }
    });
    // Until A has revoked B (and waits out its lease).
    while lease_end_ms(&cluster, &b_member).is_some() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    timed_set(&mut on_c, &other, "w1").await;
    let acknowledged_at = store_now_ms(&cluster);
    b.signal("-CONT");
    first.await.unwrap();

    assert!(
        acknowledged_at >= b_lease_end,
        "the second write was acknowledged before the revoked member's lease lapsed ({acknowledged_at} < \
         {b_lease_end})"
    );
}

/// An outbox invalidation of a strict key is a strict write: the relay deletes the row (its acknowledgement) only
/// after every member confirmed or lapsed, so a SIGSTOPped member holds it back until its lease ended, and serves
/// no old value after SIGCONT. Its own database, so its relay drains only its own rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_invalidation_waits_for_a_paused_member_like_any_strict_write() {
    let database = unique("strict_outbox").replace('-', "_");
    let (url, db) = Postgres::shared().database(&database).await;
    db.batch_execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO accounts VALUES (1, 'first');",
    )
    .await
    .unwrap();
    let cluster = RedisCluster::start_async(&[]).await;
    let relay_toml = format!(
        "{}[postgres]\nurl = \"{url}\"\n[outbox]\nenabled = true\n\
         [[outbox.tables]]\ntable = \"accounts\"\nkeys = [\"user:{{id}}\"]\n",
        strict_toml(&cluster)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cachecoord.toml");
    std::fs::write(&file, &relay_toml).unwrap();
    migrate(&file).await;
    let relay = ServerProcess::start(&relay_toml).await;
    let member = ServerProcess::start(&strict_toml(&cluster)).await;
    let mut on_relay = Client::connect(relay.uri()).await.unwrap();
    let mut on_member = Client::connect(member.uri()).await.unwrap();
    timed_set(&mut on_relay, "user:1", "v0").await;
    until_near_hit_of(&mut on_member, "user:1", "v0").await;
    let member_id = member_id(&member);

    member.signal("-STOP");
    // A renewal sent just before the stop may still land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lease_end = lease_end_ms(&cluster, &member_id).expect("a member");
    db.execute("UPDATE accounts SET name = 'changed' WHERE id = 1", &[])
        .await
        .unwrap();
    loop {
        let left: i64 = db
            .query_one("SELECT count(*) FROM cachecoord.outbox", &[])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let applied_at = store_now_ms(&cluster);
    member.signal("-CONT");

    assert!(
        applied_at >= lease_end,
        "the outbox row was applied before the paused member's lease lapsed ({applied_at} < {lease_end})"
    );
    for _ in 0..5 {
        let answer = cached(&mut on_member, "user:1").await;
        assert!(
            !answer.found,
            "the resumed member served {:?}",
            answer.value
        );
    }
}

/// With the members set's primary down, a strict write cannot learn whom to wait for: it is applied and answers
/// UNAVAILABLE (retry), and no replica serves the older value meanwhile; once a replica took over, strict writes
/// are acknowledged again, and members near-cache again once that primary has a replica to hold their leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strict_writes_answer_unavailable_while_the_members_node_is_down_and_resume_after_failover()
{
    let cluster = RedisCluster::start_async(&[]).await;
    let members_primary = cluster.primary_of(MEMBERS);
    // A key served by another primary, so only the membership is out of reach.
    let key = (0..)
        .map(|i| format!("user:{}", unique(&format!("members-down-{i}"))))
        .find(|key| cluster.primary_of(&format!("{{{key}}}")) != members_primary)
        .unwrap();
    let (_a, _b, mut on_a, mut on_b, _) = strict_pair(&cluster, &key).await;

    cluster.kill_node(members_primary);
    let answer = on_a.set(set_request(&key, b"v1")).await;

    assert_eq!(
        answer
            .expect_err("acknowledged without knowing the members")
            .code(),
        Code::Unavailable
    );
    all_read(&mut [&mut on_a, &mut on_b], &key, "v1").await;
    cluster.wait_for_failover(members_primary);
    // Until the replicas' slot maps and memberships follow the failover.
    let mut attempts = 0;
    while let Err(status) = on_a.set(set_request(&key, b"v2")).await {
        attempts += 1;
        assert!(
            attempts < 100,
            "strict writes never resumed after the failover: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_read(&mut [&mut on_a, &mut on_b], &key, "v2").await;
    // The promoted primary has no replica to hold membership changes, so no replica near-caches strict keys
    // until the old primary is back as its replica.
    cluster.restart_node(members_primary);
    cluster.wait_until_whole();
    until_near_hit_of(&mut on_b, &key, "v2").await;
}
