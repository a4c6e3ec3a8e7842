//! Row reductions in independent lanes, for the kernels' max, sums and dot products.
//!
//! A fold over a row is one dependency chain: each add waits for the one before, about 4 cycles
//! an element, and a fold with `max` does not vectorize at all. Attention's softmax spent most
//! of its time there (a 32-row block at T = 256, in a microbenchmark with the other builds of
//! the session beside it: 16.5–18.9 µs with folds, 6.8 µs in lanes), and so did the loss head's
//! log-sum-exp over 49 152 logits a row. Element j goes to lane j % LANES and the lanes are
//! folded in order at the end. The order depends on LANES alone, not on the CPU's vector width,
//! so the result is the same bits on every machine and in every run. Decoding's `gemv` takes
//! 64 lanes (`dot_wide`): its dot products are long and memory-bound, and more sums in flight
//! keep more loads going.

use num_traits::Float;

/// Two AVX-512 registers of f32 (four of AVX2): two chains of adds in flight.
const LANES: usize = 32;

/// Four AVX-512 registers of f32, for `dot_wide`.
const WIDE: usize = 64;

/// The largest element (-inf for an empty row; NaNs are passed over, as `f32::max` does).
#[inline(always)]
pub(super) fn max<T: Float>(x: &[T]) -> T {
    let mut m = [T::neg_infinity(); LANES];
    let body = x.len() - x.len() % LANES;
    for c in x[..body].chunks_exact(LANES) {
        for (ml, &v) in m.iter_mut().zip(c) {
            // A select, not `max`: this form vectorizes to one instruction.
            if v > *ml {
                *ml = v;
            }
        }
    }
    x[body..].iter().chain(&m).fold(T::neg_infinity(), |a, &v| if v > a { v } else { a })
}

/// Σ f(aⱼ, bⱼ, cⱼ) over rows of equal length.
#[inline(always)]
pub(super) fn sum3<T: Float>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    sum3_in::<T, LANES>(a, b, c, f)
}

/// `sum3` in L lanes.
#[inline(always)]
fn sum3_in<T: Float, const L: usize>(a: &[T], b: &[T], c: &[T], f: impl Fn(T, T, T) -> T) -> T {
    let n = a.len().min(b.len()).min(c.len());
    let body = n - n % L;
    let mut s = [T::zero(); L];
    for ((ac, bc), cc) in
        a[..body].chunks_exact(L).zip(b[..body].chunks_exact(L)).zip(c[..body].chunks_exact(L))
    {
        for (((sl, &x), &y), &z) in s.iter_mut().zip(ac).zip(bc).zip(cc) {
            *sl = *sl + f(x, y, z);
        }
    }
    let tail = (body..n).fold(T::zero(), |acc, j| acc + f(a[j], b[j], c[j]));
    s.iter().fold(tail, |acc, &v| acc + v)
}

/// Σ f(aⱼ, bⱼ) over rows of equal length.
#[inline(always)]
pub(super) fn sum2<T: Float>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> T {
    sum3(a, b, b, |x, y, _| f(x, y))
}

/// Σ xⱼ.
#[inline(always)]
pub(super) fn sum<T: Float>(x: &[T]) -> T {
    sum2(x, x, |v, _| v)
}

/// Σ aⱼ bⱼ.
#[inline(always)]
pub(super) fn dot<T: Float>(a: &[T], b: &[T]) -> T {
    sum2(a, b, |x, y| x * y)
}

/// Σ aⱼ bⱼ in 64 lanes.
#[inline(always)]
pub(super) fn dot_wide<T: Float>(a: &[T], b: &[T]) -> T {
    sum3_in::<T, WIDE>(a, b, b, |x, y, _| x * y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_agree_with_a_sum_in_f64() {
        for n in [0, 1, 31, 32, 33, 100, 257, 4099] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 11 % 23) as f32 - 11.0) / 3.0).collect();
            let want_dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let want_sum: f64 = a.iter().map(|&x| x as f64).sum();
            assert!((dot(&a, &b) as f64 - want_dot).abs() <= 1e-5 * (1.0 + want_dot.abs()), "dot, n = {n}");
            let wide = dot_wide(&a, &b) as f64;
            assert!((wide - want_dot).abs() <= 1e-5 * (1.0 + want_dot.abs()), "dot_wide, n = {n}");
            assert!((sum(&a) as f64 - want_sum).abs() <= 1e-5 * (1.0 + want_sum.abs()), "sum, n = {n}");
            let want_max = a.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&a), want_max, "max, n = {n}");
        }
    }

    #[test]
    fn max_passes_over_nan_and_finds_the_tail() {
        let mut x = vec![1.0f32; 40];
        x[3] = f32::NAN;
        x[39] = 7.0; // in the tail past the lanes
        assert_eq!(max(&x), 7.0);
        assert_eq!(max::<f32>(&[]), f32::NEG_INFINITY);
    }
}
