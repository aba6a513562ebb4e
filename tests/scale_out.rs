//! Scale-out inside one instance, against a real broker: the global stage on a thread of
//! its own (`pipeline.workers = 2`) writes the same store and model bytes as the whole job
//! on one task (`pipeline.workers = 1`), also when the run is stopped and restarted from
//! its checkpoint in between.

#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shopstream_config::Config;
use shopstream_ingest::generator::{GeneratorOptions, GeneratorReport, world::WorldSize};
use shopstream_job::generate::publish_traffic;
use shopstream_job::pipeline::{RunOptions, RunSummary, run_observed};
use support::{Broker, run_to_end};

/// About 20,000 messages over a little more than an hour of event time, some malformed.
fn traffic() -> GeneratorOptions {
    GeneratorOptions {
        seed: support::traffic_seed(15),
        max_events: Some(20_000),
        sessions_per_sec: 0.6,
        size: WorldSize {
            users: 600,
            items: 500,
            categories: 12,
        },
        malformed_fraction: 0.01,
        ..GeneratorOptions::default()
    }
}

/// `base` reading the same topics as a new consumer group, with `workers` threads, into
/// `store` (model file beside it).
fn run_config(base: &Config, name: &str, workers: usize, store: &Path) -> (Config, PathBuf) {
    let mut config = base.clone();
    config.kafka.group_id = format!("{}-{name}", base.kafka.group_id);
    config.pipeline.workers = workers;
    config.store.path = store.to_path_buf();
    let model = store.with_extension("ssm");
    config.model.path = Some(model.clone());
    (config, model)
}

/// A live run stopped (like SIGTERM) once it has consumed `at_least` messages.
async fn stopped_after(config: &Config, at_least: u64) -> RunSummary {
    let (progress, mut watch) = tokio::sync::watch::channel(Default::default());
    let shutdown = async move {
        let _ = watch
            .wait_for(|p: &shopstream_job::pipeline::Progress| p.consumed >= at_least)
            .await;
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        run_observed(config, RunOptions::default(), shutdown, progress),
    )
    .await
    .expect("stopped run within 120 s")
    .expect("stopped run")
}

fn assert_same_outputs(
    what: &str,
    (store, model): (&Path, &Path),
    (other_store, other_model): (&Path, &Path),
) {
    support::assert_same_store(what, store, other_store);
    assert!(
        std::fs::read(model).unwrap() == std::fs::read(other_model).unwrap(),
        "{what}: model files differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_and_two_workers_write_the_same_store_and_model() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let base = broker.config("scale-out", &dir.path().join("unused"));
    let report = publish_traffic(&base, traffic(), None, None).await.unwrap();
    let messages = report.valid_total + report.malformed_total;
    assert!(messages > 19_000, "{report:?}");

    let (one, one_model) = run_config(&base, "one", 1, &dir.path().join("one"));
    let single = run_to_end(&one).await;
    let (two, two_model) = run_config(&base, "two", 2, &dir.path().join("two"));
    let threaded = run_to_end(&two).await;

    for summary in [&single, &threaded] {
        assert_eq!(summary.consumed.values().sum::<u64>(), messages);
        assert_eq!(
            summary.dead_lettered.values().sum::<u64>(),
            report.malformed_total
        );
        assert_eq!(summary.examples_written, report.impressions);
    }
    assert!(
        single.windows_closed > 60,
        "{} windows",
        single.windows_closed
    );
    assert_eq!(single.windows_closed, threaded.windows_closed);
    assert_eq!(single.model_version, threaded.model_version);
    assert_eq!(single.quality, threaded.quality);
    assert!(threaded.checkpoints > 0, "the thread wrote checkpoints");
    assert_same_outputs(
        "1 worker vs 2 workers",
        (&one.store.path, &one_model),
        (&two.store.path, &two_model),
    );

    // Two workers, stopped part way (the global thread writes the shutdown checkpoint)
    // and restarted from that checkpoint: still the same bytes.
    let (restarted, restarted_model) = run_config(&base, "restart", 2, &dir.path().join("restart"));
    let first = stopped_after(&restarted, messages / 2).await;
    assert!(
        first.consumed.values().sum::<u64>() < messages,
        "stopped before the end: consumed {:?} of {messages}",
        first.consumed
    );
    assert!(first.checkpoints > 0);
    let second = run_to_end(&restarted).await;
    assert!(
        second.consumed.values().sum::<u64>() < messages,
        "resumed, not re-read"
    );
    assert_same_outputs(
        "1 worker vs 2 workers stopped and restarted",
        (&one.store.path, &one_model),
        (&restarted.store.path, &restarted_model),
    );
}

/// Three instances of one group (`pipeline.instances = "group"`) in a bounded run with
/// partitions moving: the first instance runs alone (and takes the trainer lease) until
/// it has closed windows, then two more join and the group moves partitions to them
/// (they replay them from the start), then one of them stops abruptly (its future
/// dropped) and its partitions move back. The store and the model are those of one
/// instance.
/// A broker with `events` messages of [`traffic`] published on topics named after `name`
/// (and what was published); the job's log lines at `log_filter` go to the test's output.
async fn published(
    name: &str,
    events: u64,
    log_filter: &str,
) -> (Broker, tempfile::TempDir, Config, GeneratorReport) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter)
        .with_test_writer()
        .try_init();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let base = broker.config(name, &dir.path().join("unused"));
    let traffic = GeneratorOptions {
        max_events: Some(events),
        ..traffic()
    };
    let report = publish_traffic(&base, traffic, None, None).await.unwrap();
    (broker, dir, base, report)
}

/// A bounded group instance started in a test: its task and its progress.
type BoundedInstance = (
    tokio::task::JoinHandle<Result<RunSummary, shopstream_job::pipeline::PipelineError>>,
    tokio::sync::watch::Receiver<shopstream_job::pipeline::Progress>,
);

/// Starts a `--stop-at-end` run of `config` on a task of its own.
fn start_bounded(config: Config) -> BoundedInstance {
    let (progress, watch) = tokio::sync::watch::channel(Default::default());
    let options = RunOptions {
        stop_at_end: true,
        ..RunOptions::default()
    };
    let task = tokio::spawn(async move {
        run_observed(&config, options, std::future::pending(), progress).await
    });
    (task, watch)
}

/// Waits up to 300 s until an instance's progress is `ready` (`what` names it).
async fn wait_progress(
    watch: &tokio::sync::watch::Receiver<shopstream_job::pipeline::Progress>,
    what: &str,
    ready: impl Fn(&shopstream_job::pipeline::Progress) -> bool,
) {
    let mut watch = watch.clone();
    tokio::time::timeout(Duration::from_secs(300), watch.wait_for(|p| ready(p)))
        .await
        .unwrap_or_else(|_| panic!("{what} within 300 s"))
        .map(|_| ())
        .unwrap_or_else(|_| panic!("{what}: the instance ended first"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_partitions_move_writes_the_store_and_model_of_one_instance() {
    // On failure, what the instances logged (the model broadcast at debug) is in the output.
    let (_broker, dir, base, report) = published(
        "group-run",
        150_000,
        "shopstream_job=info,shopstream_job::pipeline::group=debug",
    )
    .await;
    let messages = report.valid_total + report.malformed_total;

    let (one, one_model) = run_config(&base, "one", 1, &dir.path().join("one"));
    let single = run_to_end(&one).await;

    let (mut group, group_model) = run_config(&base, "group", 2, &dir.path().join("group"));
    group.pipeline.instances = shopstream_config::Instances::Group;
    // Without partition checkpoints: every partition that moves is replayed from its start
    // (with them, the instances that join resume near the end and the run is over before
    // they have read anything; the group_kill tests and the live group test below cover
    // resumes).
    group.checkpoint.enabled = false;
    let (first, first_watch) = start_bounded(group.clone());
    wait_progress(&first_watch, "the first instance closes windows", |p| {
        p.windows_closed >= 5
    })
    .await;
    let joined = std::time::Instant::now();
    let (second, second_progress) = start_bounded(group.clone());
    let (third, third_progress) = start_bounded(group.clone());
    wait_progress(&second_progress, "the second instance reads", |p| {
        p.consumed >= 500
    })
    .await;
    eprintln!(
        "the second instance read 500 messages {:?} after it started",
        joined.elapsed()
    );
    // Stopped without a goodbye beyond leaving the group: what it sent stays valid.
    second.abort();
    // The model broadcast reaches an instance that does not train, and each instance's
    // endpoints show its role, its partitions and the model it serves with.
    let third_watch = third_progress;
    wait_progress(
        &third_watch,
        "the third instance serves a broadcast model",
        |p| p.serving_model_version > 0,
    )
    .await;
    let scrape = |watch: &tokio::sync::watch::Receiver<shopstream_job::pipeline::Progress>| {
        let addr = watch
            .borrow()
            .http_addr
            .expect("group instances serve HTTP");
        async move {
            // (A blocking read on a runtime thread could starve the server it waits for.)
            let (status, body) =
                tokio::task::spawn_blocking(move || support::http_get(addr, "/metrics"))
                    .await
                    .unwrap();
            assert!(status.contains("200"), "{status}");
            body
        }
    };
    // The endpoints refresh every 500 ms: poll until they show the broadcast model.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (coordinating, other) = loop {
        let (coordinating, other) = (scrape(&first_watch).await, scrape(&third_watch).await);
        if support::metric(&other, "shopstream_serving_model_version") > 0
            && other.contains("shopstream_model_broadcast_delay_seconds ")
        {
            break (coordinating, other);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the endpoints show the broadcast model within 60 s: {other}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        coordinating.contains("shopstream_role{role=\"global\""),
        "{coordinating}"
    );
    assert!(
        !other.contains("shopstream_role{role=\"global\""),
        "{other}"
    );
    assert!(other.contains("shopstream_role{role=\"shard\"}"), "{other}");
    assert!(
        support::metric(&other, "shopstream_serving_model_version") > 0,
        "{other}"
    );
    assert!(
        other.contains("shopstream_model_broadcast_delay_seconds "),
        "{other}"
    );
    // Ownership settles after the abort's rebalance: the two hold every click and order
    // partition, none twice.
    let owned = |body: &str| -> BTreeSet<String> {
        body.lines()
            .filter(|l| l.starts_with("shopstream_partition_owned{"))
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (a, b) = (
            owned(&scrape(&first_watch).await),
            owned(&scrape(&third_watch).await),
        );
        if a.is_disjoint(&b) && a.len() + b.len() == 8 && !b.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ownership settles within 60 s: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (first, third) = tokio::time::timeout(Duration::from_secs(600), async {
        tokio::join!(first, third)
    })
    .await
    .expect("the instances end within 600 s");
    let (first, third) = (first.unwrap().unwrap(), third.unwrap().unwrap());
    for (name, s) in [("first", &first), ("third", &third)] {
        eprintln!(
            "{name}: consumed {:?}, impressions {}, windows {}",
            s.consumed, s.impressions, s.windows_closed
        );
    }
    assert_eq!(third.windows_closed, 0, "the first instance coordinated");
    assert_eq!(first.windows_closed, single.windows_closed);
    assert_eq!(first.model_version, single.model_version);
    assert_eq!(first.examples_written, report.impressions);
    assert!(
        third.consumed.values().sum::<u64>() > 0,
        "partitions moved to the third instance"
    );
    // What the survivors read: handled, or skipped as held by a partition checkpoint.
    let read = |s: &RunSummary| s.consumed.values().sum::<u64>() + s.checkpoint_skipped;
    let consumed = read(&first) + read(&third);
    assert!(consumed >= messages - 1_000, "{consumed} of {messages}");
    assert_same_outputs(
        "1 instance vs a group whose partitions moved",
        (&one.store.path, &one_model),
        (&group.store.path, &group_model),
    );
}

/// Regression test for the shard side's memory: it drops the closes older than the
/// checkpoints of the partitions it holds, and a partition taken over from an older
/// checkpoint reads them again from the closes log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_taken_over_from_an_older_checkpoint_reads_the_dropped_closes_again() {
    // On failure, what the instances logged is in the output.
    let (_broker, dir, base, _) = published("group-reread", 120_000, "shopstream_job=info").await;
    let (one, one_model) = run_config(&base, "one", 1, &dir.path().join("one"));
    run_to_end(&one).await;

    let (mut first_config, group_model) = run_config(&base, "group", 1, &dir.path().join("group"));
    first_config.pipeline.instances = shopstream_config::Instances::Group;
    // The first instance checkpoints its partitions at every close, so the closes it
    // keeps follow its newest checkpoints.
    first_config.checkpoint.every_windows = 1;
    first_config.checkpoint.min_interval_secs = 0;
    // The second never checkpoints by itself: the partitions it takes over keep the
    // checkpoints the first wrote as it handed them over.
    let mut second_config = first_config.clone();
    second_config.checkpoint.every_windows = 1_000_000;
    second_config.checkpoint.min_interval_secs = 3_600;
    let (first, first_progress) = start_bounded(first_config);
    // The second joins early, while most of every partition is still to read: the first
    // reads far ahead of its closes, and what the second has left to read is the margin
    // of this test (a second that read its partitions to the end before it is stopped
    // has answered every close, and nothing is taken back).
    wait_progress(&first_progress, "the first instance reads", |p| {
        p.consumed >= 5_000
    })
    .await;
    let (second, second_progress) = start_bounded(second_config);
    // It has taken partitions over once its endpoints show them (from the checkpoints
    // the first wrote as it handed them over).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let taken: BTreeSet<i32> = loop {
        // (Copied out: a borrow held across the await would block the instance's
        // progress updates.)
        let addr = second_progress.borrow().http_addr;
        if let Some(addr) = addr {
            let (_, body) =
                tokio::task::spawn_blocking(move || support::http_get(addr, "/metrics"))
                    .await
                    .unwrap();
            let owned = owned_partitions(&body);
            if !owned.is_empty() {
                break owned;
            }
        }
        assert!(
            !second.is_finished(),
            "the second instance ended before it held partitions"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the second instance holds partitions within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Closes go on while both read: once the first has checkpointed every partition it
    // kept a few closes past the checkpoints it handed over, it has dropped the closes
    // between, and the second is stopped at once.
    let shards = dir.path().join("group/_checkpoints/shards");
    let handed_over = taken
        .iter()
        .filter_map(|p| newest_partition_checkpoint(&shards, *p))
        .max()
        .expect("the first instance checkpointed the partitions it handed over");
    let kept: Vec<i32> = (0..4).filter(|p| !taken.contains(p)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !kept
        .iter()
        .all(|p| newest_partition_checkpoint(&shards, *p).is_some_and(|c| c >= handed_over + 3))
    {
        assert!(
            !second.is_finished(),
            "the second instance ended before it was stopped"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the first instance checkpoints partitions {kept:?} 3 closes past {handed_over} \
             within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "second took {taken:?} at close {handed_over}; stopped after {} messages",
        second_progress.borrow().consumed
    );
    // Gone without a checkpoint: its partitions go back to the first instance, whose
    // newest checkpoints are the ones the first wrote as it handed them over.
    second.abort();
    let first = tokio::time::timeout(Duration::from_secs(600), first)
        .await
        .expect("the run ends within 600 s")
        .unwrap()
        .unwrap();
    eprintln!(
        "first: windows {}, partitions resumed {}, closes read again {}",
        first.windows_closed, first.partitions_resumed, first.closes_reread
    );
    assert!(
        first.closes_reread > 0,
        "the partitions taken back needed closes the instance had dropped: {first:?}"
    );
    assert_same_outputs(
        "1 instance vs a group that read dropped closes again",
        (&one.store.path, &one_model),
        (&dir.path().join("group"), &group_model),
    );
}

/// The partition numbers a `/metrics` body shows owned.
fn owned_partitions(body: &str) -> BTreeSet<i32> {
    body.lines()
        .filter(|l| l.starts_with("shopstream_partition_owned{"))
        .filter_map(|l| {
            l.split("partition=\"")
                .nth(1)?
                .split('"')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The closes applied by the newest checkpoint of partition number `p` under `shards`
/// (`<group>/<p>/checkpoint-<closes applied>.ckpt`).
fn newest_partition_checkpoint(shards: &Path, p: i32) -> Option<u64> {
    let groups = std::fs::read_dir(shards).ok()?;
    groups
        .flatten()
        .filter_map(|group| std::fs::read_dir(group.path().join(p.to_string())).ok())
        .flatten()
        .flatten()
        .filter_map(|f| {
            let name = f.file_name().into_string().ok()?;
            name.strip_prefix("checkpoint-")?
                .strip_suffix(".ckpt")?
                .parse()
                .ok()
        })
        .max()
}

/// A live instance started in a test: its task, its progress, what shuts it down.
type LiveInstance = (
    tokio::task::JoinHandle<Result<RunSummary, shopstream_job::pipeline::PipelineError>>,
    tokio::sync::watch::Receiver<shopstream_job::pipeline::Progress>,
    tokio_util::sync::CancellationToken,
);

/// Waits until a live instance, coordinating, has closed `windows` windows, checks that no
/// more come (everything is read; the store comparison would show one), then shuts it
/// down: its summary.
async fn stopped_once_closed(
    (task, mut progress, stop): LiveInstance,
    windows: u64,
    what: &str,
) -> RunSummary {
    tokio::time::timeout(
        Duration::from_secs(300),
        progress.wait_for(|p| p.windows_closed >= windows),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: {windows} windows closed within 300 s"))
    .map(|_| ())
    .unwrap_or_else(|_| panic!("{what}: the instance ended first"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(progress.borrow().windows_closed, windows, "{what}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| panic!("{what}: stops within 120 s"))
        .unwrap()
        .unwrap()
}

/// Guards live group runs (`pipeline.instances = "group"` without `--stop-at-end`): one
/// instance runs alone on the first part of the input until it has closed windows, a
/// second joins (partitions move to it), the rest of the input arrives while both run, and
/// the first, which coordinates, is shut down mid-stream (SIGTERM's path): the second
/// takes over its partitions and the run from the closes log. Once it has closed every
/// window the input allows, it is shut down too. The windows written and the model left
/// at shutdown are those of one live instance on the whole input: nothing lost or doubled.
/// Partitions that move go on from their checkpoints when those were written in time.
/// Then the whole group is started again on more input: every partition goes on from the
/// checkpoint written as it stopped, and the run from the closes log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_group_that_an_instance_joins_and_its_coordinator_leaves_writes_what_one_live_instance_writes()
 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("shopstream_job=info")
        .with_test_writer()
        .try_init();
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut base = broker.config("live-group", &dir.path().join("unused"));
    // Windows close only as every partition's watermark passes them (a live group run
    // does not release idle partitions yet, docs/scale-out.md).
    base.pipeline.idle_partition_timeout_secs = 86_400;
    let mut generator = shopstream_ingest::generator::Generator::new(traffic());
    let mut messages: Vec<_> = generator.by_ref().collect();
    let last = messages.split_off(messages.len() * 4 / 5);
    let later = messages.split_off(messages.len() / 2);
    let total = (messages.len() + later.len()) as u64;
    let last_count = last.len() as u64;
    shopstream_job::generate::publish_messages(&base, messages, None)
        .await
        .unwrap();

    let (mut group, group_model) = run_config(&base, "group", 2, &dir.path().join("group"));
    group.pipeline.instances = shopstream_config::Instances::Group;
    // A partition checkpoint every 5 closes applied, whatever the wall time.
    group.checkpoint.min_interval_secs = 0;
    let start = |config: Config| {
        let (progress, watch) = tokio::sync::watch::channel(Default::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            run_observed(&config, RunOptions::default(), shutdown, progress).await
        });
        (task, watch, stop)
    };
    let wait =
        |mut watch: tokio::sync::watch::Receiver<shopstream_job::pipeline::Progress>,
         what: &'static str,
         ready: Box<dyn Fn(&shopstream_job::pipeline::Progress) -> bool + Send>| async move {
            tokio::time::timeout(Duration::from_secs(300), watch.wait_for(|p| ready(p)))
                .await
                .unwrap_or_else(|_| panic!("{what} within 300 s"))
                .map(|_| ())
                .unwrap_or_else(|_| panic!("{what}: the instance ended first"));
        };
    let (first, first_progress, stop_first) = start(group.clone());
    wait(
        first_progress,
        "the first instance closes windows",
        Box::new(|p| p.windows_closed >= 5),
    )
    .await;
    let (second, second_progress, stop_second) = start(group.clone());
    // Ready: it holds partitions and has read each to its end (what their checkpoints
    // hold is skipped, not counted as consumed).
    wait(
        second_progress.clone(),
        "the second instance serves its endpoints",
        Box::new(|p| p.http_addr.is_some()),
    )
    .await;
    let addr = second_progress.borrow().http_addr.expect("http");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while tokio::task::spawn_blocking(move || support::http_get(addr, "/readyz"))
        .await
        .unwrap()
        .0
        != "HTTP/1.1 200 OK"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the second instance is ready within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The rest of the input arrives while both run; the coordinator stops part way.
    let publishing = {
        let base = base.clone();
        tokio::spawn(async move {
            shopstream_job::generate::publish_messages(&base, later, Some(6_000.0)).await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_first.cancel();
    let first = tokio::time::timeout(Duration::from_secs(120), first)
        .await
        .expect("the first instance stops within 120 s")
        .unwrap()
        .unwrap();
    publishing.await.unwrap().unwrap();

    // One live instance on the whole input (beside the group's second instance).
    let (one, one_model) = run_config(&base, "one", 1, &dir.path().join("one"));
    let single = stopped_after(&one, total).await;
    assert_eq!(single.consumed.values().sum::<u64>(), total);
    // (The last windows stay open.)
    assert!(
        single.windows_closed > 30,
        "{} windows",
        single.windows_closed
    );

    let windows = single.windows_closed;
    let second = stopped_once_closed(
        (second, second_progress, stop_second),
        windows,
        "the second instance, coordinating now",
    )
    .await;
    eprintln!(
        "first: consumed {:?}, windows {}, partition checkpoints {}, resumed {}; second: \
         consumed {:?}, windows {}, partition checkpoints {}, resumed {} (skipped {})",
        first.consumed,
        first.windows_closed,
        first.partition_checkpoints,
        first.partitions_resumed,
        second.consumed,
        second.windows_closed,
        second.partition_checkpoints,
        second.partitions_resumed,
        second.checkpoint_skipped,
    );
    assert!(first.partition_checkpoints > 0, "{first:?}");
    assert!(
        first.windows_closed < windows,
        "the first instance stopped part way: {} of {windows} windows",
        first.windows_closed
    );
    assert_eq!(second.windows_closed, windows, "the coordinator's summary");
    // The first coordinator left a checkpoint as it stopped: the second went on from it.
    assert_eq!(
        second.coordinator_resumed_windows, first.windows_closed,
        "the second coordinator resumed where the first stopped"
    );
    assert_eq!(second.model_version, single.model_version);
    assert_same_outputs(
        "1 live instance vs a live group that an instance joined and its coordinator left",
        (&one.store.path, &one_model),
        (&group.store.path, &group_model),
    );
    // The offsets of each partition checkpoint are committed to the group (for lag
    // monitoring; a new owner starts at the checkpoint's): the second instance wrote one
    // for every partition number as it stopped.
    for topic in [&group.topics.clicks, &group.topics.orders] {
        let committed =
            support::committed_offsets(&group.kafka.brokers, &group.kafka.group_id, topic, 4);
        eprintln!("committed offsets of {topic}: {committed:?}");
        assert_eq!(committed.len(), 4, "{topic}: {committed:?}");
        assert!(committed.values().all(|o| *o > 0), "{topic}: {committed:?}");
    }

    // Every instance stopped, then more input and a new instance: it takes the run over
    // where it stood. The one instance resumes from its checkpoint.
    shopstream_job::generate::publish_messages(&base, last, None)
        .await
        .unwrap();
    let resumed = stopped_after(&one, last_count).await;
    assert_eq!(resumed.consumed.values().sum::<u64>(), last_count);
    assert_eq!(
        single.impressions + resumed.impressions,
        generator.report().impressions,
        "every impression predicted once"
    );
    assert!(resumed.windows_closed > 5, "{resumed:?}");
    let third = stopped_once_closed(
        start(group.clone()),
        single.windows_closed + resumed.windows_closed,
        "the restarted group",
    )
    .await;
    assert_eq!(third.model_version, resumed.model_version);
    // Every partition number goes on from the checkpoint the second instance wrote as it
    // stopped, not from its start.
    eprintln!(
        "restarted: resumed {}, handled {:?}, skipped {}",
        third.partitions_resumed, third.consumed, third.checkpoint_skipped
    );
    assert_eq!(third.partitions_resumed, 4, "{third:?}");
    assert_eq!(
        third.coordinator_resumed_windows, second.windows_closed,
        "the restarted group's coordinator resumed where the last one stopped"
    );
    let clicks = |s: &RunSummary| s.consumed.get("clicks").copied().unwrap_or_default();
    assert!(
        clicks(&third) < clicks(&single) + clicks(&resumed),
        "the restarted instance handled {} clicks, the one instance {} + {}",
        clicks(&third),
        clicks(&single),
        clicks(&resumed)
    );
    assert_same_outputs(
        "1 live instance restarted vs a live group restarted",
        (&one.store.path, &one_model),
        (&group.store.path, &group_model),
    );
}

/// Guards "partition p of clicks and orders move as one": a group run on topics with
/// different partition counts stops at start with an error naming both, instead of
/// splitting them apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_run_on_topics_not_co_partitioned_stops_at_start_naming_them() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = broker.config("group-copartition", dir.path());
    config.pipeline.instances = shopstream_config::Instances::Group;
    let mut two = config.kafka.clone();
    two.topic_partitions = 2;
    shopstream_kafka::client::ensure_topics(&two, std::slice::from_ref(&config.topics.orders))
        .await
        .unwrap();
    let options = RunOptions {
        stop_at_end: true,
        ..Default::default()
    };
    let error = shopstream_job::pipeline::run(&config, options, std::future::pending())
        .await
        .expect_err("a group run on topics that are not co-partitioned");
    let message = error.to_string();
    assert!(
        message.contains("co-partitioned")
            && message.contains(&format!("{} has 4 partitions", config.topics.clicks))
            && message.contains(&format!("{} has 2", config.topics.orders)),
        "{message}"
    );
}
