//! Replays the fuzz seed corpus through the query parsers, so the fuzz target's property (no
//! panic; an accepted query survives a canonical round trip) is checked on every `cargo test`,
//! without nightly. Seeds named `valid_*` must be accepted and `invalid_*` rejected by the
//! Defender parser, `graph_valid_*` and `graph_invalid_*` likewise by the Graph parser; other
//! names (inputs cargo-fuzz adds itself) only have to satisfy the property.

use std::path::Path;

use defender_proxy::odata::{GraphListQuery, ListQuery};

#[test]
fn fuzz_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/odata_filter");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 10, "expected a seed corpus in {}", dir.display());

    let (mut accepted, mut rejected) = (0, 0);
    for path in &paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The fuzz target skips non-UTF-8 input, as a URL query reaching the proxy is a str.
        let result = std::str::from_utf8(&bytes).ok().map(ListQuery::parse);
        match result {
            Some(Ok(query)) => {
                let canonical = query.canonical();
                let again = ListQuery::parse(&canonical)
                    .unwrap_or_else(|e| panic!("{name}: canonical {canonical:?} rejected: {e}"));
                assert_eq!(again, query, "{name}: canonical {canonical:?} changed the query");
                assert_eq!(again.canonical(), canonical, "{name}: canonical form unstable");
                assert!(!name.starts_with("invalid_"), "{name} was accepted: {query:?}");
                accepted += 1;
            }
            Some(Err(error)) => {
                assert!(!error.message.is_empty(), "{name}: empty error message");
                assert!(!name.starts_with("valid_"), "{name} was rejected: {error}");
                rejected += 1;
            }
            None => {
                assert!(!name.starts_with("valid_"), "{name} is not UTF-8");
                rejected += 1;
            }
        }
    }
    assert!(accepted > 0 && rejected > 0, "{accepted} accepted, {rejected} rejected");
}

#[test]
fn fuzz_corpus_replays_cleanly_through_the_graph_parser() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/odata_filter");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    paths.sort();
    let (mut accepted, mut rejected) = (0, 0);
    for path in &paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match std::str::from_utf8(&bytes).ok().map(GraphListQuery::parse) {
            Some(Ok(query)) => {
                let canonical = query.canonical();
                let again = GraphListQuery::parse(&canonical)
                    .unwrap_or_else(|e| panic!("{name}: canonical {canonical:?} rejected: {e}"));
                assert_eq!(again, query, "{name}: canonical {canonical:?} changed the query");
                assert_eq!(again.canonical(), canonical, "{name}: canonical form unstable");
                assert!(!name.starts_with("graph_invalid_"), "{name} was accepted: {query:?}");
                accepted += 1;
            }
            Some(Err(error)) => {
                assert!(!error.message.is_empty(), "{name}: empty error message");
                assert!(!name.starts_with("graph_valid_"), "{name} was rejected: {error}");
                rejected += 1;
            }
            None => {
                assert!(!name.starts_with("graph_valid_"), "{name} is not UTF-8");
                rejected += 1;
            }
        }
    }
    assert!(
        accepted >= 4 && rejected >= 4,
        "{accepted} accepted, {rejected} rejected"
    );
}
