//! Several datacenters in one fake: `?dc=` selects one, each behaves like a separate Consul
//! cluster (its own indexes, KV and blocking queries), `/v1/catalog/datacenters` lists them.

use std::thread;
use std::time::{Duration, Instant};

use meshguard_fake_consul::{FakeConsul, Health, Instance, Options};

use crate::blocking::await_requests;
use crate::client::{get, ids, put, Conn};

fn two_dcs() -> FakeConsul {
    let fake = FakeConsul::start_with(Options {
        datacenters: vec!["dc2".into(), "dc3".into()],
        ..Options::default()
    })
    .unwrap();
    fake.register(Instance::new("web-1", "web", "10.0.0.1", 80));
    fake.register(Instance::new("web-2", "web", "10.0.1.1", 80).datacenter("dc2"));
    fake.register(Instance::new("db-2", "db", "10.0.1.2", 5432).datacenter("dc2"));
    fake
}

#[test]
fn dc_parameter_selects_the_datacenter() {
    let fake = two_dcs();
    let local = get(&fake, "/v1/health/service/web").json();
    assert_eq!(ids(&local), vec!["web-1"]);
    assert_eq!(local[0]["Node"]["Datacenter"], "dc1");
    assert_eq!(
        ids(&get(&fake, "/v1/health/service/web?dc=dc1").json()),
        vec!["web-1"]
    );
    let remote = get(&fake, "/v1/health/service/web?dc=dc2").json();
    assert_eq!(ids(&remote), vec!["web-2"]);
    assert_eq!(remote[0]["Node"]["Datacenter"], "dc2");
    let catalog = get(&fake, "/v1/catalog/service/web?dc=dc2").json();
    assert_eq!(catalog[0]["ServiceID"], "web-2");
    assert_eq!(catalog[0]["Datacenter"], "dc2");
    assert_eq!(
        get(&fake, "/v1/catalog/services").json(),
        serde_json::json!({"web": []})
    );
    assert_eq!(
        get(&fake, "/v1/catalog/services?dc=dc2").json(),
        serde_json::json!({"db": [], "web": []})
    );
    // A served datacenter with nothing in it answers like an empty cluster.
    let empty = get(&fake, "/v1/health/service/web?dc=dc3");
    assert_eq!((empty.status, empty.json()), (200, serde_json::json!([])));
    assert!(empty.index() >= 1);
}

#[test]
fn an_unknown_dc_is_consuls_500() {
    let fake = two_dcs();
    fake.register(Instance::new("far-1", "web", "10.9.0.1", 80).datacenter("dc9"));
    for target in [
        "/v1/health/service/web?dc=dc9",
        "/v1/health/checks/web?dc=dc9",
        "/v1/catalog/service/web?dc=dc9",
        "/v1/catalog/services?dc=dc9",
        "/v1/kv/x?dc=dc9",
    ] {
        let resp = get(&fake, target);
        assert_eq!(resp.status, 500, "{target}");
        assert_eq!(resp.text(), "No path to datacenter", "{target}");
    }
    assert_eq!(put(&fake, "/v1/kv/x?dc=dc9", b"v").status, 500);
    assert_eq!(fake.instances("web").len(), 3, "kept, not served");
}

#[test]
fn catalog_datacenters_lists_the_local_one_first() {
    let fake = two_dcs();
    let resp = get(&fake, "/v1/catalog/datacenters");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), serde_json::json!(["dc1", "dc2", "dc3"]));
    let single = FakeConsul::start().unwrap();
    assert_eq!(
        get(&single, "/v1/catalog/datacenters").json(),
        serde_json::json!(["dc1"])
    );
}

#[test]
fn indexes_and_kv_are_per_datacenter() {
    let fake = two_dcs();
    let dc1 = (fake.index(), fake.service_index("web"));
    fake.set_health("web-2", Health::Critical);
    fake.register(Instance::new("web-3", "web", "10.0.1.3", 80).datacenter("dc2"));
    assert_eq!(
        (fake.index(), fake.service_index("web")),
        dc1,
        "dc2 writes leave dc1's indexes alone"
    );
    assert_eq!(fake.dc_index("dc1"), dc1.0);
    assert_eq!(
        get(&fake, "/v1/health/service/web?dc=dc2").index(),
        fake.dc_service_index("dc2", "web")
    );
    assert!(put(&fake, "/v1/kv/k?dc=dc2", b"two").json() == serde_json::json!(true));
    assert_eq!(get(&fake, "/v1/kv/k").status, 404, "dc1's KV is separate");
    assert_eq!(get(&fake, "/v1/kv/k?dc=dc2&raw").text(), "two");
    assert_eq!(fake.kv_get("k"), None);
}

#[test]
fn a_change_in_one_dc_does_not_wake_another_dcs_blocking_query() {
    let fake = two_dcs();
    let index = get(&fake, "/v1/health/service/web").index();
    let index2 = get(&fake, "/v1/health/service/web?dc=dc2").index();
    let before = fake.requests().len();
    thread::scope(|s| {
        let dc1 = s.spawn(|| {
            let started = Instant::now();
            let resp = get(
                &fake,
                &format!("/v1/health/service/web?index={index}&wait=2s"),
            );
            (resp, started.elapsed())
        });
        let dc2 = s.spawn(|| {
            let started = Instant::now();
            let resp = get(
                &fake,
                &format!("/v1/health/service/web?dc=dc2&index={index2}&wait=10s"),
            );
            (resp, started.elapsed())
        });
        await_requests(&fake, before + 2);
        fake.set_health("web-2", Health::Critical);
        let (resp2, took2) = dc2.join().unwrap();
        assert!(took2 < Duration::from_secs(5), "dc2 woke: {took2:?}");
        assert!(resp2.index() > index2);
        assert_eq!(resp2.json()[0]["Checks"][0]["Status"], "critical");
        let (resp1, took1) = dc1.join().unwrap();
        assert!(
            took1 >= Duration::from_millis(1900),
            "dc1 slept the whole wait: {took1:?}"
        );
        assert_eq!(resp1.index(), index, "dc1's answer did not change");
    });
}

#[test]
fn a_change_in_one_dc_does_wake_that_dcs_catalog_query() {
    let fake = two_dcs();
    let index = get(&fake, "/v1/catalog/services?dc=dc2").index();
    let mut conn = Conn::open(fake.addr()).unwrap();
    let before = fake.requests().len();
    conn.send(
        "GET",
        &format!("/v1/catalog/services?dc=dc2&index={index}&wait=10s"),
        b"",
    )
    .unwrap();
    await_requests(&fake, before + 1);
    fake.register(Instance::new("api-1", "api", "10.0.0.9", 80));
    thread::sleep(Duration::from_millis(200));
    assert!(
        !conn.answered_yet().unwrap(),
        "a dc1 registration is not dc2's"
    );
    fake.register(Instance::new("api-2", "api", "10.0.1.9", 80).datacenter("dc2"));
    let resp = conn.read().unwrap();
    assert!(resp.index() > index);
    assert!(resp.json().get("api").is_some());
}
