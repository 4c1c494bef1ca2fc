//! The upstream routes the proxy forwards, as data: their names (used for quotas in config, in
//! metrics and in logs), methods, and whether a call changes state.
//!
//! Also the documented vocabulary of an update body. Nothing outside this table is ever forwarded. Adding an upstream flavour (say the Graph
//! security API) means another table and another path parser, not changes in the budget or cache.

use http::Method;

/// One of the three incidents operations of the Defender API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    GetIncident,
    ListIncidents,
    UpdateIncident,
}

/// What the proxy knows about one upstream route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub kind: RouteKind,
    /// Name in `budget.routes.<name>`, in metrics labels and log fields.
    pub name: &'static str,
    pub method: Method,
    /// Changes upstream state: needs the `write` right, is never retried, evicts cache entries.
    pub writes: bool,
}

pub const ROUTES: [RouteSpec; 3] = [
    RouteSpec {
        kind: RouteKind::GetIncident,
        name: "get_incident",
        method: Method::GET,
        writes: false,
    },
    RouteSpec {
        kind: RouteKind::ListIncidents,
        name: "list_incidents",
        method: Method::GET,
        writes: false,
    },
    RouteSpec {
        kind: RouteKind::UpdateIncident,
        name: "update_incident",
        method: Method::PATCH,
        writes: true,
    },
];

/// The documented update vocabulary (`STATUSES`, `CLASSIFICATIONS`, `DETERMINATIONS`), shared with
/// the OData grammar and the simulator.
pub use defender_odata::vocabulary::{CLASSIFICATIONS, DETERMINATIONS, STATUSES};

impl RouteKind {
    pub const ALL: [RouteKind; 3] = [
        RouteKind::GetIncident,
        RouteKind::ListIncidents,
        RouteKind::UpdateIncident,
    ];

    pub fn spec(self) -> &'static RouteSpec {
        &ROUTES[self.index()]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Dense index, for per-route arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}
