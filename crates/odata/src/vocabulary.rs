//! The documented vocabulary of an incident update: the values of `status`, `classification`
//! and `determination` in the Defender dialect.

/// The documented values of an incident's `status`.
pub const STATUSES: [&str; 4] = ["Active", "Resolved", "InProgress", "Redirected"];
/// The values an update may set `classification` to.
pub const CLASSIFICATIONS: [&str; 3] = ["TruePositive", "InformationalExpectedActivity", "FalsePositive"];
/// The values an update may set `determination` to.
pub const DETERMINATIONS: [&str; 12] = [
    "MultiStagedAttack",
    "MaliciousUserActivity",
    "CompromisedAccount",
    "Malware",
    "Phishing",
    "UnwantedSoftware",
    "Other",
    "SecurityTesting",
    "LineOfBusinessApplication",
    "ConfirmedActivity",
    "Clean",
    "NoEnoughDataToValidate",
];
