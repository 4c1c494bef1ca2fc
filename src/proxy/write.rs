//! The write path: a PATCH of either facade, or a Graph comment POST.
//!
//! Never retried blindly (a comment would be added twice), except after a 401, which means the
//! upstream applied nothing. The caller waits for its first slot; once it is granted, the write,
//! its cache update and the list invalidation run as a task of their own, so a caller that
//! disconnects cannot leave the cache holding the pre-write incident. The write is ordered after
//! every read that started before it: those reads cannot store their older answers, and readers
//! who arrive afterwards never join them.
//!
//! Against a Graph upstream a Defender PATCH with a `comment` is two calls: the PATCH (on
//! `update_incident`) and then the comment POST (on `create_comment`), each with its own slot.
//! If the second fails after the first succeeded, the caller is told exactly what was applied
//! ([`ApiError::PartiallyApplied`]), and nothing is retried on its behalf.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::{read::FlightKey, Answer, CacheResult, Failure, Outcome, Proxy};
use crate::{
    body::{Bodies, View},
    budget::Caller,
    cache::{Entry, Key},
    dialect::{
        incident::graph_to_defender,
        update::{graph_comment_body, Reply, WritePlan},
        Dialect,
    },
    error::ApiError,
    exchange::{Admitted, CallError, Retry, Sent},
    ingest::render_incident,
    outcome::json_content_type,
    route::RouteKind,
    upstream::{Request, UpstreamError},
};

/// One write, as it runs detached from its caller.
struct Job {
    id: i64,
    plan: WritePlan,
    view: View,
    request_id: String,
    caller: Caller,
    /// How long later calls of the write (the comment after the PATCH) may wait for a slot.
    wait: Duration,
}

impl Proxy {
    pub(super) async fn update(self: &Arc<Self>, id: i64, plan: WritePlan, view: View, ctx: super::Ctx) -> Outcome {
        let route = if plan.patch.is_some() {
            RouteKind::UpdateIncident
        } else {
            RouteKind::CreateComment
        };
        ctx.work.release(); // waiting for a slot is not work
        let admitted = self
            .exchange
            .admit(route, &ctx.caller, ctx.wait, None)
            .await
            .map_err(|e| self.call_failure(route, e))?;
        let this = self.clone();
        let job = Job {
            id,
            plan,
            view,
            request_id: ctx.request_id,
            caller: ctx.caller,
            wait: ctx.wait,
        };
        let task = tokio::spawn(async move { this.finish_update(job, route, admitted).await });
        task.await.unwrap_or_else(|_| {
            Err(ApiError::OutcomeUnknown(
                "the update task ended unexpectedly: it may or may not have been applied; read the incident before retrying"
                    .into(),
            )
            .into())
        })
    }

    async fn finish_update(self: Arc<Self>, job: Job, route: RouteKind, admitted: Admitted) -> Outcome {
        let key = Key::Incident(job.id);
        let queued = admitted.queued();
        let upstream = self.upstream_api();
        let (method, path, body) = match (&job.plan.patch, upstream) {
            (Some(patch), Dialect::Defender) => (Method::PATCH, format!("/api/incidents/{}", job.id), patch.clone()),
            (Some(patch), Dialect::Graph) => (
                Method::PATCH,
                format!("/v1.0/security/incidents/{}", job.id),
                patch.clone(),
            ),
            (None, _) => (
                Method::POST,
                format!("/v1.0/security/incidents/{}/comments", job.id),
                comment_body(job.plan.comment.as_deref().unwrap_or_default()),
            ),
        };
        let sent_at = Instant::now();
        let first = match self.send_write(route, method, path, body, &job, admitted).await {
            Ok(sent) => sent,
            Err(failure) => {
                self.written(key, None).await;
                return Err(failure);
            }
        };
        // Graph documents 200 with the incident; any 2xx means the write was applied.
        if !first.response.status.is_success() {
            self.written(key, None).await;
            return self.write_refused(first, queued, &job);
        }
        let windows = first.windows.clone();
        match (upstream, job.plan.patch.is_some(), job.plan.comment.clone()) {
            // One Defender PATCH did everything: its answer is the incident.
            (Dialect::Defender, _, _) => {
                let incident = render_incident(Dialect::Defender, &first.response.body).filter(|i| i.id == job.id);
                let entry = incident.clone().map(|i| self.ingest.incident_entry(i, sent_at));
                self.written(key, entry).await;
                let body = match (job.plan.reply, incident) {
                    (Reply::Incident, Some(i)) => i.bodies.get(job.view).cloned(),
                    (Reply::Comments, Some(i)) => i.bodies.get(View::Graph).and_then(|g| comments_page(g, job.id)),
                    (_, None) => None,
                };
                self.write_answer(body, windows, queued)
            }
            // A Graph PATCH, then the comment if there is one.
            (Dialect::Graph, true, comment) => {
                let patched = first.response.body;
                // Graph's PATCH answer has no alerts; a Defender caller's answer takes them from
                // the cached incident, read before the write forgets it.
                let alerts = self.cached_alerts(job.id);
                let commented = comment.is_some();
                let comments = match comment {
                    None => None,
                    Some(text) => match self.post_comment(&job, &text).await {
                        Ok(page) => Some(page),
                        Err(cause) => {
                            self.written(key, None).await;
                            let comment = if matches!(cause, ApiError::OutcomeUnknown(_)) {
                                "the comment may or may not have been added (read the incident before resending it)"
                            } else {
                                "the comment was not added"
                            };
                            return Err(partial(
                                format!("the update of {} was applied, {comment}", job.plan.fields.join(", ")),
                                cause,
                                windows,
                            ));
                        }
                    },
                };
                // Graph's PATCH answer has no alerts: the entry is forgotten, not replaced, and
                // the next read fetches the whole incident.
                self.written(key, None).await;
                let is_incident = serde_json::from_slice::<Value>(&patched).is_ok_and(|v| v.get("id").is_some());
                let body = match (job.view, is_incident, alerts) {
                    (View::Defender, true, Some(alerts)) => {
                        defender_after_graph_write(&patched, comments.as_ref(), Some(alerts))
                    }
                    (View::Graph | View::GraphAlerts, true, _) => Some(patched),
                    // No incident in the answer (a 204, say), or a Defender caller whose answer
                    // needs alerts nobody has cached: read it back (a Get slot), never claim an
                    // incident has no alerts.
                    (view, _, _) => match self.read_back(&job).await {
                        Ok(bodies) => bodies.get(view).cloned(),
                        Err(cause) => {
                            let applied = if commented {
                                "the update and the comment were applied (do not resend them); reading the incident back failed"
                            } else {
                                "the update was applied; reading the incident back failed"
                            };
                            return Err(partial(applied.into(), cause, windows));
                        }
                    },
                };
                self.write_answer(body, windows, queued)
            }
            // A comment alone on Graph: the POST's answer is the comment list.
            (Dialect::Graph, false, _) => {
                self.written(key.clone(), None).await;
                let comments = first.response.body;
                let is_page = serde_json::from_slice::<Value>(&comments).is_ok_and(|v| v["value"].is_array());
                let body = match (job.plan.reply, is_page) {
                    (Reply::Comments, true) => Some(comments),
                    // A Defender caller expects the incident, and an answer without the comment
                    // list (a 201 or 204 with no body) is completed the same way: read it back.
                    (reply, _) => match self.read_back(&job).await {
                        Ok(bodies) => match reply {
                            Reply::Incident => bodies.get(View::Defender).cloned(),
                            Reply::Comments => bodies.get(View::Graph).and_then(|g| comments_page(g, job.id)),
                        },
                        Err(cause) => {
                            return Err(partial(
                                "the comment was added (do not send it again); reading the incident back failed".into(),
                                cause,
                                windows,
                            ))
                        }
                    },
                };
                self.write_answer(body, windows, queued)
            }
        }
    }

    /// Sends one write call with its slot already granted; a failure to get an answer is the
    /// caller's error (an unknown outcome once the request may have left).
    async fn send_write(
        &self,
        route: RouteKind,
        method: Method,
        path_and_query: String,
        body: Bytes,
        job: &Job,
        admitted: Admitted,
    ) -> Result<Sent, Failure> {
        let req = Request {
            method,
            path_and_query,
            body: Some(body),
            request_id: job.request_id.clone(),
        };
        match self.exchange.send(route, &req, admitted, Retry::Write).await {
            Ok(sent) => Ok(sent),
            Err(e) => {
                let budget = Some(self.exchange.budget().status(route).windows);
                let error = match e {
                    CallError::Upstream(UpstreamError::Connect(_)) | CallError::NoToken(_) | CallError::Refused(_) => {
                        return Err(Failure {
                            budget,
                            ..self.call_failure(route, e)
                        })
                    }
                    CallError::Upstream(e) => {
                        tracing::warn!(incident.id = job.id, error = %e, "update outcome unknown");
                        ApiError::OutcomeUnknown(
                            "the connection to the upstream failed after the update was sent: it may or may not have been applied; read the incident before retrying".into(),
                        )
                    }
                };
                Err(Failure {
                    error,
                    budget,
                    upstream_status: None,
                })
            }
        }
    }

    /// A write the upstream did not accept (anything but 200).
    fn write_refused(&self, sent: Sent, queued: Duration, job: &Job) -> Outcome {
        let status = sent.response.status.as_u16();
        if sent.response.status.is_server_error() {
            return Err(Failure {
                error: ApiError::OutcomeUnknown(
                    format!("the upstream answered {status}: the update may or may not have been applied").into(),
                ),
                budget: Some(sent.windows),
                upstream_status: Some(status),
            });
        }
        let mut answer = self.non_success(sent, None, &job.request_id)?.in_view(job.view)?;
        answer.cache = CacheResult::Bypass { status: Some(status) };
        answer.queued = queued;
        Ok(answer)
    }

    /// The Graph comment POST after a PATCH: its own `create_comment` slot, within the caller's
    /// wait. `Ok` is Graph's answer (every comment of the incident).
    async fn post_comment(&self, job: &Job, text: &str) -> Result<Bytes, ApiError> {
        let route = RouteKind::CreateComment;
        let admitted = self
            .exchange
            .admit(route, &job.caller, job.wait, None)
            .await
            .map_err(|e| self.call_failure(route, e).error)?;
        let sent = self
            .send_write(
                route,
                Method::POST,
                format!("/v1.0/security/incidents/{}/comments", job.id),
                comment_body(text),
                job,
                admitted,
            )
            .await
            .map_err(|f| f.error)?;
        match sent.response.status {
            StatusCode::OK | StatusCode::CREATED => Ok(sent.response.body),
            StatusCode::TOO_MANY_REQUESTS => Err(ApiError::Throttled {
                retry_after: sent.freeze.map_or(Duration::from_secs(1), |f| f.pause),
                message: "the upstream throttled the comment".into(),
            }),
            s => Err(ApiError::BadGateway(
                format!("the upstream refused the comment ({s})").into(),
            )),
        }
    }

    /// Reads an incident back after a write whose answer was not the incident (a comment, for a
    /// Defender caller; a Graph PATCH answered without a body), and caches it.
    async fn read_back(&self, job: &Job) -> Result<Arc<Bodies>, ApiError> {
        let route = RouteKind::GetIncident;
        let req = Request {
            method: Method::GET,
            path_and_query: format!("/v1.0/security/incidents/{}?$expand=alerts", job.id),
            body: None,
            request_id: job.request_id.clone(),
        };
        let sent_at = Instant::now();
        let sent = self
            .exchange
            .call(route, &job.caller, &req, job.wait, None, Retry::Read)
            .await
            .map_err(|e| self.call_failure(route, e).error)?;
        if sent.response.status != StatusCode::OK {
            return Err(ApiError::BadGateway(
                format!("the upstream answered {}", sent.response.status.as_u16()).into(),
            ));
        }
        let incident = render_incident(Dialect::Graph, &sent.response.body)
            .filter(|i| i.id == job.id)
            .ok_or_else(|| ApiError::BadGateway("the upstream answered with an invalid body".into()))?;
        let bodies = incident.bodies.clone();
        self.written(
            Key::Incident(job.id),
            Some(self.ingest.incident_entry(incident, sent_at)),
        )
        .await;
        Ok(bodies)
    }

    /// The alerts of the cached incident (any age), in Graph's shape.
    fn cached_alerts(&self, id: i64) -> Option<Value> {
        let entry = self.store.get(&Key::Incident(id))?;
        let graph: Value = serde_json::from_slice(entry.bodies.get(View::GraphAlerts)?).ok()?;
        graph.get("alerts").cloned()
    }

    fn write_answer(
        &self,
        body: Option<Bytes>,
        windows: Vec<crate::budget::WindowStatus>,
        queued: Duration,
    ) -> Outcome {
        let Some(body) = body else {
            return Err(Failure {
                error: ApiError::BadGateway(
                    "the update was applied, but the upstream's answer cannot be shown in this API's dialect; read the incident"
                        .into(),
                ),
                budget: Some(windows),
                upstream_status: Some(200),
            });
        };
        Ok(Answer {
            status: StatusCode::OK,
            content_type: json_content_type(),
            body,
            bodies: None,
            cache: CacheResult::Bypass { status: Some(200) },
            age: None,
            budget: Some(windows),
            queued,
            upstream_status: Some(200),
        })
    }

    /// After a write (whatever its outcome): the incident's entry becomes the write's answer or
    /// is forgotten, cached lists go, and reads in flight for them take no newcomers.
    /// With the shared tier, every replica learns of it (and Redis holds the new state) before
    /// the caller is answered.
    async fn written(&self, key: Key, entry: Option<Entry>) {
        let entry = entry.map(Arc::new);
        self.store.write(key.clone(), entry.clone()).await;
        self.store.invalidate_lists().await;
        self.local_sets.clear();
        self.flights
            .forget_if(|fk: &FlightKey| fk.key == key || fk.key.is_list());
        if let Some(tier) = &self.tier {
            tier.write(&key, entry.as_deref()).await;
        }
    }
}

/// The Defender incident after a Graph PATCH (and comment): Graph's answer, with the comment
/// list the POST returned and the cached incident's alerts (Graph's PATCH answer carries none;
/// Defender's always does; without a cached incident they are empty).
fn defender_after_graph_write(patched: &Bytes, comments: Option<&Bytes>, alerts: Option<Value>) -> Option<Bytes> {
    let mut incident: Value = serde_json::from_slice(patched).ok()?;
    let object = incident.as_object_mut()?;
    if let Some(page) = comments.and_then(|c| serde_json::from_slice::<Value>(c).ok()) {
        if let Some(list) = page.get("value") {
            object.insert("comments".into(), list.clone());
        }
    }
    if let Some(alerts) = alerts {
        object.insert("alerts".into(), alerts);
    }
    let defender = graph_to_defender(&incident).ok()?;
    serde_json::to_vec(&defender).ok().map(Bytes::from)
}

/// A write stopped part-way: what was applied, and why the rest was not (see
/// [`ApiError::PartiallyApplied`]).
fn partial(applied: String, cause: ApiError, windows: Vec<crate::budget::WindowStatus>) -> Failure {
    Failure {
        error: ApiError::PartiallyApplied {
            applied: applied.into(),
            cause: Box::new(cause),
        },
        budget: Some(windows),
        upstream_status: Some(200),
    }
}

fn comment_body(text: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&graph_comment_body(text)).unwrap_or_default())
}

/// Graph's comment POST answer (every comment of the incident) from a Graph rendering of it.
fn comments_page(graph_incident: &Bytes, id: i64) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(graph_incident).ok()?;
    let comments = v.get("comments").cloned().unwrap_or(Value::Array(Vec::new()));
    let page = serde_json::json!({
        "@odata.context": format!("https://graph.microsoft.com/v1.0/$metadata#security/incidents('{id}')/comments"),
        "value": comments,
    });
    serde_json::to_vec(&page).ok().map(Bytes::from)
}
