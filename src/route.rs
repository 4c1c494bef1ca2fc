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
    pub method: Method,
    /// The path shape on the upstream (`{id}` stands for an incident id).
    pub path: &'static str,
    /// Changes upstream state: needs the `write` right, is never retried blindly, evicts cache
    /// entries, and keeps no interactive reserve.
    pub writes: bool,
    /// Default quotas: `(limit, window in seconds)`, every one of which a call must fit.
    pub quotas: &'static [(u32, u64)],
}

/// The Microsoft 365 Defender incidents API, with its documented limits.
pub const DEFENDER: [RouteSpec; 3] = [
    RouteSpec {
        name: "get_incident",
        method: Method::GET,
        path: "/api/incidents/{id}",
        writes: false,
        quotas: &[(100, 60), (1500, 3600)],
    },
    RouteSpec {
        name: "list_incidents",
        method: Method::GET,
        path: "/api/incidents",
        writes: false,
        quotas: &[(50, 60), (1500, 3600)],
    },
    RouteSpec {
        name: "update_incident",
        method: Method::PATCH,
        path: "/api/incidents/{id}",
        writes: true,
        quotas: &[(50, 60), (1500, 3600)],
    },
];

/// The routes the proxy serves today.
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
            assert!(r.path.starts_with('/'), "{}", r.name);
            assert_eq!(r.writes, r.method != Method::GET, "{}: writes iff not GET", r.name);
            assert_eq!(RouteKind::ALL[i].index(), i);
            assert_eq!(RouteKind::named(r.name), RouteKind::ALL[i]);
            assert_eq!(ROUTE_NAMES[i], r.name);
        }
    }
}
