//! The chi-squared survival function, for the small-sample test on categorical features.
//!
//! `P(X > x)` for `X ~ chi2(k)` is the regularised upper incomplete gamma function
//! `Q(k/2, x/2)`. It is evaluated by the power series of `P` when `x < a + 1` and by the
//! Lentz continued fraction of `Q` otherwise (Numerical Recipes' split, where each
//! converges fast), to about 1e-15. `ln Gamma(k/2)` is summed exactly from its recurrence,
//! since only integer degrees of freedom occur; no general `lgamma` is needed.

use std::f64::consts::PI;

/// `ln Gamma(half_units / 2)` for a positive integer `half_units`, from
/// `Gamma(a + 1) = a Gamma(a)`, `Gamma(1) = 1`, `Gamma(1/2) = sqrt(pi)`.
fn ln_gamma_half(half_units: u64) -> f64 {
    let mut acc = if half_units.is_multiple_of(2) {
        0.0
    } else {
        PI.sqrt().ln()
    };
    let mut a = if half_units.is_multiple_of(2) {
        1.0
    } else {
        0.5
    };
    let target = half_units as f64 / 2.0;
    while a < target {
        acc += a.ln();
        a += 1.0;
    }
    acc
}

/// `P(X > x)` for `X ~ chi2(dof)`. `dof == 0` gives 1 (SciPy's convention for a table
/// with a single category), NaN `x` gives NaN.
pub fn chi2_sf(x: f64, dof: u64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if dof == 0 || x <= 0.0 {
        return 1.0;
    }
    if x == f64::INFINITY {
        return 0.0;
    }
    let a = dof as f64 / 2.0;
    let x = x / 2.0;
    let ln_prefix = a * x.ln() - x - ln_gamma_half(dof);
    if x < a + 1.0 {
        // P(a, x) = e^-x x^a / Gamma(a + 1) sum_k x^k / ((a+1)...(a+k))
        let mut term = 1.0 / a;
        let mut sum = term;
        let mut ap = a;
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-17 {
                break;
            }
        }
        (1.0 - sum * ln_prefix.exp()).clamp(0.0, 1.0)
    } else {
        // Q(a, x) = e^-x x^a / Gamma(a) * 1/(x+1-a- 1(1-a)/(x+3-a- 2(2-a)/(x+5-a- ...)))
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (ln_prefix.exp() * h).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_forms() {
        // chi2(2): P(X > x) = exp(-x/2); chi2(1): erfc(sqrt(x/2)), e.g. x = 3.841458820694124 -> 0.05
        for x in [0.1f64, 1.0, 2.5, 10.0, 60.0] {
            assert!((chi2_sf(x, 2) - (-x / 2.0).exp()).abs() < 1e-15, "{x}");
        }
        assert!((chi2_sf(3.841_458_820_694_124, 1) - 0.05).abs() < 1e-14);
        // chi2(4): exp(-x/2) (1 + x/2)
        for x in [0.5f64, 4.0, 9.0, 30.0] {
            let want = (-x / 2.0).exp() * (1.0 + x / 2.0);
            assert!((chi2_sf(x, 4) - want).abs() < 1e-15, "{x}");
        }
    }

    #[test]
    fn edges() {
        assert_eq!(chi2_sf(3.0, 0), 1.0);
        assert_eq!(chi2_sf(0.0, 3), 1.0);
        assert_eq!(chi2_sf(-1.0, 3), 1.0);
        assert_eq!(chi2_sf(f64::INFINITY, 3), 0.0);
        assert!(chi2_sf(f64::NAN, 3).is_nan());
        assert_eq!(chi2_sf(1e6, 3), 0.0);
    }

    #[test]
    fn ln_gamma_of_half_integers() {
        assert!((ln_gamma_half(1) - PI.sqrt().ln()).abs() < 1e-15);
        assert_eq!(ln_gamma_half(2), 0.0);
        assert!((ln_gamma_half(10) - 24f64.ln()).abs() < 1e-14);
        assert!((ln_gamma_half(5) - (0.75 * PI.sqrt()).ln()).abs() < 1e-15);
    }
}
