//! Fault injection: every fault applies to every following request until cleared, and the
//! request is still recorded.

use std::time::{Duration, Instant};

use meshguard_core::{parse_health_service, ConsulError, HealthPolicy};
use meshguard_fake_consul::{FakeConsul, Fault, Instance};

use crate::client::{get, try_request};

fn fake() -> FakeConsul {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("a", "web", "10.0.0.1", 80));
    fake
}

#[test]
fn status_fault_answers_that_status() {
    let fake = fake();
    fake.set_fault(Fault::Status(503));
    for _ in 0..2 {
        let resp = get(&fake, "/v1/health/service/web");
        assert_eq!(resp.status, 503);
        assert!(resp.header("X-Consul-Index").is_none());
        assert!(!resp.body.is_empty());
    }
    assert_eq!(get(&fake, "/v1/kv/x").status, 503, "every endpoint");
    fake.clear_fault();
    assert_eq!(get(&fake, "/v1/health/service/web").status, 200);
    assert_eq!(fake.requests().len(), 4, "faulted requests are recorded");
}

#[test]
fn delay_fault_answers_late_but_normally() {
    let fake = fake();
    fake.set_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let resp = get(&fake, "/v1/health/service/web");
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json().as_array().unwrap().len(), 1);
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn reset_fault_closes_without_answering() {
    let fake = fake();
    fake.set_fault(Fault::Reset);
    let err = try_request(fake.addr(), "GET", "/v1/health/service/web", b"").unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 1);
    fake.clear_fault();
    assert_eq!(get(&fake, "/v1/health/service/web").status, 200);
}

#[test]
fn malformed_body_fault_breaks_the_json_only() {
    let fake = fake();
    fake.set_fault(Fault::MalformedBody);
    let resp = get(&fake, "/v1/health/service/web");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.index(), fake.index());
    assert!(serde_json::from_slice::<serde_json::Value>(&resp.body).is_err());
    assert!(matches!(
        parse_health_service(&resp.body, HealthPolicy::default()),
        Err(ConsulError::Shape { .. })
    ));
    let resp = get(&fake, "/v1/health/service/empty");
    assert!(serde_json::from_slice::<serde_json::Value>(&resp.body).is_err());
}

#[test]
fn index_faults_answer_at_once_with_a_bad_index() {
    let fake = fake();
    let index = fake.index();
    fake.set_fault(Fault::IndexGoesBackwards);
    let started = Instant::now();
    let resp = get(
        &fake,
        &format!("/v1/health/service/web?index={index}&wait=10s"),
    );
    assert!(resp.index() < index, "{} !< {index}", resp.index());
    assert!(get(&fake, "/v1/health/service/web").index() < index);
    fake.set_fault(Fault::IndexZero);
    let resp = get(
        &fake,
        &format!("/v1/health/service/web?index={index}&wait=10s"),
    );
    assert_eq!(resp.header("X-Consul-Index"), Some("0"));
    assert_eq!(resp.json().as_array().unwrap().len(), 1, "the body is fine");
    assert!(started.elapsed() < Duration::from_secs(5), "no blocking");
    fake.clear_fault();
    assert_eq!(get(&fake, "/v1/health/service/web").index(), index);
}
