//! A category name as inventory rows, users' category scores and examples hold it: one
//! shared copy per name (the inventory interns them, see [`crate::inventory::intern`])
//! behind a thin pointer. `Arc<str>` is a pointer and a length, 16 bytes in every row and
//! score; this is 8, and `Option<Category>` too.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A shared category name; compares, hashes and serialises as the name.
#[derive(Clone, Default)]
pub struct Category(Arc<Box<str>>);

impl Category {
    /// Whether `self` and `other` are the same shared copy.
    pub(crate) fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The name's heap bytes (its text, its box and two reference counts) divided among
    /// its holders: summed over every holder, the name's heap bytes once.
    pub(crate) fn shared_bytes(&self) -> usize {
        let heap = self.0.len() + size_of::<Box<str>>() + 2 * size_of::<usize>();
        heap / Arc::strong_count(&self.0)
    }
}

impl From<&str> for Category {
    fn from(name: &str) -> Self {
        Self(Arc::new(name.into()))
    }
}

impl From<String> for Category {
    fn from(name: String) -> Self {
        Self(Arc::new(name.into_boxed_str()))
    }
}

impl Deref for Category {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

/// Lets a set of categories be searched by `&str` (hash and equality are the name's).
impl Borrow<str> for Category {
    fn borrow(&self) -> &str {
        self
    }
}

impl PartialEq for Category {
    /// The same copy is the same name; different copies compare their text.
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other) || **self == **other
    }
}

impl Eq for Category {}

impl Hash for Category {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl fmt::Debug for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl Serialize for Category {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self)
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_category_is_a_thin_pointer_that_serialises_as_its_name() {
        assert_eq!(size_of::<Category>(), 8);
        assert_eq!(size_of::<Option<Category>>(), 8);
        let shoes = Category::from("shoes");
        let copy = Category::from(String::from("shoes"));
        assert!(shoes == copy && !shoes.ptr_eq(&copy));
        assert_ne!(shoes, Category::from("hats"));
        let as_name = rmp_serde::to_vec_named(&"shoes").expect("serialise");
        assert_eq!(rmp_serde::to_vec_named(&shoes).expect("serialise"), as_name);
        let back: Category = rmp_serde::from_slice(&as_name).expect("read back");
        assert_eq!(&*back, "shoes");
        assert_eq!(format!("{shoes:?}"), "\"shoes\"");
    }
}
