//! Per-service indexes, as Consul keeps them: a read of one service answers that service's
//! index and a blocking query on it wakes only when that service changes; the catalog's list
//! of services has its own index that health changes do not move; KV has its own. And the
//! thread-per-connection server holds thousands of parked blocking queries.

use std::time::{Duration, Instant};

use meshguard_fake_consul::{FakeConsul, Health, Instance, Options};

use crate::blocking::await_requests;
use crate::client::{get, Conn};

#[test]
fn a_service_read_answers_the_services_own_index() {
    let fake = FakeConsul::start().unwrap();
    let web = fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    let api = fake.register(Instance::new("api-1", "api", "10.0.0.2", 80));
    assert!(web < api);
    assert_eq!(get(&fake, "/v1/health/service/web").index(), web);
    assert_eq!(get(&fake, "/v1/catalog/service/web").index(), web);
    assert_eq!(get(&fake, "/v1/health/checks/web").index(), web);
    assert_eq!(get(&fake, "/v1/health/service/api").index(), api);
    assert_eq!(fake.service_index("web"), web);

    fake.set_health("web-1", Health::Critical);
    let moved = fake.index();
    assert_eq!(get(&fake, "/v1/health/service/web").index(), moved);
    assert_eq!(
        get(&fake, "/v1/health/service/api").index(),
        api,
        "another service's change does not move it"
    );
}

#[test]
fn the_catalog_index_moves_on_registrations_not_on_health() {
    let fake = FakeConsul::start().unwrap();
    let registered = fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    assert_eq!(get(&fake, "/v1/catalog/services").index(), registered);
    fake.set_health("web-1", Health::Warning);
    assert!(fake.index() > registered);
    assert_eq!(get(&fake, "/v1/catalog/services").index(), registered);
    assert_eq!(fake.catalog_index(), registered);
    fake.kv_put("k", b"v");
    assert_eq!(get(&fake, "/v1/catalog/services").index(), registered);
    assert!(fake.deregister("web-1"));
    assert_eq!(get(&fake, "/v1/catalog/services").index(), fake.index());
}

#[test]
fn a_missing_service_answers_the_last_extinction_index() {
    let fake = FakeConsul::start().unwrap();
    assert_eq!(get(&fake, "/v1/health/service/web").index(), 1, "never 0");
    fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    let catalog = fake.register(Instance::new("api-1", "api", "10.0.0.2", 80));
    assert_eq!(
        get(&fake, "/v1/health/service/nope").index(),
        catalog,
        "no extinction yet: the catalog's index"
    );
    fake.deregister("web-1");
    let extinct = fake.index();
    fake.register(Instance::new("api-2", "api", "10.0.0.3", 80));
    assert_eq!(get(&fake, "/v1/health/service/web").index(), extinct);
    assert_eq!(get(&fake, "/v1/health/service/nope").index(), extinct);
    assert_eq!(
        get(&fake, "/v1/health/service/web").json(),
        serde_json::json!([])
    );
}

#[test]
fn a_change_to_another_service_does_not_answer_a_blocked_query() {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    let index = fake.service_index("web");
    let mut conn = Conn::open(fake.addr()).unwrap();
    conn.send(
        "GET",
        &format!("/v1/health/service/web?index={index}&wait=400ms"),
        b"",
    )
    .unwrap();
    await_requests(&fake, 1);
    let started = Instant::now();
    fake.register(Instance::new("api-1", "api", "10.0.0.2", 80));
    fake.set_health("api-1", Health::Critical);
    fake.kv_put("k", b"v");
    let resp = conn.read().unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered early: {took:?}"
    );
    assert_eq!(resp.index(), index, "nothing of web changed");

    // A change of web itself answers at once.
    conn.send(
        "GET",
        &format!("/v1/health/service/web?index={index}&wait=10s"),
        b"",
    )
    .unwrap();
    await_requests(&fake, 2);
    let started = Instant::now();
    let new_index = fake.register(Instance::new("web-2", "web", "10.0.0.3", 80));
    let resp = conn.read().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(resp.index(), new_index);
}

#[test]
fn health_changes_do_not_answer_a_blocked_catalog_query() {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    let index = fake.catalog_index();
    let mut conn = Conn::open(fake.addr()).unwrap();
    conn.send(
        "GET",
        &format!("/v1/catalog/services?index={index}&wait=300ms"),
        b"",
    )
    .unwrap();
    await_requests(&fake, 1);
    let started = Instant::now();
    fake.set_health("web-1", Health::Critical);
    let resp = conn.read().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.index(), index);
}

#[test]
fn five_thousand_parked_blocking_queries_hold_and_one_change_answers_only_its_own() {
    const SERVICES: usize = 5_000;
    let fake = FakeConsul::start_with(Options {
        max_connections: SERVICES + 16,
        max_wait: Duration::from_secs(60),
        ..Options::default()
    })
    .unwrap();
    let name = |i: usize| format!("svc{i:04}");
    for i in 0..SERVICES {
        fake.register(Instance::new(
            &format!("{}-1", name(i)),
            &name(i),
            "10.0.0.1",
            80,
        ));
    }
    let started = Instant::now();
    let mut conns: Vec<(Conn, u64)> = (0..SERVICES)
        .map(|i| {
            let index = fake.service_index(&name(i));
            let mut conn = Conn::open(fake.addr()).unwrap();
            conn.send(
                "GET",
                &format!("/v1/health/service/{}?index={index}&wait=60s", name(i)),
                b"",
            )
            .unwrap();
            (conn, index)
        })
        .collect();
    await_requests(&fake, SERVICES);
    // A burst of 5,000 connections fits the listen backlog (no 1 s SYN retransmissions).
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let changed = SERVICES / 2;
    let woken = Instant::now();
    fake.set_health(&format!("{}-1", name(changed)), Health::Critical);
    let (conn, index) = &mut conns[changed];
    let resp = conn.read().unwrap();
    assert!(woken.elapsed() < Duration::from_secs(5));
    assert!(resp.index() > *index);
    assert_eq!(resp.json()[0]["Checks"][0]["Status"], "critical");
    for (i, (conn, _)) in conns.iter_mut().enumerate().step_by(97) {
        if i != changed {
            assert!(!conn.answered_yet().unwrap(), "{} answered", name(i));
        }
    }
}
