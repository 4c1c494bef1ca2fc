//! The simulator's own control routes under `/_sim` (no token needed; not part of the Defender
//! API): stats, fault plan, and changes, for benchmarks that run the simulator as a process.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::faults::Faults;
use crate::Shared;

/// `GET /_sim/stats`.
pub(crate) async fn stats(State(sim): State<Arc<Shared>>) -> Response {
    Json(sim.stats.snapshot()).into_response()
}

/// `POST /_sim/stats/reset`.
pub(crate) async fn reset_stats(State(sim): State<Arc<Shared>>) -> StatusCode {
    sim.stats.reset();
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/faults` with a [`Faults`] JSON body; replaces the plan.
pub(crate) async fn set_faults(State(sim): State<Arc<Shared>>, Json(faults): Json<Faults>) -> StatusCode {
    sim.faults.lock().replace(faults);
    StatusCode::NO_CONTENT
}

/// `POST /_sim/incidents`: a new incident; answers `{"incidentId", "lastUpdateTime"}`.
pub(crate) async fn create(State(sim): State<Arc<Shared>>) -> Response {
    let (id, stamp) = sim.create();
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "incidentId": id, "lastUpdateTime": stamp })),
    )
        .into_response()
}

/// `POST /_sim/incidents/{id}/touch`: changes the incident now.
pub(crate) async fn touch(State(sim): State<Arc<Shared>>, Path(id): Path<i64>) -> Response {
    match sim.touch(id, "Simulated change.", "Simulator") {
        Some(stamp) => Json(serde_json::json!({ "incidentId": id, "lastUpdateTime": stamp })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
