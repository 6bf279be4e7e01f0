//! Several function instances writing the same table at once, as Lambda runs one instance per partition
//! (issue 14, item 8): batches that share keys in different orders must neither deadlock into a failed
//! batch nor interleave into a state no serial order of the batches gives.

use std::sync::Arc;

use msk_sync::pipeline::Handler;
use msk_sync_tests::*;

const WRITERS: usize = 4;
const ROUNDS: usize = 10;
const KEYS: usize = 120;

fn key(k: usize) -> String {
    format!("planet-{k:03}")
}

/// Whether writer `w` deletes key `k` in round `r` (it upserts every other key).
fn deletes(r: usize, w: usize, k: usize) -> bool {
    (k + w + r).is_multiple_of(5)
}

fn name(r: usize, w: usize) -> String {
    format!("r{r}-w{w}")
}

/// Writer `w`'s batch of round `r`: every key once, in an order of its own (a seeded shuffle).
fn batch(r: usize, w: usize) -> serde_json::Value {
    use base64::Engine;
    let mut order: Vec<usize> = (0..KEYS).collect();
    let mut seed = ((r * WRITERS + w) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let records: Vec<serde_json::Value> = order
        .iter()
        .enumerate()
        .map(|(offset, &k)| {
            let message = if deletes(r, w, k) {
                serde_json::json!({"changeType": "DELETED", "planetUuid": key(k)})
            } else {
                serde_json::json!({"changeType": "UPDATED", "planetUuid": key(k), "planetName": name(r, w)})
            };
            let value = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&message).unwrap());
            serde_json::json!({
                "topic": "servicea.planet", "partition": w, "offset": offset,
                "timestamp": 1764000000000_i64 + offset as i64, "timestampType": "CREATE_TIME",
                "value": value, "headers": []
            })
        })
        .collect();
    serde_json::json!({"eventSource": "aws:kafka", "records": {format!("servicea.planet-{w}"): records}})
}

/// The table after writer `w`'s batch of round `r` ran last: as every batch writes every key, the last one
/// alone decides the table.
fn after(r: usize, w: usize) -> Vec<(String, String)> {
    (0..KEYS)
        .filter(|&k| !deletes(r, w, k))
        .map(|k| (key(k), name(r, w)))
        .collect()
}

async fn concurrent_writers_neither_fail_nor_interleave(backend: Backend) {
    let db = TestDb::new(backend, "concurrent_writers").await;
    let mut handlers: Vec<Arc<Handler>> = Vec::new();
    for _ in 0..WRITERS {
        handlers.push(Arc::new(entity_sync_handler(&db.url).await));
    }
    // The tables exist before the writers race (creating them concurrently is another matter).
    handlers[0].handle_json(batch(0, 0)).await.unwrap();
    for r in 0..ROUNDS {
        let results = join_all(handlers.iter().enumerate().map(|(w, h)| {
            let (h, payload) = (Arc::clone(h), batch(r, w));
            async move { h.handle_json(payload).await }
        }))
        .await;
        for (w, result) in results.into_iter().enumerate() {
            let report = result.unwrap_or_else(|e| panic!("round {r}, writer {w}: {e}"));
            assert_eq!(report.received, KEYS, "round {r}, writer {w}");
        }
        let table = db.planets().await;
        assert!(
            (0..WRITERS).any(|w| table == after(r, w)),
            "round {r}: the table is no serial order of the round's batches: {table:?}"
        );
    }
    let retried: usize = handlers.iter().map(|h| h.sink().lock_conflicts()).sum();
    eprintln!("{backend:?}: {retried} batch(es) applied again after a lock conflict");
}

/// Runs the futures at once (on the test's worker threads) and returns their outputs in order.
async fn join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_writers_neither_fail_nor_interleave() {
    concurrent_writers_neither_fail_nor_interleave(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_concurrent_writers_neither_fail_nor_interleave() {
    concurrent_writers_neither_fail_nor_interleave(Backend::MariaDb).await
}
