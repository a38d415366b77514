//! Backend ids: a stable number per task for as long as the task stays a backend, never 0
//! (the program's "invalid"), and never handed out again soon after its task left, so a flow
//! still pinned to a removed backend's id cannot land on a new, unrelated backend.

use std::collections::BTreeMap;

/// Hands out backend ids and remembers whose they are.
#[derive(Clone, Debug)]
pub struct BackendIds {
    by_task: BTreeMap<String, u32>,
    next: u32,
}

impl Default for BackendIds {
    fn default() -> Self {
        BackendIds {
            by_task: BTreeMap::new(),
            next: 1,
        }
    }
}

impl BackendIds {
    /// The id of `task_id`, given a fresh one on first sight.
    pub fn id(&mut self, task_id: &str) -> u32 {
        if let Some(&id) = self.by_task.get(task_id) {
            return id;
        }
        let mut id = self.next;
        // Ids grow monotonically; after 2^32 - 1 of them they wrap, skipping 0 and any id
        // still in use.
        while id == 0 || self.by_task.values().any(|&used| used == id) {
            id = id.wrapping_add(1);
        }
        self.next = id.wrapping_add(1);
        self.by_task.insert(task_id.to_string(), id);
        id
    }

    /// Forgets every task not in `keep`; their ids are not reused until the counter wraps.
    pub fn retain(&mut self, keep: &std::collections::BTreeSet<&str>) {
        self.by_task.retain(|task, _| keep.contains(task.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_are_stable_nonzero_and_not_reused() {
        let mut ids = BackendIds::default();
        let a = ids.id("task-a");
        let b = ids.id("task-b");
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(ids.id("task-a"), a);
        ids.retain(&BTreeSet::from(["task-b"]));
        assert_eq!(ids.id("task-b"), b);
        let again = ids.id("task-a");
        assert_ne!(again, a, "a removed task's id is not reused at once");
        assert_ne!(again, b);
    }

    #[test]
    fn wrapping_skips_zero_and_ids_in_use() {
        let mut ids = BackendIds {
            by_task: BTreeMap::from([("kept".to_string(), 1)]),
            next: u32::MAX,
        };
        assert_eq!(ids.id("x"), u32::MAX);
        assert_eq!(ids.id("y"), 2, "skips 0 and the 1 in use");
    }
}
