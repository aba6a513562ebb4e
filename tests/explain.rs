//! `shopstream model explain` on a store the demo wrote (generator traffic).

#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

mod support;

#[test]
fn model_explain_ranks_every_input_per_task_and_scenario_and_says_when_nothing_is_left_to_train() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    support::demo_store(&store, 60_000);
    let json = dir.path().join("explain.json");
    let explain = |windows: &str| {
        Command::new(env!("CARGO_BIN_EXE_shopstream"))
            .args(["model", "explain", "--windows", windows, "--store"])
            .arg(&store)
            .arg("--json")
            .arg(&json)
            .env("SHOPSTREAM_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = explain("10");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for heading in [
        "ctr on all:",
        "cvr on all:",
        "ctcvr on all:",
        "ctr on push:",
    ] {
        assert!(text.contains(heading), "{heading}: {text}");
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    // 8 id fields and 11 dense inputs, 3 tasks, all impressions and 5 scenarios.
    assert_eq!(rows.len(), 19 * 3 * 6);
    let ctr = |feature: &str| {
        rows.iter()
            .find(|r| r["feature"] == feature && r["task"] == "ctr" && r["scenario"] == "all")
            .and_then(|r| r["drop"].as_f64())
            .unwrap()
    };
    // The generator's clicks follow the user's category affinity, not the hour of day; the
    // model sees that affinity in what the shop shows the user and in what they click.
    assert!(
        ctr("user_category_exposure") + ctr("user_category_affinity") > 0.01,
        "{text}"
    );
    assert!(ctr("hour_of_day").abs() < 0.002, "{text}");

    let out = explain("100000");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("give a smaller --windows"), "{stderr}");
}
