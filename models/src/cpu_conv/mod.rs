//! CPU convolution kernels, plugged into Candle as custom ops so that tensors stay Candle
//! tensors end to end.
//!
//! - Dense convolutions ([`DenseConv`]): im2col (skipped for 1×1 stride-1 filters) and one
//!   matrix product per image. With AVX-512 and at least [`panel_gemm::min_columns`] output
//!   columns that is the [`panel_gemm`] kernel, which seeds its registers with the bias (and
//!   residual) and applies the activation before its one store, its products in the layer's
//!   [`Precision`] (16-bit by default where the CPU has AVX512-FP16 or AVX512-BF16);
//!   otherwise `gemm` (f32)
//!   into an output pre-filled with the bias (and the residual branch, when there is one), the
//!   activation running over each image's output while it is still in cache. Filters with
//!   few taps (the 3-channel first layers) run on the direct [`stencil`] kernel instead, where
//!   packing the columns would dominate.
//! - Depthwise convolutions ([`DepthwiseConv`]): the direct [`stencil`] kernel per channel
//!   plane, with the bias and activation fused.
//! - Depthwise-separable blocks ([`Separable`]): the two above fused, a band of output rows at
//!   a time, so the depthwise output goes from cache straight into the pointwise gemm.
//! - Max pooling ([`MaxPool`]): windows clipped at the borders, planes in parallel; after a
//!   direct-kernel conv with windows that do not overlap, fused into it ([`PooledConv`]).
//!
//! Weights are packed once, when a layer is built. Both kernels use every Rayon thread: across
//! images when the batch has at least as many images as threads, inside each image otherwise
//! (column tiles for the matrix product, bands of output rows for the direct kernel).

#[cfg(target_arch = "x86_64")]
mod amx;
mod dense;
mod depthwise;
#[cfg(target_arch = "x86_64")]
mod fp16;
#[cfg(target_arch = "x86_64")]
mod panel_gemm;
mod pool;
mod separable;
mod stencil;

pub use dense::{DenseConv, PooledConv};
pub use depthwise::DepthwiseConv;
pub use pool::MaxPool;
pub use separable::Separable;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape};
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
    #[inline]
    pub fn apply(self, xs: &mut [f32]) {
        match self {
            Self::Identity => {}
            Self::Relu => xs.iter_mut().for_each(|v| *v = v.max(0.0)),
            Self::Relu6 => xs.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            Self::Leaky(slope) => xs.iter_mut().for_each(|v| *v = v.max(*v * slope)),
        }
    }

    /// Applies the activation to a vector register.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn apply_512(self, a: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let zero = _mm512_setzero_ps();
        match self {
            Self::Identity => a,
            Self::Relu => _mm512_max_ps(a, zero),
            Self::Relu6 => _mm512_min_ps(_mm512_max_ps(a, zero), _mm512_set1_ps(6.0)),
            Self::Leaky(slope) => _mm512_max_ps(a, _mm512_mul_ps(a, _mm512_set1_ps(slope))),
        }
    }
}

/// Whether tensors on `device` run on these kernels: those on the CPU, unless
/// `ROLLCALL_CPU_KERNELS` is `0` (read once), which runs the networks on the CPU with Candle's
/// own ops, the graph they run as on a GPU (slower; to rule the kernels out, and to test that
/// graph on a machine without a GPU).
pub fn runs_on(device: &Device) -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    device.is_cpu()
        && *ENABLED
            .get_or_init(|| std::env::var("ROLLCALL_CPU_KERNELS").map_or(true, |v| v.trim() != "0"))
}

/// What a dense convolution's products are computed in; the sums are f32 either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 products.
    F32,
    /// 16-bit products where the product runs on [`panel_gemm`]: IEEE half precision (11
    /// significant bits) where the CPU has AVX512-FP16 and no AMX, bfloat16 (8 significant
    /// bits) where it has AMX or AVX512-BF16; f32 elsewhere.
    Half,
}

impl Precision {
    /// [`Precision::Half`] unless `ROLLCALL_CPU_BF16` is `0` (read once): what layers are
    /// built with unless told otherwise.
    pub fn configured() -> Self {
        static CONFIGURED: std::sync::OnceLock<Precision> = std::sync::OnceLock::new();
        *CONFIGURED.get_or_init(|| match std::env::var("ROLLCALL_CPU_BF16") {
            Ok(v) if v.trim() == "0" => Self::F32,
            _ => Self::Half,
        })
    }
}

/// An output buffer that several threads write disjoint parts of.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: whoever shares one writes disjoint samples from each thread.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `samples` as room for a kernel that writes into `MaybeUninit` room ([`stencil::row`],
/// [`stencil::depthwise3`]), to hand it a buffer that is already initialised.
///
/// # Safety
/// Whatever writes through the result writes only initialised samples.
unsafe fn as_room(samples: &mut [f32]) -> &mut [std::mem::MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and nothing uninitialised is written
    // back (the caller's contract).
    unsafe { &mut *(samples as *mut [f32] as *mut [std::mem::MaybeUninit<f32>]) }
}

/// `room` cleared, as samples.
fn cleared(room: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    room.fill(std::mem::MaybeUninit::new(0.0));
    // SAFETY: every sample was just written.
    unsafe { written(room) }
}

/// `room` as the samples a kernel wrote into it.
///
/// # Safety
/// Every sample of `room` is initialised.
unsafe fn written(room: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout and every sample is initialised (the
    // caller's contract).
    unsafe { &mut *(room as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
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

/// A kernel that can add a residual tensor to its output before the activation.
pub trait ResidualKernel {
    /// The op's name in Candle.
    const NAME: &'static str;

    /// Runs the kernel on `x`, adding `residual` (of the output's shape) before the
    /// activation when given.
    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)>;
}

/// A [`ResidualKernel`] as a Candle op: on one tensor (`apply_op1`), or on a tensor and the
/// residual to add (`apply_op2`).
pub struct Op<'a, K>(pub &'a K);

impl<K: ResidualKernel> CustomOp1 for Op<'_, K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.0.forward(input(storage, layout)?, layout, None)
    }
}

impl<K: ResidualKernel> CustomOp2 for Op<'_, K> {
    fn name(&self) -> &'static str {
        K::NAME
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

/// An error unless `residual` (if any) has the output's shape.
fn check_residual(
    residual: Option<(&[f32], &Layout)>,
    out_shape: &Shape,
) -> candle_core::Result<()> {
    match residual {
        Some((_, layout)) if layout.shape() != out_shape => candle_core::bail!(
            "residual shape {:?} differs from the output {out_shape:?}",
            layout.shape()
        ),
        _ => Ok(()),
    }
}

/// The contiguous f32 data of a custom op's input.
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

    /// Writes `src` as samples `left..left + src.len()` of a phased row `dst`; the other
    /// samples of `dst` are left as they are.
    fn write(&self, src: &[f32], left: usize, dst: &mut [f32]) {
        if self.stride == 1 {
            dst[left..left + src.len()].copy_from_slice(src);
            return;
        }
        if self.stride == 2 {
            self.write_pairs(src, left, dst);
            return;
        }
        let s = self.stride;
        for phase in 0..s.min(self.width) {
            // The first sample at or after `left` in this phase.
            let first = left + (phase + s - left % s) % s;
            if first >= left + src.len() {
                continue;
            }
            let start = self.offset(first);
            for (o, v) in dst[start..]
                .iter_mut()
                .zip(src[first - left..].iter().step_by(s))
            {
                *o = *v;
            }
        }
    }

    /// [`Self::write`] for stride 2: the row split into even and odd samples pair by pair,
    /// a loop that vectorises (the strided walk of the general case does not).
    fn write_pairs(&self, mut src: &[f32], mut left: usize, dst: &mut [f32]) {
        let (even, odd) = dst.split_at_mut(self.width.div_ceil(2));
        if left % 2 == 1 {
            if let Some((&v, rest)) = src.split_first() {
                odd[left / 2] = v;
                src = rest;
                left += 1;
            }
        }
        let base = left / 2;
        let pairs = src.chunks_exact(2);
        let tail = pairs.remainder().first().copied();
        let n = pairs.len();
        for ((e, o), pair) in even[base..base + n]
            .iter_mut()
            .zip(&mut odd[base..base + n])
            .zip(pairs)
        {
            (*e, *o) = (pair[0], pair[1]);
        }
        if let Some(v) = tail {
            even[base + n] = v;
        }
    }
}

/// Input planes zero-padded for one convolution, rows phased by its stride, so that every tap
/// of an output row reads one contiguous slice (what the [`stencil`] kernel takes).
struct PaddedPlanes {
    data: Vec<f32>,
    geo: Geometry,
    height: usize,
    phased: Phased,
    /// Where tap `kx` of the first output column lives in a phased row.
    tap_offsets: Vec<usize>,
}

impl PaddedPlanes {
    /// Zeroed room for `planes` planes of `h × w` under `geo`.
    fn new(planes: usize, (h, w): (usize, usize), geo: Geometry) -> Self {
        let (t, b, _, _) = geo.pad;
        Self::with_height(planes, h + t + b, w, geo)
    }

    /// Room for the input rows that `rows` output rows read, of `planes` planes `w` wide.
    fn for_output_rows(planes: usize, rows: usize, w: usize, geo: Geometry) -> Self {
        Self::with_height(planes, (rows - 1) * geo.stride + geo.kernel, w, geo)
    }

    /// Zeroed room for `planes` planes of `height` padded rows, `w` samples wide before padding.
    fn with_height(planes: usize, height: usize, w: usize, geo: Geometry) -> Self {
        let (_, _, l, r) = geo.pad;
        let phased = Phased {
            stride: geo.stride,
            width: w + l + r,
        };
        Self {
            data: vec![0f32; planes * height * phased.width],
            geo,
            height,
            phased,
            tap_offsets: (0..geo.kernel).map(|kx| phased.offset(kx)).collect(),
        }
    }

    /// Copies the planes of `x` (`[planes, h, w]`) into place whole, under the top padding.
    fn fill(&mut self, x: &[f32], relu: bool, parallel: bool) {
        let h = x.len() / self.planes() / (self.phased.width - self.geo.pad.2 - self.geo.pad.3);
        self.fill_rows(x, h, -(self.geo.pad.0 as isize), relu, parallel);
    }

    /// Fills every held row from the planes of `x` (`[planes, h, w]`): held row `j` is input
    /// row `first + j`, zeros where that lies outside the input. Goes through a ReLU when
    /// `relu`, the planes in parallel when `parallel`. Left and right padding samples are never
    /// written, so they stay zero (and a ReLU leaves them zero).
    fn fill_rows(&mut self, x: &[f32], h: usize, first: isize, relu: bool, parallel: bool) {
        let left = self.geo.pad.2;
        let phased = self.phased;
        let (pw, plane) = (phased.width, self.height * phased.width);
        let w = pw - left - self.geo.pad.3;
        let fill = |(dst, src): (&mut [f32], &[f32])| {
            for (j, dst) in dst.chunks_mut(pw).enumerate() {
                let y = first + j as isize;
                if y < 0 || y >= h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let y = y as usize;
                phased.write(&src[y * w..(y + 1) * w], left, dst);
                if relu {
                    Activation::Relu.apply(dst);
                }
            }
        };
        if parallel {
            self.data
                .par_chunks_mut(plane)
                .zip(x.par_chunks(h * w))
                .for_each(fill);
        } else {
            self.data
                .chunks_mut(plane)
                .zip(x.chunks(h * w))
                .for_each(fill);
        }
    }

    /// The taps of a stride-1 plane from output row `oy` on, read as one long row: for each
    /// `(ky, kx)`, the slice starting at the sample that multiplies into output `(oy, 0)`.
    /// Output `(oy + r, ox)` sits at `r * padded_width + ox` of that row.
    fn plane_taps<'a>(&'a self, index: usize, oy: usize, srcs: &mut Vec<&'a [f32]>) {
        debug_assert_eq!(self.geo.stride, 1);
        let (k, pw) = (self.geo.kernel, self.phased.width);
        let plane = &self.data[index * self.height * pw..(index + 1) * self.height * pw];
        srcs.clear();
        for ky in 0..k {
            srcs.extend((0..k).map(|kx| &plane[(oy + ky) * pw + kx..]));
        }
    }

    /// How many planes this holds.
    fn planes(&self) -> usize {
        self.data.len() / (self.height * self.phased.width)
    }

    /// Width of a padded row.
    fn padded_width(&self) -> usize {
        self.phased.width
    }

    /// The source rows of output row `oy` for the planes `planes`: for each plane, each
    /// `(ky, kx)` tap, the slice starting at the sample that tap multiplies into output
    /// column 0 (its next samples feed the next columns).
    fn tap_rows<'a>(
        &'a self,
        planes: std::ops::Range<usize>,
        oy: usize,
        srcs: &mut Vec<&'a [f32]>,
    ) {
        let (k, s, pw) = (self.geo.kernel, self.geo.stride, self.phased.width);
        let plane = self.height * pw;
        srcs.clear();
        for p in planes {
            for ky in 0..k {
                let row = p * plane + (oy * s + ky) * pw;
                srcs.extend(self.tap_offsets.iter().map(|&x| &self.data[row + x..]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phased_rows_hold_every_sample_once_in_phase_order() {
        for (stride, width, left, len) in [
            (1, 7, 2, 4),
            (2, 9, 1, 7),
            (2, 8, 0, 8),
            (2, 10, 2, 5),
            (2, 11, 1, 8),
            (2, 12, 1, 10),
            (2, 1, 0, 1),
            (3, 10, 2, 5),
        ] {
            let phased = Phased { stride, width };
            let src: Vec<f32> = (1..=len).map(|v| v as f32).collect();
            let mut dst = vec![0f32; width];
            phased.write(&src, left, &mut dst);
            for x in 0..width {
                let want = if (left..left + len).contains(&x) {
                    src[x - left]
                } else {
                    0.0
                };
                assert_eq!(dst[phased.offset(x)], want, "stride {stride} sample {x}");
            }
        }
    }
}
