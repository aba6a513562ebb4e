//! Throughput of the job against a bare consumer on the same topics (issue 15).
//!
//! Publishes generated traffic once to a running broker, then, in rounds, reads it:
//! - `bare`: a librdkafka consumer with the job's consumer settings, assigned every input
//!   partition, counting messages to the end (no decoding);
//! - `workers=1` and `workers=2`: `run --stop-at-end` of the job, each run its own
//!   consumer group and store;
//! - `group x1` and `group x2`: the same as a bounded group run (`pipeline.instances =
//!   "group"`, one worker each) of 1 and 2 instances in this process, sharing its cores.
//!
//! Prints one line per run (seconds, messages/s, ratio to the round's bare read, CPU
//! seconds, the broker's CPU seconds and the cores both kept busy, prediction latency,
//! window time) and the process's peak memory.
//!
//! Then serving latency live: the job with 2 workers runs in live mode while traffic is
//! published at `RATE` messages/s (default 3,000) for 60 s on topics of its own; prints
//! the prediction latency percentiles (consumed -> handed to the producer). Twice: with
//! the generator's default shop (5,000 users, 1.5 sessions per second of event time), whose
//! event time then runs about 230 times faster than the wall clock, so the job closes
//! about four 60 s windows a second; and with a shop whose event time keeps pace with the
//! wall clock (as a real shop's traffic at that rate: one window a minute), for 180 s.
//!
//! Use `scripts/bench-scale.sh`, which starts tansu and builds in release mode.
//!
//! usage: throughput BROKERS [EVENTS] [ROUNDS] [RATE]   (RATE 0 skips the live part;
//! THROUGHPUT_FILE_SPAN_SECS=0 sets `store.file_span_secs` (0: a file per window);
//! THROUGHPUT_WORKERS=2 runs only the job with 2 workers, e.g. under perf;
//! THROUGHPUT_GROUPS=2 only the group of 2 instances; THROUGHPUT_PACE=wall only the live
//! part at the wall clock's pace, THROUGHPUT_PACE=compressed only the other;
//! THROUGHPUT_EXPLAIN=1 turns on `serving.explain`; THROUGHPUT_FETCH_WAIT_MS=500 sets the
//! consumers' `fetch.wait.max.ms`, the bare reader's too; THROUGHPUT_BROKER_PID names the
//! broker's process for the `broker s` and `cores` columns, which the scripts set)

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use shopstream_config::Config;
use shopstream_ingest::generator::world::WorldSize;
use shopstream_ingest::generator::{Generator, GeneratorOptions};
use shopstream_job::generate::publish_traffic;
use shopstream_job::pipeline::{RunOptions, run};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(brokers) = args.first() else {
        bail!("usage: throughput BROKERS [EVENTS] [ROUNDS]");
    };
    let events: u64 = args.get(1).map_or(Ok(200_000), |s| s.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let rate: f64 = args.get(3).map_or(Ok(3_000.0), |s| s.parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        bench(brokers, events, rounds).await?;
        if rate > 0.0 {
            let only = std::env::var("THROUGHPUT_PACE").ok();
            if only.as_deref() != Some("wall") {
                live(brokers, rate, Pace::Compressed).await?;
            }
            if only.as_deref() != Some("compressed") {
                live(brokers, rate, Pace::WallClock).await?;
            }
        }
        Ok(())
    })
}

/// A configuration for `brokers` with topics of its own under `prefix`.
fn config_for(brokers: &str, prefix: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = brokers.to_string();
    config.kafka.seek_back_messages = 10_000;
    for (topic, name) in [
        (&mut config.topics.clicks, "clicks"),
        (&mut config.topics.orders, "orders"),
        (&mut config.topics.inventory, "inventory"),
        (&mut config.topics.predictions, "predictions"),
        (&mut config.topics.dead_letter, "dead-letter"),
        (&mut config.topics.alerts, "alerts"),
    ] {
        *topic = format!("{prefix}.{name}");
    }
    config.http.enabled = false;
    if let Ok(ms) = std::env::var("THROUGHPUT_FETCH_WAIT_MS")
        && !ms.is_empty()
    {
        config
            .kafka
            .properties
            .insert("fetch.wait.max.ms".into(), ms);
    }
    config.serving.explain = std::env::var("THROUGHPUT_EXPLAIN").is_ok_and(|v| v == "1");
    if let Some(secs) = std::env::var("THROUGHPUT_FILE_SPAN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.store.file_span_secs = secs;
    }
    config
}

async fn bench(brokers: &str, events: u64, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("bench-{}", std::process::id());
    let config = config_for(brokers, &prefix);
    let options = GeneratorOptions {
        seed: 1,
        max_events: Some(events),
        ..GeneratorOptions::default()
    };
    let started = Instant::now();
    let report = publish_traffic(&config, options, None, None).await?;
    let messages = report.valid_total + report.malformed_total;
    println!(
        "published {messages} messages ({} impressions) in {:.1} s",
        report.impressions,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<10} {:>8} {:>10} {:>9} {:>8} {:>9} {:>6} {:>12} {:>12} {:>12}",
        "run",
        "seconds",
        "msg/s",
        "vs bare",
        "cpu s",
        "broker s",
        "cores",
        "pred p50 us",
        "pred p99 us",
        "window p99 us"
    );
    for round in 0..rounds {
        let watch = Stopwatch::start();
        let bare = bare_read(&config, round, messages)?;
        let bare_rate = messages as f64 / bare;
        let cpu = watch.cpu_secs();
        println!(
            "{:<10} {bare:>8.2} {bare_rate:>10.0} {:>9} {:>8.2} {} {:>12} {:>12} {:>12}",
            "bare",
            "1.00",
            cpu,
            watch.broker_columns(bare, cpu),
            "-",
            "-",
            "-"
        );
        for workers in worker_counts() {
            let mut run_config = config.clone();
            run_config.kafka.group_id = format!("{prefix}-w{workers}-r{round}");
            run_config.pipeline.workers = workers;
            run_config.store.path = dir.path().join(format!("store-w{workers}-r{round}"));
            run_config.checkpoint.enabled = true;
            let watch = Stopwatch::start();
            let options = RunOptions {
                stop_at_end: true,
                ..RunOptions::default()
            };
            // When the first message is consumed: start-up (group join, topic checks,
            // the store) is part of the job's time but not of its per-message cost.
            let (progress, mut observed) = tokio::sync::watch::channel(Default::default());
            let first = tokio::spawn(async move {
                let started = Instant::now();
                let seen = observed
                    .wait_for(|p: &shopstream_job::pipeline::Progress| p.consumed > 0)
                    .await
                    .is_ok();
                seen.then(|| started.elapsed().as_secs_f64())
            });
            let summary = shopstream_job::pipeline::run_observed(
                &run_config,
                options,
                std::future::pending(),
                progress,
            )
            .await
            .with_context(|| format!("job run with {workers} workers"))?;
            let seconds = watch.wall_secs();
            let first_message = first.await.ok().flatten();
            let consumed: u64 = summary.consumed.values().sum();
            if consumed != messages {
                bail!("the job consumed {consumed} of {messages} messages");
            }
            let rate = messages as f64 / seconds;
            let cpu = watch.cpu_secs();
            println!(
                "{:<10} {seconds:>8.2} {rate:>10.0} {:>9.2} {:>8.2} {} {:>12} {:>12} {:>12}",
                format!("workers={workers}"),
                rate / bare_rate,
                cpu,
                watch.broker_columns(seconds, cpu),
                summary.prediction_latency.p50_us,
                summary.prediction_latency.p99_us,
                summary.window_processing.p99_us,
            );
            println!(
                "           {} windows closed, {} example files, {} compactions, {} checkpoints; first message consumed after {}",
                summary.windows_closed,
                summary.files_written,
                summary.compactions,
                summary.checkpoints,
                first_message.map_or("-".to_string(), |s| format!("{s:.2} s")),
            );
        }
        for instances in group_sizes() {
            let mut run_config = config.clone();
            run_config.kafka.group_id = format!("{prefix}-g{instances}-r{round}");
            run_config.pipeline.workers = 1;
            run_config.pipeline.instances = shopstream_config::Instances::Group;
            run_config.store.path = dir.path().join(format!("store-g{instances}-r{round}"));
            let watch = Stopwatch::start();
            let options = RunOptions {
                stop_at_end: true,
                ..RunOptions::default()
            };
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..instances {
                let config = run_config.clone();
                tasks.spawn(async move { run(&config, options, std::future::pending()).await });
            }
            let mut summaries = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                let summary = joined
                    .context("a group instance's task")?
                    .with_context(|| format!("group run with {instances} instances"))?;
                summaries.push(summary);
            }
            let seconds = watch.wall_secs();
            let consumed: u64 = summaries
                .iter()
                .map(|s| s.consumed.values().sum::<u64>())
                .sum();
            if consumed < messages {
                bail!("the group consumed {consumed} of {messages} messages");
            }
            let rate = messages as f64 / seconds;
            let cpu = watch.cpu_secs();
            println!(
                "{:<10} {seconds:>8.2} {rate:>10.0} {:>9.2} {:>8.2} {} {:>12} {:>12} {:>12}",
                format!("group x{instances}"),
                rate / bare_rate,
                cpu,
                watch.broker_columns(seconds, cpu),
                "-",
                "-",
                "-",
            );
        }
    }
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    println!("peak resident memory of the process: {peak} kB");
    Ok(())
}

/// How the generated traffic's event time relates to the wall clock in the live part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// The default shop: event time far ahead of the wall clock at the rate.
    Compressed,
    /// A shop large enough that its event time keeps pace with the wall clock.
    WallClock,
}

/// Generator options for `total` messages at `rate` messages/s with the given pace.
fn live_traffic(total: u64, rate: f64, pace: Pace) -> GeneratorOptions {
    let options = GeneratorOptions {
        seed: 2,
        max_events: Some(total),
        ..GeneratorOptions::default()
    };
    if pace == Pace::Compressed {
        return options;
    }
    // Messages per second of event time at the default session rate, measured on the
    // generator itself between the 10th and 90th percentile of event time (orders and
    // cancellations trail the last session by up to hours); sessions then scale so that
    // `rate` messages span one second.
    let mut ts: Vec<i64> = Generator::new(GeneratorOptions {
        max_events: Some(20_000),
        ..options.clone()
    })
    .map(|m| m.ts)
    .collect();
    ts.sort_unstable();
    let (low, high) = (ts[ts.len() / 10], ts[ts.len() * 9 / 10]);
    let span_secs = ((high - low) as f64 / 1000.0).max(1.0);
    let scale = rate / ((ts.len() * 8 / 10) as f64 / span_secs);
    GeneratorOptions {
        sessions_per_sec: options.sessions_per_sec * scale,
        size: WorldSize {
            users: 200_000,
            items: 20_000,
            categories: 200,
        },
        ..options
    }
}

/// Prediction latency of a live job with 2 workers while traffic arrives at `rate`
/// messages/s for about 60 s.
async fn live(brokers: &str, rate: f64, pace: Pace) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let prefix = format!("live-{}-{pace:?}", std::process::id()).to_lowercase();
    let mut config = config_for(brokers, &prefix);
    config.kafka.group_id = format!("{prefix}-group");
    config.pipeline.workers = 2;
    config.store.path = dir.path().join("store");
    // At the wall clock's pace, 60 s hold a single 60 s window: run three minutes.
    let seconds = if pace == Pace::WallClock { 180.0 } else { 60.0 };
    let total = (rate * seconds) as u64;
    let options = live_traffic(total, rate, pace);
    // Topics first, so the job's group starts at their beginning.
    shopstream_kafka::client::ensure_topics(
        &config.kafka,
        &config
            .topics
            .inputs()
            .into_iter()
            .chain(config.topics.outputs())
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )
    .await?;
    let started = Instant::now();
    let (progress, mut watch) = tokio::sync::watch::channel(Default::default());
    let publisher_config = config.clone();
    let publisher =
        tokio::spawn(
            async move { publish_traffic(&publisher_config, options, Some(rate), None).await },
        );
    let job_config = config.clone();
    let job = tokio::spawn(async move {
        let shutdown = async move {
            let _ = watch
                .wait_for(|p: &shopstream_job::pipeline::Progress| p.consumed >= total)
                .await;
        };
        shopstream_job::pipeline::run_observed(
            &job_config,
            RunOptions::default(),
            shutdown,
            progress,
        )
        .await
    });
    let report = publisher.await??;
    let summary = job.await??;
    let l = &summary.prediction_latency;
    let messages = report.valid_total + report.malformed_total;
    let event_secs = (report.last_ts - report.first_ts) as f64 / 1000.0;
    let wall_secs = started.elapsed().as_secs_f64();
    println!(
        "live, 2 workers, {pace:?} pace, {messages} messages at {rate:.0} msg/s in {wall_secs:.0} s, event time spanning {event_secs:.0} s (orders trail the last session), {} windows closed (processing max {} us), {} checkpoints: prediction latency p50 {} us, p99 {} us, max {} us over {} impressions",
        summary.windows_closed,
        summary.window_processing.max_us,
        summary.checkpoints,
        l.p50_us,
        l.p99_us,
        l.max_us,
        l.count,
    );
    Ok(())
}

/// The worker counts to run: `THROUGHPUT_WORKERS` (comma-separated, for profiling one),
/// else 1 and 2.
fn worker_counts() -> Vec<usize> {
    std::env::var("THROUGHPUT_WORKERS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// Instances of the bounded group runs (`pipeline.instances = "group"`, one worker each,
/// all in this process): `THROUGHPUT_GROUPS` (comma-separated; empty for none), else 1
/// and 2.
fn group_sizes() -> Vec<usize> {
    std::env::var("THROUGHPUT_GROUPS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2])
}

/// Wall-clock and CPU time of one run of the bench.
struct Stopwatch {
    wall: Instant,
    cpu_secs: f64,
    /// The broker's CPU seconds at the start, when its process is known.
    broker_cpu_secs: Option<f64>,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu_secs: process_cpu_secs(),
            broker_cpu_secs: broker_cpu_secs(),
        }
    }

    /// Wall-clock seconds since the start.
    fn wall_secs(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }

    /// CPU seconds this process used since the start.
    fn cpu_secs(&self) -> f64 {
        process_cpu_secs() - self.cpu_secs
    }

    /// The `broker s` and `cores` columns of a run that took `seconds` and `cpu_secs` of
    /// this process's CPU: the broker's CPU seconds since the start, and the cores the two
    /// kept busy together on average; dashes when `THROUGHPUT_BROKER_PID` names no process.
    fn broker_columns(&self, seconds: f64, cpu_secs: f64) -> String {
        match (self.broker_cpu_secs, broker_cpu_secs()) {
            (Some(before), Some(now)) => {
                let broker = now - before;
                let cores = (cpu_secs + broker) / seconds.max(1e-9);
                format!("{broker:>9.2} {cores:>6.2}")
            }
            _ => format!("{:>9} {:>6}", "-", "-"),
        }
    }
}

/// CPU time (user + system) this process has used so far, in seconds (Linux; 0 elsewhere):
/// the bench's own figure that the machine's noise moves less than the wall clock. The
/// broker runs in a process of its own and is not counted here.
fn process_cpu_secs() -> f64 {
    cpu_secs_of("/proc/self/stat").unwrap_or(0.0)
}

/// The same for the broker's process, whose id `THROUGHPUT_BROKER_PID` gives (the bench
/// scripts set it to the tansu they start); `None` without it. On a machine whose cores
/// the broker shares, the job's speed-up from a second worker is bounded by the cores
/// the two leave idle, which the `cores` column shows.
fn broker_cpu_secs() -> Option<f64> {
    let pid: u32 = std::env::var("THROUGHPUT_BROKER_PID").ok()?.parse().ok()?;
    cpu_secs_of(&format!("/proc/{pid}/stat"))
}

/// User + system CPU seconds of the process whose `stat` file is `path`.
fn cpu_secs_of(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces, so split after its ')'):
    // utime and stime are the 12th and 13th, in clock ticks of 1/100 s.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Some(ticks as f64 / 100.0)
}

/// Seconds a bare consumer takes to read every input message from the beginning.
fn bare_read(config: &Config, round: usize, expected: u64) -> anyhow::Result<f64> {
    let mut kafka = config.kafka.clone();
    kafka.group_id = format!(
        "{}-bare-{round}-{}",
        config.topics.clicks,
        std::process::id()
    );
    let started = Instant::now();
    let consumer: BaseConsumer = shopstream_kafka::source::consumer_config(&kafka, true)?
        .create()
        .context("bare consumer")?;
    let mut list = TopicPartitionList::new();
    let mut partitions = 0;
    for topic in [
        &config.topics.clicks,
        &config.topics.orders,
        &config.topics.inventory,
    ] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in metadata.topics()[0].partitions() {
            list.add_partition_offset(topic, p.id(), Offset::Beginning)?;
            partitions += 1;
        }
    }
    consumer.assign(&list)?;
    let (mut read, mut ended) = (0u64, 0);
    let deadline = Instant::now() + Duration::from_secs(600);
    while ended < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => read += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None => {}
        }
    }
    if read < expected {
        bail!("the bare consumer read {read} of {expected} messages");
    }
    Ok(started.elapsed().as_secs_f64())
}
