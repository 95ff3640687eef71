//! The KV store: put, get (JSON with base64 values, `raw`), `recurse`, `keys`, delete, `cas`.

use meshguard_fake_consul::FakeConsul;
use serde_json::{json, Value};

use crate::client::{delete, get, put};

#[test]
fn put_then_get_in_consuls_shape() {
    let fake = FakeConsul::start().unwrap();
    let resp = put(&fake, "/v1/kv/config/app", b"hello");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), json!(true));
    let resp = get(&fake, "/v1/kv/config/app");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.index(), fake.index());
    let entry = &resp.json()[0];
    assert_eq!(entry["Key"], "config/app");
    assert_eq!(entry["Value"], "aGVsbG8=");
    assert_eq!(entry["Flags"], 0);
    assert_eq!(entry["LockIndex"], 0);
    assert_eq!(entry["CreateIndex"], entry["ModifyIndex"]);
    assert_eq!(fake.kv_get("config/app").as_deref(), Some(&b"hello"[..]));

    let raw = get(&fake, "/v1/kv/config/app?raw");
    assert_eq!(raw.body, b"hello");

    // Overwrite: CreateIndex stays, ModifyIndex moves; flags are kept.
    put(&fake, "/v1/kv/config/app?flags=42", b"");
    let entry = get(&fake, "/v1/kv/config/app").json()[0].clone();
    assert_eq!(entry["Value"], Value::Null, "an empty value is null");
    assert_eq!(entry["Flags"], 42);
    assert!(entry["ModifyIndex"].as_u64() > entry["CreateIndex"].as_u64());
}

#[test]
fn missing_keys_are_404_with_an_index() {
    let fake = FakeConsul::start().unwrap();
    let resp = get(&fake, "/v1/kv/nope");
    assert_eq!(resp.status, 404);
    assert_eq!(resp.index(), fake.index());
    assert!(resp.body.is_empty());
    assert_eq!(get(&fake, "/v1/kv/nope?recurse").status, 404);
    assert_eq!(fake.kv_get("nope"), None);
}

#[test]
fn recurse_keys_and_delete() {
    let fake = FakeConsul::start().unwrap();
    fake.kv_put("app/a", b"1");
    fake.kv_put("app/b/c", b"2");
    fake.kv_put("other", b"3");
    let keys: Vec<Value> = get(&fake, "/v1/kv/app/?recurse")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].clone())
        .collect();
    assert_eq!(keys, vec![json!("app/a"), json!("app/b/c")]);
    assert_eq!(
        get(&fake, "/v1/kv/app/?keys").json(),
        json!(["app/a", "app/b/c"])
    );
    assert_eq!(
        get(&fake, "/v1/kv/app/?keys&separator=/").json(),
        json!(["app/a", "app/b/"])
    );

    let before = fake.index();
    assert_eq!(delete(&fake, "/v1/kv/app/a").json(), json!(true));
    assert!(fake.index() > before);
    assert_eq!(fake.kv_get("app/a"), None);
    delete(&fake, "/v1/kv/app?recurse");
    assert_eq!(fake.kv_get("app/b/c"), None);
    assert_eq!(fake.kv_get("other").as_deref(), Some(&b"3"[..]));
}

#[test]
fn cas_writes_only_at_the_expected_index() {
    let fake = FakeConsul::start().unwrap();
    assert_eq!(put(&fake, "/v1/kv/lock?cas=0", b"me").json(), json!(true));
    assert_eq!(
        put(&fake, "/v1/kv/lock?cas=0", b"you").json(),
        json!(false),
        "cas=0 only creates"
    );
    let modify = get(&fake, "/v1/kv/lock").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        put(&fake, &format!("/v1/kv/lock?cas={}", modify + 1), b"x").json(),
        json!(false)
    );
    assert_eq!(
        put(&fake, &format!("/v1/kv/lock?cas={modify}"), b"x").json(),
        json!(true)
    );
    assert_eq!(fake.kv_get("lock").as_deref(), Some(&b"x"[..]));
    assert_eq!(put(&fake, "/v1/kv/lock?cas=abc", b"x").status, 400);
    assert_eq!(put(&fake, "/v1/kv/", b"x").status, 400);
}
