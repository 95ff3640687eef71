//! Removes the proxy-wasm stream callbacks a filter module does not implement.
//!
//! The proxy-wasm Rust SDK exports every callback of the ABI (`proxy_on_request_body`,
//! `proxy_on_log`...) whatever the filter implements, and Envoy enters the VM for every export
//! it finds: a filter that only looks at request headers still pays a V8 round trip for the
//! response headers, each response body chunk, the access log and the end of the stream.
//! Envoy (proxy-wasm-cpp-host) resolves each callback once when the module loads and skips a
//! missing one with the ABI's default answer (`Continue`; `true` for `proxy_on_done`), exactly
//! what the SDK's default implementation would have returned, only without entering V8.
//!
//! A filter declares the stream callbacks it implements with
//! `meshguard_filter_common::stream_callbacks!`, which writes their names into the custom
//! section [`SECTION`]. [`trim`] removes the exports of the other stream callbacks
//! ([`STREAM_CALLBACKS`]); everything else (memory, allocation, context create and delete,
//! root callbacks) stays. A module without the section is left as built, and trimming twice
//! changes nothing.

use std::fmt;

/// The custom section naming the stream callbacks a module implements, one per line, without
/// the `proxy_on_` prefix (`request_headers`, `done`...); a line starting with `#` is a comment.
pub const SECTION: &str = "meshguard.stream_callbacks";

/// The exports this tool may remove: the callbacks Envoy makes per HTTP stream or TCP
/// connection, by the name a declaration uses (the export is `proxy_on_<name>`).
/// `done` is also the root context's shutdown callback: declare it when either context
/// implements `on_done`.
pub const STREAM_CALLBACKS: &[&str] = &[
    "request_headers",
    "request_body",
    "request_trailers",
    "request_metadata",
    "response_headers",
    "response_body",
    "response_trailers",
    "response_metadata",
    "log",
    "done",
    "new_connection",
    "downstream_data",
    "upstream_data",
    "downstream_connection_close",
    "upstream_connection_close",
];

/// Why a module could not be trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Not a wasm binary module (magic or version).
    NotWasm,
    /// The binary ends inside a section or a LEB128 number, or a length points past its section.
    Truncated { offset: usize },
    /// An export name or the declaration is not UTF-8.
    NotUtf8 { offset: usize },
    /// The declaration names something that is not a stream callback (a typo would otherwise
    /// remove the callback the filter meant to keep).
    UnknownCallback(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotWasm => f.write_str("not a wasm binary module (bad magic or version)"),
            Error::Truncated { offset } => write!(f, "truncated or malformed at byte {offset}"),
            Error::NotUtf8 { offset } => write!(f, "a name at byte {offset} is not UTF-8"),
            Error::UnknownCallback(name) => write!(
                f,
                "section `{SECTION}` names `{name}`, which is not a stream callback (one of: {})",
                STREAM_CALLBACKS.join(", ")
            ),
        }
    }
}

impl std::error::Error for Error {}

/// What [`trim`] did to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The module declares nothing: left exactly as built.
    Undeclared,
    /// The module declares `implemented`; `removed` lists the exports taken out (empty when it
    /// was already trimmed).
    Trimmed {
        implemented: Vec<String>,
        removed: Vec<String>,
        module: Vec<u8>,
    },
}

const MAGIC_VERSION: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
const CUSTOM: u8 = 0;
const EXPORT: u8 = 7;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` in the module, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Reader {
            bytes,
            pos: 0,
            base,
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn truncated(&self) -> Error {
        Error::Truncated {
            offset: self.base + self.pos,
        }
    }

    fn byte(&mut self) -> Result<u8, Error> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    /// An unsigned LEB128 of at most 32 bits (5 bytes).
    fn u32(&mut self) -> Result<u32, Error> {
        let mut value: u64 = 0;
        for i in 0..5 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return u32::try_from(value).map_err(|_| self.truncated());
            }
        }
        Err(self.truncated())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.truncated())?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| self.truncated())?;
        self.pos = end;
        Ok(s)
    }

    fn name(&mut self) -> Result<&'a str, Error> {
        let len = self.u32()? as usize;
        let offset = self.base + self.pos;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| Error::NotUtf8 { offset })
    }
}

fn write_u32(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// One top-level section: its id and payload (borrowed from the module).
struct Section<'a> {
    id: u8,
    payload: &'a [u8],
    offset: usize,
}

fn sections(module: &[u8]) -> Result<Vec<Section<'_>>, Error> {
    if module.get(..8) != Some(&MAGIC_VERSION[..]) {
        return Err(Error::NotWasm);
    }
    let mut r = Reader::new(&module[8..], 8);
    let mut out = Vec::new();
    while !r.at_end() {
        let id = r.byte()?;
        let len = r.u32()? as usize;
        let offset = r.base + r.pos;
        let payload = r.take(len)?;
        out.push(Section {
            id,
            payload,
            offset,
        });
    }
    Ok(out)
}

/// The names of the module's exports, in order.
pub fn exports(module: &[u8]) -> Result<Vec<String>, Error> {
    let mut names = Vec::new();
    for s in sections(module)?.iter().filter(|s| s.id == EXPORT) {
        let mut r = Reader::new(s.payload, s.offset);
        for _ in 0..r.u32()? {
            names.push(r.name()?.to_string());
            r.byte()?;
            r.u32()?;
        }
    }
    Ok(names)
}

/// The stream callbacks the module declares, or `None` when it has no [`SECTION`]. Several
/// sections of that name (one per object file) are read together; a name may repeat.
pub fn declared(module: &[u8]) -> Result<Option<Vec<String>>, Error> {
    let mut found = None;
    for s in sections(module)?.iter().filter(|s| s.id == CUSTOM) {
        let mut r = Reader::new(s.payload, s.offset);
        if r.name()? != SECTION {
            continue;
        }
        let offset = r.base + r.pos;
        let text =
            std::str::from_utf8(&s.payload[r.pos..]).map_err(|_| Error::NotUtf8 { offset })?;
        let names: &mut Vec<String> = found.get_or_insert_with(Vec::new);
        for name in text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
        {
            if !STREAM_CALLBACKS.contains(&name) {
                return Err(Error::UnknownCallback(name.to_string()));
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
    }
    Ok(found)
}

/// Removes the exports of the stream callbacks `module` does not declare. Only the export
/// section changes: the functions stay in the module (unreachable from the host now), so no
/// index anywhere moves.
pub fn trim(module: &[u8]) -> Result<Outcome, Error> {
    let Some(implemented) = declared(module)? else {
        return Ok(Outcome::Undeclared);
    };
    let remove = |name: &str| {
        name.strip_prefix("proxy_on_").is_some_and(|cb| {
            STREAM_CALLBACKS.contains(&cb) && !implemented.iter().any(|i| i == cb)
        })
    };
    let mut out = Vec::with_capacity(module.len());
    out.extend_from_slice(&MAGIC_VERSION);
    let mut removed = Vec::new();
    for s in sections(module)? {
        let mut payload = s.payload.to_vec();
        if s.id == EXPORT {
            let mut r = Reader::new(s.payload, s.offset);
            let mut kept = Vec::new();
            let mut count = 0u32;
            for _ in 0..r.u32()? {
                let start = r.pos;
                let name = r.name()?;
                r.byte()?;
                r.u32()?;
                if remove(name) {
                    removed.push(name.to_string());
                } else {
                    kept.extend_from_slice(&s.payload[start..r.pos]);
                    count += 1;
                }
            }
            if !r.at_end() {
                return Err(r.truncated());
            }
            payload.clear();
            write_u32(&mut payload, count);
            payload.extend_from_slice(&kept);
        }
        out.push(s.id);
        write_u32(
            &mut out,
            u32::try_from(payload.len()).map_err(|_| Error::Truncated { offset: s.offset })?,
        );
        out.extend_from_slice(&payload);
    }
    Ok(Outcome::Trimmed {
        implemented,
        removed,
        module: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
        out.push(id);
        write_u32(out, payload.len() as u32);
        out.extend_from_slice(payload);
    }

    fn name(out: &mut Vec<u8>, s: &str) {
        write_u32(out, s.len() as u32);
        out.extend_from_slice(s.as_bytes());
    }

    /// A module with one function type, `n` functions and the given exports (all functions
    /// except "memory"), plus an optional declaration.
    fn module(exports: &[&str], declaration: Option<&str>) -> Vec<u8> {
        let mut m = MAGIC_VERSION.to_vec();
        section(&mut m, 1, &[1, 0x60, 0, 0]); // type: () -> ()
        let n = exports.len() as u8;
        let mut funcs = vec![n];
        funcs.extend(std::iter::repeat_n(0, n as usize));
        section(&mut m, 3, &funcs);
        section(&mut m, 5, &[1, 0, 1]); // one memory, min 1 page
        let mut ex = Vec::new();
        write_u32(&mut ex, exports.len() as u32 + 1);
        name(&mut ex, "memory");
        ex.extend_from_slice(&[2, 0]);
        for (i, e) in exports.iter().enumerate() {
            name(&mut ex, e);
            ex.extend_from_slice(&[0, i as u8]);
        }
        section(&mut m, EXPORT, &ex);
        if let Some(d) = declaration {
            let mut c = Vec::new();
            name(&mut c, SECTION);
            c.extend_from_slice(d.as_bytes());
            section(&mut m, CUSTOM, &c);
        }
        let mut code = vec![n];
        for _ in 0..n {
            code.extend_from_slice(&[2, 0, 0x0b]); // no locals, end
        }
        section(&mut m, 10, &code);
        m
    }

    /// The parts of a trimmed outcome (a test failure when the module was left alone).
    fn trimmed(o: Outcome) -> (Vec<String>, Vec<String>, Vec<u8>) {
        match o {
            Outcome::Trimmed {
                implemented,
                removed,
                module,
            } => (implemented, removed, module),
            Outcome::Undeclared => unreachable!("a declared module was left alone"),
        }
    }

    const SDK: &[&str] = &[
        "proxy_on_context_create",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_log",
        "proxy_on_done",
        "proxy_on_delete",
        "proxy_on_tick",
    ];

    #[test]
    fn removes_exactly_the_undeclared_stream_callbacks() {
        let m = module(SDK, Some("request_headers\ndone\n"));
        let (implemented, removed, out) = trimmed(trim(&m).unwrap());
        assert_eq!(implemented, ["request_headers", "done"]);
        assert_eq!(
            removed,
            [
                "proxy_on_request_body",
                "proxy_on_response_headers",
                "proxy_on_response_body",
                "proxy_on_log"
            ]
        );
        assert_eq!(
            exports(&out).unwrap(),
            [
                "memory",
                "proxy_on_context_create",
                "proxy_on_request_headers",
                "proxy_on_done",
                "proxy_on_delete",
                "proxy_on_tick"
            ]
        );
        // Every other section is byte for byte what it was; trimming again changes nothing.
        let (_, removed_again, again) = trimmed(trim(&out).unwrap());
        assert!(removed_again.is_empty());
        assert_eq!(again, out);
    }

    #[test]
    fn only_the_export_section_changes() {
        let m = module(SDK, Some("request_headers"));
        let (_, _, t) = trimmed(trim(&m).unwrap());
        assert_eq!(sections(&t).unwrap().len(), sections(&m).unwrap().len());
        assert_eq!(exports(&t).unwrap().len(), exports(&m).unwrap().len() - 5);
        // Only the export section changed: every other section is byte for byte the same.
        // (The real modules trimmed by `make wasm` are loaded and run by host-sim and Envoy
        // in tests/tests/it/callbacks.rs and every filter test.)
        for (a, b) in sections(&t)
            .unwrap()
            .iter()
            .zip(sections(&m).unwrap().iter())
        {
            assert_eq!(a.id, b.id);
            if a.id != EXPORT {
                assert_eq!(a.payload, b.payload);
            }
        }
    }

    #[test]
    fn an_undeclared_module_is_left_as_built() {
        assert_eq!(trim(&module(SDK, None)).unwrap(), Outcome::Undeclared);
    }

    #[test]
    fn an_empty_declaration_removes_every_stream_callback() {
        let (_, _, t) = trimmed(trim(&module(SDK, Some("# nothing\n"))).unwrap());
        assert_eq!(
            exports(&t).unwrap(),
            [
                "memory",
                "proxy_on_context_create",
                "proxy_on_delete",
                "proxy_on_tick"
            ]
        );
    }

    #[test]
    fn a_misspelt_callback_is_an_error_not_a_silent_removal() {
        let err = trim(&module(SDK, Some("request_header\n"))).unwrap_err();
        assert_eq!(err, Error::UnknownCallback("request_header".into()));
        assert!(err.to_string().contains("request_headers"), "{err}");
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert_eq!(trim(b"\0asm\x02\0\0\0").unwrap_err(), Error::NotWasm);
        assert_eq!(trim(b"hello").unwrap_err(), Error::NotWasm);
        let m = module(SDK, Some("done"));
        for cut in [9, 20, m.len() - 1] {
            assert!(
                matches!(trim(&m[..cut]), Err(Error::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }
}
