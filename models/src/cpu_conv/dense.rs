//! Dense (ungrouped) convolutions: im2col + `gemm` into an output pre-filled with the bias and
//! residual, or the direct [`stencil`] kernel for filters with few taps per output.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::panel_gemm;
use super::{
    as_room, check_residual, cleared, input, nchw, stencil, stencil::single_channel, written,
    Activation, Geometry, MaxPool, Packed, PaddedPlanes, PaddingFn, Phased, Precision,
    ResidualKernel, SharedOut,
};

/// Filters with at most this many taps per output (`cin * k * k`, not 1×1 stride 1) run on the
/// direct kernel: gemm with a shallow inner dimension spends its time packing.
const DIRECT_MAX_TAPS: usize = 32;

/// Output channels the direct kernel computes together (sharing each source load).
const DIRECT_CHANNELS: usize = 4;

/// Output rows (pooled rows when pooled) per unit of work of the direct kernel: the unit
/// pads and phases the input rows they read itself, into a buffer that stays in L2 (SSD's
/// first layer: 3 planes × 17 rows × 514 samples), re-reading the rows shared with the next
/// unit (1 of 17 there).
const DIRECT_BAND: usize = 8;

/// A dense (ungrouped) convolution with packed weights, bias and activation.
#[derive(Debug, Clone)]
pub struct DenseConv {
    /// Filter rows of `cin * k * k` in `(channel, ky, kx)` order.
    packed: Packed,
    cin: usize,
    cout: usize,
    /// What the matrix products run in.
    precision: Precision,
    /// The filter packed for the AVX-512 matrix product, on the first product wide enough for
    /// it (after any folding); `None` inside when the CPU lacks AVX-512. Boxed: most layers
    /// never pack one, and every conv stays small enough to hold inline.
    #[cfg(target_arch = "x86_64")]
    panels: std::sync::OnceLock<Option<Box<panel_gemm::Panels>>>,
    /// The filter as the direct kernel takes it, on the first direct run (after any folding).
    direct_filters: std::sync::OnceLock<Vec<DirectFilter>>,
}

impl DenseConv {
    /// Packs a `[cout, cin, k, k]` filter (as its contiguous data) and an optional bias, for
    /// products in the [configured](Precision::configured) precision.
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
            precision: Precision::configured(),
            #[cfg(target_arch = "x86_64")]
            panels: std::sync::OnceLock::new(),
            direct_filters: std::sync::OnceLock::new(),
        }
    }

    /// Runs the matrix products in `precision` from now on.
    pub fn set_precision(&mut self, precision: Precision) {
        self.packed_mut(); // drops panels packed for the old precision
        self.precision = precision;
    }

    /// The packed filter, bias and activation (dropping what was packed from them).
    pub fn packed_mut(&mut self) -> &mut Packed {
        #[cfg(target_arch = "x86_64")]
        {
            self.panels = std::sync::OnceLock::new();
        }
        self.direct_filters = std::sync::OnceLock::new();
        &mut self.packed
    }

    /// Whether this filter runs on the direct kernel.
    fn direct(&self) -> bool {
        let k = self.packed.kernel;
        (k > 1 || self.packed.stride > 1) && self.cin * k * k <= DIRECT_MAX_TAPS
    }

    /// The filter as the direct kernel takes it, block by block of [`DIRECT_CHANNELS`]
    /// output channels (built once).
    fn direct_filters(&self) -> &[DirectFilter] {
        self.direct_filters.get_or_init(|| {
            let taps = self.cin * self.packed.kernel * self.packed.kernel;
            let weight = |c: usize, t: usize| self.packed.weight[c * taps + t];
            (0..self.cout)
                .step_by(DIRECT_CHANNELS)
                .map(|c0| {
                    if c0 + DIRECT_CHANNELS <= self.cout {
                        let weights = (0..taps)
                            .map(|t| std::array::from_fn(|c| weight(c0 + c, t)))
                            .collect();
                        DirectFilter::Block(
                            weights,
                            std::array::from_fn(|c| self.packed.bias[c0 + c]),
                        )
                    } else {
                        let singles = (c0..self.cout)
                            .map(|c| single_channel(&self.packed.weight[c * taps..(c + 1) * taps]))
                            .collect();
                        DirectFilter::Singles(singles, self.packed.bias[c0..].to_vec())
                    }
                })
                .collect()
        })
    }

    /// One image on gemm: `dst = act(W · im2col(x) + bias [+ residual])`.
    ///
    /// # Safety
    /// `dst` must be valid for writes of the image's `cout × oh × ow` outputs (which need not
    /// be initialised: every one is written), and no other thread may touch them.
    unsafe fn gemm_image(&self, image: &Image, dst: *mut f32, parallelism: Parallelism) {
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
        // SAFETY: `dst` holds the `cout` rows of `spatial` outputs, and nothing else touches it
        // (the caller's contract).
        unsafe {
            self.gemm_columns(cols, (dst, spatial, spatial), residual, parallelism);
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
    /// Runs on [`panel_gemm`] (in the layer's precision) where the CPU has AVX-512 and there
    /// are at least [`panel_gemm::min_columns`] columns, on `gemm` (f32) otherwise.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `cout` rows of `n` samples spaced
    /// `row stride` apart, and no other thread may touch those samples during the call. They
    /// need not be initialised: each is written before it is read.
    pub(super) unsafe fn gemm_columns(
        &self,
        cols: &[f32],
        (dst, n, stride): (*mut f32, usize, usize),
        residual: Option<&[f32]>,
        parallelism: Parallelism,
    ) {
        // Packed only for a layer that gets this wide, so small layers hold one copy.
        #[cfg(target_arch = "x86_64")]
        if let Some(panels) = (n >= panel_gemm::min_columns(self.precision))
            .then(|| {
                self.panels.get_or_init(|| {
                    let Packed { weight, bias, .. } = &self.packed;
                    panel_gemm::Panels::new(weight, bias, self.precision).map(Box::new)
                })
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
        // The rows are seeded with the bias (and residual) through the pointer: they may not
        // be initialised before.
        for c in 0..m {
            let (row, bias) = (dst.wrapping_add(c * stride), self.packed.bias[c]);
            // SAFETY: row `c` holds `n` samples valid for writes (the caller's contract).
            match residual {
                Some(r) => (r[c * stride..c * stride + n].iter().enumerate())
                    .for_each(|(j, r)| unsafe { row.add(j).write(r + bias) }),
                None => (0..n).for_each(|j| unsafe { row.add(j).write(bias) }),
            }
        }
        // SAFETY: row `c` of `dst` is valid, initialised and exclusively ours.
        let row = |c: usize| unsafe { std::slice::from_raw_parts_mut(dst.add(c * stride), n) };
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

    /// One image on the direct kernel: `dst = act(conv(x) + bias [+ residual])`, max-pooled by
    /// `pool` when there is one (windows that do not overlap, no residual). Bands of
    /// [`DIRECT_BAND`] output rows (pooled rows when pooled) are the units of work (in parallel
    /// when `parallel`): each pads and phases the input rows it reads, then computes each conv
    /// row for every channel, [`DIRECT_CHANNELS`] at a time, into a buffer that stays in cache,
    /// and stores or pools it from there, so each input row is read once per output row
    /// rather than once per channel block.
    fn direct_image(
        &self,
        image: &Image,
        pool: Option<&MaxPool>,
        dst: &mut [MaybeUninit<f32>],
        parallel: bool,
    ) {
        let (h, w) = image.input;
        let (oh, ow) = image.output;
        let geo = image.geo;
        let taps = self.cin * self.packed.kernel * self.packed.kernel;
        let plane = pool.map_or(oh * ow, |p| p.out.0 * p.out.1);
        // The residual has to be added before the activation, after the kernel.
        let activation = match image.residual {
            Some(_) => Activation::Identity,
            None => self.packed.activation,
        };
        let filters = self.direct_filters();
        // The conv row whose taps are `srcs` for every channel into `rows`, one per channel.
        let conv_row = |srcs: &[&[f32]], rows: &mut [&mut [MaybeUninit<f32>]]| {
            for (filter, rows) in filters.iter().zip(rows.chunks_mut(DIRECT_CHANNELS)) {
                match filter {
                    DirectFilter::Block(weights, bias) => {
                        let rows = rows.try_into().expect("a block's rows");
                        stencil::row::<DIRECT_CHANNELS, 16>(
                            srcs,
                            weights,
                            *bias,
                            activation,
                            (rows, ow),
                        )
                    }
                    DirectFilter::Singles(singles, biases) => {
                        for ((weights, &bias), row) in singles.iter().zip(biases).zip(rows) {
                            let row = &mut [&mut **row];
                            stencil::row::<1, 32>(srcs, weights, [bias], activation, (row, ow));
                        }
                    }
                }
            }
        };
        if pool.is_some() {
            // The pooled output is a fraction of the conv's: cleared, it is max-ed into.
            cleared(dst);
        }
        let out = SharedOut(dst.as_mut_ptr().cast::<f32>());
        let bands = pool.map_or(oh, |p| p.out.0);
        // The conv rows band `u` computes.
        let conv_rows = |u: usize| {
            let (r0, r1) = (u * DIRECT_BAND, ((u + 1) * DIRECT_BAND).min(bands));
            match pool {
                None => (r0, r1),
                Some(p) => (p.window_rows(r0, oh).0, p.window_rows(r1 - 1, oh).1),
            }
        };
        let units = bands.div_ceil(DIRECT_BAND);
        let most = (0..units).map(conv_rows).map(|(y0, y1)| y1 - y0).max();
        let scratch = || {
            let padded = PaddedPlanes::for_output_rows(self.cin, most.unwrap_or(1), w, geo);
            // Pooled, each conv row goes through a buffer; otherwise straight to `dst`.
            (vec![0f32; pool.map_or(0, |_| self.cout * ow)], padded)
        };
        let unit = |(rows, padded): &mut (Vec<f32>, PaddedPlanes), u: usize| {
            let (y0, y1) = conv_rows(u);
            let first = (y0 * geo.stride) as isize - geo.pad.0 as isize;
            padded.fill_rows(image.x, h, first, false, false);
            let mut srcs = Vec::with_capacity(taps);
            let Some(pool) = pool else {
                for oy in y0..y1 {
                    padded.tap_rows(0..self.cin, oy - y0, &mut srcs);
                    // SAFETY: row `oy` of channel `c` lies inside `dst`, and only this unit
                    // touches it.
                    let at = |c: usize| unsafe {
                        let at = out
                            .ptr()
                            .add(c * plane + oy * ow)
                            .cast::<MaybeUninit<f32>>();
                        std::slice::from_raw_parts_mut(at, ow)
                    };
                    conv_row(&srcs, &mut (0..self.cout).map(at).collect::<Vec<_>>());
                }
                return;
            };
            let pw = pool.out.1;
            for py in u * DIRECT_BAND..((u + 1) * DIRECT_BAND).min(bands) {
                let (p0, p1) = pool.window_rows(py, oh);
                for oy in p0..p1 {
                    padded.tap_rows(0..self.cin, oy - y0, &mut srcs);
                    // SAFETY: the kernel writes only samples.
                    let room = unsafe { as_room(rows) };
                    conv_row(&srcs, &mut room.chunks_exact_mut(ow).collect::<Vec<_>>());
                    for (c, row) in rows.chunks_exact(ow).enumerate() {
                        // SAFETY: pooled row `py` of channel `c` lies inside `dst`, was
                        // cleared above, and only this unit touches it.
                        let pooled = unsafe {
                            std::slice::from_raw_parts_mut(out.ptr().add(c * plane + py * pw), pw)
                        };
                        pool.row(row, pooled, oy == p0);
                    }
                }
            }
        };
        if parallel {
            (0..units).into_par_iter().for_each_init(scratch, unit);
        } else {
            let mut scratch = scratch();
            (0..units).for_each(|u| unit(&mut scratch, u));
        }
        if let Some(residual) = image.residual {
            // SAFETY: every unit wrote all its rows' samples.
            let dst = unsafe { written(dst) };
            dst.iter_mut().zip(residual).for_each(|(d, r)| *d += r);
            self.packed.activation.apply(dst);
        }
    }
}

/// One block of output channels for the direct kernel.
#[derive(Debug, Clone)]
enum DirectFilter {
    /// [`DIRECT_CHANNELS`] channels: per tap, their weights; their biases.
    Block(Vec<[f32; DIRECT_CHANNELS]>, [f32; DIRECT_CHANNELS]),
    /// The last, partial block's channels, run one at a time: per channel, its taps; their
    /// biases.
    Singles(Vec<Vec<[f32; 1]>>, Vec<f32>),
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

impl DenseConv {
    /// The batch `[n, cin, h, w]` through the conv (with the residual added, if any), then
    /// through `pool` (`(kernel, stride, same)`, direct kernel only) if there is one.
    fn run_images(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
        pool: Option<(usize, usize, bool)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w) = nchw(x_layout, self.cin)?;
        let (geo, (oh, ow)) = self.packed.geometry(h, w)?;
        check_residual(residual, &Shape::from((n, self.cout, oh, ow)))?;
        let pool = match pool {
            Some((kernel, stride, same)) => {
                debug_assert!(self.direct() && residual.is_none());
                Some(
                    MaxPool::for_input(kernel, stride, same, (oh, ow)).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "{oh}x{ow} is smaller than the {kernel}x{kernel} pooling window"
                        ))
                    })?,
                )
            }
            None => None,
        };
        let (ph, pw) = pool.map_or((oh, ow), |p| p.out);
        let (image_in, image_out) = (self.cin * h * w, self.cout * ph * pw);
        let len = n * image_out;
        // Not cleared first: both kernels write every sample (clearing the megabytes of a
        // large layer's output costs about as much as writing them).
        let mut out = Vec::with_capacity(len);
        let base = SharedOut(out.as_mut_ptr());
        let threads = rayon::current_num_threads();
        let run = |b: usize, parallelism: Parallelism| {
            // SAFETY: image `b`'s outputs lie inside `out`'s capacity and only this call
            // touches them.
            let dst = unsafe { base.ptr().add(b * image_out) };
            let image = Image {
                x: &x[b * image_in..(b + 1) * image_in],
                input: (h, w),
                geo,
                output: (oh, ow),
                residual: residual.map(|(r, _)| &r[b * image_out..(b + 1) * image_out]),
            };
            if self.direct() {
                // SAFETY: see above; the direct kernel writes only samples.
                let dst = unsafe { std::slice::from_raw_parts_mut(dst.cast(), image_out) };
                let parallel = !matches!(parallelism, Parallelism::None);
                self.direct_image(&image, pool.as_ref(), dst, parallel);
            } else {
                // SAFETY: see above.
                unsafe { self.gemm_image(&image, dst, parallelism) };
            }
        };
        if n >= threads && threads > 1 {
            (0..n)
                .into_par_iter()
                .for_each(|b| run(b, Parallelism::None));
        } else {
            let parallelism = if threads > 1 {
                Parallelism::Rayon(threads)
            } else {
                Parallelism::None
            };
            (0..n).for_each(|b| run(b, parallelism));
        }
        // SAFETY: every image's outputs were written.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, self.cout, ph, pw))))
    }
}

impl ResidualKernel for DenseConv {
    const NAME: &'static str = "rollcall-dense-conv";

    fn forward(
        &self,
        x: &[f32],
        x_layout: &Layout,
        residual: Option<(&[f32], &Layout)>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run_images(x, x_layout, residual, None)
    }
}

/// A convolution on the direct kernel followed by max pooling whose windows do not overlap
/// (Tiny's first layer and its 2×2 pool), as one op: each window's conv rows go through a
/// buffer of a few rows into the pool, so the conv's full-resolution output (11 MB for Tiny at
/// 416²) is never written to memory and read back.
#[derive(Debug, Clone, Copy)]
pub struct PooledConv<'a> {
    conv: &'a DenseConv,
    /// Pooling window side, stride and whether it is TF's `same` (else `valid`).
    pool: (usize, usize, bool),
}

impl<'a> PooledConv<'a> {
    /// The fused op, if `conv` runs on the direct kernel and the pooling windows
    /// (`(kernel, stride, same)`) do not overlap.
    pub fn new(conv: &'a DenseConv, pool: (usize, usize, bool)) -> Option<Self> {
        (conv.direct() && pool.1 >= pool.0).then_some(Self { conv, pool })
    }
}

impl CustomOp1 for PooledConv<'_> {
    fn name(&self) -> &'static str {
        "rollcall-pooled-conv"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.conv
            .run_images(input(storage, layout)?, layout, None, Some(self.pool))
    }
}
