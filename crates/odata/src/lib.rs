//! defender-odata: the OData query grammar of the Defender incidents API (`$filter`, `$top`,
//! `$skip`) and of the Microsoft Graph security incidents API (plus `$orderby`, `$expand`,
//! `$count`), with the enum vocabularies both dialects share. Used by the proxy (to validate and
//! canonicalise) and by the simulator (to serve lists); depends on neither.

#![forbid(unsafe_code)]

pub mod enums;
mod odata_all;
pub mod vocabulary;

pub use odata_all::*;
