//! The simulator's own control routes under `/_sim` (no token needed; not part of the Defender
//! API): stats, fault plan, and changes, for benchmarks that run the simulator as a process.
//! Each acts on the default tenant, or on the tenant named by `?tenant=<tenant id>` (404 if
//! the simulator serves no such tenant).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::faults::Faults;
use crate::tenant::Tenancy;
use crate::{Shared, HOME};

/// The optional `?tenant=` of every control route.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Which {
    tenant: Option<String>,
}

impl Which {
    fn pick<'a>(&self, sim: &'a Shared) -> Result<&'a Tenancy, StatusCode> {
        match &self.tenant {
            None => Ok(sim.tenancy(HOME)),
            Some(id) => sim
                .find_tenant(id)
                .map(|index| sim.tenancy(index))
                .ok_or(StatusCode::NOT_FOUND),
        }
    }
}

/// `GET /_sim/stats`.
pub(crate) async fn stats(State(sim): State<Arc<Shared>>, Query(which): Query<Which>) -> Response {
    match which.pick(&sim) {
        Ok(tenant) => Json(tenant.stats.snapshot()).into_response(),
        Err(status) => status.into_response(),
    }
}

/// `POST /_sim/stats/reset`.
pub(crate) async fn reset_stats(State(sim): State<Arc<Shared>>, Query(which): Query<Which>) -> StatusCode {
    match which.pick(&sim) {
        Ok(tenant) => {
            tenant.stats.reset();
            StatusCode::NO_CONTENT
        }
        Err(status) => status,
    }
}

/// `PUT /_sim/faults` with a [`Faults`] JSON body; replaces the plan.
pub(crate) async fn set_faults(
    State(sim): State<Arc<Shared>>,
    Query(which): Query<Which>,
    Json(faults): Json<Faults>,
) -> StatusCode {
    match which.pick(&sim) {
        Ok(tenant) => {
            tenant.faults.lock().replace(faults);
            StatusCode::NO_CONTENT
        }
        Err(status) => status,
    }
}

/// `POST /_sim/incidents`: a new incident; answers `{"incidentId", "lastUpdateTime"}`.
pub(crate) async fn create(State(sim): State<Arc<Shared>>, Query(which): Query<Which>) -> Response {
    let tenant = match which.pick(&sim) {
        Ok(tenant) => tenant,
        Err(status) => return status.into_response(),
    };
    let (id, stamp) = tenant.create();
    (
        StatusCode::CREATED,
        Json(serde_json::json!({ "incidentId": id, "lastUpdateTime": stamp })),
    )
        .into_response()
}

/// `POST /_sim/incidents/{id}/touch`: changes the incident now.
pub(crate) async fn touch(State(sim): State<Arc<Shared>>, Path(id): Path<i64>, Query(which): Query<Which>) -> Response {
    let tenant = match which.pick(&sim) {
        Ok(tenant) => tenant,
        Err(status) => return status.into_response(),
    };
    match tenant.touch(id, "Simulated change.", "Simulator") {
        Some(stamp) => Json(serde_json::json!({ "incidentId": id, "lastUpdateTime": stamp })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
