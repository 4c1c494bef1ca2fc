//! Fuzzes the request-target parsers of both facades (`/api/incidents...` and
//! `/v1.0/security/incidents...`): any path and query must be accepted or refused without
//! panicking, and an accepted target must name an incident id that is positive and whose
//! canonical decimal form appears in the path (no spelling reaches another incident).
#![no_main]

use defender_proxy::{dialect::target::GraphTarget, target::Target};
use http::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (text, None),
    };
    for method in [Method::GET, Method::PATCH, Method::POST, Method::DELETE] {
        let id = match defender_proxy::target::parse(&method, path, query) {
            Ok(Target::GetIncident(id) | Target::UpdateIncident(id)) => Some(id),
            _ => None,
        };
        let graph_id = match defender_proxy::dialect::target::parse(&method, path, query) {
            Ok(
                GraphTarget::GetIncident { id, .. }
                | GraphTarget::UpdateIncident(id)
                | GraphTarget::CommentIncident(id),
            ) => Some(id),
            _ => None,
        };
        for id in id.into_iter().chain(graph_id) {
            assert!(id > 0, "{path:?}");
            let digits = path.rsplit('/').find(|s| s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty());
            let digits = digits.unwrap_or_else(|| panic!("{path:?} gave id {id} without digits"));
            assert_eq!(digits.trim_start_matches('0'), id.to_string(), "{path:?}");
        }
    }
});
