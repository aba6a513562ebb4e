//! The numeric kernels of the joint model: dot products, dense layers, axpy and the Adam
//! update, in portable Rust (no `unsafe`, no FMA, no CPU detection).
//!
//! Models must be byte-identical on every machine and across refactors, so each kernel
//! performs exactly the floating-point operations, in exactly the order, of the plain loop
//! it stands for; only the order of *independent* sums changes. The speed comes from:
//! - [`dense_layer`] computing four rows at once: sixteen independent accumulators hide the
//!   add latency that serialised a single dot product, and each load of `x` serves four
//!   rows;
//! - [`axpy_rows`] adding four scaled rows per pass over `y`, one term at a time in their
//!   order, so `y` is loaded and stored a quarter as often;
//! - [`adam`] written over zipped slices so the compiler vectorises it (no bounds checks).
//!
//! The tests compare every kernel bit for bit against the plain loops.
//!
//! The vector width comes from the build target (x86-64-v3's AVX registers hold a row's
//! four lanes at once, SSE2's two), never from run-time detection, and does not change a
//! bit: no sum's order depends on it, and Rust never fuses a multiply and an add.

/// Hyper-parameters of one Adam step; `lr` already carries the bias correction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Adam {
    pub lr: f64,
    pub b1: f64,
    pub b2: f64,
    pub eps: f64,
}

impl Adam {
    /// The standard betas and epsilon, with the bias-corrected step size of step `t`.
    pub fn at_step(learning_rate: f64, t: f64) -> Self {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        Self {
            lr: learning_rate * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t)),
            b1,
            b2,
            eps,
        }
    }

    /// Updates one parameter from its summed gradient over `n` examples.
    #[inline(always)]
    pub fn update(self, p: &mut f64, m: &mut f64, v: &mut f64, grad_sum: f64, n: f64) {
        let grad = grad_sum / n;
        *m = self.b1 * *m + (1.0 - self.b1) * grad;
        *v = self.b2 * *v + (1.0 - self.b2) * grad * grad;
        *p -= self.lr * *m / (v.sqrt() + self.eps);
    }
}

/// Adam over whole vectors: `grad_sums[i] / n` is parameter `i`'s mean gradient.
pub(crate) fn adam(
    step: Adam,
    params: &mut [f64],
    m: &mut [f64],
    v: &mut [f64],
    grad_sums: &[f64],
    n: f64,
) {
    for (((p, m), v), g) in params.iter_mut().zip(m).zip(v).zip(grad_sums) {
        step.update(p, m, v, *g, n);
    }
}

/// Dot product with four interleaved accumulators (lane `k % 4`), summed as
/// `(a0 + a1) + (a2 + a3) + tail`.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f64; 4];
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let (ra, rb) = (a4.remainder(), b4.remainder());
    for (x, y) in a4.zip(b4) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    finish(acc, ra, rb)
}

#[inline(always)]
fn finish(acc: [f64; 4], ra: &[f64], rb: &[f64]) -> f64 {
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// `out[r] = b[r] + dot(w[r], x)` for the row-major matrix `w` (`b.len()` rows of
/// `x.len()` columns); each row's sum is exactly [`dot`]'s.
pub(crate) fn dense_layer(w: &[f64], b: &[f64], x: &[f64], out: &mut Vec<f64>) {
    out.clear();
    let cols = x.len();
    let body = cols / 4 * 4;
    let (xb, xt) = x.split_at(body);
    let (x4, _) = xb.as_chunks::<4>();
    let mut rows = w[..b.len() * cols].chunks_exact((4 * cols).max(1));
    let mut bias = b.chunks_exact(4);
    for (block, b4) in rows.by_ref().zip(bias.by_ref()) {
        let (w0, rest) = block.split_at(cols);
        let (w1, rest) = rest.split_at(cols);
        let (w2, w3) = rest.split_at(cols);
        let acc = four_row_sums(x4, [w0, w1, w2, w3].map(|r| r[..body].as_chunks::<4>().0));
        for (q, row) in [w0, w1, w2, w3].into_iter().enumerate() {
            out.push(b4[q] + finish(acc[q], &row[body..], xt));
        }
    }
    let done = out.len();
    for (r, bias) in b.iter().enumerate().skip(done) {
        out.push(bias + dot(&w[r * cols..(r + 1) * cols], x));
    }
}

/// The lane sums of four rows against `x`: `acc[q][k]` adds `rows[q][i][k] * x[i][k]` for
/// every `i` in order, as [`dot`]'s lane `k` does.
///
/// Written as whole-array products, then whole-array sums, so that the compiler keeps
/// lanes 0-1 and 2-3 of each row in one SIMD register each: one multiply and one add per
/// pair, no shuffles. The nested `acc[k] += r[k] * x[k]` loop it replaces (the same
/// operations in the same order, so the same bits) was vectorised across rows instead,
/// and spent half its instructions shuffling lanes into place. Not inlined: inside
/// [`dense_layer`] the compiler pairs rows again, to vectorise the rows' final sums.
#[inline(never)]
fn four_row_sums(x: &[[f64; 4]], rows: [&[[f64; 4]]; 4]) -> [[f64; 4]; 4] {
    let n = x.len();
    let [r0, r1, r2, r3] = rows.map(|r| &r[..n]);
    let mut acc = [[0.0f64; 4]; 4];
    for i in 0..n {
        let xs = x[i];
        for (a, r) in acc.iter_mut().zip([r0[i], r1[i], r2[i], r3[i]]) {
            let p = [r[0] * xs[0], r[1] * xs[1], r[2] * xs[2], r[3] * xs[3]];
            *a = [a[0] + p[0], a[1] + p[1], a[2] + p[2], a[3] + p[3]];
        }
    }
    acc
}

/// `y += a * x`.
pub(crate) fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// `y += a_j * w[row_j]` for each `(a_j, row_j)` in `terms`, in order: the same sums as
/// one [`axpy`] per term, with `y` read and written once per four terms. `w` is row-major
/// with `y.len()` columns.
pub(crate) fn axpy_rows(terms: &[(f64, usize)], w: &[f64], y: &mut [f64]) {
    axpy_row_prefixes(terms, w, y.len(), y);
}

/// [`axpy_rows`] over the first `y.len()` columns of a row-major `w` of `stride` columns:
/// each column's sum is exactly the one [`axpy_rows`] makes over whole rows.
pub(crate) fn axpy_row_prefixes(terms: &[(f64, usize)], w: &[f64], stride: usize, y: &mut [f64]) {
    let cols = y.len();
    let row = |r: usize| &w[r * stride..r * stride + cols];
    let mut quads = terms.chunks_exact(4);
    for q in quads.by_ref() {
        let (a0, a1, a2, a3) = (q[0].0, q[1].0, q[2].0, q[3].0);
        for ((((y, x0), x1), x2), x3) in y
            .iter_mut()
            .zip(row(q[0].1))
            .zip(row(q[1].1))
            .zip(row(q[2].1))
            .zip(row(q[3].1))
        {
            let mut s = *y;
            s += a0 * x0;
            s += a1 * x1;
            s += a2 * x2;
            s += a3 * x3;
            *y = s;
        }
    }
    for &(a, r) in quads.remainder() {
        axpy(a, row(r), y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = shopstream_ingest::generator::rng::Rng::new(seed, 5);
        (0..n)
            .map(|i| {
                let u = rng.unit() * 2.0 - 1.0;
                // Mixed magnitudes, so a changed summation order would change the bits.
                u * 10f64.powi((i % 7) as i32 - 3)
            })
            .collect()
    }

    #[test]
    fn dense_layer_sums_each_row_exactly_as_dot() {
        for (rows, cols) in [(64, 74), (32, 64), (7, 5), (5, 3), (4, 0), (0, 9), (9, 13)] {
            let w = values(1, rows * cols);
            let b = values(2, rows);
            let x = values(3, cols);
            let mut out = Vec::new();
            dense_layer(&w, &b, &x, &mut out);
            let plain: Vec<f64> = (0..rows)
                .map(|r| b[r] + dot(&w[r * cols..(r + 1) * cols], &x))
                .collect();
            assert_eq!(out.len(), rows);
            for (got, want) in out.iter().zip(&plain) {
                assert_eq!(got.to_bits(), want.to_bits(), "{rows}x{cols}");
            }
        }
    }

    #[test]
    fn axpy_rows_adds_exactly_as_one_axpy_per_term() {
        let cols = 74;
        let w = values(4, 40 * cols);
        for n_terms in [0, 1, 3, 4, 5, 8, 11, 40] {
            let a = values(5, n_terms);
            let terms: Vec<(f64, usize)> = (0..n_terms).map(|j| (a[j], (j * 7) % 40)).collect();
            let mut fast = values(6, cols);
            let mut plain = fast.clone();
            let mut prefix = fast[..64].to_vec();
            axpy_rows(&terms, &w, &mut fast);
            axpy_row_prefixes(&terms, &w, cols, &mut prefix);
            for &(a, r) in &terms {
                axpy(a, &w[r * cols..(r + 1) * cols], &mut plain);
            }
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&plain), "{n_terms} terms");
            assert_eq!(
                bits(&prefix),
                bits(&plain[..64]),
                "{n_terms} terms, 64 columns"
            );
        }
    }
}
