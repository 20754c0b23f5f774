//! [`KeyMap`]: a map the fold can look up in O(1), yet iterates, encodes and serializes exactly
//! like a `BTreeMap` (sorted by key); and [`Tombstones`], the removed capsules in removal order.
//!
//! The capsule map is the one the fold touches on almost every event (a start, an exit, a
//! removal looks a capsule up by its id), and every address event looks up a network and an
//! address. In a `BTreeMap` each lookup is a walk of a few nodes with a comparison per key on
//! the way (for a few thousand capsules, some twenty string comparisons, each a call to
//! `memcmp` on a key behind a pointer); a hash lookup is one hash and one comparison. Nothing
//! observable depends on the hash order: every way of reading the whole map (iteration, `Debug`,
//! bincode, serde) goes through the keys sorted, so the state's encoding, its hash and its JSON
//! are those of the `BTreeMap` it replaces.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Index;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use foldhash::fast::RandomState;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map hashed for lookups and sorted by key for everything that reads it whole (iteration,
/// `Debug`, bincode, serde; equality does not depend on order). Encodes and serializes exactly
/// as a `BTreeMap<K, V>` with the same entries.
///
/// `S` hashes the keys: [foldhash](foldhash::fast::RandomState) (seeded per process) unless the
/// keys call for something cheaper ([`NodeIdHash`]).
#[derive(Clone)]
pub struct KeyMap<K, V, S = RandomState> {
    map: HashMap<K, V, S>,
}

impl<K, V, S: Default> Default for KeyMap<K, V, S> {
    fn default() -> Self {
        KeyMap {
            map: HashMap::with_hasher(S::default()),
        }
    }
}

impl<K: Hash + Eq + Ord, V, S: BuildHasher + Default> KeyMap<K, V, S> {
    /// An empty map.
    pub fn new() -> Self {
        KeyMap::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it has no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(key)
    }

    /// The value of `key`, to change it.
    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.map.get_mut(key)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.map.contains_key(key)
    }

    /// Set the value of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.map.insert(key, value)
    }

    /// Take out the value of `key`.
    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.map.remove(key)
    }

    /// Set the value of `key` unless it has one; `Err` (with the value back) if it has.
    pub fn insert_new(&mut self, key: K, value: V) -> Result<(), V> {
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => Err(value),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(value);
                Ok(())
            }
        }
    }

    /// Take out the value of `key` if `take` says so of it.
    pub fn remove_if(&mut self, key: K, take: impl FnOnce(&V) -> bool) -> Option<V> {
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) if take(e.get()) => Some(e.remove()),
            _ => None,
        }
    }

    /// The entries sorted by key.
    pub fn iter(&self) -> std::vec::IntoIter<(&K, &V)> {
        let mut all: Vec<(&K, &V)> = self.map.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.into_iter()
    }

    /// The entries in no particular order: hash order, which differs from one process to the
    /// next. Only for uses whose result does not depend on the order (a count, a minimum, a
    /// search for the one match); cheaper than [`KeyMap::iter`], which sorts.
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    /// The values, sorted by key.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq, V: PartialEq, S: BuildHasher> PartialEq for KeyMap<K, V, S> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Hash + Eq, V: Eq, S: BuildHasher> Eq for KeyMap<K, V, S> {}

impl<K, V, S> fmt::Debug for KeyMap<K, V, S>
where
    K: Hash + Eq + Ord + fmt::Debug,
    V: fmt::Debug,
    S: BuildHasher + Default,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, V, S, Q> Index<&Q> for KeyMap<K, V, S>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
    S: BuildHasher,
{
    type Output = V;

    /// The value of `key`. Panics when there is none, as `BTreeMap`'s index does: for tests.
    fn index(&self, key: &Q) -> &V {
        &self.map[key]
    }
}

impl<'a, K: Hash + Eq + Ord, V, S: BuildHasher + Default> IntoIterator for &'a KeyMap<K, V, S> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::vec::IntoIter<(&'a K, &'a V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> FromIterator<(K, V)> for KeyMap<K, V, S> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = KeyMap::default();
        m.map.extend(iter);
        m
    }
}

impl<K: Hash + Eq, V, S: BuildHasher + Default> From<BTreeMap<K, V>> for KeyMap<K, V, S> {
    fn from(map: BTreeMap<K, V>) -> Self {
        map.into_iter().collect()
    }
}

/// The same bytes as `BTreeMap<K, V>`: the length, then each (key, value) in key order.
impl<K, V, S> Encode for KeyMap<K, V, S>
where
    K: Hash + Eq + Ord + Encode,
    V: Encode,
    S: BuildHasher + Default,
{
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len() as u64).encode(encoder)?;
        for (k, v) in self.iter() {
            k.encode(encoder)?;
            v.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context, K, V, S: BuildHasher + Default> Decode<Context> for KeyMap<K, V, S>
where
    K: Hash + Eq + Ord + Decode<Context>,
    V: Decode<Context>,
{
    /// Straight into the hash map (a snapshot decodes thousands of capsules), with the checks
    /// `BTreeMap`'s decoder makes: the length against the decoder's limit, a later duplicate
    /// key replacing an earlier one.
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = u64::decode(decoder)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
        decoder.claim_container_read::<(K, V)>(len)?;
        let mut map = HashMap::with_capacity_and_hasher(len, S::default());
        for _ in 0..len {
            decoder.unclaim_bytes_read(std::mem::size_of::<(K, V)>());
            let k = K::decode(decoder)?;
            let v = V::decode(decoder)?;
            map.insert(k, v);
        }
        Ok(KeyMap { map })
    }
}

impl<'de, Context, K, V, S> BorrowDecode<'de, Context> for KeyMap<K, V, S>
where
    S: BuildHasher + Default,
    K: Hash + Eq + Ord + BorrowDecode<'de, Context>,
    V: BorrowDecode<'de, Context>,
{
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        BTreeMap::<K, V>::borrow_decode(decoder).map(KeyMap::from)
    }
}

impl<K, V, H> Serialize for KeyMap<K, V, H>
where
    K: Hash + Eq + Ord + Serialize,
    V: Serialize,
    H: BuildHasher + Default,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, K, V, S> Deserialize<'de> for KeyMap<K, V, S>
where
    S: BuildHasher + Default,
    K: Hash + Eq + Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<K, V>::deserialize(deserializer).map(KeyMap::from)
    }
}

/// Hashes [`NodeId`](bolt_events::NodeId) keys by their first eight bytes (and the rest of
/// what is written only by its first eight bytes), mixed with a per-process seed. A node id is
/// an ed25519 public key, uniformly random, so eight of its bytes are as good a hash as all of
/// them at a fraction of the cost: the fold looks the origin up on every event. Keys that
/// share their first eight bytes still work (they are compared whole), only slower.
#[derive(Clone, Copy, Debug)]
pub struct NodeIdHash {
    seed: u64,
}

impl Default for NodeIdHash {
    fn default() -> Self {
        NodeIdHash {
            seed: RandomState::default().hash_one(0x6e6f_6465_u64) | 1,
        }
    }
}

impl BuildHasher for NodeIdHash {
    type Hasher = NodeIdHasher;

    fn build_hasher(&self) -> NodeIdHasher {
        NodeIdHasher { h: self.seed }
    }
}

/// The hasher of [`NodeIdHash`].
#[derive(Clone, Copy, Debug)]
pub struct NodeIdHasher {
    h: u64,
}

impl Hasher for NodeIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        let x = u64::from_le_bytes(word) ^ self.h;
        // A folded multiply (foldhash's mixing step).
        let m = u128::from(x) * u128::from(0x9e37_79b9_7f4a_7c15_u64 ^ self.h.rotate_left(29));
        self.h = (m as u64) ^ ((m >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        // Only the length prefix of a key written as a slice: the same for every key.
        self.h = self.h.wrapping_add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.h
    }
}

/// The removed capsules still kept, by the value of [`crate::State::applied`] when their
/// removal was folded, oldest first. The fold only ever adds a newer removal and forgets the
/// oldest one (and a rewind undoes that in reverse), so a deque in key order does what a
/// `BTreeMap<u64, String>` did without its node splits and merges; it encodes and serializes as
/// that map.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tombstones {
    entries: VecDeque<(u64, String)>,
}

impl Tombstones {
    /// None yet.
    pub fn new() -> Self {
        Tombstones::default()
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn find(&self, at: u64) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&at, |(k, _)| *k)
    }

    /// The capsule removed at `at`.
    pub fn get(&self, at: &u64) -> Option<&String> {
        self.find(*at).ok().map(|i| &self.entries[i].1)
    }

    /// Whether a capsule was removed at `at`.
    pub fn contains_key(&self, at: &u64) -> bool {
        self.find(*at).is_ok()
    }

    /// Record the removal of `id` at `at` (replacing and returning one recorded at the same
    /// `at`). The fold only adds removals newer than all kept ones: one push at the back.
    pub fn insert(&mut self, at: u64, id: String) -> Option<String> {
        match self.entries.back() {
            Some((last, _)) if *last >= at => match self.find(at) {
                Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, id)),
                Err(i) => {
                    self.entries.insert(i, (at, id));
                    None
                }
            },
            _ => {
                self.entries.push_back((at, id));
                None
            }
        }
    }

    /// Take out the removal at `at`.
    pub fn remove(&mut self, at: &u64) -> Option<String> {
        let i = self.find(*at).ok()?;
        self.entries.remove(i).map(|(_, id)| id)
    }

    /// The oldest removal.
    pub fn first_key_value(&self) -> Option<(&u64, &String)> {
        self.entries.front().map(|(k, v)| (k, v))
    }

    /// Take out the oldest removal.
    pub fn pop_first(&mut self) -> Option<(u64, String)> {
        self.entries.pop_front()
    }

    /// Put back a removal older than all kept ones (undoing [`Tombstones::pop_first`]).
    pub(crate) fn push_first(&mut self, at: u64, id: String) {
        match self.entries.front() {
            Some((first, _)) if *first <= at => {
                self.insert(at, id);
            }
            _ => self.entries.push_front((at, id)),
        }
    }

    /// The removals, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &String)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The removed capsules' ids, oldest removal first.
    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl fmt::Debug for Tombstones {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl FromIterator<(u64, String)> for Tombstones {
    fn from_iter<I: IntoIterator<Item = (u64, String)>>(iter: I) -> Self {
        let mut t = Tombstones::new();
        for (at, id) in iter {
            t.insert(at, id);
        }
        t
    }
}

/// The same bytes as `BTreeMap<u64, String>`.
impl Encode for Tombstones {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len() as u64).encode(encoder)?;
        for (k, v) in &self.entries {
            k.encode(encoder)?;
            v.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for Tombstones {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        BTreeMap::<u64, String>::decode(decoder).map(|m| m.into_iter().collect())
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for Tombstones {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        BTreeMap::<u64, String>::borrow_decode(decoder).map(|m| m.into_iter().collect())
    }
}

impl Serialize for Tombstones {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tombstones {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<u64, String>::deserialize(deserializer).map(|m| m.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::Ipv4Addr;

    use bolt_events::NodeId;

    use super::*;

    fn pairs() -> Vec<(String, u32)> {
        ["delta", "alpha", "charlie", "", "bravo", "alpha2", "b"]
            .iter()
            .enumerate()
            .map(|(i, k)| (k.to_string(), i as u32))
            .collect()
    }

    /// Encoded, serialized, printed and iterated as `tree`; decoded and deserialized back.
    fn same_as_tree<K, V, M>(m: &M, tree: &BTreeMap<K, V>)
    where
        K: Ord + Encode + Decode<()> + Serialize + for<'de> Deserialize<'de> + fmt::Debug,
        V: Encode + Decode<()> + Serialize + for<'de> Deserialize<'de> + fmt::Debug,
        M: Encode + Decode<()> + Serialize + for<'de> Deserialize<'de> + fmt::Debug + PartialEq,
    {
        let config = bincode::config::standard();
        let bytes = bincode::encode_to_vec(tree, config).unwrap();
        assert_eq!(bincode::encode_to_vec(m, config).unwrap(), bytes);
        let json = serde_json::to_string(tree).unwrap();
        assert_eq!(serde_json::to_string(m).unwrap(), json);
        assert_eq!(format!("{m:?}"), format!("{tree:?}"));
        let (back, _): (M, usize) = bincode::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(&back, m);
        assert_eq!(&serde_json::from_str::<M>(&json).unwrap(), m);
    }

    #[test]
    fn a_keymap_encodes_serializes_and_iterates_like_a_btreemap() {
        let tree: BTreeMap<String, u32> = pairs().into_iter().collect();
        let ids: KeyMap<String, u32> = pairs().into_iter().rev().collect();
        same_as_tree(&ids, &tree);
        assert!(ids.iter().eq(tree.iter()));
        assert!(ids.values().eq(tree.values()));

        let addrs: BTreeMap<Ipv4Addr, String> = (0..300u32)
            .map(|i| {
                (
                    Ipv4Addr::from(0x0a00_0000 + i * 7919 % 1000),
                    format!("c{i}"),
                )
            })
            .collect();
        let hashed: KeyMap<Ipv4Addr, String> = addrs.clone().into();
        same_as_tree(&hashed, &addrs);
        assert!(hashed.keys().eq(addrs.keys()));
    }

    #[test]
    fn a_keymap_looks_up_inserts_and_removes() {
        let mut m: KeyMap<String, u32> = pairs().into_iter().collect();
        assert_eq!(m.len(), 7);
        assert_eq!(m.get("charlie"), Some(&2));
        assert_eq!(m["bravo"], 4);
        assert!(m.contains_key(""));
        assert_eq!(m.insert("charlie".into(), 9), Some(2));
        assert_eq!(m.insert_new("charlie".into(), 1), Err(1));
        assert_eq!(m.insert_new("echo".into(), 1), Ok(()));
        *m.get_mut("charlie").unwrap() += 1;
        assert_eq!(m.remove("charlie"), Some(10));
        assert_eq!(m.remove("charlie"), None);
        assert!(!m.contains_key("charlie"));
        assert_eq!(m.len(), 7);
        assert!(!m.is_empty());
        let keys: Vec<&String> = m.keys().collect();
        assert_eq!(keys, ["", "alpha", "alpha2", "b", "bravo", "delta", "echo"]);
    }

    #[test]
    fn node_ids_hash_by_their_first_bytes_yet_compare_whole() {
        // Half of them share their first eight bytes (and so their hash).
        let ids: Vec<NodeId> = (0..40u8)
            .map(|i| {
                let mut b = [7u8; 32];
                b[31] = i;
                if i % 2 == 0 {
                    b[0] = i;
                }
                NodeId(b)
            })
            .collect();
        let pairs = || ids.iter().enumerate().map(|(i, id)| (*id, i as u8));
        let m: KeyMap<NodeId, u8, NodeIdHash> = pairs().collect();
        let tree: BTreeMap<NodeId, u8> = pairs().collect();
        same_as_tree(&m, &tree);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(m.get(id), Some(&(i as u8)));
        }
        assert_eq!(m.get(&NodeId([9; 32])), None);
        assert_eq!(m.len(), 40);
    }

    #[test]
    fn tombstones_are_a_map_in_key_order() {
        let mut t = Tombstones::new();
        let mut tree = BTreeMap::new();
        // In order at the back, out of order in the middle and front, a replacement.
        for (at, id) in [
            (10, "a"),
            (20, "b"),
            (30, "c"),
            (15, "d"),
            (5, "e"),
            (20, "f"),
        ] {
            assert_eq!(t.insert(at, id.into()), tree.insert(at, id.to_string()));
        }
        same_as_tree(&t, &tree);
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(&15).map(String::as_str), Some("d"));
        assert!(t.contains_key(&30) && !t.contains_key(&31));
        assert_eq!(t.first_key_value(), Some((&5, &"e".to_string())));
        assert_eq!(t.remove(&15), tree.remove(&15));
        assert_eq!(t.remove(&15), None);
        assert_eq!(t.pop_first(), tree.pop_first());
        same_as_tree(&t, &tree);
        t.push_first(5, "e".into());
        t.push_first(12, "g".into()); // not older than all: goes in its place
        tree.insert(5, "e".into());
        tree.insert(12, "g".into());
        same_as_tree(&t, &tree);
        assert!(t.values().eq(tree.values()));
    }
}
