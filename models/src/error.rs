//! Typed errors of the models crate.

use std::path::PathBuf;

/// Everything that can go wrong while loading weights, decoding images or running a network.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A weight file or manifest could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A TF.js weights manifest is not valid JSON of the expected shape.
    #[error("invalid weights manifest {path}: {message}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A dlib weight file ends before the network it serialises does.
    #[error("dlib weight file {path} is truncated: its data ends at byte {offset}")]
    TruncatedWeights {
        /// The weight file.
        path: PathBuf,
        /// Byte offset at which more data was needed.
        offset: usize,
    },
    /// A file is not dlib's serialisation of the network being loaded.
    #[error("{path} is not dlib's face recognition ResNet (at byte {offset}): {message}")]
    ForeignWeights {
        /// The weight file.
        path: PathBuf,
        /// Byte offset of the first unexpected value.
        offset: usize,
        /// What was expected there.
        message: String,
    },
    /// A tensor the network needs is not in the weight file.
    #[error("tensor `{name}` is missing from the weights")]
    MissingTensor {
        /// TF.js name of the tensor.
        name: String,
    },
    /// A tensor is present but has another shape than the network expects.
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// TF.js name of the tensor.
        name: String,
        /// The shape the network needs.
        expected: Vec<usize>,
        /// The shape found in the weights.
        actual: Vec<usize>,
    },
    /// The image bytes are not a supported format (JPEG, PNG, WebP).
    #[error("unsupported image format")]
    UnsupportedFormat,
    /// The image is larger than the configured pixel limit.
    #[error("image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
    /// The image is truncated or corrupt.
    #[error("cannot decode image: {0}")]
    Decode(String),
    /// The caller passed an argument the network cannot process (empty image, face box outside
    /// the image, input size not a multiple of 32, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested device cannot be opened.
    #[error("device {device}: {message}")]
    Device {
        /// The device as requested (`cuda:0`, ...).
        device: String,
        /// Why it cannot be used.
        message: String,
    },
    /// An error raised inside Candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the models crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
