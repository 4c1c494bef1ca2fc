//! The simulator's truth: every incident's current state and version, a newest-first index for
//! listing, the changes (PATCH, touch, create), and a byte-budgeted cache of rendered bodies so
//! that serving a hot incident costs a clone of `Bytes`, not a rendering.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::OnceLock;

use bytes::Bytes;
use parking_lot::RwLock;
use rand::Rng;

use crate::clock::{format_ticks, StrictClock};
use crate::data::{self, Comment, DataParams, IncidentState, CLASSIFICATIONS, DETERMINATIONS, STATUSES};
use crate::eval::Matches;
use defender_odata::{Filter, GraphField, GraphOrderBy, GraphOrderField};

/// Rendered bodies kept at most; beyond it the oldest renderings are dropped (and re-rendered
/// when asked for again). Large enough for the default 10,000 incidents.
const CACHE_BUDGET_BYTES: usize = 256 << 20;

struct BookEntry {
    state: IncidentState,
    version: u64,
    body: Option<Bytes>,
    /// The filter document, built on first use and dropped on change.
    doc: OnceLock<serde_json::Value>,
    /// The same in Graph's field names and spellings, for Graph `$filter`.
    graph_doc: OnceLock<serde_json::Value>,
}

impl BookEntry {
    /// A freshly generated incident: version 1, nothing rendered yet.
    fn new(state: IncidentState) -> BookEntry {
        BookEntry {
            state,
            version: 1,
            body: None,
            doc: OnceLock::new(),
            graph_doc: OnceLock::new(),
        }
    }
}

struct Inner {
    entries: BTreeMap<i64, BookEntry>,
    /// (createdTime, incidentId): iterated backwards this is the upstream's list order.
    by_created: BTreeSet<(i64, i64)>,
    /// Highest id ever handed out or reserved; new incidents get the next one.
    max_id: i64,
    /// Cached bodies in insertion order, for eviction: (id, version, size).
    fifo: VecDeque<(i64, u64, usize)>,
    cached_bytes: usize,
}

impl Inner {
    fn drop_body(&mut self, id: i64) {
        if let Some(e) = self.entries.get_mut(&id) {
            if let Some(b) = e.body.take() {
                self.cached_bytes -= b.len();
            }
        }
    }

    fn cache(&mut self, id: i64, version: u64, body: &Bytes) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        // A change may have happened while this body was being rendered: then it is stale.
        if e.version != version || e.body.is_some() {
            return;
        }
        e.body = Some(body.clone());
        self.cached_bytes += body.len();
        self.fifo.push_back((id, version, body.len()));
        while self.cached_bytes > CACHE_BUDGET_BYTES {
            let Some((old_id, old_version, _)) = self.fifo.pop_front() else {
                break;
            };
            if self.entries.get(&old_id).is_some_and(|e| e.version == old_version) {
                self.drop_body(old_id);
            }
        }
        // Changed incidents leave dead queue entries behind; keep the queue proportional.
        if self.fifo.len() > 4 * self.entries.len() + 1_024 {
            let entries = &self.entries;
            self.fifo
                .retain(|(id, v, _)| entries.get(id).is_some_and(|e| e.version == *v && e.body.is_some()));
        }
    }
}

/// A validated PATCH body. `assigned_to: Some(None)` unassigns.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Update {
    pub status: Option<&'static str>,
    pub assigned_to: Option<Option<String>>,
    pub classification: Option<&'static str>,
    pub determination: Option<&'static str>,
    pub tags: Option<Vec<String>>,
    pub comment: Option<String>,
    /// Graph-only writable fields the simulator keeps (`displayName`, `severity`).
    pub name: Option<String>,
    pub severity: Option<&'static str>,
}

const UPDATE_KEYS: &str = "status, assignedTo, classification, determination, tags, comment";

fn one_of(key: &str, value: &serde_json::Value, allowed: &[&'static str]) -> Result<&'static str, String> {
    let s = value
        .as_str()
        .ok_or_else(|| format!("Property '{key}' must be a string."))?;
    allowed.iter().find(|a| **a == s).copied().ok_or_else(|| {
        format!(
            "Invalid value '{s}' for property '{key}'. Allowed values: {}.",
            allowed.join(", ")
        )
    })
}

/// Validates an update body against the documented fields (names case-sensitive).
pub(crate) fn parse_update(body: &[u8]) -> Result<Update, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("Request body is not valid JSON: {e}."))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "Request body must be a JSON object.".to_string())?;
    let mut update = Update::default();
    for (key, v) in obj {
        match key.as_str() {
            "status" => update.status = Some(one_of(key, v, &STATUSES)?),
            "classification" => update.classification = Some(one_of(key, v, &CLASSIFICATIONS)?),
            "determination" => update.determination = Some(one_of(key, v, &DETERMINATIONS)?),
            "assignedTo" => {
                update.assigned_to = Some(match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    _ => return Err("Property 'assignedTo' must be a string.".into()),
                })
            }
            "tags" => {
                let tags = v
                    .as_array()
                    .and_then(|a| {
                        a.iter()
                            .map(|t| t.as_str().map(str::to_string))
                            .collect::<Option<Vec<String>>>()
                    })
                    .ok_or_else(|| "Property 'tags' must be a list of strings.".to_string())?;
                update.tags = Some(tags);
            }
            "comment" => {
                update.comment = Some(
                    v.as_str()
                        .ok_or_else(|| "Property 'comment' must be a string.".to_string())?
                        .to_string(),
                )
            }
            other => {
                return Err(format!(
                    "Property '{other}' cannot be updated. Allowed properties: {UPDATE_KEYS}."
                ))
            }
        }
    }
    Ok(update)
}

/// All incidents of one simulator.
pub(crate) struct IncidentBook {
    params: DataParams,
    clock: StrictClock,
    inner: RwLock<Inner>,
}

impl IncidentBook {
    /// Generates the summaries of ids `first_id .. first_id + incidents` (bodies stay lazy).
    pub(crate) fn new(params: DataParams, first_id: i64, incidents: u64) -> Self {
        let count = i64::try_from(incidents).unwrap_or(i64::MAX);
        let end = first_id.saturating_add(count);
        let mut entries = BTreeMap::new();
        let mut by_created = BTreeSet::new();
        for id in first_id..end {
            if let Some(state) = data::generate_summary(&params, id) {
                by_created.insert((state.created, id));
                entries.insert(id, BookEntry::new(state));
            }
        }
        let clock = StrictClock::after(params.anchor);
        Self {
            params,
            clock,
            inner: RwLock::new(Inner {
                entries,
                by_created,
                max_id: end - 1,
                fifo: VecDeque::new(),
                cached_bytes: 0,
            }),
        }
    }

    /// The current body of `id`, rendered now if not cached.
    pub(crate) fn body(&self, id: i64) -> Option<Bytes> {
        self.bodies(&[id]).pop().flatten()
    }

    /// Current bodies of `ids`, in order; `None` for ids that do not exist.
    pub(crate) fn bodies(&self, ids: &[i64]) -> Vec<Option<Bytes>> {
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(ids.len());
        let mut to_render: Vec<(usize, IncidentState, u64)> = Vec::new();
        {
            let inner = self.inner.read();
            for (i, id) in ids.iter().enumerate() {
                match inner.entries.get(id) {
                    None => out.push(None),
                    Some(e) => match &e.body {
                        Some(b) => out.push(Some(b.clone())),
                        None => {
                            out.push(None);
                            to_render.push((i, e.state.clone(), e.version));
                        }
                    },
                }
            }
        }
        if to_render.is_empty() {
            return out;
        }
        // Rendered outside the lock: a heavy incident takes a while and must not stall others.
        let rendered: Vec<(usize, i64, u64, Bytes)> = to_render
            .into_iter()
            .map(|(i, state, version)| (i, state.id, version, data::render(&self.params, &state)))
            .collect();
        let mut inner = self.inner.write();
        for (i, id, version, body) in rendered {
            inner.cache(id, version, &body);
            out[i] = Some(body);
        }
        out
    }

    /// Ids of one list page: filtered, newest first (createdTime, then incidentId, descending).
    pub(crate) fn select(&self, filter: Option<&Filter>, skip: u64, top: usize) -> Vec<i64> {
        let inner = self.inner.read();
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        inner
            .by_created
            .iter()
            .rev()
            .filter(|(_, id)| match filter {
                None => true,
                Some(f) => inner
                    .entries
                    .get(id)
                    .is_some_and(|e| f.matches(e.doc.get_or_init(|| e.state.filter_doc()))),
            })
            .skip(skip)
            .take(top)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The Graph rendering of `id` now (rendered on every call: Graph traffic is the rarer
    /// and its alerts are optional, so it does not share the Defender body cache).
    pub(crate) fn graph_body(&self, id: i64, expand_alerts: bool) -> Option<Bytes> {
        let state = self.state(id)?;
        Some(crate::graph_render::render(&self.params, &state, expand_alerts))
    }

    /// What generation depends on (for renderings outside the store).
    pub(crate) fn params(&self) -> &DataParams {
        &self.params
    }

    /// A copy of the current state of `id`.
    pub(crate) fn state(&self, id: i64) -> Option<IncidentState> {
        self.inner.read().entries.get(&id).map(|e| e.state.clone())
    }

    /// Ids of one Graph list page and the number of all matches (for `@odata.count` and
    /// `@odata.nextLink`): filtered, in `order` (default: newest created first, as Defender),
    /// ties broken by id in the same direction.
    pub(crate) fn select_graph(
        &self,
        filter: Option<&Filter<GraphField>>,
        order: Option<GraphOrderBy>,
        skip: u64,
        top: usize,
    ) -> (Vec<i64>, u64) {
        let inner = self.inner.read();
        let mut matches: Vec<(i64, i64)> = inner
            .by_created
            .iter()
            .rev()
            .filter_map(|(_, id)| {
                let e = inner.entries.get(id)?;
                let keep = filter.map_or(true, |f| {
                    f.matches(e.graph_doc.get_or_init(|| crate::graph_render::filter_doc(&e.state)))
                });
                let key = match order.map(|o| o.field) {
                    Some(GraphOrderField::LastUpdateDateTime) => e.state.last_update,
                    _ => e.state.created,
                };
                keep.then_some((key, *id))
            })
            .collect();
        let descending = order.map_or(true, |o| o.descending);
        matches.sort_unstable();
        if descending {
            matches.reverse();
        }
        let total = matches.len() as u64;
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let ids = matches.into_iter().skip(skip).take(top).map(|(_, id)| id).collect();
        (ids, total)
    }

    /// Another existing incident than `id` (the next one up, wrapping), for WrongId faults.
    pub(crate) fn other_id(&self, id: i64) -> Option<i64> {
        let inner = self.inner.read();
        inner
            .entries
            .range(id.saturating_add(1)..)
            .chain(inner.entries.range(..id))
            .map(|(k, _)| *k)
            .next()
    }

    /// A random existing incident, for background changes.
    pub(crate) fn random_id(&self, rng: &mut impl Rng) -> Option<i64> {
        let inner = self.inner.read();
        let lo = *inner.entries.keys().next()?;
        let hi = *inner.entries.keys().next_back()?;
        let probe = rng.gen_range(lo..=hi);
        inner.entries.range(probe..).map(|(k, _)| *k).next()
    }

    /// Applies `f` to the incident as one change: new lastUpdateTime, version + 1, caches
    /// dropped. Returns the new lastUpdateTime.
    fn change(&self, id: i64, f: impl FnOnce(&mut IncidentState, &str)) -> Option<String> {
        let mut inner = self.inner.write();
        let e = inner.entries.get_mut(&id)?;
        let now = self.clock.next(e.state.last_update);
        let stamp = format_ticks(now);
        e.state.last_update = now;
        e.version += 1;
        e.doc = OnceLock::new();
        e.graph_doc = OnceLock::new();
        f(&mut e.state, &stamp);
        inner.drop_body(id);
        Some(stamp)
    }

    /// Changes an incident the way background activity would: a comment is appended.
    pub(crate) fn touch(&self, id: i64, comment: &str, by: &str) -> Option<String> {
        self.change(id, |s, stamp| {
            s.comments.push(Comment {
                comment: comment.to_string(),
                created_by: by.to_string(),
                created_time: stamp.to_string(),
            })
        })
    }

    /// Applies a validated PATCH; `by` is who the comment is attributed to.
    pub(crate) fn update(&self, id: i64, update: Update, by: &str) -> Option<String> {
        self.change(id, |s, stamp| {
            if let Some(v) = update.status {
                s.status = v;
            }
            if let Some(v) = update.assigned_to {
                s.assigned_to = v;
            }
            if let Some(v) = update.classification {
                s.classification = v;
            }
            if let Some(v) = update.determination {
                s.determination = v;
            }
            if let Some(v) = update.tags {
                s.tags = v;
            }
            if let Some(v) = update.name {
                s.name = v;
            }
            if let Some(v) = update.severity {
                s.severity = v;
            }
            if let Some(v) = update.comment {
                s.comments.push(Comment {
                    comment: v,
                    created_by: by.to_string(),
                    created_time: stamp.to_string(),
                });
            }
        })
    }

    /// A brand-new incident with the next id, created now. Returns (id, lastUpdateTime).
    pub(crate) fn create(&self) -> (i64, String) {
        let mut inner = self.inner.write();
        let id = inner.max_id.saturating_add(1);
        inner.max_id = id;
        let now = self.clock.next(0);
        let state = data::generate_new(&self.params, id, now);
        inner.by_created.insert((state.created, id));
        inner.entries.insert(id, BookEntry::new(state));
        (id, format_ticks(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_validation() {
        let u = parse_update(br#"{"status":"Resolved","assignedTo":null,"tags":["a"],"comment":"x"}"#).unwrap();
        assert_eq!(u.status, Some("Resolved"));
        assert_eq!(u.assigned_to, Some(None));
        assert_eq!(u.tags, Some(vec!["a".to_string()]));
        assert!(parse_update(br#"{"status":"resolved"}"#).is_err());
        assert!(parse_update(br#"{"severity":"High"}"#).is_err());
        assert!(parse_update(br#"{"tags":[1]}"#).is_err());
        assert!(parse_update(br#"[]"#).is_err());
        assert!(parse_update(br#"{"determination":"Apt"}"#).is_err());
        assert!(parse_update(b"{").is_err());
    }
}
