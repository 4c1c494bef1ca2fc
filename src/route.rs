//! The upstream routes the proxy forwards, as data: one table per upstream dialect. A route's
//! row gives its name (used for quotas in config, in metrics and in logs), method, path shape,
//! whether a call changes state, and its default quotas. Every list, array and default elsewhere
//! (the budget's per-route state, `budget.routes` defaults, metric labels, readiness detail) is
//! derived from [`ROUTES`]; nothing outside this table is ever forwarded.
//!
//! Adding a route is a row here, a parser for its requests (`target`) and a renderer for its
//! upstream call (`proxy`); the budget, config and metrics follow by themselves:
//!
//! ```
//! use defender_proxy::{config::BudgetConfig, route::{RouteKind, ROUTES}};
//! // Every route of the table has default quotas and a budget, with no list to extend by hand.
//! let defaults = BudgetConfig::default();
//! assert_eq!(RouteKind::ALL.len(), ROUTES.len());
//! for kind in RouteKind::ALL {
//!     assert_eq!(defaults.routes[kind.name()].quotas.len(), kind.spec().quotas.len());
//! }
//! ```
//!
//! Also the documented vocabulary of an update body.

use http::Method;

/// A route of the upstream API: an index into [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKind(u8);

/// What the proxy knows about one upstream route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Name in `budget.routes.<name>`, in metrics labels and log fields.
    pub name: &'static str,
    /// The method on a Graph upstream (a Defender upstream knows only GET and PATCH).
    pub method: Method,
    /// The path shape on a Defender upstream (`{id}` stands for an incident id); `None` when
    /// Defender has no such route (a comment is part of its PATCH).
    pub path: Option<&'static str>,
    /// The path shape on a Graph upstream.
    pub graph_path: &'static str,
    /// Changes upstream state: needs the `write` right, is never retried blindly, evicts cache
    /// entries, and keeps no interactive reserve.
    pub writes: bool,
    /// Default quotas: `(limit, window in seconds)`, every one of which a call must fit.
    pub quotas: &'static [(u32, u64)],
}

/// The incidents API's routes in both upstream dialects, with their default quotas.
///
/// The defaults are the Defender API's documented limits. Graph documents no quota for
/// `security/incidents` (the one `/security` figure it prints, 150 calls per minute per app
/// and tenant, names the legacy alerts resource), so a Graph upstream keeps the same
/// defaults: no looser than the API it replaces, and the proxy believes every 429 Graph sends
/// (with its possibly fractional `Retry-After`). `create_comment` is Graph's separate comment
/// POST; against Defender a comment travels inside the update, on `update_incident`.
pub const DEFENDER: [RouteSpec; 4] = [
    RouteSpec {
        name: "get_incident",
        method: Method::GET,
        path: Some("/api/incidents/{id}"),
        graph_path: "/v1.0/security/incidents/{id}",
        writes: false,
        quotas: &[(100, 60), (1500, 3600)],
    },
    RouteSpec {
        name: "list_incidents",
        method: Method::GET,
        path: Some("/api/incidents"),
        graph_path: "/v1.0/security/incidents",
        writes: false,
        quotas: &[(50, 60), (1500, 3600)],
    },
    RouteSpec {
        name: "update_incident",
        method: Method::PATCH,
        path: Some("/api/incidents/{id}"),
        graph_path: "/v1.0/security/incidents/{id}",
        writes: true,
        quotas: &[(50, 60), (1500, 3600)],
    },
    RouteSpec {
        name: "create_comment",
        method: Method::POST,
        path: None,
        graph_path: "/v1.0/security/incidents/{id}/comments",
        writes: true,
        quotas: &[(50, 60), (1500, 3600)],
    },
];

/// The routes the proxy serves.
pub const ROUTES: &[RouteSpec] = &DEFENDER;

/// How many routes there are (for per-route arrays).
pub const ROUTE_COUNT: usize = ROUTES.len();

/// Every route's name, in table order.
pub const ROUTE_NAMES: [&str; ROUTE_COUNT] = {
    let mut names = [""; ROUTE_COUNT];
    let mut i = 0;
    while i < ROUTE_COUNT {
        names[i] = ROUTES[i].name;
        i += 1;
    }
    names
};

/// The documented update vocabulary (`STATUSES`, `CLASSIFICATIONS`, `DETERMINATIONS`), shared with
/// the OData grammar and the simulator.
pub use defender_odata::vocabulary::{CLASSIFICATIONS, DETERMINATIONS, STATUSES};

#[allow(non_upper_case_globals)] // they name routes like the enum variants they replaced
impl RouteKind {
    pub const GetIncident: RouteKind = RouteKind::named("get_incident");
    pub const ListIncidents: RouteKind = RouteKind::named("list_incidents");
    pub const UpdateIncident: RouteKind = RouteKind::named("update_incident");
    pub const CreateComment: RouteKind = RouteKind::named("create_comment");

    /// Every route, in table order.
    pub const ALL: [RouteKind; ROUTE_COUNT] = {
        let mut all = [RouteKind(0); ROUTE_COUNT];
        let mut i = 0;
        while i < ROUTE_COUNT {
            all[i] = RouteKind(i as u8);
            i += 1;
        }
        all
    };

    /// The route of the table with this name; a name that is not in the table fails to compile
    /// where it is used in a constant.
    pub const fn named(name: &str) -> RouteKind {
        let mut i = 0;
        while i < ROUTE_COUNT {
            if const_eq(ROUTES[i].name, name) {
                return RouteKind(i as u8);
            }
            i += 1;
        }
        panic!("no route of that name in the table")
    }

    pub fn spec(self) -> &'static RouteSpec {
        &ROUTES[self.index()]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// Dense index, for per-route arrays.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's consistency: unique names in snake case, sane quotas, paths under the API,
    /// and every derived list in step with it.
    #[test]
    fn the_table_is_consistent() {
        let mut names: Vec<&str> = ROUTES.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ROUTES.len(), "route names are unique");
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(
                r.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                r.name
            );
            assert!(
                !r.quotas.is_empty() && r.quotas.iter().all(|&(l, w)| l > 0 && w > 0),
                "{}",
                r.name
            );
            assert!(r.path.map_or(true, |p| p.starts_with("/api/")), "{}", r.name);
            assert!(r.graph_path.starts_with("/v1.0/security/"), "{}", r.name);
            assert_eq!(r.writes, r.method != Method::GET, "{}: writes iff not GET", r.name);
            assert_eq!(RouteKind::ALL[i].index(), i);
            assert_eq!(RouteKind::named(r.name), RouteKind::ALL[i]);
            assert_eq!(ROUTE_NAMES[i], r.name);
        }
    }
}
