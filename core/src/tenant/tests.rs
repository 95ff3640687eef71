//! Identity sources and resolution: table-driven cases for names, SPIFFE patterns, networks
//! and the resolution order, plus property tests.

use proptest::prelude::*;

use super::*;

fn t(name: &str) -> TenantName {
    TenantName::try_new(name).unwrap()
}

fn field_of(e: TenantError) -> &'static str {
    let TenantError::Invalid { field, .. } = e;
    field
}

#[test]
fn accepts_plain_tenant_names() {
    for ok in [
        "a",
        "acme",
        "team-7",
        "a_b",
        "0",
        &"x".repeat(MAX_TENANT_LEN),
    ] {
        assert_eq!(TenantName::try_new(ok).unwrap().as_str(), ok);
    }
}

#[test]
fn rejects_tenant_names_that_could_confuse_or_escape() {
    let long = "x".repeat(MAX_TENANT_LEN + 1);
    for bad in [
        "", "..", ".", "a/b", "/", "a b", " a", "a\n", "a\0", "a\t", "Acme", "é", "a.b", "-a",
        "a-", "_a", "a\"b", "a\\b", "a%2f", "a;b", &long,
    ] {
        let err = TenantName::try_new(bad).unwrap_err();
        assert_eq!(field_of(err), "tenant", "{bad:?}");
    }
}

#[test]
fn tenant_names_round_trip_through_serde_and_reject_bad_values() {
    let name: TenantName = serde_json::from_str("\"acme\"").unwrap();
    assert_eq!(name, t("acme"));
    assert_eq!(serde_json::to_string(&name).unwrap(), "\"acme\"");
    assert!(serde_json::from_str::<TenantName>("\"../x\"").is_err());
}

#[test]
fn spiffe_pattern_captures_the_tenant_segment() {
    let p = SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap();
    assert_eq!(
        p.tenant_of("spiffe://cluster.local/tenant/acme/ns/default/sa/web"),
        SpiffeMatch::Tenant(t("acme"))
    );
    assert_eq!(
        p.tenant_of("spiffe://example.org/tenant/b/x"),
        SpiffeMatch::Tenant(t("b"))
    );
}

#[test]
fn spiffe_pattern_rejects_ids_that_do_not_match() {
    let p = SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap();
    for no in [
        "spiffe://cluster.local/tenant/acme", // the trailing * needs one segment
        "spiffe://cluster.local/tenants/acme/x", // literal differs
        "spiffe://cluster.local/tenant/acme/x/", // empty segment
        "spiffe://cluster.local/tenant/acme/../x", // dot segment
        "spiffe://cluster.local/tenant/acme/./x",
        "spiffe://cluster.local/tenant/ac%2fme/x", // percent-encoding
        "spiffe://cluster.local//tenant/acme/x",
        "spiffe://Cluster.Local/tenant/acme/x", // trust domain is lowercase
        "spiffe://cluster.local/tenant/acme/x?q",
        "spiffe://cluster.local/tenant/acme/x#f",
        "spiffe://cluster.local",
        "spiffe:///tenant/acme/x",
        "http://cluster.local/tenant/acme/x",
        "SPIFFE://cluster.local/tenant/acme/x",
        "",
    ] {
        assert_eq!(p.tenant_of(no), SpiffeMatch::NoMatch, "{no:?}");
    }
    let long = format!("spiffe://d/tenant/acme/{}", "x".repeat(MAX_SPIFFE_ID_LEN));
    assert_eq!(p.tenant_of(&long), SpiffeMatch::NoMatch);
}

#[test]
fn spiffe_pattern_flags_a_matching_id_with_an_invalid_tenant() {
    let p = SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap();
    for bad in [
        "spiffe://d/tenant/ACME/x",
        "spiffe://d/tenant/a.b/x",
        "spiffe://d/tenant/-a/x",
    ] {
        assert!(
            matches!(p.tenant_of(bad), SpiffeMatch::InvalidTenant(_)),
            "{bad:?}"
        );
    }
}

#[test]
fn spiffe_pattern_with_a_fixed_domain_and_single_wildcards() {
    let p = SpiffePattern::try_new("spiffe://prod.example/ns/*/tenant/{tenant}").unwrap();
    assert_eq!(
        p.tenant_of("spiffe://prod.example/ns/x/tenant/acme"),
        SpiffeMatch::Tenant(t("acme"))
    );
    assert_eq!(
        p.tenant_of("spiffe://evil.example/ns/x/tenant/acme"),
        SpiffeMatch::NoMatch
    );
    assert_eq!(
        p.tenant_of("spiffe://prod.example/ns/x/y/tenant/acme"),
        SpiffeMatch::NoMatch
    );
    assert_eq!(
        p.tenant_of("spiffe://prod.example/ns/x/tenant/acme/z"),
        SpiffeMatch::NoMatch
    );
}

#[test]
fn spiffe_pattern_errors_name_the_field() {
    for bad in [
        "",
        "https://d/tenant/{tenant}",
        "spiffe://d",
        "spiffe://{domain}/tenant",
        "spiffe://{domain}/tenant/{tenant}/{tenant}",
        "spiffe://{domain}/tenant/{tenant}/",
        "spiffe://{domain}/../{tenant}",
        "spiffe://{domain}/{team}/{tenant}",
        "spiffe://{domain}//{tenant}",
        "spiffe://Upper/{tenant}",
        "spiffe://{domain}/a b/{tenant}",
    ] {
        let err = SpiffePattern::try_new(bad).unwrap_err();
        assert_eq!(field_of(err.clone()), "spiffe_pattern", "{bad:?}");
        assert!(err.to_string().starts_with("spiffe_pattern "), "{err}");
    }
}

#[test]
fn cidrs_parse_and_match_v4_and_v6_source_addresses() {
    let nets: Vec<Cidr> = ["10.0.0.0/8", "::1/128", "fd00::/8", "192.168.1.7/32"]
        .iter()
        .map(|c| Cidr::try_new(c).unwrap())
        .collect();
    for yes in [
        "10.1.2.3:5000",
        "10.255.255.255:1",
        "[::1]:443",
        "[fd12::5]:80",
        "192.168.1.7:9",
        "10.0.0.1",
        "[::ffff:10.9.9.9]:80", // IPv4-mapped, as a dual-stack listener reports it
    ] {
        assert!(is_trusted_source(&nets, yes), "{yes:?}");
    }
    for no in [
        "11.0.0.1:80",
        "[::2]:443",
        "192.168.1.8:9",
        "[fe80::1]:80",
        "",
        "10.0.0.1:99999",
        "localhost:80",
        "10.0.0.1 :80",
    ] {
        assert!(!is_trusted_source(&nets, no), "{no:?}");
    }
    assert_eq!(nets[1].to_string(), "::1/128");
    assert!(Cidr::try_new("0.0.0.0/0")
        .unwrap()
        .contains("1.2.3.4".parse().unwrap()));
    assert!(Cidr::try_new("::/0")
        .unwrap()
        .contains("2001:db8::1".parse().unwrap()));
}

#[test]
fn cidr_errors_name_the_field() {
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "::/129",
        "10.0.0.1/8",
        "x/8",
        "10.0.0.0/+8",
        "10.0.0.0/-1",
        "10.0.0.0/",
        "/8",
    ] {
        assert_eq!(
            field_of(Cidr::try_new(bad).unwrap_err()),
            "trusted_cidrs",
            "{bad:?}"
        );
    }
}

fn sources() -> Vec<IdentitySource> {
    vec![
        IdentitySource::SpiffeSan(
            SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap(),
        ),
        IdentitySource::JwtClaim,
        IdentitySource::TrustedHeader(vec![Cidr::try_new("10.0.0.0/8").unwrap()]),
    ]
}

fn resolved(tenant: &str, source: SourceKind) -> Resolution {
    Resolution::Resolved {
        tenant: t(tenant),
        source,
    }
}

#[test]
fn resolution_takes_the_first_source_that_applies() {
    let s = sources();
    let all = RequestFacts {
        uri_san: Some("spiffe://d/tenant/a/x"),
        jwt_tenant: Some("b"),
        header_tenants: &["c"],
        source_address: Some("10.0.0.1:1"),
    };
    assert_eq!(resolve(&s, &all), resolved("a", SourceKind::SpiffeSan));
    let no_san = RequestFacts {
        uri_san: Some("spiffe://d/other/a"),
        ..all
    };
    assert_eq!(resolve(&s, &no_san), resolved("b", SourceKind::JwtClaim));
    let header_only = RequestFacts {
        uri_san: None,
        jwt_tenant: None,
        ..all
    };
    assert_eq!(
        resolve(&s, &header_only),
        resolved("c", SourceKind::TrustedHeader)
    );
}

#[test]
fn attack_spoofed_header_from_an_untrusted_address_is_ignored() {
    let s = sources();
    for addr in [
        Some("203.0.113.9:4000"),
        Some("[::1]:80"),
        Some("garbage"),
        None,
    ] {
        let facts = RequestFacts {
            header_tenants: &["victim"],
            source_address: addr,
            ..Default::default()
        };
        assert_eq!(resolve(&s, &facts), Resolution::Anonymous, "{addr:?}");
    }
}

#[test]
fn attack_duplicate_tenant_headers_from_a_trusted_address_are_denied() {
    let facts = RequestFacts {
        header_tenants: &["a", "b"],
        source_address: Some("10.1.1.1:1"),
        ..Default::default()
    };
    assert_eq!(
        resolve(&sources(), &facts),
        Resolution::Denied(DenyReason::DuplicateTenantHeader)
    );
}

#[test]
fn attack_invalid_values_deny_instead_of_falling_through() {
    let s = sources();
    let bad_san = RequestFacts {
        uri_san: Some("spiffe://d/tenant/EVIL/x"),
        jwt_tenant: Some("b"),
        ..Default::default()
    };
    assert!(matches!(
        resolve(&s, &bad_san),
        Resolution::Denied(DenyReason::InvalidTenant {
            origin: SourceKind::SpiffeSan,
            ..
        })
    ));
    let long = "a".repeat(10_000);
    for claim in ["", "../a", "a b", "a\r\nx-tenant: b", long.as_str()] {
        let facts = RequestFacts {
            jwt_tenant: Some(claim),
            header_tenants: &["ok"],
            source_address: Some("10.0.0.1:1"),
            ..Default::default()
        };
        assert!(
            matches!(
                resolve(&s, &facts),
                Resolution::Denied(DenyReason::InvalidTenant {
                    origin: SourceKind::JwtClaim,
                    ..
                })
            ),
            "{claim:?}"
        );
    }
    let header = RequestFacts {
        header_tenants: &["a/b"],
        source_address: Some("10.0.0.1:1"),
        ..Default::default()
    };
    assert!(matches!(
        resolve(&s, &header),
        Resolution::Denied(DenyReason::InvalidTenant {
            origin: SourceKind::TrustedHeader,
            ..
        })
    ));
}

#[test]
fn no_source_and_no_facts_is_anonymous() {
    assert_eq!(
        resolve(&sources(), &RequestFacts::default()),
        Resolution::Anonymous
    );
    assert_eq!(
        resolve(
            &[],
            &RequestFacts {
                jwt_tenant: Some("a"),
                ..Default::default()
            }
        ),
        Resolution::Anonymous
    );
}

proptest! {
    #[test]
    fn valid_tenant_names_survive_any_spiffe_suffix(
        tenant in "[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?",
        rest in prop::collection::vec("[A-Za-z0-9_-]{1,8}", 1..5),
    ) {
        let p = SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap();
        let id = format!("spiffe://td/tenant/{tenant}/{}", rest.join("/"));
        prop_assert_eq!(p.tenant_of(&id), SpiffeMatch::Tenant(t(&tenant)));
    }

    #[test]
    fn tenant_of_never_panics_and_only_yields_valid_names(id in "\\PC{0,80}", raw in any::<Vec<u8>>()) {
        let p = SpiffePattern::try_new("spiffe://{domain}/tenant/{tenant}/*").unwrap();
        for input in [id, format!("spiffe://d/tenant/{}", String::from_utf8_lossy(&raw))] {
            if let SpiffeMatch::Tenant(name) = p.tenant_of(&input) {
                prop_assert!(TenantName::try_new(name.as_str()).is_ok());
            }
        }
    }

    #[test]
    fn cidr_membership_agrees_with_masking(a in any::<u32>(), b in any::<u32>(), len in 0u8..=32) {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let net = std::net::Ipv4Addr::from(a & mask);
        let cidr = Cidr::try_new(&format!("{net}/{len}")).unwrap();
        let ip = std::net::Ipv4Addr::from(b);
        prop_assert_eq!(cidr.contains(ip.into()), (b & mask) == (a & mask));
        prop_assert_eq!(cidr.contains(ip.to_ipv6_mapped().into()), (b & mask) == (a & mask));
    }
}
