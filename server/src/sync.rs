//! Keeping this replica's face index equal to the database, the truth:
//!
//! - at boot, faces come from the fastest complete source (an index snapshot, else the Redis
//!   mirror when it holds at least half the database's faces, else the database page by page),
//!   then the index is reconciled with the database's face ids;
//! - the follower applies the event stream of every replica, resuming from its last id after
//!   an outage (and, with a snapshot, from the snapshot's id after a restart);
//! - a background task writes a snapshot when the index changed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cache::{IndexEvent, RedisCache, RedisError};
use crate::index::snapshot::{self, Snapshot};
use crate::index::{FaceIndex, Gallery, HnswParams, IndexPolicy, StoredEmbedding};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// Faces read from the database per query while building the index.
const PAGE: i64 = 10_000;
/// Progress is logged every this many faces.
const PROGRESS_EVERY: usize = 100_000;

/// Where the boot sequence found the faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The index snapshot file.
    Snapshot,
    /// The Redis embedding mirror.
    Mirror,
    /// The database.
    Database,
}

impl Source {
    /// Lower-case name, for logs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Snapshot => "snapshot",
            Source::Mirror => "redis mirror",
            Source::Database => "database",
        }
    }
}

/// What the boot sequence did.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// Where the faces came from.
    pub source: Source,
    /// Faces read from it.
    pub loaded: usize,
    /// Stream events replayed after the snapshot.
    pub replayed: usize,
    /// Faces the reconciliation added from the database.
    pub added: usize,
    /// Faces the reconciliation removed.
    pub removed: usize,
    /// Faces in the index.
    pub faces: usize,
    /// Index kind.
    pub kind: &'static str,
    /// Of the wall time, loading the snapshot, or building the index structure from the faces
    /// read (the HNSW graph, when the gallery is large enough).
    pub build: Duration,
    /// Stream id the follower continues after (`None` when Redis was unreachable).
    pub stream_id: Option<String>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Errors of the boot sequence (Redis failures are not among them: it falls back).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the event stream has been applied up to; shared by the follower and the snapshots.
#[derive(Debug, Default)]
pub struct StreamPosition(Mutex<Option<String>>);

impl StreamPosition {
    /// A position at `id`, or unknown.
    pub fn new(id: Option<String>) -> Self {
        Self(Mutex::new(id))
    }

    /// The last applied id, if known.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, id: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }
}

async fn load_database(store: &Store) -> Result<Vec<StoredEmbedding>, StoreError> {
    let total = store.count_active_faces().await? as usize;
    let mut out = Vec::with_capacity(total);
    let mut after = 0;
    let mut next_log = PROGRESS_EVERY;
    loop {
        let page = store.active_embeddings_after(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.face_id;
        out.extend(page);
        if out.len() >= next_log {
            tracing::info!(
                read = out.len(),
                of = total,
                "reading faces from the database"
            );
            next_log += PROGRESS_EVERY;
        }
    }
    Ok(out)
}

/// The index in the snapshot at `path`, if it is there and readable.
fn load_snapshot(path: &Path, params: HnswParams) -> Option<Snapshot> {
    match snapshot::read(path, params) {
        Ok(s) => Some(s),
        Err(snapshot::SnapshotError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(error = %e, path = %path.display(), "ignoring the index snapshot");
            None
        }
    }
}

/// Makes `index` hold exactly the database's faces of active users: removes the others, adds
/// the missing ones. Returns `(added, removed)`.
pub async fn reconcile(index: &dyn FaceIndex, store: &Store) -> Result<(usize, usize), StoreError> {
    let truth: HashMap<i64, i64> = store.active_face_ids().await?.into_iter().collect();
    let held = index.face_ids();
    let mut present = HashSet::with_capacity(held.len());
    let mut removed = 0;
    for (face, user) in held {
        if truth.get(&face) == Some(&user) {
            present.insert(face);
        } else {
            index.remove_face(face);
            removed += 1;
        }
    }
    let missing: Vec<i64> = truth
        .keys()
        .filter(|f| !present.contains(f))
        .copied()
        .collect();
    let mut added = 0;
    for e in store.active_embeddings_of(&missing).await? {
        index.upsert(e.face_id, e.user_id, &e.embedding);
        added += 1;
    }
    Ok((added, removed))
}

/// Applies the stream's events after `after` to `index` until none are left; the last id.
async fn replay(
    redis: &RedisCache,
    index: &Gallery,
    after: String,
) -> Result<(String, usize), RedisError> {
    let mut conn = redis.follower_connection().await?;
    let mut last = after;
    let mut applied = 0;
    loop {
        let events = redis.read_events(&mut conn, &last, 10_000, false).await?;
        let Some((id, _)) = events.last() else { break };
        let id = id.clone();
        for (_, ev) in &events {
            // A resync needs no action here: the boot sequence reconciles next.
            ev.apply(index);
        }
        applied += events.len();
        last = id;
    }
    Ok((last, applied))
}

/// Builds the index: snapshot, mirror or database, then reconciled with the database.
pub async fn boot(
    store: &Store,
    redis: Option<&RedisCache>,
    snapshot_path: Option<&Path>,
    policy: IndexPolicy,
) -> Result<(Gallery, BootReport), SyncError> {
    let started = Instant::now();
    // Taken before anything is read: later events are applied again, harmlessly.
    let mut stream_id = match redis {
        Some(r) if r.is_healthy() => r.stream_tail().await.ok(),
        _ => None,
    };
    let built = Instant::now();
    let snapshot = match snapshot_path {
        Some(path) => {
            let (path, params) = (path.to_owned(), policy.hnsw);
            tokio::task::spawn_blocking(move || load_snapshot(&path, params))
                .await
                .expect("snapshot loading does not panic")
        }
        None => None,
    };
    let (source, gallery, loaded, snapshot_id) = match snapshot {
        Some(s) => {
            let loaded = s.index.len();
            let gallery = Gallery::with_index(s.index, policy);
            (Source::Snapshot, gallery, loaded, Some(s.stream_id))
        }
        None => {
            let mirrored = match redis {
                Some(r) if stream_id.is_some() => r.mirror_len().await.unwrap_or(0),
                _ => 0,
            };
            let in_db = store.count_active_faces().await? as usize;
            let mirror = match redis {
                Some(r) if mirrored > 0 && mirrored * 2 >= in_db => r.load_mirror().await.ok(),
                _ => None,
            };
            let (source, entries) = match mirror {
                Some(faces) => (Source::Mirror, faces),
                None => (Source::Database, load_database(store).await?),
            };
            let loaded = entries.len();
            tracing::info!(
                faces = loaded,
                source = source.as_str(),
                "building the face index"
            );
            let gallery = tokio::task::spawn_blocking(move || Gallery::build(&entries, policy))
                .await
                .expect("index build does not panic");
            (source, gallery, loaded, None)
        }
    };
    let build = built.elapsed();
    let mut replayed = 0;
    let redis_up = stream_id.is_some();
    if let (Some(r), Some(id), true) = (redis, snapshot_id.filter(|i| !i.is_empty()), redis_up) {
        match replay(r, &gallery, id).await {
            Ok((last, n)) => {
                replayed = n;
                stream_id = Some(last);
            }
            Err(e) => tracing::warn!(error = %e, "could not replay events after the snapshot"),
        }
    }
    let (added, removed) = reconcile(&gallery, store).await?;
    let report = BootReport {
        source,
        loaded,
        replayed,
        added,
        removed,
        faces: gallery.len(),
        kind: gallery.kind(),
        build,
        stream_id,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        source = source.as_str(),
        loaded,
        replayed,
        added,
        removed,
        faces = report.faces,
        kind = report.kind,
        build_ms = build.as_millis() as u64,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "face index ready"
    );
    Ok((gallery, report))
}

/// Follows the event stream from `from` (or, when Redis was unreachable at boot, from its tail
/// once it answers, reconciling first), applying every replica's events to `index`.
pub fn spawn_follower(
    redis: Arc<RedisCache>,
    index: Gallery,
    store: Store,
    position: Arc<StreamPosition>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        loop {
            let mut conn = match redis.follower_connection().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if position.get().is_none() {
                let Ok(tail) = redis.stream_tail().await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                if let Err(e) = reconcile(&index, &store).await {
                    tracing::warn!(error = %e, "could not reconcile the face index");
                }
                position.set(tail);
            }
            loop {
                let after = position.get().unwrap_or_else(|| "0".into());
                match redis.read_events(&mut conn, &after, 1000, true).await {
                    Ok(events) => {
                        for (id, ev) in events {
                            apply(&index, &store, &ev, &metrics).await;
                            position.set(id);
                        }
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
            }
        }
    });
}

async fn apply(index: &Gallery, store: &Store, event: &IndexEvent, metrics: &Metrics) {
    let kind = match event {
        IndexEvent::Upsert(_) => "upsert",
        IndexEvent::RemoveUser { .. } => "remove_user",
        IndexEvent::Resync => "resync",
    };
    metrics.index_events.with_label_values(&[kind]).inc();
    if !event.apply(index) {
        match reconcile(index, store).await {
            Ok((added, removed)) => {
                tracing::info!(added, removed, "face index reconciled with the database")
            }
            Err(e) => tracing::warn!(error = %e, "could not reconcile the face index"),
        }
    }
}

/// Writes a snapshot of `index` to `path` now (when `changed_since` differs from the index's
/// generation) and then every `interval` while it keeps changing.
pub fn spawn_snapshots(
    index: Gallery,
    path: PathBuf,
    interval: Duration,
    position: Arc<StreamPosition>,
    mut written: Option<u64>,
) {
    tokio::spawn(async move {
        loop {
            let generation = index.generation();
            if written != Some(generation) {
                let index = index.clone();
                let target = path.clone();
                let position = position.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let started = Instant::now();
                    // The position first: events after it are replayed on load, harmlessly.
                    let stream_id = position.get().unwrap_or_default();
                    snapshot::write(&target, &stream_id, &index)
                        .map(|()| (index.len(), started.elapsed()))
                })
                .await;
                match done {
                    Ok(Ok((faces, took))) => {
                        written = Some(generation);
                        tracing::info!(faces, path = %path.display(), elapsed_ms = took.as_millis() as u64, "index snapshot written");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not write the index snapshot"),
                    Err(e) => tracing::warn!(error = %e, "the snapshot task failed"),
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
}
