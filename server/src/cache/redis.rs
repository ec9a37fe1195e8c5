//! The Redis-backed cache: a write-through mirror of every embedding (hash `rollcall:faces`), a
//! stream of gallery events (`rollcall:events`) every replica follows, dedupe claims
//! (`SET NX EX`) and recent results.
//!
//! Redis is never waited on while it is known to be down: the request path skips it (the
//! database and this process's memory answer), a watchdog pings it every second, and when it
//! answers again the watchdog re-syncs the mirror from the database if it lost data and
//! publishes a [`IndexEvent::Resync`] when this replica failed to publish an event meanwhile,
//! so every replica reconciles its index with the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};

use super::{CachedResult, Claim, Health, IndexEvent, ResultKey, SharedCache};
use crate::index::StoredEmbedding;
use crate::metrics::Metrics;
use crate::store::{embedding_from_bytes, embedding_to_bytes, Store, StoreError};

/// The stream of gallery events.
pub const EVENTS_STREAM: &str = "rollcall:events";
/// The embedding mirror: face id → user id (8 bytes) and embedding (little-endian `f32`s).
pub const FACES_MIRROR: &str = "rollcall:faces";
const RESYNC_LOCK: &str = "rollcall:mirror:resync";
/// Events kept in the stream (approximately); older ones are trimmed.
const STREAM_MAXLEN: usize = 100_000;
/// Longest a stream read blocks waiting for events.
const BLOCK_MS: usize = 1000;

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The command failed or Redis is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis is known to be down; nothing was sent.
    #[error("redis is unreachable")]
    Down,
    /// Reading the database while re-syncing.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An entry that this version cannot read.
    #[error("malformed {0}")]
    Malformed(String),
}

/// Shared state through Redis.
pub struct RedisCache {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    healthy: AtomicBool,
    /// An event could not be published: replicas must reconcile once Redis is back.
    lost_events: AtomicBool,
    metrics: Arc<Metrics>,
}

fn config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_max_delay(200)
        .set_connection_timeout(Duration::from_millis(500))
        .set_response_timeout(response_timeout)
}

fn upsert_value(e: &StoredEmbedding) -> Vec<u8> {
    let mut v = e.user_id.to_le_bytes().to_vec();
    v.extend(embedding_to_bytes(&e.embedding));
    v
}

fn parse_mirror(face: &str, value: &[u8]) -> Result<StoredEmbedding, RedisError> {
    let bad = || RedisError::Malformed(format!("mirror entry {face}"));
    if value.len() < 8 {
        return Err(bad());
    }
    Ok(StoredEmbedding {
        face_id: face.parse().map_err(|_| bad())?,
        user_id: i64::from_le_bytes(value[..8].try_into().map_err(|_| bad())?),
        embedding: embedding_from_bytes(&value[8..]),
    })
}

fn field<T: redis::FromRedisValue>(map: &HashMap<String, Value>, name: &str) -> Option<T> {
    map.get(name).and_then(|v| redis::from_redis_value(v).ok())
}

fn parse_event(id: &str, map: &HashMap<String, Value>) -> Result<IndexEvent, RedisError> {
    let bad = || RedisError::Malformed(format!("stream entry {id}"));
    let op: String = field(map, "op").ok_or_else(bad)?;
    Ok(match op.as_str() {
        "upsert" => {
            let emb: Vec<u8> = field(map, "embedding").ok_or_else(bad)?;
            IndexEvent::Upsert(StoredEmbedding {
                face_id: field(map, "face").ok_or_else(bad)?,
                user_id: field(map, "user").ok_or_else(bad)?,
                embedding: embedding_from_bytes(&emb),
            })
        }
        "remove_user" => {
            let faces: String = field(map, "faces").unwrap_or_default();
            IndexEvent::RemoveUser {
                user_id: field(map, "user").ok_or_else(bad)?,
                face_ids: faces
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|_| bad()))
                    .collect::<Result<_, _>>()?,
            }
        }
        "resync" => IndexEvent::Resync,
        _ => return Err(bad()),
    })
}

fn dedupe_key(user_id: i64, window: Duration) -> String {
    format!("rollcall:dedupe:{}:{user_id}", window.as_secs())
}

fn result_key(key: ResultKey) -> String {
    format!(
        "rollcall:result:{:08x}:{:016x}",
        key.threshold_bits, key.hash
    )
}

impl RedisCache {
    /// Connects to `url`. An unreachable Redis is not an error (the server starts degraded
    /// and the watchdog connects later); a malformed URL is.
    pub async fn open(url: &str, metrics: Arc<Metrics>) -> Result<Arc<Self>, RedisError> {
        let client = redis::Client::open(url)?;
        let cache = Arc::new(Self {
            client,
            conn: Mutex::new(None),
            healthy: AtomicBool::new(false),
            lost_events: AtomicBool::new(false),
            metrics,
        });
        match cache.connect().await {
            Ok(()) => tracing::info!("connected to redis"),
            Err(e) => tracing::warn!(error = %e, "redis is unreachable; starting degraded"),
        }
        Ok(cache)
    }

    async fn connect(&self) -> Result<(), RedisError> {
        let mut conn =
            ConnectionManager::new_with_config(self.client.clone(), config(Duration::from_secs(2)))
                .await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        self.healthy.store(true, Ordering::SeqCst);
        self.metrics.redis_up.set(1);
        Ok(())
    }

    /// The shared connection, unless Redis is known to be down.
    fn conn(&self) -> Result<ConnectionManager, RedisError> {
        if !self.healthy.load(Ordering::SeqCst) {
            return Err(RedisError::Down);
        }
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(RedisError::Down)
    }

    /// Notes a failure: the first one of an outage logs a warning and marks Redis down.
    fn failed(&self, what: &str, err: &RedisError) {
        if matches!(err, RedisError::Down) {
            return;
        }
        if self.healthy.swap(false, Ordering::SeqCst) {
            self.metrics.redis_up.set(0);
            tracing::warn!(error = %err, what, "redis is unreachable; serving from the database and memory until it returns");
        }
    }

    /// Notes a failed command and converts its error.
    fn redis_failed(&self, what: &str, err: redis::RedisError) -> RedisError {
        let err = RedisError::Redis(err);
        self.failed(what, &err);
        err
    }

    /// Whether Redis answered last time.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// A dedicated connection for blocking stream reads (a blocking read would stall the
    /// shared, multiplexed one).
    pub async fn follower_connection(&self) -> Result<ConnectionManager, RedisError> {
        let timeout = Duration::from_millis(BLOCK_MS as u64 + 2000);
        Ok(ConnectionManager::new_with_config(self.client.clone(), config(timeout)).await?)
    }

    /// Events after stream id `after` (`0` for all), at most `count`, blocking up to a second
    /// for the first when `block`.
    pub async fn read_events(
        &self,
        conn: &mut ConnectionManager,
        after: &str,
        count: usize,
        block: bool,
    ) -> Result<Vec<(String, IndexEvent)>, RedisError> {
        let mut opts = StreamReadOptions::default().count(count);
        if block {
            opts = opts.block(BLOCK_MS);
        }
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[EVENTS_STREAM], &[after], &opts)
            .await
            .map_err(|e| self.redis_failed("reading events", e))?;
        let mut out = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                match parse_event(&entry.id, &entry.map) {
                    Ok(ev) => out.push((entry.id, ev)),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping a stream entry");
                        out.push((entry.id, IndexEvent::Resync));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Id of the newest event (`0` when the stream is empty).
    pub async fn stream_tail(&self) -> Result<String, RedisError> {
        let mut conn = self.conn()?;
        let reply: redis::streams::StreamRangeReply = conn
            .xrevrange_count(EVENTS_STREAM, "+", "-", 1)
            .await
            .map_err(|e| self.redis_failed("reading the stream", e))?;
        Ok(reply
            .ids
            .into_iter()
            .next()
            .map_or_else(|| "0".to_owned(), |e| e.id))
    }

    /// Number of faces in the mirror.
    pub async fn mirror_len(&self) -> Result<usize, RedisError> {
        let mut conn = self.conn()?;
        conn.hlen(FACES_MIRROR)
            .await
            .map_err(|e| self.redis_failed("reading the mirror", e))
    }

    /// Every face of the mirror.
    pub async fn load_mirror(&self) -> Result<Vec<StoredEmbedding>, RedisError> {
        let mut conn = self.conn()?;
        let mut out = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, items): (u64, Vec<(String, Vec<u8>)>) = redis::cmd("HSCAN")
                .arg(FACES_MIRROR)
                .arg(cursor)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_failed("reading the mirror", e))?;
            for (face, value) in items {
                out.push(parse_mirror(&face, &value)?);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// Rewrites the mirror from the database (one replica at a time); the number written, or
    /// `None` when another replica holds the re-sync lock.
    pub async fn resync_mirror(&self, store: &Store) -> Result<Option<usize>, RedisError> {
        let mut conn = self.conn()?;
        let locked: Option<String> = redis::cmd("SET")
            .arg(RESYNC_LOCK)
            .arg(std::process::id())
            .arg("NX")
            .arg("EX")
            .arg(300)
            .query_async(&mut conn)
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
        let _: () = conn.del(FACES_MIRROR).await?;
        let mut after = 0;
        let mut written = 0;
        loop {
            let page = store.active_embeddings_after(after, 5000).await?;
            let Some(last) = page.last() else { break };
            after = last.face_id;
            let items: Vec<(i64, Vec<u8>)> =
                page.iter().map(|e| (e.face_id, upsert_value(e))).collect();
            let _: () = conn.hset_multiple(FACES_MIRROR, &items).await?;
            written += items.len();
        }
        let _: () = conn.del(RESYNC_LOCK).await?;
        Ok(Some(written))
    }

    async fn try_publish(&self, event: &IndexEvent) -> Result<(), RedisError> {
        let mut conn = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let maxlen = redis::streams::StreamMaxlen::Approx(STREAM_MAXLEN);
        match event {
            IndexEvent::Upsert(e) => {
                pipe.hset(FACES_MIRROR, e.face_id, upsert_value(e)).ignore();
                pipe.xadd_maxlen(
                    EVENTS_STREAM,
                    maxlen,
                    "*",
                    &[
                        ("op", b"upsert".to_vec()),
                        ("face", e.face_id.to_string().into_bytes()),
                        ("user", e.user_id.to_string().into_bytes()),
                        ("embedding", embedding_to_bytes(&e.embedding)),
                    ],
                )
                .ignore();
            }
            IndexEvent::RemoveUser { user_id, face_ids } => {
                if !face_ids.is_empty() {
                    pipe.hdel(FACES_MIRROR, face_ids).ignore();
                }
                let faces = face_ids
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                pipe.xadd_maxlen(
                    EVENTS_STREAM,
                    maxlen,
                    "*",
                    &[
                        ("op", "remove_user".to_owned()),
                        ("user", user_id.to_string()),
                        ("faces", faces),
                    ],
                )
                .ignore();
            }
            IndexEvent::Resync => {
                pipe.xadd_maxlen(EVENTS_STREAM, maxlen, "*", &[("op", "resync")])
                    .ignore();
            }
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Pings every second while Redis is down; when it answers again, re-syncs the mirror if
    /// it lost faces and asks every replica to reconcile if this one lost events.
    pub fn spawn_watchdog(self: &Arc<Self>, store: Store) {
        let cache = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if cache.is_healthy() {
                    continue;
                }
                if cache.connect().await.is_err() {
                    continue;
                }
                tracing::info!("redis is reachable again; catching up");
                if let Err(e) = cache.catch_up(&store).await {
                    cache.failed("catching up", &e);
                }
            }
        });
    }

    async fn catch_up(&self, store: &Store) -> Result<(), RedisError> {
        let mirrored = self.mirror_len().await?;
        let faces = store.count_active_faces().await? as usize;
        if mirrored != faces {
            if let Some(n) = self.resync_mirror(store).await? {
                tracing::info!(faces = n, "embedding mirror re-synced from the database");
            }
        }
        if self.lost_events.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.try_publish(&IndexEvent::Resync).await {
                self.lost_events.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl SharedCache for RedisCache {
    fn health(&self) -> BoxFuture<'_, Health> {
        async move {
            let ok = match self.conn() {
                Ok(mut conn) => match redis::cmd("PING").query_async::<()>(&mut conn).await {
                    Ok(()) => true,
                    Err(e) => {
                        self.failed("ping", &RedisError::Redis(e));
                        false
                    }
                },
                Err(_) => false,
            };
            Health {
                backend: "redis",
                ok,
            }
        }
        .boxed()
    }

    fn publish(&self, event: IndexEvent) -> BoxFuture<'_, ()> {
        async move {
            if let Err(e) = self.try_publish(&event).await {
                self.failed("publishing an event", &e);
                self.lost_events.store(true, Ordering::SeqCst);
            }
        }
        .boxed()
    }

    fn claim_mark(&self, user_id: i64, window: Duration) -> BoxFuture<'_, Claim> {
        async move {
            let mut conn = match self.conn() {
                Ok(c) => c,
                Err(_) => return Claim::Unknown,
            };
            // SET NX GET: sets when absent and answers the previous value either way.
            let previous: Result<Option<String>, _> = redis::cmd("SET")
                .arg(dedupe_key(user_id, window))
                .arg("pending")
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(window.as_secs().max(1))
                .query_async(&mut conn)
                .await;
            match previous {
                Ok(None) => Claim::First,
                Ok(Some(v)) => Claim::Marked(v.parse().ok()),
                Err(e) => {
                    self.failed("claiming a mark", &RedisError::Redis(e));
                    Claim::Unknown
                }
            }
        }
        .boxed()
    }

    fn set_mark(&self, user_id: i64, window: Duration, mark_id: i64) -> BoxFuture<'_, ()> {
        async move {
            let Ok(mut conn) = self.conn() else { return };
            let done: Result<(), _> = conn
                .set_ex(
                    dedupe_key(user_id, window),
                    mark_id,
                    window.as_secs().max(1),
                )
                .await;
            if let Err(e) = done {
                self.failed("recording a mark", &RedisError::Redis(e));
            }
        }
        .boxed()
    }

    fn recent_result(&self, key: ResultKey) -> BoxFuture<'_, Option<CachedResult>> {
        async move {
            let mut conn = self.conn().ok()?;
            let value: Option<String> = match conn.get(result_key(key)).await {
                Ok(v) => v,
                Err(e) => {
                    self.failed("reading a result", &RedisError::Redis(e));
                    return None;
                }
            };
            let mut parts = value?
                .splitn(3, ':')
                .map(str::to_owned)
                .collect::<Vec<_>>()
                .into_iter();
            Some(CachedResult {
                user_id: parts.next()?.parse().ok()?,
                face_id: parts.next()?.parse().ok()?,
                similarity: parts.next()?.parse().ok()?,
            })
        }
        .boxed()
    }

    fn remember_result(
        &self,
        key: ResultKey,
        result: CachedResult,
        ttl: Duration,
    ) -> BoxFuture<'_, ()> {
        async move {
            let Ok(mut conn) = self.conn() else { return };
            let value = format!(
                "{}:{}:{}",
                result.user_id, result.face_id, result.similarity
            );
            let done: Result<(), _> = conn
                .pset_ex(result_key(key), value, ttl.as_millis().max(1) as u64)
                .await;
            if let Err(e) = done {
                self.failed("caching a result", &RedisError::Redis(e));
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_values_and_stream_entries_round_trip() {
        let e = StoredEmbedding {
            face_id: 7,
            user_id: 3,
            embedding: vec![0.25, -0.5, 1.0],
        };
        assert_eq!(parse_mirror("7", &upsert_value(&e)).unwrap(), e);
        assert!(parse_mirror("x", &upsert_value(&e)).is_err());
        let mut map = HashMap::new();
        map.insert("op".to_owned(), Value::BulkString(b"remove_user".to_vec()));
        map.insert("user".to_owned(), Value::BulkString(b"3".to_vec()));
        map.insert("faces".to_owned(), Value::BulkString(b"7,8".to_vec()));
        assert_eq!(
            parse_event("1-0", &map).unwrap(),
            IndexEvent::RemoveUser {
                user_id: 3,
                face_ids: vec![7, 8]
            }
        );
        map.insert("op".to_owned(), Value::BulkString(b"drop_tables".to_vec()));
        assert!(parse_event("1-0", &map).is_err());
    }
}
