//! The batching queue (an actor in the style of text-embeddings-inference): requests carry a
//! one-shot reply; one worker thread takes up to `max_batch` of them (those queued while the
//! last batch ran, and any arriving within `max_wait` when that is set), runs the face
//! pipeline once over the batch and fans the results back. A full queue refuses at once;
//! requests whose client went away are skipped.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::RgbImage;
use rollcall_models::pipeline::{Face, FacePipeline};
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Why a request got no faces back.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue is at capacity.
    #[error("the recognition queue is full")]
    Full,
    /// The worker has stopped.
    #[error("the recognition worker has stopped")]
    Closed,
    /// The networks failed on the batch.
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    /// Most images per forward pass.
    pub max_batch: usize,
    /// Longest wait for a batch to fill after its first request.
    pub max_wait: Duration,
    /// Requests held before refusing.
    pub capacity: usize,
}

struct Job {
    image: RgbImage,
    reply: oneshot::Sender<Result<Vec<Face>, QueueError>>,
}

/// Handle to the queue; cheap to clone.
#[derive(Clone)]
pub struct RecognitionQueue {
    tx: SyncSender<Job>,
    config: QueueConfig,
    metrics: Arc<Metrics>,
}

impl RecognitionQueue {
    /// Starts the worker thread that owns the pipeline.
    pub fn start(pipeline: Arc<FacePipeline>, config: QueueConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = sync_channel(config.capacity.max(1));
        let worker_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("rollcall-inference".into())
            .spawn(move || worker(rx, &pipeline, config, &worker_metrics))
            .expect("spawning the inference thread");
        Self {
            tx,
            config,
            metrics,
        }
    }

    /// The batching settings the queue runs with.
    pub fn config(&self) -> QueueConfig {
        self.config
    }

    /// Queues one decoded image and waits for its faces.
    pub async fn submit(&self, image: RgbImage) -> Result<Vec<Face>, QueueError> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { image, reply }) {
            Ok(()) => self.metrics.queue_depth.inc(),
            Err(TrySendError::Full(_)) => return Err(QueueError::Full),
            Err(TrySendError::Disconnected(_)) => return Err(QueueError::Closed),
        }
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

fn worker(rx: Receiver<Job>, pipeline: &FacePipeline, config: QueueConfig, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + config.max_wait;
        while batch.len() < config.max_batch.max(1) {
            let next = match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => rx.recv_timeout(left),
                _ => rx.try_recv().map_err(|_| RecvTimeoutError::Timeout),
            };
            match next {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics.queue_depth.sub(batch.len() as i64);
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        metrics
            .batch_size
            .with_label_values(&[])
            .observe(batch.len() as f64);
        let (images, replies): (Vec<RgbImage>, Vec<_>) =
            batch.into_iter().map(|j| (j.image, j.reply)).unzip();
        match pipeline.process(&images) {
            Ok(out) => {
                let t = out.timings;
                for (stage, d) in [
                    ("detect", t.detect),
                    ("landmarks", t.landmarks),
                    ("align", t.align),
                    ("embed", t.embed),
                ] {
                    metrics.stage(stage, d.as_secs_f64());
                }
                for (reply, faces) in replies.into_iter().zip(out.faces) {
                    let _ = reply.send(Ok(faces));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "inference failed");
                for reply in replies {
                    let _ = reply.send(Err(QueueError::Inference(err.to_string())));
                }
            }
        }
    }
}
