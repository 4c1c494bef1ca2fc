//! The fault plan: which misbehaviour the simulated upstream shows on which API calls, so the
//! proxy's retry, timeout, validation and stale-serving paths can be tested on demand.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::SimRoute;

/// A fault plan: the first rule that matches a call (route, remaining count, probability roll)
/// decides its fault; calls no rule picks are answered normally.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    pub rules: Vec<FaultRule>,
}

/// One rule of a fault plan. JSON example:
/// `{"route":"get","kind":{"type":"status","code":503},"count":2,"probability":1.0}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// "get", "list" or "update", or a Graph route: "graph_get", "graph_list", "graph_update",
    /// "graph_comment"; `None` matches every API route.
    #[serde(default)]
    pub route: Option<String>,
    pub kind: FaultKind,
    /// Apply to the next N calls the rule picks; `None` means until the plan is replaced.
    #[serde(default)]
    pub count: Option<u64>,
    /// Chance that a matching call is picked (0.0 to 1.0).
    #[serde(default = "one")]
    pub probability: f64,
}

fn one() -> f64 {
    1.0
}

/// What the simulated upstream does instead of (or on top of) its normal answer.
///
/// Latency, Malformed and WrongId run the real handler (a PATCH is applied) and then delay or
/// spoil the answer; Hang, Status, Throttle, StatedThrottle, Reset and Unauthorized answer
/// without running it.
/// Every kind but Unauthorized spends quota like a real call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// Answer normally after this delay.
    Latency { ms: u64 },
    /// Never answer; the client has to time out. Ends (connection closed) at shutdown.
    Hang,
    /// This HTTP status with the upstream's error envelope, e.g. 500 or 503.
    Status { code: u16 },
    /// 200 with a truncated JSON body.
    Malformed,
    /// 200 with another incident than the one asked for.
    WrongId,
    /// 429 with the upstream's body and `Retry-After`, whatever the real quota says.
    Throttle { retry_after_secs: u64 },
    /// 429 whose text states `limit` calls per `window_secs` ("Maximum allowed 30 per
    /// 00:01:00 for the key …") whatever the simulator enforces: the upstream's word on its
    /// limit, for a client that learns limits from it. Graph routes answer their own 429,
    /// which states no limit, with this `Retry-After`.
    StatedThrottle {
        limit: u32,
        window_secs: u64,
        retry_after_secs: u64,
    },
    /// Close the connection without an answer.
    Reset,
    /// 401 as if the token had been revoked.
    Unauthorized,
    /// 429 with a `Retry-After` header and error message exactly as given (either may be left
    /// out): hostile or odd values (`18446744073709551615`, `1e9`, `-5`, dates) for the client's
    /// parser. Spends quota like a real call.
    RawThrottle {
        #[serde(default)]
        retry_after: Option<String>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Applies the call (a PATCH changes the incident), then holds the answer for this long: the
    /// write happened whether or not the client is still there to hear of it.
    AppliedThenDelay { ms: u64 },
}

/// The live plan: rules with their remaining counts and the dice for probabilities.
#[derive(Debug)]
pub(crate) struct FaultPlan {
    rules: Vec<FaultRule>,
    rng: ChaCha8Rng,
}

impl FaultPlan {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rules: Vec::new(),
            // Seeded so a probabilistic plan behaves the same for the same call sequence.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0xFA17_FA17),
        }
    }

    pub(crate) fn replace(&mut self, faults: Faults) {
        self.rules = faults.rules;
    }

    /// The fault for the next call on `route`, if any; spends one of the rule's count.
    pub(crate) fn pick(&mut self, route: SimRoute) -> Option<FaultKind> {
        self.pick_named(route.as_str(), true)
    }

    /// The fault for the next request to the token endpoint: only rules that name the route
    /// `"token"` apply (a rule without a route means every API route, not the token endpoint).
    pub(crate) fn pick_token(&mut self) -> Option<FaultKind> {
        self.pick_named("token", false)
    }

    fn pick_named(&mut self, name: &str, unnamed_matches: bool) -> Option<FaultKind> {
        for rule in &mut self.rules {
            let matches = match rule.route.as_deref() {
                Some(r) => r.eq_ignore_ascii_case(name),
                None => unnamed_matches,
            };
            if !matches {
                continue;
            }
            if rule.count == Some(0) {
                continue;
            }
            let p = rule.probability.clamp(0.0, 1.0);
            if p < 1.0 && !self.rng.gen_bool(p) {
                continue;
            }
            if let Some(n) = rule.count.as_mut() {
                *n -= 1;
            }
            return Some(rule.kind.clone());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_routes_and_probabilities() {
        let mut plan = FaultPlan::new(1);
        plan.replace(Faults {
            rules: vec![
                FaultRule {
                    route: Some("list".into()),
                    kind: FaultKind::Reset,
                    count: None,
                    probability: 0.0,
                },
                FaultRule {
                    route: Some("get".into()),
                    kind: FaultKind::Status { code: 503 },
                    count: Some(2),
                    probability: 1.0,
                },
                FaultRule {
                    route: None,
                    kind: FaultKind::Hang,
                    count: Some(1),
                    probability: 1.0,
                },
            ],
        });
        assert_eq!(plan.pick(SimRoute::Get), Some(FaultKind::Status { code: 503 }));
        assert_eq!(plan.pick(SimRoute::Get), Some(FaultKind::Status { code: 503 }));
        assert_eq!(plan.pick(SimRoute::Get), Some(FaultKind::Hang));
        assert_eq!(plan.pick(SimRoute::Get), None);
        assert_eq!(plan.pick(SimRoute::List), None);
    }

    #[test]
    fn json_shape() {
        let faults: Faults = serde_json::from_str(
            r#"{"rules":[{"route":"get","kind":{"type":"latency","ms":50},"count":3},
                         {"kind":{"type":"hang"}},
                         {"kind":{"type":"throttle","retry_after_secs":7},"probability":0.5},
                         {"route":"list","kind":{"type":"stated_throttle","limit":30,
                                                 "window_secs":3600,"retry_after_secs":8}}]}"#,
        )
        .unwrap();
        assert_eq!(faults.rules.len(), 4);
        assert_eq!(
            faults.rules[3].kind,
            FaultKind::StatedThrottle {
                limit: 30,
                window_secs: 3600,
                retry_after_secs: 8
            }
        );
        assert_eq!(faults.rules[0].kind, FaultKind::Latency { ms: 50 });
        assert_eq!(faults.rules[0].probability, 1.0);
        assert_eq!(faults.rules[1].route, None);
        assert_eq!(faults.rules[2].probability, 0.5);
        let back: Faults = serde_json::from_str(&serde_json::to_string(&faults).unwrap()).unwrap();
        assert_eq!(back, faults);
    }
}
