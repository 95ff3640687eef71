//! Blocking queries: `index` + `wait` hold the answer until the index moves past `index`
//! or the wait (capped by `Options::max_wait`) runs out. These tests measure real time:
//! every wait is bounded and the margins are wide.

use std::thread;
use std::time::{Duration, Instant};

use meshguard_fake_consul::{FakeConsul, Health, Instance, Options};

use crate::client::{get, ids};

/// Waits (bounded) until the fake has received `n` requests, so a blocking request is known
/// to be parked before the test changes state.
pub fn await_requests(fake: &FakeConsul, n: usize) {
    assert!(
        fake.wait_for_requests(n, Duration::from_secs(10)),
        "request never arrived"
    );
}

#[test]
fn returns_early_when_the_index_moves() {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("a", "web", "10.0.0.1", 80));
    let index = get(&fake, "/v1/health/service/web").index();
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            let resp = get(
                &fake,
                &format!("/v1/health/service/web?index={index}&wait=10s"),
            );
            (resp, started.elapsed())
        });
        await_requests(&fake, 2);
        fake.register(Instance::new("b", "web", "10.0.0.2", 80));
        let (resp, took) = waiter.join().unwrap();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert!(resp.index() > index);
        assert_eq!(ids(&resp.json()), vec!["a", "b"]);
    });
}

#[test]
fn health_changes_wake_a_blocked_query() {
    let fake = FakeConsul::start().unwrap();
    fake.register(Instance::new("a", "web", "10.0.0.1", 80));
    let index = fake.index();
    thread::scope(|s| {
        let waiter = s.spawn(|| {
            get(
                &fake,
                &format!("/v1/health/service/web?passing&index={index}&wait=10s"),
            )
        });
        await_requests(&fake, 1);
        fake.set_health("a", Health::Critical);
        let resp = waiter.join().unwrap();
        assert!(resp.index() > index);
        assert_eq!(resp.json(), serde_json::json!([]));
    });
}

#[test]
fn answers_after_wait_when_nothing_changes() {
    let fake = FakeConsul::start().unwrap();
    let index = fake.index();
    let started = Instant::now();
    let resp = get(
        &fake,
        &format!("/v1/catalog/services?index={index}&wait=300ms"),
    );
    let took = started.elapsed();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.index(), index, "same index: nothing changed");
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn wait_is_capped_by_max_wait_and_defaults_to_it() {
    let fake = FakeConsul::start_with(Options {
        max_wait: Duration::from_millis(200),
        ..Options::default()
    })
    .unwrap();
    let index = fake.index();
    for target in [
        format!("/v1/health/service/web?index={index}&wait=10m"),
        format!("/v1/health/service/web?index={index}"),
    ] {
        let started = Instant::now();
        let resp = get(&fake, &target);
        let took = started.elapsed();
        assert_eq!(resp.status, 200);
        assert!(took >= Duration::from_millis(200), "{target}: {took:?}");
        assert!(took < Duration::from_secs(5), "{target}: {took:?}");
    }
}

#[test]
fn index_zero_or_absent_never_blocks() {
    let fake = FakeConsul::start().unwrap();
    let started = Instant::now();
    get(&fake, "/v1/health/service/web?index=0&wait=10s");
    get(&fake, "/v1/health/service/web?wait=10s");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_index_from_the_future_blocks_until_wait() {
    // Consul blocks while its index is not past the client's, even if the client's is
    // ahead (that is why clients reset to 0 when the index goes backwards).
    let fake = FakeConsul::start().unwrap();
    let ahead = fake.index() + 100;
    let started = Instant::now();
    let resp = get(
        &fake,
        &format!("/v1/health/service/web?index={ahead}&wait=200ms"),
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(resp.index() < ahead);
}

#[test]
fn bad_index_or_wait_is_400() {
    let fake = FakeConsul::start().unwrap();
    let resp = get(&fake, "/v1/health/service/web?index=abc");
    assert_eq!((resp.status, resp.text().as_str()), (400, "Invalid index"));
    let resp = get(&fake, "/v1/health/service/web?index=1&wait=5");
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (400, "Invalid wait time")
    );
    let resp = get(&fake, "/v1/kv/x?index=1&wait=-1s");
    assert_eq!(resp.status, 400);
}

#[test]
fn index_grows_on_every_kind_of_write() {
    let fake = FakeConsul::start().unwrap();
    let mut seen = vec![fake.index()];
    seen.push(fake.register(Instance::new("a", "web", "10.0.0.1", 80)));
    fake.set_health("a", Health::Warning);
    seen.push(fake.index());
    seen.push(fake.kv_put("k", b"v"));
    fake.deregister("a");
    seen.push(fake.index());
    seen.push(get(&fake, "/v1/catalog/services").index());
    assert!(
        seen.windows(2).take(4).all(|w| w[0] < w[1]),
        "strictly increasing: {seen:?}"
    );
    assert_eq!(seen[4], seen[5], "reads report the current index");
}

#[test]
fn one_write_wakes_every_blocked_query() {
    const WATCHERS: usize = 32;
    let fake = FakeConsul::start().unwrap();
    let index = fake.index();
    thread::scope(|s| {
        let waiters: Vec<_> = (0..WATCHERS)
            .map(|_| {
                s.spawn(|| {
                    get(
                        &fake,
                        &format!("/v1/health/service/web?index={index}&wait=10s"),
                    )
                })
            })
            .collect();
        await_requests(&fake, WATCHERS);
        let started = Instant::now();
        let new_index = fake.register(Instance::new("a", "web", "10.0.0.1", 80));
        for w in waiters {
            let resp = w.join().unwrap();
            assert_eq!(resp.index(), new_index);
            assert_eq!(ids(&resp.json()), vec!["a"]);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    });
}
