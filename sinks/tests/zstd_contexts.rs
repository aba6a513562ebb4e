//! Guards the zstd contexts kept for reuse per thread (vendor/zstd-safe/PATCHED.md): a
//! Parquet file, and a zstd frame, are the same bytes whether the thread writing them
//! starts with new contexts or with contexts that compressed and decompressed other data
//! before. The store's files must not depend on which blocking thread wrote them.

use std::io::{Read, Write};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// `rows` rows whose values follow `seed`: strings that repeat (dictionary pages), integers
/// and floats that do not.
fn batch(rows: usize, seed: u64) -> RecordBatch {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let ids: Vec<String> = (0..rows).map(|_| format!("user-{}", next() % 97)).collect();
    let counts: Vec<i64> = (0..rows).map(|_| (next() % 1_000_000) as i64).collect();
    let scores: Vec<f64> = (0..rows).map(|_| (next() % 10_000) as f64 / 7.0).collect();
    let schema = Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("count", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(Int64Array::from(counts)),
        Arc::new(Float64Array::from(scores)),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("batch")
}

/// `batch` as a Parquet file compressed with zstd at `level`.
fn parquet_bytes(batch: &RecordBatch, level: i32) -> Vec<u8> {
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).expect("level")))
        .build();
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), Some(properties)).expect("writer");
    writer.write(batch).expect("write");
    writer.close().expect("close");
    out
}

/// One zstd frame of `data`, written as Parquet's codec writes a page.
fn frame(data: &[u8], level: i32) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), level).expect("encoder");
    encoder.write_all(data).expect("compress");
    encoder.finish().expect("finish")
}

/// Runs `work` on a thread of its own, which starts without kept contexts.
fn on_new_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(work).join().expect("thread")
}

#[test]
fn parquet_files_do_not_depend_on_what_the_threads_zstd_contexts_did_before() {
    for (rows, seed, level) in [
        (10, 1, 3),
        (5_000, 2, 3),
        (70_000, 3, 3),
        (3_000, 4, 1),
        (3_000, 5, 9),
    ] {
        let fresh = on_new_thread(move || parquet_bytes(&batch(rows, seed), level));
        let reused = on_new_thread(move || {
            // Other files first, larger and smaller, at other levels, and a file read back.
            let other = parquet_bytes(&batch(100_000, seed + 100), 3);
            parquet_bytes(&batch(7, seed + 200), 19);
            let back = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(other),
            )
            .expect("reader")
            .build()
            .expect("reader");
            assert_eq!(
                back.map(|b| b.expect("batch").num_rows()).sum::<usize>(),
                100_000
            );
            let first = parquet_bytes(&batch(rows, seed), level);
            let again = parquet_bytes(&batch(rows, seed), level);
            assert_eq!(
                first, again,
                "{rows} rows, level {level}: twice on one thread"
            );
            first
        });
        assert!(
            fresh == reused,
            "{rows} rows, seed {seed}, level {level}: bytes differ"
        );
    }
}

#[test]
fn zstd_frames_do_not_depend_on_what_the_threads_contexts_did_before() {
    let data: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 31)
        .collect();
    for (len, level) in [
        (0, 3),
        (1, 3),
        (1_000, 3),
        (300_000, 3),
        (50_000, 1),
        (50_000, 12),
    ] {
        let input = data[..len].to_vec();
        let copy = input.clone();
        let fresh = on_new_thread(move || frame(&copy, level));
        let other = data.clone();
        let reused = on_new_thread(move || {
            // A frame with parameters of its own: a context kept without its reset
            // would carry them into the next frame.
            let mut custom = zstd::Encoder::new(Vec::new(), 5).expect("encoder");
            custom.include_checksum(true).expect("checksum");
            custom.window_log(12).expect("window log");
            custom
                .long_distance_matching(true)
                .expect("long distance matching");
            custom.write_all(&other).expect("compress");
            let before = custom.finish().expect("finish");
            let mut decoded = Vec::new();
            zstd::Decoder::new(&before[..])
                .expect("decoder")
                .read_to_end(&mut decoded)
                .expect("decode");
            assert_eq!(decoded, other);
            frame(&other[..len.min(77)], 22);
            frame(&input, level)
        });
        assert!(
            fresh == reused,
            "{len} bytes at level {level}: frames differ"
        );
        let mut back = Vec::new();
        zstd::Decoder::new(&reused[..])
            .expect("decoder")
            .read_to_end(&mut back)
            .expect("decode");
        assert_eq!(back, data[..len], "{len} bytes round trip");
    }
}

/// Guards the patch itself (`[patch.crates-io]` of the workspace): a thread that
/// compressed a page gets that context back, workspace and all, rather than a new one;
/// without the patch every context starts empty.
#[test]
fn a_thread_reuses_its_zstd_context_instead_of_creating_one_per_page() {
    let new = on_new_thread(|| zstd_safe::CCtx::create().sizeof());
    let kept = on_new_thread(|| {
        frame(&[7u8; 100_000], 3);
        zstd_safe::CCtx::create().sizeof()
    });
    assert!(
        kept > new * 10,
        "a kept context of {kept} bytes, a new one of {new}"
    );
    // A context at a high level is too large to keep (`kept::BYTES_MAX`).
    let large = on_new_thread(|| {
        frame(&[7u8; 100_000], 19);
        zstd_safe::CCtx::create().sizeof()
    });
    assert_eq!(large, new, "a level-19 context is not kept");
}
