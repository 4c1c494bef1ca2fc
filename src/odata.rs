//! The OData query options of `GET /api/incidents` (and of the Graph list), as the proxy uses
//! them: a re-export of the `defender-odata` crate, which parses and canonicalises them.

pub use defender_odata::*;
