//! The Graph security dialect's rendering of the data model: an incident (with its alerts,
//! evidence and comments) as `GET /v1.0/security/incidents/{id}` answers it, and the flat document
//! its `$filter` is evaluated against.
//!
//! Written from the fact sheet, on purpose independently of the proxy's `dialect`: the proxy's
//! translation property tests compare the translator's output with this rendering, which is
//! only a test if the two were not derived from each other.

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use crate::clock::format_ticks;
use crate::data::{self, Alert, DataParams, Device, Entity, IncidentState};

const TYPE_PREFIX: &str = "#microsoft.graph.security.";

// ----- Graph spellings of the data model's (Defender-spelled) values ---------------------------

/// PascalCase → camelCase, which is Graph's spelling of most members (fact sheet §7.3).
fn camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn severity(s: &str) -> String {
    match s {
        "UnSpecified" => "unknown".into(),
        other => camel(other),
    }
}

/// Metadata spellings (fact sheet §3) for the data model's determinations.
fn determination(s: &str) -> String {
    match s {
        "NotAvailable" => "unknown".into(),
        "Clean" | "NotMalicious" => "notMalicious".into(),
        "NoEnoughDataToValidate" | "InsufficientData" => "notEnoughDataToValidate".into(),
        "CompromisedUser" => "compromisedAccount".into(),
        "ConfirmedUserActivity" => "confirmedActivity".into(),
        other => camel(other),
    }
}

fn service_source(s: &str) -> String {
    match s {
        "MicrosoftCloudAppSecurity" => "microsoftDefenderForCloudApps".into(),
        other => camel(other),
    }
}

fn detection_source(s: &str) -> String {
    match s {
        "WindowsDefenderAtp" => "microsoftDefenderForEndpoint".into(),
        "WindowsDefenderAv" => "antivirus".into(),
        "CustomerTI" => "customTi".into(),
        "OfficeATP" => "microsoftDefenderForOffice365".into(),
        "MCAS" => "cloudAppSecurity".into(),
        "AzureAtp" => "microsoftDefenderForIdentity".into(),
        other => camel(other),
    }
}

fn product_name(service: &str) -> &'static str {
    match service {
        "MicrosoftDefenderForEndpoint" => "Microsoft Defender for Endpoint",
        "MicrosoftDefenderForOffice365" => "Microsoft Defender for Office 365",
        "MicrosoftDefenderForIdentity" => "Microsoft Defender for Identity",
        "MicrosoftCloudAppSecurity" => "Microsoft Defender for Cloud Apps",
        "AzureAdIdentityProtection" => "Microsoft Entra ID Protection",
        _ => "Microsoft Defender XDR",
    }
}

/// The incident fields Graph `$filter` looks at, in Graph's names and spellings.
pub(crate) fn filter_doc(state: &IncidentState) -> Value {
    json!({
        "assignedTo": state.assigned_to,
        "classification": camel(state.classification),
        "createdDateTime": format_ticks(state.created),
        "determination": determination(state.determination),
        "lastUpdateDateTime": format_ticks(state.last_update),
        "severity": severity(state.severity),
        "status": camel(state.status),
    })
}

// ----- rendering -------------------------------------------------------------------------------

pub(crate) fn comments(state: &IncidentState) -> Vec<Value> {
    state
        .comments
        .iter()
        .map(|c| {
            json!({
                "comment": c.comment,
                "createdByDisplayName": c.created_by,
                "createdDateTime": c.created_time,
            })
        })
        .collect()
}

/// The incident as Graph serializes it (without `@odata.context`); alerts only when expanded.
pub fn render(params: &DataParams, state: &IncidentState, expand_alerts: bool) -> Bytes {
    Bytes::from(serde_json::to_vec(&render_value(params, state, expand_alerts)).unwrap_or_default())
}

pub(crate) fn render_value(params: &DataParams, state: &IncidentState, expand_alerts: bool) -> Value {
    let web_url = format!(
        "https://security.microsoft.com/incidents/{}?tid={}",
        state.id, params.tenant_id
    );
    let last_modified_by = state
        .comments
        .last()
        .map_or("Microsoft 365 Defender-IncidentCreation".to_string(), |c| {
            c.created_by.clone()
        });
    let mut incident = json!({
        "id": state.id.to_string(),
        "tenantId": params.tenant_id,
        "status": camel(state.status),
        "incidentWebUrl": web_url,
        "redirectIncidentId": state.redirect_incident_id.map(|id| id.to_string()),
        "displayName": state.name,
        "description": Value::Null,
        "summary": Value::Null,
        "createdDateTime": format_ticks(state.created),
        "lastUpdateDateTime": format_ticks(state.last_update),
        "lastModifiedBy": last_modified_by,
        "assignedTo": state.assigned_to,
        "classification": camel(state.classification),
        "determination": determination(state.determination),
        "severity": severity(state.severity),
        "priorityScore": (state.id.unsigned_abs() % 101),
        "resolvingComment": Value::Null,
        "customTags": state.tags,
        "systemTags": [],
        "comments": comments(state),
    });
    if expand_alerts {
        let model = data::build(params, state);
        let alerts: Vec<Value> = model.alerts.iter().map(|a| render_alert(params, &web_url, a)).collect();
        if let Some(o) = incident.as_object_mut() {
            o.insert("alerts".into(), Value::Array(alerts));
        }
    }
    incident
}

fn render_alert(params: &DataParams, incident_url: &str, a: &Alert) -> Value {
    let mut evidence: Vec<Value> = a
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| render_device(&a.creation_time, d, i == 0))
        .collect();
    evidence.extend(a.entities.iter().map(|e| render_entity(&a.creation_time, e)));
    json!({
        "id": a.alert_id,
        "providerAlertId": a.alert_id.get(2..).unwrap_or(&a.alert_id),
        "incidentId": a.incident_id.to_string(),
        "status": camel(a.status),
        "severity": severity(a.severity),
        "classification": a.classification.map_or("unknown".to_string(), camel),
        "determination": a.determination.map_or("unknown".to_string(), determination),
        "serviceSource": service_source(a.service_source),
        "detectionSource": detection_source(a.detection_source),
        "productName": product_name(a.service_source),
        "detectorId": Value::Null,
        "tenantId": params.tenant_id,
        "title": a.title,
        "description": a.description,
        "recommendedActions": Value::Null,
        "category": a.category,
        "categories": [a.category],
        "assignedTo": a.assigned_to,
        "alertWebUrl": format!("https://security.microsoft.com/alerts/{}?tid={}", a.alert_id, params.tenant_id),
        "incidentWebUrl": incident_url,
        "actorDisplayName": a.actor_name,
        "threatDisplayName": a.threat_family_name,
        "threatFamilyName": a.threat_family_name,
        "mitreTechniques": a.mitre_techniques,
        "createdDateTime": a.creation_time,
        "lastUpdateDateTime": a.last_updated_time,
        "resolvedDateTime": a.resolved_time,
        "firstActivityDateTime": a.first_activity,
        "lastActivityDateTime": a.last_activity,
        "investigationState": camel(a.investigation_state),
        "alertPolicyId": Value::Null,
        "systemTags": [],
        "comments": [],
        "customDetails": {},
        "additionalData": {},
        "evidence": evidence,
    })
}

/// The base fields of every evidence object (fact sheet §4.1).
fn base(kind: &str, created: &str, verdict: &str, detailed_roles: &[&str]) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("@odata.type".into(), json!(format!("{TYPE_PREFIX}{kind}")));
    m.insert("createdDateTime".into(), json!(created));
    m.insert("verdict".into(), json!(verdict));
    m.insert("remediationStatus".into(), json!("none"));
    m.insert("remediationStatusDetails".into(), Value::Null);
    m.insert("roles".into(), json!([]));
    m.insert("detailedRoles".into(), json!(detailed_roles));
    m.insert("tags".into(), json!([]));
    m
}

fn extend(mut m: Map<String, Value>, more: Value) -> Value {
    if let Value::Object(more) = more {
        m.extend(more);
    }
    Value::Object(m)
}

fn render_device(created: &str, d: &Device, primary: bool) -> Value {
    let roles: &[&str] = if primary { &["PrimaryDevice"] } else { &[] };
    let mut m = base("deviceEvidence", created, "suspicious", roles);
    m.insert("tags".into(), json!(d.tags));
    let (host, domain) = d
        .device_dns_name
        .split_once('.')
        .map_or((d.device_dns_name.as_str(), None), |(h, rest)| (h, Some(rest)));
    let users: Vec<Value> = d
        .logged_on_users
        .iter()
        .map(|u| json!({ "accountName": u.account_name, "domainName": u.domain_name }))
        .collect();
    extend(
        m,
        json!({
            "firstSeenDateTime": d.first_seen,
            "mdeDeviceId": d.mdatp_device_id,
            "azureAdDeviceId": d.aad_device_id,
            "deviceDnsName": d.device_dns_name,
            "hostName": host,
            "ntDomain": Value::Null,
            "dnsDomain": domain,
            "osPlatform": d.os_platform,
            "osBuild": d.os_build,
            "version": d.version,
            "healthStatus": camel(d.health_status),
            "riskScore": camel(d.risk_score),
            "rbacGroupId": d.rbac_group_id,
            "rbacGroupName": d.rbac_group_name,
            "onboardingStatus": camel(d.onboarding_status),
            "defenderAvStatus": camel(d.defender_av_status),
            "lastIpAddress": Value::Null,
            "lastExternalIpAddress": Value::Null,
            "ipInterfaces": [],
            "vmMetadata": Value::Null,
            "loggedOnUsers": users,
            "resourceAccessEvents": [],
        }),
    )
}

fn file_details(e: &Entity) -> Value {
    json!({
        "sha1": e.sha1,
        "sha256": e.sha256,
        "md5": Value::Null,
        "sha256Ac": Value::Null,
        "fileName": e.file_name,
        "filePath": e.file_path,
        "fileSize": Value::Null,
        "filePublisher": Value::Null,
        "signer": Value::Null,
        "issuer": Value::Null,
    })
}

fn user_account(e: &Entity) -> Value {
    json!({
        "accountName": e.account_name,
        "domainName": e.domain_name,
        "userSid": e.user_sid,
        "azureAdUserId": e.aad_user_id,
        "userPrincipalName": e.user_principal_name,
        "displayName": Value::Null,
        "activeDirectoryObjectGuid": Value::Null,
        "resourceAccessEvents": [],
    })
}

fn render_entity(created: &str, e: &Entity) -> Value {
    let (kind, verdict, own) = match e.entity_type {
        "User" => (
            "userEvidence",
            "suspicious",
            json!({ "stream": Value::Null, "userAccount": user_account(e) }),
        ),
        "Ip" => (
            "ipEvidence",
            "unknown",
            json!({ "ipAddress": e.ip_address, "countryLetterCode": Value::Null, "stream": Value::Null, "location": Value::Null }),
        ),
        "Url" => ("urlEvidence", "malicious", json!({ "url": e.url })),
        "File" => (
            "fileEvidence",
            "malicious",
            json!({ "detectionStatus": "detected", "mdeDeviceId": e.device_id, "fileDetails": file_details(e) }),
        ),
        "Process" => (
            "processEvidence",
            "suspicious",
            json!({
                "processId": e.process_id,
                "parentProcessId": e.parent_process_id,
                "processCommandLine": e.process_command_line,
                "processCreationDateTime": e.process_creation_time,
                "parentProcessCreationDateTime": e.parent_process_creation_time,
                "detectionStatus": "detected",
                "mdeDeviceId": e.device_id,
                "imageFile": file_details(e),
                "parentProcessImageFile": Value::Null,
                "userAccount": user_account(e),
            }),
        ),
        "MailBox" => (
            "mailboxEvidence",
            "unknown",
            json!({
                "displayName": e.mailbox_display_name,
                "primaryAddress": e.mailbox_address,
                "upn": e.user_principal_name,
                "userAccount": user_account(e),
            }),
        ),
        "MailMessage" => {
            let domain = e.sender.as_deref().and_then(|s| s.split_once('@')).map(|(_, d)| d);
            (
                "analyzedMessageEvidence",
                "malicious",
                json!({
                    "subject": e.subject,
                    "recipientEmailAddress": e.recipient,
                    "p1Sender": { "displayName": Value::Null, "domainName": domain, "emailAddress": e.sender },
                    "p2Sender": Value::Null,
                    "deliveryAction": e.delivery_action,
                    "deliveryLocation": Value::Null,
                    "networkMessageId": Value::Null,
                    "urls": [],
                }),
            )
        }
        "MailCluster" => (
            "mailClusterEvidence",
            "unknown",
            json!({ "clusterBy": e.cluster_by, "clusterByValue": Value::Null, "emailCount": Value::Null, "networkMessageIds": [], "query": Value::Null, "urn": Value::Null }),
        ),
        "Registry" => (
            "registryValueEvidence",
            "suspicious",
            json!({
                "registryHive": e.registry_hive,
                "registryKey": e.registry_key,
                "registryValueType": e.registry_value_type,
                "registryValue": e.registry_value,
                "registryValueName": Value::Null,
                "mdeDeviceId": e.device_id,
            }),
        ),
        _ => (
            "securityGroupEvidence",
            "unknown",
            json!({
                "securityGroupId": e.security_group_id,
                "displayName": e.security_group_name,
                "sid": e.security_group_id,
                "activeDirectoryObjectGuid": Value::Null,
                "distinguishedName": Value::Null,
                "friendlyName": Value::Null,
            }),
        ),
    };
    extend(base(kind, created, verdict, &[]), own)
}
