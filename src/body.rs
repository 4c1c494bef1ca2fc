//! An answer's body in each shape a caller may ask for it: the Defender dialect, the Graph
//! dialect without alerts, and the Graph dialect with `$expand=alerts`.
//!
//! An upstream answer is translated once, when it arrives, into every view a caller of either
//! facade may want, and the cache keeps all of them: a hit in the other dialect then costs what a
//! native hit costs (a reference-counted clone), never a translation. A view is absent when the
//! answer cannot be rendered that way (a list is cached per dialect; an incident whose values
//! have no counterpart in the other dialect).

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

/// The renderings of one answer, by [`View`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bodies([Option<Bytes>; 3]);

impl Bodies {
    /// An answer readable in one view only.
    pub fn one(view: View, body: Bytes) -> Bodies {
        let mut b = Bodies::default();
        b.set(view, body);
        b
    }

    /// The same bytes for every view (an answer whose shape does not depend on the dialect).
    pub fn same(body: Bytes) -> Bodies {
        Bodies([Some(body.clone()), Some(body.clone()), Some(body)])
    }

    pub fn set(&mut self, view: View, body: Bytes) {
        self.0[view.index()] = Some(body);
    }

    pub fn get(&self, view: View) -> Option<&Bytes> {
        self.0[view.index()].as_ref()
    }

    /// Bytes held, counting shared buffers once (for the cache's weigher).
    pub fn byte_len(&self) -> usize {
        let mut total = 0;
        for (i, b) in self.0.iter().enumerate() {
            let Some(b) = b else { continue };
            let shared = self.0[..i].iter().flatten().any(|o| o.as_ptr() == b.as_ptr());
            if !shared {
                total += b.len();
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
        let mut two = Bodies::one(View::Defender, Bytes::from_static(b"12"));
        assert!(two.get(View::Graph).is_none());
        two.set(View::Graph, Bytes::from(vec![b'x'; 3]));
        assert_eq!(two.byte_len(), 5);
        assert!(View::Graph.is_graph() && !View::Defender.is_graph());
    }
}
