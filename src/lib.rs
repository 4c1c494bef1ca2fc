#![forbid(unsafe_code)]
pub mod budget;
pub mod config;
pub mod error;
pub mod route;
pub mod auth {
    pub fn parse_key_hash(s: &str) -> Option<[u8; 32]> {
        let hex = s.strip_prefix("sha256:")?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).ok()?;
        Some(out)
    }
}
