//! An answer's body in each shape a caller may ask for it: the Defender dialect, the Graph
//! dialect without alerts, and the Graph dialect with `$expand=alerts`.
//!
//! An upstream answer is kept as it came (its *native* view) and translated into another view
//! the first time a caller of that view asks, then kept: translation happens at most once per
//! upstream answer and view, never once per hit, so a hit in the other dialect costs what a
//! native hit costs (a reference-counted clone). Answers nobody reads in the other dialect (most
//! of what the sync writes, for a site whose tools all speak one dialect) are never translated.
//! A view is absent when the answer cannot be rendered that way (a list is cached per dialect;
//! an incident whose values have no counterpart in the other dialect).

use std::sync::OnceLock;

use bytes::Bytes;

/// Which rendering of an answer a caller reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    /// `/api/incidents...`: Defender's schema (alerts always included).
    Defender,
    /// `/v1.0/security/incidents...` without `$expand=alerts`.
    Graph,
    /// `/v1.0/security/incidents...?$expand=alerts`.
    GraphAlerts,
}

impl View {
    const ALL: [View; 3] = [View::Defender, View::Graph, View::GraphAlerts];

    fn index(self) -> usize {
        match self {
            View::Defender => 0,
            View::Graph => 1,
            View::GraphAlerts => 2,
        }
    }

    /// Whether this view belongs to the Graph facade (its errors use Graph's envelope).
    pub fn is_graph(self) -> bool {
        !matches!(self, View::Defender)
    }
}

/// Renders the native body in another view (`None`: it has no such rendering).
pub type Render = fn(View, &Bytes) -> Option<Bytes>;

/// The renderings of one answer, by [`View`]: those given, plus those `render` makes on first
/// use from the native body.
#[derive(Debug, Default)]
pub struct Bodies {
    slots: [OnceLock<Option<Bytes>>; 3],
    /// The native body and how to translate it, for the views not given.
    lazy: Option<(Bytes, Render)>,
}

impl Bodies {
    /// An answer readable in one view only.
    pub fn one(view: View, body: Bytes) -> Bodies {
        let b = Bodies::default();
        let _ = b.slots[view.index()].set(Some(body));
        b
    }

    /// The same bytes for every view (an answer whose shape does not depend on the dialect).
    pub fn same(body: Bytes) -> Bodies {
        let b = Bodies::default();
        for slot in &b.slots {
            let _ = slot.set(Some(body.clone()));
        }
        b
    }

    /// The native body in `native`'s view; the other views made by `render` when first read.
    pub fn translated(native: View, body: Bytes, render: Render) -> Bodies {
        let b = Bodies::one(native, body.clone());
        Bodies {
            lazy: Some((body, render)),
            ..b
        }
    }

    /// Adds a rendering made elsewhere (e.g. an error envelope in the other dialect).
    pub fn with(self, view: View, body: Bytes) -> Bodies {
        let _ = self.slots[view.index()].set(Some(body));
        self
    }

    /// The body in `view`, translating it now if this is the first time.
    pub fn get(&self, view: View) -> Option<&Bytes> {
        let slot = &self.slots[view.index()];
        if let Some(done) = slot.get() {
            return done.as_ref();
        }
        let (native, render) = self.lazy.as_ref()?;
        slot.get_or_init(|| render(view, native)).as_ref()
    }

    /// Bytes held, counting shared buffers once, plus the native body's size for each view
    /// not yet rendered (a translation is about as large): the cache's weigher counts an entry
    /// once, when it is stored, so it counts what the entry may grow to.
    pub fn byte_len(&self) -> usize {
        let mut seen: Vec<*const u8> = Vec::with_capacity(3);
        let mut total = 0;
        for view in View::ALL {
            match self.slots[view.index()].get() {
                Some(Some(b)) => {
                    if !seen.contains(&b.as_ptr()) {
                        seen.push(b.as_ptr());
                        total += b.len();
                    }
                }
                Some(None) => {}
                None => total += self.lazy.as_ref().map_or(0, |(native, _)| native.len()),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_kept_apart_and_shared_bytes_count_once() {
        let b = Bodies::same(Bytes::from_static(b"abcd"));
        assert_eq!(b.byte_len(), 4);
        assert_eq!(b.get(View::GraphAlerts).unwrap().as_ref(), b"abcd");
        let two = Bodies::one(View::Defender, Bytes::from_static(b"12")).with(View::Graph, Bytes::from(vec![b'x'; 3]));
        assert!(two.get(View::GraphAlerts).is_none());
        assert_eq!(two.byte_len(), 5);
        assert!(View::Graph.is_graph() && !View::Defender.is_graph());
    }

    #[test]
    fn other_views_are_rendered_once_on_first_read() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        fn upper(view: View, b: &Bytes) -> Option<Bytes> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            (view != View::GraphAlerts).then(|| Bytes::from(b.to_ascii_uppercase()))
        }
        let b = Bodies::translated(View::Defender, Bytes::from_static(b"abc"), upper);
        assert_eq!(b.byte_len(), 9, "two views not yet rendered are reserved for");
        assert_eq!(b.get(View::Defender).unwrap().as_ref(), b"abc");
        assert_eq!(CALLS.load(Ordering::SeqCst), 0, "the native view needs no translation");
        assert_eq!(b.get(View::Graph).unwrap().as_ref(), b"ABC");
        assert_eq!(b.get(View::Graph).unwrap().as_ref(), b"ABC");
        assert_eq!(CALLS.load(Ordering::SeqCst), 1, "translated once, then kept");
        assert!(b.get(View::GraphAlerts).is_none());
        assert!(b.get(View::GraphAlerts).is_none());
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            2,
            "a view without rendering is tried once"
        );
        assert_eq!(b.byte_len(), 6);
    }
}
