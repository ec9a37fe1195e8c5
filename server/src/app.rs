//! Application state, boot sequence and the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use candle_core::utils::cuda_is_available;
use rollcall_models::device::{default_max_batch, device_name, DeviceChoice};
use rollcall_models::pipeline::{FacePipeline, PipelineConfig};

use crate::auth::{self, Scope};
use crate::cache::{LocalCache, RedisCache, SharedCache};
use crate::config::{CommonSettings, ServeSettings};
use crate::index::{FaceIndex, Gallery};
use crate::metrics::Metrics;
use crate::photos::PhotoStore;
use crate::queue::{QueueConfig, RecognitionQueue};
use crate::session::SessionKeys;
use crate::store::Store;
use crate::sync::{self, Source, StreamPosition};
use crate::{dashboard, error, routes};

/// Everything a request handler needs.
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Enrolment photos.
    pub photos: PhotoStore,
    /// Enrolled faces.
    pub index: Gallery,
    /// What replicas share: events, dedupe, recent results (Redis or in-process).
    pub cache: Arc<dyn SharedCache>,
    /// Where the index came from at boot.
    pub index_source: Source,
    /// Inference.
    pub queue: RecognitionQueue,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Serve settings.
    pub settings: ServeSettings,
    /// Version tag of the embeddings the pipeline produces.
    pub model_version: &'static str,
    /// Where the networks run: `cpu`, `cuda:0`.
    pub device: String,
    /// Signs dashboard session cookies.
    pub sessions: SessionKeys,
}

/// Errors while starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Database connection or migration.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Photo storage.
    #[error(transparent)]
    Photos(#[from] crate::photos::PhotoError),
    /// Loading the networks.
    #[error("loading the face models from {dir}: {source}")]
    Models {
        /// Model folder.
        dir: String,
        /// The cause.
        source: rollcall_models::ModelError,
    },
    /// A malformed `REDIS_URL`.
    #[error("REDIS_URL: {0}")]
    Redis(#[from] crate::cache::RedisError),
    /// Building the face index.
    #[error("building the face index: {0}")]
    Index(#[from] crate::sync::SyncError),
    /// Binding the socket.
    #[error("binding the HTTP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the pipeline of `common.model_dir` for `serve`.
pub fn load_pipeline(
    common: &CommonSettings,
    config: PipelineConfig,
) -> Result<FacePipeline, StartError> {
    let models = |source| StartError::Models {
        dir: common.model_dir.display().to_string(),
        source,
    };
    let device = common.device.open().map_err(models)?;
    tracing::info!(requested = %common.device, device = %device_name(&device), "face networks' device");
    if common.device == DeviceChoice::Auto && cuda_is_available() && device.is_cpu() {
        tracing::warn!(
            "this build has CUDA but no GPU could be opened: running on the CPU \
             (ROLLCALL_DEVICE=cuda refuses to start and says why)"
        );
    }
    FacePipeline::load(&common.model_dir, &device, config).map_err(models)
}

/// Connects and migrates the database, makes sure an admin key exists and returns the store.
/// When a key had to be generated it is returned so the caller can show it once.
pub async fn open_store(
    common: &CommonSettings,
    admin_key: Option<&str>,
) -> Result<(Store, Option<String>), StartError> {
    let store = Store::connect(&common.database_url).await?;
    store.migrate().await?;
    let generated = match admin_key {
        Some(key) => {
            auth::ensure_key(&store, "admin (ROLLCALL_ADMIN_KEY)", key, &[Scope::Admin]).await?;
            None
        }
        None if store.count_api_keys().await? == 0 => Some(
            auth::create_key(&store, "admin (first start)", &[Scope::Admin])
                .await?
                .1,
        ),
        None => None,
    };
    Ok((store, generated))
}

/// Builds the state: loads models, builds the face index (see [`sync::boot`]), connects the
/// shared cache and starts its background tasks, starts the queue.
pub async fn build_state(
    common: &CommonSettings,
    settings: ServeSettings,
    store: Store,
) -> Result<AppState, StartError> {
    let metrics = Arc::new(Metrics::new());
    let sessions = SessionKeys::load(&store, settings.session_key.as_deref()).await?;
    let photos = PhotoStore::open(&settings.storage_url)?;
    let config = PipelineConfig {
        detector: settings.detector.into(),
        min_confidence: settings.min_confidence,
        ..PipelineConfig::default()
    };
    let pipeline = Arc::new(load_pipeline(common, config)?);
    let model_version = pipeline.model_version();
    let max_batch = settings
        .max_batch
        .unwrap_or_else(|| default_max_batch(pipeline.device()));
    let device = device_name(pipeline.device());
    let redis = match &settings.redis_url {
        Some(url) => Some(RedisCache::open(url, metrics.clone()).await?),
        None => None,
    };
    let (index, report) = sync::boot(
        &store,
        redis.as_deref(),
        settings.snapshot_path(),
        settings.index_policy(),
    )
    .await?;
    metrics.index_size.set(index.len() as i64);
    let position = Arc::new(StreamPosition::new(report.stream_id.clone()));
    if let Some(path) = settings.snapshot_path() {
        let fresh = report.source == Source::Snapshot
            && report.added + report.removed + report.replayed == 0;
        sync::spawn_snapshots(
            index.clone(),
            path.to_owned(),
            Duration::from_secs(settings.snapshot_interval_secs.max(1)),
            position.clone(),
            fresh.then(|| index.generation()),
        );
    }
    let cache: Arc<dyn SharedCache> = match redis {
        Some(redis) => {
            redis.spawn_watchdog(store.clone());
            sync::spawn_follower(
                redis.clone(),
                index.clone(),
                store.clone(),
                position,
                metrics.clone(),
            );
            redis
        }
        None => Arc::new(LocalCache::default()),
    };
    let queue = RecognitionQueue::start(
        pipeline,
        QueueConfig {
            max_batch,
            max_wait: settings.max_wait(),
            capacity: settings.queue_capacity,
        },
        metrics.clone(),
    );
    Ok(AppState {
        store,
        photos,
        index,
        cache,
        index_source: report.source,
        queue,
        metrics,
        settings,
        model_version,
        device,
        sessions,
    })
}

/// Starts the HTTP server on `listener`.
pub fn serve(state: AppState, listener: TcpListener) -> Result<Server, StartError> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(64 * 1024)
                    .error_handler(error::json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .wrap(actix_web::middleware::from_fn(
                routes::system::track_metrics,
            ))
            .configure(dashboard::configure)
            .configure(routes::configure)
    })
    .listen(listener)?
    .run();
    Ok(server)
}
