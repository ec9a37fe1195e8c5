//! The batched face pipeline: detect → landmarks → align → embed over N images, each stage
//! one batched forward over all of its inputs.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::Device;
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::align::{assess, dlib_chip, Quality};
use crate::detection::Detection;
use crate::dlib_weights::{load_dlib_resnet, DLIB_RESNET_FILE};
use crate::error::Result;
use crate::landmarks::{FaceLandmark68Net, Landmarks68};
use crate::preprocess::FloatImage;
use crate::recognition::FaceRecognitionNet;
use crate::ssd_mobilenet::SsdMobilenetV1;
use crate::tfjs::WeightMap;
use crate::tiny_face_detector::TinyFaceDetector;

/// Default minimum cosine similarity of two embeddings to call them the same person
/// with dlib's float32 weights and dlib chips, calibrated on the face_recognition and face-api
/// test photos (see the README's Accuracy section).
pub const DEFAULT_MATCH_THRESHOLD: f32 = 0.92;

/// Which face detector runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// SSD MobileNetV1 at 512×512: the accurate default.
    Ssd,
    /// TinyFaceDetector: the fast option.
    Tiny,
}

/// Which weights the recognition network runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecognitionWeights {
    /// face-api's uint8-quantised TF.js weights (`model/face_recognition_model*`).
    FaceApi,
    /// dlib's float32 original, `dlib_face_recognition_resnet_model_v1.dat`, found in
    /// `<model_dir>/dlib/` or `<model_dir>/../dlib/` (where `scripts/fetch-assets.sh` puts it).
    Dlib,
}

impl RecognitionWeights {
    /// Version tag of the embeddings these weights produce.
    pub fn model_version(self) -> &'static str {
        match self {
            RecognitionWeights::FaceApi => "face-api-1.7.15-u8/resnet128/dlib-chip",
            RecognitionWeights::Dlib => "dlib-resnet-v1-f32/resnet128/dlib-chip",
        }
    }

    fn load(self, model_dir: &Path, device: &Device) -> Result<FaceRecognitionNet> {
        let weights = match self {
            RecognitionWeights::FaceApi => {
                WeightMap::load(&model_dir.join("model"), FaceRecognitionNet::MODEL, device)?
            }
            RecognitionWeights::Dlib => {
                let beside = model_dir.join("dlib").join(DLIB_RESNET_FILE);
                let path = if beside.exists() {
                    beside
                } else {
                    model_dir.join("../dlib").join(DLIB_RESNET_FILE)
                };
                load_dlib_resnet(&path, device)?
            }
        };
        FaceRecognitionNet::load(&weights)
    }
}

/// Settings of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PipelineConfig {
    /// The detector to use.
    pub detector: DetectorKind,
    /// Minimum detector confidence for a face.
    pub min_confidence: f32,
    /// At most this many faces per image (largest-score first).
    pub max_faces: usize,
    /// Input side of the tiny detector (a multiple of 32).
    pub tiny_input_size: usize,
    /// Weights of the recognition network.
    pub recognition_weights: RecognitionWeights,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            detector: DetectorKind::Ssd,
            min_confidence: 0.5,
            max_faces: 100,
            tiny_input_size: 416,
            recognition_weights: RecognitionWeights::Dlib,
        }
    }
}

/// One face found in an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Face {
    /// Box and detector score, in original image pixels.
    pub detection: Detection,
    /// 68 landmarks in original image pixels.
    pub landmarks: Landmarks68,
    /// Whether the face is large and sharp enough to trust.
    pub quality: Quality,
    /// L2-normalised 128-D embedding of the aligned chip.
    pub embedding: Vec<f32>,
}

/// Wall time of each stage of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimings {
    /// Detector forward + NMS.
    pub detect: Duration,
    /// Landmark forward.
    pub landmarks: Duration,
    /// Chip extraction and quality assessment.
    pub align: Duration,
    /// Embedding forward.
    pub embed: Duration,
}

/// The faces of each image of a batch and how long each stage took.
#[derive(Debug, Clone, Default)]
pub struct Processed {
    /// One list of faces per input image, in input order.
    pub faces: Vec<Vec<Face>>,
    /// Stage timings of the whole batch.
    pub timings: StageTimings,
}

/// All networks, loaded once, ready to process batches of images.
pub struct FacePipeline {
    detector: Detector,
    landmarks: FaceLandmark68Net,
    recognition: FaceRecognitionNet,
    config: PipelineConfig,
    device: Device,
}

enum Detector {
    Ssd(SsdMobilenetV1),
    Tiny(TinyFaceDetector),
}

impl FacePipeline {
    /// Loads the networks from `model_dir/model/` (the folder `scripts/fetch-assets.sh` fills),
    /// and dlib's recognition weights from `model_dir/../dlib/` when configured.
    pub fn load(model_dir: &Path, device: &Device, config: PipelineConfig) -> Result<Self> {
        let dir = model_dir.join("model");
        let detector = match config.detector {
            DetectorKind::Ssd => Detector::Ssd(SsdMobilenetV1::load(&WeightMap::load(
                &dir,
                SsdMobilenetV1::MODEL,
                device,
            )?)?),
            DetectorKind::Tiny => Detector::Tiny(TinyFaceDetector::load(&WeightMap::load(
                &dir,
                TinyFaceDetector::MODEL,
                device,
            )?)?),
        };
        let landmarks =
            FaceLandmark68Net::load(&WeightMap::load(&dir, FaceLandmark68Net::MODEL, device)?)?;
        let recognition = config.recognition_weights.load(model_dir, device)?;
        Ok(Self {
            detector,
            landmarks,
            recognition,
            config,
            device: device.clone(),
        })
    }

    /// The device the networks run on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The settings this pipeline runs with.
    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    /// Version tag of the embeddings this pipeline produces (depends on the recognition weights).
    pub fn model_version(&self) -> &'static str {
        self.config.recognition_weights.model_version()
    }

    /// Finds, aligns and embeds every face of every image; one result list per image.
    pub fn process(&self, images: &[RgbImage]) -> Result<Processed> {
        let mut timings = StageTimings::default();
        // The CPU stages between the networks (conversion, alignment, quality) run on every
        // core, image by image and face by face: on a GPU host they are what is left on the
        // CPU, and batches of dozens of images hold a hundred faces and more.
        let floats: Vec<FloatImage> = images.par_iter().map(FloatImage::from_rgb).collect();
        let refs: Vec<&FloatImage> = floats.iter().collect();
        let t = Instant::now();
        let detections = self.detect(&refs)?;
        timings.detect = t.elapsed();

        let owners: Vec<(usize, Detection)> = detections
            .iter()
            .enumerate()
            .flat_map(|(i, dets)| dets.iter().map(move |d| (i, *d)))
            .collect();
        let crops: Vec<(&FloatImage, _)> =
            owners.iter().map(|(i, d)| (&floats[*i], d.bbox)).collect();
        let t = Instant::now();
        let landmarks = self.landmarks.detect(&crops)?;
        timings.landmarks = t.elapsed();

        let t = Instant::now();
        let (chips, qualities): (Vec<FloatImage>, Vec<Quality>) = owners
            .par_iter()
            .zip(&landmarks)
            .map(|((i, _), lm)| {
                let chip = dlib_chip(&floats[*i], &lm.points);
                let quality = assess(&floats[*i], &lm.points, &chip);
                (chip, quality)
            })
            .unzip();
        timings.align = t.elapsed();

        let t = Instant::now();
        let chip_refs: Vec<&FloatImage> = chips.iter().collect();
        let embeddings = self.recognition.embed(&chip_refs)?;
        timings.embed = t.elapsed();

        let mut faces: Vec<Vec<Face>> = vec![Vec::new(); images.len()];
        for ((((i, detection), landmarks), quality), embedding) in owners
            .into_iter()
            .zip(landmarks)
            .zip(qualities)
            .zip(embeddings)
        {
            faces[i].push(Face {
                detection,
                landmarks,
                quality,
                embedding,
            });
        }
        Ok(Processed { faces, timings })
    }

    fn detect(&self, images: &[&FloatImage]) -> Result<Vec<Vec<Detection>>> {
        let c = &self.config;
        match &self.detector {
            Detector::Ssd(net) => net.detect(images, c.min_confidence, c.max_faces),
            Detector::Tiny(net) => {
                let mut all = net.detect(images, c.tiny_input_size, c.min_confidence)?;
                for dets in &mut all {
                    dets.truncate(c.max_faces);
                }
                Ok(all)
            }
        }
    }
}

/// Cosine similarity of two L2-normalised embeddings (their dot product).
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
