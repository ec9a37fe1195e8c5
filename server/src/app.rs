//! Application state, boot sequence and the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use candle_core::Device;
use rollcall_models::pipeline::{FacePipeline, PipelineConfig};

use crate::auth::{self, Scope};
use crate::config::{CommonSettings, ServeSettings};
use crate::index::{ExactIndex, FaceIndex};
use crate::metrics::Metrics;
use crate::photos::PhotoStore;
use crate::queue::{QueueConfig, RecognitionQueue};
use crate::session::SessionKeys;
use crate::store::Store;
use crate::{dashboard, error, routes};

/// Everything a request handler needs.
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Enrolment photos.
    pub photos: PhotoStore,
    /// Enrolled faces.
    pub index: Arc<dyn FaceIndex>,
    /// Inference.
    pub queue: RecognitionQueue,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Serve settings.
    pub settings: ServeSettings,
    /// Version tag of the embeddings the pipeline produces.
    pub model_version: &'static str,
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
    /// Binding the socket.
    #[error("binding the HTTP socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the pipeline of `common.model_dir` for `serve`.
pub fn load_pipeline(
    common: &CommonSettings,
    config: PipelineConfig,
) -> Result<FacePipeline, StartError> {
    FacePipeline::load(&common.model_dir, &Device::Cpu, config).map_err(|source| {
        StartError::Models {
            dir: common.model_dir.display().to_string(),
            source,
        }
    })
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

/// Builds the state: loads models, rebuilds the index from the database, starts the queue.
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
    let started = Instant::now();
    let index: Arc<dyn FaceIndex> = Arc::new(ExactIndex::new());
    let embeddings = store.active_embeddings().await?;
    for e in &embeddings {
        index.upsert(e.face_id, e.user_id, &e.embedding);
    }
    metrics.index_size.set(index.len() as i64);
    tracing::info!(
        faces = index.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "face index built from the database"
    );
    let queue = RecognitionQueue::start(
        pipeline,
        QueueConfig {
            max_batch: settings.max_batch,
            max_wait: settings.max_wait(),
            capacity: settings.queue_capacity,
        },
        metrics.clone(),
    );
    Ok(AppState {
        store,
        photos,
        index,
        queue,
        metrics,
        settings,
        model_version,
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
