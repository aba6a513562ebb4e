//! Two-sample drift statistics, each defined to reproduce one independent implementation
//! (numpy/SciPy, see `scripts/make_drift_vectors.py`) to 1e-9.
//!
//! - [`psi`]: Population Stability Index over quantile bins of the reference.
//! - [`ks_2samp`]: Kolmogorov-Smirnov two-sample test (SciPy `method="asymp"`).
//! - [`wasserstein`]: earth mover's distance between the empirical distributions.
//! - [`jensen_shannon`]: Jensen-Shannon distance (base 2) of two count vectors.
//! - [`chi2_homogeneity`]: Pearson chi-squared test that two count vectors share one
//!   distribution (the small-sample counterpart of Jensen-Shannon, as in Evidently).
//!
//! Continuous statistics drop NaN and infinite values first: they are not measurements,
//! and letting one through would make quantiles and CDFs undefined. A sample with no
//! finite value left is an error ([`DriftError::EmptySample`]), never a made-up number.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DriftError;
use super::kolmogorov::kolmogorov_sf;
use super::special::chi2_sf;

/// Floor of a bin proportion in PSI, so an empty bin contributes a large but finite term.
/// 1e-4 is Evidently's choice; a smaller floor (1e-6) lets one empty bin dominate the
/// index (0.1 x ln(0.1 / 1e-6) = 1.15 alone), a larger one hides real emptiness.
pub const PSI_FLOOR: f64 = 1e-4;

/// Result of the two-sample Kolmogorov-Smirnov test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsResult {
    /// `D = sup |F_a - F_b|` of the empirical CDFs, in [0, 1].
    pub statistic: f64,
    /// Two-sided asymptotic p-value, `kstwo.sf(D, round(n_a n_b / (n_a + n_b)))`.
    pub p_value: f64,
}

/// Result of the chi-squared homogeneity test of two count vectors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquareResult {
    /// Pearson's statistic `sum (O - E)^2 / E` over the 2 x k table.
    pub statistic: f64,
    /// Degrees of freedom: categories seen in either vector, minus one.
    pub dof: u64,
    /// `P(chi2(dof) > statistic)`.
    pub p_value: f64,
}

/// The finite values of `x`, sorted ascending.
pub fn finite_sorted(x: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = x.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The `q`-quantile of a sorted, non-empty sample by linear interpolation between order
/// statistics (numpy's default `method="linear"`, Hyndman & Fan type 7), including
/// numpy's choice of which end to interpolate from (it keeps the result monotone in `q`).
pub fn quantile_linear(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    let last = *sorted.last()?;
    let virtual_index = (n - 1) as f64 * q;
    if virtual_index.is_nan() || virtual_index >= (n - 1) as f64 {
        return Some(last);
    }
    if virtual_index < 0.0 {
        return sorted.first().copied();
    }
    let prev = virtual_index.floor();
    let gamma = virtual_index - prev;
    let i = prev as usize;
    let (a, b) = (sorted[i], sorted[i + 1]);
    let diff = b - a;
    Some(if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    })
}

/// Interior PSI bin edges: the `i / bins` quantiles (`i = 1..bins`) of the sorted
/// reference, deduplicated. `bins - 1` edges at most; fewer when the reference has ties
/// (a constant reference gives one edge and so two bins).
pub fn quantile_edges(reference_sorted: &[f64], bins: usize) -> Vec<f64> {
    let mut edges: Vec<f64> = (1..bins)
        .filter_map(|i| quantile_linear(reference_sorted, i as f64 / bins as f64))
        .collect();
    edges.sort_by(f64::total_cmp);
    edges.dedup_by(|a, b| a == b);
    edges
}

/// The bin of `x`: the number of edges `<= x` (numpy `searchsorted(edges, x, "right")`).
fn bin_of(edges: &[f64], x: f64) -> usize {
    edges.partition_point(|e| *e <= x)
}

/// The share of a finite, sorted `sample` in each bin ([`bin_of`]), floored at
/// [`PSI_FLOOR`].
fn proportions(edges: &[f64], sample: &[f64]) -> Vec<f64> {
    if !edges.iter().all(|e| e.is_finite()) {
        // An edge interpolated between values near the ends of f64 can be infinite or
        // NaN (`a + inf * 0`), which the bisection below cannot order.
        return proportions_value_by_value(edges, sample);
    }
    // Each bin is a run of the sorted sample: the values in bins `0..=k` are those below
    // edge `k`, found by bisection instead of a bisection per value.
    let mut counts = vec![0u64; edges.len() + 1];
    let mut below_previous = 0;
    for (count, edge) in counts.iter_mut().zip(edges) {
        let below = sample.partition_point(|x| x < edge);
        *count = (below - below_previous) as u64;
        below_previous = below;
    }
    counts[edges.len()] = (sample.len() - below_previous) as u64;
    shares(counts, sample.len())
}

/// [`proportions`] by the rule of [`bin_of`], value by value: for any edges.
fn proportions_value_by_value(edges: &[f64], sample: &[f64]) -> Vec<f64> {
    let mut counts = vec![0u64; edges.len() + 1];
    for x in sample {
        counts[bin_of(edges, *x)] += 1;
    }
    shares(counts, sample.len())
}

/// Counts over `n`, floored at [`PSI_FLOOR`].
fn shares(counts: Vec<u64>, n: usize) -> Vec<f64> {
    let n = n as f64;
    counts
        .into_iter()
        .map(|c| (c as f64 / n).max(PSI_FLOOR))
        .collect()
}

/// PSI of two finite, sorted samples.
pub(crate) fn psi_sorted(
    reference: &[f64],
    current: &[f64],
    bins: usize,
) -> Result<f64, DriftError> {
    if bins == 0 {
        return Err(DriftError::NoBins);
    }
    if reference.is_empty() {
        return Err(DriftError::EmptySample("reference"));
    }
    if current.is_empty() {
        return Err(DriftError::EmptySample("current"));
    }
    let edges = quantile_edges(reference, bins);
    let r = proportions(&edges, reference);
    let c = proportions(&edges, current);
    Ok(r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum())
}

/// Population Stability Index of `current` against `reference`:
/// `sum over bins (c - r) ln(c / r)` with `bins` quantile bins of the reference
/// ([`quantile_edges`]), proportions floored at [`PSI_FLOOR`]. Usual reading: below 0.1
/// stable, 0.1 to 0.2 moderate shift, above 0.2 significant shift.
///
/// Non-finite values are dropped. PSI only sees how values fall into the reference's
/// bins: a shift that stays inside one bin (for example any change of a constant
/// reference towards larger values) reads 0; the KS statistic sees it.
pub fn psi(reference: &[f64], current: &[f64], bins: usize) -> Result<f64, DriftError> {
    psi_sorted(&finite_sorted(reference), &finite_sorted(current), bins)
}

/// Running `#values <= v` over a sorted sample, for a non-decreasing sequence of `v`.
struct Cursor<'a> {
    sorted: &'a [f64],
    at: usize,
}

impl Cursor<'_> {
    fn count_le(&mut self, v: f64) -> usize {
        while self.at < self.sorted.len() && self.sorted[self.at] <= v {
            self.at += 1;
        }
        self.at
    }
}

/// The two empirical CDFs of finite, sorted samples `a` and `b` compared at every pooled
/// value, as SciPy evaluates them (count / n per side): what the KS test and the
/// Wasserstein distance are made of, from one walk of the two samples in merged order.
struct CdfComparison {
    /// Largest `F_a(v) - F_b(v)`.
    max_diff: f64,
    /// Smallest `F_a(v) - F_b(v)`.
    min_diff: f64,
    /// `sum |F_a(v) - F_b(v)| (next - v)` over consecutive pooled values.
    area: f64,
    n_a: f64,
    n_b: f64,
}

impl CdfComparison {
    fn of(a: &[f64], b: &[f64]) -> Result<Self, DriftError> {
        if a.is_empty() {
            return Err(DriftError::EmptySample("first"));
        }
        if b.is_empty() {
            return Err(DriftError::EmptySample("second"));
        }
        let (n_a, n_b) = (a.len() as f64, b.len() as f64);
        let (mut ca, mut cb) = (Cursor { sorted: a, at: 0 }, Cursor { sorted: b, at: 0 });
        let (mut max_diff, mut min_diff, mut area) = (f64::NEG_INFINITY, f64::INFINITY, 0.0);
        let mut previous: Option<(f64, f64)> = None;
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            // The merged order (`a`'s value first among values that compare equal; which
            // comes first changes nothing, their gap has no width).
            let v = if j == b.len() || (i < a.len() && a[i] <= b[j]) {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            let diff = ca.count_le(v) as f64 / n_a - cb.count_le(v) as f64 / n_b;
            max_diff = max_diff.max(diff);
            min_diff = min_diff.min(diff);
            if let Some((before, gap)) = previous {
                area += gap.abs() * (v - before);
            }
            previous = Some((v, diff));
        }
        Ok(Self {
            max_diff,
            min_diff,
            area,
            n_a,
            n_b,
        })
    }

    /// The KS statistic and its asymptotic p-value.
    fn ks(&self) -> KsResult {
        let min_s = (-self.min_diff).clamp(0.0, 1.0);
        let d = if min_s > self.max_diff {
            min_s
        } else {
            self.max_diff
        };
        let (m, n) = if self.n_a >= self.n_b {
            (self.n_a, self.n_b)
        } else {
            (self.n_b, self.n_a)
        };
        let en = (m * n / (m + n)).round_ties_even();
        // One value per side: SciPy's effective size rounds to 0 and its p-value is NaN;
        // there is no evidence either way, so report 1.
        let p_value = if en < 1.0 {
            1.0
        } else {
            kolmogorov_sf(en as u64, d).clamp(0.0, 1.0)
        };
        KsResult {
            statistic: d,
            p_value,
        }
    }
}

/// KS test and Wasserstein-1 distance of two finite, sorted samples, from one walk.
pub(crate) fn ks_and_wasserstein_sorted(
    a: &[f64],
    b: &[f64],
) -> Result<(KsResult, f64), DriftError> {
    let cdfs = CdfComparison::of(a, b)?;
    Ok((cdfs.ks(), cdfs.area))
}

/// KS test of two finite, sorted samples.
pub(crate) fn ks_sorted(a: &[f64], b: &[f64]) -> Result<KsResult, DriftError> {
    CdfComparison::of(a, b).map(|cdfs| cdfs.ks())
}

/// Two-sample Kolmogorov-Smirnov test, two-sided, with SciPy's asymptotic p-value
/// (`scipy.stats.ks_2samp(a, b, method="asymp")`): the exact one-sample KS distribution
/// at the effective size `round(n_a n_b / (n_a + n_b))` (rounded half to even, as numpy
/// does). Non-finite values are dropped. Ties are handled as SciPy does (CDFs evaluated
/// at every pooled value); the p-value is then conservative.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> Result<KsResult, DriftError> {
    ks_sorted(&finite_sorted(a), &finite_sorted(b))
}

/// Wasserstein-1 distance of two finite, sorted samples.
pub(crate) fn wasserstein_sorted(a: &[f64], b: &[f64]) -> Result<f64, DriftError> {
    CdfComparison::of(a, b).map(|cdfs| cdfs.area)
}

/// Wasserstein-1 (earth mover's) distance between the empirical distributions of `a` and
/// `b`: the area between their CDFs (`scipy.stats.wasserstein_distance`). In the units of
/// the values, so compare it across features only after dividing by a scale (the
/// monitor divides by the reference's standard deviation). Non-finite values are dropped.
pub fn wasserstein(a: &[f64], b: &[f64]) -> Result<f64, DriftError> {
    wasserstein_sorted(&finite_sorted(a), &finite_sorted(b))
}

fn check_counts(p: &[f64], q: &[f64]) -> Result<(f64, f64), DriftError> {
    if p.len() != q.len() {
        return Err(DriftError::LengthMismatch(p.len(), q.len()));
    }
    if let Some(bad) = p.iter().chain(q).find(|c| !(c.is_finite() && **c >= 0.0)) {
        return Err(DriftError::InvalidCount(*bad));
    }
    let (sp, sq) = (p.iter().sum::<f64>(), q.iter().sum::<f64>());
    if sp <= 0.0 {
        return Err(DriftError::ZeroTotal("first"));
    }
    if sq <= 0.0 {
        return Err(DriftError::ZeroTotal("second"));
    }
    Ok((sp, sq))
}

/// Jensen-Shannon distance (base 2) between two count or frequency vectors over the same
/// categories, normalised inside: `sqrt((KL(p || m) + KL(q || m)) / 2)`, `m = (p + q)/2`,
/// in [0, 1] (0 identical, 1 disjoint). Matches
/// `scipy.spatial.distance.jensenshannon(p, q, base=2)`, except that a divergence that
/// rounds below zero gives 0 (SciPy returns NaN there). Evidently's drift threshold 0.1
/// applies to this distance.
///
/// Errors: different lengths, a negative or non-finite count, or a zero total.
pub fn jensen_shannon(p_counts: &[f64], q_counts: &[f64]) -> Result<f64, DriftError> {
    let (sp, sq) = check_counts(p_counts, q_counts)?;
    let rel_entr = |x: f64, y: f64| if x > 0.0 { x * (x / y).ln() } else { 0.0 };
    let (mut left, mut right) = (0.0, 0.0);
    for (p, q) in p_counts.iter().zip(q_counts) {
        let (p, q) = (p / sp, q / sq);
        let m = (p + q) / 2.0;
        left += rel_entr(p, m);
        right += rel_entr(q, m);
    }
    let js = (left + right) / std::f64::consts::LN_2;
    Ok((js / 2.0).max(0.0).sqrt())
}

/// Pearson chi-squared test that two count vectors over the same categories come from one
/// distribution (the 2 x k contingency table, no continuity correction), as
/// `scipy.stats.chi2_contingency([p, q], correction=False)` after dropping categories
/// empty in both. Fewer than two categories left: statistic 0, dof 0, p-value 1.
///
/// Errors: as [`jensen_shannon`].
pub fn chi2_homogeneity(p_counts: &[f64], q_counts: &[f64]) -> Result<ChiSquareResult, DriftError> {
    let (sp, sq) = check_counts(p_counts, q_counts)?;
    let columns: Vec<(f64, f64)> = p_counts
        .iter()
        .zip(q_counts)
        .filter(|(p, q)| *p + *q > 0.0)
        .map(|(p, q)| (*p, *q))
        .collect();
    if columns.len() < 2 {
        return Ok(ChiSquareResult {
            statistic: 0.0,
            dof: 0,
            p_value: 1.0,
        });
    }
    let total = sp + sq;
    let mut statistic = 0.0;
    for (p, q) in &columns {
        let column = p + q;
        for (observed, row) in [(p, sp), (q, sq)] {
            let expected = row * column / total;
            statistic += (observed - expected).powi(2) / expected;
        }
    }
    let dof = columns.len() as u64 - 1;
    Ok(ChiSquareResult {
        statistic,
        dof,
        p_value: chi2_sf(statistic, dof),
    })
}

/// Counts of each distinct value.
pub fn category_counts<'a>(values: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for v in values {
        *counts.entry(v.to_string()).or_insert(0) += 1;
    }
    counts
}

/// Two count maps as aligned vectors over the union of their categories (sorted), with
/// zeros for categories one side never saw.
pub fn aligned_counts(
    reference: &BTreeMap<String, u64>,
    current: &BTreeMap<String, u64>,
) -> (Vec<String>, Vec<f64>, Vec<f64>) {
    let mut categories: Vec<String> = reference.keys().chain(current.keys()).cloned().collect();
    categories.sort();
    categories.dedup();
    let get = |m: &BTreeMap<String, u64>, k: &String| m.get(k).copied().unwrap_or(0) as f64;
    let r = categories.iter().map(|k| get(reference, k)).collect();
    let c = categories.iter().map(|k| get(current, k)).collect();
    (categories, r, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_numpy_linear() {
        let s = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile_linear(&s, 0.0), Some(1.0));
        assert_eq!(quantile_linear(&s, 1.0), Some(8.0));
        // (n-1) q = 1.5 -> 2 + 0.5 * 2
        assert_eq!(quantile_linear(&s, 0.5), Some(3.0));
        assert_eq!(quantile_linear(&s, 0.25), Some(1.75));
        assert_eq!(quantile_linear(&[], 0.5), None);
        assert_eq!(quantile_linear(&[3.0], 0.5), Some(3.0));
    }

    #[test]
    fn psi_of_identical_samples_is_zero_and_of_shift_is_large() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        assert!(psi(&a, &a, 10).expect("psi").abs() < 1e-15);
        let b: Vec<f64> = (500..1500).map(|i| i as f64).collect();
        assert!(psi(&a, &b, 10).expect("psi") > 0.2);
    }

    #[test]
    fn psi_drops_non_finite_values_and_rejects_empty_samples() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let with_junk = [
            1.0,
            f64::NAN,
            2.0,
            f64::INFINITY,
            3.0,
            f64::NEG_INFINITY,
            4.0,
        ];
        assert_eq!(psi(&a, &with_junk, 4), psi(&a, &a, 4));
        assert_eq!(psi(&[], &a, 10), Err(DriftError::EmptySample("reference")));
        assert_eq!(
            psi(&a, &[f64::NAN], 10),
            Err(DriftError::EmptySample("current"))
        );
        assert_eq!(psi(&a, &a, 0), Err(DriftError::NoBins));
        // One bin: no edges, everything in it, PSI 0.
        assert_eq!(psi(&a, &[100.0], 1), Ok(0.0));
    }

    #[test]
    fn ks_extremes() {
        let a = [1.0, 2.0, 3.0];
        let r = ks_2samp(&a, &a).expect("ks");
        assert_eq!(r.statistic, 0.0);
        assert_eq!(r.p_value, 1.0);
        let r = ks_2samp(&a, &[10.0, 11.0, 12.0]).expect("ks");
        assert_eq!(r.statistic, 1.0);
        assert!(r.p_value < 0.1);
        let r = ks_2samp(&[1.0], &[2.0]).expect("ks");
        assert_eq!((r.statistic, r.p_value), (1.0, 1.0));
        assert!(ks_2samp(&[], &a).is_err());
        assert!(ks_2samp(&a, &[f64::NAN]).is_err());
    }

    #[test]
    fn wasserstein_of_a_shift_is_the_shift() {
        let a: Vec<f64> = (0..100).map(f64::from).collect();
        let b: Vec<f64> = a.iter().map(|x| x + 2.5).collect();
        assert!((wasserstein(&a, &b).expect("w") - 2.5).abs() < 1e-12);
        assert_eq!(wasserstein(&a, &a), Ok(0.0));
    }

    #[test]
    fn jensen_shannon_bounds_and_errors() {
        assert_eq!(jensen_shannon(&[1.0, 2.0], &[2.0, 4.0]), Ok(0.0));
        assert_eq!(jensen_shannon(&[1.0, 0.0], &[0.0, 5.0]), Ok(1.0));
        assert_eq!(
            jensen_shannon(&[1.0], &[1.0, 2.0]),
            Err(DriftError::LengthMismatch(1, 2))
        );
        assert_eq!(
            jensen_shannon(&[0.0, 0.0], &[1.0, 2.0]),
            Err(DriftError::ZeroTotal("first"))
        );
        assert!(matches!(
            jensen_shannon(&[1.0, -1.0], &[1.0, 2.0]),
            Err(DriftError::InvalidCount(_))
        ));
        assert!(matches!(
            jensen_shannon(&[1.0, f64::NAN], &[1.0, 2.0]),
            Err(DriftError::InvalidCount(_))
        ));
    }

    #[test]
    fn chi2_degenerate_tables() {
        let r = chi2_homogeneity(&[5.0, 0.0], &[7.0, 0.0]).expect("chi2");
        assert_eq!((r.statistic, r.dof, r.p_value), (0.0, 0, 1.0));
        let r = chi2_homogeneity(&[10.0, 10.0], &[10.0, 10.0]).expect("chi2");
        assert_eq!((r.statistic, r.dof, r.p_value), (0.0, 1, 1.0));
    }

    #[test]
    fn aligned_counts_fill_missing_categories_with_zero() {
        let r = category_counts(["a", "b", "a"]);
        let c = category_counts(["c", "a"]);
        let (k, rv, cv) = aligned_counts(&r, &c);
        assert_eq!(k, ["a", "b", "c"]);
        assert_eq!(rv, [2.0, 1.0, 0.0]);
        assert_eq!(cv, [1.0, 0.0, 1.0]);
    }

    /// The statistics as first written (52c72a4, copied verbatim but for the KS tail): the
    /// pooled sample built in full, a bisection of the edges per value. The one-walk forms
    /// must give their bits.
    mod as_first_written {
        use super::super::{CdfComparison, Cursor, KsResult, quantile_edges};

        // The per-value rule, `proportions` as first written, is kept as the fallback.
        use super::super::proportions_value_by_value as proportions;

        pub fn psi_sorted(reference: &[f64], current: &[f64], bins: usize) -> f64 {
            let edges = quantile_edges(reference, bins);
            let r = proportions(&edges, reference);
            let c = proportions(&edges, current);
            r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum()
        }

        fn merged(a: &[f64], b: &[f64]) -> Vec<f64> {
            let mut out = Vec::with_capacity(a.len() + b.len());
            let (mut i, mut j) = (0, 0);
            while i < a.len() || j < b.len() {
                if j == b.len() || (i < a.len() && a[i] <= b[j]) {
                    out.push(a[i]);
                    i += 1;
                } else {
                    out.push(b[j]);
                    j += 1;
                }
            }
            out
        }

        pub fn ks_sorted(a: &[f64], b: &[f64]) -> KsResult {
            let (na, nb) = (a.len() as f64, b.len() as f64);
            let (mut ca, mut cb) = (Cursor { sorted: a, at: 0 }, Cursor { sorted: b, at: 0 });
            let (mut max_diff, mut min_diff) = (f64::NEG_INFINITY, f64::INFINITY);
            for v in merged(a, b) {
                let diff = ca.count_le(v) as f64 / na - cb.count_le(v) as f64 / nb;
                max_diff = max_diff.max(diff);
                min_diff = min_diff.min(diff);
            }
            // (The statistic and p-value from the two extremes did not change: the SciPy
            // vectors of `ks_2samp` guard them.)
            CdfComparison {
                max_diff,
                min_diff,
                area: f64::NAN,
                n_a: na,
                n_b: nb,
            }
            .ks()
        }

        pub fn wasserstein_sorted(a: &[f64], b: &[f64]) -> f64 {
            let all = merged(a, b);
            let (na, nb) = (a.len() as f64, b.len() as f64);
            let (mut ca, mut cb) = (Cursor { sorted: a, at: 0 }, Cursor { sorted: b, at: 0 });
            let mut total = 0.0;
            for w in all.windows(2) {
                let (v, next) = (w[0], w[1]);
                let gap = ca.count_le(v) as f64 / na - cb.count_le(v) as f64 / nb;
                total += gap.abs() * (next - v);
            }
            total
        }
    }

    #[test]
    fn the_one_walk_statistics_give_the_bits_of_the_pooled_sample_ones() {
        let mut rng = crate::test_rng::SplitMix(17);
        // Few distinct values (ties within and across the samples, -0 beside +0) as well as
        // continuous ones, samples of one value up to a few thousand, a few bin counts.
        let mut negative_zeros = 0;
        for case in 0..400 {
            let distinct = [2, 5, 40, usize::MAX][case % 4];
            let mut sample = |n: usize, shift: f64| -> Vec<f64> {
                let raw: Vec<f64> = (0..n)
                    .map(|_| match distinct {
                        usize::MAX => rng.normal() * 3.0 + shift,
                        d => {
                            let base = [-0.0, 0.0, 1.5, -2.25, 7.0][rng.below(d.min(5))];
                            let step = (rng.below(d) / 5) as f64 + shift.round();
                            // (-0.0 + 0.0 is +0.0: only a non-zero step is added.)
                            if step == 0.0 { base } else { base + step }
                        }
                    })
                    .collect();
                finite_sorted(&raw)
            };
            let n_a = 1 + (case * 37) % 3000;
            let n_b = 1 + (case * 91) % 700;
            let shift = (case % 7) as f64 * 0.3;
            let (a, b) = (sample(n_a, 0.0), sample(n_b, shift));
            negative_zeros += a
                .iter()
                .chain(&b)
                .filter(|v| v.to_bits() == (-0.0f64).to_bits())
                .count();
            let bins = [2, 10, 23][case % 3];
            let psi = as_first_written::psi_sorted(&a, &b, bins);
            let ks = as_first_written::ks_sorted(&a, &b);
            let area = as_first_written::wasserstein_sorted(&a, &b);
            let one_walk = psi_sorted(&a, &b, bins).expect("psi");
            let (ks_walk, area_walk) = ks_and_wasserstein_sorted(&a, &b).expect("cdfs");
            assert_eq!(one_walk.to_bits(), psi.to_bits(), "psi, case {case}");
            assert_eq!(
                ks_walk.statistic.to_bits(),
                ks.statistic.to_bits(),
                "case {case}"
            );
            assert_eq!(
                ks_walk.p_value.to_bits(),
                ks.p_value.to_bits(),
                "case {case}"
            );
            assert_eq!(
                area_walk.to_bits(),
                area.to_bits(),
                "wasserstein, case {case}"
            );
        }
        assert!(negative_zeros > 1000, "{negative_zeros} values of -0.0");
    }

    #[test]
    fn psi_bins_values_value_by_value_when_an_edge_is_not_a_number() {
        // Between -1e308 and 1e308 the interpolated quantile is `a + inf * 0`: NaN. The
        // bins then follow `bin_of` value by value (a bisection of the sample would put
        // the two lowest values in the second bin).
        let reference = [-1.0e308, -1.0e308, 1.0e308, 1.0e308, 1.0e308];
        let current = [-1.0e308, 0.0, 1.0e308];
        let edges = quantile_edges(&reference, 4);
        assert!(edges.iter().any(|e| e.is_nan()), "{edges:?}");
        for sample in [&reference[..], &current[..]] {
            assert_eq!(
                proportions(&edges, sample),
                proportions_value_by_value(&edges, sample)
            );
        }
        assert_eq!(
            proportions(&edges, &current),
            [2.0 / 3.0, PSI_FLOOR, 1.0 / 3.0]
        );
        let psi = as_first_written::psi_sorted(&reference, &current, 4);
        let got = psi_sorted(&reference, &current, 4).expect("psi");
        assert_eq!(got.to_bits(), psi.to_bits());
    }
}
