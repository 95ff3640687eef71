//! Consul's `?filter=` language (hashicorp/go-bexpr): a parser that follows go-bexpr's PEG
//! grammar (`grammar/grammar.peg`) and an evaluator over the JSON entry being filtered.
//!
//! Grammar (`_` is one or more of space, tab, CR, LF — required where shown):
//! ```text
//! Input      <- _? Or _? EOF
//! Or         <- And _ "or" _ Or / And
//! And        <- Not _ "and" _ And / Not
//! Not        <- "not" _ Not / "(" _? Or _? ")" / Match
//! Match      <- Selector (_? "==" _? / _? "!=" _? / _ "contains" _ / _ "not" _ "contains" _
//!                         / _ "matches" _ / _ "not" _ "matches" _) Value
//!             / Selector (_ "is" _ "empty" / _ "is" _ "not" _ "empty")
//!             / Value (_ "in" _ / _ "not" _ "in" _) Selector
//! Selector   <- Ident ("." Ident / "[" _? String _? "]")*      Ident <- [a-zA-Z][a-zA-Z0-9_/]*
//! Value      <- Selector (a bare word) / Number / String
//! String     <- '"' (!'"' .)* '"' (then Go's strconv.Unquote) / '`' (!'`' .)* '`'
//! ```
//! A double-quoted string ends at the first `"`, whatever precedes it, so `"\""` is a
//! string `\` followed by a stray `"` (a parse error), and text that looks like an injected
//! clause inside a string is only ever compared literally.
//!
//! Selectors are checked against the endpoint's fields when the filter is parsed (an
//! unknown field or an operator the field's type does not support is an error, as in
//! Consul). Semantics: a missing map key matches `!=`, `not in`, `not contains`,
//! `not matches` and `is empty` only; `in`/`contains` test membership in a list, key
//! presence in a map and substrings in a string; a selector through a list of structs
//! (`Checks.Status`) matches when any element does.

use regex_lite::Regex;
use serde_json::Value;

/// The shape of the entries a filter is evaluated against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schema {
    /// `/v1/health/service/:service` rows: `Node`, `Service`, `Checks`.
    HealthEntry,
    /// `/v1/catalog/service/:service` rows (and `/v1/catalog/services`): flat `ServiceNode`.
    CatalogEntry,
    /// `/v1/health/checks/:service` rows: `HealthCheck`.
    Check,
}

/// The type of a field, for selector and operator checks.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// A list of strings.
    List,
    /// A map of string to string (or to something not selectable further).
    Map,
    Struct(&'static [(&'static str, Kind)]),
    /// A list of structs: selecting a field yields one value per element.
    StructList(&'static [(&'static str, Kind)]),
    /// A scalar field reached through a list of structs: one value per element.
    Each,
}

const WEIGHTS: &[(&str, Kind)] = &[("Passing", Kind::Int), ("Warning", Kind::Int)];

const NODE: &[(&str, Kind)] = &[
    ("ID", Kind::Str),
    ("Node", Kind::Str),
    ("Address", Kind::Str),
    ("Datacenter", Kind::Str),
    ("TaggedAddresses", Kind::Map),
    ("Meta", Kind::Map),
];

const SERVICE: &[(&str, Kind)] = &[
    ("ID", Kind::Str),
    ("Service", Kind::Str),
    ("Tags", Kind::List),
    ("Address", Kind::Str),
    ("TaggedAddresses", Kind::Map),
    ("Meta", Kind::Map),
    ("Port", Kind::Int),
    ("Weights", Kind::Struct(WEIGHTS)),
    ("Namespace", Kind::Str),
];

const CHECK: &[(&str, Kind)] = &[
    ("Node", Kind::Str),
    ("CheckID", Kind::Str),
    ("Name", Kind::Str),
    ("Status", Kind::Str),
    ("Notes", Kind::Str),
    ("Output", Kind::Str),
    ("ServiceID", Kind::Str),
    ("ServiceName", Kind::Str),
    ("ServiceTags", Kind::List),
    ("Namespace", Kind::Str),
];

const HEALTH_ENTRY: &[(&str, Kind)] = &[
    ("Node", Kind::Struct(NODE)),
    ("Service", Kind::Struct(SERVICE)),
    ("Checks", Kind::StructList(CHECK)),
];

const CATALOG_ENTRY: &[(&str, Kind)] = &[
    ("ID", Kind::Str),
    ("Node", Kind::Str),
    ("Address", Kind::Str),
    ("Datacenter", Kind::Str),
    ("TaggedAddresses", Kind::Map),
    ("NodeMeta", Kind::Map),
    ("ServiceKind", Kind::Str),
    ("ServiceID", Kind::Str),
    ("ServiceName", Kind::Str),
    ("ServiceTags", Kind::List),
    ("ServiceAddress", Kind::Str),
    ("ServiceTaggedAddresses", Kind::Map),
    ("ServiceWeights", Kind::Struct(WEIGHTS)),
    ("ServiceMeta", Kind::Map),
    ("ServicePort", Kind::Int),
    ("ServiceEnableTagOverride", Kind::Bool),
    ("Namespace", Kind::Str),
    ("CreateIndex", Kind::Int),
    ("ModifyIndex", Kind::Int),
];

impl Schema {
    fn root(self) -> Kind {
        match self {
            Schema::HealthEntry => Kind::Struct(HEALTH_ENTRY),
            Schema::CatalogEntry => Kind::Struct(CATALOG_ENTRY),
            Schema::Check => Kind::Struct(CHECK),
        }
    }
}

/// A match operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    In,
    NotIn,
    Contains,
    NotContains,
    Matches,
    NotMatches,
    IsEmpty,
    IsNotEmpty,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Equal => "Equal",
            Op::NotEqual => "Not Equal",
            Op::In => "In",
            Op::NotIn => "Not In",
            Op::Contains => "Contains",
            Op::NotContains => "Not Contains",
            Op::Matches => "Matches",
            Op::NotMatches => "Not Matches",
            Op::IsEmpty => "Is Empty",
            Op::IsNotEmpty => "Is Not Empty",
        }
    }

    /// The positive operator and whether this one negates it.
    fn positive(self) -> (Op, bool) {
        match self {
            Op::NotEqual => (Op::Equal, true),
            Op::NotIn => (Op::In, true),
            Op::NotContains => (Op::Contains, true),
            Op::NotMatches => (Op::Matches, true),
            Op::IsNotEmpty => (Op::IsEmpty, true),
            op => (op, false),
        }
    }
}

/// The literal a match compares with.
#[derive(Debug, Clone)]
enum Literal {
    None,
    Text(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Match {
        selector: Vec<String>,
        kind: Kind,
        op: Op,
        value: Literal,
    },
}

/// A parsed, checked filter.
#[derive(Debug, Clone)]
pub(crate) struct Filter(Expr);

impl Filter {
    /// Parses `text` for entries of `schema`; the error is go-bexpr's message (without
    /// Consul's "Failed to create boolean expression evaluator: " prefix).
    pub(crate) fn parse(text: &str, schema: Schema) -> Result<Filter, String> {
        let mut p = Parser {
            src: text.as_bytes(),
            pos: 0,
            farthest: 0,
            depth: 0,
            schema,
        };
        p.ws();
        let expr = p.or()?;
        p.ws();
        if p.pos != p.src.len() {
            return Err(p.no_match());
        }
        Ok(Filter(expr.ok_or_else(|| p.no_match())?))
    }

    /// Whether `entry` matches.
    pub(crate) fn matches(&self, entry: &Value) -> Result<bool, String> {
        Ok(eval(&self.0, entry))
    }
}

/// Deepest nesting of `not` and parentheses accepted (the parser recurses).
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    /// The farthest position any rule failed at, for the error message.
    farthest: usize,
    depth: usize,
    schema: Schema,
}

/// `Ok(None)`: the rule did not match here (backtrack); `Err`: a hard error.
type Parsed<T> = Result<Option<T>, String>;

impl Parser<'_> {
    fn no_match(&self) -> String {
        let at = self.farthest.min(self.src.len());
        let col = String::from_utf8_lossy(self.src.get(..at).unwrap_or_default())
            .chars()
            .count()
            + 1;
        format!("1:{col} ({at}): no match found")
    }

    fn fail<T>(&mut self) -> Parsed<T> {
        self.farthest = self.farthest.max(self.pos);
        Ok(None)
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    /// Optional whitespace; returns whether any was consumed.
    fn ws(&mut self) -> bool {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn lit(&mut self, s: &str) -> bool {
        if self
            .src
            .get(self.pos..)
            .is_some_and(|r| r.starts_with(s.as_bytes()))
        {
            self.pos += s.len();
            true
        } else {
            self.farthest = self.farthest.max(self.pos);
            false
        }
    }

    /// Matches a sequence of required-whitespace-separated keywords, each preceded by
    /// whitespace and followed by whitespace when `trailing` (`_ "not" _ "in" _`).
    fn keywords(&mut self, words: &[&str], trailing: bool) -> bool {
        let start = self.pos;
        for w in words {
            if !(self.ws() && self.lit(w)) {
                self.pos = start;
                return false;
            }
        }
        if trailing && !self.ws() {
            self.pos = start;
            return false;
        }
        true
    }

    fn or(&mut self) -> Parsed<Expr> {
        let Some(left) = self.and()? else {
            return Ok(None);
        };
        let save = self.pos;
        if self.keywords(&["or"], true) {
            if let Some(right) = self.or()? {
                return Ok(Some(Expr::Or(Box::new(left), Box::new(right))));
            }
        }
        self.pos = save;
        Ok(Some(left))
    }

    fn and(&mut self) -> Parsed<Expr> {
        let Some(left) = self.not()? else {
            return Ok(None);
        };
        let save = self.pos;
        if self.keywords(&["and"], true) {
            if let Some(right) = self.and()? {
                return Ok(Some(Expr::And(Box::new(left), Box::new(right))));
            }
        }
        self.pos = save;
        Ok(Some(left))
    }

    fn not(&mut self) -> Parsed<Expr> {
        self.depth += 1;
        let out = if self.depth > MAX_DEPTH {
            Err("expression nested too deeply".to_owned())
        } else {
            self.not_inner()
        };
        self.depth -= 1;
        out
    }

    fn not_inner(&mut self) -> Parsed<Expr> {
        let start = self.pos;
        if self.lit("not") && self.ws() {
            if let Some(e) = self.not()? {
                return Ok(Some(Expr::Not(Box::new(e))));
            }
        }
        self.pos = start;
        if self.lit("(") {
            self.ws();
            if let Some(e) = self.or()? {
                self.ws();
                if self.lit(")") {
                    return Ok(Some(e));
                }
            }
        }
        self.pos = start;
        self.matcher()
    }

    fn matcher(&mut self) -> Parsed<Expr> {
        let start = self.pos;
        // Selector op value / selector is [not] empty.
        if let Some(selector) = self.selector()? {
            let after = self.pos;
            let ops: [(&[&str], bool, Op); 4] = [
                (&["contains"], true, Op::Contains),
                (&["not", "contains"], true, Op::NotContains),
                (&["matches"], true, Op::Matches),
                (&["not", "matches"], true, Op::NotMatches),
            ];
            let mut op = None;
            let save = self.pos;
            self.ws();
            if self.lit("==") {
                op = Some(Op::Equal);
            } else if self.lit("!=") {
                op = Some(Op::NotEqual);
            }
            if op.is_some() {
                self.ws();
            } else {
                self.pos = save;
                op = ops
                    .iter()
                    .find(|(words, trailing, _)| self.keywords(words, *trailing))
                    .map(|(_, _, op)| *op);
            }
            if let Some(op) = op {
                if let Some(value) = self.value()? {
                    return self.build(selector, op, Some(value)).map(Some);
                }
            }
            self.pos = after;
            if self.keywords(&["is", "empty"], false) {
                return self.build(selector, Op::IsEmpty, None).map(Some);
            }
            if self.keywords(&["is", "not", "empty"], false) {
                return self.build(selector, Op::IsNotEmpty, None).map(Some);
            }
        }
        self.pos = start;
        // Value [not] in selector.
        if let Some(value) = self.value()? {
            let op = if self.keywords(&["in"], true) {
                Some(Op::In)
            } else if self.keywords(&["not", "in"], true) {
                Some(Op::NotIn)
            } else {
                None
            };
            if let Some(op) = op {
                if let Some(selector) = self.selector()? {
                    return self.build(selector, op, Some(value)).map(Some);
                }
                return Err(format!(
                    "1:{} ({}): Invalid selector",
                    self.pos + 1,
                    self.pos
                ));
            }
        }
        self.pos = start;
        self.fail()
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.pos;
        if !self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.farthest = self.farthest.max(self.pos);
            return None;
        }
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'/')
        {
            self.pos += 1;
        }
        String::from_utf8(self.src.get(start..self.pos)?.to_vec()).ok()
    }

    fn selector(&mut self) -> Parsed<Vec<String>> {
        let Some(first) = self.ident() else {
            return self.fail();
        };
        let mut parts = vec![first];
        loop {
            let save = self.pos;
            if self.lit(".") {
                if let Some(id) = self.ident() {
                    parts.push(id);
                    continue;
                }
            }
            self.pos = save;
            if self.lit("[") {
                self.ws();
                if let Some(key) = self.string()? {
                    self.ws();
                    if self.lit("]") {
                        parts.push(key);
                        continue;
                    }
                }
            }
            self.pos = save;
            return Ok(Some(parts));
        }
    }

    fn value(&mut self) -> Parsed<String> {
        if let Some(s) = self.string()? {
            return Ok(Some(s));
        }
        if let Some(n) = self.number() {
            return Ok(Some(n));
        }
        Ok(self.selector()?.map(|parts| parts.join(".")))
    }

    fn number(&mut self) -> Option<String> {
        let start = self.pos;
        self.lit("-");
        let digits = |p: &mut Self| {
            let s = p.pos;
            while p.peek().is_some_and(|b| b.is_ascii_digit()) {
                p.pos += 1;
            }
            p.pos - s
        };
        let int_start = self.pos;
        let n = digits(self);
        let leading_zero = n > 1 && self.src.get(int_start) == Some(&b'0');
        if n == 0 || leading_zero {
            self.pos = start;
            return None;
        }
        let save = self.pos;
        if !(self.lit(".") && digits(self) > 0) {
            self.pos = save;
        }
        // A number must be followed by whitespace, `)` or the end.
        if !matches!(
            self.peek(),
            None | Some(b' ' | b'\t' | b'\r' | b'\n' | b')')
        ) {
            self.pos = start;
            return None;
        }
        String::from_utf8(self.src.get(start..self.pos)?.to_vec()).ok()
    }

    fn string(&mut self) -> Parsed<String> {
        let Some(quote @ (b'"' | b'`')) = self.peek() else {
            return self.fail();
        };
        let start = self.pos;
        let body_start = start + 1;
        let Some(len) = self
            .src
            .get(body_start..)
            .and_then(|rest| rest.iter().position(|&c| c == quote))
        else {
            return Err(format!(
                "1:{} ({start}): unterminated string literal",
                start + 1
            ));
        };
        let body = self
            .src
            .get(body_start..body_start + len)
            .unwrap_or_default();
        self.pos = body_start + len + 1;
        let body = std::str::from_utf8(body).map_err(|_| "invalid UTF-8 in string".to_owned())?;
        if quote == b'`' {
            return Ok(Some(body.replace('\r', "")));
        }
        go_unquote(body)
            .map(Some)
            .ok_or_else(|| format!("1:{} ({start}): invalid syntax", start + 1))
    }

    /// Checks the selector and operator against the schema and builds the match.
    fn build(&self, selector: Vec<String>, op: Op, value: Option<String>) -> Result<Expr, String> {
        let shown = selector.join(".");
        let kind = resolve_kind(self.schema.root(), &selector)
            .ok_or_else(|| format!("Selector {shown:?} is not valid"))?;
        let allowed = match kind {
            Kind::Str => true,
            Kind::Int | Kind::Bool => matches!(op, Op::Equal | Op::NotEqual),
            Kind::Each => !matches!(op, Op::Matches | Op::NotMatches),
            Kind::List | Kind::Map | Kind::StructList(_) => matches!(
                op,
                Op::In | Op::NotIn | Op::Contains | Op::NotContains | Op::IsEmpty | Op::IsNotEmpty
            ),
            Kind::Struct(_) => false,
        };
        if !allowed {
            return Err(format!(
                "Invalid match operator {:?} for selector {shown:?}",
                op.name()
            ));
        }
        let value = match (op, value) {
            (_, None) => Literal::None,
            (Op::Matches | Op::NotMatches, Some(v)) => Literal::Regex(
                Regex::new(&v).map_err(|e| format!("Failed to compile regular expression: {e}"))?,
            ),
            (_, Some(v)) => {
                match kind {
                    Kind::Int if v.parse::<i64>().is_err() => {
                        return Err(format!(
                            "Failed to coerce value {v:?} for selector {shown:?}: invalid syntax"
                        ));
                    }
                    Kind::Bool if parse_bool(&v).is_none() => {
                        return Err(format!(
                            "Failed to coerce value {v:?} for selector {shown:?}: invalid syntax"
                        ));
                    }
                    _ => {}
                }
                Literal::Text(v)
            }
        };
        Ok(Expr::Match {
            selector,
            kind,
            op,
            value,
        })
    }
}

/// The kind a selector ends at, `None` when the path is not a field.
fn resolve_kind(mut kind: Kind, path: &[String]) -> Option<Kind> {
    let mut through_list = false;
    for (i, part) in path.iter().enumerate() {
        match kind {
            Kind::Struct(fields) | Kind::StructList(fields) => {
                through_list |= matches!(kind, Kind::StructList(_));
                kind = fields.iter().find(|(n, _)| n == part)?.1;
            }
            // A map's value: a string, and nothing below it.
            Kind::Map if i + 1 == path.len() => return Some(Kind::Str),
            _ => return None,
        }
    }
    if through_list && matches!(kind, Kind::Str | Kind::Int | Kind::Bool) {
        return Some(Kind::Each);
    }
    Some(kind)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The body of a Go double-quoted string literal, unescaped as `strconv.Unquote` does;
/// `None` on an escape Go rejects or a raw newline.
fn go_unquote(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => return None,
            '\\' => {
                let e = chars.next()?;
                match e {
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    'x' | 'u' | 'U' => {
                        let n = match e {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(n).collect();
                        if hex.len() != n {
                            return None;
                        }
                        let v = u32::from_str_radix(&hex, 16).ok()?;
                        if e == 'x' {
                            // A byte; only ASCII keeps the result valid UTF-8 here.
                            out.push(char::from(u8::try_from(v).ok().filter(u8::is_ascii)?));
                        } else {
                            out.push(char::from_u32(v)?);
                        }
                    }
                    '0'..='7' => {
                        let rest: String = chars.by_ref().take(2).collect();
                        let oct = format!("{e}{rest}");
                        if oct.len() != 3 {
                            return None;
                        }
                        let v = u32::from_str_radix(&oct, 8).ok()?;
                        out.push(char::from(u8::try_from(v).ok().filter(u8::is_ascii)?));
                    }
                    _ => return None,
                }
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn eval(expr: &Expr, entry: &Value) -> bool {
    match expr {
        Expr::Or(a, b) => eval(a, entry) || eval(b, entry),
        Expr::And(a, b) => eval(a, entry) && eval(b, entry),
        Expr::Not(e) => !eval(e, entry),
        Expr::Match {
            selector,
            kind,
            op,
            value,
        } => {
            let (positive, negate) = op.positive();
            let found = lookup(entry, selector);
            let hit = match found {
                None => positive == Op::IsEmpty,
                Some(v) => test(&v, *kind, positive, value),
            };
            hit != negate
        }
    }
}

/// The value at `path`; through arrays (lists of structs) the values of every element,
/// as an array. `None` when a key is missing.
fn lookup(entry: &Value, path: &[String]) -> Option<Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(entry.clone());
    };
    match entry {
        Value::Object(m) => lookup(m.get(first)?, rest),
        Value::Array(items) => Some(Value::Array(
            items.iter().filter_map(|i| lookup(i, path)).collect(),
        )),
        _ => None,
    }
}

fn scalar_eq(v: &Value, lit: &str) -> bool {
    match v {
        Value::String(s) => s == lit,
        Value::Number(n) => {
            lit.parse::<i64>().is_ok_and(|l| n.as_i64() == Some(l))
                || lit.parse::<u64>().is_ok_and(|l| n.as_u64() == Some(l))
        }
        Value::Bool(b) => parse_bool(lit) == Some(*b),
        _ => false,
    }
}

fn test(v: &Value, kind: Kind, op: Op, lit: &Literal) -> bool {
    let text = match lit {
        Literal::Text(t) => t.as_str(),
        _ => "",
    };
    match op {
        Op::IsEmpty => match v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(m) => m.is_empty(),
            _ => false,
        },
        Op::Equal => match v {
            // A field reached through a list of structs: any element.
            Value::Array(a) if matches!(kind, Kind::Each) => a.iter().any(|e| scalar_eq(e, text)),
            v => scalar_eq(v, text),
        },
        Op::In | Op::Contains => match v {
            Value::String(s) => s.contains(text),
            Value::Array(a) => a.iter().any(|e| scalar_eq(e, text)),
            Value::Object(m) => m.contains_key(text),
            _ => false,
        },
        Op::Matches => match (v, lit) {
            (Value::String(s), Literal::Regex(re)) => re.is_match(s),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "Node": {"ID": "x", "Node": "node-1", "Address": "10.0.0.9", "Datacenter": "dc1",
                     "TaggedAddresses": {"lan": "10.0.0.9"}, "Meta": {}},
            "Service": {"ID": "web-1", "Service": "web", "Tags": ["primary", "v2"],
                        "Address": "10.0.0.1", "TaggedAddresses": {}, "Port": 8080,
                        "Meta": {"tenant": "acme", "zone": "a"},
                        "Weights": {"Passing": 3, "Warning": 1}, "Namespace": "default"},
            "Checks": [{"Status": "passing", "CheckID": "service:web-1"},
                       {"Status": "warning", "CheckID": "serfHealth"}]
        })
    }

    fn eval_str(f: &str) -> Result<bool, String> {
        Filter::parse(f, Schema::HealthEntry)?.matches(&entry())
    }

    #[test]
    fn evaluates_the_operators_meshguard_emits() {
        let yes = [
            r#"Service.Meta.tenant == "acme""#,
            r#"Service.Meta.tenant != "other""#,
            r#"Service.Meta["tenant"] == "acme""#,
            "Service.Meta.tenant == acme",
            r#""primary" in Service.Tags"#,
            r#""v1" not in Service.Tags"#,
            r#"Service.Tags contains "v2""#,
            r#"Service.Tags not contains "v3""#,
            "Service.Meta.missing is empty",
            "Service.Meta.missing != x",
            "Service.Tags is not empty",
            "Node.Meta is empty",
            "Service.Port == 8080",
            "Service.Weights.Passing == 3",
            r#"Service.Service matches "^w.b$""#,
            r#""tenant" in Service.Meta"#,
            r#""warning" in Checks.Status"#,
            r#"Checks.Status == "passing""#,
            r#"(Service.Meta.tenant == "acme") and ("primary" in Service.Tags)"#,
            r#"not Service.Meta.tenant == "other""#,
            r#"Service.Meta.tenant == "x" or Node.Node == "node-1""#,
            "  Service.Meta.tenant==\"acme\"  ",
            r#"Service.Meta.tenant == `acme`"#,
            r#"Node.Node == "node\x2d1""#,
        ];
        for f in yes {
            assert_eq!(eval_str(f), Ok(true), "{f}");
        }
        let no = [
            r#"Service.Meta.tenant == "other""#,
            r#"Service.Meta.missing == "x""#,
            r#""x" in Service.Meta.missing"#,
            r#"Service.Meta.tenant == "acme" and "v9" in Service.Tags"#,
            r#"not (Service.Meta.tenant == "acme")"#,
            r#"Checks.Status == "critical""#,
        ];
        for f in no {
            assert_eq!(eval_str(f), Ok(false), "{f}");
        }
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        // false and false or true == (false and false) or true
        assert_eq!(
            eval_str(r#"Node.Node == "a" and Node.Node == "b" or Node.Node == "node-1""#),
            Ok(true)
        );
        // true or true and false == true or (true and false)
        assert_eq!(
            eval_str(r#"Node.Node == "node-1" or Node.Node == "node-1" and Node.Node == "b""#),
            Ok(true)
        );
        assert_eq!(
            eval_str(r#"(Node.Node == "node-1" or Node.Node == "node-1") and Node.Node == "b""#),
            Ok(false)
        );
    }

    #[test]
    fn injection_looking_strings_are_compared_literally() {
        // The string ends at the first quote: the rest is a parse error, never a clause.
        assert!(eval_str(r#"Service.Meta.tenant == "" or 1==1"#).is_err());
        assert!(eval_str(r#"Service.Meta.tenant == "acme\" or Service.ID != \"""#).is_err());
        assert_eq!(
            eval_str(r#"Service.Meta.tenant == "acme) or (Node.Node == node-1""#),
            Ok(false)
        );
        assert_eq!(
            eval_str(r#"Service.Meta.tenant == "\" or 1==1""#).map_err(|_| ()),
            Err(())
        );
    }

    #[test]
    fn rejects_what_bexpr_rejects() {
        for bad in [
            "",
            "Service.Meta.tenant ==",
            "Service.Meta.tenant = \"a\"",
            "(Service.Meta.tenant == a",
            "Service.Meta.tenant == a)",
            "Service.Meta.tenant == \"a",
            "Service.Meta.tenant == \"a\"and Node.Node == b",
            "not(Service.Meta.tenant == a)",
            "Service.Nope == a",
            "Service.Tags == a",
            "Service.Port == abc",
            "Service.Meta.a.b == c",
            "Service == a",
            "Service.Service matches \"(\"",
            "Service.Meta.tenant == \"a\\qb\"",
            "\"a\" in",
            "Service.Port == 01",
        ] {
            assert!(
                Filter::parse(bad, Schema::HealthEntry).is_err(),
                "{bad:?} should not parse"
            );
        }
        let deep = format!("{}Node.Node == a{}", "(".repeat(200), ")".repeat(200));
        assert!(Filter::parse(&deep, Schema::HealthEntry).is_err());
    }

    #[test]
    fn catalog_and_check_schemas_have_their_own_fields() {
        assert!(Filter::parse("ServiceMeta.tenant == a", Schema::CatalogEntry).is_ok());
        assert!(Filter::parse("ServiceMeta.tenant == a", Schema::HealthEntry).is_err());
        assert!(Filter::parse("Status == passing", Schema::Check).is_ok());
        assert!(Filter::parse("Service.ID == a", Schema::Check).is_err());
    }

    #[test]
    fn unquotes_like_go() {
        assert_eq!(
            go_unquote(r"a\\b\n\u00e9\101").as_deref(),
            Some("a\\b\né\u{41}")
        );
        assert_eq!(go_unquote(r"\q"), None);
        assert_eq!(go_unquote("\\"), None);
        assert_eq!(go_unquote(r"\'"), None);
    }

    #[test]
    fn never_panics_on_token_soup() {
        const PIECES: &[&str] = &[
            "Service", ".", "Meta", "tenant", "Tags", "Checks", "Status", " ", "==", "!=", " in ",
            " not ", " and ", " or ", "contains", " is ", "empty", "(", ")", "[", "]", "\"", "`",
            "\\", "x", "1", "-", "matches", "\"a\"", r"\u00e9", "é", "\n",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            usize::try_from(z ^ (z >> 31)).unwrap()
        };
        let e = entry();
        let mut parsed = 0;
        for _ in 0..20_000 {
            let n = next() % 12;
            let text: String = (0..n).map(|_| PIECES[next() % PIECES.len()]).collect();
            for schema in [Schema::HealthEntry, Schema::CatalogEntry, Schema::Check] {
                if let Ok(f) = Filter::parse(&text, schema) {
                    parsed += 1;
                    let _ = f.matches(&e);
                }
            }
        }
        assert!(parsed > 0, "the soup should contain some valid filters");
    }
}
