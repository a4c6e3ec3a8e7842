//! `exp` for the kernels' inner loops. glibc's `expf` is a call per element, which the
//! compiler cannot vectorize, and it was 5 % of a pretraining step's samples (the loss head's
//! log-softmax, attention's softmax, SwiGLU's sigmoid). This one is Cephes' `expf` without
//! branches (range reduction by ln 2, a degree-6 polynomial, 2ⁿ built in the exponent bits), so
//! loops over it vectorize. f64 keeps the standard `exp`: the finite-difference checks run in
//! f64 and compare against it.

use num_traits::Float;

/// The kernels' `exp`: [`exp_f32`] for f32, `f64::exp` for f64.
pub trait KernelExp: Float {
    fn kexp(self) -> Self;
}

impl KernelExp for f32 {
    #[inline(always)]
    fn kexp(self) -> f32 {
        exp_f32(self)
    }
}

impl KernelExp for f64 {
    #[inline(always)]
    fn kexp(self) -> f64 {
        self.exp()
    }
}

/// Adding and removing 1.5·2²³ rounds an f32 to the nearest integer without a call to `roundf`.
const ROUND: f32 = 12_582_912.0;

/// eˣ within 2 ulp for x in [-87.3, 88.7]; below, the smallest normal float's neighbourhood
/// (~1.2e-38) instead of a denormal or 0; above, +inf; NaN stays NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    // r = x − n·ln 2, with ln 2 split in two so the product is exact.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    y * two_to_the(n) // n is within [-126, 128] after the clamp
}

/// 2ⁿ for a whole n in [-126, 128]: n + 127 in the exponent field. The integer is read from the
/// bits of ROUND + 127 + n, whose low mantissa bits hold it exactly: `as i32` is a saturating
/// conversion that kept the whole loop scalar (no float-to-int instruction vectorizes it), and
/// every loop over `kexp` ran one element at a time.
#[inline(always)]
fn two_to_the(n: f32) -> f32 {
    let biased = (n + (ROUND + 127.0)).to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exponent built from float bits equals the one the saturating cast gave, so the
    /// change that made `kexp` loops vectorize changed no result.
    #[test]
    fn two_to_the_n_has_the_bits_of_the_cast() {
        for n in -126..=128 {
            let n = n as f32;
            let cast = ((n as i32 + 127) as u32) << 23;
            assert_eq!(two_to_the(n).to_bits(), cast, "n = {n}");
        }
    }

    #[test]
    fn within_two_ulp_of_the_exact_value() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp_f32(x) as f64, (x as f64).exp());
            // one ulp of the exact value, in f32
            let ulp = (want as f32).to_bits();
            let ulp = (f32::from_bits(ulp + 1) - f32::from_bits(ulp)) as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.001_37;
        }
        assert!(worst <= 2.0, "{worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(-100.0) < 1.3e-38 && (0.0..1.3e-38).contains(&exp_f32(f32::NEG_INFINITY)));
    }
}
