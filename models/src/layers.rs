//! Building blocks shared by the networks: convolutions with TensorFlow's padding rules.
//! Tensors are NCHW; filters are converted from TF.js layout once, at load time.

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::tfjs::WeightMap;

/// TensorFlow's padding modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Output size `ceil(in / stride)`; the extra pixel of an odd total goes bottom/right.
    Same,
    /// No padding.
    Valid,
}

/// Padding `(before, after)` that TF's `same` mode applies along one axis.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// Pads an NCHW tensor spatially as TF's `same` mode would for this kernel and stride.
pub fn pad_same(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_padding(h, kernel, stride);
    let (left, right) = same_padding(w, kernel, stride);
    let x = if top + bottom > 0 {
        x.pad_with_zeros(2, top, bottom)?
    } else {
        x.clone()
    };
    Ok(if left + right > 0 {
        x.pad_with_zeros(3, left, right)?
    } else {
        x
    })
}

/// A 2-D convolution (optionally grouped) with bias and TF padding semantics.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Filter in `[out, in / groups, kh, kw]`.
    pub weight: Tensor,
    /// Per-output-channel bias.
    pub bias: Option<Tensor>,
    /// Stride along both axes.
    pub stride: usize,
    /// Channel groups (the channel count for a depthwise conv).
    pub groups: usize,
    /// Padding mode.
    pub padding: Padding,
}

impl Conv {
    /// A dense conv whose filter is `name` (`[k, k, cin, cout]`) and bias `bias_name`.
    pub fn load(
        w: &WeightMap,
        name: &str,
        bias_name: Option<&str>,
        (k, cin, cout): (usize, usize, usize),
        stride: usize,
        padding: Padding,
    ) -> Result<Self> {
        let weight = w.conv_filter(name, k, k, cin, cout)?;
        let bias = bias_name.map(|b| w.vector(b, cout)).transpose()?;
        Ok(Self {
            weight,
            bias,
            stride,
            groups: 1,
            padding,
        })
    }

    /// A depthwise conv whose filter is `name` (`[k, k, channels, 1]`), without bias.
    pub fn load_depthwise(
        w: &WeightMap,
        name: &str,
        k: usize,
        channels: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = w.depthwise_filter(name, k, k, channels)?;
        Ok(Self {
            weight,
            bias: None,
            stride,
            groups: channels,
            padding: Padding::Same,
        })
    }

    /// Kernel size.
    fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }

    /// Forward pass returning a [`Result`] with the crate's error type.
    pub fn run(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.padding {
            Padding::Same => pad_same(x, self.kernel(), self.stride)?,
            Padding::Valid => x.clone(),
        };
        let depthwise = self.groups > 1 && self.weight.dim(0)? == self.groups;
        let (cout, cin, kh, kw) = self.weight.dims4()?;
        let y = if depthwise && x.device().is_cpu() {
            depthwise_conv2d_cpu(&x, &self.weight, self.stride)?
        } else if (kh, kw, self.stride, self.groups) == (1, 1, 1, 1) {
            // A 1x1 conv is a matmul; Candle's im2col path copies the input first.
            let (n, _, h, w) = x.dims4()?;
            self.weight
                .reshape((cout, cin))?
                .broadcast_matmul(&x.reshape((n, cin, h * w))?)?
                .reshape((n, cout, h, w))?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
        };
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x).map_err(candle_core::Error::wrap)
    }
}

/// A depthwise convolution (no padding) of an NCHW `f32` CPU tensor with a `[c, 1, kh, kw]`
/// filter, by direct loops over the channel planes on all cores. Candle's grouped `conv2d`
/// runs one convolution per group, which is very slow for hundreds of channels.
fn depthwise_conv2d_cpu(x: &Tensor, weight: &Tensor, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    let (oh, ow) = ((h - kh) / stride + 1, (w - kw) / stride + 1);
    let xs: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let ws: Vec<f32> = weight.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; n * c * oh * ow];
    let plane = |p: usize, dst: &mut [f32]| {
        let src = &xs[p * h * w..(p + 1) * h * w];
        let taps = &ws[(p % c) * kh * kw..(p % c + 1) * kh * kw];
        for ky in 0..kh {
            for kx in 0..kw {
                let wv = taps[ky * kw + kx];
                for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                    let line = &src[(oy * stride + ky) * w + kx..];
                    for (ox, o) in row.iter_mut().enumerate() {
                        *o += wv * line[ox * stride];
                    }
                }
            }
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let planes_per_thread = (n * c).div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk, dst) in out.chunks_mut(planes_per_thread * oh * ow).enumerate() {
            let plane = &plane;
            scope.spawn(move || {
                for (i, d) in dst.chunks_exact_mut(oh * ow).enumerate() {
                    plane(chunk * planes_per_thread + i, d);
                }
            });
        }
    });
    Ok(Tensor::from_vec(out, (n, c, oh, ow), x.device())?)
}

/// Adds a per-channel vector to an NCHW tensor.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_add(&bias.reshape((1, (), 1, 1))?)?)
}

/// Multiplies an NCHW tensor by a per-channel vector.
pub fn mul_channel(x: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&scale.reshape((1, (), 1, 1))?)?)
}

/// TF's `maxPool` with a square window; `same` padding pads with -inf, as TF does.
pub fn max_pool(x: &Tensor, kernel: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    let x = match padding {
        Padding::Valid => x.clone(),
        Padding::Same => {
            let (_, _, h, w) = x.dims4()?;
            let (top, bottom) = same_padding(h, kernel, stride);
            let (left, right) = same_padding(w, kernel, stride);
            let neg = f32::MIN;
            let x = pad_const(x, 2, top, bottom, neg)?;
            pad_const(&x, 3, left, right, neg)?
        }
    };
    Ok(x.max_pool2d_with_stride(kernel, stride)?)
}

fn pad_const(x: &Tensor, dim: usize, before: usize, after: usize, value: f32) -> Result<Tensor> {
    if before + after == 0 {
        return Ok(x.clone());
    }
    let mut parts = Vec::with_capacity(3);
    let mut shape = x.dims().to_vec();
    if before > 0 {
        shape[dim] = before;
        parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    parts.push(x.clone());
    if after > 0 {
        shape[dim] = after;
        parts.push(Tensor::full(value, shape.as_slice(), x.device())?.to_dtype(x.dtype())?);
    }
    Ok(Tensor::cat(&parts, dim)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(512, 3, 2), (0, 1));
        assert_eq!(same_padding(511, 3, 2), (1, 1));
        assert_eq!(same_padding(150, 7, 2), (2, 3));
        assert_eq!(same_padding(16, 3, 1), (1, 1));
        assert_eq!(same_padding(16, 1, 1), (0, 0));
    }

    #[test]
    fn depthwise_fast_path_equals_grouped_conv() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 9, 8), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (5, 1, 3, 3), &dev).unwrap();
        for stride in [1, 2] {
            let fast = depthwise_conv2d_cpu(&x, &wt, stride).unwrap();
            let slow = x.conv2d(&wt, 0, stride, 1, 5).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            let diff: f32 = (fast - slow)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(diff < 1e-5, "stride {stride}: {diff}");
        }
    }
}
