"""Reference vectors for the drift statistics in drift/src, computed by independent
implementations (numpy, scipy and river), written to drift/tests/data/drift_reference.json.

usage: python scripts/make_drift_vectors.py [OUT.json]
Needs `pip install numpy scipy river` (made with numpy 2.4.6, scipy 1.17.1, river 0.26.1 on
CPython 3.11; the exact versions used are recorded in the file's "how_made" key). Every
sample comes from numpy.random.default_rng(20260105 + case number), so re-running the script
with the same versions gives a byte-identical file. The Rust test
drift/tests/drift_reference.rs loads the file and checks every value to 1e-9.

What each expected value is, exactly:

- psi: interior bin edges are numpy.quantile(reference, i / bins, method="linear") for
  i = 1..bins-1, deduplicated (numpy.unique); a value's bin is
  numpy.searchsorted(edges, x, side="right") (the number of edges <= x); proportions are
  count / n, floored at 1e-4 (as Evidently does), not renormalised;
  psi = sum((cur - ref) * ln(cur / ref)). Non-finite values are dropped from both samples
  before anything else (the cases here hold finite values only).
- ks_statistic, ks_p_value: scipy.stats.ks_2samp(reference, current, method="asymp")
  (two-sided), i.e. D and kstwo.sf(D, round(n1 n2 / (n1 + n2))).
- wasserstein: scipy.stats.wasserstein_distance(reference, current).
- js: scipy.spatial.distance.jensenshannon(p, q, base=2) on the count vectors (the
  distance, in [0, 1]).
- chi2_*: scipy.stats.chi2_contingency([p, q], correction=False) after dropping the
  categories that are empty in both rows (scipy refuses zero expected counts).
- kolmogorov: scipy.stats.kstwo.sf(x, n), on a grid that reaches every branch of scipy's
  Simard-L'Ecuyer dispatch (Ruben-Gambino ends, Durbin matrix, Pomeranz, Pelz-Good,
  2 x Smirnov).
- detectors: the indices (0-based) at which river.drift.ADWIN() and
  river.drift.PageHinkley(mode=...) report drift on a stream, plus ADWIN's final width and
  estimation. Stream values are rounded to 6 decimals so the JSON holds them exactly.
"""

import json
import platform
import sys

import numpy as np
import scipy
import scipy.stats as st
from scipy.spatial.distance import jensenshannon

import river
from river import drift as river_drift

SEED = 20260105
PSI_FLOOR = 1e-4


def finite(x):
    x = np.asarray(x, dtype=float)
    return x[np.isfinite(x)]


def psi(reference, current, bins):
    reference = finite(reference)
    current = finite(current)
    quantiles = np.array([i / bins for i in range(1, bins)], dtype=float)
    edges = np.unique(np.quantile(reference, quantiles, method="linear"))
    nb = len(edges) + 1
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=nb)
    c = np.bincount(np.searchsorted(edges, current, side="right"), minlength=nb)
    r = np.maximum(r / len(reference), PSI_FLOOR)
    c = np.maximum(c / len(current), PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def r6(x):
    """Rounds to 6 decimals and returns Python floats (repr round-trips in JSON)."""
    return [float(v) for v in np.round(np.asarray(x, dtype=float), 6)]


def continuous_cases():
    cases = []

    def add(name, make, bins=10):
        rng = np.random.default_rng(SEED + len(cases))
        reference, current = make(rng)
        reference, current = r6(reference), r6(current)
        ks = st.ks_2samp(reference, current, method="asymp")
        cases.append(
            {
                "name": name,
                "bins": bins,
                "reference": reference,
                "current": current,
                "psi": psi(reference, current, bins),
                "ks_statistic": float(ks.statistic),
                "ks_p_value": float(ks.pvalue),
                "wasserstein": float(st.wasserstein_distance(reference, current)),
            }
        )

    add("normal_same_n500", lambda g: (g.normal(0, 1, 500), g.normal(0, 1, 500)))
    add("normal_shift_0.1_n1000", lambda g: (g.normal(0, 1, 1000), g.normal(0.1, 1, 1000)))
    add("normal_shift_0.5_n1000", lambda g: (g.normal(0, 1, 1000), g.normal(0.5, 1, 1000)))
    add("normal_scale_1.5_n800", lambda g: (g.normal(0, 1, 800), g.normal(0, 1.5, 800)))
    add("small_n20_vs_n25_shift", lambda g: (g.normal(0, 1, 20), g.normal(0.8, 1, 25)))
    add("small_n30_vs_n50", lambda g: (g.normal(10, 2, 30), g.normal(10, 2, 50)))
    add("small_n50_vs_n50_shift", lambda g: (g.normal(0, 1, 50), g.normal(1.0, 1, 50)))
    add("tiny_n5_vs_n7", lambda g: (g.normal(0, 1, 5), g.normal(0.3, 1, 7)), bins=4)
    add("large_n5000_shift_0.05", lambda g: (g.normal(0, 1, 5000), g.normal(0.05, 1, 5000)))
    add("large_n5000_vs_n4000_same", lambda g: (g.normal(0, 1, 5000), g.normal(0, 1, 4000)))
    add(
        "reference_10000_vs_window_450",
        lambda g: (g.normal(3, 1, 10000), g.normal(3.05, 1, 450)),
    )
    add(
        "ties_poisson_3_vs_3.3",
        lambda g: (g.poisson(3.0, 800).astype(float), g.poisson(3.3, 800).astype(float)),
    )
    add(
        "ties_positions_geometric",
        lambda g: (
            np.minimum(g.geometric(0.15, 1500) - 1, 30).astype(float),
            np.minimum(g.geometric(0.12, 600) - 1, 30).astype(float),
        ),
    )
    add("constant_reference", lambda g: (np.full(300, 5.0), g.normal(5.0, 0.5, 200)))
    add("constant_both_equal", lambda g: (np.full(100, 2.5), np.full(80, 2.5)))
    add("constant_both_different", lambda g: (np.full(100, 2.5), np.full(80, 3.5)))
    add(
        "lognormal_prices_shock_1.6",
        lambda g: (
            np.round(g.lognormal(3.5, 0.8, 2000), 2),
            np.round(g.lognormal(3.5, 0.8, 1500) * 1.6, 2),
        ),
    )
    add(
        "lognormal_prices_same_cents",
        lambda g: (np.round(g.lognormal(3.5, 0.8, 3000), 2), np.round(g.lognormal(3.5, 0.8, 700), 2)),
    )
    add(
        "identical_samples",
        lambda g: (lambda x: (x, x.copy()))(g.normal(0, 1, 400)),
    )
    add(
        "bernoulli_0.2_vs_0.3",
        lambda g: (g.binomial(1, 0.2, 1000).astype(float), g.binomial(1, 0.3, 900).astype(float)),
    )
    add("heavy_tails_student_t2", lambda g: (g.standard_t(2, 1200), g.standard_t(2, 1200) + 0.2))
    add("disjoint_supports", lambda g: (g.uniform(0, 1, 60), g.uniform(2, 3, 40)))
    add("mostly_disjoint_n300", lambda g: (g.normal(0, 1, 300), g.normal(2.5, 1, 300)))
    add("mixture_bins5", lambda g: (
        np.concatenate([g.normal(-2, 0.5, 400), g.normal(2, 0.5, 400)]),
        np.concatenate([g.normal(-2, 0.5, 200), g.normal(2, 0.5, 500)]),
    ), bins=5)
    add("normal_bins20", lambda g: (g.normal(0, 1, 2000), g.normal(0.2, 1.1, 2000)), bins=20)
    add("ratios_in_0_1_beta", lambda g: (g.beta(2, 30, 1500), g.beta(2, 25, 500)))
    return cases


def categorical_cases():
    cases = []

    def add(name, p, q):
        p = [float(v) for v in p]
        q = [float(v) for v in q]
        keep = [i for i in range(len(p)) if p[i] + q[i] > 0]
        table = np.array([[p[i] for i in keep], [q[i] for i in keep]])
        chi2, pval, dof, _ = st.chi2_contingency(table, correction=False)
        cases.append(
            {
                "name": name,
                "p": p,
                "q": q,
                "js": float(jensenshannon(p, q, base=2)),
                "chi2_statistic": float(chi2),
                "chi2_dof": int(dof),
                "chi2_p_value": float(pval),
            }
        )

    rng = np.random.default_rng(SEED + 1000)
    add("scenarios_same", [450, 300, 150, 60, 40], [430, 310, 160, 55, 45])
    add("scenarios_shifted", [450, 300, 150, 60, 40], [250, 300, 150, 160, 140])
    add("zero_cell_in_current", [100, 50, 25, 10], [120, 0, 30, 12])
    add("new_category_in_current", [100, 50, 25, 0], [90, 45, 20, 30])
    add("zero_in_both", [100, 0, 25, 10], [80, 0, 35, 9])
    add("identical", [7, 3, 1], [7, 3, 1])
    add("proportional", [70, 30, 10], [7, 3, 1])
    add("disjoint", [10, 0], [0, 10])
    add("devices_large", [52000, 31000, 17000], [50500, 32500, 17000])
    add(
        "categories_40_small",
        list(rng.multinomial(450, np.ones(40) / 40)),
        list(rng.multinomial(450, np.ones(40) / 40)),
    )
    weights = rng.dirichlet(np.ones(40))
    add(
        "categories_40_reference_vs_window",
        list(rng.multinomial(5400, weights)),
        list(rng.multinomial(450, rng.dirichlet(np.ones(40) * 5) * 0.3 + weights * 0.7)),
    )
    add("two_categories", [900, 100], [850, 150])
    return cases


def kolmogorov_grid():
    out = []
    for n in [1, 2, 3, 5, 10, 20, 50, 100, 140, 141, 200, 500, 1000, 2500, 10000, 100001]:
        xs = [
            0.45 / n,
            0.75 / n,
            1.0 / n,
            1.5 / n,
            np.sqrt(0.3 / n),
            np.sqrt(0.7 / n),
            np.sqrt(1.0 / n),
            np.sqrt(1.5 / n),
            np.sqrt(2.0 / n),
            np.sqrt(3.0 / n),
            np.sqrt(5.0 / n),
            np.sqrt(10.0 / n),
            np.sqrt(20.0 / n),
            0.05,
            0.3,
            0.5,
            0.6,
            (n - 1) / n + 0.5 / n,
            0.999,
        ]
        if n > 140:
            xs.append((1.4 / n) ** (2.0 / 3.0) * 0.99)
        for x in sorted(set(float(v) for v in xs)):
            if 0.0 < x < 1.0:
                out.append({"n": n, "x": x, "sf": float(st.kstwo.sf(x, n))})
    return out


def detector_cases():
    cases = []

    def add(name, make):
        rng = np.random.default_rng(SEED + 2000 + len(cases))
        stream = r6(make(rng))
        adwin = river_drift.ADWIN()
        adwin_hits = []
        for i, x in enumerate(stream):
            adwin.update(x)
            if adwin.drift_detected:
                adwin_hits.append(i)
        ph = {}
        for mode in ["up", "down", "both"]:
            d = river_drift.PageHinkley(mode=mode)
            hits = []
            for i, x in enumerate(stream):
                d.update(x)
                if d.drift_detected:
                    hits.append(i)
            ph[mode] = hits
        cases.append(
            {
                "name": name,
                "stream": stream,
                "adwin_detections": adwin_hits,
                "adwin_final_width": int(adwin.width),
                "adwin_final_estimation": float(adwin.estimation),
                "page_hinkley_up": ph["up"],
                "page_hinkley_down": ph["down"],
                "page_hinkley_both": ph["both"],
            }
        )

    add("bernoulli_0.2_to_0.5", lambda g: np.concatenate([g.binomial(1, 0.2, 3000), g.binomial(1, 0.5, 2000)]))
    add("normal_0_to_1", lambda g: np.concatenate([g.normal(0, 1, 2000), g.normal(1, 1, 2000)]))
    add("normal_stationary", lambda g: g.normal(0.5, 0.2, 5000))
    add(
        "ints_0_1_to_4_7",
        lambda g: np.concatenate([g.integers(0, 2, 1000), g.integers(4, 8, 1000)]).astype(float),
    )
    add(
        "log_loss_like_increase",
        lambda g: np.concatenate([g.exponential(0.2, 3000), g.exponential(0.35, 3000)]),
    )
    add("decrease_then_increase", lambda g: np.concatenate([
        g.normal(2, 0.5, 1500), g.normal(1, 0.5, 1500), g.normal(3, 0.5, 1500)]))
    return cases


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else "drift/tests/data/drift_reference.json"
    data = {
        "how_made": {
            "script": "scripts/make_drift_vectors.py (see its docstring for the exact definitions)",
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "river": river.__version__,
            "seed": SEED,
            "psi": "edges = unique(numpy.quantile(reference, i/bins, method='linear'), i=1..bins-1); "
            "bin = searchsorted(edges, x, side='right'); proportions floored at 1e-4; "
            "sum((c - r) * ln(c / r))",
            "ks": "scipy.stats.ks_2samp(reference, current, method='asymp'), two-sided",
            "wasserstein": "scipy.stats.wasserstein_distance(reference, current)",
            "js": "scipy.spatial.distance.jensenshannon(p, q, base=2)",
            "chi2": "scipy.stats.chi2_contingency([p, q], correction=False), all-zero categories dropped",
            "kolmogorov": "scipy.stats.kstwo.sf(x, n)",
            "detectors": "river.drift.ADWIN() and river.drift.PageHinkley(mode=...) with default "
            "parameters; 0-based indices of drift_detected",
            "tolerance": "1e-9 absolute, relative for values above 1",
        },
        "continuous": continuous_cases(),
        "categorical": categorical_cases(),
        "kolmogorov": kolmogorov_grid(),
        "detectors": detector_cases(),
    }
    with open(out_path, "w") as f:
        json.dump(data, f, separators=(",", ":"))
        f.write("\n")
    n = len(data["continuous"]) + len(data["categorical"])
    print(f"wrote {out_path}: {n} statistic cases, {len(data['kolmogorov'])} kolmogorov points, "
          f"{len(data['detectors'])} detector streams")


if __name__ == "__main__":
    main()
