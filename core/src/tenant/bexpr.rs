//! The `filter` query parameter, in Consul's expression language (hashicorp/go-bexpr).
//!
//! The result is always `(<tenant clause>) and (<user filter>)`, or the tenant clause alone.
//! Safety rests on bexpr's lexical grammar (`grammar/grammar.peg`): a double-quoted string
//! is `"` then any characters except `"` then `"` (there is no escaped quote; the text is
//! then `strconv.Unquote`d), a raw string is the same with backticks, and parentheses only
//! group. The user filter is tokenised with exactly those string rules, and refused unless
//! every string is closed, parentheses and brackets balance (never going below zero), and
//! every other character belongs to a token bexpr knows (selectors, numbers, `==`, `!=`,
//! `[`, `]`, `,`, `.`). A filter that passes cannot close the group it is wrapped in, so
//! whatever it says can only narrow the tenant clause; one that bexpr would still reject
//! fails in Consul with a 400, which is also safe. A backslash inside a double-quoted
//! string is refused: today it cannot escape the quote, but a grammar that one day honours
//! `\"` would then see different string boundaries (raw strings cover regex needs).

use super::{DenyReason, TenantName, TenantSelector};

/// Longest user filter accepted, in bytes (after URL decoding).
pub const MAX_USER_FILTER_LEN: usize = 4096;

/// `value` as a bexpr double-quoted string literal. `"` cannot appear inside one at all,
/// and control characters are refused by `strconv.Unquote`; `\` is doubled.
pub fn bexpr_string(value: &str) -> Result<String, DenyReason> {
    if value.contains('"') {
        return Err(DenyReason::Unquotable("a double quote"));
    }
    if value.chars().any(char::is_control) {
        return Err(DenyReason::Unquotable("a control character"));
    }
    Ok(format!("\"{}\"", value.replace('\\', "\\\\")))
}

/// The clause `<selector> == "<tenant>"`.
pub fn tenant_clause(selector: TenantSelector, tenant: &TenantName) -> String {
    // A tenant name has neither quotes, backslashes nor control characters.
    format!("{} == \"{}\"", selector.as_str(), tenant.as_str())
}

/// Checks that `filter` is safe to wrap in one parenthesis group; see the module doc.
pub fn validate_user_filter(filter: &str) -> Result<(), DenyReason> {
    if filter.len() > MAX_USER_FILTER_LEN {
        return Err(DenyReason::FilterTooLong);
    }
    let bytes = filter.as_bytes();
    let (mut parens, mut brackets) = (0usize, 0usize);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b'.' | b',' => i += 1,
            b'(' => {
                parens += 1;
                i += 1;
            }
            b')' => {
                parens = parens.checked_sub(1).ok_or(DenyReason::UnbalancedFilter)?;
                i += 1;
            }
            b'[' => {
                brackets += 1;
                i += 1;
            }
            b']' => {
                brackets = brackets
                    .checked_sub(1)
                    .ok_or(DenyReason::UnbalancedFilter)?;
                i += 1;
            }
            b'"' | b'`' => {
                let body = bytes.get(i + 1..).unwrap_or_default();
                let close = body
                    .iter()
                    .position(|&c| c == b)
                    .ok_or(DenyReason::UnterminatedString)?;
                if b == b'"' {
                    if let Some(at) = body.iter().take(close).position(|&c| c == b'\\') {
                        return Err(DenyReason::UnexpectedFilterChar(i + 1 + at));
                    }
                }
                i += close + 2;
            }
            b'=' | b'!' if bytes.get(i + 1) == Some(&b'=') => i += 2,
            b'-' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' => {
                i += 1;
                while bytes
                    .get(i)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'/'))
                {
                    i += 1;
                }
            }
            _ => return Err(DenyReason::UnexpectedFilterChar(i)),
        }
    }
    if parens != 0 || brackets != 0 {
        return Err(DenyReason::UnbalancedFilter);
    }
    Ok(())
}

/// The filter to send: the tenant clause, `and` the user's filter in parentheses when there
/// is a non-blank one that passes [`validate_user_filter`].
pub fn tenant_filter(
    selector: TenantSelector,
    tenant: &TenantName,
    user: Option<&str>,
) -> Result<String, DenyReason> {
    let clause = tenant_clause(selector, tenant);
    match user.map(str::trim) {
        None | Some("") => Ok(clause),
        Some(user) => {
            validate_user_filter(user)?;
            Ok(format!("({clause}) and ({user})"))
        }
    }
}

/// Rewrites a query string for a tenant: every parameter is kept byte for byte except
/// `filter`, whose value becomes [`tenant_filter`] of it, URL-encoded, appended last.
/// Parameter names are decoded as Consul (Go's `url.ParseQuery`) decodes them, so
/// `f%69lter` counts as `filter`; a name that does not decode, or has a `;` (which Go
/// drops), is refused rather than guessed. More than one `filter` is refused.
pub fn scope_query(
    query: Option<&str>,
    selector: TenantSelector,
    tenant: &TenantName,
) -> Result<String, DenyReason> {
    let mut kept: Vec<&str> = Vec::new();
    let mut user: Option<String> = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = query_unescape(raw_key).ok_or(DenyReason::MalformedQuery("bad escape"))?;
        if key.contains(';') {
            return Err(DenyReason::MalformedQuery("a semicolon in a name"));
        }
        if key == "filter" {
            if user.is_some() {
                return Err(DenyReason::DuplicateFilter);
            }
            if raw_value.len() > 3 * MAX_USER_FILTER_LEN {
                return Err(DenyReason::FilterTooLong);
            }
            user = Some(query_unescape(raw_value).ok_or(DenyReason::MalformedQuery("bad escape"))?);
        } else {
            kept.push(pair);
        }
    }
    let filter = tenant_filter(selector, tenant, user.as_deref())?;
    let mut out = kept.join("&");
    if !out.is_empty() {
        out.push('&');
    }
    out.push_str("filter=");
    out.push_str(&percent_encode(&filter));
    Ok(out)
}

/// Removes every parameter whose name decodes (as in [`scope_query`]) to `name`, keeping
/// the others byte for byte; `None` when nothing is left. Used to drop a client's
/// `?token=` when the filter replaces the Consul token.
pub fn remove_query_param(query: Option<&str>, name: &str) -> Result<Option<String>, DenyReason> {
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let raw_key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let key = query_unescape(raw_key).ok_or(DenyReason::MalformedQuery("bad escape"))?;
        if key.contains(';') {
            return Err(DenyReason::MalformedQuery("a semicolon in a name"));
        }
        if key != name {
            kept.push(pair);
        }
    }
    Ok((!kept.is_empty()).then(|| kept.join("&")))
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XY` a byte; `None` on a bad escape or
/// invalid UTF-8.
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = core::str::from_utf8(hex).ok()?;
                if !hex.bytes().all(|d| d.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}
