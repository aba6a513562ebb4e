//! Fuzzes the decoder and the stateful cleaner with arbitrary bytes: no input may panic,
//! and an accepted event must survive the cleaner. Run with `make fuzz` (see README).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shopstream_ingest::clean::{CleanLimits, Cleaner};
use shopstream_ingest::decode::{DecodeLimits, decode};
use shopstream_ingest::event::InputTopic;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_message_bytes: 1 << 20 };
    // The first byte chooses the topic and whether a key is checked, the rest is the message.
    let (selector, payload) = data.split_first().map_or((0, data), |(s, rest)| (*s, rest));
    let topic = InputTopic::ALL[usize::from(selector % 3)];
    let key: Option<&[u8]> = if selector & 4 == 0 { None } else { Some(b"u1") };
    let mut cleaner = Cleaner::new(CleanLimits::default());
    if let Ok(event) = decode(topic, key, payload, limits) {
        let _ = cleaner.admit(topic, 0, &event);
        let _ = cleaner.admit(topic, 0, &event);
    }
});
