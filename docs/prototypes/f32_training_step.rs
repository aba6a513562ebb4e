//! Prototype, not part of the build: the training step of the joint model's two shared
//! layers (64 x 75 and 32 x 64, minibatches of 64, Adam over their 7,008 parameters) in
//! f64 with four lanes per row, as `trainer/src/kernels.rs` computes it today, and in f32
//! with eight lanes per row (the same two SSE2 registers per row), to measure what f32
//! arithmetic would buy the trainer (issue 17's 300k examples/s bar; BENCHMARKS.md,
//! "The trainer on a warm model"). Inputs are random, so about half of the hidden units
//! are active, as in the model. The heads, embedding rows and normaliser are left out.
//!
//! Run: `rustc --edition 2024 -C opt-level=3 docs/prototypes/f32_training_step.rs -o
//! /tmp/f32-step && /tmp/f32-step` (four rounds, f64 and f32 in alternating order, and
//! their ratio; each line also gives the mean number of active first-layer units).

use std::time::Instant;

macro_rules! step_impl {
    ($m:ident, $t:ty, $l:expr) => {
        mod $m {
            pub type T = $t;
            pub const L: usize = $l;
            #[inline(never)]
            fn row_sums(x: &[[T; L]], rows: [&[[T; L]]; 4]) -> [[T; L]; 4] {
                let n = x.len();
                let [r0, r1, r2, r3] = rows.map(|r| &r[..n]);
                let mut acc = [[0.0 as T; L]; 4];
                for i in 0..n {
                    let xs = x[i];
                    for (a, r) in acc.iter_mut().zip([r0[i], r1[i], r2[i], r3[i]]) {
                        let mut p = [0.0 as T; L];
                        for k in 0..L { p[k] = r[k] * xs[k]; }
                        for k in 0..L { a[k] += p[k]; }
                    }
                }
                acc
            }
            fn finish(acc: [T; L], ra: &[T], rb: &[T]) -> T {
                let tail: T = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
                let mut s = acc;
                let mut w = L;
                while w > 1 { w /= 2; for k in 0..w { s[k] += s[k + w]; } }
                s[0] + tail
            }
            pub fn dense(w: &[T], b: &[T], x: &[T], out: &mut Vec<T>) {
                out.clear();
                let cols = x.len();
                let body = cols / L * L;
                let (xb, xt) = x.split_at(body);
                let (xl, _) = xb.as_chunks::<L>();
                for (block, b4) in w[..b.len() * cols].chunks_exact(4 * cols).zip(b.chunks_exact(4)) {
                    let (w0, rest) = block.split_at(cols);
                    let (w1, rest) = rest.split_at(cols);
                    let (w2, w3) = rest.split_at(cols);
                    let acc = row_sums(xl, [w0, w1, w2, w3].map(|r| r[..body].as_chunks::<L>().0));
                    for (q, row) in [w0, w1, w2, w3].into_iter().enumerate() {
                        out.push(b4[q] + finish(acc[q], &row[body..], xt));
                    }
                }
            }
            pub fn axpy(a: T, x: &[T], y: &mut [T]) {
                for (y, x) in y.iter_mut().zip(x) { *y += a * x; }
            }
            pub fn axpy_rows(terms: &[(T, usize)], w: &[T], stride: usize, y: &mut [T]) {
                let cols = y.len();
                let row = |r: usize| &w[r * stride..r * stride + cols];
                let mut quads = terms.chunks_exact(4);
                for q in quads.by_ref() {
                    let (a0, a1, a2, a3) = (q[0].0, q[1].0, q[2].0, q[3].0);
                    for ((((y, x0), x1), x2), x3) in y.iter_mut().zip(row(q[0].1)).zip(row(q[1].1)).zip(row(q[2].1)).zip(row(q[3].1)) {
                        let mut s = *y; s += a0 * x0; s += a1 * x1; s += a2 * x2; s += a3 * x3; *y = s;
                    }
                }
                for &(a, r) in quads.remainder() { axpy(a, row(r), y); }
            }
            pub fn adam(p: &mut [T], m: &mut [T], v: &mut [T], g: &[T], n: T) {
                let (b1, b2, lr, eps) = (0.9 as T, 0.999 as T, 0.002 as T, 1e-8 as T);
                for (((p, m), v), g) in p.iter_mut().zip(m).zip(v).zip(g) {
                    let grad = *g / n;
                    *m = b1 * *m + (1.0 - b1) * grad;
                    *v = b2 * *v + (1.0 - b2) * grad * grad;
                    *p -= lr * *m / (v.sqrt() + eps);
                }
            }
            pub struct Model { pub w1: Vec<T>, pub b1: Vec<T>, pub w2: Vec<T>, pub b2: Vec<T>, pub m: Vec<T>, pub v: Vec<T> }
            pub const IN: usize = 75; pub const H1: usize = 64; pub const H2: usize = 32;
            /// One minibatch; returns a value that depends on the work (so it is not
            /// optimised away) and the number of active first-layer units.
            pub fn batch(model: &mut Model, xs: &[Vec<T>], dys: &[Vec<T>]) -> (T, usize) {
                let (w1l, w2l) = (H1 * IN, H2 * H1);
                let len = w1l + H1 + w2l + H2;
                let mut g = vec![0.0 as T; len];
                let (mut z1, mut z2) = (Vec::new(), Vec::new());
                let mut a1 = vec![0.0 as T; H1];
                let mut da1 = vec![0.0 as T; H1];
                let mut dx = vec![0.0 as T; 64];
                let mut active: Vec<(T, usize)> = Vec::new();
                let mut sink = 0.0 as T;
                let mut active_units = 0;
                for (x, dy) in xs.iter().zip(dys) {
                    dense(&model.w1, &model.b1, x, &mut z1);
                    for (a, z) in a1.iter_mut().zip(&z1) { *a = if *z > 0.0 { *z } else { 0.0 }; }
                    dense(&model.w2, &model.b2, &a1, &mut z2);
                    // backward
                    active.clear();
                    for k in 0..H2 { if z2[k] > 0.0 { active.push((dy[k], k)); } }
                    for &(dz, k) in &active {
                        g[w1l + H1 + w2l + k] += dz;
                        let row = w1l + H1 + k * H1;
                        axpy(dz, &a1, &mut g[row..row + H1]);
                    }
                    da1.iter_mut().for_each(|d| *d = 0.0);
                    axpy_rows(&active, &model.w2, H1, &mut da1);
                    active.clear();
                    for j in 0..H1 { if z1[j] > 0.0 { active.push((da1[j], j)); } }
                    active_units += active.len();
                    for &(dz, j) in &active {
                        g[w1l + j] += dz;
                        let row = j * IN;
                        axpy(dz, x, &mut g[row..row + IN]);
                    }
                    dx.iter_mut().for_each(|d| *d = 0.0);
                    axpy_rows(&active, &model.w1, IN, &mut dx);
                    sink += dx[0];
                }
                let n = xs.len() as T;
                let (p1, rest) = g.split_at(w1l);
                let (gb1, rest) = rest.split_at(H1);
                let (gw2, gb2) = rest.split_at(w2l);
                let mut off = 0;
                for (p, gg) in [(&mut model.w1, p1), (&mut model.b1, gb1), (&mut model.w2, gw2), (&mut model.b2, gb2)] {
                    let l = p.len();
                    adam(p, &mut model.m[off..off + l], &mut model.v[off..off + l], gg, n);
                    off += l;
                }
                (sink, active_units)
            }
        }
    };
}
step_impl!(f64m, f64, 4);
step_impl!(f32m, f32, 8);

struct Rng(u64);
impl Rng { fn next(&mut self) -> f64 { self.0 ^= self.0 << 13; self.0 ^= self.0 >> 7; self.0 ^= self.0 << 17; (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0 } }

macro_rules! run {
    ($m:ident, $name:expr) => {{
        use $m::*;
        let mut r = Rng(88172645463325252);
        let mut vecn = |n: usize, s: f64| (0..n).map(|_| (r.next() * s) as T).collect::<Vec<T>>();
        let mut model = Model { w1: vecn(H1 * IN, 0.15), b1: vecn(H1, 0.01), w2: vecn(H2 * H1, 0.2), b2: vecn(H2, 0.01), m: vec![0.0; H1*IN+H1+H2*H1+H2], v: vec![0.0; H1*IN+H1+H2*H1+H2] };
        let xs: Vec<Vec<T>> = (0..4096).map(|_| vecn(IN, 1.0)).collect();
        let dys: Vec<Vec<T>> = (0..4096).map(|_| vecn(H2, 0.1)).collect();
        let (mut sink, mut active) = (0.0 as T, 0usize);
        let t = Instant::now();
        let rounds = 40;
        for _ in 0..rounds {
            for (xb, yb) in xs.chunks(64).zip(dys.chunks(64)) {
                let (s, a) = batch(&mut model, xb, yb);
                sink += s;
                active += a;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let ex = (rounds * 4096) as f64;
        println!(
            "{}: {:.0} examples/s ({:.2} us each), {:.1} of {} first-layer units active (sink {})",
            $name, ex / secs, secs / ex * 1e6, active as f64 / ex, H1, sink as f64 != 0.12345
        );
        ex / secs
    }};
}
fn main() {
    // Alternating which runs first, so that neither always pays the warm-up.
    for round in 0..4 {
        let (a, b) = if round % 2 == 0 {
            let a = run!(f64m, "f64 x4 lanes");
            (a, run!(f32m, "f32 x8 lanes"))
        } else {
            let b = run!(f32m, "f32 x8 lanes");
            (run!(f64m, "f64 x4 lanes"), b)
        };
        println!("ratio f32/f64 {:.2}", b / a);
    }
}
