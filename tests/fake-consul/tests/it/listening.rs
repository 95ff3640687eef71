//! "Consul is down": `stop_listening` refuses connections and drops open ones while the
//! state is kept; `resume_listening` serves the same state on the same port; drop stops.

use std::thread;
use std::time::{Duration, Instant};

use meshguard_fake_consul::{FakeConsul, Instance};

use crate::blocking::await_requests;
use crate::client::{get, ids, try_request, Conn};

#[test]
fn stop_refuses_and_resume_serves_the_same_state_on_the_same_port() {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("a", "web", "10.0.0.1", 80));
    let port = fake.port();
    let mut idle = Conn::open(fake.addr()).unwrap();
    assert_eq!(
        idle.request("GET", "/v1/status/leader", b"")
            .unwrap()
            .status,
        200
    );

    fake.stop_listening();
    let err = try_request(fake.addr(), "GET", "/v1/status/leader", b"").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err:?}");
    assert!(
        idle.request("GET", "/v1/status/leader", b"").is_err(),
        "open connections are closed"
    );
    // State changes while down are served after resuming.
    fake.register(Instance::new("b", "web", "10.0.0.2", 80));
    fake.stop_listening(); // idempotent

    fake.resume_listening().unwrap();
    fake.resume_listening().unwrap(); // idempotent
    assert_eq!(fake.port(), port);
    assert_eq!(
        ids(&get(&fake, "/v1/health/service/web").json()),
        vec!["a", "b"]
    );
}

#[test]
fn stop_closes_blocked_queries() {
    let fake = FakeConsul::start().unwrap();
    let index = fake.index();
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            let result = try_request(
                fake.addr(),
                "GET",
                &format!("/v1/health/service/web?index={index}&wait=10s"),
                b"",
            );
            (result, started.elapsed())
        });
        await_requests(&fake, 1);
        fake.stop_listening();
        let (result, took) = waiter.join().unwrap();
        assert!(result.is_err(), "closed without an answer: {result:?}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    });
    fake.resume_listening().unwrap();
    assert_eq!(get(&fake, "/v1/status/leader").status, 200);
}

#[test]
fn drop_stops_the_server() {
    let fake = FakeConsul::start().unwrap();
    let addr = fake.addr();
    let mut conn = Conn::open(addr).unwrap();
    drop(fake);
    assert!(conn.request("GET", "/v1/status/leader", b"").is_err());
    assert!(try_request(addr, "GET", "/v1/status/leader", b"").is_err());
}
