//! A map keyed by ids (users, items) that holds most ids in 8 bytes of its own table.
//!
//! A `Box<str>` key is 16 bytes in the table plus an allocation for its text, and the
//! per-partition maps hold one per user and per (partition, item), by the hundred
//! thousand. Ids of the usual shapes pack into a `u64` instead (see [`pack`]): decimal
//! numbers (the ids of most shops' databases), up to ten letters, digits and `_`
//! (`sku12345`, `u000123`), and any text of up to seven bytes. Other ids (UUIDs, long
//! keys) are kept as text in a second map. The packing is one-to-one, so an id has one
//! place and one key, and the map behaves as a map of strings: it serialises as one
//! (packed ids first, then the others, each in its table's order), and a map of strings
//! reads back into it.

use std::fmt;
use std::marker::PhantomData;

// FxHash: fast, and deterministic across runs (the map serialises in its order).
use rustc_hash::FxHashMap as HashMap;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Top two bits `10`: a canonical decimal number below [`NUMBER_LIMIT`] in the rest.
const NUMBER_TAG: u64 = 0b10 << 62;
/// Top two bits `11`: up to ten symbols of [`symbol`], six bits each, the first lowest,
/// then zeros.
const SYMBOLS_TAG: u64 = 0b11 << 62;
const TAG_MASK: u64 = 0b11 << 62;
/// Numbers at or above this keep their text.
const NUMBER_LIMIT: u64 = 1 << 62;
/// Symbols in a packed id of the symbol form.
const MAX_SYMBOLS: usize = 10;
/// Bytes in a packed id of the byte form (its top byte is zero, which neither tag is).
const MAX_BYTES: usize = 7;
/// The longest text a packed id stands for: 19 digits (below 2^62).
const MAX_TEXT: usize = 19;

/// The id `id` packed into a `u64`, if it has one of the three packed forms, tried in
/// this order:
/// - a decimal number without leading zeros (`0`, `4512`), below 2^62;
/// - one to ten letters, digits and `_`;
/// - up to seven bytes, none of them zero.
///
/// The forms' bit patterns do not overlap, and each gives back its text, so two ids never
/// share a key.
fn pack(id: &str) -> Option<u64> {
    let bytes = id.as_bytes();
    if let Some(n) = canonical_number(bytes).filter(|&n| n < NUMBER_LIMIT) {
        return Some(NUMBER_TAG | n);
    }
    if !bytes.is_empty() && bytes.len() <= MAX_SYMBOLS {
        // Without a branch per byte: every id is packed on each lookup.
        let (packed, all_symbols) =
            bytes
                .iter()
                .enumerate()
                .fold((0u64, true), |(packed, all), (i, &b)| {
                    let code = SYMBOL_CODES[usize::from(b)];
                    (packed | u64::from(code) << (6 * i), all & (code != 0))
                });
        if all_symbols {
            return Some(SYMBOLS_TAG | packed);
        }
    }
    if bytes.len() <= MAX_BYTES && !bytes.contains(&0) {
        let mut raw = [0u8; 8];
        raw[..bytes.len()].copy_from_slice(bytes);
        return Some(u64::from_le_bytes(raw));
    }
    None
}

/// The value of `bytes` if they are a decimal number written without leading zeros.
fn canonical_number(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [] => None,
        [b'0'] => Some(0),
        [b'0', ..] => None,
        _ => bytes.iter().try_fold(0u64, |n, &b| {
            let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
            n.checked_mul(10)?.checked_add(u64::from(digit))
        }),
    }
}

/// The six-bit code of a symbol of the symbol form, or zero for a byte that is not one
/// (a symbol's code is never zero: zero ends the text).
const fn symbol(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0' + 1,
        b'a'..=b'z' => b - b'a' + 11,
        b'A'..=b'Z' => b - b'A' + 37,
        b'_' => 63,
        _ => 0,
    }
}

/// [`symbol`] of every byte.
const SYMBOL_CODES: [u8; 256] = {
    let mut codes = [0; 256];
    let mut b = 0;
    while b < 256 {
        codes[b] = symbol(b as u8);
        b += 1;
    }
    codes
};

/// The byte of a symbol's six-bit code (`code` is 1..=63).
fn symbol_byte(code: u8) -> u8 {
    match code {
        1..=10 => b'0' + code - 1,
        11..=36 => b'a' + code - 11,
        37..=62 => b'A' + code - 37,
        _ => b'_',
    }
}

/// The text of a packed id, on the stack.
pub(crate) struct Unpacked {
    bytes: [u8; MAX_TEXT],
    len: usize,
}

impl Unpacked {
    fn of(key: u64) -> Self {
        let mut text = Self {
            bytes: [0; MAX_TEXT],
            len: 0,
        };
        match key & TAG_MASK {
            NUMBER_TAG => {
                let mut n = key & !TAG_MASK;
                let mut digits = [0u8; MAX_TEXT];
                let mut count = 0;
                loop {
                    digits[count] = b'0' + (n % 10) as u8;
                    count += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                for (slot, digit) in text.bytes.iter_mut().zip(digits[..count].iter().rev()) {
                    *slot = *digit;
                }
                text.len = count;
            }
            SYMBOLS_TAG => {
                for i in 0..MAX_SYMBOLS {
                    let code = ((key >> (6 * i)) & 0x3f) as u8;
                    if code == 0 {
                        break;
                    }
                    text.bytes[i] = symbol_byte(code);
                    text.len = i + 1;
                }
            }
            _ => {
                let raw = key.to_le_bytes();
                text.len = raw.iter().position(|&b| b == 0).unwrap_or(MAX_BYTES);
                text.bytes[..text.len].copy_from_slice(&raw[..text.len]);
            }
        }
        text
    }

    fn as_str(&self) -> &str {
        // The bytes are those of the `&str` that was packed (ASCII for the number and
        // symbol forms, whole characters for the byte form).
        std::str::from_utf8(&self.bytes[..self.len]).expect("a packed id is the text of a str")
    }
}

/// An id of an [`IdMap`]: unpacked on the stack, or borrowed from the map.
pub(crate) enum IdText<'a> {
    Packed(Unpacked),
    Text(&'a str),
}

impl std::ops::Deref for IdText<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Self::Packed(text) => text.as_str(),
            Self::Text(text) => text,
        }
    }
}

impl fmt::Debug for IdText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for IdText<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

/// An id as an [`IdMap`] looks it up: packed once ([`pack`]) for the several maps an
/// event's user or item is looked up in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdKey<'a> {
    Packed(u64),
    Text(&'a str),
}

impl<'a> IdKey<'a> {
    pub(crate) fn of(id: &'a str) -> Self {
        match pack(id) {
            Some(key) => Self::Packed(key),
            None => Self::Text(id),
        }
    }
}

/// A map from ids to `V`: packed ids in one table, the others as text in another.
#[derive(Clone)]
pub(crate) struct IdMap<V> {
    packed: HashMap<u64, V>,
    text: HashMap<Box<str>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        Self {
            packed: HashMap::default(),
            text: HashMap::default(),
        }
    }
}

impl<V> IdMap<V> {
    /// The value of `id`.
    pub(crate) fn get(&self, id: &str) -> Option<&V> {
        self.get_key(IdKey::of(id))
    }

    /// The value of the id `key` stands for.
    pub(crate) fn get_key(&self, key: IdKey<'_>) -> Option<&V> {
        match key {
            IdKey::Packed(key) => self.packed.get(&key),
            IdKey::Text(id) => self.text.get(id),
        }
    }

    /// The value of `id`, to change.
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        match pack(id) {
            Some(key) => self.packed.get_mut(&key),
            None => self.text.get_mut(id),
        }
    }

    /// Whether `id` has a value.
    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// The value of `id`, inserting `V::default()` first if it has none.
    pub(crate) fn get_or_default(&mut self, id: &str) -> &mut V
    where
        V: Default,
    {
        self.get_or_default_key(IdKey::of(id))
    }

    /// [`IdMap::get_or_default`] of the id `key` stands for.
    pub(crate) fn get_or_default_key(&mut self, key: IdKey<'_>) -> &mut V
    where
        V: Default,
    {
        self.get_or_insert_with_key(key, V::default)
    }

    /// The value of the id `key` stands for, inserting `make()` first if it has none.
    pub(crate) fn get_or_insert_with_key(
        &mut self,
        key: IdKey<'_>,
        make: impl FnOnce() -> V,
    ) -> &mut V {
        match key {
            IdKey::Packed(key) => self.packed.entry(key).or_insert_with(make),
            IdKey::Text(id) => {
                // Allocates the key only when it is new.
                if !self.text.contains_key(id) {
                    self.text.insert(id.into(), make());
                }
                self.text.get_mut(id).expect("inserted above")
            }
        }
    }

    /// Sets the value of `id`, returning the one it replaces.
    pub(crate) fn insert(&mut self, id: &str, value: V) -> Option<V> {
        match pack(id) {
            Some(key) => self.packed.insert(key, value),
            None => self.text.insert(id.into(), value),
        }
    }

    /// Removes the value of `id`, returning it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<V> {
        match pack(id) {
            Some(key) => self.packed.remove(&key),
            None => self.text.remove(id),
        }
    }

    /// Removes every id, keeping the tables' room.
    pub(crate) fn clear(&mut self) {
        self.packed.clear();
        self.text.clear();
    }

    /// Ids with a value.
    pub(crate) fn len(&self) -> usize {
        self.packed.len() + self.text.len()
    }

    /// Keeps the values for which `keep` is true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.packed.retain(|_, v| keep(v));
        self.text.retain(|_, v| keep(v));
    }

    /// Keeps the ids and values for which `keep` is true (unpacks every packed id).
    pub(crate) fn retain_ids(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        self.packed
            .retain(|&key, v| keep(Unpacked::of(key).as_str(), v));
        self.text.retain(|id, v| keep(id, v));
    }

    /// The ids and their values, packed ids first, each table in its order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (IdText<'_>, &V)> {
        let packed = self
            .packed
            .iter()
            .map(|(&key, v)| (IdText::Packed(Unpacked::of(key)), v));
        let text = self.text.iter().map(|(id, v)| (IdText::Text(id), v));
        packed.chain(text)
    }

    /// Approximate bytes of the entries and of the ids kept as text, `value_heap` of
    /// each value added (hash table slack not included).
    pub(crate) fn approx_bytes(&self, mut value_heap: impl FnMut(&V) -> usize) -> usize {
        use std::mem::size_of;
        let packed: usize = self
            .packed
            .values()
            .map(|v| size_of::<(u64, V)>() + value_heap(v))
            .sum();
        let text: usize = self
            .text
            .iter()
            .map(|(id, v)| id.len() + size_of::<(Box<str>, V)>() + value_heap(v))
            .sum();
        packed + text
    }
}

impl<V: PartialEq> PartialEq for IdMap<V> {
    /// An id has one place (packing is a function of the id), so equal maps have equal
    /// tables.
    fn eq(&self, other: &Self) -> bool {
        self.packed == other.packed && self.text == other.text
    }
}

impl<V: fmt::Debug> fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: Serialize> Serialize for IdMap<V> {
    /// As a map of id text to value.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for IdMap<V> {
    /// From a map of id text to value (an id given twice keeps its last value, as a
    /// `HashMap` reads it).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdMapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for IdMapVisitor<V> {
            type Value = IdMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of ids")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<IdMap<V>, A::Error> {
                let mut map = IdMap::default();
                while let Some((id, value)) = access.next_entry::<String, V>()? {
                    map.insert(&id, value);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(IdMapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_of_each_form_pack_and_give_back_their_text() {
        for (id, form) in [
            ("0", NUMBER_TAG),
            ("7", NUMBER_TAG),
            ("541312140", NUMBER_TAG),
            ("4611686018427387903", NUMBER_TAG), // 2^62 - 1
            ("u12345", SYMBOLS_TAG),
            ("sku49999", SYMBOLS_TAG),
            ("007", SYMBOLS_TAG),
            ("Ab_9zZ0000", SYMBOLS_TAG),
            ("a-b", 0),
            ("é€", 0),
            ("", 0),
            ("x y z!", 0),
        ] {
            let key = pack(id).unwrap_or_else(|| panic!("{id} packs"));
            assert_eq!(key & TAG_MASK, form, "{id}");
            assert_eq!(Unpacked::of(key).as_str(), id);
        }
    }

    #[test]
    fn get_or_insert_with_key_makes_a_value_only_for_a_new_id_and_keys_find_it() {
        let mut map = IdMap::default();
        // A packed id and one kept as text (a UUID), each looked up twice.
        for id in ["u12345", "0b7c2f6e-8d4a-4c6f-9d8e-2f1a3b4c5d6e"] {
            let mut made = 0;
            *map.get_or_insert_with_key(IdKey::of(id), || {
                made += 1;
                10
            }) += 1;
            *map.get_or_insert_with_key(IdKey::of(id), || {
                made += 1;
                20
            }) += 1;
            assert_eq!((made, map.get(id)), (1, Some(&12)), "{id}");
            // The same value through a key packed once.
            *map.get_or_default_key(IdKey::of(id)) += 1;
            assert_eq!(map.get_key(IdKey::of(id)), Some(&13), "{id}");
        }
        assert_eq!(map.len(), 2);
        map.clear();
        assert_eq!((map.len(), map.get("u12345")), (0, None));
    }

    #[test]
    fn ids_of_no_packed_form_keep_their_text() {
        for id in [
            "550e8400-e29b-41d4-a716-446655440000",
            "sku1234567890",
            "4611686018427387904", // 2^62: too large a number, too long for the other forms
            "18446744073709551616",
            "a\u{0}b",
            "eight-b!",
        ] {
            assert_eq!(pack(id), None, "{id}");
        }
    }

    #[test]
    fn a_map_of_packed_and_text_ids_serialises_as_a_map_of_strings() {
        let mut map = IdMap::default();
        for (i, id) in ["u1", "sku-1", "42", "550e8400-e29b-41d4", "é"]
            .iter()
            .enumerate()
        {
            map.insert(id, i);
        }
        *map.get_or_default("new") += 10;
        *map.get_or_default("a long id with spaces") += 20;
        let bytes = rmp_serde::to_vec(&map).unwrap();
        let as_strings: std::collections::HashMap<String, usize> =
            rmp_serde::from_slice(&bytes).unwrap();
        let expected: std::collections::HashMap<String, usize> = [
            ("u1", 0),
            ("sku-1", 1),
            ("42", 2),
            ("550e8400-e29b-41d4", 3),
            ("é", 4),
            ("new", 10),
            ("a long id with spaces", 20),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(as_strings, expected);
        let back: IdMap<usize> = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, map);
        let json: IdMap<usize> =
            serde_json::from_str(&serde_json::to_string(&map).unwrap()).unwrap();
        assert_eq!(json, map);
    }

    proptest::proptest! {
        /// Packing is one-to-one: every packed id gives back its text, so no two ids
        /// share a key.
        #[test]
        fn a_packed_id_gives_back_its_text(id in "[0-9a-zA-Z_]{0,12}|[0-9]{1,20}|\\PC{0,8}") {
            if let Some(key) = pack(&id) {
                let text = Unpacked::of(key);
                proptest::prop_assert_eq!(text.as_str(), id.as_str());
            } else {
                proptest::prop_assert!(id.len() > MAX_BYTES || id.as_bytes().contains(&0));
            }
        }

        /// The map answers as a map of strings under any sequence of inserts and removals.
        #[test]
        fn the_map_answers_as_a_map_of_strings(
            ops in proptest::collection::vec(("[0-9a-c_-]{0,11}", 0u8..4), 0..60)
        ) {
            let mut map = IdMap::default();
            let mut model = std::collections::HashMap::<String, u32>::new();
            for (i, (id, op)) in ops.iter().enumerate() {
                let value = i as u32;
                match op {
                    0 => {
                        proptest::prop_assert_eq!(map.insert(id, value), model.insert(id.clone(), value));
                    }
                    1 => *map.get_or_default(id) += 1,
                    2 => map.retain_ids(|k, _| k != id),
                    _ => map.retain(|v| *v % 3 != 0),
                }
                match op {
                    1 => *model.entry(id.clone()).or_default() += 1,
                    2 => model.retain(|k, _| k != id),
                    3 => model.retain(|_, v| *v % 3 != 0),
                    _ => {}
                }
                proptest::prop_assert_eq!(map.len(), model.len());
                for (k, v) in &model {
                    proptest::prop_assert_eq!(map.get(k), Some(v));
                }
                let mut seen = 0;
                for (k, v) in map.iter() {
                    seen += 1;
                    proptest::prop_assert_eq!(model.get(&*k), Some(v));
                }
                proptest::prop_assert_eq!(seen, model.len());
            }
        }
    }
}
