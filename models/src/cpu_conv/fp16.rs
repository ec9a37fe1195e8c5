//! AVX512-FP16 products for [`super::panel_gemm`]'s 16-bit precision (Intel Sapphire Rapids
//! on): one `vfmadd231ph` is 32 half-precision multiply-adds, twice the lanes of an f32 FMA at
//! the same rate (measured on a 2-vCPU Xeon without AMX: 368 GFLOP/s per core against 170 for
//! f32 FMAs and 82 for `vdpbf16ps`, which Intel runs at half the rate of its FMAs).
//!
//! The filter and the columns are packed as the bf16 kernel packs them, in IEEE half
//! precision instead (11 significant bits, 3 more than bf16): each 32-bit lane holds a
//! column's even and odd inner step, so one broadcast filter pair multiplies both. The
//! [`ROWS`] × [`COLUMNS`] sums are kept as half-precision partial sums in 24 registers for
//! [`SPAN`] packed rows at most, then folded (the even and odd halves added) into f32 sums in
//! memory: no half-precision sum holds more than [`SPAN`] products, so the rounding of the
//! sums stays at the level of the inputs' own (about 2⁻¹² of a partial sum per step).
//!
//! Half precision ends at 65504: the networks here keep their activations and partial sums
//! far below that (ReLU6, batch-normed layers), which the golden tests check on real photos.

use std::arch::x86_64::*;

/// Output channels per filter panel, the register kernel's.
pub const ROWS: usize = 8;

/// Vector registers per channel: 3 × 16 lanes of pairs.
const VECTORS: usize = 3;

/// Output columns per block.
pub const COLUMNS: usize = 16 * VECTORS;

/// Most packed rows (two inner steps each) summed in half precision before the sums are
/// folded into f32.
pub const SPAN: usize = 32;

/// Whether this CPU runs the kernel (AVX512-FP16 and AVX512-BW), checked once.
/// `ROLLCALL_CPU_FP16=0` turns it off, leaving the bf16 kernels.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let disabled = std::env::var("ROLLCALL_CPU_FP16").is_ok_and(|v| v.trim() == "0");
        !disabled
            && std::arch::is_x86_feature_detected!("avx512fp16")
            && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

/// `x` rounded to the nearest half-precision value, ties to even.
pub fn to_fp16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// The even step's 16 samples `even` in the low 16 half-precision lanes and the odd step's
/// `odd` in the high ones, rounded to nearest-even (the panel kernel interleaves them).
///
/// # Safety
/// The CPU must have AVX512-F.
#[inline]
#[target_feature(enable = "avx512f")]
pub unsafe fn halves(even: __m512, odd: __m512) -> __m512i {
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    _mm512_inserti64x4::<1>(
        _mm512_castsi256_si512(_mm512_cvtps_ph::<NEAREST>(even)),
        _mm512_cvtps_ph::<NEAREST>(odd),
    )
}

/// `out = W · cols` for one filter panel and one column block: `weights` [`ROWS`] pairs and
/// `cols` [`COLUMNS`] pairs per packed row (as many rows each), `out` [`ROWS`] rows of
/// [`COLUMNS`] f32 sums, overwritten; at least one packed row.
///
/// # Safety
/// [`available`] must have returned `true`.
#[target_feature(enable = "avx512f,avx512bw,avx512fp16")]
pub unsafe fn block(weights: &[u32], cols: &[u32], out: &mut [f32; ROWS * COLUMNS]) {
    let (weights, _) = weights.as_chunks::<ROWS>();
    let (cols, _) = cols.as_chunks::<COLUMNS>();
    assert!(!cols.is_empty() && weights.len() == cols.len());
    // As in the register kernel: loops over constant bounds only, so the partial sums stay in
    // registers.
    for (span, (weights, cols)) in weights.chunks(SPAN).zip(cols.chunks(SPAN)).enumerate() {
        let mut acc = [[_mm512_setzero_ph(); VECTORS]; ROWS];
        for (w, p) in weights.iter().zip(cols) {
            let mut c = [_mm512_setzero_ph(); VECTORS];
            for (v, c) in c.iter_mut().enumerate() {
                // SAFETY: `p` holds `COLUMNS` = 16 · `VECTORS` words.
                *c =
                    _mm512_castsi512_ph(unsafe { _mm512_loadu_si512(p[16 * v..].as_ptr().cast()) });
            }
            for (acc, &w) in acc.iter_mut().zip(w) {
                let w = _mm512_castsi512_ph(_mm512_set1_epi32(w as i32));
                for (a, &c) in acc.iter_mut().zip(&c) {
                    *a = _mm512_fmadd_ph(w, c, *a);
                }
            }
        }
        let (rows, _) = out.as_chunks_mut::<COLUMNS>();
        for (acc, row) in acc.iter().zip(rows) {
            for (v, &a) in acc.iter().enumerate() {
                // Each lane's odd-step half added to its even half, the low halves widened.
                let bits = _mm512_castph_si512(a);
                let odd = _mm512_castsi512_ph(_mm512_srli_epi32::<16>(bits));
                let pair = _mm512_castph_si512(_mm512_add_ph(a, odd));
                let sums = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(pair));
                let at = row[16 * v..].as_mut_ptr();
                // SAFETY: `row` holds `COLUMNS` = 16 · `VECTORS` sums; the first span stores
                // them, the later ones add to them.
                unsafe {
                    let sums = if span == 0 {
                        sums
                    } else {
                        _mm512_add_ps(_mm512_loadu_ps(at), sums)
                    };
                    _mm512_storeu_ps(at, sums)
                };
            }
        }
    }
}
