//! Optional numbers in 8 bytes: `Option<i64>` and `Option<f64>` take 16, and the rows,
//! users and pending impressions that hold them are kept by the ten thousand. A value
//! that none of them holds stands for none.

/// An `Option<i64>` in 8 bytes: `i64::MIN` stands for none, and `Some(i64::MIN)` is kept
/// one above it. What it holds never reaches it: event times (the decoder takes 2000 to
/// 2100), stock (snapshots are never negative, the decoder checks; deltas saturate, see
/// [`OptI64::plus`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptI64(i64);

impl OptI64 {
    /// The value, if any.
    pub(crate) fn get(self) -> Option<i64> {
        (self.0 != i64::MIN).then_some(self.0)
    }

    /// The value after adding `delta`, none counting as zero; the sum saturates one above
    /// `i64::MIN` (deltas are not bounded by the decoder).
    pub(crate) fn plus(self, delta: i64) -> Self {
        Self(
            self.get()
                .unwrap_or(0)
                .saturating_add(delta)
                .max(i64::MIN + 1),
        )
    }
}

impl From<Option<i64>> for OptI64 {
    fn from(value: Option<i64>) -> Self {
        Self(value.map_or(i64::MIN, |n| n.max(i64::MIN + 1)))
    }
}

impl Default for OptI64 {
    fn default() -> Self {
        Self(i64::MIN)
    }
}

/// Serialised as the `Option<i64>` it stands for.
impl serde::Serialize for OptI64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for OptI64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Option::<i64>::deserialize(deserializer).map(Self::from)
    }
}

impl std::fmt::Debug for OptI64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// An `Option<f64>` in 8 bytes: NaN stands for none. The decoder admits only finite
/// prices, and the times and shares computed from events are finite, so `Some(NaN)`, which
/// this reads as none, does not arise.
#[derive(Clone, Copy)]
pub(crate) struct OptF64(f64);

impl OptF64 {
    /// The value, if any.
    pub(crate) fn get(self) -> Option<f64> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

impl From<Option<f64>> for OptF64 {
    fn from(value: Option<f64>) -> Self {
        Self(value.unwrap_or(f64::NAN))
    }
}

impl Default for OptF64 {
    fn default() -> Self {
        Self(f64::NAN)
    }
}

impl PartialEq for OptF64 {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Debug for OptF64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_numbers_take_8_bytes_and_give_back_what_they_were_given() {
        assert_eq!(size_of::<OptI64>(), 8);
        assert_eq!(size_of::<OptF64>(), 8);
        for value in [None, Some(0), Some(-1), Some(i64::MAX), Some(i64::MIN + 1)] {
            assert_eq!(OptI64::from(value).get(), value);
        }
        assert_eq!(OptI64::from(Some(i64::MIN)).get(), Some(i64::MIN + 1));
        for value in [None, Some(0.0), Some(-0.0), Some(2.5), Some(f64::INFINITY)] {
            let back = OptF64::from(value).get();
            assert_eq!(back.map(f64::to_bits), value.map(f64::to_bits));
        }
        assert_eq!(OptF64::from(Some(f64::NAN)).get(), None);
        assert_eq!(OptF64::default(), OptF64::from(None));
        assert_eq!(OptI64::default(), OptI64::from(None));
    }

    #[test]
    fn an_optional_i64_serialises_as_an_option() {
        for value in [None, Some(-7), Some(i64::MAX)] {
            let packed = rmp_serde::to_vec_named(&OptI64::from(value)).expect("encode");
            assert_eq!(packed, rmp_serde::to_vec_named(&value).expect("encode"));
            let back: OptI64 = rmp_serde::from_slice(&packed).expect("decode");
            assert_eq!(back.get(), value);
        }
    }

    #[test]
    fn sums_saturate_one_above_none() {
        assert_eq!(OptI64::from(None).plus(3).get(), Some(3));
        assert_eq!(OptI64::from(Some(i64::MAX)).plus(1).get(), Some(i64::MAX));
        assert_eq!(
            OptI64::from(Some(-5)).plus(i64::MIN).get(),
            Some(i64::MIN + 1)
        );
    }
}
