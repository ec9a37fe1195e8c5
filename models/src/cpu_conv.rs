//! CPU convolution kernels, plugged into Candle as custom ops so that tensors stay Candle
//! tensors end to end.
//!
//! - Dense convolutions: im2col (skipped for 1×1 stride-1 filters) and one `gemm` per image
//!   into an output pre-filled with the bias (and the residual branch, when there is one), so
//!   bias and residual cost no extra pass; the activation runs over each image's output while it
//!   is still in cache.
//! - Depthwise convolutions: a direct kernel per channel plane over a zero-padded copy of the
//!   plane, with the bias and activation fused.
//!
//! Weights are packed once, when a layer is built. Both kernels use every Rayon thread: across
//! images when the batch has at least as many images as threads, inside each image otherwise
//! (gemm's own threading, channel planes for depthwise).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

/// Pointwise non-linearity applied after the bias (and the residual, if any).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// No non-linearity.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
    /// `x` where positive, `slope * x` elsewhere.
    Leaky(f32),
}

impl Activation {
    /// Applies the activation in place.
    pub fn apply(self, xs: &mut [f32]) {
        match self {
            Self::Identity => {}
            Self::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            Self::Relu6 => xs.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            Self::Leaky(slope) => xs.iter_mut().for_each(|v| *v = v.max(*v * slope)),
        }
    }
}

/// Spatial geometry of one convolution: square kernel, stride and explicit zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Kernel side.
    pub kernel: usize,
    /// Stride along both axes.
    pub stride: usize,
    /// Zero padding `(top, bottom, left, right)`.
    pub pad: (usize, usize, usize, usize),
}

impl Geometry {
    /// Output `(height, width)` for an input of `h × w`; `None` if the kernel does not fit.
    pub fn output(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let (t, b, l, r) = self.pad;
        let (ph, pw) = (h + t + b, w + l + r);
        (ph >= self.kernel && pw >= self.kernel).then(|| {
            (
                (ph - self.kernel) / self.stride + 1,
                (pw - self.kernel) / self.stride + 1,
            )
        })
    }
}

/// Chooses the padding for an input of `h × w` (TF's `same` depends on the input size).
pub type PaddingFn = fn(usize, usize, usize, usize) -> (usize, usize, usize, usize);

/// What both kernels hold: the filter packed as one row per output channel, the bias, the
/// geometry and the fused activation.
#[derive(Debug, Clone)]
pub struct Packed {
    weight: Vec<f32>,
    bias: Vec<f32>,
    kernel: usize,
    stride: usize,
    padding: PaddingFn,
    /// Applied after the bias (and residual).
    pub activation: Activation,
}

impl Packed {
    /// `weight` holds `channels` rows; a missing bias is zero.
    fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        channels: usize,
        kernel: usize,
        stride: usize,
        padding: PaddingFn,
    ) -> Self {
        Self {
            weight,
            bias: bias.unwrap_or_else(|| vec![0.0; channels]),
            kernel,
            stride,
            padding,
            activation: Activation::Identity,
        }
    }

    /// Folds a per-output-channel affine layer `y * scale + shift` (batch norm, dlib's
    /// `affine`) into the filter and bias.
    pub fn fold_affine(&mut self, scale: &[f32], shift: &[f32]) {
        let row = self.weight.len() / self.bias.len();
        for (c, (b, rows)) in self
            .bias
            .iter_mut()
            .zip(self.weight.chunks_mut(row))
            .enumerate()
        {
            rows.iter_mut().for_each(|w| *w *= scale[c]);
            *b = *b * scale[c] + shift[c];
        }
    }

    /// The geometry for an `h × w` input, or an error if the kernel does not fit.
    fn geometry(&self, h: usize, w: usize) -> candle_core::Result<(Geometry, (usize, usize))> {
        let geo = Geometry {
            kernel: self.kernel,
            stride: self.stride,
            pad: (self.padding)(h, w, self.kernel, self.stride),
        };
        match geo.output(h, w) {
            Some(out) => Ok((geo, out)),
            None => candle_core::bail!(
                "{h}x{w} input is smaller than the {0}x{0} kernel",
                self.kernel
            ),
        }
    }
}

/// A dense (ungrouped) convolution with packed weights, bias and activation.
#[derive(Debug, Clone)]
pub struct DenseConv {
    /// Filter rows of `cin * k * k` in `(channel, ky, kx)` order.
    packed: Packed,
    cin: usize,
    cout: usize,
}

/// A depthwise convolution (one filter per channel) with bias and activation.
#[derive(Debug, Clone)]
pub struct DepthwiseConv {
    /// Filter rows of `k * k`.
    packed: Packed,
    channels: usize,
}

/// The contiguous f32 data and dims of a custom op's input.
fn input<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("the CPU convolution kernels take f32 tensors");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("the CPU convolution kernels take contiguous tensors"),
    }
}

/// `[n, c, h, w]` of a layout, checking the channel count.
fn nchw(layout: &Layout, channels: usize) -> candle_core::Result<(usize, usize, usize)> {
    let (n, c, h, w) = layout.shape().dims4()?;
    if c != channels {
        candle_core::bail!("convolution expects {channels} input channels, got {c}");
    }
    Ok((n, h, w))
}

impl DenseConv {
    /// Packs a `[cout, cin, k, k]` filter (as its contiguous data) and an optional bias.
    pub fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        (cout, cin, kernel): (usize, usize, usize),
        stride: usize,
        padding: PaddingFn,
    ) -> Self {
        debug_assert_eq!(weight.len(), cout * cin * kernel * kernel);
        Self {
            packed: Packed::new(weight, bias, cout, kernel, stride, padding),
            cin,
            cout,
        }
    }

    /// The packed filter, bias and activation.
    pub fn packed_mut(&mut self) -> &mut Packed {
        &mut self.packed
    }

    /// Runs the convolution on `x` (`[n, cin, h, w]`), adding `residual` (`[n, cout, oh, ow]`)
    /// before the activation when given.
    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(x_layout, self.cin)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        let out_shape = Shape::from((n, self.cout, oh, ow));
        if let Some((_, layout)) = residual {
            if layout.shape() != &out_shape {
                candle_core::bail!(
                    "residual shape {:?} differs from the output {out_shape:?}",
                    layout.shape()
                );
            }
        }
        let (image_in, image_out) = (self.cin * h * w, self.cout * oh * ow);
        let mut out = vec![0f32; n * image_out];
        let threads = rayon::current_num_threads();
        let run = |b: usize, dst: &mut [f32], parallelism: Parallelism| {
            let residual = residual.map(|(r, _)| &r[b * image_out..(b + 1) * image_out]);
            self.image(
                &x[b * image_in..(b + 1) * image_in],
                (h, w),
                geo,
                (oh, ow),
                residual,
                dst,
                parallelism,
            );
        };
        if n >= threads && threads > 1 {
            out.par_chunks_mut(image_out)
                .enumerate()
                .for_each(|(b, dst)| run(b, dst, Parallelism::None));
        } else {
            let parallelism = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            for (b, dst) in out.chunks_mut(image_out).enumerate() {
                run(b, dst, parallelism);
            }
        }
        Ok((CpuStorage::F32(out), out_shape))
    }

    /// One image: `dst = act(W · im2col(x) + bias [+ residual])`.
    #[allow(clippy::too_many_arguments)]
    fn image(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        geo: Geometry,
        (oh, ow): (usize, usize),
        residual: Option<&[f32]>,
        dst: &mut [f32],
        parallelism: Parallelism,
    ) {
        let (m, spatial, depth) = (
            self.cout,
            oh * ow,
            self.cin * self.packed.kernel * self.packed.kernel,
        );
        let direct = self.packed.kernel == 1 && self.packed.stride == 1 && geo.pad == (0, 0, 0, 0);
        let cols_buf;
        let cols: &[f32] = if direct {
            x
        } else {
            cols_buf = im2col(x, self.cin, (h, w), geo, (oh, ow), parallelism);
            &cols_buf
        };
        for (c, row) in dst.chunks_mut(spatial).enumerate() {
            match residual {
                Some(r) => row
                    .iter_mut()
                    .zip(&r[c * spatial..(c + 1) * spatial])
                    .for_each(|(d, r)| *d = r + self.packed.bias[c]),
                None => row.fill(self.packed.bias[c]),
            }
        }
        // SAFETY: `dst` is `m × spatial`, `weight` is `m × depth` and `cols` is
        // `depth × spatial`, all row-major and contiguous, as the strides passed say.
        unsafe {
            gemm::gemm(
                m,
                spatial,
                depth,
                dst.as_mut_ptr(),
                1,
                spatial as isize,
                true,
                self.packed.weight.as_ptr(),
                1,
                depth as isize,
                cols.as_ptr(),
                1,
                spatial as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        self.packed.activation.apply(dst);
    }
}

/// Rows rearranged by phase for a stride: the samples `x ≡ p (mod stride)` of a row are stored
/// contiguously, phase after phase, so a strided read of a row becomes a contiguous slice.
#[derive(Debug, Clone, Copy)]
struct Phased {
    stride: usize,
    width: usize,
}

impl Phased {
    /// Where sample `x` of a row lives in its phased row.
    fn offset(&self, x: usize) -> usize {
        let phase = x % self.stride;
        (0..phase)
            .map(|q| (self.width - q).div_ceil(self.stride))
            .sum::<usize>()
            + x / self.stride
    }

    /// Writes `src` (one row of `width`) phased into `dst`.
    fn write(&self, src: &[f32], dst: &mut [f32]) {
        if self.stride == 1 {
            dst.copy_from_slice(src);
            return;
        }
        let mut out = dst.iter_mut();
        for phase in 0..self.stride.min(self.width) {
            // The source first: `zip` stops on it without taking a slot of `out`.
            for (v, o) in src[phase..].iter().step_by(self.stride).zip(&mut out) {
                *o = *v;
            }
        }
    }
}

/// The columns of one `[c, h, w]` image for a convolution: `[c * k * k, oh * ow]`, row
/// `(channel, ky, kx)` holding the input pixel each output position multiplies by that tap.
fn im2col(
    x: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    geo: Geometry,
    (oh, ow): (usize, usize),
    parallelism: Parallelism,
) -> Vec<f32> {
    let (k, stride) = (geo.kernel, geo.stride);
    let (top, _, left, _) = geo.pad;
    let spatial = oh * ow;
    let phased = Phased { stride, width: w };
    let split;
    let x = if stride == 1 {
        x
    } else {
        let mut rows = vec![0f32; x.len()];
        for (src, dst) in x.chunks(w).zip(rows.chunks_mut(w)) {
            phased.write(src, dst);
        }
        split = rows;
        &split
    };
    let mut cols = vec![0f32; channels * k * k * spatial];
    let fill = |(r, row): (usize, &mut [f32])| {
        let (c, ky, kx) = (r / (k * k), r / k % k, r % k);
        let plane = &x[c * h * w..(c + 1) * h * w];
        // Output columns whose input column `ox * stride + kx - left` lies inside the image.
        let first = left.saturating_sub(kx).div_ceil(stride);
        let end = ((w + left).saturating_sub(kx)).div_ceil(stride).min(ow);
        if first >= end {
            return;
        }
        let x0 = phased.offset(first * stride + kx - left);
        for oy in 0..oh {
            let iy = oy * stride + ky;
            if iy < top || iy - top >= h {
                continue;
            }
            let src = &plane[(iy - top) * w..(iy - top + 1) * w];
            row[oy * ow + first..oy * ow + end].copy_from_slice(&src[x0..x0 + end - first]);
        }
    };
    if matches!(parallelism, Parallelism::None) {
        cols.chunks_mut(spatial).enumerate().for_each(fill);
    } else {
        cols.par_chunks_mut(spatial).enumerate().for_each(fill);
    }
    cols
}

impl DepthwiseConv {
    /// Packs a `[channels, 1, k, k]` filter (as its contiguous data) and an optional bias.
    pub fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        (channels, kernel): (usize, usize),
        stride: usize,
        padding: PaddingFn,
    ) -> Self {
        debug_assert_eq!(weight.len(), channels * kernel * kernel);
        Self {
            packed: Packed::new(weight, bias, channels, kernel, stride, padding),
            channels,
        }
    }

    /// The packed filter, bias and activation.
    pub fn packed_mut(&mut self) -> &mut Packed {
        &mut self.packed
    }

    fn forward(&self, x: &[f32], layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(layout, self.channels)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        let (t, b, l, r) = geo.pad;
        let (ph, pw) = (h + t + b, w + l + r);
        let phased = Phased {
            stride: self.packed.stride,
            width: pw,
        };
        let mut out = vec![0f32; n * self.channels * oh * ow];
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || (vec![0f32; ph * pw], vec![0f32; pw]),
            |(padded, row_buf), (plane_idx, dst)| {
                let c = plane_idx % self.channels;
                let src = &x[plane_idx * h * w..(plane_idx + 1) * h * w];
                for (y, row) in src.chunks(w).enumerate() {
                    row_buf[l..l + w].copy_from_slice(row);
                    phased.write(row_buf, &mut padded[(y + t) * pw..(y + t + 1) * pw]);
                }
                self.plane(padded, phased, c, ow, dst);
            },
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.channels, oh, ow)),
        ))
    }

    /// One output plane (rows of `ow`) from its zero-padded, phased input plane.
    fn plane(&self, padded: &[f32], phased: Phased, c: usize, ow: usize, dst: &mut [f32]) {
        let (k, s, pw) = (self.packed.kernel, self.packed.stride, phased.width);
        let taps = &self.packed.weight[c * k * k..(c + 1) * k * k];
        for (oy, out) in dst.chunks_mut(ow).enumerate() {
            out.fill(self.packed.bias[c]);
            for ky in 0..k {
                let src = &padded[(oy * s + ky) * pw..(oy * s + ky + 1) * pw];
                for kx in 0..k {
                    let tap = taps[ky * k + kx];
                    let x0 = phased.offset(kx);
                    out.iter_mut()
                        .zip(&src[x0..x0 + ow])
                        .for_each(|(o, v)| *o += tap * v);
                }
            }
        }
        self.packed.activation.apply(dst);
    }
}

impl CustomOp1 for DenseConv {
    fn name(&self) -> &'static str {
        "rollcall-dense-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(input(storage, layout)?, layout, None)
    }
}

/// A dense convolution whose output gets a residual tensor added before the activation:
/// `act(conv(x) + bias + residual)`.
pub struct WithResidual<'a>(pub &'a DenseConv);

impl CustomOp2 for WithResidual<'_> {
    fn name(&self) -> &'static str {
        "rollcall-dense-conv-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let residual = input(residual, residual_layout)?;
        self.0.forward(
            input(x, x_layout)?,
            x_layout,
            Some((residual, residual_layout)),
        )
    }
}

impl CustomOp1 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "rollcall-depthwise-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.forward(input(storage, layout)?, layout)
    }
}
