//! Run-time choice of vector width for whet's own loops. The build targets baseline x86-64
//! (SSE2: 4 floats at a time, or 1), so a binary runs on any x86-64 CPU; gemm picks its kernels
//! at run time, and this does the same for the fused kernels' row loops and AdamW's update.

/// Runs `f` compiled for AVX-512 or AVX2 when the CPU has them (checked at run time). `f` is
/// inlined into the wrapper that carries the feature, so the loops inside it vectorize wider;
/// mark the closure `#[inline(always)]`. Results are the same bits: IEEE ops lane by lane, and
/// Rust never fuses a multiply-add.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { with_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { with_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
