//! The difference between two instance lists, matched by id.

use std::collections::BTreeMap;

/// What changed from an old list to a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDiff<'a, T> {
    /// In the new list only, in its order.
    pub added: Vec<&'a T>,
    /// In the old list only, in its order.
    pub removed: Vec<&'a T>,
    /// In both with different contents: `(old, new)`, in the new list's order.
    pub changed: Vec<(&'a T, &'a T)>,
}

impl<T> ListDiff<'_, T> {
    /// Whether the lists hold the same items (order aside).
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares `old` and `new` by `id` (e.g. `|x: &Instance| x.id()` or
/// `|x: &ConsulInstance| x.instance.id()`); with duplicate ids the first occurrence counts.
pub fn diff_by_id<'a, T: PartialEq>(
    old: &'a [T],
    new: &'a [T],
    id: impl Fn(&T) -> &str,
) -> ListDiff<'a, T> {
    let mut old_by_id: BTreeMap<&str, &T> = BTreeMap::new();
    for x in old {
        old_by_id.entry(id(x)).or_insert(x);
    }
    let mut new_by_id: BTreeMap<&str, &T> = BTreeMap::new();
    for x in new {
        new_by_id.entry(id(x)).or_insert(x);
    }
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for (key, x) in new.iter().map(|x| (id(x), x)) {
        if new_by_id
            .get(key)
            .is_some_and(|&first| !core::ptr::eq(first, x))
        {
            continue; // a later duplicate
        }
        match old_by_id.get(key) {
            None => added.push(x),
            Some(&before) if before != x => changed.push((before, x)),
            Some(_) => {}
        }
    }
    let removed = old
        .iter()
        .filter(|x| !new_by_id.contains_key(id(x)))
        .filter(|x| {
            old_by_id
                .get(id(x))
                .is_some_and(|&first| core::ptr::eq(first, *x))
        })
        .collect();
    ListDiff {
        added,
        removed,
        changed,
    }
}
