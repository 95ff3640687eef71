//! The `host-sim` binary end to end: example scenarios, failing expectations,
//! malformed input, non-proxy-wasm modules, determinism and `imports`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture built by `make wasm`; a missing fixture fails the test, never skips it.
fn fixture() -> PathBuf {
    let path = manifest_dir().join("../target/wasm32-wasip1/wasm/fixture_minimal.wasm");
    assert!(
        path.exists(),
        "{} is missing: run `make wasm` (cargo build --profile wasm --target wasm32-wasip1 -p fixture-minimal)",
        path.display()
    );
    path
}

fn example(name: &str) -> PathBuf {
    manifest_dir().join("scenarios").join(name)
}

/// A file in a directory of this test's own (under target/tmp), so parallel tests
/// never collide.
fn temp_file(test: &str, name: &str, contents: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("host-sim-cli")
        .join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn host_sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_host-sim"))
        .args(args)
        .output()
        .unwrap()
}

fn run(wasm: &Path, scenario: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--wasm",
        wasm.to_str().unwrap(),
        "--scenario",
        scenario.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    host_sim(&args)
}

/// A line whose first column is `first` and whose other columns are `cells`, in order.
fn has_row(text: &str, first: &str, cells: &[&str]) -> bool {
    text.lines().any(|line| {
        let Some(mut rest) = line.strip_prefix(first).filter(|r| r.starts_with("  ")) else {
            return false;
        };
        for cell in cells {
            match rest.trim_start().strip_prefix(cell) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        rest.trim().is_empty()
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

mod examples {
    use super::*;

    #[test]
    fn minimal_example_passes_against_the_fixture() {
        let out = run(&fixture(), &example("minimal.yaml"), &[]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
        assert!(
            has_row(
                &text,
                "1",
                &["request tagged @w0", "GET /hello → 200", "ok"]
            ),
            "{text}"
        );
        assert!(text.ends_with("5 passed, 0 failed\n"), "{text}");
    }

    #[test]
    fn gate_example_passes_with_callouts_timeouts_and_local_replies() {
        let out = run(&example("gate.wat"), &example("gate.yaml"), &[]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
        assert!(text.contains("GET /b → 403 (local reply)"), "{text}");
        assert!(text.ends_with("13 passed, 0 failed\n"), "{text}");
    }

    #[test]
    fn json_format_reports_every_step() {
        let out = run(&fixture(), &example("minimal.yaml"), &["--format", "json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["failed"], 0);
        assert_eq!(report["passed"], 5);
        assert_eq!(report["steps"][1]["outcome"], "GET /hello → 200");
    }

    #[test]
    fn inline_json_scenarios_run_too() {
        let scenario = temp_file(
            "json",
            "s.json",
            r#"{"steps":[{"request":{"path":"/a","headers":{"x-tag":"1"}},"expect":{"headers":{"x-minimal":"tagged"}}}]}"#,
        );
        let out = run(&fixture(), &scenario, &[]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

mod failures {
    use super::*;

    #[test]
    fn a_wrong_expectation_exits_1_and_names_expected_and_got() {
        let scenario = temp_file(
            "wrong",
            "wrong.yaml",
            "steps:\n  - request: {path: /x, headers: {x-tag: a}}\n    expect: {headers: {x-minimal: tagged}}\n  \
             - request: {path: /y}\n    expect: {status: 429, headers: {x-minimal: tagged}}\n",
        );
        let out = run(&fixture(), &scenario, &[]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let row = text.lines().find(|l| l.starts_with("2 ")).unwrap();
        assert!(row.contains("GET /y → 200"), "{row}");
        assert!(
            row.contains(r#"FAIL: status: expected 429, got 200; header x-minimal: expected "tagged", got "seen""#),
            "{row}"
        );
        assert!(text.ends_with("2 passed, 1 failed\n"), "{text}");
    }

    #[test]
    fn a_step_that_cannot_run_fails_the_scenario() {
        let scenario = temp_file(
            "norun",
            "s.yaml",
            "steps:\n  - respond_http_call: {cluster: auth}\n",
        );
        let out = run(&fixture(), &scenario, &[]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout(&out)
            .contains("FAIL: expected a pending HTTP callout to auth at index 0, got 0 pending"));
    }

    #[test]
    fn a_malformed_scenario_exits_2_naming_step_field_and_line() {
        let scenario = temp_file(
            "malformed",
            "bad.yaml",
            "steps:\n  - advance: 1s\n  - request:\n      path: /x\n      methd: GET\n",
        );
        let out = run(&fixture(), &scenario, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(out.stdout.is_empty());
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(
            err.contains("step 2, field request: unknown field `methd`"),
            "{err}"
        );
        assert!(err.contains("at line 5 column 7"), "{err}");
    }

    #[test]
    fn a_step_with_two_actions_or_a_bad_duration_exits_2() {
        let two = temp_file(
            "two",
            "two.yaml",
            "steps:\n  - advance: 1s\n    expect_log: x\n",
        );
        let err = stderr(&run(&fixture(), &two, &[]));
        assert!(
            err.contains("step 1: a step has exactly one action, found advance and expect_log"),
            "{err}"
        );
        let dur = temp_file("dur", "dur.yaml", "steps:\n  - advance: 2 fortnights\n");
        let out = run(&fixture(), &dur, &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out)
            .contains("step 1, field advance: duration \"2 fortnights\" has unknown unit"));
    }

    #[test]
    fn a_non_wasm_file_exits_2() {
        let scenario = example("minimal.yaml");
        let junk = temp_file("junk", "junk.wasm", "this is not wasm\n");
        let out = run(&junk, &scenario, &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("junk.wasm is not a valid WebAssembly module"),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn a_module_without_proxy_wasm_exports_exits_2() {
        let wat = temp_file(
            "plain",
            "plain.wat",
            r#"(module (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1))))"#,
        );
        let out = run(&wat, &example("minimal.yaml"), &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains(
                "plain.wat is not a proxy-wasm module: it exports no proxy_abi_version_0_2_1"
            ),
            "{}",
            stderr(&out)
        );
    }

    #[test]
    fn a_missing_file_or_flag_exits_2() {
        let out = run(&fixture(), Path::new("/nonexistent/s.yaml"), &[]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("cannot read /nonexistent/s.yaml"));
        let out = host_sim(&["run", "--wasm", fixture().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("--scenario"));
    }
}

mod determinism {
    use super::*;

    #[test]
    fn the_same_scenario_and_seed_print_identical_bytes() {
        for (wasm, scenario) in [
            (fixture(), example("minimal.yaml")),
            (example("gate.wat"), example("gate.yaml")),
        ] {
            for format in ["table", "json"] {
                let a = run(&wasm, &scenario, &["--seed", "42", "--format", format]);
                let b = run(&wasm, &scenario, &["--seed", "42", "--format", format]);
                assert_eq!(a.status.code(), Some(0));
                assert_eq!(a.stdout, b.stdout);
            }
        }
    }

    #[test]
    fn command_line_seed_and_workers_override_the_file() {
        let out = run(
            &fixture(),
            &example("minimal.yaml"),
            &["--seed", "9", "--workers", "3"],
        );
        assert!(stdout(&out).starts_with(
            "scenario minimal.yaml, module fixture_minimal.wasm, seed 9, 3 workers\n"
        ));
    }
}

mod imports {
    use super::*;

    #[test]
    fn the_fixture_needs_nothing_host_sim_lacks() {
        let out = host_sim(&["imports", "--wasm", fixture().to_str().unwrap()]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("proxy-wasm ABI 0.2.1"), "{text}");
        assert!(text.contains("env::proxy_log"), "{text}");
        assert!(text.ends_with(" 0 missing\n"), "{text}");
    }

    #[test]
    fn a_missing_import_is_listed_and_exits_1() {
        let wat = temp_file(
            "imports",
            "m.wat",
            r#"(module
                 (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
                 (import "env" "proxy_teleport" (func))
                 (import "env" "memory" (memory 1)))"#,
        );
        let out = host_sim(&["imports", "--wasm", wat.to_str().unwrap()]);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        assert!(text.contains("no proxy-wasm ABI marker"), "{text}");
        assert!(has_row(&text, "env::proxy_log", &["provided"]), "{text}");
        assert!(
            has_row(&text, "env::proxy_teleport", &["MISSING"]),
            "{text}"
        );
        assert!(
            has_row(&text, "env::memory", &["MISSING (not a function)"]),
            "{text}"
        );
        assert!(text.ends_with("3 imports, 2 missing\n"), "{text}");
    }
}
