//! Fuzzes the OData query parsers of both dialects (Defender's `ListQuery`, Graph's
//! `GraphListQuery`): any input must be accepted or rejected without panicking, and an accepted
//! query's canonical form must parse back to the same query, because that form is both the
//! cache key and what is sent upstream.
#![no_main]

use defender_proxy::odata::{Filter, GraphListQuery, ListQuery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(query) = ListQuery::parse(text) {
        let canonical = query.canonical();
        let again =
            ListQuery::parse(&canonical).unwrap_or_else(|e| panic!("canonical form {canonical:?} was rejected: {e}"));
        assert_eq!(again, query, "canonical form {canonical:?} changed the query");
        assert_eq!(again.canonical(), canonical, "canonical form is not stable");
    }

    if let Ok(query) = GraphListQuery::parse(text) {
        let canonical = query.canonical();
        let again = GraphListQuery::parse(&canonical)
            .unwrap_or_else(|e| panic!("Graph canonical form {canonical:?} was rejected: {e}"));
        assert_eq!(again, query, "Graph canonical form {canonical:?} changed the query");
        assert_eq!(again.canonical(), canonical, "Graph canonical form is not stable");
    }

    // The same bytes as already-decoded filter text reach the grammar without the URL layer.
    if let Ok(filter) = Filter::parse(text) {
        let canonical = filter.canonical();
        assert_eq!(Filter::parse(&canonical).as_ref(), Ok(&filter), "{canonical:?}");
    }
    if let Ok(filter) = Filter::parse_graph(text) {
        let canonical = filter.canonical();
        assert_eq!(Filter::parse_graph(&canonical).as_ref(), Ok(&filter), "{canonical:?}");
    }
});
