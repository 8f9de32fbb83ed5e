//! Interning of the strings per-user state holds (item ids, categories), so each
//! distinct string is stored once per worker and state holds 4-byte ids.

use compact_str::CompactString;
use hashbrown::HashMap;

/// A worker's string pool. Ids are dense and never reused.
#[derive(Debug, Default, Clone)]
pub struct Interner {
    ids: HashMap<CompactString, u32>,
    strings: Vec<CompactString>,
}

impl Interner {
    /// The id of `text`, adding it if new.
    pub fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = u32::try_from(self.strings.len()).expect("fewer than 2^32 distinct strings per worker");
        let text = CompactString::from(text);
        self.strings.push(text.clone());
        self.ids.insert(text, id);
        id
    }

    /// The string of an id this interner gave out.
    pub fn resolve(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    /// Every string, by id.
    pub fn strings(&self) -> &[CompactString] {
        &self.strings
    }

    /// How many distinct strings it holds.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_string_same_id() {
        let mut interner = Interner::default();
        let a = interner.intern("item-1");
        let b = interner.intern("item-2");
        assert_ne!(a, b);
        assert_eq!(interner.intern("item-1"), a);
        assert_eq!(interner.resolve(b), "item-2");
        assert_eq!(interner.len(), 2);
    }
}
