//! Posting alert events to a webhook: retries with backoff, bounded retries, final 4xx,
//! and a dead receiver that never holds up the caller. Against a local receiver, no broker.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use shopstream_drift::webhook::{Webhook, WebhookOptions};
use shopstream_drift::{AlertEvent, AlertState, DriftKind, Severity};
use support::receiver::receiver;

fn event(id: &str) -> AlertEvent {
    AlertEvent {
        id: id.to_string(),
        state: AlertState::Firing,
        severity: Severity::Critical,
        kind: DriftKind::DataDrift,
        subject: "price".into(),
        scenario: None,
        statistic: "ks".into(),
        value: 1e-9,
        threshold: 0.001,
        window_start_ms: 120_000,
        first_window_ms: 0,
    }
}

fn options(url: String, max_retries: u32) -> WebhookOptions {
    WebhookOptions {
        url,
        timeout: Duration::from_secs(5),
        max_retries,
        backoff: Duration::from_millis(20),
        queue: 8,
    }
}

#[tokio::test]
async fn a_500_is_retried_after_a_backoff_and_the_event_is_delivered_once() {
    let (url, bodies) = receiver(vec![500, 200]).await;
    let hook = Webhook::spawn(options(url, 3)).expect("client");
    let started = tokio::time::Instant::now();
    hook.post(&event("data_drift/price/-/0"));
    let (delivered, failures) = hook.close(Duration::from_secs(10)).await;
    assert_eq!((delivered, failures), (1, 0));
    assert!(started.elapsed() >= Duration::from_millis(20), "backed off");
    let bodies = bodies.lock().unwrap();
    assert_eq!(bodies.len(), 2, "one failed attempt, one accepted");
    let posted: AlertEvent = serde_json::from_slice(&bodies[1]).expect("JSON body");
    assert_eq!(posted, event("data_drift/price/-/0"));
    assert_eq!(bodies[0], bodies[1]);
}

#[tokio::test]
async fn retries_are_bounded_and_a_4xx_is_final() {
    let (url, bodies) = receiver(vec![503]).await;
    let hook = Webhook::spawn(options(url, 2)).expect("client");
    hook.post(&event("a"));
    assert_eq!(hook.close(Duration::from_secs(10)).await, (0, 1));
    assert_eq!(bodies.lock().unwrap().len(), 3, "first attempt + 2 retries");

    let (url, bodies) = receiver(vec![404]).await;
    let hook = Webhook::spawn(options(url, 5)).expect("client");
    hook.post(&event("b"));
    assert_eq!(hook.close(Duration::from_secs(10)).await, (0, 1));
    assert_eq!(bodies.lock().unwrap().len(), 1, "404 is not retried");
}

#[tokio::test]
async fn an_unreachable_receiver_never_blocks_the_caller() {
    // A port nobody listens on: every attempt fails at once; the queue holds one.
    let port = support::free_port();
    let mut o = options(format!("http://127.0.0.1:{port}/"), 1_000);
    o.backoff = Duration::from_secs(30);
    o.queue = 1;
    let hook = Webhook::spawn(o).expect("client");
    let started = std::time::Instant::now();
    for i in 0..50 {
        hook.post(&event(&format!("e{i}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "post never waits"
    );
    let (delivered, failures) = hook.close(Duration::from_millis(100)).await;
    assert_eq!((delivered, failures), (0, 50), "all 50 counted as failed");
}
