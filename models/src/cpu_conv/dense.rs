//! Dense (ungrouped) convolutions: im2col + `gemm` into an output pre-filled with the bias and
//! residual, or the direct [`stencil`] kernel for filters with few taps per output.

use candle_core::{CpuStorage, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::panel_gemm;
use super::{
    check_residual, nchw, stencil, stencil::single_channel, Activation, Geometry, Packed,
    PaddedPlanes, PaddingFn, Phased, ResidualKernel,
};

/// Filters with at most this many taps per output (`cin * k * k`, not 1×1 stride 1) run on the
/// direct kernel: gemm with a shallow inner dimension spends its time packing.
const DIRECT_MAX_TAPS: usize = 32;

/// Output channels the direct kernel computes together (sharing each source load).
const DIRECT_CHANNELS: usize = 4;

/// A dense (ungrouped) convolution with packed weights, bias and activation.
#[derive(Debug, Clone)]
pub struct DenseConv {
    /// Filter rows of `cin * k * k` in `(channel, ky, kx)` order.
    packed: Packed,
    cin: usize,
    cout: usize,
    /// The filter packed for the AVX-512 matrix product, on the first product wide enough for
    /// it (after any folding); `None` inside when the CPU lacks AVX-512.
    #[cfg(target_arch = "x86_64")]
    panels: std::sync::OnceLock<Option<panel_gemm::Panels>>,
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
            #[cfg(target_arch = "x86_64")]
            panels: std::sync::OnceLock::new(),
        }
    }

    /// The packed filter, bias and activation.
    pub fn packed_mut(&mut self) -> &mut Packed {
        #[cfg(target_arch = "x86_64")]
        {
            self.panels = std::sync::OnceLock::new();
        }
        &mut self.packed
    }

    /// Whether this filter runs on the direct kernel.
    fn direct(&self) -> bool {
        let k = self.packed.kernel;
        (k > 1 || self.packed.stride > 1) && self.cin * k * k <= DIRECT_MAX_TAPS
    }

    /// One image on gemm: `dst = act(W · im2col(x) + bias [+ residual])`.
    fn gemm_image(&self, image: &Image, dst: &mut [f32], parallelism: Parallelism) {
        let Image {
            x,
            input,
            geo,
            output: (oh, ow),
            residual,
        } = *image;
        let spatial = oh * ow;
        let cols_buf;
        let cols: &[f32] =
            if self.packed.kernel == 1 && self.packed.stride == 1 && geo.pad == (0, 0, 0, 0) {
                x
            } else {
                cols_buf = im2col(x, self.cin, input, geo, (oh, ow), parallelism);
                &cols_buf
            };
        // SAFETY: `dst` holds the `cout` rows of `spatial` outputs, and nothing else touches it.
        unsafe {
            self.gemm_columns(
                cols,
                (dst.as_mut_ptr(), spatial, spatial),
                residual,
                parallelism,
            );
        }
    }

    /// Whether this is a 1×1 stride-1 convolution without padding on `cin` channels: a
    /// plain matrix product over the channels (what a depthwise-separable block ends with).
    pub(super) fn is_pointwise_on(&self, cin: usize) -> bool {
        self.cin == cin
            && self.packed.kernel == 1
            && self.packed.stride == 1
            && (self.packed.padding)(1, 1, 1, 1) == (0, 0, 0, 0)
    }

    /// Output channels.
    pub(super) fn cout(&self) -> usize {
        self.cout
    }

    /// `dst = act(W · cols + bias [+ residual])` for `n` output columns: `cols` is the
    /// `cin·k·k × n` column matrix, `dst` (`(pointer, n, row stride)`) the `cout` rows of `n`
    /// outputs spaced `row stride` apart, and `residual` laid out like `dst` from its start.
    /// Runs on [`panel_gemm`] where the CPU has AVX-512 and there are at least
    /// [`panel_gemm::MIN_COLUMNS`] columns, on `gemm` otherwise.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `cout` rows of `n` samples spaced
    /// `row stride` apart, and no other thread may touch those samples during the call.
    pub(super) unsafe fn gemm_columns(
        &self,
        cols: &[f32],
        (dst, n, stride): (*mut f32, usize, usize),
        residual: Option<&[f32]>,
        parallelism: Parallelism,
    ) {
        // Packed only for a layer that gets this wide, so small layers hold one copy.
        #[cfg(target_arch = "x86_64")]
        if let Some(panels) = (n >= panel_gemm::MIN_COLUMNS)
            .then(|| {
                self.panels
                    .get_or_init(|| panel_gemm::Panels::new(&self.packed.weight, &self.packed.bias))
            })
            .and_then(Option::as_ref)
        {
            // SAFETY: the caller's contract is the one `Panels::run` asks for.
            unsafe {
                panels.run(
                    cols,
                    (dst, n, stride),
                    residual,
                    self.packed.activation,
                    parallelism,
                )
            };
            return;
        }
        let (m, depth) = (self.cout, self.packed.weight.len() / self.cout);
        debug_assert!(cols.len() >= depth * n);
        // SAFETY: row `c` of `dst` is valid and exclusively ours (the caller's contract).
        let row = |c: usize| unsafe { std::slice::from_raw_parts_mut(dst.add(c * stride), n) };
        for c in 0..m {
            let row = row(c);
            match residual {
                Some(r) => row
                    .iter_mut()
                    .zip(&r[c * stride..c * stride + n])
                    .for_each(|(d, r)| *d = r + self.packed.bias[c]),
                None => row.fill(self.packed.bias[c]),
            }
        }
        // SAFETY: `dst` is `m × n` at row stride `stride` (the caller's contract), `weight`
        // is `m × depth` and `cols` is `depth × n`, both row-major and contiguous.
        unsafe {
            gemm::gemm(
                m,
                n,
                depth,
                dst,
                1,
                stride as isize,
                true,
                self.packed.weight.as_ptr(),
                1,
                depth as isize,
                cols.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        (0..m).for_each(|c| self.packed.activation.apply(row(c)));
    }

    /// One image on the direct kernel, [`DIRECT_CHANNELS`] output channels at a time (in
    /// parallel when `parallel`): `dst = act(conv(x) + bias [+ residual])`.
    fn direct_image(&self, image: &Image, dst: &mut [f32], parallel: bool) {
        let (h, w) = image.input;
        let (oh, ow) = image.output;
        let mut padded = PaddedPlanes::new(self.cin, (h, w), image.geo);
        padded.fill(image.x, false, false);
        let (plane, taps) = (oh * ow, self.cin * self.packed.kernel * self.packed.kernel);
        // The residual has to be added before the activation, after the kernel.
        let activation = match image.residual {
            Some(_) => Activation::Identity,
            None => self.packed.activation,
        };
        let block = |(b, out): (usize, &mut [f32])| {
            let c0 = b * DIRECT_CHANNELS;
            let mut srcs = Vec::with_capacity(taps);
            let weight = |c: usize, t: usize| self.packed.weight[c * taps + t];
            if out.len() == DIRECT_CHANNELS * plane {
                let weights: Vec<[f32; DIRECT_CHANNELS]> = (0..taps)
                    .map(|t| std::array::from_fn(|c| weight(c0 + c, t)))
                    .collect();
                let bias = std::array::from_fn(|c| self.packed.bias[c0 + c]);
                for oy in 0..oh {
                    padded.tap_rows(0..self.cin, oy, &mut srcs);
                    stencil::row::<DIRECT_CHANNELS, 16>(
                        &srcs,
                        &weights,
                        bias,
                        activation,
                        (&mut out[oy * ow..], plane, ow),
                    );
                }
            } else {
                for (c, out) in (c0..).zip(out.chunks_mut(plane)) {
                    let weights = single_channel(&self.packed.weight[c * taps..(c + 1) * taps]);
                    for (oy, row) in out.chunks_mut(ow).enumerate() {
                        padded.tap_rows(0..self.cin, oy, &mut srcs);
                        stencil::row::<1, 32>(
                            &srcs,
                            &weights,
                            [self.packed.bias[c]],
                            activation,
                            (row, 0, ow),
                        );
                    }
                }
            }
        };
        if parallel {
            dst.par_chunks_mut(DIRECT_CHANNELS * plane)
                .enumerate()
                .for_each(block);
        } else {
            dst.chunks_mut(DIRECT_CHANNELS * plane)
                .enumerate()
                .for_each(block);
        }
        if let Some(residual) = image.residual {
            dst.iter_mut().zip(residual).for_each(|(d, r)| *d += r);
            self.packed.activation.apply(dst);
        }
    }
}

/// One image of a batch: its input `[cin, h, w]`, the geometry and output size, and the
/// residual `[cout, oh, ow]` to add, if any.
struct Image<'a> {
    x: &'a [f32],
    input: (usize, usize),
    geo: Geometry,
    output: (usize, usize),
    residual: Option<&'a [f32]>,
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
            phased.write(src, 0, dst);
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

impl ResidualKernel for DenseConv {
    const NAME: &'static str = "rollcall-dense-conv";

    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(x_layout, self.cin)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        let out_shape = Shape::from((n, self.cout, oh, ow));
        check_residual(residual, &out_shape)?;
        let (image_in, image_out) = (self.cin * h * w, self.cout * oh * ow);
        let mut out = vec![0f32; n * image_out];
        let threads = rayon::current_num_threads();
        let run = |b: usize, dst: &mut [f32], parallelism: Parallelism| {
            let image = Image {
                x: &x[b * image_in..(b + 1) * image_in],
                input: (h, w),
                geo,
                output: (oh, ow),
                residual: residual.map(|(r, _)| &r[b * image_out..(b + 1) * image_out]),
            };
            if self.direct() {
                self.direct_image(&image, dst, !matches!(parallelism, Parallelism::None));
            } else {
                self.gemm_image(&image, dst, parallelism);
            }
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
}
