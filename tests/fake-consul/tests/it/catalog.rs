//! Catalog, health and agent endpoints: registration (Rust API and HTTP), deregistration,
//! health changes, `passing`, `tag`, `dc`, request recording, HTTP edge cases.

use meshguard_fake_consul::{FakeConsul, Health, Instance, Options};
use serde_json::{json, Value};

use crate::client::{get, ids, put, try_request, Conn};

fn web(id: &str, port: u16) -> Instance {
    Instance::new(id, "web", "10.0.0.1", port)
}

#[test]
fn register_and_deregister_change_the_answer_and_the_index() {
    let fake = FakeConsul::start().unwrap();
    let i0 = fake.index();
    assert!(i0 > 0, "the index is never 0");
    let i1 = fake.register(web("web-1", 80));
    let i2 = fake.register(web("web-2", 81));
    assert!(i0 < i1 && i1 < i2);
    let resp = get(&fake, "/v1/health/service/web");
    assert_eq!(resp.index(), i2);
    assert_eq!(ids(&resp.json()), vec!["web-1", "web-2"]);

    assert!(fake.deregister("web-1"));
    let i3 = fake.index();
    assert!(i3 > i2);
    assert!(!fake.deregister("web-1"), "already gone");
    assert_eq!(fake.index(), i3, "a no-op does not move the index");
    assert_eq!(
        ids(&get(&fake, "/v1/health/service/web").json()),
        vec!["web-2"]
    );
    // Registering the same id again replaces it.
    fake.register(web("web-2", 9999));
    let entry = get(&fake, "/v1/health/service/web").json();
    assert_eq!(entry[0]["Service"]["Port"], 9999);
    assert_eq!(entry.as_array().unwrap().len(), 1);

    let unknown = get(&fake, "/v1/health/service/nope");
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.json(), json!([]));
}

#[test]
fn health_changes_show_in_checks_and_passing_filters_them() {
    let fake = FakeConsul::start().unwrap();
    fake.register(web("ok", 1));
    fake.register(web("warn", 2).health(Health::Warning));
    fake.register(web("bad", 3));
    let before = fake.index();
    assert!(fake.set_health("bad", Health::Critical));
    assert!(fake.index() > before);
    assert!(!fake.set_health("nope", Health::Critical));

    let all = get(&fake, "/v1/health/service/web").json();
    assert_eq!(ids(&all), vec!["bad", "ok", "warn"]);
    let status_of = |id: &str| {
        all.as_array()
            .unwrap()
            .iter()
            .find(|e| e["Service"]["ID"] == id)
            .unwrap()["Checks"][0]["Status"]
            .clone()
    };
    assert_eq!(status_of("bad"), "critical");
    assert_eq!(status_of("warn"), "warning");
    assert_eq!(status_of("ok"), "passing");

    let passing = get(&fake, "/v1/health/service/web?passing").json();
    assert_eq!(ids(&passing), vec!["ok"], "warning is not passing either");
    let passing = get(&fake, "/v1/health/service/web?passing=true").json();
    assert_eq!(ids(&passing), vec!["ok"]);
    let not_passing = get(&fake, "/v1/health/service/web?passing=false").json();
    assert_eq!(not_passing.as_array().unwrap().len(), 3);
    assert_eq!(
        get(&fake, "/v1/health/service/web?passing=maybe").status,
        400
    );

    fake.set_health("bad", Health::Passing);
    let passing = get(&fake, "/v1/health/service/web?passing").json();
    assert_eq!(ids(&passing), vec!["bad", "ok"]);

    let views = fake.instances("web");
    assert_eq!(views.len(), 3);
    assert_eq!(
        views.iter().find(|i| i.id == "warn").unwrap().health,
        Health::Warning
    );

    let checks = get(&fake, "/v1/health/checks/web").json();
    let statuses: Vec<&str> = checks
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["passing", "passing", "warning"]);
    assert_eq!(checks[0]["CheckID"], "service:bad");
    assert_eq!(checks[0]["ServiceName"], "web");
}

#[test]
fn tag_and_dc_parameters() {
    let fake = FakeConsul::start_with(Options {
        datacenter: "east".into(),
        ..Options::default()
    })
    .unwrap();
    fake.register(web("a", 1).tag("primary").tag("v2"));
    fake.register(web("b", 2).tag("v2"));
    fake.register(web("far", 3).datacenter("west"));
    assert_eq!(
        ids(&get(&fake, "/v1/health/service/web?tag=v2").json()),
        vec!["a", "b"]
    );
    assert_eq!(
        ids(&get(&fake, "/v1/health/service/web?tag=v2&tag=primary").json()),
        vec!["a"]
    );
    assert_eq!(
        ids(&get(&fake, "/v1/catalog/service/web?tag=primary").json()),
        vec!["a"]
    );
    let same_dc = get(&fake, "/v1/health/service/web?dc=east").json();
    assert_eq!(
        ids(&same_dc),
        vec!["a", "b"],
        "another dc's instance is not served"
    );
    assert_eq!(same_dc[0]["Node"]["Datacenter"], "east");
    for target in [
        "/v1/health/service/web?dc=west",
        "/v1/catalog/service/web?dc=west",
        "/v1/catalog/services?dc=west",
        "/v1/kv/x?dc=west",
    ] {
        let resp = get(&fake, target);
        assert_eq!(resp.status, 500, "{target}");
        assert_eq!(resp.text(), "No path to datacenter");
    }
    assert_eq!(fake.instances("web").len(), 3);
}

#[test]
fn catalog_service_has_consuls_flat_shape() {
    let fake = FakeConsul::start().unwrap();
    fake.register(
        web("web-1", 8080)
            .meta("tenant", "acme")
            .weights(5, 2)
            .tag("x"),
    );
    let entry = get(&fake, "/v1/catalog/service/web").json()[0].clone();
    assert_eq!(entry["ServiceID"], "web-1");
    assert_eq!(entry["ServiceName"], "web");
    assert_eq!(entry["ServiceAddress"], "10.0.0.1");
    assert_eq!(entry["ServicePort"], 8080);
    assert_eq!(entry["ServiceTags"], json!(["x"]));
    assert_eq!(entry["ServiceMeta"], json!({"tenant": "acme"}));
    assert_eq!(entry["ServiceWeights"], json!({"Passing": 5, "Warning": 2}));
    assert_eq!(entry["Node"], "node-1");
    assert_eq!(entry["Address"], "127.0.0.1");
    assert_eq!(entry["Datacenter"], "dc1");
    assert!(entry["CreateIndex"].as_u64().unwrap() <= entry["ModifyIndex"].as_u64().unwrap());
}

#[test]
fn agent_registration_over_http() {
    let fake = FakeConsul::start().unwrap();
    let body = json!({
        "ID": "orders-1", "Name": "orders", "Tags": ["spring"], "Address": "10.0.0.7",
        "Port": 8443, "Meta": {"tenant": "acme", "secure": "true"},
        "Weights": {"Passing": 3, "Warning": 1},
        "Check": {"TTL": "10s"}
    });
    let resp = put(
        &fake,
        "/v1/agent/service/register",
        body.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let entry = get(&fake, "/v1/health/service/orders").json()[0].clone();
    assert_eq!(entry["Service"]["ID"], "orders-1");
    assert_eq!(entry["Service"]["Meta"]["secure"], "true");
    assert_eq!(entry["Service"]["Weights"]["Passing"], 3);
    assert_eq!(entry["Node"]["Node"], "node-1");
    assert_eq!(
        entry["Checks"][0]["Status"], "critical",
        "a TTL check starts critical, as in Consul"
    );
    assert_eq!(entry["Checks"][0]["CheckID"], "service:orders-1");

    assert_eq!(
        put(&fake, "/v1/agent/check/pass/service:orders-1?note=ok", b"").status,
        200
    );
    let entry = get(&fake, "/v1/health/service/orders?passing").json();
    assert_eq!(ids(&entry), vec!["orders-1"]);
    assert_eq!(entry[0]["Checks"][0]["Output"], "ok");
    assert_eq!(put(&fake, "/v1/agent/check/fail/nope", b"").status, 404);

    // Lower-case keys, no ID (the name is the id), an HTTP check the fake assumes passing,
    // and a chunked body.
    let mut conn = Conn::open(fake.addr()).unwrap();
    let payload =
        br#"{"name":"cart","port":9000,"check":{"http":"http://x/health","interval":"5s"}}"#;
    let (a, b) = payload.split_at(10);
    let chunked = [
        b"PUT /v1/agent/service/register HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        format!("{:x}\r\n", a.len()).into_bytes(),
        a.to_vec(),
        b"\r\n".to_vec(),
        format!("{:x}\r\n", b.len()).into_bytes(),
        b.to_vec(),
        b"\r\n0\r\n\r\n".to_vec(),
    ]
    .concat();
    conn.send_raw(&chunked).unwrap();
    let resp = conn.read().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let cart = fake.instances("cart");
    assert_eq!(cart.len(), 1);
    assert_eq!(cart[0].id, "cart");
    assert_eq!(cart[0].port, 9000);
    assert_eq!(cart[0].health, Health::Passing);

    for (bad, why) in [
        (&b"{"[..], "Request decode failed"),
        (br#"{"ID":"x"}"#, "Missing service name"),
        (br#"{"Name":"x","Port":70000}"#, "Port"),
        (
            br#"{"Name":"x","Weights":{"Passing":0,"Warning":1}}"#,
            "Passing",
        ),
        (
            br#"{"Name":"x","Check":{"TTL":"1s","Status":"sleepy"}}"#,
            "status",
        ),
    ] {
        let resp = put(&fake, "/v1/agent/service/register", bad);
        assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(bad));
        assert!(resp.text().contains(why), "{} lacks {why}", resp.text());
    }

    assert_eq!(
        put(&fake, "/v1/agent/service/deregister/orders-1", b"").status,
        200
    );
    assert!(fake.instances("orders").is_empty());
    let resp = put(&fake, "/v1/agent/service/deregister/orders-1", b"");
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("Unknown service ID"));
}

#[test]
fn requests_are_recorded_in_order_with_decoded_query() {
    let fake = FakeConsul::start().unwrap();
    get(
        &fake,
        "/v1/health/service/web?passing&filter=Service.Meta.tenant+%3D%3D+%22a%22",
    );
    put(&fake, "/v1/kv/k%2F1", b"v");
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/v1/health/service/web");
    assert_eq!(
        reqs[0].raw_target,
        "/v1/health/service/web?passing&filter=Service.Meta.tenant+%3D%3D+%22a%22"
    );
    assert_eq!(reqs[0].query_param("passing"), Some(""));
    assert_eq!(
        reqs[0].query_param("filter"),
        Some(r#"Service.Meta.tenant == "a""#)
    );
    assert_eq!(reqs[0].header("host"), Some("consul"));
    assert_eq!(reqs[1].method, "PUT");
    assert_eq!(reqs[1].path, "/v1/kv/k/1");
    assert_eq!(reqs[1].body, b"v");
}

#[test]
fn unknown_paths_wrong_methods_and_leader() {
    let fake = FakeConsul::start().unwrap();
    let resp = get(&fake, "/v1/nope");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.text(), "404 page not found\n");
    let resp = put(&fake, "/v1/health/service/web", b"");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("Allow"), Some("GET"));
    assert_eq!(get(&fake, "/v1/agent/service/register").status, 405);
    assert_eq!(get(&fake, "/v1/health/service/").status, 400);
    let leader = get(&fake, "/v1/status/leader");
    assert_eq!(leader.status, 200);
    assert_eq!(leader.json(), Value::from("127.0.0.1:8300"));
}

#[test]
fn keeps_connections_alive_and_bounds_requests() {
    let fake = FakeConsul::start_with(Options {
        max_header_bytes: 1024,
        max_body_bytes: 100,
        ..Options::default()
    })
    .unwrap();
    fake.register(web("a", 1));
    let mut conn = Conn::open(fake.addr()).unwrap();
    for _ in 0..3 {
        let resp = conn.request("GET", "/v1/health/service/web", b"").unwrap();
        assert_eq!(ids(&resp.json()), vec!["a"]);
    }
    let big_header = format!(
        "GET /v1/status/leader HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let mut conn = Conn::open(fake.addr()).unwrap();
    conn.send_raw(big_header.as_bytes()).unwrap();
    assert_eq!(conn.read().unwrap().status, 431);
    let resp = try_request(fake.addr(), "PUT", "/v1/kv/big", &[b'x'; 101]).unwrap();
    assert_eq!(resp.status, 413);
    assert_eq!(fake.kv_get("big"), None);
    let resp = try_request(fake.addr(), "PUT", "/v1/kv/ok", &[b'x'; 100]).unwrap();
    assert_eq!(resp.status, 200);

    let mut conn = Conn::open(fake.addr()).unwrap();
    conn.send_raw(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    assert_eq!(conn.read().unwrap().status, 400);
    // The server is still fine.
    assert_eq!(get(&fake, "/v1/status/leader").status, 200);
}

#[test]
fn the_handle_is_send_and_sync_and_requests_are_bounded() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FakeConsul>();

    let fake = FakeConsul::start_with(Options {
        max_recorded_requests: 2,
        ..Options::default()
    })
    .unwrap();
    for i in 0..3 {
        get(&fake, &format!("/v1/kv/k{i}"));
    }
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/v1/kv/k1", "/v1/kv/k2"],
        "the oldest is dropped"
    );
    assert!(fake.wait_for_requests(3, std::time::Duration::ZERO));
    assert!(!fake.wait_for_requests(4, std::time::Duration::from_millis(50)));
}
