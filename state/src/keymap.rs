//! [`IdMap`]: a map from string ids to values that the fold can look up in O(1), yet iterates,
//! encodes and serializes exactly like a `BTreeMap<String, V>` (sorted by id).
//!
//! The capsule map is the one the fold touches on almost every event (a start, an exit, a
//! removal looks a capsule up by its id). In a `BTreeMap<String, _>` of a few thousand capsules
//! each lookup is some twenty string comparisons, each a call to `memcmp` and a pointer chase to
//! a key on the heap; a hash lookup is one hash of the id and one comparison. Nothing observable
//! depends on the hash order: every way of reading the whole map (iteration, `Debug`, bincode,
//! serde) goes through the ids sorted, so the state's encoding, its hash and its JSON are those
//! of the `BTreeMap` it replaces.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Index;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use foldhash::fast::RandomState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map from string ids to values: hashed for lookups, sorted by id for everything that reads
/// it whole (iteration, equality is order-free, bincode, serde, `Debug`). Encodes and serializes
/// exactly as a `BTreeMap<String, V>` with the same entries.
#[derive(Clone)]
pub struct IdMap<V> {
    map: HashMap<String, V, RandomState>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap::new()
    }
}

impl<V> IdMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        IdMap {
            map: HashMap::with_hasher(RandomState::default()),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it has no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `id`.
    pub fn get(&self, id: &str) -> Option<&V> {
        self.map.get(id)
    }

    /// The value of `id`, to change it.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        self.map.get_mut(id)
    }

    /// Whether `id` has a value.
    pub fn contains_key(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    /// Set the value of `id`, returning the one it replaces.
    pub fn insert(&mut self, id: String, value: V) -> Option<V> {
        self.map.insert(id, value)
    }

    /// Take out the value of `id`.
    pub fn remove(&mut self, id: &str) -> Option<V> {
        self.map.remove(id)
    }

    /// The entries sorted by id.
    pub fn iter(&self) -> std::vec::IntoIter<(&String, &V)> {
        let mut all: Vec<(&String, &V)> = self.map.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// The ids, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.iter().map(|(k, _)| k)
    }

    /// The values, sorted by id.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<V: PartialEq> PartialEq for IdMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<V: Eq> Eq for IdMap<V> {}

impl<V: fmt::Debug> fmt::Debug for IdMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V, Q: Borrow<str> + ?Sized> Index<&Q> for IdMap<V> {
    type Output = V;

    /// The value of `id`. Panics when there is none, like `BTreeMap`'s index: tests only.
    fn index(&self, id: &Q) -> &V {
        &self.map[id.borrow()]
    }
}

impl<'a, V> IntoIterator for &'a IdMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::vec::IntoIter<(&'a String, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<V> FromIterator<(String, V)> for IdMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut m = IdMap::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<V> From<BTreeMap<String, V>> for IdMap<V> {
    fn from(map: BTreeMap<String, V>) -> Self {
        map.into_iter().collect()
    }
}

/// The same bytes as `BTreeMap<String, V>`: the length, then each (id, value) in id order.
impl<V: Encode> Encode for IdMap<V> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len() as u64).encode(encoder)?;
        for (k, v) in self.iter() {
            k.encode(encoder)?;
            v.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context, V: Decode<Context>> Decode<Context> for IdMap<V> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        BTreeMap::<String, V>::decode(decoder).map(IdMap::from)
    }
}

impl<'de, Context, V: BorrowDecode<'de, Context>> BorrowDecode<'de, Context> for IdMap<V> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        BTreeMap::<String, V>::borrow_decode(decoder).map(IdMap::from)
    }
}

impl<V: Serialize> Serialize for IdMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for IdMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, V>::deserialize(deserializer).map(IdMap::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pairs() -> Vec<(String, u32)> {
        ["delta", "alpha", "charlie", "", "bravo", "alpha2", "b"]
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i as u32))
            .collect()
    }

    #[test]
    fn encodes_serializes_and_iterates_like_a_btreemap() {
        let tree: BTreeMap<String, u32> = pairs().into_iter().collect();
        let ids: IdMap<u32> = pairs().into_iter().rev().collect();
        let config = bincode::config::standard();
        assert_eq!(
            bincode::encode_to_vec(&ids, config).unwrap(),
            bincode::encode_to_vec(&tree, config).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&ids).unwrap(),
            serde_json::to_string(&tree).unwrap()
        );
        assert_eq!(format!("{ids:?}"), format!("{tree:?}"));
        assert!(ids.iter().eq(tree.iter()));
        assert!(ids.values().eq(tree.values()));

        let bytes = bincode::encode_to_vec(&tree, config).unwrap();
        let (back, _): (IdMap<u32>, usize) = bincode::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(back, ids);
        let json = serde_json::to_string(&tree).unwrap();
        assert_eq!(serde_json::from_str::<IdMap<u32>>(&json).unwrap(), ids);
    }

    #[test]
    fn looks_up_inserts_and_removes() {
        let mut m: IdMap<u32> = pairs().into_iter().collect();
        assert_eq!(m.len(), 7);
        assert_eq!(m.get("charlie"), Some(&2));
        assert_eq!(m["bravo"], 4);
        assert!(m.contains_key(""));
        assert_eq!(m.insert("charlie".into(), 9), Some(2));
        *m.get_mut("charlie").unwrap() += 1;
        assert_eq!(m.remove("charlie"), Some(10));
        assert_eq!(m.remove("charlie"), None);
        assert!(!m.contains_key("charlie"));
        assert_eq!(m.len(), 6);
        assert!(!m.is_empty());
        let keys: Vec<&String> = m.keys().collect();
        assert_eq!(keys, ["", "alpha", "alpha2", "b", "bravo", "delta"]);
    }
}
