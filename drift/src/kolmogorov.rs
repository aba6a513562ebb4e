//! The two-sided one-sample Kolmogorov-Smirnov distribution, `P(D_n > x)`, computed the way
//! SciPy's `scipy.stats.kstwo.sf` computes it (Simard & L'Ecuyer 2011: pick the method by
//! `n` and `n x^2`), so that [`super::stats::ks_2samp`] reproduces
//! `scipy.stats.ks_2samp(method="asymp")` to 1e-9 rather than to the few digits of
//! Kolmogorov's limiting series.
//!
//! Methods, as in SciPy:
//! - Ruben-Gambino closed forms at both ends (`n x <= 1` and `n x >= n - 1`);
//! - Durbin's matrix (`H^n`, Marsaglia-Tsang-Wang scaling) for small `n x^2`;
//! - Pomeranz's recursion for `n <= 140` and moderate `n x^2`;
//! - Pelz-Good's asymptotic series for large `n`;
//! - `2 x` Smirnov's exact one-sided tail where the two one-sided events cannot both
//!   happen (`x >= 0.5`) or their intersection is negligible (large `n x^2`).
//!
//! SciPy evaluates the Smirnov sum in double-double arithmetic; here each term is a
//! product of logarithms in `f64` with compensated summation of the binomial logarithms,
//! which keeps the relative error of a term near `1e-12` for the `n` of a drift window
//! (the reference test checks the whole grid to 1e-9; the observed agreement is 1e-13).
//! Above `n = 10^6` SciPy replaces the Smirnov sum by an asymptotic formula; here the sum
//! stays exact, so the two may differ there (no drift window gets near that size: the
//! effective size of two samples is below the smaller of them).

use std::f64::consts::PI;

/// `2^128` and `2^-128`: rescaling steps that keep intermediate products in range.
const EP128: f64 = 3.402_823_669_209_385e38;
const EM128: f64 = 2.938_735_877_055_719e-39;
const E128: i32 = 128;

/// `P(D_n > x)` for the two-sided one-sample statistic `D_n` (SciPy's `kstwo.sf(x, n)`).
/// Returns NaN for `n == 0` or NaN `x`.
pub fn kolmogorov_sf(n: u64, x: f64) -> f64 {
    if n == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let t = nf * x;
    if t <= 1.0 {
        // Ruben-Gambino: for 1/(2n) <= x <= 1/n the CDF is n!/n^n (2t - 1)^n.
        if t <= 0.5 {
            return 1.0;
        }
        let cdf = if n <= 140 {
            let mut p = 1.0;
            for i in 1..=n {
                p *= (i as f64 * (1.0 / nf)) * (2.0 * t - 1.0);
            }
            p
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip(1.0 - cdf);
    }
    if t >= nf - 1.0 {
        return clip(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let nx_squared = t * x;
    if n <= 140 {
        if nx_squared <= 0.754_693 {
            return clip(1.0 - durbin_matrix_cdf(n, x));
        }
        if nx_squared <= 4.0 {
            return clip(1.0 - pomeranz_cdf(n, x));
        }
        return clip(2.0 * smirnov_sf(n, x));
    }
    if nx_squared >= 370.0 {
        return 0.0;
    }
    if nx_squared >= 2.2 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        durbin_matrix_cdf(n, x)
    } else {
        pelz_good_cdf(nf, x)
    };
    clip(1.0 - cdf)
}

fn clip(p: f64) -> f64 {
    p.clamp(0.0, 1.0)
}

/// `x * 2^e` without overflowing the intermediate power of two.
fn ldexp(mut x: f64, mut e: i32) -> f64 {
    while e > 512 {
        x *= 2f64.powi(512);
        e -= 512;
    }
    while e < -512 {
        x *= 2f64.powi(-512);
        e += 512;
    }
    x * 2f64.powi(e)
}

/// `ln(n! / n^n)` by Stirling's series with the `n ln n` removed up front (no cancellation).
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    // B_{2j} / (2j (2j - 1)) for j = 8..1, highest power first.
    const STIRLING: [f64; 8] = [
        -2.955_065_359_477_124e-2,
        6.410_256_410_256_41e-3,
        -1.917_526_917_526_917_6e-3,
        8.417_508_417_508_417e-4,
        -5.952_380_952_380_952e-4,
        7.936_507_936_507_937e-4,
        -2.777_777_777_777_778e-3,
        8.333_333_333_333_333e-2,
    ];
    let rn = 1.0 / n;
    let x = rn / n;
    let poly = STIRLING.iter().fold(0.0, |acc, c| acc * x + c);
    n.ln() / 2.0 - n + (2.0 * PI).ln() / 2.0 + rn * poly
}

/// Square matrix product, row-major.
fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * m];
    for i in 0..m {
        for k in 0..m {
            let aik = a[i * m + k];
            if aik == 0.0 {
                continue;
            }
            for j in 0..m {
                out[i * m + j] += aik * b[k * m + j];
            }
        }
    }
    out
}

/// `P(D_n <= d)` by Durbin's matrix: with `d = (k - h) / n`, the answer is
/// `n!/n^n (H^n)[k, k]` for a `(2k - 1)`-square matrix `H`; powers are taken by squaring
/// and rescaled by `2^128` so they neither overflow nor underflow.
fn durbin_matrix_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let nd = nf * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;

    // v[j] = (1 - h^(j+1)) / (j+1)!, w[j] = 1 / j!
    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powi(j as i32)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powi(m as i32) - 2.0 * h.powi(m as i32);
    v[m - 1] = (1.0 + tt) * fac;

    let mut hm = vec![0.0; m * m];
    for i in 1..m {
        for (r, wv) in (i - 1..m).zip(w.iter()) {
            hm[r * m + i] = *wv;
        }
    }
    for (r, vv) in v.iter().enumerate() {
        hm[r * m] = *vv;
    }
    for c in 0..m {
        hm[(m - 1) * m + c] = v[m - 1 - c];
    }

    let mut power: Vec<f64> = (0..m * m)
        .map(|i| if i / m == i % m { 1.0 } else { 0.0 })
        .collect();
    let mut nn = n;
    let mut expnt: i32 = 0;
    let mut h_expnt: i32 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            power = matmul(&power, &hm, m);
            expnt += h_expnt;
        }
        hm = matmul(&hm, &hm, m);
        h_expnt *= 2;
        if hm[(k - 1) * m + (k - 1)].abs() > EP128 {
            for x in &mut hm {
                *x /= EP128;
            }
            h_expnt += E128;
        }
        nn /= 2;
    }
    let mut p = power[(k - 1) * m + (k - 1)];
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p = ldexp(p, expnt);
    }
    clip(p)
}

/// End points of the non-zero entries of row `i` of Pomeranz's recursion.
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (half, odd) = ((i + 1) / 2, (i + 1) % 2);
        if odd == 0 {
            if half == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (half - 1 - ll - roundf - 1, half + ll - 1 + ceilf - 1)
            }
        } else {
            (half - 1 - ll - 1, half + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// Entry `i` of a slice, or zero outside it (the recursion reads a few entries past the
/// ends of its rows, which are zero by definition).
fn at(v: &[f64], i: i64) -> f64 {
    usize::try_from(i)
        .ok()
        .and_then(|i| v.get(i))
        .copied()
        .unwrap_or(0.0)
}

/// `P(D_n <= x)` by Pomeranz's recursion: each row is the previous one convolved with
/// truncated Poisson weights; `n!` times the last entry is the answer.
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    let ni = n as i64;
    let t = nf * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = (2 * (ll + 1)) as usize;
    let mut gpower = vec![1.0; npwrs];
    let mut twogpower = vec![1.0; npwrs];
    let mut onem2gpower = vec![1.0; npwrs];
    let (g_n, two_g_n, one_m2g_n) = (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_m2g_n / m as f64;
    }
    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s) = (0i64, 0i64);
    let mut expnt: i32 = 0;
    let (mut j1, mut _j2) = pomeranz_j1j2(0, ni, ll, ceilf, roundf);
    for i in 1..(2 * ni + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.iter_mut().for_each(|x| *x = 0.0);
        let (nj1, nj2) = pomeranz_j1j2(i, ni, ll, ceilf, roundf);
        j1 = nj1;
        _j2 = nj2;
        let pwrs = if i == 1 || i == 2 * ni + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = nj2 - k1 + 1;
        if ln2 > 0 {
            // conv[c] = sum_a V0[k1 - v0s + a] * pwrs[c - a], a, c - a in 0..ln2
            let start = j1 - k1;
            let len = nj2 - j1 + 1;
            for out in 0..len.max(0) {
                let c = start + out;
                let mut s = 0.0;
                for a in 0.max(c - ln2 + 1)..=c.min(ln2 - 1) {
                    s += at(&v0, k1 - v0s + a) * at(pwrs, c - a);
                }
                if let Some(slot) = v1.get_mut(out as usize) {
                    *slot = s;
                }
            }
            let max = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if 0.0 < max && max < EM128 {
                v1.iter_mut().for_each(|x| *x *= EP128);
                expnt -= E128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = at(&v1, ni - v1s);
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = ldexp(ans, expnt);
    }
    clip(ans)
}

/// `P(D_n <= x)` by the Pelz-Good expansion of the Li-Chien/Korolyuk series in
/// `1/sqrt(n)` (four terms), transformed with Jacobi theta identities for small `z`.
fn pelz_good_cdf(n: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let z = n.sqrt() * x;
    let (z2, z3, z4, z6) = (z * z, z.powi(3), z.powi(4), z.powi(6));
    let qlog = -PI * PI / 8.0 / z2;
    if qlog < -708.0 {
        return 0.0;
    }
    let q = qlog.exp();
    let (pi2, pi4, pi6) = (PI * PI, PI.powi(4), PI.powi(6));
    let k1a = -z2;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * z6 + 2.0 * z4;
    let k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    let k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    let k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    let k3a = -30.0 * z6 - 90.0 * z.powi(8);

    let mut kk = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for k in (1..=maxk).rev() {
        let m = (2 * k - 1) as f64;
        let (m2, m4, m6) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf((8 * k) as f64);
        let coeffs = [
            1.0,
            k1a + k1b * m2,
            k2a + k2b * m2 + k2c * m4,
            k3a + k3b * m2 + k3c * m4 + k3d * m6,
        ];
        for (acc, c) in kk.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let sqrt2pi = (2.0 * PI).sqrt();
    let denominators = [z, 6.0 * z4, 72.0 * z.powi(7), 6480.0 * z.powi(10)];
    for (acc, d) in kk.iter_mut().zip(denominators) {
        *acc = *acc * q * sqrt2pi / d;
    }
    let q2 = (-PI * PI / 2.0 / z2).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for k in (1..=maxk).rev() {
        let kf = k as f64;
        let ksq = kf * kf;
        let qp = q2.powf(ksq);
        let kpi = PI * kf;
        k2extra += ksq * qp;
        k3extra += (sqrt3z + kpi) * (sqrt3z - kpi) * ksq * qp;
    }
    kk[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    kk[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);
    kk.iter()
        .enumerate()
        .map(|(i, v)| v / n.powf(i as f64 / 2.0))
        .sum()
}

/// Neumaier-compensated running sum (keeps the binomial logarithm exact to a few ulps
/// over thousands of terms).
#[derive(Default)]
struct CompensatedSum {
    sum: f64,
    carry: f64,
}

impl CompensatedSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.carry += (self.sum - t) + x;
        } else {
            self.carry += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.carry
    }
}

/// Smirnov's one-sided tail `P(D_n^+ >= x)`:
/// `x sum_{v=0}^{floor(n(1-x))} C(n, v) (x + v/n)^(v-1) (1 - x - v/n)^(n-v)`, all terms
/// positive (SciPy's `smirnov(n, x)`).
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if n == 0 || x.is_nan() || !(0.0..=1.0).contains(&x) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    // floor(n x) and its remainder, exactly (the product's rounding error comes from fma).
    let nx = nf * x;
    let err = nf.mul_add(x, -nx);
    let mut nx_floor = nx.floor();
    let mut alpha = (nx - nx_floor) + err;
    if alpha < 0.0 {
        nx_floor -= 1.0;
        alpha += 1.0;
    }
    if alpha >= 1.0 {
        nx_floor += 1.0;
        alpha -= 1.0;
    }
    let nxfl = nx_floor as i64;
    let ni = n as i64;
    if nxfl == 0 || (nxfl == 1 && alpha == 0.0) {
        // x <= 1/n: only the v = n term is missing from 1.
        let cdf = x * (1.0 + x).powf(nf - 1.0);
        return 1.0 - cdf;
    }
    // exp(-2 n x^2) below the smallest subnormal: the tail is zero in f64.
    if -2.0 * nf * x * x < -745.133_219_101_941_2 {
        return 0.0;
    }
    if nxfl >= ni - 1 {
        return (1.0 - x).powf(nf);
    }
    // v runs to floor(n (1 - x)), except that the term with 1 - x - v/n = 0 (n x an
    // integer) is zero and left out.
    let last = ni - nxfl - 1;
    let mut ln_binom = CompensatedSum::default();
    let mut total = 0.0;
    for v in 0..=last {
        let vf = v as f64;
        let upper = (ni - v) as f64 / nf - x;
        let lower = vf / nf + x;
        if upper > 0.0 {
            let ln_term = ln_binom.value() + (vf - 1.0) * lower.ln() + (nf - vf) * upper.ln();
            total += ln_term.exp();
        }
        ln_binom.add(((ni - v) as f64 / (vf + 1.0)).ln());
    }
    clip(x * total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_bad_input() {
        assert!(kolmogorov_sf(0, 0.3).is_nan());
        assert!(kolmogorov_sf(10, f64::NAN).is_nan());
        assert_eq!(kolmogorov_sf(10, 0.0), 1.0);
        assert_eq!(kolmogorov_sf(10, -1.0), 1.0);
        assert_eq!(kolmogorov_sf(10, 1.0), 0.0);
        assert_eq!(kolmogorov_sf(10, f64::INFINITY), 0.0);
        assert_eq!(kolmogorov_sf(10, 0.04), 1.0);
    }

    #[test]
    fn one_sample_of_size_one() {
        // D_1 = max(U, 1 - U) for uniform U: P(D_1 > x) = 2 (1 - x) for x in [1/2, 1].
        assert!((kolmogorov_sf(1, 0.7) - 0.6).abs() < 1e-15);
        assert!((smirnov_sf(1, 0.3) - 0.7).abs() < 1e-15);
    }

    #[test]
    fn sf_is_monotone_in_x() {
        for n in [3, 20, 139, 141, 800] {
            let mut last = 1.0;
            for i in 1..200 {
                let p = kolmogorov_sf(n, i as f64 / 200.0);
                assert!(
                    p <= last + 1e-12,
                    "n={n} x={} {p} > {last}",
                    i as f64 / 200.0
                );
                last = p;
            }
        }
    }

    #[test]
    fn large_n_tends_to_kolmogorov_limit() {
        // P(sqrt(n) D_n > 1.36) -> 0.0494 (the classic 5 % critical value).
        let p = kolmogorov_sf(1_000_000, 1.36 / 1000.0);
        assert!((p - 0.0494).abs() < 2e-3, "{p}");
    }
}
