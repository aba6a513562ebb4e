//! The joint multi-task, multi-scenario network, hand-written (DESIGN.md: a small MLP on
//! plain loops trains fastest here), with finite-difference gradient checks in the tests.
//!
//! ```text
//! hashed ids (user, item, category, scenario, device, hour, position, scenario x position)
//!   -> embedding rows (one shared table)      dense features -> running normalisation
//!   -> concat -> ReLU(W1 x + b1) -> ReLU(W2 h1 + b2)            shared bottom
//!   -> h2 * (1 + s[scenario])                                   scenario scaling (STAR-like)
//!   -> CTR logit c, CVR logit v, value r                        task heads
//! ```
//!
//! Losses (all in numerically stable log-sum-exp form):
//! - CTR: logistic loss of sigma(c) against `clicked`, over all impressions;
//! - CVR, ESMM style: logistic loss of pCTCVR = sigma(c) sigma(v) against `converted`, over
//!   all impressions, so pCVR = sigma(v) is learned over the entire impression space;
//! - value: `value_weight` * 1/2 (r - ln(1 + revenue))^2 on converted impressions.
//!
//! Training is minibatch Adam (lazy Adam for embedding rows); everything is `f64` and
//! seeded, so the same examples in the same order give bit-identical parameters.

use serde::{Deserialize, Serialize};

use crate::kernels::{Adam, adam, axpy, axpy_row_prefixes, axpy_rows, dense_layer, dot};

mod checkpoint_form;

/// Categorical fields hashed into the embedding table.
pub const FIELDS: usize = 8;
/// Dense inputs.
pub const DENSE: usize = 11;
/// Scenarios (the contract's five).
pub const SCENARIOS: usize = 5;
/// Dense inputs of the item-demand head.
pub const DEMAND_DENSE: usize = 5;
/// Demand log-rates are clamped here so exp() cannot overflow.
const MAX_LOG_RATE: f64 = 20.0;
const HEADS: usize = 3;

/// Sizes and optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct JointConfig {
    /// Embedding table rows = 2^bits.
    pub embedding_bits: u32,
    /// Embedding width per field.
    pub embedding_dim: usize,
    /// Width of the first shared layer.
    pub hidden1: usize,
    /// Width of the second shared layer.
    pub hidden2: usize,
    /// Adam step size.
    pub learning_rate: f64,
    /// Examples per Adam step.
    pub batch_size: usize,
    /// Weight of the value loss.
    pub value_weight: f64,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl Default for JointConfig {
    fn default() -> Self {
        Self {
            embedding_bits: 18,
            embedding_dim: 8,
            hidden1: 64,
            hidden2: 32,
            learning_rate: 0.002,
            batch_size: 64,
            value_weight: 0.1,
            seed: 42,
        }
    }
}

/// One example's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Embedding row of each field (already hashed and masked).
    pub ids: [usize; FIELDS],
    /// Raw dense features (normalised inside the model).
    pub dense: [f64; DENSE],
    /// Scenario index, 0..5.
    pub scenario: usize,
}

/// One example's labels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    /// Clicked.
    pub clicked: bool,
    /// Converted (implies clicked).
    pub converted: bool,
    /// ln(1 + revenue) of the conversion.
    pub log_revenue: f64,
}

/// One example's predictions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Output {
    /// P(click | impression).
    pub p_click: f64,
    /// P(conversion | click).
    pub p_cvr: f64,
    /// P(click and conversion | impression) = p_click x p_cvr.
    pub p_ctcvr: f64,
    /// Predicted ln(1 + revenue) given conversion.
    pub log_value: f64,
}

/// log(1 + e^x), stable.
pub fn softplus(x: f64) -> f64 {
    if x > 0.0 {
        x + (-x).exp().ln_1p()
    } else {
        x.exp().ln_1p()
    }
}

/// The logistic function, stable.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Sets `out` to the (value, index) of the non-zero `values`, in order. Which units of a
/// ReLU layer carry gradient is close to a coin toss per unit, so this writes every
/// value and advances only past the non-zero ones instead of branching on each.
fn gather_nonzero(values: impl ExactSizeIterator<Item = f64>, out: &mut Vec<(f64, usize)>) {
    // Every slot up to the last non-zero value is written below, and the rest cut off, so
    // what `out` held is never read: only the slots it lacks are filled.
    out.resize(values.len(), (0.0, 0));
    let mut n = 0;
    for (i, v) in values.enumerate() {
        out[n] = (v, i);
        n += usize::from(v != 0.0);
    }
    out.truncate(n);
}

/// The predictions of the forward pass held in `t`.
fn output_of(t: &Trace) -> Output {
    let (p_click, p_cvr) = (sigmoid(t.logits[0]), sigmoid(t.logits[1]));
    Output {
        p_click,
        p_cvr,
        p_ctcvr: p_click * p_cvr,
        log_value: t.logits[2],
    }
}

/// Logistic loss of logit `z` for label `y` and its derivative in `z`.
pub fn bce_logit(z: f64, y: bool) -> (f64, f64) {
    let loss = softplus(z) - if y { z } else { 0.0 };
    (loss, sigmoid(z) - if y { 1.0 } else { 0.0 })
}

/// ESMM loss: logistic loss of p = sigma(c) sigma(v) for label `y`, with derivatives in c
/// and v. Uses log p = -softplus(-c) - softplus(-v) and, since
/// 1 - p = (e^-c + e^-v + e^(-c-v)) / ((1 + e^-c)(1 + e^-v)),
/// log(1 - p) = logsumexp(-c, -v, -c-v) - softplus(-c) - softplus(-v).
pub fn esmm_loss(c: f64, v: f64, y: bool) -> (f64, f64, f64) {
    let (sc, sv) = (softplus(-c), softplus(-v));
    if y {
        return (sc + sv, -sigmoid(-c), -sigmoid(-v));
    }
    let (a, b) = (-c, -v);
    let m = a.max(b).max(a + b);
    let (ea, eb, eab) = ((a - m).exp(), (b - m).exp(), (a + b - m).exp());
    let sum = ea + eb + eab;
    let lse = m + sum.ln();
    let (wc, wv) = ((ea + eab) / sum, (eb + eab) / sum);
    (-(lse - sc - sv), wc - sigmoid(-c), wv - sigmoid(-v))
}

/// Running mean and variance (Welford), updated only by training, so prediction and
/// training see the same normalisation for the same history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Normaliser {
    count: f64,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Normaliser {
    fn new(n: usize) -> Self {
        Self {
            count: 0.0,
            mean: vec![0.0; n],
            m2: vec![0.0; n],
        }
    }

    fn observe(&mut self, x: &[f64]) {
        self.count += 1.0;
        for (i, v) in x.iter().enumerate() {
            let delta = v - self.mean[i];
            self.mean[i] += delta / self.count;
            self.m2[i] += delta * (v - self.mean[i]);
        }
    }

    fn apply(&self, x: &[f64], out: &mut [f64]) {
        for (i, v) in x.iter().enumerate() {
            let var = if self.count > 1.0 {
                self.m2[i] / (self.count - 1.0)
            } else {
                1.0
            };
            out[i] = ((v - self.mean[i]) / (var.sqrt() + 1e-6)).clamp(-8.0, 8.0);
        }
    }
}

/// Offsets of the dense parameter blocks in one flat vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Layout {
    input: usize,
    w1: usize,
    b1: usize,
    w2: usize,
    b2: usize,
    scen: usize,
    heads: usize,
    head_b: usize,
    len: usize,
}

impl Layout {
    fn new(c: &JointConfig) -> Self {
        let input = FIELDS * c.embedding_dim + DENSE;
        let w1 = 0;
        let b1 = w1 + c.hidden1 * input;
        let w2 = b1 + c.hidden1;
        let b2 = w2 + c.hidden2 * c.hidden1;
        let scen = b2 + c.hidden2;
        let heads = scen + SCENARIOS * c.hidden2;
        let head_b = heads + HEADS * c.hidden2;
        Self {
            input,
            w1,
            b1,
            w2,
            b2,
            scen,
            heads,
            head_b,
            len: head_b + HEADS,
        }
    }
}

/// Activations of one forward pass, kept for the backward pass.
#[derive(Debug, Clone, Default)]
struct Trace {
    x: Vec<f64>,
    z1: Vec<f64>,
    a1: Vec<f64>,
    z2: Vec<f64>,
    a2: Vec<f64>,
    s: Vec<f64>,
    logits: [f64; HEADS],
    // Backward scratch, reused across examples.
    ds: Vec<f64>,
    dz2: Vec<f64>,
    da1: Vec<f64>,
    dx: Vec<f64>,
    /// (gradient, row) of the units with a non-zero gradient, for [`axpy_rows`].
    active: Vec<(f64, usize)>,
}

/// Model parameters, optimiser state and normaliser: everything a checkpoint holds
/// (serialised as [`checkpoint_form`] writes it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "checkpoint_form::Read")]
pub struct JointModel {
    config: JointConfig,
    layout: Layout,
    params: Vec<f64>,
    embedding: Vec<f64>,
    adam_m: Vec<f64>,
    adam_v: Vec<f64>,
    emb_m: Vec<f64>,
    emb_v: Vec<f64>,
    normaliser: Normaliser,
    steps: u64,
    /// Item-demand head: weights over [item embedding row, normalised demand inputs], bias.
    demand: Vec<f64>,
    demand_m: Vec<f64>,
    demand_v: Vec<f64>,
    demand_normaliser: Normaliser,
    demand_steps: u64,
}

struct Gradients {
    params: Vec<f64>,
    /// Embedding rows used, in order of use ...
    rows: Vec<usize>,
    /// ... and their gradients, `dim` entries per use.
    row_grads: Vec<f64>,
}

/// The embedding table as [`JointModel::new`] draws it from `config.seed`: small values,
/// row after row.
fn initial_embedding(config: &JointConfig) -> impl Iterator<Item = f64> + use<> {
    let mut rng = shopstream_ingest::generator::rng::Rng::new(config.seed, 78);
    let values = (1usize << config.embedding_bits) * config.embedding_dim;
    (0..values).map(move |_| (rng.unit() * 2.0 - 1.0) * 0.05)
}

impl JointModel {
    /// A freshly initialised model (Xavier-uniform weights, small embeddings, zero biases
    /// and scenario scales), deterministic for `config.seed`.
    pub fn new(config: JointConfig) -> Self {
        let layout = Layout::new(&config);
        let mut rng = shopstream_ingest::generator::rng::Rng::new(config.seed, 77);
        let mut params = vec![0.0; layout.len];
        let mut xavier = |from: usize, rows: usize, cols: usize| {
            let bound = (6.0 / (rows + cols) as f64).sqrt();
            for p in &mut params[from..from + rows * cols] {
                *p = (rng.unit() * 2.0 - 1.0) * bound;
            }
        };
        xavier(layout.w1, config.hidden1, layout.input);
        xavier(layout.w2, config.hidden2, config.hidden1);
        xavier(layout.heads, HEADS, config.hidden2);
        let rows = 1usize << config.embedding_bits;
        let embedding = initial_embedding(&config).collect();
        Self {
            config,
            layout,
            adam_m: vec![0.0; layout.len],
            adam_v: vec![0.0; layout.len],
            emb_m: vec![0.0; rows * config.embedding_dim],
            emb_v: vec![0.0; rows * config.embedding_dim],
            params,
            embedding,
            normaliser: Normaliser::new(DENSE),
            steps: 0,
            demand: vec![0.0; config.embedding_dim + DEMAND_DENSE + 1],
            demand_m: vec![0.0; config.embedding_dim + DEMAND_DENSE + 1],
            demand_v: vec![0.0; config.embedding_dim + DEMAND_DENSE + 1],
            demand_normaliser: Normaliser::new(DEMAND_DENSE),
            demand_steps: 0,
        }
    }

    /// The demand head's log-rate for an item (embedding `row`) with raw inputs `dense`,
    /// and the normalised inputs it used.
    fn demand_logit(&self, row: usize, dense: &[f64; DEMAND_DENSE]) -> (f64, [f64; DEMAND_DENSE]) {
        let d = self.config.embedding_dim;
        let row = row % self.embedding_rows();
        let mut x = [0.0; DEMAND_DENSE];
        self.demand_normaliser.apply(dense, &mut x);
        let emb = &self.embedding[row * d..(row + 1) * d];
        let z = self.demand[d + DEMAND_DENSE]
            + dot(&self.demand[..d], emb)
            + dot(&self.demand[d..d + DEMAND_DENSE], &x);
        (z.min(MAX_LOG_RATE), x)
    }

    /// Expected units sold in the next window for an item.
    pub fn predict_demand(&self, row: usize, dense: &[f64; DEMAND_DENSE]) -> f64 {
        self.demand_logit(row, dense).0.exp()
    }

    /// Poisson loss (rate - units * log-rate; the log(units!) constant left out).
    pub fn demand_loss(&self, row: usize, dense: &[f64; DEMAND_DENSE], units: f64) -> f64 {
        let z = self.demand_logit(row, dense).0;
        z.exp() - units * z
    }

    /// One Adam step of the demand head (and the item embedding rows it reads) on the mean
    /// Poisson loss of `batch` = (embedding row, raw inputs, units sold); returns that loss.
    pub fn train_demand_batch(&mut self, batch: &[(usize, [f64; DEMAND_DENSE], f64)]) -> f64 {
        if batch.is_empty() {
            return 0.0;
        }
        for (_, dense, _) in batch {
            self.demand_normaliser.observe(dense);
        }
        let d = self.config.embedding_dim;
        let n = batch.len() as f64;
        let mut grad = vec![0.0; self.demand.len()];
        let mut rows: Vec<(usize, Vec<f64>)> = Vec::with_capacity(batch.len());
        let mut loss = 0.0;
        for (row, dense, units) in batch {
            let row = row % self.embedding_rows();
            let (z, x) = self.demand_logit(row, dense);
            let clamped = z >= MAX_LOG_RATE;
            loss += z.exp() - units * z;
            let dz = if clamped { 0.0 } else { z.exp() - units };
            let emb = &self.embedding[row * d..(row + 1) * d];
            axpy(dz, emb, &mut grad[..d]);
            axpy(dz, &x, &mut grad[d..d + DEMAND_DENSE]);
            grad[d + DEMAND_DENSE] += dz;
            rows.push((row, self.demand[..d].iter().map(|w| dz * w).collect()));
        }
        self.demand_steps += 1;
        let step = Adam::at_step(self.config.learning_rate, self.demand_steps as f64);
        adam(
            step,
            &mut self.demand,
            &mut self.demand_m,
            &mut self.demand_v,
            &grad,
            n,
        );
        rows.sort_by_key(|(row, _)| *row);
        for group in rows.chunk_by(|a, b| a.0 == b.0) {
            let row = group[0].0;
            for k in 0..d {
                let g = group.iter().map(|(_, v)| v[k]).sum::<f64>();
                let at = row * d + k;
                step.update(
                    &mut self.embedding[at],
                    &mut self.emb_m[at],
                    &mut self.emb_v[at],
                    g,
                    n,
                );
            }
        }
        loss / n
    }

    /// The configuration.
    pub fn config(&self) -> &JointConfig {
        &self.config
    }

    /// A copy that predicts exactly like this model, without the optimiser state (two
    /// thirds of the memory). Predicting needs only the parameters, embedding table,
    /// demand head and normalisers; training the copy would be wrong, so it is meant to
    /// be shared immutably (the serving side of the job never trains).
    pub fn serving_copy(&self) -> Self {
        self.serving_copy_around(self.embedding.clone())
    }

    /// Makes `copy` equal to a new [`JointModel::serving_copy`] of this model, reusing the
    /// memory of its embedding table: a job publishes a copy for serving after every
    /// window, and a fresh allocation of the table (17 MB by default) each time costs
    /// page faults and zeroing on the training thread.
    pub fn serving_copy_into(&self, copy: &mut Self) {
        let mut embedding = std::mem::take(&mut copy.embedding);
        embedding.clone_from(&self.embedding);
        *copy = self.serving_copy_around(embedding);
    }

    /// A serving copy of this model around `embedding`, which holds its table.
    fn serving_copy_around(&self, embedding: Vec<f64>) -> Self {
        Self {
            config: self.config,
            layout: self.layout,
            params: self.params.clone(),
            embedding,
            adam_m: Vec::new(),
            adam_v: Vec::new(),
            emb_m: Vec::new(),
            emb_v: Vec::new(),
            normaliser: self.normaliser.clone(),
            steps: self.steps,
            demand: self.demand.clone(),
            demand_m: Vec::new(),
            demand_v: Vec::new(),
            demand_normaliser: self.demand_normaliser.clone(),
            demand_steps: self.demand_steps,
        }
    }

    /// Rows of the embedding table (for hashing ids into it).
    pub fn embedding_rows(&self) -> usize {
        1 << self.config.embedding_bits
    }

    /// The dense inputs that normalise to 0: the running means of training.
    pub fn dense_means(&self) -> [f64; DENSE] {
        let mut means = [0.0; DENSE];
        for (m, v) in means.iter_mut().zip(&self.normaliser.mean) {
            *m = *v;
        }
        means
    }

    fn forward(&self, input: &Input, t: &mut Trace) {
        let c = &self.config;
        let l = &self.layout;
        let d = c.embedding_dim;
        t.x.clear();
        for id in input.ids {
            let row = id % self.embedding_rows();
            t.x.extend_from_slice(&self.embedding[row * d..(row + 1) * d]);
        }
        let mut dense = [0.0; DENSE];
        self.normaliser.apply(&input.dense, &mut dense);
        t.x.extend_from_slice(&dense);
        let p = &self.params;
        dense_layer(&p[l.w1..l.b1], &p[l.b1..l.w2], &t.x, &mut t.z1);
        t.a1.clear();
        t.a1.extend(t.z1.iter().map(|z| z.max(0.0)));
        dense_layer(&p[l.w2..l.b2], &p[l.b2..l.scen], &t.a1, &mut t.z2);
        t.a2.clear();
        t.a2.extend(t.z2.iter().map(|z| z.max(0.0)));
        let scale =
            &p[l.scen + input.scenario * c.hidden2..l.scen + (input.scenario + 1) * c.hidden2];
        t.s.clear();
        t.s.extend(t.a2.iter().zip(scale).map(|(a, s)| a * (1.0 + s)));
        for h in 0..HEADS {
            let w = &p[l.heads + h * c.hidden2..l.heads + (h + 1) * c.hidden2];
            t.logits[h] = p[l.head_b + h] + w.iter().zip(&t.s).map(|(w, s)| w * s).sum::<f64>();
        }
    }

    /// Predictions for one example from the current parameters.
    ///
    /// Serving calls this once per impression: the activation buffers are this thread's,
    /// reused from call to call, so that a prediction allocates nothing.
    pub fn predict(&self, input: &Input) -> Output {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Trace> = std::cell::RefCell::new(Trace::default());
        }
        SCRATCH.with(|trace| self.predict_with(input, &mut trace.borrow_mut()))
    }

    /// Predictions for many examples, reusing one set of activation buffers.
    pub fn predict_all<'a>(&self, inputs: impl IntoIterator<Item = &'a Input>) -> Vec<Output> {
        let mut trace = Trace::default();
        inputs
            .into_iter()
            .map(|x| self.predict_with(x, &mut trace))
            .collect()
    }

    fn predict_with(&self, input: &Input, t: &mut Trace) -> Output {
        self.forward(input, t);
        output_of(t)
    }

    /// Total loss of one example (for tests and evaluation).
    pub fn loss(&self, input: &Input, y: &Targets) -> f64 {
        let mut t = Trace::default();
        self.forward(input, &mut t);
        self.head_losses(&t, y).0
    }

    /// Loss and its derivatives in the three head outputs.
    fn head_losses(&self, t: &Trace, y: &Targets) -> (f64, [f64; HEADS]) {
        let [c, v, r] = t.logits;
        let (l_ctr, d_ctr) = bce_logit(c, y.clicked);
        let (l_esmm, dc, dv) = esmm_loss(c, v, y.converted);
        let (l_value, dr) = if y.converted {
            let e = r - y.log_revenue;
            (
                0.5 * self.config.value_weight * e * e,
                self.config.value_weight * e,
            )
        } else {
            (0.0, 0.0)
        };
        (l_ctr + l_esmm + l_value, [d_ctr + dc, dv, dr])
    }

    /// Adds the gradient of one example's loss to `g`; returns the loss.
    fn backward(&self, input: &Input, y: &Targets, t: &mut Trace, g: &mut Gradients) -> f64 {
        self.forward(input, t);
        let c = &self.config;
        let l = &self.layout;
        let p = &self.params;
        let (loss, dl) = self.head_losses(t, y);
        // Heads.
        let ds = &mut t.ds;
        ds.clear();
        ds.resize(c.hidden2, 0.0);
        for (h, dh) in dl.iter().enumerate() {
            let w = l.heads + h * c.hidden2;
            g.params[l.head_b + h] += dh;
            for (k, d) in ds.iter_mut().enumerate() {
                g.params[w + k] += dh * t.s[k];
                *d += dh * p[w + k];
            }
        }
        // Scenario scaling s = a2 * (1 + scale).
        let scale = l.scen + input.scenario * c.hidden2;
        let dz2 = &mut t.dz2;
        dz2.clear();
        dz2.resize(c.hidden2, 0.0);
        for k in 0..c.hidden2 {
            g.params[scale + k] += ds[k] * t.a2[k];
            let da2 = ds[k] * (1.0 + p[scale + k]);
            dz2[k] = if t.z2[k] > 0.0 { da2 } else { 0.0 };
        }
        // Second layer.
        let da1 = &mut t.da1;
        da1.clear();
        da1.resize(c.hidden1, 0.0);
        let active = &mut t.active;
        gather_nonzero(dz2.iter().copied(), active);
        for &(dz, k) in active.iter() {
            g.params[l.b2 + k] += dz;
            let row = l.w2 + k * c.hidden1;
            axpy(dz, &t.a1, &mut g.params[row..row + c.hidden1]);
        }
        axpy_rows(active, &p[l.w2..l.b2], da1);
        // First layer. Only the embedding part of the input takes a gradient (the dense
        // inputs' stops at the normaliser), so only those columns of W1^T dz1 are computed.
        let d = c.embedding_dim;
        let dx = &mut t.dx;
        dx.clear();
        dx.resize(FIELDS * d, 0.0);
        let relu_open = da1
            .iter()
            .zip(&t.z1)
            .map(|(da, z)| if *z > 0.0 { *da } else { 0.0 });
        gather_nonzero(relu_open, active);
        for &(dz, j) in active.iter() {
            g.params[l.b1 + j] += dz;
            let row = l.w1 + j * l.input;
            axpy(dz, &t.x, &mut g.params[row..row + l.input]);
        }
        axpy_row_prefixes(active, &p[l.w1..l.b1], l.input, dx);
        // Embedding rows.
        for (f, id) in input.ids.iter().enumerate() {
            g.rows.push(id % self.embedding_rows());
            g.row_grads.extend_from_slice(&dx[f * d..(f + 1) * d]);
        }
        loss
    }

    /// One Adam step on the mean loss of `batch`; returns that mean loss.
    pub fn train_batch(&mut self, batch: &[(Input, Targets)]) -> f64 {
        self.train_batch_with(batch, None)
    }

    /// Like [`JointModel::train_batch`], also appending to `scores` each example's
    /// predictions from the forward pass its gradient is taken at: the parameters before
    /// this step, with the batch's dense inputs already in the normaliser (features, never
    /// labels). Test-then-train at the cost of training alone.
    pub fn train_batch_scored(
        &mut self,
        batch: &[(Input, Targets)],
        scores: &mut Vec<Output>,
    ) -> f64 {
        self.train_batch_with(batch, Some(scores))
    }

    /// The first part of a training step: the batch's dense inputs go into the running
    /// normalisation that the step's forward passes (and later predictions) use.
    pub(crate) fn observe_inputs(&mut self, batch: &[(Input, Targets)]) {
        for (input, _) in batch {
            self.normaliser.observe(&input.dense);
        }
    }

    fn train_batch_with(
        &mut self,
        batch: &[(Input, Targets)],
        mut scores: Option<&mut Vec<Output>>,
    ) -> f64 {
        if batch.is_empty() {
            return 0.0;
        }
        self.observe_inputs(batch);
        let d = self.config.embedding_dim;
        let mut g = Gradients {
            params: vec![0.0; self.layout.len],
            rows: Vec::with_capacity(batch.len() * FIELDS),
            row_grads: Vec::with_capacity(batch.len() * FIELDS * d),
        };
        let mut trace = Trace::default();
        let mut loss = 0.0;
        for (input, y) in batch {
            loss += self.backward(input, y, &mut trace, &mut g);
            if let Some(scores) = scores.as_deref_mut() {
                scores.push(output_of(&trace));
            }
        }
        let n = batch.len() as f64;
        self.steps += 1;
        let step = Adam::at_step(self.config.learning_rate, self.steps as f64);
        adam(
            step,
            &mut self.params,
            &mut self.adam_m,
            &mut self.adam_v,
            &g.params,
            n,
        );
        // Lazy Adam for embeddings: sum the batch's gradient per row, in order of use,
        // then update those rows (each row's update reads only that row, so the order the
        // rows are updated in does not matter).
        let grouped = RowSums::of(&g.rows, &g.row_grads, d);
        for (row, sum) in grouped.rows.iter().zip(grouped.sums.chunks_exact(d)) {
            let at = row * d..(row + 1) * d;
            adam(
                step,
                &mut self.embedding[at.clone()],
                &mut self.emb_m[at.clone()],
                &mut self.emb_v[at],
                sum,
                n,
            );
        }
        loss / n
    }

    /// Every array of the model, by name, in the order of the model file format.
    pub fn blocks(&self) -> Vec<(&'static str, &[f64])> {
        vec![
            ("params", &self.params),
            ("embedding", &self.embedding),
            ("adam_m", &self.adam_m),
            ("adam_v", &self.adam_v),
            ("emb_m", &self.emb_m),
            ("emb_v", &self.emb_v),
            ("normaliser_mean", &self.normaliser.mean),
            ("normaliser_m2", &self.normaliser.m2),
            ("demand", &self.demand),
            ("demand_m", &self.demand_m),
            ("demand_v", &self.demand_v),
            ("demand_normaliser_mean", &self.demand_normaliser.mean),
            ("demand_normaliser_m2", &self.demand_normaliser.m2),
        ]
    }

    /// The scalar state next to the arrays: (Adam steps, demand steps, normaliser counts).
    pub fn counters(&self) -> (u64, u64, f64, f64) {
        (
            self.steps,
            self.demand_steps,
            self.normaliser.count,
            self.demand_normaliser.count,
        )
    }

    /// Rebuilds a model from `blocks` (as written by [`JointModel::blocks`]) and counters;
    /// `None` when a block is missing or has the wrong length for `config`.
    pub fn from_blocks(
        config: JointConfig,
        blocks: std::collections::BTreeMap<String, Vec<f64>>,
        counters: (u64, u64, f64, f64),
    ) -> Option<Self> {
        Self::build_from_blocks(config, blocks, counters, false)
    }

    /// Like [`JointModel::from_blocks`] for a [`JointModel::serving_copy`]'s blocks (its
    /// optimiser blocks empty): a model to predict with, never to train.
    pub fn serving_from_blocks(
        config: JointConfig,
        blocks: std::collections::BTreeMap<String, Vec<f64>>,
        counters: (u64, u64, f64, f64),
    ) -> Option<Self> {
        Self::build_from_blocks(config, blocks, counters, true)
    }

    fn build_from_blocks(
        config: JointConfig,
        mut blocks: std::collections::BTreeMap<String, Vec<f64>>,
        counters: (u64, u64, f64, f64),
        serving: bool,
    ) -> Option<Self> {
        let mut model = JointModel::new(config);
        let mut take = |name: &str, len: usize| -> Option<Vec<f64>> {
            blocks.remove(name).filter(|b| b.len() == len)
        };
        let (p, e, d) = (
            model.params.len(),
            model.embedding.len(),
            model.demand.len(),
        );
        // A serving copy's optimiser blocks are empty.
        let (op, oe, od) = if serving { (0, 0, 0) } else { (p, e, d) };
        model.params = take("params", p)?;
        model.embedding = take("embedding", e)?;
        model.adam_m = take("adam_m", op)?;
        model.adam_v = take("adam_v", op)?;
        model.emb_m = take("emb_m", oe)?;
        model.emb_v = take("emb_v", oe)?;
        model.normaliser.mean = take("normaliser_mean", DENSE)?;
        model.normaliser.m2 = take("normaliser_m2", DENSE)?;
        model.demand = take("demand", d)?;
        model.demand_m = take("demand_m", od)?;
        model.demand_v = take("demand_v", od)?;
        model.demand_normaliser.mean = take("demand_normaliser_mean", DEMAND_DENSE)?;
        model.demand_normaliser.m2 = take("demand_normaliser_m2", DEMAND_DENSE)?;
        (
            model.steps,
            model.demand_steps,
            model.normaliser.count,
            model.demand_normaliser.count,
        ) = counters;
        Some(model)
    }

    /// Parameters, optimiser state and normaliser as bytes (identity checks, checkpoints).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for block in [
            &self.params,
            &self.embedding,
            &self.adam_m,
            &self.adam_v,
            &self.emb_m,
            &self.emb_v,
            &self.normaliser.mean,
            &self.normaliser.m2,
        ] {
            for v in block.iter() {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.normaliser.count.to_le_bytes());
        out.extend_from_slice(&self.steps.to_le_bytes());
        out.extend_from_slice(&self.demand_normaliser.count.to_le_bytes());
        out.extend_from_slice(&self.demand_steps.to_le_bytes());
        out
    }
}

/// A batch's embedding gradients summed per row: each row once, in order of its first use,
/// its sum `0.0 + g1 + g2 + ...` over its uses in order (the sums a sort by row, stable
/// per row, would make).
struct RowSums {
    rows: Vec<usize>,
    /// `dim` entries per row of `rows`.
    sums: Vec<f64>,
}

impl RowSums {
    /// `rows[i]` is use `i`'s row and `grads[i * dim..(i + 1) * dim]` its gradient.
    fn of(rows: &[usize], grads: &[f64], dim: usize) -> Self {
        debug_assert_eq!(
            grads.len(),
            rows.len() * dim,
            "one gradient of `dim` per use"
        );
        // Open addressing over twice as many slots as uses, so that a use finds its row
        // in about one probe: cheaper than sorting the batch's uses by row.
        let bits = (2 * rows.len()).max(2).next_power_of_two().trailing_zeros();
        let mask = (1usize << bits) - 1;
        let mut table = vec![usize::MAX; 1 << bits];
        let mut out = Self {
            rows: Vec::with_capacity(rows.len()),
            sums: Vec::with_capacity(grads.len()),
        };
        for (row, grad) in rows.iter().zip(grads.chunks_exact(dim)) {
            let hash = (*row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits);
            let mut at = hash as usize & mask;
            let index = loop {
                match table[at] {
                    usize::MAX => {
                        table[at] = out.rows.len();
                        out.rows.push(*row);
                        out.sums.resize(out.sums.len() + dim, 0.0);
                        break out.rows.len() - 1;
                    }
                    i if out.rows[i] == *row => break i,
                    _ => at = (at + 1) & mask,
                }
            };
            for (s, v) in out.sums[index * dim..(index + 1) * dim]
                .iter_mut()
                .zip(grad)
            {
                *s += v;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> JointModel {
        let mut model = JointModel::new(JointConfig {
            embedding_bits: 5,
            embedding_dim: 3,
            hidden1: 6,
            hidden2: 4,
            ..JointConfig::default()
        });
        // Non-zero scales and biases so every path carries gradient.
        let l = model.layout;
        let mut rng = shopstream_ingest::generator::rng::Rng::new(9, 1);
        for p in &mut model.params[l.b1..l.len] {
            if *p == 0.0 {
                *p = (rng.unit() - 0.5) * 0.6;
            }
        }
        for i in 0..40 {
            let dense: [f64; DENSE] = std::array::from_fn(|k| (i * 7 + k) as f64 % 5.0);
            model.normaliser.observe(&dense);
        }
        model
    }

    fn examples() -> Vec<(Input, Targets)> {
        let mk = |seed: usize, clicked: bool, converted: bool| {
            (
                Input {
                    ids: std::array::from_fn(|f| (seed * 13 + f * 5) % 32),
                    dense: std::array::from_fn(|k| ((seed + k) % 4) as f64 - 1.5),
                    scenario: seed % SCENARIOS,
                },
                Targets {
                    clicked,
                    converted,
                    log_revenue: 2.5,
                },
            )
        };
        vec![
            mk(1, false, false),
            mk(2, true, false),
            mk(3, true, true),
            mk(4, true, true),
        ]
    }

    /// Central finite difference of `loss` in the parameter `which` points at.
    fn central(
        model: &mut JointModel,
        which: &mut dyn FnMut(&mut JointModel) -> &mut f64,
        loss: &dyn Fn(&JointModel) -> f64,
    ) -> f64 {
        let h = 1e-6;
        let orig = *which(model);
        *which(model) = orig + h;
        let plus = loss(model);
        *which(model) = orig - h;
        let minus = loss(model);
        *which(model) = orig;
        (plus - minus) / (2.0 * h)
    }

    /// Central finite difference of an example's loss in one parameter.
    fn numeric(
        model: &mut JointModel,
        which: &mut dyn FnMut(&mut JointModel) -> &mut f64,
        x: &Input,
        y: &Targets,
    ) -> f64 {
        central(model, which, &|m| m.loss(x, y))
    }

    fn close(analytic: f64, numeric: f64) -> bool {
        (analytic - numeric).abs() <= 1e-5 * (1.0 + analytic.abs().max(numeric.abs()))
    }

    #[test]
    fn gradients_of_every_layer_match_finite_differences() {
        let mut model = tiny();
        let l = model.layout;
        for (x, y) in examples() {
            let mut g = Gradients {
                params: vec![0.0; l.len],
                rows: Vec::new(),
                row_grads: Vec::new(),
            };
            model.backward(&x, &y, &mut Trace::default(), &mut g);
            let blocks = [
                ("w1", l.w1, l.b1),
                ("b1", l.b1, l.w2),
                ("w2", l.w2, l.b2),
                ("b2", l.b2, l.scen),
                ("scenario scale", l.scen, l.heads),
                ("heads", l.heads, l.head_b),
                ("head biases", l.head_b, l.len),
            ];
            for (name, from, to) in blocks {
                for i in from..to {
                    let n = numeric(&mut model, &mut |m| &mut m.params[i], &x, &y);
                    assert!(
                        close(g.params[i], n),
                        "{name}[{}]: analytic {} numeric {n}",
                        i - from,
                        g.params[i]
                    );
                }
            }
            let d = model.config.embedding_dim;
            let mut by_row: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
            for (use_index, row) in g.rows.iter().enumerate() {
                let grad = &g.row_grads[use_index * d..(use_index + 1) * d];
                let sum = by_row.entry(*row).or_insert_with(|| vec![0.0; d]);
                sum.iter_mut().zip(grad).for_each(|(s, v)| *s += v);
            }
            for (row, grad) in by_row {
                for (k, analytic) in grad.iter().enumerate() {
                    let n = numeric(&mut model, &mut |m| &mut m.embedding[row * d + k], &x, &y);
                    assert!(
                        close(*analytic, n),
                        "embedding[{row}][{k}]: analytic {analytic} numeric {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn gather_nonzero_keeps_the_nonzero_values_in_order_with_their_indices() {
        let mut out = vec![(9.0, 9); 3];
        gather_nonzero([0.0, 1.5, -0.0, -2.0, 0.0, 3.0].into_iter(), &mut out);
        assert_eq!(out, vec![(1.5, 1), (-2.0, 3), (3.0, 5)]);
        gather_nonzero([0.0; 4].into_iter(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn loss_derivatives_match_finite_differences() {
        let h = 1e-6;
        for &(c, v) in &[(0.3, -1.2), (-4.0, 2.0), (8.0, 8.0), (-30.0, -30.0)] {
            for y in [false, true] {
                let (_, dc, dv) = esmm_loss(c, v, y);
                let nc = (esmm_loss(c + h, v, y).0 - esmm_loss(c - h, v, y).0) / (2.0 * h);
                let nv = (esmm_loss(c, v + h, y).0 - esmm_loss(c, v - h, y).0) / (2.0 * h);
                assert!(
                    close(dc, nc) && close(dv, nv),
                    "esmm c={c} v={v} y={y}: ({dc},{dv}) vs ({nc},{nv})"
                );
                let (_, dz) = bce_logit(c, y);
                let nz = (bce_logit(c + h, y).0 - bce_logit(c - h, y).0) / (2.0 * h);
                assert!(close(dz, nz), "bce z={c} y={y}");
            }
        }
    }

    #[test]
    fn losses_stay_finite_at_extreme_logits() {
        for z in [-800.0, -40.0, 0.0, 40.0, 800.0] {
            for y in [false, true] {
                assert!(bce_logit(z, y).0.is_finite());
                let (l, dc, dv) = esmm_loss(z, -z, y);
                assert!(
                    l.is_finite() && dc.is_finite() && dv.is_finite(),
                    "z={z} y={y}"
                );
            }
        }
        // p = sigma(c) sigma(v) is exactly what the loss sees.
        let (c, v) = (0.7, -0.4);
        let p = sigmoid(c) * sigmoid(v);
        assert!((esmm_loss(c, v, true).0 + p.ln()).abs() < 1e-12);
        assert!((esmm_loss(c, v, false).0 + (1.0 - p).ln()).abs() < 1e-12);
    }

    /// Guards the copy the job publishes for serving after a window: made into the
    /// memory of an older copy, it must equal a new copy field for field (a field left
    /// out of `serving_copy_into` would serve with stale parameters).
    #[test]
    fn a_serving_copy_made_into_an_older_one_equals_a_new_copy_and_keeps_its_memory() {
        let mut model = tiny();
        let mut reused = model.serving_copy();
        let table = reused.embedding.as_ptr();
        for batch in examples().chunks(2) {
            model.train_batch(batch);
        }
        let demand: Vec<(usize, [f64; DEMAND_DENSE], f64)> = (0..8)
            .map(|i| (i % 3, [f64::from(i as u8); DEMAND_DENSE], 2.0))
            .collect();
        model.train_demand_batch(&demand);
        let fresh = model.serving_copy();
        assert_ne!(reused, fresh, "training changed what serving sees");
        model.serving_copy_into(&mut reused);
        assert_eq!(reused, fresh);
        assert_eq!(
            reused.embedding.as_ptr(),
            table,
            "the table's memory is reused"
        );
        // Into a model of another shape, optimiser state and all: the same copy.
        let mut other = JointModel::new(JointConfig {
            embedding_bits: 4,
            ..JointConfig::default()
        });
        model.serving_copy_into(&mut other);
        assert_eq!(other, fresh);
    }

    #[test]
    fn training_is_deterministic_and_lowers_the_loss() {
        let data: Vec<(Input, Targets)> = examples().into_iter().cycle().take(256).collect();
        let run = || {
            let mut m = JointModel::new(JointConfig {
                embedding_bits: 6,
                learning_rate: 0.01,
                batch_size: 16,
                ..JointConfig::default()
            });
            let first = data.iter().map(|(x, y)| m.loss(x, y)).sum::<f64>();
            for _ in 0..20 {
                for batch in data.chunks(16) {
                    m.train_batch(batch);
                }
            }
            let last = data.iter().map(|(x, y)| m.loss(x, y)).sum::<f64>();
            (m.to_bytes(), first, last)
        };
        let (a, first, last) = run();
        let (b, _, _) = run();
        assert_eq!(a, b, "same data, same seed, same bytes");
        assert!(last < first * 0.5, "loss {first} -> {last}");
    }

    /// Guards the prequential scores of a training step: each is the prediction of the
    /// parameters before the step (the batch's dense inputs in the normaliser), and
    /// scoring changes nothing the step learns.
    #[test]
    fn a_scored_step_predicts_each_example_with_the_parameters_before_it_and_learns_the_same() {
        let data: Vec<(Input, Targets)> = examples().into_iter().cycle().take(24).collect();
        let config = JointConfig {
            embedding_bits: 6,
            learning_rate: 0.01,
            ..JointConfig::default()
        };
        let mut plain = JointModel::new(config);
        let mut scored = JointModel::new(config);
        let mut scores = Vec::new();
        for batch in data.chunks(8) {
            let mut before = scored.clone();
            before.observe_inputs(batch);
            let from = scores.len();
            let loss = scored.train_batch_scored(batch, &mut scores);
            assert_eq!(loss.to_bits(), plain.train_batch(batch).to_bits());
            assert_eq!(scores.len(), from + batch.len());
            for ((input, _), got) in batch.iter().zip(&scores[from..]) {
                assert_eq!(*got, before.predict(input));
            }
        }
        assert_eq!(scored.to_bytes(), plain.to_bytes());
        // Later batches are scored by a model that has learned from the earlier ones.
        assert_ne!(scores[0], scores[8], "the same example, one step later");
    }

    #[test]
    fn demand_head_gradients_match_finite_differences() {
        let mut model = tiny();
        for (i, w) in model.demand.iter_mut().enumerate() {
            *w = ((i * 7) % 5) as f64 * 0.1 - 0.2;
        }
        for i in 0..10 {
            let dense: [f64; DEMAND_DENSE] = std::array::from_fn(|k| ((i + k) % 3) as f64);
            model.demand_normaliser.observe(&dense);
        }
        let d = model.config.embedding_dim;
        for (row, units) in [(3usize, 0.0), (7, 2.0), (11, 5.0)] {
            let dense: [f64; DEMAND_DENSE] = std::array::from_fn(|k| (row + k) as f64 % 4.0);
            // Analytic gradient as train_demand_batch computes it, for one example.
            let (z, x) = model.demand_logit(row, &dense);
            let dz = z.exp() - units;
            let emb = model.embedding[row * d..(row + 1) * d].to_vec();
            let mut analytic: Vec<f64> = emb.iter().map(|e| dz * e).collect();
            analytic.extend(x.iter().map(|x| dz * x));
            analytic.push(dz);
            let loss = |m: &JointModel| m.demand_loss(row, &dense, units);
            for (i, a) in analytic.iter().enumerate() {
                let numeric = central(&mut model, &mut |m| &mut m.demand[i], &loss);
                assert!(
                    close(*a, numeric),
                    "demand weight {i}: analytic {a} numeric {numeric}"
                );
            }
            for k in 0..d {
                let analytic = dz * model.demand[k];
                let numeric = central(&mut model, &mut |m| &mut m.embedding[row * d + k], &loss);
                assert!(
                    close(analytic, numeric),
                    "item embedding {k}: analytic {analytic} numeric {numeric}"
                );
            }
        }
    }

    #[test]
    fn demand_head_learns_rates() {
        let mut model = JointModel::new(JointConfig {
            embedding_bits: 6,
            learning_rate: 0.05,
            ..JointConfig::default()
        });
        let batch: Vec<(usize, [f64; DEMAND_DENSE], f64)> = (0..64)
            .map(|i| {
                let fast = i % 2 == 0;
                (
                    if fast { 1 } else { 2 },
                    [f64::from(u8::from(fast)); DEMAND_DENSE],
                    if fast { 6.0 } else { 0.0 },
                )
            })
            .collect();
        for _ in 0..400 {
            model.train_demand_batch(&batch);
        }
        let fast = model.predict_demand(1, &[1.0; DEMAND_DENSE]);
        let slow = model.predict_demand(2, &[0.0; DEMAND_DENSE]);
        assert!(
            (fast - 6.0).abs() < 1.0 && slow < 0.5,
            "fast {fast} slow {slow}"
        );
    }

    /// Guards the embedding update's grouping: per row, the same sums (bit for bit) as
    /// sorting the uses by row and adding each row's gradients in order of use, for rows
    /// used once, rows used many times (a batch's scenario and hour rows), and zeros of
    /// both signs.
    #[test]
    fn row_sums_match_sorting_the_uses_by_row() {
        let mut rng = shopstream_ingest::generator::rng::Rng::new(5, 3);
        for (uses, distinct, dim) in [
            (0, 1, 3),
            (1, 1, 8),
            (512, 40, 8),
            (512, 600, 8),
            (97, 5, 3),
        ] {
            let rows: Vec<usize> = (0..uses)
                .map(|_| (rng.unit() * distinct as f64) as usize * 7919)
                .collect();
            let grads: Vec<f64> = (0..uses * dim)
                .map(|i| match i % 11 {
                    0 => -0.0,
                    1 => 0.0,
                    k => (rng.unit() - 0.5) * 10f64.powi(k as i32 - 6),
                })
                .collect();
            let grouped = RowSums::of(&rows, &grads, dim);
            // The former grouping: uses sorted by (row, use), summed from 0.0 per row.
            let mut sorted: Vec<(usize, usize)> = rows
                .iter()
                .copied()
                .enumerate()
                .map(|(i, r)| (r, i))
                .collect();
            sorted.sort_unstable();
            let mut expected: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
            for (row, i) in sorted {
                let sum = expected.entry(row).or_insert_with(|| vec![0.0; dim]);
                for (s, v) in sum.iter_mut().zip(&grads[i * dim..(i + 1) * dim]) {
                    *s += v;
                }
            }
            assert_eq!(grouped.rows.len(), expected.len(), "{uses} uses");
            for (k, row) in grouped.rows.iter().enumerate() {
                let got: Vec<u64> = grouped.sums[k * dim..(k + 1) * dim]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let want: Vec<u64> = expected[row].iter().map(|v| v.to_bits()).collect();
                assert_eq!(got, want, "row {row} of {uses} uses");
            }
            // Each row once, in order of first use.
            let mut seen = std::collections::HashSet::new();
            let order: Vec<usize> = rows.iter().copied().filter(|r| seen.insert(*r)).collect();
            assert_eq!(grouped.rows, order);
        }
    }
}
