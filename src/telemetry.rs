//! Diagnostic logging: JSON lines by default (one object per event), a readable format on
//! request. `RUST_LOG` overrides `telemetry.log_level`. The per-request access log line does not
//! go through here but through [`crate::access_log`], which is much cheaper per request.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. Call once, from `main`.
pub fn init(config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match config.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Pretty => builder.init(),
    }
}
