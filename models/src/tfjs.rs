//! Loader for TF.js "weights manifest" files: JSON describing named tensors (shape, dtype,
//! optional uint8/uint16 quantisation) stored back to back in one or more `.bin` shards.
//! The loader dequantises every tensor to `f32` and hands them to Candle as a [`WeightMap`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::cpu_conv::Precision;
use crate::error::{ModelError, Result};

#[derive(Debug, Deserialize)]
struct Group {
    paths: Vec<String>,
    weights: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    shape: Vec<usize>,
    dtype: String,
    quantization: Option<Quantization>,
}

#[derive(Debug, Deserialize)]
struct Quantization {
    dtype: String,
    min: Option<f32>,
    scale: Option<f32>,
}

/// Named `f32` tensors of one network, in the TF.js layout (conv filters are `[kh, kw, in, out]`).
#[derive(Debug, Clone)]
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    /// What the dense convolutions built from these weights run their products in.
    precision: Precision,
}

impl WeightMap {
    /// Reads `<dir>/<model>-weights_manifest.json` and its shards onto `device`.
    pub fn load(dir: &Path, model: &str, device: &Device) -> Result<Self> {
        let manifest_path = dir.join(format!("{model}-weights_manifest.json"));
        let text = read(&manifest_path)?;
        let groups: Vec<Group> =
            serde_json::from_slice(&text).map_err(|e| ModelError::Manifest {
                path: manifest_path.clone(),
                message: e.to_string(),
            })?;
        let mut tensors = HashMap::new();
        for group in groups {
            let mut data = Vec::new();
            for shard in &group.paths {
                data.extend(read(&dir.join(shard))?);
            }
            let mut offset = 0usize;
            for entry in group.weights {
                let (values, used) = decode_entry(&entry, &data[offset.min(data.len())..])
                    .ok_or_else(|| ModelError::Manifest {
                        path: manifest_path.clone(),
                        message: format!("tensor `{}` runs past the end of its shards", entry.name),
                    })?;
                offset += used;
                let tensor = Tensor::from_vec(values, entry.shape.as_slice(), device)?;
                tensors.insert(entry.name, tensor);
            }
        }
        Ok(Self {
            tensors,
            precision: Precision::configured(),
        })
    }

    /// A map of tensors already in the TF.js layout and naming, e.g. converted from another
    /// framework's weight file.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            precision: Precision::configured(),
        }
    }

    /// The same weights, for networks whose dense convolutions run their products in
    /// `precision` (by default [`Precision::configured`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// What the dense convolutions built from these weights run their products in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The tensor `name`, checked to have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
            })?;
        if tensor.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                actual: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.clone())
    }

    /// A conv filter stored as `[kh, kw, in, out]`, returned in Candle's `[out, in, kh, kw]`.
    pub fn conv_filter(
        &self,
        name: &str,
        kh: usize,
        kw: usize,
        cin: usize,
        cout: usize,
    ) -> Result<Tensor> {
        Ok(self
            .get(name, &[kh, kw, cin, cout])?
            .permute((3, 2, 0, 1))?
            .contiguous()?)
    }

    /// A depthwise filter stored as `[kh, kw, c, 1]`, returned as `[c, 1, kh, kw]` (groups = c).
    pub fn depthwise_filter(
        &self,
        name: &str,
        kh: usize,
        kw: usize,
        channels: usize,
    ) -> Result<Tensor> {
        Ok(self
            .get(name, &[kh, kw, channels, 1])?
            .permute((2, 3, 0, 1))?
            .contiguous()?)
    }

    /// A 1-D tensor of length `len` (biases, batch-norm parameters, scales).
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor> {
        self.get(name, &[len])
    }

    /// Number of tensors in the map.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the map holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// Decodes one manifest entry from the front of `bytes`: its values as `f32` and the bytes used.
fn decode_entry(entry: &Entry, bytes: &[u8]) -> Option<(Vec<f32>, usize)> {
    let count: usize = entry.shape.iter().product();
    match &entry.quantization {
        Some(q) => {
            let (min, scale) = (q.min.unwrap_or(0.0), q.scale.unwrap_or(1.0));
            match q.dtype.as_str() {
                "uint8" => {
                    let raw = bytes.get(..count)?;
                    Some((
                        raw.iter().map(|&v| min + scale * f32::from(v)).collect(),
                        count,
                    ))
                }
                "uint16" => {
                    let raw = bytes.get(..count * 2)?;
                    let values = raw
                        .chunks_exact(2)
                        .map(|c| min + scale * f32::from(u16::from_le_bytes([c[0], c[1]])))
                        .collect();
                    Some((values, count * 2))
                }
                "float16" => {
                    let raw = bytes.get(..count * 2)?;
                    let values = raw
                        .chunks_exact(2)
                        .map(|c| half_to_f32(u16::from_le_bytes([c[0], c[1]])))
                        .collect();
                    Some((values, count * 2))
                }
                _ => None,
            }
        }
        None => {
            let raw = bytes.get(..count * 4)?;
            let values = raw
                .chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if entry.dtype == "int32" {
                        i32::from_le_bytes(b) as f32
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect();
            Some((values, count * 4))
        }
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 => {
            if frac == 0.0 {
                sign * f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(json: &str) -> Entry {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn dequantises_uint8_with_min_and_scale() {
        let e = entry(
            r#"{"name":"w","shape":[3],"dtype":"float32","quantization":{"dtype":"uint8","min":-1.0,"scale":0.5}}"#,
        );
        let (v, used) = decode_entry(&e, &[0, 2, 4, 99]).unwrap();
        assert_eq!(v, vec![-1.0, 0.0, 1.0]);
        assert_eq!(used, 3);
    }

    #[test]
    fn reads_plain_float32_and_detects_truncation() {
        let e = entry(r#"{"name":"w","shape":[2],"dtype":"float32"}"#);
        let mut bytes = 1.5f32.to_le_bytes().to_vec();
        bytes.extend((-2.0f32).to_le_bytes());
        assert_eq!(decode_entry(&e, &bytes).unwrap(), (vec![1.5, -2.0], 8));
        assert!(decode_entry(&e, &bytes[..6]).is_none());
    }

    #[test]
    fn half_floats_decode() {
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }
}
