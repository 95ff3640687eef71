//! `wasm-trim MODULE...`: removes from each proxy-wasm module the exports of the stream
//! callbacks it does not declare (see the library docs), rewriting the file in place
//! (a temporary file renamed over it). A module that declares nothing is left as built.
//! Exits non-zero, naming the file, on the first module it cannot read or trim.

use std::path::Path;
use std::process::ExitCode;

use meshguard_wasm_trim::{trim, Outcome};

fn run(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    match trim(&bytes).map_err(|e| e.to_string())? {
        Outcome::Undeclared => Ok("declares no stream callbacks: left as built".into()),
        Outcome::Trimmed {
            implemented,
            removed,
            module,
        } => {
            if module != bytes {
                let tmp = path.with_extension("wasm.trim-tmp");
                std::fs::write(&tmp, &module).map_err(|e| format!("cannot write: {e}"))?;
                if let Ok(meta) = std::fs::metadata(path) {
                    // Keep the linker's mode bits on the replacement.
                    let _ = std::fs::set_permissions(&tmp, meta.permissions());
                }
                std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace: {e}"))?;
            }
            Ok(format!(
                "implements [{}]; removed {} exports{}",
                implemented.join(", "),
                removed.len(),
                if removed.is_empty() {
                    " (already trimmed)"
                } else {
                    ""
                }
            ))
        }
    }
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: wasm-trim MODULE.wasm...");
        return ExitCode::from(2);
    }
    for p in &paths {
        let path = Path::new(p);
        let name = path
            .file_name()
            .map_or(p.clone(), |n| n.to_string_lossy().into_owned());
        match run(path) {
            Ok(what) => println!("wasm-trim: {name}: {what}"),
            Err(e) => {
                eprintln!("wasm-trim: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
