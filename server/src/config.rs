//! Server settings: command-line flags with environment-variable fallbacks (`.env` style).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use rollcall_models::device::DeviceChoice;
use rollcall_models::pipeline::DetectorKind;

/// Which detector the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// SSD MobileNetV1 (accurate).
    Ssd,
    /// TinyFaceDetector (fast).
    Tiny,
}

impl From<DetectorArg> for DetectorKind {
    fn from(d: DetectorArg) -> Self {
        match d {
            DetectorArg::Ssd => DetectorKind::Ssd,
            DetectorArg::Tiny => DetectorKind::Tiny,
        }
    }
}

/// Where the database and weights are: shared by every command.
#[derive(Debug, Clone, Args)]
pub struct CommonSettings {
    /// Database URL: `sqlite://PATH` or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/rollcall.db"
    )]
    pub database_url: String,

    /// Folder holding the face-api `model/` folder (filled by scripts/fetch-assets.sh).
    #[arg(long, env = "ROLLCALL_MODEL_DIR", default_value = "assets/face-api")]
    pub model_dir: PathBuf,

    /// Device the networks run on: `cpu`, `cuda` (GPU 0), `cuda:N`, or `auto` (GPU 0 in a
    /// build with the `cuda` feature on a machine with a GPU, else the CPU).
    #[arg(long, env = "ROLLCALL_DEVICE", default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

/// Settings of `rollcall serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeSettings {
    /// Address to listen on.
    #[arg(long, env = "ROLLCALL_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Where photos are stored: a local folder path, `file:///abs/path`, `gs://bucket[/prefix]`
    /// or `s3://bucket[/prefix]` (cloud credentials from the environment).
    #[arg(long, env = "ROLLCALL_STORAGE_URL", default_value = "data/photos")]
    pub storage_url: String,

    /// Minimum cosine similarity for a face to count as a match.
    #[arg(long, env = "ROLLCALL_MATCH_THRESHOLD", default_value_t = crate::DEFAULT_MATCH_THRESHOLD)]
    pub match_threshold: f32,

    /// Sightings of one person within this many seconds fold into one attendance mark.
    #[arg(long, env = "ROLLCALL_DEDUPE_WINDOW_SECS", default_value_t = 300)]
    pub dedupe_window_secs: u64,

    /// Largest accepted upload in bytes.
    #[arg(long, env = "ROLLCALL_MAX_UPLOAD_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_upload_bytes: usize,

    /// Largest accepted image in pixels (width × height), checked before decoding.
    #[arg(long, env = "ROLLCALL_MAX_PIXELS", default_value_t = 40_000_000)]
    pub max_pixels: u64,

    /// Most images the recognition queue runs through the networks at once (default: 8 on the
    /// CPU, 64 on a GPU).
    #[arg(long, env = "ROLLCALL_MAX_BATCH")]
    pub max_batch: Option<usize>,

    /// How long the queue waits for a batch to fill once its first request is in, in
    /// milliseconds. 0, the default, never waits: a batch is whatever queued while the last one
    /// ran, so a lone request pays no delay (measured on 2 cores: 26 against 30 requests/s at
    /// concurrency 1 with 5 ms), and batches fill by themselves under load.
    #[arg(long, env = "ROLLCALL_MAX_WAIT_MS", default_value_t = 0)]
    pub max_wait_ms: u64,

    /// Requests the queue holds before answering 503.
    #[arg(long, env = "ROLLCALL_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,

    /// Face detector.
    #[arg(long, env = "ROLLCALL_DETECTOR", value_enum, default_value_t = DetectorArg::Ssd)]
    pub detector: DetectorArg,

    /// Minimum detector confidence.
    #[arg(long, env = "ROLLCALL_MIN_CONFIDENCE", default_value_t = 0.5)]
    pub min_confidence: f32,

    /// The first admin key. When unset and the database has no key, one is generated and printed once.
    #[arg(long, env = "ROLLCALL_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Redis shared by replicas (`redis://HOST:PORT/DB`): embedding mirror, gallery events,
    /// attendance dedupe and recent results. Unset: an in-process cache (one replica).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Galleries of at least this many faces are searched with HNSW, smaller ones exactly.
    #[arg(long, env = "ROLLCALL_HNSW_THRESHOLD", default_value_t = 20_000)]
    pub hnsw_threshold: usize,

    /// HNSW candidates explored per search: higher finds the true best match more often and
    /// costs more time.
    #[arg(long, env = "ROLLCALL_HNSW_EF_SEARCH", default_value_t = crate::index::HnswParams::default().ef_search)]
    pub hnsw_ef_search: usize,

    /// Index snapshot file read at boot and rewritten when the index changed (empty: none).
    #[arg(
        long,
        env = "ROLLCALL_INDEX_SNAPSHOT",
        default_value = "data/face-index.bin"
    )]
    pub index_snapshot: String,

    /// Seconds between index snapshots (written only when the index changed).
    #[arg(long, env = "ROLLCALL_SNAPSHOT_INTERVAL_SECS", default_value_t = 300)]
    pub snapshot_interval_secs: u64,

    /// Seconds a recognition result is reused for the same face (by perceptual hash); 0: off.
    #[arg(long, env = "ROLLCALL_RESULT_CACHE_SECS", default_value_t = 10)]
    pub result_cache_secs: u64,

    /// Secret that signs dashboard session cookies. When unset, one is generated on first start
    /// and kept in the database, so every replica shares it.
    #[arg(long, env = "ROLLCALL_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,
}

impl ServeSettings {
    /// The dedupe window.
    pub fn dedupe_window(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.dedupe_window_secs as i64)
    }

    /// The index policy of these settings.
    pub fn index_policy(&self) -> crate::index::IndexPolicy {
        let default = crate::index::IndexPolicy::default();
        crate::index::IndexPolicy {
            hnsw_threshold: self.hnsw_threshold,
            hnsw: crate::index::HnswParams {
                ef_search: self.hnsw_ef_search,
                ..default.hnsw
            },
            ..default
        }
    }

    /// The snapshot file, unless disabled.
    pub fn snapshot_path(&self) -> Option<&std::path::Path> {
        let path = self.index_snapshot.trim();
        (!path.is_empty()).then_some(std::path::Path::new(path))
    }

    /// The batching wait.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.max_wait_ms)
    }
}
