//! The filter's decision logic, free of proxy-wasm: the configuration compiled into rules, and
//! one request checked against all of them.
//!
//! Rules are evaluated in order. A rule that does not match (or skips a request without its
//! key) is passed over. An enforcing rule that rejects ends the evaluation: the request is
//! rejected and later rules are not charged (earlier ones that admitted it keep the charge,
//! as in Envoy's local rate limit with several descriptors). Delays add up to the longest
//! one; shadow rules never stop the evaluation.

use std::borrow::Cow;
use std::rc::Rc;

use meshguard_core::{Decision, Verdict};
use meshguard_filter_common::{CasStore, ConfigError};

use crate::config::{Action, Config, HeadersMode, Limit, OnMissingKey, Rule};
use crate::limits::LimitGroup;
use crate::matching::{Key, KeyBuilder, Matcher};
use crate::request::RequestAttributes;
use crate::table::{fingerprint, Layout, Outcome, Source, Table};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// One compiled rule.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    /// The rule's name (stats, logs).
    pub(crate) name: String,
    /// What happens over the limit.
    pub(crate) action: Action,
    /// The tiers' names, by tier index.
    pub(crate) tier_names: Vec<String>,
    matcher: Matcher,
    key: KeyBuilder,
    on_missing_key: OnMissingKey,
    /// Tier matchers by descending priority, with the tier's index.
    tiers: Vec<(Matcher, usize)>,
    table: Table,
    status: u16,
    /// Shared with every reply (a rejection copies no body).
    body: Rc<[u8]>,
    headers: Vec<(Cow<'static, str>, String)>,
    headers_mode: HeadersMode,
}

/// The quota figures for `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// `RateLimit-Limit`: requests per window (burst, pacer capacity).
    pub(crate) limit: u32,
    /// `RateLimit-Remaining`.
    pub(crate) remaining: u32,
    /// `RateLimit-Reset`: seconds until the quota is whole again, rounded up.
    pub(crate) reset_secs: u64,
}

impl Quota {
    fn of(d: &Decision) -> Self {
        Self {
            limit: d.limit,
            remaining: d.remaining,
            reset_secs: d.reset_after_secs(),
        }
    }

    /// The headers, lower case as HTTP/2 requires (HTTP/1 clients compare case-insensitively).
    pub(crate) fn headers(&self) -> [(&'static str, String); 3] {
        [
            ("ratelimit-limit", self.limit.to_string()),
            ("ratelimit-remaining", self.remaining.to_string()),
            ("ratelimit-reset", self.reset_secs.to_string()),
        ]
    }

    /// The tighter of two: fewer remaining, then the later reset.
    fn tighter(a: Option<Self>, b: Self) -> Self {
        match a {
            Some(a)
                if (a.remaining, std::cmp::Reverse(a.reset_secs))
                    <= (b.remaining, std::cmp::Reverse(b.reset_secs)) =>
            {
                a
            }
            _ => b,
        }
    }
}

/// What happened to one request in one rule, for stats and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The request lacks key attribute `part` and the rule skips such requests.
    Skipped { part: usize },
    /// The rule decided.
    Decided {
        key: Key,
        outcome: Outcome,
        effect: Effect,
    },
    /// The compare-and-swap retries ran out; enforcing rules reject the request.
    Contention { key: Key },
}

/// What a rule's decision did to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Allowed,
    Delayed(u64),
    Limited,
    ShadowLimited,
}

/// What to do with the request after every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamVerdict {
    /// Forward it now; add these headers to the response (`ratelimit_headers: always`).
    Forward { quota: Option<Quota> },
    /// Hold it for `ns` nanoseconds, then forward it.
    Delay { ns: u64, quota: Option<Quota> },
    /// Answer with this local reply.
    Reject(Reply),
}

/// A local reply to a rejected request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Index of the rejecting rule.
    pub(crate) rule: usize,
    pub(crate) status: u16,
    /// Configured headers, then the computed ones (names are static: no allocation).
    pub(crate) headers: Vec<(Cow<'static, str>, String)>,
    pub(crate) body: Rc<[u8]>,
}

/// Every rule of a configuration.
#[derive(Debug, Clone)]
pub(crate) struct Engine {
    pub(crate) rules: Vec<CompiledRule>,
}

impl Engine {
    /// Compiles a validated configuration.
    pub(crate) fn compile(config: &Config) -> Result<Self, ConfigError> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                CompiledRule::compile(&config.domain, rule)
                    .map_err(|e| e.in_index(i).in_field("rules"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// Creates the rules' shared-data tables (before traffic).
    pub(crate) fn create_tables(&self, store: &impl CasStore) {
        for rule in &self.rules {
            rule.table.create(store);
        }
    }

    /// Checks a request against every rule at `now`; `observe` sees each rule's event.
    pub(crate) fn check(
        &self,
        req: &impl RequestAttributes,
        store: &impl CasStore,
        now: u64,
        mut observe: impl FnMut(usize, &CompiledRule, &Event),
    ) -> StreamVerdict {
        let mut delay = 0;
        let mut quota: Option<Quota> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matcher.matches(req) {
                continue;
            }
            let key = match rule.key.build(req) {
                Ok(key) => key,
                Err(part) if rule.on_missing_key == OnMissingKey::Skip => {
                    observe(i, rule, &Event::Skipped { part });
                    continue;
                }
                Err(_) => Key::unknown(),
            };
            let tier = rule
                .tiers
                .iter()
                .find(|(m, _)| m.matches(req))
                .map(|(_, t)| *t);
            let outcome = match rule.table.decide(store, &key, tier, now) {
                Ok(outcome) => outcome,
                Err(_) => {
                    observe(i, rule, &Event::Contention { key });
                    if rule.action == Action::Shadow {
                        continue;
                    }
                    // Fail closed: the limit must hold even when the workers fight over it.
                    return StreamVerdict::Reject(rule.reply(i, None, NANOS_PER_SEC));
                }
            };
            let d = outcome.decision;
            let effect = match (d.verdict, rule.action) {
                (Verdict::Allow, _) => Effect::Allowed,
                (Verdict::Delay(ns), _) => Effect::Delayed(ns),
                (Verdict::Reject, Action::Shadow) => Effect::ShadowLimited,
                (Verdict::Reject, _) => Effect::Limited,
            };
            observe(
                i,
                rule,
                &Event::Decided {
                    key,
                    outcome,
                    effect,
                },
            );
            match effect {
                Effect::Limited => {
                    let q = (rule.headers_mode != HeadersMode::Never).then(|| Quota::of(&d));
                    return StreamVerdict::Reject(rule.reply(i, q, d.retry_after_ns));
                }
                Effect::Delayed(ns) => delay = delay.max(ns),
                Effect::Allowed | Effect::ShadowLimited => {}
            }
            if rule.headers_mode == HeadersMode::Always && effect != Effect::ShadowLimited {
                quota = Some(Quota::tighter(quota, Quota::of(&d)));
            }
        }
        if delay > 0 {
            StreamVerdict::Delay { ns: delay, quota }
        } else {
            StreamVerdict::Forward { quota }
        }
    }
}

impl CompiledRule {
    fn compile(domain: &str, rule: &Rule) -> Result<Self, ConfigError> {
        let max_delay = rule.max_delay.map(|d| d.as_nanos());
        let can_delay = rule.action == Action::Delay;
        let build = |limits: &[Limit], field: &str| {
            limits
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    l.build(max_delay)
                        .map_err(|e| e.in_index(i).in_field(field))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let pool_limits = build(&rule.limits, "limits")?;
        let pool = LimitGroup::new(pool_limits.clone(), 0, can_delay);
        let mut offset = pool.len();
        let mut tiers = Vec::new();
        let mut tier_groups = Vec::new();
        // Everything that gives stored state its size or meaning (every limit's parameters, the
        // tiers, the table size) feeds the table's fingerprint: change any and the rule starts
        // from fresh state instead of misreading the old bytes.
        let mut described = format!("{pool_limits:?}");
        for (t, tier) in rule.tiers.iter().enumerate() {
            let in_tier = |e: ConfigError| e.in_index(t).in_field("tiers");
            let reserved = build(&tier.reserved, "reserved").map_err(in_tier)?;
            described.push_str(&format!("|{reserved:?}"));
            let group = LimitGroup::new(reserved, offset, can_delay);
            offset += group.len();
            tier_groups.push(group);
            let matcher =
                Matcher::compile(&tier.matches).map_err(|e| in_tier(e.in_field("match")))?;
            tiers.push((matcher, t, tier.priority));
        }
        // Highest priority first; the sort is stable, so ties keep the listed order.
        tiers.sort_by_key(|t| std::cmp::Reverse(t.2));
        let max_keys = (!rule.key.is_empty())
            .then(|| rule.max_keys.unwrap_or(crate::config::DEFAULT_MAX_KEYS));
        described.push_str(&format!("|keys={max_keys:?}"));
        let layout = Layout {
            pool,
            tiers: tier_groups,
        };
        let prefix = format!("meshguard/ratelimit/{domain}/{}/", rule.name);
        let table = Table::new(prefix, max_keys, layout, fingerprint(&described));
        Ok(Self {
            name: rule.name.clone(),
            action: rule.action,
            tier_names: rule.tiers.iter().map(|t| t.name.clone()).collect(),
            matcher: Matcher::compile(&rule.matches).map_err(|e| e.in_field("match"))?,
            key: KeyBuilder::new(&rule.key),
            on_missing_key: rule.on_missing_key,
            tiers: tiers.into_iter().map(|(m, t, _)| (m, t)).collect(),
            table,
            status: rule.response.status,
            body: Rc::from(rule.response.body.as_bytes()),
            headers: rule
                .response
                .headers
                .iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), v.clone()))
                .collect(),
            headers_mode: rule.ratelimit_headers,
        })
    }

    /// The rejection reply: the configured response, `Retry-After` (whole seconds, at least 1;
    /// left out when the request can never fit) and the quota headers.
    fn reply(&self, index: usize, quota: Option<Quota>, retry_after_ns: u64) -> Reply {
        let mut headers = Vec::with_capacity(self.headers.len() + 4);
        headers.extend(self.headers.iter().cloned());
        if retry_after_ns != Decision::NEVER {
            let secs = retry_after_ns.div_ceil(NANOS_PER_SEC).max(1);
            headers.push((Cow::Borrowed("retry-after"), secs.to_string()));
        }
        if let Some(quota) = quota {
            headers.extend(quota.headers().map(|(k, v)| (Cow::Borrowed(k), v)));
        }
        Reply {
            rule: index,
            status: self.status,
            headers,
            body: Rc::clone(&self.body),
        }
    }

    /// The tier an event's quota came from, for logs.
    pub(crate) fn source_name(&self, source: Source) -> &str {
        match source {
            Source::Pool => "pool",
            Source::Reserved(t) => self.tier_names.get(t).map_or("reserved", String::as_str),
        }
    }
}

#[cfg(test)]
// A panic is how a test reports failure.
#[allow(clippy::panic)]
mod tests {
    use meshguard_filter_common::{parse_config, MemoryStore};

    use super::*;
    use crate::request::fake::FakeRequest;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000 * MS;

    fn engine(json: &str) -> (Engine, MemoryStore) {
        let config: Config = parse_config(json.as_bytes()).unwrap();
        let engine = Engine::compile(&config).unwrap();
        let store = MemoryStore::new();
        engine.create_tables(&store);
        (engine, store)
    }

    fn check(e: &Engine, store: &MemoryStore, req: &FakeRequest, now: u64) -> StreamVerdict {
        e.check(req, store, now, |_, _, _| {})
    }

    fn get(path: &str) -> FakeRequest {
        FakeRequest::new("GET", path)
    }

    #[test]
    fn rejects_over_the_limit_with_quota_headers() {
        let (e, store) = engine(
            r#"{"rules":[{"name":"r","limits":[{"algorithm":"fixed_window","requests":2,"per":"10s"}],
                "response":{"body":"slow down","headers":{"x-reason":"quota"}}}]}"#,
        );
        for _ in 0..2 {
            assert_eq!(
                check(&e, &store, &get("/"), 0),
                StreamVerdict::Forward { quota: None }
            );
        }
        let StreamVerdict::Reject(reply) = check(&e, &store, &get("/"), 4 * SEC) else {
            panic!("third request must be rejected")
        };
        assert_eq!(reply.status, 429);
        assert_eq!(&*reply.body, b"slow down");
        let h = |name: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h("x-reason"), Some("quota"));
        assert_eq!(h("retry-after"), Some("6"));
        assert_eq!(h("ratelimit-limit"), Some("2"));
        assert_eq!(h("ratelimit-remaining"), Some("0"));
        assert_eq!(h("ratelimit-reset"), Some("6"));
    }

    #[test]
    fn only_matching_rules_apply_and_the_first_rejection_wins() {
        let (e, store) = engine(
            r#"{"rules":[
                {"name":"api","match":{"path":{"prefix":"/api"}},
                 "limits":[{"algorithm":"fixed_window","requests":1,"per":"1s"}]},
                {"name":"all","limits":[{"algorithm":"fixed_window","requests":3,"per":"1s"}],
                 "response":{"status":503}}]}"#,
        );
        let mut seen = Vec::new();
        let mut run = |path: &str| {
            let v = e.check(&get(path), &store, 0, |i, _, ev| seen.push((i, ev.clone())));
            match v {
                StreamVerdict::Reject(r) => r.status,
                _ => 200,
            }
        };
        assert_eq!(run("/api/x"), 200);
        assert_eq!(run("/api/x"), 429, "api's limit; `all` not charged");
        assert_eq!(run("/other"), 200);
        assert_eq!(run("/other"), 200);
        assert_eq!(run("/other"), 503, "all: 3 charged (api 1 + other 2)");
        let decided_by_all = seen.iter().filter(|(i, _)| *i == 1).count();
        assert_eq!(decided_by_all, 4);
    }

    #[test]
    fn shadow_rules_count_but_never_block() {
        let (e, store) = engine(
            r#"{"rules":[{"name":"s","action":"shadow",
                "limits":[{"algorithm":"token_bucket","requests":1,"per":"1s"}]}]}"#,
        );
        let mut effects = Vec::new();
        for _ in 0..3 {
            let v = e.check(&get("/"), &store, 0, |_, _, ev| {
                if let Event::Decided { effect, .. } = ev {
                    effects.push(*effect);
                }
            });
            assert_eq!(v, StreamVerdict::Forward { quota: None });
        }
        assert_eq!(
            effects,
            [
                Effect::Allowed,
                Effect::ShadowLimited,
                Effect::ShadowLimited
            ]
        );
    }

    #[test]
    fn a_pacer_delays_up_to_max_delay_then_rejects() {
        let (e, store) = engine(
            r#"{"rules":[{"name":"p","action":"delay","max_delay":"250ms",
                "limits":[{"algorithm":"leaky_bucket","requests":10,"per":"1s"}]}]}"#,
        );
        let verdicts: Vec<_> = (0..5).map(|_| check(&e, &store, &get("/"), 0)).collect();
        assert_eq!(verdicts[0], StreamVerdict::Forward { quota: None });
        assert_eq!(
            verdicts[1],
            StreamVerdict::Delay {
                ns: 100 * MS,
                quota: None
            }
        );
        assert_eq!(
            verdicts[2],
            StreamVerdict::Delay {
                ns: 200 * MS,
                quota: None
            }
        );
        let StreamVerdict::Reject(reply) = &verdicts[3] else {
            panic!("past max_delay: {:?}", verdicts[3])
        };
        assert!(reply.headers.contains(&("retry-after".into(), "1".into())));
    }

    #[test]
    fn missing_keys_are_shared_or_skipped_as_configured() {
        let rule = |on_missing: &str| {
            format!(
                r#"{{"rules":[{{"name":"u","key":[{{"header":"x-user"}}],"on_missing_key":"{on_missing}",
                    "limits":[{{"algorithm":"fixed_window","requests":1,"per":"1s"}}]}}]}}"#
            )
        };
        let (shared, store) = engine(&rule("shared"));
        assert!(matches!(
            check(&shared, &store, &get("/"), 0),
            StreamVerdict::Forward { .. }
        ));
        assert!(matches!(
            check(&shared, &store, &get("/"), 0),
            StreamVerdict::Reject(_)
        ));
        let alice = get("/").header("x-user", "alice");
        assert!(matches!(
            check(&shared, &store, &alice, 0),
            StreamVerdict::Forward { .. }
        ));

        let (skip, store) = engine(&rule("skip"));
        let mut events = Vec::new();
        for _ in 0..3 {
            let v = skip.check(&get("/"), &store, 0, |_, _, ev| events.push(ev.clone()));
            assert!(matches!(v, StreamVerdict::Forward { .. }));
        }
        assert_eq!(events, vec![Event::Skipped { part: 0 }; 3]);
    }

    #[test]
    fn always_headers_report_the_tightest_rule() {
        let (e, store) = engine(
            r#"{"rules":[
                {"name":"a","ratelimit_headers":"always","limits":[{"algorithm":"fixed_window","requests":5,"per":"1s"}]},
                {"name":"b","ratelimit_headers":"always","limits":[{"algorithm":"fixed_window","requests":3,"per":"2s"}]},
                {"name":"c","limits":[{"algorithm":"fixed_window","requests":1,"per":"1s"}]}]}"#,
        );
        let v = check(&e, &store, &get("/"), 0);
        let quota = Quota {
            limit: 3,
            remaining: 2,
            reset_secs: 2,
        };
        assert_eq!(v, StreamVerdict::Forward { quota: Some(quota) });
    }

    #[test]
    fn tiers_pick_the_highest_priority_match() {
        let (e, store) = engine(
            r#"{"rules":[{"name":"t","limits":[{"algorithm":"fixed_window","requests":1,"per":"1s"}],
                "tiers":[
                  {"name":"silver","match":{"headers":[{"name":"x-plan","present":true}]},"priority":1,
                   "reserved":[{"algorithm":"fixed_window","requests":1,"per":"1s"}]},
                  {"name":"gold","match":{"headers":[{"name":"x-plan","exact":"gold"}]},"priority":5,
                   "reserved":[{"algorithm":"fixed_window","requests":2,"per":"1s"}]}]}]}"#,
        );
        let gold = get("/").header("x-plan", "gold");
        let mut sources = Vec::new();
        for _ in 0..4 {
            e.check(&gold, &store, 0, |_, rule, ev| {
                if let Event::Decided {
                    outcome, effect, ..
                } = ev
                {
                    sources.push((rule.source_name(outcome.source).to_string(), *effect));
                }
            });
        }
        let expected = [
            ("gold", Effect::Allowed),
            ("gold", Effect::Allowed),
            ("pool", Effect::Allowed),
            ("pool", Effect::Limited),
        ];
        let expected: Vec<_> = expected.iter().map(|(s, e)| (s.to_string(), *e)).collect();
        assert_eq!(sources, expected);
        // The pool is empty for everyone without a reserve, but silver still has its own.
        assert!(matches!(
            check(&e, &store, &get("/"), 0),
            StreamVerdict::Reject(_)
        ));
        let silver = get("/").header("x-plan", "silver");
        assert!(matches!(
            check(&e, &store, &silver, 0),
            StreamVerdict::Forward { .. }
        ));
    }

    #[test]
    fn changing_a_limit_starts_from_fresh_state() {
        let config = |n: u32| {
            format!(
                r#"{{"rules":[{{"name":"r","limits":[{{"algorithm":"fixed_window","requests":{n},"per":"1m"}}]}}]}}"#
            )
        };
        let (one, store) = engine(&config(1));
        assert!(matches!(
            check(&one, &store, &get("/"), 0),
            StreamVerdict::Forward { .. }
        ));
        assert!(matches!(
            check(&one, &store, &get("/"), 0),
            StreamVerdict::Reject(_)
        ));
        let two = Engine::compile(&parse_config(config(2).as_bytes()).unwrap()).unwrap();
        two.create_tables(&store);
        assert!(matches!(
            check(&two, &store, &get("/"), 0),
            StreamVerdict::Forward { .. }
        ));
        assert!(matches!(
            check(&two, &store, &get("/"), 0),
            StreamVerdict::Forward { .. }
        ));
        assert!(matches!(
            check(&two, &store, &get("/"), 0),
            StreamVerdict::Reject(_)
        ));
    }
}
