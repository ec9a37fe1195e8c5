//! Rollcall's face models: Candle implementations of face-api's pretrained networks
//! (SSD MobileNetV1 and TinyFaceDetector detectors, FaceLandmark68Net, FaceRecognitionNet),
//! their weight loader, preprocessing, alignment and a batched pipeline.

pub mod align;
mod batch;
pub mod cpu_conv;
pub mod detection;
pub mod device;
pub mod dlib_weights;
pub mod error;
pub mod fetched;
pub mod image_io;
pub mod landmarks;
pub mod layers;
pub mod pipeline;
pub mod preprocess;
pub mod recognition;
pub mod ssd_mobilenet;
pub mod tfjs;
pub mod tiny_face_detector;

pub use error::{ModelError, Result};
