//! The drift statistics and detectors against an independent implementation: the vectors
//! in `tests/data/drift_reference.json` were computed with numpy, SciPy and River by
//! `scripts/make_drift_vectors.py` (versions and definitions in the file's `how_made`).
//! Every value must agree to 1e-9 (absolute, relative above 1); detectors must flag the
//! same indices. Failures name the case.

use serde::Deserialize;
use shopstream_drift::kolmogorov::kolmogorov_sf;
use shopstream_drift::{
    Adwin, PageHinkley, PageHinkleyConfig, PageHinkleyMode, chi2_homogeneity, jensen_shannon,
    ks_2samp, psi, wasserstein,
};

const TOL: f64 = 1e-9;

#[derive(Deserialize)]
struct File {
    how_made: serde_json::Value,
    continuous: Vec<Continuous>,
    categorical: Vec<Categorical>,
    kolmogorov: Vec<KolmogorovPoint>,
    detectors: Vec<DetectorCase>,
}

#[derive(Deserialize)]
struct Continuous {
    name: String,
    bins: usize,
    reference: Vec<f64>,
    current: Vec<f64>,
    psi: f64,
    ks_statistic: f64,
    ks_p_value: f64,
    wasserstein: f64,
}

#[derive(Deserialize)]
struct Categorical {
    name: String,
    p: Vec<f64>,
    q: Vec<f64>,
    js: f64,
    chi2_statistic: f64,
    chi2_dof: u64,
    chi2_p_value: f64,
}

#[derive(Deserialize)]
struct KolmogorovPoint {
    n: u64,
    x: f64,
    sf: f64,
}

#[derive(Deserialize)]
struct DetectorCase {
    name: String,
    stream: Vec<f64>,
    adwin_detections: Vec<usize>,
    adwin_final_width: u64,
    adwin_final_estimation: f64,
    page_hinkley_up: Vec<usize>,
    page_hinkley_down: Vec<usize>,
    page_hinkley_both: Vec<usize>,
}

fn load() -> File {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/drift_reference.json"
    );
    let text = std::fs::read_to_string(path).expect("reference file is readable");
    serde_json::from_str(&text).expect("reference file parses")
}

/// Collects a mismatch unless `got` is within 1e-9 of `want` (relative above 1).
fn check(failures: &mut Vec<String>, case: &str, what: &str, got: f64, want: f64) {
    let tol = TOL * want.abs().max(1.0);
    // NaN on either side fails too.
    let close = (got - want).abs() <= tol;
    if !close {
        failures.push(format!(
            "{case}: {what} = {got:e}, reference {want:e} (diff {:e})",
            got - want
        ));
    }
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn file_says_how_it_was_made() {
    let file = load();
    for key in ["numpy", "scipy", "river", "seed", "script"] {
        assert!(file.how_made.get(key).is_some(), "how_made lacks {key}");
    }
    assert!(file.continuous.len() + file.categorical.len() >= 30);
}

#[test]
fn psi_ks_and_wasserstein_match_numpy_and_scipy() {
    let file = load();
    let mut failures = Vec::new();
    for c in &file.continuous {
        let name = &c.name;
        match psi(&c.reference, &c.current, c.bins) {
            Ok(v) => check(&mut failures, name, "psi", v, c.psi),
            Err(e) => failures.push(format!("{name}: psi failed: {e}")),
        }
        match ks_2samp(&c.reference, &c.current) {
            Ok(r) => {
                check(
                    &mut failures,
                    name,
                    "ks statistic",
                    r.statistic,
                    c.ks_statistic,
                );
                check(&mut failures, name, "ks p-value", r.p_value, c.ks_p_value);
            }
            Err(e) => failures.push(format!("{name}: ks failed: {e}")),
        }
        match wasserstein(&c.reference, &c.current) {
            Ok(v) => check(&mut failures, name, "wasserstein", v, c.wasserstein),
            Err(e) => failures.push(format!("{name}: wasserstein failed: {e}")),
        }
    }
    report(&failures);
}

#[test]
fn jensen_shannon_and_chi2_match_scipy() {
    let file = load();
    let mut failures = Vec::new();
    for c in &file.categorical {
        let name = &c.name;
        match jensen_shannon(&c.p, &c.q) {
            Ok(v) => check(&mut failures, name, "js", v, c.js),
            Err(e) => failures.push(format!("{name}: js failed: {e}")),
        }
        match chi2_homogeneity(&c.p, &c.q) {
            Ok(r) => {
                check(
                    &mut failures,
                    name,
                    "chi2 statistic",
                    r.statistic,
                    c.chi2_statistic,
                );
                check(
                    &mut failures,
                    name,
                    "chi2 p-value",
                    r.p_value,
                    c.chi2_p_value,
                );
                if r.dof != c.chi2_dof {
                    failures.push(format!("{name}: dof {} vs {}", r.dof, c.chi2_dof));
                }
            }
            Err(e) => failures.push(format!("{name}: chi2 failed: {e}")),
        }
    }
    report(&failures);
}

#[test]
fn kolmogorov_distribution_matches_scipy_kstwo_on_every_branch() {
    let file = load();
    let mut failures = Vec::new();
    for p in &file.kolmogorov {
        let case = format!("kstwo n={} x={:e}", p.n, p.x);
        check(&mut failures, &case, "sf", kolmogorov_sf(p.n, p.x), p.sf);
    }
    report(&failures);
}

fn detections(stream: &[f64], mut update: impl FnMut(f64) -> bool) -> Vec<usize> {
    stream
        .iter()
        .enumerate()
        .filter_map(|(i, x)| update(*x).then_some(i))
        .collect()
}

#[test]
fn adwin_and_page_hinkley_flag_the_same_indices_as_river() {
    let file = load();
    let mut failures = Vec::new();
    for c in &file.detectors {
        let name = &c.name;
        let mut adwin = Adwin::default();
        let got = detections(&c.stream, |x| adwin.update(x));
        if got != c.adwin_detections {
            failures.push(format!(
                "{name}: adwin {got:?}, river {:?}",
                c.adwin_detections
            ));
        }
        if adwin.width() != c.adwin_final_width {
            failures.push(format!(
                "{name}: adwin width {}, river {}",
                adwin.width(),
                c.adwin_final_width
            ));
        }
        check(
            &mut failures,
            name,
            "adwin estimation",
            adwin.estimation(),
            c.adwin_final_estimation,
        );
        for (mode, want) in [
            (PageHinkleyMode::Up, &c.page_hinkley_up),
            (PageHinkleyMode::Down, &c.page_hinkley_down),
            (PageHinkleyMode::Both, &c.page_hinkley_both),
        ] {
            let mut ph = PageHinkley::new(PageHinkleyConfig {
                mode,
                ..PageHinkleyConfig::default()
            });
            let got = detections(&c.stream, |x| ph.update(x));
            if &got != want {
                failures.push(format!(
                    "{name}: page-hinkley {mode:?} {got:?}, river {want:?}"
                ));
            }
        }
    }
    report(&failures);
}
