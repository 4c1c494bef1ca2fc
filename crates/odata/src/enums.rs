//! Every enum value the two dialects spell differently, as one table per enum type: the
//! Defender spelling, the Graph spelling, and the aliases each side's documents use.
//!
//! **The one place where the documents' disagreements are decided** (issue 13): Graph output
//! always uses the v1.0 CSDL metadata spelling (fact sheet §3, §8.1: "only the metadata spelling
//! is something the OData serializer can emit"); Defender output uses the spelling of the
//! Defender update page and of the proxy's own vocabulary (`vocabulary::DETERMINATIONS`), which is
//! also what XSOAR sends to the live API (sheet §7.3). Aliases are accepted on input only.
//!
//! Values missing from a table: requests (PATCH bodies, filters) are rejected naming the field;
//! responses pass the value through with its first letter's case changed (`awaitingAction` →
//! `AwaitingAction`), because both services add members over time and an unknown member is
//! better delivered than dropped.

/// One enum type's translation table.
#[derive(Debug)]
pub struct EnumTable {
    /// The enum's name, for error messages ("determination").
    pub name: &'static str,
    /// `(defender, graph)`. The first row with a given Graph value gives the Defender output
    /// spelling; later rows with the same Graph value are Defender aliases accepted on input.
    pub rows: &'static [(&'static str, &'static str)],
    /// `(alias, metadata spelling)`: Graph spellings from the documents that the metadata does
    /// not have, accepted on input only.
    pub graph_aliases: &'static [(&'static str, &'static str)],
}

impl EnumTable {
    /// The Graph spelling of a Defender value (output spelling or documented alias).
    pub fn to_graph(&self, defender: &str) -> Option<&'static str> {
        self.rows.iter().find(|(d, _)| *d == defender).map(|(_, g)| *g)
    }

    /// The Defender spelling of a Graph value. Accepts the metadata spelling, the documents'
    /// aliases, and any ASCII case of either (the Graph update page's own example sends
    /// PascalCase, sheet §5.1).
    pub fn to_defender(&self, graph: &str) -> Option<&'static str> {
        let canonical = self.canonical_graph(graph)?;
        self.rows.iter().find(|(_, g)| *g == canonical).map(|(d, _)| *d)
    }

    /// The metadata spelling of a Graph input value (see [`EnumTable::to_defender`]).
    pub fn canonical_graph(&self, graph: &str) -> Option<&'static str> {
        let exact = self.rows.iter().map(|(_, g)| *g).find(|g| *g == graph);
        exact
            .or_else(|| self.graph_aliases.iter().find(|(a, _)| *a == graph).map(|(_, g)| *g))
            .or_else(|| {
                self.rows
                    .iter()
                    .map(|(_, g)| *g)
                    .find(|g| g.eq_ignore_ascii_case(graph))
            })
            .or_else(|| {
                self.graph_aliases
                    .iter()
                    .find(|(a, _)| a.eq_ignore_ascii_case(graph))
                    .map(|(_, g)| *g)
            })
    }

    /// For responses: the Graph spelling, or the value camelCased when the table lacks it.
    pub fn to_graph_lenient(&self, defender: &str) -> String {
        self.to_graph(defender)
            .map_or_else(|| recase_first(defender, false), str::to_string)
    }

    /// For responses: the Defender spelling, or the value PascalCased when the table lacks it.
    pub fn to_defender_lenient(&self, graph: &str) -> String {
        self.to_defender(graph)
            .map_or_else(|| recase_first(graph, true), str::to_string)
    }
}

/// The value with its first character upper-cased (`upper`) or lower-cased.
fn recase_first(s: &str, upper: bool) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(c) if upper => c.to_uppercase().chain(chars).collect(),
        Some(c) => c.to_lowercase().chain(chars).collect(),
    }
}

/// Incident `status` (sheet §7.2, §7.3; metadata `incidentStatus` §3). Graph `awaitingAction`
/// has no Defender value (lenient pass-through on responses).
pub const INCIDENT_STATUS: EnumTable = EnumTable {
    name: "status",
    rows: &[
        ("Active", "active"),
        ("Resolved", "resolved"),
        ("InProgress", "inProgress"),
        ("Redirected", "redirected"),
    ],
    graph_aliases: &[],
};

/// `severity` of incidents and alerts (sheet §7.2; metadata `alertSeverity` §3). Defender
/// `UnSpecified` is Graph `unknown` [inf].
pub const SEVERITY: EnumTable = EnumTable {
    name: "severity",
    rows: &[
        ("UnSpecified", "unknown"),
        ("Informational", "informational"),
        ("Low", "low"),
        ("Medium", "medium"),
        ("High", "high"),
    ],
    graph_aliases: &[],
};

/// `classification` (sheet §7.3; metadata `alertClassification` §3). On alerts a Defender
/// `null` is Graph `unknown` (see [`crate::dialect::incident`]).
pub const CLASSIFICATION: EnumTable = EnumTable {
    name: "classification",
    rows: &[
        ("Unknown", "unknown"),
        ("FalsePositive", "falsePositive"),
        ("TruePositive", "truePositive"),
        ("InformationalExpectedActivity", "informationalExpectedActivity"),
    ],
    graph_aliases: &[],
};

/// `determination` (sheet §7.3 table, §8.1). Defender output: the update page's spellings
/// (`CompromisedAccount`, `Clean`, `NoEnoughDataToValidate`, `ConfirmedActivity`), which the
/// proxy's update validation accepts; the incident page's (`CompromisedUser`, `InsufficientData`,
/// `ConfirmedUserActivity`) and XSOAR's `NotMalicious` are Defender aliases. Graph output: the
/// metadata spellings; the Graph pages' `compromisedUser`, `clean`, `insufficientData`,
/// `confirmedUserActivity` are Graph aliases.
pub const DETERMINATION: EnumTable = EnumTable {
    name: "determination",
    rows: &[
        ("NotAvailable", "unknown"),
        ("Apt", "apt"),
        ("Malware", "malware"),
        ("SecurityPersonnel", "securityPersonnel"),
        ("SecurityTesting", "securityTesting"),
        ("UnwantedSoftware", "unwantedSoftware"),
        ("Other", "other"),
        ("MultiStagedAttack", "multiStagedAttack"),
        ("CompromisedAccount", "compromisedAccount"),
        ("CompromisedUser", "compromisedAccount"),
        ("Phishing", "phishing"),
        ("MaliciousUserActivity", "maliciousUserActivity"),
        ("Clean", "notMalicious"),
        ("NotMalicious", "notMalicious"),
        ("NoEnoughDataToValidate", "notEnoughDataToValidate"),
        ("InsufficientData", "notEnoughDataToValidate"),
        ("ConfirmedActivity", "confirmedActivity"),
        ("ConfirmedUserActivity", "confirmedActivity"),
        ("LineOfBusinessApplication", "lineOfBusinessApplication"),
    ],
    graph_aliases: &[
        ("compromisedUser", "compromisedAccount"),
        ("clean", "notMalicious"),
        ("insufficientData", "notEnoughDataToValidate"),
        ("confirmedUserActivity", "confirmedActivity"),
    ],
};

/// Alert `status` (sheet §7.5; metadata `alertStatus` §4). Defender's text also names
/// `Active`, which Graph lacks: read as `new` [inf].
pub const ALERT_STATUS: EnumTable = EnumTable {
    name: "alert status",
    rows: &[
        ("Unknown", "unknown"),
        ("New", "new"),
        ("Active", "new"),
        ("InProgress", "inProgress"),
        ("Resolved", "resolved"),
    ],
    graph_aliases: &[],
};

/// Alert `serviceSource` (sheet §7.5 [inf]; metadata `serviceSource` §4). Defender's full list
/// is undocumented; the example spellings `MicrosoftDefenderATP`, `OfficeATP` are aliases.
pub const SERVICE_SOURCE: EnumTable = EnumTable {
    name: "serviceSource",
    rows: &[
        ("Unknown", "unknown"),
        ("MicrosoftDefenderForEndpoint", "microsoftDefenderForEndpoint"),
        ("MicrosoftDefenderATP", "microsoftDefenderForEndpoint"),
        ("MicrosoftDefenderForIdentity", "microsoftDefenderForIdentity"),
        ("MicrosoftCloudAppSecurity", "microsoftDefenderForCloudApps"),
        ("MicrosoftDefenderForCloudApps", "microsoftDefenderForCloudApps"),
        ("MicrosoftDefenderForOffice365", "microsoftDefenderForOffice365"),
        ("OfficeATP", "microsoftDefenderForOffice365"),
        ("Microsoft365Defender", "microsoft365Defender"),
        ("AzureAdIdentityProtection", "azureAdIdentityProtection"),
        ("MicrosoftAppGovernance", "microsoftAppGovernance"),
        ("DataLossPrevention", "dataLossPrevention"),
        ("MicrosoftDefenderForCloud", "microsoftDefenderForCloud"),
        ("MicrosoftSentinel", "microsoftSentinel"),
        ("MicrosoftInsiderRiskManagement", "microsoftInsiderRiskManagement"),
    ],
    graph_aliases: &[],
};

/// Alert (and Defender incident) `detectionSource` (sheet §7.5 [inf]; metadata
/// `detectionSource` §4). Defender spellings are the Defender for Endpoint alert vocabulary.
pub const DETECTION_SOURCE: EnumTable = EnumTable {
    name: "detectionSource",
    rows: &[
        ("Unknown", "unknown"),
        ("WindowsDefenderAtp", "microsoftDefenderForEndpoint"),
        ("WindowsDefenderAv", "antivirus"),
        ("WindowsDefenderSmartScreen", "smartScreen"),
        ("CustomerTI", "customTi"),
        ("OfficeATP", "microsoftDefenderForOffice365"),
        ("AutomatedInvestigation", "automatedInvestigation"),
        ("ThreatExperts", "microsoftThreatExperts"),
        ("CustomDetection", "customDetection"),
        ("AzureAtp", "microsoftDefenderForIdentity"),
        ("MCAS", "cloudAppSecurity"),
        ("MTP", "microsoft365Defender"),
        ("AzureAdIdentityProtection", "azureAdIdentityProtection"),
        ("Manual", "manual"),
        ("MicrosoftDataLossPrevention", "microsoftDataLossPrevention"),
        ("AppGovernancePolicy", "appGovernancePolicy"),
        ("AppGovernanceDetection", "appGovernanceDetection"),
        ("MicrosoftDefenderForCloud", "microsoftDefenderForCloud"),
        ("MicrosoftSentinel", "microsoftSentinel"),
    ],
    graph_aliases: &[],
};

/// Alert `investigationState` (sheet §7.5: member sets match one-to-one, PascalCase ↔
/// camelCase; metadata `investigationState` §4).
pub const INVESTIGATION_STATE: EnumTable = EnumTable {
    name: "investigationState",
    rows: &[
        ("Unknown", "unknown"),
        ("Terminated", "terminated"),
        ("SuccessfullyRemediated", "successfullyRemediated"),
        ("Benign", "benign"),
        ("Failed", "failed"),
        ("PartiallyRemediated", "partiallyRemediated"),
        ("Running", "running"),
        ("PendingApproval", "pendingApproval"),
        ("PendingResource", "pendingResource"),
        ("Queued", "queued"),
        ("InnerFailure", "innerFailure"),
        ("PreexistingAlert", "preexistingAlert"),
        ("UnsupportedOs", "unsupportedOs"),
        ("UnsupportedAlertType", "unsupportedAlertType"),
        ("SuppressedAlert", "suppressedAlert"),
        ("PartiallyInvestigated", "partiallyInvestigated"),
        ("TerminatedByUser", "terminatedByUser"),
        ("TerminatedBySystem", "terminatedBySystem"),
    ],
    graph_aliases: &[],
};

/// Device `healthStatus` (sheet §7.6; metadata `deviceHealthStatus` §4.1).
pub const DEVICE_HEALTH_STATUS: EnumTable = EnumTable {
    name: "healthStatus",
    rows: &[
        ("Active", "active"),
        ("Inactive", "inactive"),
        ("ImpairedCommunication", "impairedCommunication"),
        ("NoSensorData", "noSensorData"),
        ("NoSensorDataImpairedCommunication", "noSensorDataImpairedCommunication"),
        ("Unknown", "unknown"),
    ],
    graph_aliases: &[],
};

/// Device `riskScore` (sheet §7.6; metadata `deviceRiskScore` §4.1).
pub const DEVICE_RISK_SCORE: EnumTable = EnumTable {
    name: "riskScore",
    rows: &[
        ("None", "none"),
        ("Informational", "informational"),
        ("Low", "low"),
        ("Medium", "medium"),
        ("High", "high"),
    ],
    graph_aliases: &[],
};

/// Device `defenderAvStatus` (sheet §7.6 [obs I5]; metadata `defenderAvStatus` §4.1).
pub const DEFENDER_AV_STATUS: EnumTable = EnumTable {
    name: "defenderAvStatus",
    rows: &[
        ("NotReporting", "notReporting"),
        ("Disabled", "disabled"),
        ("NotUpdated", "notUpdated"),
        ("Updated", "updated"),
        ("Unknown", "unknown"),
        ("NotSupported", "notSupported"),
    ],
    graph_aliases: &[],
};

/// Device `onboardingStatus` (sheet §7.6 [obs I5]; metadata `onboardingStatus` §4.1).
pub const ONBOARDING_STATUS: EnumTable = EnumTable {
    name: "onboardingStatus",
    rows: &[
        ("InsufficientInfo", "insufficientInfo"),
        ("Onboarded", "onboarded"),
        ("CanBeOnboarded", "canBeOnboarded"),
        ("Unsupported", "unsupported"),
    ],
    graph_aliases: &[],
};

/// Every table, for tests and documentation.
pub const ALL_TABLES: [&EnumTable; 12] = [
    &INCIDENT_STATUS,
    &SEVERITY,
    &CLASSIFICATION,
    &DETERMINATION,
    &ALERT_STATUS,
    &SERVICE_SOURCE,
    &DETECTION_SOURCE,
    &INVESTIGATION_STATE,
    &DEVICE_HEALTH_STATUS,
    &DEVICE_RISK_SCORE,
    &DEFENDER_AV_STATUS,
    &ONBOARDING_STATUS,
];

/// Graph `$filter` literals for incident `status`: the metadata members (sheet §3) except
/// `unknownFutureValue`.
pub const GRAPH_INCIDENT_STATUSES: [&str; 5] = ["active", "resolved", "inProgress", "redirected", "awaitingAction"];
/// Graph `$filter` literals for `severity` (metadata `alertSeverity`).
pub const GRAPH_SEVERITIES: [&str; 5] = ["unknown", "informational", "low", "medium", "high"];
/// Graph `$filter` literals for `classification` (metadata `alertClassification`).
pub const GRAPH_CLASSIFICATIONS: [&str; 4] = [
    "unknown",
    "falsePositive",
    "truePositive",
    "informationalExpectedActivity",
];
/// Graph `$filter` literals for `determination` (metadata `alertDetermination`).
pub const GRAPH_DETERMINATIONS: [&str; 15] = [
    "unknown",
    "apt",
    "malware",
    "securityPersonnel",
    "securityTesting",
    "unwantedSoftware",
    "other",
    "multiStagedAttack",
    "compromisedAccount",
    "phishing",
    "maliciousUserActivity",
    "notMalicious",
    "notEnoughDataToValidate",
    "confirmedActivity",
    "lineOfBusinessApplication",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row of every table, both directions: Defender → Graph always; Graph → Defender
    /// gives this row's Defender spelling exactly when it is the first row for that Graph value.
    #[test]
    fn every_row_translates_both_ways() {
        for table in ALL_TABLES {
            for (i, (d, g)) in table.rows.iter().enumerate() {
                assert_eq!(table.to_graph(d), Some(*g), "{} {d}", table.name);
                let first = table.rows.iter().position(|(_, gg)| gg == g).unwrap();
                let back = table.to_defender(g).unwrap();
                if first == i {
                    assert_eq!(back, *d, "{} {g}", table.name);
                } else {
                    assert_ne!(back, *d, "{}: alias {d} must not be the output spelling", table.name);
                }
                // Lenient forms agree with the table where it has the value.
                assert_eq!(table.to_graph_lenient(d), *g);
                assert_eq!(table.to_defender_lenient(g), back);
            }
            for (alias, g) in table.graph_aliases {
                assert_eq!(table.canonical_graph(alias), Some(*g), "{} {alias}", table.name);
                assert!(table.to_defender(alias).is_some());
            }
        }
    }

    #[test]
    fn determination_follows_the_metadata_and_the_update_page() {
        let t = &DETERMINATION;
        for (d, g) in [
            ("CompromisedUser", "compromisedAccount"),
            ("CompromisedAccount", "compromisedAccount"),
            ("Clean", "notMalicious"),
            ("NotMalicious", "notMalicious"),
            ("InsufficientData", "notEnoughDataToValidate"),
            ("NoEnoughDataToValidate", "notEnoughDataToValidate"),
            ("ConfirmedUserActivity", "confirmedActivity"),
            ("ConfirmedActivity", "confirmedActivity"),
            ("NotAvailable", "unknown"),
        ] {
            assert_eq!(t.to_graph(d), Some(g));
        }
        for (g, d) in [
            ("compromisedUser", "CompromisedAccount"),
            ("clean", "Clean"),
            ("insufficientData", "NoEnoughDataToValidate"),
            ("confirmedUserActivity", "ConfirmedActivity"),
            ("notMalicious", "Clean"),
            ("MultiStagedAttack", "MultiStagedAttack"),
        ] {
            assert_eq!(t.to_defender(g), Some(d), "{g}");
        }
        // Every metadata member has a Defender spelling; every Defender update value maps.
        for g in GRAPH_DETERMINATIONS {
            assert!(t.to_defender(g).is_some(), "{g}");
        }
        for d in crate::vocabulary::DETERMINATIONS {
            assert!(t.to_graph(d).is_some(), "{d}");
        }
    }

    #[test]
    fn filter_literal_lists_match_the_tables() {
        for (table, members) in [
            (&INCIDENT_STATUS, &GRAPH_INCIDENT_STATUSES[..]),
            (&SEVERITY, &GRAPH_SEVERITIES[..]),
            (&CLASSIFICATIONS_TABLE, &GRAPH_CLASSIFICATIONS[..]),
            (&DETERMINATION, &GRAPH_DETERMINATIONS[..]),
        ] {
            for (_, g) in table.rows {
                assert!(members.contains(g), "{} {g}", table.name);
            }
        }
        for s in crate::vocabulary::STATUSES {
            assert!(INCIDENT_STATUS.to_graph(s).is_some());
        }
        for c in crate::vocabulary::CLASSIFICATIONS {
            assert!(CLASSIFICATION.to_graph(c).is_some());
        }
    }

    const CLASSIFICATIONS_TABLE: EnumTable = CLASSIFICATION;

    #[test]
    fn unknown_values_pass_through_recased_on_responses_only() {
        assert_eq!(INCIDENT_STATUS.to_defender("awaitingAction"), None);
        assert_eq!(INCIDENT_STATUS.to_defender_lenient("awaitingAction"), "AwaitingAction");
        assert_eq!(SERVICE_SOURCE.to_graph_lenient("SomethingNew"), "somethingNew");
        assert_eq!(SEVERITY.to_graph("Critical"), None);
        // PascalCase Graph input (the update page's own example) is understood.
        assert_eq!(CLASSIFICATION.to_defender("TruePositive"), Some("TruePositive"));
        assert_eq!(CLASSIFICATION.canonical_graph("TruePositive"), Some("truePositive"));
        assert_eq!(recase_first("", true), "");
    }
}
