//! The matrix product behind dense convolutions on CPUs with AVX-512:
//! `dst = act(W · cols + bias [+ residual])`, written to `dst` once.
//!
//! The filter is packed once into panels of [`ROWS`] output channels (`[depth][ROWS]`, zero
//! rows padding the last panel). The column matrix is packed per tile of [`COLUMNS`] outputs
//! and at most [`MAX_DEPTH`] packed rows into a contiguous buffer that stays in cache while
//! every channel panel runs over it. The micro-kernel holds `ROWS × COLUMNS` sums in 24 of
//! the 32 vector registers: the bias (and residual) seed them, the activation runs on them and
//! they are stored once. The `gemm` crate's path instead pre-fills the output with the bias,
//! multiplies into it with its AVX2 kernel (16 registers) and passes over it again for the
//! activation.
//!
//! In [`Precision::Half`], on CPUs with AVX512-BF16 (AMD Zen 4 on, Intel Cooper Lake and
//! Sapphire Rapids on): the filter rounded to bfloat16 once, the columns as
//! they are packed, each packed row holding two inner steps as pairs, and one `vdpbf16ps`
//! adding two products per lane to the f32 sums: twice the multiply-adds of an f32 FMA per
//! instruction. The inputs keep 8 significant bits (an output moves by about 0.2–0.4% of its
//! scale); the sums stay f32. Layers built in [`Precision::F32`] (`ROLLCALL_CPU_BF16=0`)
//! keep every product in f32.
//!
//! Where the CPU also has AMX (Intel Sapphire Rapids on), bf16 panels are [`amx`] tiles of 16
//! output channels, the same packed columns feeding its tile products over the whole depth,
//! and the sums go through the same epilogue as the register kernel's. Where it has
//! AVX512-FP16 but no AMX (Sapphire Rapids under a hypervisor that keeps the tiles to itself),
//! the pairs are IEEE half precision and the [`fp16`] kernel multiplies them: Intel runs
//! `vdpbf16ps` at half the rate of its FMAs, `vfmadd231ph` at their rate with twice the lanes.

use std::arch::x86_64::*;

use gemm::Parallelism;
use rayon::prelude::*;

use super::{amx, fp16, Activation, Precision, SharedOut};

/// Fewest output columns worth this kernel, 8 full tiles (the caller keeps `gemm` below).
/// Measured with `kernels` on an AVX-512 AMD EPYC, alternated against `gemm`: 1×1 64 → 128 at
/// 128² (16384 columns) 97–145 against 76–103 GFLOP/s in five runs, 512 → 512 at 32² (1024)
/// and the ResNet's 3×3 at 35² (1225) level; 1024 → 1024 at 16² (256 columns) 5–10% behind,
/// and the ResNet's 3×3 at 8² and 4² (64 and 16 columns, mostly idle lanes in a 48-column
/// tile) 101 and 62 against 149 and 152. Fused separable blocks run bands this wide on it.
pub const MIN_COLUMNS: usize = 384;

/// Fewest output columns worth the kernel in [`Precision::Half`], whose products run twice as
/// fast: two tiles, a third of their lanes idle at the least.
const MIN_COLUMNS_BF16: usize = 64;

/// Fewest output columns worth the [`fp16`] kernel, as for bf16.
const MIN_COLUMNS_FP16: usize = 64;

/// Fewest output columns worth the kernel on [`amx`] tiles: one 16-column accumulator tile's
/// worth, the other two idle. Measured with `kernels` on a 2-vCPU Xeon with AMX: the ResNet's
/// 3×3 256 at 4² (16 columns per image) 208–253 GFLOP/s against 129–132 on `gemm`.
const MIN_COLUMNS_AMX: usize = 16;

/// Fewest output columns worth this kernel for products in `precision` (the caller keeps
/// `gemm` below).
pub fn min_columns(precision: Precision) -> usize {
    match Kernel::for_precision(precision) {
        Kernel::F32 => MIN_COLUMNS,
        Kernel::Bf16 => MIN_COLUMNS_BF16,
        Kernel::Fp16 => MIN_COLUMNS_FP16,
        Kernel::Amx => MIN_COLUMNS_AMX,
    }
}

/// What runs the products of a [`Panels`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// The register kernel, f32 FMAs.
    F32,
    /// The register kernel, `vdpbf16ps`.
    Bf16,
    /// The [`fp16`] kernel, `vfmadd231ph`.
    Fp16,
    /// [`amx`] tiles.
    Amx,
}

impl Kernel {
    /// The fastest kernel this CPU has for `precision`.
    fn for_precision(precision: Precision) -> Self {
        match precision {
            Precision::Half if bf16_available() && amx::available() => Self::Amx,
            Precision::Half if available() && fp16::available() => Self::Fp16,
            Precision::Half if bf16_available() => Self::Bf16,
            _ => Self::F32,
        }
    }

    /// Every kernel this CPU runs.
    #[cfg(test)]
    fn on_this_cpu() -> Vec<Self> {
        [
            (Self::F32, available()),
            (Self::Bf16, bf16_available()),
            (Self::Fp16, available() && fp16::available()),
            (Self::Amx, bf16_available() && amx::available()),
        ]
        .into_iter()
        .filter_map(|(kernel, runs)| runs.then_some(kernel))
        .collect()
    }

    /// What the products are rounded to.
    fn precision(self) -> Precision {
        match self {
            Self::F32 => Precision::F32,
            Self::Bf16 | Self::Fp16 | Self::Amx => Precision::Half,
        }
    }

    /// Output channels per filter panel.
    fn panel_rows(self) -> usize {
        match self {
            Self::F32 | Self::Bf16 | Self::Fp16 => ROWS,
            Self::Amx => amx::ROWS,
        }
    }

    /// Inner steps per packed row.
    fn steps(self) -> usize {
        match self {
            Self::F32 => 1,
            Self::Bf16 | Self::Fp16 | Self::Amx => 2,
        }
    }

    /// Packed rows for an inner dimension of `depth`: whole filter tiles for [`Self::Amx`].
    fn rows(self, depth: usize) -> usize {
        match self {
            Self::F32 | Self::Bf16 | Self::Fp16 => depth.div_ceil(self.steps()),
            Self::Amx => depth.div_ceil(amx::DEPTH) * amx::DEPTH / 2,
        }
    }
}

/// Output channels per filter panel (one broadcast each per inner step).
const ROWS: usize = 8;

/// Vector registers per channel in the micro-kernel.
const VECTORS: usize = 3;

/// Output columns per tile.
const COLUMNS: usize = 16 * VECTORS;

const _: () = assert!(
    COLUMNS == amx::COLUMNS
        && 2 * ROWS == amx::ROWS
        && COLUMNS == fp16::COLUMNS
        && ROWS == fp16::ROWS
);

/// Most packed rows at once: a `MAX_DEPTH × COLUMNS` tile of 32-bit samples is 72 KiB,
/// inside L2.
const MAX_DEPTH: usize = 384;

/// Whether this CPU runs the kernel (AVX-512F).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Whether this CPU runs [`Precision::Half`] (AVX512-BF16 and AVX512-BW).
fn bf16_available() -> bool {
    available()
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// A filter packed for [`Panels::run`], with its bias padded to whole panels.
#[derive(Debug, Clone)]
pub struct Panels {
    /// `[panel][packed row][ROWS]`: f32 bits, or two bf16 or fp16 (the even inner step in the
    /// low half), as `kernel` says; [`amx::pack_weights`]'s tiles for [`Kernel::Amx`].
    weights: Vec<u32>,
    /// One per packed row.
    bias: Vec<f32>,
    /// Output channels.
    m: usize,
    /// Inner dimension.
    depth: usize,
    /// Packed rows per panel ([`Kernel::rows`]).
    rows: usize,
    /// What runs the products.
    kernel: Kernel,
}

/// Where one micro-kernel call reads and writes.
struct Tile {
    /// Output `(row 0, column 0)` of the tile.
    dst: *mut f32,
    /// The residual at the same place, if any (first depth block only).
    residual: Option<*const f32>,
    /// Distance between output rows (and residual rows).
    stride: usize,
    /// Valid rows (≤ [`ROWS`]).
    rows: usize,
    /// Valid columns of each register.
    masks: [__mmask16; VECTORS],
}

impl Panels {
    /// Packs a row-major `m × depth` filter and its `m` biases for products in `precision`
    /// ([`Precision::F32`] where the CPU lacks AVX512-BF16); `None` without AVX-512F (the
    /// caller keeps the `gemm` path).
    pub fn new(weight: &[f32], bias: &[f32], precision: Precision) -> Option<Self> {
        available().then(|| Self::with_kernel(weight, bias, Kernel::for_precision(precision)))
    }

    /// [`Self::new`] for `kernel`, which this CPU must run.
    fn with_kernel(weight: &[f32], bias: &[f32], kernel: Kernel) -> Self {
        let m = bias.len();
        let depth = weight.len() / m;
        let rows = kernel.rows(depth);
        let panel_rows = kernel.panel_rows();
        let panels = m.div_ceil(panel_rows);
        let weights = match kernel {
            Kernel::Amx => amx::pack_weights(m, depth, |c, k| to_bf16(weight[c * depth + k])),
            Kernel::F32 | Kernel::Bf16 | Kernel::Fp16 => {
                let mut weights = vec![0u32; panels * rows * ROWS];
                for (c, row) in weight.chunks_exact(depth).enumerate() {
                    let panel = &mut weights[(c / ROWS) * rows * ROWS..][..rows * ROWS];
                    for (k, &w) in row.iter().enumerate() {
                        let at = &mut panel[(k / kernel.steps()) * ROWS + c % ROWS];
                        let half = match kernel {
                            Kernel::F32 => {
                                *at = w.to_bits();
                                continue;
                            }
                            Kernel::Fp16 => fp16::to_fp16(w),
                            _ => to_bf16(w),
                        };
                        *at |= u32::from(half) << (16 * (k % 2));
                    }
                }
                weights
            }
        };
        let mut padded = bias.to_vec();
        padded.resize(panels * panel_rows, 0.0);
        Self {
            weights,
            bias: padded,
            m,
            depth,
            rows,
            kernel,
        }
    }

    /// `dst = act(W · cols + bias [+ residual])` for `n` output columns, as
    /// `DenseConv::gemm_columns` describes it. Work is split into column tiles (and channel
    /// ranges, when the tiles are too few to share out) across `parallelism`'s threads.
    ///
    /// # Safety
    /// `dst` must be valid for reads and writes of `m` rows of `n` samples spaced `stride`
    /// apart, and no other thread may touch those samples during the call.
    pub unsafe fn run(
        &self,
        cols: &[f32],
        (dst, n, stride): (*mut f32, usize, usize),
        residual: Option<&[f32]>,
        activation: Activation,
        parallelism: Parallelism,
    ) {
        assert!(cols.len() >= self.depth * n);
        if let Some(r) = residual {
            assert!(self.m == 0 || r.len() >= (self.m - 1) * stride + n);
        }
        let threads = match parallelism {
            Parallelism::None => 1,
            Parallelism::Rayon(0) => rayon::current_num_threads(),
            Parallelism::Rayon(t) => t,
        };
        let tiles = n.div_ceil(COLUMNS);
        let panels = self.m.div_ceil(self.kernel.panel_rows());
        let ranges = if threads > 1 {
            (2 * threads).div_ceil(tiles).clamp(1, panels.max(1))
        } else {
            1
        };
        let per_range = panels.div_ceil(ranges);
        let out = SharedOut(dst);
        let item = |i: usize, buf: &mut Vec<u32>| {
            let (tile, range) = (i / ranges, i % ranges);
            let first = range * per_range;
            let last = (first + per_range).min(panels);
            // SAFETY: items write disjoint (column tile, panel range) blocks of `dst`, valid
            // by the caller's contract; `cols` and `residual` were checked above.
            unsafe {
                self.tile_column(
                    cols,
                    (out, n, stride),
                    residual,
                    activation,
                    (tile, first..last),
                    buf,
                )
            };
        };
        if threads > 1 && tiles * ranges > 1 {
            (0..tiles * ranges)
                .into_par_iter()
                .for_each_init(Vec::new, |buf, i| item(i, buf));
        } else {
            let mut buf = Vec::new();
            (0..tiles * ranges).for_each(|i| item(i, &mut buf));
        }
    }

    /// One column tile for the filter panels `panels`: per depth block, the tile's columns
    /// packed into `buf`, then every panel over them.
    ///
    /// # Safety
    /// As for [`Self::run`], with `cols` holding `depth × n` samples.
    unsafe fn tile_column(
        &self,
        cols: &[f32],
        (out, n, stride): (SharedOut, usize, usize),
        residual: Option<&[f32]>,
        activation: Activation,
        (tile, panels): (usize, std::ops::Range<usize>),
        buf: &mut Vec<u32>,
    ) {
        let col0 = tile * COLUMNS;
        let width = (n - col0).min(COLUMNS);
        let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
            let valid = width.saturating_sub(16 * v).min(16);
            ((1u32 << valid) - 1) as __mmask16
        });
        let matrix = Columns {
            cols,
            n,
            depth: self.depth,
            col0,
            masks,
        };
        let tile_at = |row0: usize, first_block: bool| Tile {
            // SAFETY: row `row0` column `col0` is inside `dst` (the caller's contract).
            dst: unsafe { out.ptr().add(row0 * stride + col0) },
            residual: residual
                .filter(|_| first_block)
                .map(|r| r[row0 * stride + col0..].as_ptr()),
            stride,
            rows: self.m.saturating_sub(row0).min(ROWS),
            masks,
        };
        if matches!(self.kernel, Kernel::Amx | Kernel::Fp16) {
            // The whole depth packed at once, each panel's sums computed over it into
            // `sums`, then stored through the register kernel's epilogue.
            buf.resize(self.rows * COLUMNS, 0);
            // SAFETY: as below; `Amx` and `Fp16` panels exist only where their kernels run.
            unsafe {
                match self.kernel {
                    Kernel::Amx => matrix.pack_bf16(0..self.rows, buf),
                    _ => matrix.pack_fp16(0..self.rows, buf),
                }
            };
            let tiles = (self.kernel == Kernel::Amx).then(|| {
                // SAFETY: as above.
                unsafe { amx::Tiles::configure() }
            });
            let panel_rows = self.kernel.panel_rows();
            let mut sums = [0f32; amx::ROWS * COLUMNS];
            let words = self.weights.len() / self.m.div_ceil(panel_rows);
            for p in panels {
                let weights = &self.weights[p * words..][..words];
                match &tiles {
                    Some(tiles) => tiles.block(weights, buf, &mut sums),
                    // SAFETY: as above.
                    None => unsafe {
                        fp16::block(
                            weights,
                            buf,
                            (&mut sums[..ROWS * COLUMNS]).try_into().unwrap(),
                        )
                    },
                }
                for (half, sums) in sums[..panel_rows * COLUMNS]
                    .chunks_exact(ROWS * COLUMNS)
                    .enumerate()
                {
                    let row0 = p * panel_rows + half * ROWS;
                    if row0 < self.m {
                        // SAFETY: the tile's rows and masked columns lie inside `dst`.
                        unsafe {
                            add_and_store(
                                sums,
                                &tile_at(row0, true),
                                &self.bias[row0..],
                                activation,
                            )
                        };
                    }
                }
            }
            return;
        }
        let blocks = self.rows.div_ceil(MAX_DEPTH).max(1);
        let step = self.rows.div_ceil(blocks);
        buf.resize(step * COLUMNS, 0);
        for block in 0..blocks {
            let r0 = block * step;
            let r1 = (r0 + step).min(self.rows);
            let packed = &mut buf[..(r1 - r0) * COLUMNS];
            // SAFETY: `cols` holds `depth × n` samples (the caller's contract) and the masks
            // stop at `n`.
            unsafe {
                match self.kernel.precision() {
                    Precision::F32 => matrix.pack_f32(r0..r1, packed),
                    Precision::Half => matrix.pack_bf16(r0..r1, packed),
                }
            };
            for p in panels.clone() {
                let row0 = p * ROWS;
                let tile = tile_at(row0, block == 0);
                let weights = &self.weights[(p * self.rows + r0) * ROWS..][..(r1 - r0) * ROWS];
                let seed = (block == 0).then(|| &self.bias[row0..row0 + ROWS]);
                let activation = (block + 1 == blocks).then_some(activation);
                // SAFETY: the tile's rows and masked columns lie inside `dst`; `weights`
                // and `packed` hold `r1 - r0` rows; `Bf16` panels exist only where the CPU
                // has AVX512-BF16.
                unsafe {
                    match self.kernel {
                        Kernel::F32 => f32_kernel(weights, packed, &tile, seed, activation),
                        _ => bf16_kernel(weights, packed, &tile, seed, activation),
                    }
                };
            }
        }
    }
}

/// One column tile of the `depth × n` column matrix, to pack.
struct Columns<'a> {
    cols: &'a [f32],
    n: usize,
    depth: usize,
    /// First column of the tile.
    col0: usize,
    /// Valid columns of each register.
    masks: [__mmask16; VECTORS],
}

impl Columns<'_> {
    /// Inner steps `rows` as f32 bits, [`COLUMNS`] per row, zero past the tile's width.
    ///
    /// # Safety
    /// `cols` must hold `depth × n` samples and the masks cover columns below `n` only.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_f32(&self, rows: std::ops::Range<usize>, packed: &mut [u32]) {
        for (k, dst) in rows.zip(packed.chunks_exact_mut(COLUMNS)) {
            for (v, &mask) in self.masks.iter().enumerate() {
                // SAFETY: `dst` holds `COLUMNS` samples; see the function's contract.
                unsafe {
                    let x = self.load(k, v, mask);
                    _mm512_storeu_ps(dst[16 * v..].as_mut_ptr().cast(), x);
                }
            }
        }
    }

    /// Packed rows `rows` (inner steps `2r` and `2r + 1`) as bf16 pairs, [`COLUMNS`] per
    /// row: lane `j` of a row holds column `j` of step `2r` in its low half and of `2r + 1`
    /// in its high half, zero past the tile's width and past the depth.
    ///
    /// # Safety
    /// As for [`Self::pack_f32`], on a CPU with AVX512-BF16 and AVX512-BW.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn pack_bf16(&self, rows: std::ops::Range<usize>, packed: &mut [u32]) {
        // SAFETY: see the function's contract.
        unsafe { self.pack_pairs::<Bf16Halves>(rows, packed) }
    }

    /// [`Self::pack_bf16`] in IEEE half precision, for the [`fp16`] kernel.
    ///
    /// # Safety
    /// As for [`Self::pack_f32`], on a CPU with AVX512-BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn pack_fp16(&self, rows: std::ops::Range<usize>, packed: &mut [u32]) {
        // SAFETY: see the function's contract.
        unsafe { self.pack_pairs::<Fp16Halves>(rows, packed) }
    }

    /// The body of [`Self::pack_bf16`] and [`Self::pack_fp16`], inlined into each so that
    /// it is compiled with its target features.
    ///
    /// # Safety
    /// As for [`Self::pack_f32`], on a CPU with AVX512-BW and `H`'s instructions.
    #[inline(always)]
    unsafe fn pack_pairs<H: Halves>(&self, rows: std::ops::Range<usize>, packed: &mut [u32]) {
        // The conversion puts the even step's 16 columns in the low 16 lanes and the odd
        // step's in the high ones; lane 2j then takes column j of the even step, 2j + 1 of
        // the odd one.
        // SAFETY: AVX-512F (the caller's contract).
        let interleave = unsafe {
            _mm512_set_epi16(
                31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5,
                20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
            )
        };
        for (r, dst) in rows.zip(packed.chunks_exact_mut(COLUMNS)) {
            for (v, &mask) in self.masks.iter().enumerate() {
                // SAFETY: `dst` holds `COLUMNS` samples; see the function's contract.
                unsafe {
                    let (even, odd) = (self.load(2 * r, v, mask), self.load(2 * r + 1, v, mask));
                    let lanes = _mm512_permutexvar_epi16(interleave, H::halves(even, odd));
                    _mm512_storeu_si512(dst[16 * v..].as_mut_ptr().cast(), lanes);
                }
            }
        }
    }

    /// Register `v` of the tile's columns of inner step `k`: zero past the mask and past the
    /// depth.
    ///
    /// # Safety
    /// As for [`Self::pack_f32`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(&self, k: usize, v: usize, mask: __mmask16) -> __m512 {
        if k < self.depth {
            // SAFETY: row `k` holds `n` samples and the mask stops at `n`.
            unsafe {
                _mm512_maskz_loadu_ps(
                    mask,
                    self.cols.as_ptr().add(k * self.n + self.col0 + 16 * v),
                )
            }
        } else {
            _mm512_setzero_ps()
        }
    }
}

/// Two steps' 16 columns rounded to a 16-bit format, the even step in the low 16 lanes.
trait Halves {
    /// `even` in the low 16 lanes, `odd` in the high ones.
    ///
    /// # Safety
    /// The CPU must have the implementation's instructions.
    unsafe fn halves(even: __m512, odd: __m512) -> __m512i;
}

/// bfloat16 (`vcvtne2ps2bf16`).
struct Bf16Halves;

impl Halves for Bf16Halves {
    #[inline(always)]
    unsafe fn halves(even: __m512, odd: __m512) -> __m512i {
        // SAFETY: AVX512-BF16 (the caller's contract); both are 512 bits.
        unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(odd, even)) }
    }
}

/// IEEE half precision.
struct Fp16Halves;

impl Halves for Fp16Halves {
    #[inline(always)]
    unsafe fn halves(even: __m512, odd: __m512) -> __m512i {
        // SAFETY: AVX-512F (the caller's contract).
        unsafe { fp16::halves(even, odd) }
    }
}

/// Rounds to the nearest bf16, ties to even (finite inputs).
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// The micro-kernel's sums, `ROWS × COLUMNS` in registers.
type Sums = [[__m512; VECTORS]; ROWS];

/// The sums seeded with `bias` (plus the tile's residual) when given, else with what the
/// tile holds (a later depth block).
///
/// # Safety
/// The tile's valid rows and columns must be valid for reads (and its residual's).
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn seed(tile: &Tile, bias: Option<&[f32]>) -> Sums {
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; ROWS];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (v, acc) in acc.iter_mut().enumerate() {
            if r >= tile.rows {
                continue;
            }
            let (m, at) = (tile.masks[v], r * tile.stride + 16 * v);
            // SAFETY: row `r` is valid; masked-off lanes are not read.
            *acc = unsafe {
                match (bias, tile.residual) {
                    (Some(b), Some(res)) => {
                        _mm512_add_ps(_mm512_set1_ps(b[r]), _mm512_maskz_loadu_ps(m, res.add(at)))
                    }
                    (Some(b), None) => _mm512_set1_ps(b[r]),
                    (None, _) => _mm512_maskz_loadu_ps(m, tile.dst.add(at)),
                }
            };
        }
    }
    acc
}

/// `activation` applied to the sums, when given, before the masked store of the tile's valid
/// rows and columns.
///
/// # Safety
/// The tile's valid rows and columns must be valid for writes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store(mut acc: Sums, tile: &Tile, activation: Option<Activation>) {
    if let Some(activation) = activation {
        for a in acc.iter_mut().flatten() {
            *a = activation.apply_512(*a);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            if r < tile.rows {
                // SAFETY: row `r` is valid; masked-off lanes are not written.
                unsafe {
                    _mm512_mask_storeu_ps(tile.dst.add(r * tile.stride + 16 * v), tile.masks[v], a)
                };
            }
        }
    }
}

/// Stores `ROWS × COLUMNS` sums computed elsewhere (row-major) into the tile, with the bias
/// (and residual) added and `activation` applied.
///
/// # Safety
/// As for [`seed`] and [`store`]; `bias` holds at least `ROWS` values.
#[target_feature(enable = "avx512f")]
unsafe fn add_and_store(sums: &[f32], tile: &Tile, bias: &[f32], activation: Activation) {
    let (rows, _) = sums.as_chunks::<COLUMNS>();
    // SAFETY: see the function's contract; each of `rows` holds `COLUMNS` = 16 · `VECTORS`
    // samples.
    unsafe {
        let mut acc = seed(tile, Some(bias));
        for (acc, row) in acc.iter_mut().zip(rows) {
            for (v, a) in acc.iter_mut().enumerate() {
                *a = _mm512_add_ps(*a, _mm512_loadu_ps(row[16 * v..].as_ptr()));
            }
        }
        store(acc, tile, Some(activation));
    }
}

/// The multiply-add of one packed row into the sums, per precision.
trait RowProduct {
    /// One packed sample of the filter (a channel's weight) in every lane.
    ///
    /// # Safety
    /// The CPU must have the implementation's instructions.
    unsafe fn broadcast(w: u32) -> __m512;

    /// `acc` plus the products of the broadcast weight `w` and the packed columns `c`.
    ///
    /// # Safety
    /// As for [`Self::broadcast`].
    unsafe fn madd(acc: __m512, w: __m512, c: __m512) -> __m512;
}

/// [`Precision::F32`]: one f32 FMA per lane.
struct F32Row;

impl RowProduct for F32Row {
    #[inline(always)]
    unsafe fn broadcast(w: u32) -> __m512 {
        // SAFETY: AVX-512F (the caller's contract).
        unsafe { _mm512_set1_ps(f32::from_bits(w)) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512, w: __m512, c: __m512) -> __m512 {
        // SAFETY: as above.
        unsafe { _mm512_fmadd_ps(w, c, acc) }
    }
}

/// [`Precision::Half`]: two bf16 products per lane (`vdpbf16ps`), the even inner step in the
/// low half of each 32-bit lane.
struct Bf16Row;

impl RowProduct for Bf16Row {
    #[inline(always)]
    unsafe fn broadcast(w: u32) -> __m512 {
        // SAFETY: AVX-512F (the caller's contract); the bits are the weight's bf16 pair.
        unsafe { _mm512_castsi512_ps(_mm512_set1_epi32(w as i32)) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512, w: __m512, c: __m512) -> __m512 {
        // SAFETY: AVX512-BF16 (the caller's contract); both operands are 512 bits of bf16
        // pairs.
        unsafe {
            let w = std::mem::transmute::<__m512, __m512bh>(w);
            let c = std::mem::transmute::<__m512, __m512bh>(c);
            _mm512_dpbf16_ps(acc, w, c)
        }
    }
}

/// `ROWS × COLUMNS` sums over the packed rows, between [`seed`] and [`store`]: the body of
/// [`f32_kernel`] and [`bf16_kernel`], inlined into each so that it is compiled with its
/// target features.
///
/// # Safety
/// As for [`seed`] and [`store`]; `weights` must hold `ROWS` and `panel` `COLUMNS` samples
/// per packed row, as many rows each; the CPU must have `P`'s instructions.
#[inline(always)]
unsafe fn sums<P: RowProduct>(
    weights: &[u32],
    panel: &[u32],
    tile: &Tile,
    bias: Option<&[f32]>,
    activation: Option<Activation>,
) {
    // Loops over constant bounds only, no closures and no raw pointer steps: a closure is not
    // compiled with the caller's target features (so it is not inlined), and either that or
    // an index known only at run time puts the sums in memory instead of registers.
    // SAFETY: see the function's contract.
    unsafe {
        let mut acc = seed(tile, bias);
        let (weights, _) = weights.as_chunks::<ROWS>();
        let (panel, _) = panel.as_chunks::<COLUMNS>();
        for (w, p) in weights.iter().zip(panel) {
            let mut cols = [_mm512_setzero_ps(); VECTORS];
            for (v, c) in cols.iter_mut().enumerate() {
                // `p` holds `COLUMNS` = 16 · `VECTORS` samples.
                *c = _mm512_loadu_ps(p[16 * v..].as_ptr().cast());
            }
            for (acc, &w) in acc.iter_mut().zip(w) {
                let w = P::broadcast(w);
                for (a, &c) in acc.iter_mut().zip(&cols) {
                    *a = P::madd(*a, w, c);
                }
            }
        }
        store(acc, tile, activation);
    }
}

/// [`sums`] of f32 products.
///
/// # Safety
/// As for [`sums`], on a CPU with AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn f32_kernel(
    weights: &[u32],
    panel: &[u32],
    tile: &Tile,
    bias: Option<&[f32]>,
    activation: Option<Activation>,
) {
    // SAFETY: see the function's contract.
    unsafe { sums::<F32Row>(weights, panel, tile, bias, activation) }
}

/// [`sums`] of bf16 products, each packed row two inner steps.
///
/// # Safety
/// As for [`sums`], on a CPU with AVX-512F and AVX512-BF16.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_kernel(
    weights: &[u32],
    panel: &[u32],
    tile: &Tile,
    bias: Option<&[f32]>,
    activation: Option<Activation>,
) {
    // SAFETY: see the function's contract.
    unsafe { sums::<Bf16Row>(weights, panel, tile, bias, activation) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic pseudo-random sequence in [-1, 1).
    fn noise(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// `x` rounded to bf16 and back.
    fn rounded(x: f32) -> f32 {
        f32::from_bits(u32::from(to_bf16(x)) << 16)
    }

    #[test]
    fn rounds_to_the_nearest_bf16() {
        // 1 + 2⁻⁸ is a tie between 1 and 1 + 2⁻⁷: even mantissa (1) wins; 1 + 3·2⁻⁸ rounds up.
        assert_eq!(rounded(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(rounded(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(rounded(-0.1), -205.0 / 2048.0);
    }

    /// `x` rounded to the nearest fp16 (ties to even) and back, in one rounding (`half`
    /// goes through f32 on CPUs with F16C, rounding twice). Finite results only.
    fn rounded_fp16(x: f64) -> f64 {
        let exponent = (((x.to_bits() >> 52) & 0x7ff) as i32 - 1023).max(-14);
        let ulp = f64::from(exponent - 10).exp2();
        (x / ulp).round_ties_even() * ulp
    }

    /// What the [`fp16`] kernel computes for one output, without bias: per block of
    /// [`fp16::SPAN`] packed rows, the even and the odd steps' products each summed in half
    /// precision (every multiply-add rounded once), the two added in half precision and the
    /// block's sum added to the f32 total.
    fn fp16_product(weights: &[f32], cols: impl Fn(usize) -> f32) -> f32 {
        let depth = weights.len();
        let mut total = 0f32;
        for block in (0..depth.div_ceil(2)).step_by(fp16::SPAN) {
            let mut steps = [0f64; 2];
            for r in block..(block + fp16::SPAN).min(depth.div_ceil(2)) {
                for (parity, sum) in steps.iter_mut().enumerate() {
                    let k = 2 * r + parity;
                    if k < depth {
                        let w = rounded_fp16(f64::from(weights[k]));
                        *sum = rounded_fp16(*sum + w * rounded_fp16(f64::from(cols(k))));
                    }
                }
            }
            total += rounded_fp16(steps[0] + steps[1]) as f32;
        }
        total
    }

    /// Each kernel this CPU runs against the product in f64 of the inputs it sees (rounded to
    /// bf16 for the bf16 kernels; for [`Kernel::Fp16`] its half-precision sums, emulated), so
    /// a wrong pairing or layout fails at any tolerance the formats allow.
    #[test]
    fn equals_the_plain_product_on_odd_shapes() {
        if !available() {
            println!("no AVX-512F on this CPU: the panel kernel is never used here");
            return;
        }
        // (channels, depth, columns, row stride, residual, activation, threads): odd channel
        // counts and depths, depths over one block, column tails, strided rows.
        let cases = [
            (8, 16, 48, 48, false, Activation::Identity, 1),
            (13, 7, 50, 61, true, Activation::Relu, 1),
            (3, 5, 17, 17, false, Activation::Relu6, 2),
            (70, 401, 101, 101, true, Activation::Leaky(0.1), 2),
            (16, 1000, 9, 20, false, Activation::Relu, 2),
            (128, 64, 300, 300, false, Activation::Relu6, 2),
            (9, 1601, 60, 60, true, Activation::Identity, 2),
        ];
        let kernels = Kernel::on_this_cpu();
        println!("kernels on this CPU: {kernels:?}");
        for kernel in kernels {
            let precision = kernel.precision();
            let seen = |x: f32| match precision {
                Precision::F32 => x,
                Precision::Half => rounded(x),
            };
            for (i, &(m, depth, n, stride, with_residual, activation, threads)) in
                cases.iter().enumerate()
            {
                let weight = noise(m * depth, 3 * i as u64);
                let bias = noise(m, 3 * i as u64 + 1);
                let cols = noise(depth * n, 3 * i as u64 + 2);
                let residual = with_residual.then(|| noise(m * stride, 7 + i as u64));
                let sentinel = 1234.5;
                let mut dst = vec![sentinel; m * stride];
                let panels = Panels::with_kernel(&weight, &bias, kernel);
                let parallelism = if threads > 1 {
                    Parallelism::Rayon(threads)
                } else {
                    Parallelism::None
                };
                // SAFETY: `dst` is `m` rows of `stride ≥ n` samples, owned here.
                unsafe {
                    panels.run(
                        &cols,
                        (dst.as_mut_ptr(), n, stride),
                        residual.as_deref(),
                        activation,
                        parallelism,
                    )
                };
                for c in 0..m {
                    for j in 0..stride {
                        let got = dst[c * stride + j];
                        if j >= n {
                            assert_eq!(got, sentinel, "case {i}: wrote past row {c}'s columns");
                            continue;
                        }
                        let weights = &weight[c * depth..][..depth];
                        let product = match kernel {
                            Kernel::Fp16 => fp16_product(weights, |k| cols[k * n + j]),
                            _ => (0..depth)
                                .map(|k| {
                                    f64::from(seen(weights[k])) * f64::from(seen(cols[k * n + j]))
                                })
                                .sum::<f64>() as f32,
                        };
                        let mut want = bias[c];
                        if let Some(r) = &residual {
                            want += r[c * stride + j];
                        }
                        let mut want = [want + product];
                        activation.apply(&mut want);
                        assert!(
                            (got - want[0]).abs() <= 1e-4 * (1.0 + want[0].abs()),
                            "{kernel:?} case {i} ({m}×{depth}×{n}): [{c}, {j}] {got} vs {}",
                            want[0]
                        );
                    }
                }
            }
        }
    }
}
