//! The write path: `PATCH /api/incidents/{id}`.
//!
//! Never retried blindly (a comment would be added twice), except after a 401, which means the
//! upstream applied nothing. The caller waits for its slot; once the slot is granted, the write,
//! its cache update and the list invalidation run as a task of their own, so a caller that
//! disconnects cannot leave the cache holding the pre-write incident. The write is ordered after
//! every read that started before it: those reads cannot store their older answers, and readers
//! who arrive afterwards never join them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::time::Instant;

use super::{read::FlightKey, Answer, CacheResult, Failure, Outcome, Proxy};
use crate::{
    cache::{Entry, Key},
    error::ApiError,
    exchange::{Admitted, CallError, Retry},
    outcome::json_content_type,
    route::RouteKind,
    upstream::{Request, UpstreamError},
};

impl Proxy {
    pub(super) async fn update(self: &Arc<Self>, id: i64, body: Bytes, ctx: super::Ctx) -> Outcome {
        let route = RouteKind::UpdateIncident;
        ctx.work.release(); // waiting for a slot is not work
        let admitted = self
            .exchange
            .admit(route, &ctx.caller, ctx.wait, None)
            .await
            .map_err(|e| self.call_failure(route, e))?;
        let this = self.clone();
        let request_id = ctx.request_id;
        let task = tokio::spawn(async move { this.finish_update(id, body, request_id, admitted).await });
        task.await.unwrap_or_else(|_| {
            Err(ApiError::OutcomeUnknown(
                "the update task ended unexpectedly: it may or may not have been applied; read the incident before retrying"
                    .into(),
            )
            .into())
        })
    }

    async fn finish_update(self: Arc<Self>, id: i64, body: Bytes, request_id: String, admitted: Admitted) -> Outcome {
        let route = RouteKind::UpdateIncident;
        let key = Key::Incident(id);
        let queued = admitted.queued();
        let req = Request {
            method: Method::PATCH,
            path_and_query: format!("/api/incidents/{id}"),
            body: Some(body),
            request_id,
        };
        let sent_at = Instant::now();
        let result = self.exchange.send(route, &req, admitted, Retry::Write).await;
        let sent = match result {
            Ok(sent) => sent,
            Err(e) => {
                self.written(key, None).await;
                let budget = Some((route, self.exchange.budget().status(route).windows));
                let error = match e {
                    CallError::Upstream(UpstreamError::Connect(_)) | CallError::NoToken(_) | CallError::Refused(_) => {
                        return Err(Failure {
                            budget,
                            ..self.call_failure(route, e)
                        })
                    }
                    CallError::Upstream(e) => {
                        tracing::warn!(incident.id = id, error = %e, "update outcome unknown");
                        ApiError::OutcomeUnknown(
                            "the connection to the upstream failed after the update was sent: it may or may not have been applied; read the incident before retrying".into(),
                        )
                    }
                };
                return Err(Failure {
                    error,
                    budget,
                    upstream_status: None,
                });
            }
        };
        let status = sent.response.status.as_u16();
        if sent.response.status == StatusCode::OK {
            let resp = &sent.response;
            let content_type = resp.content_type.clone().unwrap_or_else(json_content_type);
            let entry = self.ingest.check_incident(id, &resp.body).map(|last_update| Entry {
                status: StatusCode::OK,
                body: resp.body.clone(),
                content_type: content_type.clone(),
                stored_at: sent_at,
                ttl: self.policy.cache.ttl,
                last_update,
            });
            self.written(key, entry).await;
            return Ok(Answer {
                status: sent.response.status,
                content_type,
                body: sent.response.body,
                cache: CacheResult::Bypass { status: Some(status) },
                age: None,
                budget: Some((route, sent.windows)),
                queued,
                upstream_status: Some(status),
            });
        }
        self.written(key, None).await;
        if sent.response.status.is_server_error() {
            return Err(Failure {
                error: ApiError::OutcomeUnknown(
                    format!("the upstream answered {status}: the update may or may not have been applied").into(),
                ),
                budget: Some((route, sent.windows)),
                upstream_status: Some(status),
            });
        }
        let mut answer = self.non_success(route, sent, None)?;
        answer.cache = CacheResult::Bypass { status: Some(status) };
        answer.queued = queued;
        Ok(answer)
    }

    /// After a write (whatever its outcome): the incident's entry becomes the write's answer or
    /// is forgotten, cached lists go, and reads in flight for them take no newcomers.
    async fn written(&self, key: Key, entry: Option<Entry>) {
        self.store.write(key.clone(), entry.map(Arc::new)).await;
        self.store.invalidate_lists().await;
        self.flights
            .forget_if(|fk: &FlightKey| fk.key == key || matches!(fk.key, Key::List(_)));
    }
}
