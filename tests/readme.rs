//! The README's claims that rot silently, kept true against the code and
//! the manifests:
//!
//! - every log line it quotes as `cluster-entrypoint: …` is one that
//!   deploy/base/ejabberd/cluster-entrypoint.sh logs, or a plan line
//!   (`ACTION [ARG]: REASON`) with an action and a reason of
//!   src/cluster/plan.rs (`…`, and the words N, NODE, DIR and FILE, stand
//!   for what a quote leaves out);
//! - every `[..](#anchor)` and every section it names (`"X" above`,
//!   `"X" below`, `section "X"`, `see "X"`) is a heading, above or below as
//!   said; and every `README "X"` or `BENCHMARKS.md, "X"` in the
//!   repository's sources and manifests names a heading of that file;
//! - every `kube_epmd_…` metric named in README.md, BENCHMARKS.md and
//!   deploy/ is one kube-epmd exports, and every label value the alert
//!   rules and the README match on is one the code sets;
//! - the sizing table holds the manifests' requests and limits, and the
//!   images deployed are named;
//! - deploy/monitoring renders with kubectl, its NetworkPolicy opens the
//!   sidecar's admin port (only) to a selected scraper, on the
//!   StatefulSet's pods, and its PrometheusRule holds exactly rules.yml.
//!
//! Each check is a function of text; the `*_catches_*` tests feed each a
//! wrong input, so none of them can pass by finding nothing to check.

#[allow(dead_code)]
#[path = "support/manifests.rs"]
mod manifests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kube_epmd::metrics::{DiscoveryMetrics, Metrics, Outcome, TlsMetrics, render_all};
use manifests::{
    Manifests, admin_port, object_id, parse_documents, rendered_objects, repo_path, sidecar_args,
    unknown_fields,
};
use serde_json::Value;

const ENTRYPOINT: &str = "deploy/base/ejabberd/cluster-entrypoint.sh";
const PLANNER: &str = "src/cluster/plan.rs";
const LOG_PREFIX: &str = "cluster-entrypoint: ";

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ------------------------------------------------------------------ globs

/// A pattern: characters, and `Star` for any text (a placeholder of the
/// code, or what a quote leaves out).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tok {
    Ch(char),
    Star,
}

fn push_star(v: &mut Vec<Tok>) {
    if v.last() != Some(&Tok::Star) {
        v.push(Tok::Star);
    }
}

fn literal_len(p: &[Tok]) -> usize {
    p.iter().filter(|t| matches!(t, Tok::Ch(_))).count()
}

/// Whether some text matches both patterns.
fn intersects(a: &[Tok], b: &[Tok]) -> bool {
    // memo[i][j]: a[i..] and b[j..] have a common match.
    let mut memo = vec![vec![None::<bool>; b.len() + 1]; a.len() + 1];
    fn go(a: &[Tok], b: &[Tok], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(r) = memo[i][j] {
            return r;
        }
        let r = match (a.get(i), b.get(j)) {
            (None, None) => true,
            (Some(Tok::Star), _) => {
                go(a, b, i + 1, j, memo) || (j < b.len() && go(a, b, i, j + 1, memo))
            }
            (_, Some(Tok::Star)) => {
                go(a, b, i, j + 1, memo) || (i < a.len() && go(a, b, i + 1, j, memo))
            }
            (Some(Tok::Ch(x)), Some(Tok::Ch(y))) => x == y && go(a, b, i + 1, j + 1, memo),
            _ => false,
        };
        memo[i][j] = Some(r);
        r
    }
    go(a, b, 0, 0, &mut memo)
}

// ------------------------------------------------------- entrypoint's logs

/// The text of a double-quoted shell word starting at `s` (after the
/// quote), as a pattern: `$x`, `${…}`, `$(…)`, `$*` are any text.
fn shell_pattern(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(Tok::Ch(it.next()?)),
            '$' => {
                push_star(&mut out);
                match it.peek() {
                    Some('{') | Some('(') => {
                        let (open, close) = if it.peek() == Some(&'{') {
                            ('{', '}')
                        } else {
                            ('(', ')')
                        };
                        let mut depth = 0;
                        for c in it.by_ref() {
                            if c == open {
                                depth += 1;
                            } else if c == close {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                        }
                    }
                    _ => {
                        while it.peek().is_some_and(|c| {
                            c.is_ascii_alphanumeric() || *c == '_' || *c == '*' || *c == '@'
                        }) {
                            it.next();
                        }
                    }
                }
            }
            c => out.push(Tok::Ch(c)),
        }
    }
    None
}

/// What cluster-entrypoint.sh logs: the argument of every `log "…"` and
/// `fail "…"`, except the plan line (`"${action…`), returned apart
/// (true when the script has it).
fn entrypoint_lines(sh: &str) -> (Vec<Vec<Tok>>, bool) {
    let mut lines = Vec::new();
    let mut plan_line = false;
    for word in ["log \"", "fail \""] {
        for (at, _) in sh.match_indices(word) {
            let before = sh[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                continue; // e.g. `beacon_log "`
            }
            let rest = &sh[at + word.len()..];
            if rest.starts_with("${action") {
                plan_line = true;
                continue;
            }
            if let Some(p) = shell_pattern(rest)
                && literal_len(&p) > 0
            {
                lines.push(p);
            }
        }
    }
    (lines, plan_line)
}

/// Rust string literals of `src` outside comments and `#[cfg(test)]`:
/// (text, with `{…}` placeholders as Star; `{NAME}` of a `const NAME:
/// &str` replaced by its text).
fn rust_literals(src: &str) -> Vec<String> {
    let code = src.split("#[cfg(test)]").next().unwrap_or(src);
    let mut out = Vec::new();
    let mut it = code.char_indices().peekable();
    while let Some((_, c)) = it.next() {
        match c {
            '/' if it.peek().map(|p| p.1) == Some('/') => {
                for (_, c) in it.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('"') or a lifetime ('a): skip a char literal.
                let ahead: String = code[it.peek().map_or(code.len(), |p| p.0)..]
                    .chars()
                    .take(3)
                    .collect();
                if ahead.starts_with('\\') {
                    it.next();
                    it.next();
                    it.next();
                } else if ahead.chars().nth(1) == Some('\'') {
                    it.next();
                    it.next();
                }
            }
            '"' => {
                let mut s = String::new();
                while let Some((_, c)) = it.next() {
                    match c {
                        '"' => break,
                        '\\' => match it.next().map(|p| p.1) {
                            Some('\n') => {
                                while it.peek().is_some_and(|p| p.1.is_whitespace()) {
                                    it.next();
                                }
                            }
                            Some('n') => s.push('\n'),
                            Some(c) => s.push(c),
                            None => break,
                        },
                        c => s.push(c),
                    }
                }
                out.push(s);
            }
            _ => {}
        }
    }
    out
}

fn format_pattern(s: &str, consts: &BTreeMap<String, String>) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '{' if it.peek() == Some(&'{') => {
                it.next();
                out.push(Tok::Ch('{'));
            }
            '}' if it.peek() == Some(&'}') => {
                it.next();
                out.push(Tok::Ch('}'));
            }
            '{' => {
                let mut name = String::new();
                for c in it.by_ref() {
                    if c == '}' {
                        break;
                    }
                    name.push(c);
                }
                match consts.get(&name) {
                    Some(text) => out.extend(format_pattern(text, consts)),
                    None => push_star(&mut out),
                }
            }
            c => out.push(Tok::Ch(c)),
        }
    }
    out
}

/// The planner's action names (`Action::kind`) and reasons (its string
/// literals) as patterns.
fn planner_vocabulary(rs: &str) -> (Vec<String>, Vec<Vec<Tok>>) {
    let kind_fn = rs
        .split_once("fn kind(")
        .map(|(_, rest)| rest.split_once("\n    }\n").map_or(rest, |(body, _)| body))
        .unwrap_or("");
    let kinds: Vec<String> = kind_fn
        .match_indices("=> \"")
        .filter_map(|(at, m)| {
            kind_fn[at + m.len()..]
                .split_once('"')
                .map(|(k, _)| k.to_string())
        })
        .collect();
    let mut consts = BTreeMap::new();
    for line in rs.lines() {
        if let Some(rest) = line.trim().strip_prefix("const ")
            && let Some((name, value)) = rest.split_once(": &str = \"")
            && let Some(value) = value.strip_suffix("\";")
        {
            consts.insert(name.to_string(), value.to_string());
        }
    }
    let reasons = rust_literals(rs)
        .iter()
        .map(|l| format_pattern(l, &consts))
        .filter(|p| literal_len(p) > 0)
        .collect();
    (kinds, reasons)
}

/// A quote of the README as a pattern: `…` and the placeholder words are
/// any text.
fn quote_pattern(q: &str) -> Vec<Tok> {
    const PLACEHOLDERS: [&str; 4] = ["N", "NODE", "DIR", "FILE"];
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<Tok>| {
        if PLACEHOLDERS.contains(&word.as_str()) {
            push_star(out);
        } else {
            out.extend(word.chars().map(Tok::Ch));
        }
        word.clear();
    };
    for c in q.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        flush(&mut word, &mut out);
        if c == '…' {
            push_star(&mut out);
        } else {
            out.push(Tok::Ch(c));
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Markdown without its fenced code blocks (kept apart), line by line.
struct Markdown<'a> {
    /// (line number from 1, text) outside code fences.
    prose: Vec<(usize, &'a str)>,
    /// (line number from 1, text) inside code fences.
    code: Vec<(usize, &'a str)>,
}

fn markdown(text: &str) -> Markdown<'_> {
    let mut md = Markdown {
        prose: Vec::new(),
        code: Vec::new(),
    };
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            md.code.push((i + 1, line));
        } else {
            md.prose.push((i + 1, line));
        }
    }
    md
}

/// The prose joined into one text (line ends as spaces), with the line
/// number each byte came from.
fn joined(prose: &[(usize, &str)]) -> (String, Vec<usize>) {
    let mut text = String::new();
    let mut line_of = Vec::new();
    for (n, l) in prose {
        text.push_str(l);
        text.push(' ');
        line_of.resize(text.len(), *n);
    }
    (text, line_of)
}

/// Every `cluster-entrypoint: …` the README quotes: in inline code, up to
/// its closing backquote; in a code block, to the end of the line.
fn quoted_log_lines(readme: &str) -> Vec<(usize, String)> {
    let md = markdown(readme);
    let mut out = Vec::new();
    let (text, line_of) = joined(&md.prose);
    let opener = format!("`{LOG_PREFIX}");
    for (at, _) in text.match_indices(&opener) {
        let rest = &text[at + opener.len()..];
        let quote = rest.split('`').next().unwrap_or(rest);
        out.push((line_of[at], quote.trim_end().to_string()));
    }
    for (n, line) in md.code {
        if let Some((_, rest)) = line.split_once(LOG_PREFIX) {
            out.push((n, rest.trim_end().to_string()));
        }
    }
    out
}

/// Quotes of `readme` that neither the script nor the planner logs.
fn check_log_lines(readme: &str, sh: &str, rs: &str) -> Vec<String> {
    let (lines, has_plan_line) = entrypoint_lines(sh);
    let mut problems = Vec::new();
    if !has_plan_line {
        problems.push(format!(
            "{ENTRYPOINT} no longer logs the plan as log \"${{action:-?}}${{arg:+ $arg}}: ${{reason:-}}\": \
             teach tests/readme.rs its new form"
        ));
    }
    let (kinds, reasons) = planner_vocabulary(rs);
    if kinds.len() < 5 {
        problems.push(format!(
            "found only {kinds:?} as actions in {PLANNER} (fn kind)"
        ));
    }
    // "ACTION: REASON" and "ACTION ARG: REASON"
    let plan_lines: Vec<Vec<Tok>> = kinds
        .iter()
        .flat_map(|k| {
            reasons.iter().flat_map(move |r| {
                [false, true].map(|with_arg| {
                    let mut p: Vec<Tok> = k.chars().map(Tok::Ch).collect();
                    if with_arg {
                        p.push(Tok::Ch(' '));
                        p.push(Tok::Star);
                    }
                    p.extend(": ".chars().map(Tok::Ch));
                    p.extend(r.iter().copied());
                    p
                })
            })
        })
        .collect();
    for (n, quote) in quoted_log_lines(readme) {
        let q = quote_pattern(&quote);
        // A quote that leaves out the start of the line matches almost
        // anything: it must begin as the line does.
        if literal_len(&q) < 8 || q.iter().take(3).any(|t| *t == Tok::Star) {
            problems.push(format!(
                "README.md:{n}: `{LOG_PREFIX}{quote}` leaves out the start of the line, or says \
                 too little, to be checked"
            ));
            continue;
        }
        let found = lines.iter().chain(&plan_lines).any(|t| intersects(&q, t));
        if !found {
            problems.push(format!(
                "README.md:{n}: `{LOG_PREFIX}{quote}` is logged neither by {ENTRYPOINT} \
                 (log/fail) nor as a plan of {PLANNER} (ACTION [ARG]: REASON)"
            ));
        }
    }
    problems
}

// ------------------------------------------------------------- references

/// (line number, title) of every heading outside code fences, backquotes
/// removed.
fn headings(md_text: &str) -> Vec<(usize, String)> {
    markdown(md_text)
        .prose
        .iter()
        .filter_map(|(n, l)| {
            let t = l.trim_start_matches('#');
            (t.len() < l.len() && t.starts_with(' ')).then(|| (*n, t.trim().replace('`', "")))
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens; a repeated one gets -1, -2, ...
fn anchors(heads: &[(usize, String)]) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, t) in heads {
        let slug: String = t
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The heading a reference names: the title itself, or a title it begins
/// (BENCHMARKS.md's "Kubernetes work vs EPMD answers: PORT_PLEASE2 …").
fn heading_named<'a>(heads: &'a [(usize, String)], name: &str) -> Option<&'a (usize, String)> {
    heads.iter().find(|(_, t)| {
        t == name
            || t.strip_prefix(name)
                .is_some_and(|r| r.starts_with(':') || r.starts_with(" ("))
    })
}

/// Problems with the README's own links and section references.
fn check_references(readme: &str) -> Vec<String> {
    let heads = headings(readme);
    let anchors = anchors(&heads);
    let md = markdown(readme);
    let (text, line_of) = joined(&md.prose);
    let mut problems = Vec::new();
    let mut checked = 0;
    for (at, m) in text.match_indices("](#") {
        let anchor = text[at + m.len()..].split(')').next().unwrap_or("");
        checked += 1;
        if !anchors.contains(anchor) {
            problems.push(format!(
                "README.md:{}: link to #{anchor}, which no heading has",
                line_of[at]
            ));
        }
    }
    for (at, _) in text.match_indices('"') {
        let rest = &text[at + 1..];
        let Some((name, after)) = rest.split_once('"') else {
            continue;
        };
        // Between two quotations, or too long to be a title.
        if name.is_empty()
            || name.len() > 80
            || name.contains('`')
            || name.starts_with(' ')
            || name.ends_with(' ')
        {
            continue;
        }
        let before = text[..at].trim_end();
        let where_ = if after.starts_with(" above") {
            Some(true)
        } else if after.starts_with(" below") {
            Some(false)
        } else {
            None
        };
        let named = where_.is_some()
            || before.ends_with(" section")
            || before.ends_with(" sections")
            || before.ends_with(" see");
        if !named {
            continue;
        }
        checked += 1;
        let n = line_of[at];
        match heading_named(&heads, name) {
            None => problems.push(format!(
                "README.md:{n}: refers to section \"{name}\", which is no heading"
            )),
            Some((h, _)) if where_ == Some(true) && *h > n => problems.push(format!(
                "README.md:{n}: \"{name}\" is said to be above, but its heading is on line {h}"
            )),
            Some((h, _)) if where_ == Some(false) && *h < n => problems.push(format!(
                "README.md:{n}: \"{name}\" is said to be below, but its heading is on line {h}"
            )),
            Some(_) => {}
        }
    }
    if checked < 5 {
        problems.push(format!(
            "found only {checked} references in README.md: the scanner is broken"
        ));
    }
    problems
}

/// `README "X"`, `README.md, "X"`, `BENCHMARKS.md ("X"` ... in `text`
/// (comment markers at line starts are skipped when the name wraps):
/// (document, line number, name).
fn cross_references(text: &str) -> Vec<(&'static str, usize, String)> {
    let mut out = Vec::new();
    for (doc, file) in [("README", "README.md"), ("BENCHMARKS.md", "BENCHMARKS.md")] {
        for (at, _) in text.match_indices(doc) {
            let rest = text[at + doc.len()..]
                .strip_prefix(".md")
                .unwrap_or(&text[at + doc.len()..]);
            let rest = rest.trim_start_matches([',', ' ', '(', ':']);
            let rest = rest.strip_prefix("section ").unwrap_or(rest);
            let Some(rest) = rest.strip_prefix('"').or_else(|| rest.strip_prefix("\\\"")) else {
                continue;
            };
            let Some(end) = rest.find(['"', '\\']) else {
                continue;
            };
            let name = rest[..end]
                .lines()
                .map(|l| {
                    l.trim()
                        .trim_start_matches(['/', '!', '#', '%', '*'])
                        .trim()
                })
                .collect::<Vec<_>>()
                .join(" ");
            let line = text[..at].matches('\n').count() + 1;
            out.push((file, line, name));
        }
    }
    out
}

fn check_cross_references(
    files: &[(String, String)],
    docs: &BTreeMap<&str, String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (path, text) in files {
        for (doc, line, name) in cross_references(text) {
            let heads = headings(&docs[doc]);
            if heading_named(&heads, &name).is_none() {
                problems.push(format!(
                    "{path}:{line}: refers to {doc}, \"{name}\", which is no heading there"
                ));
            }
        }
    }
    problems
}

/// Text files under `dirs` (recursively), as (path relative to the
/// repository, text).
fn text_files(dirs: &[&str], skip: &[&str]) -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
                out.push((rel, text));
            }
        }
    }
    let root = repo_path("");
    let mut out = Vec::new();
    for d in dirs {
        let p = repo_path(d);
        if p.is_dir() {
            walk(&p, &root, &mut out);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            out.push((d.to_string(), text));
        }
    }
    out.retain(|(p, _)| !skip.contains(&p.as_str()));
    out.sort();
    out
}

// ---------------------------------------------------------------- metrics

/// Every metric name kube-epmd exports, with every part it can have.
fn exported_metrics() -> BTreeSet<String> {
    // A family is rendered only once it has a series: give each one.
    let server = Metrics::default();
    server.request(kube_epmd::codec::RequestKind::Names, Outcome::Ok);
    server.refused("port_range", "erlang");
    server.dropped("malformed");
    let discovery = DiscoveryMetrics::new(true, &["other"]);
    discovery.cluster_plan("wait");
    let text = render_all(&server, Some(&discovery), Some(&TlsMetrics::new()));
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            // A counter's samples (what one queries) end in _total.
            names.insert(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            });
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            names.insert(name.to_string());
        }
    }
    names
}

/// (name, byte offset) of every `kube_epmd_…` in `text`; a name followed
/// by `*` is returned with it (a family).
fn metric_mentions(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (at, m) in text.match_indices("kube_epmd_") {
        if text[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let tail: String = text[at + m.len()..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '*')
            .collect();
        out.push((format!("{m}{tail}"), at));
    }
    out
}

/// Label matchers `name OP "value"` inside `{…}` right after a metric name.
fn label_matchers(text: &str, at: usize, name: &str) -> Vec<(String, String, String)> {
    let rest = &text[at + name.len()..];
    let Some(inner) = rest
        .strip_prefix('{')
        .and_then(|r| r.split_once('}'))
        .map(|(i, _)| i)
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in inner.split(',') {
        for op in ["!~", "=~", "!=", "="] {
            if let Some((label, value)) = m.split_once(op) {
                let value = value.trim();
                if let Some(v) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                    out.push((label.trim().to_string(), op.to_string(), v.to_string()));
                }
                break;
            }
        }
    }
    out
}

/// Metric names no code exports, and label values no code sets, in `files`.
fn check_metrics(
    files: &[(String, String)],
    exported: &BTreeSet<String>,
    actions: &[String],
    source: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = 0;
    for (path, text) in files {
        for (name, at) in metric_mentions(text) {
            seen += 1;
            let line = text[..at].matches('\n').count() + 1;
            let known = match name.strip_suffix('*') {
                Some(prefix) => exported.iter().any(|e| e.starts_with(prefix)),
                None => exported.contains(&name),
            };
            if !known {
                problems.push(format!(
                    "{path}:{line}: {name} is not a metric kube-epmd exports"
                ));
                continue;
            }
            for (label, op, value) in label_matchers(text, at, &name) {
                let values: Vec<&str> = if op.ends_with('~') {
                    value.split('|').collect()
                } else {
                    vec![value.as_str()]
                };
                for v in values {
                    let ok = if label == "action" {
                        actions.iter().any(|a| a == v)
                    } else {
                        source.contains(&format!("\"{v}\""))
                    };
                    if !ok {
                        problems.push(format!(
                            "{path}:{line}: {name}{{{label}{op}\"{value}\"}}: no code sets {label}=\"{v}\""
                        ));
                    }
                }
            }
        }
    }
    if seen == 0 {
        problems.push("no kube_epmd_ metric mentioned anywhere: the scanner is broken".into());
    }
    problems
}

/// All of src/ as one text (where label values are set).
fn all_source() -> String {
    text_files(&["src"], &[])
        .into_iter()
        .filter(|(p, _)| p.ends_with(".rs"))
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------ sizing

/// `| `container` | cpu req | cpu lim | mem req | mem lim |` rows of the
/// README's "Sizing" section.
fn sizing_rows(readme: &str) -> BTreeMap<String, Vec<String>> {
    let section = readme
        .split_once("\n### Sizing\n")
        .map(|(_, r)| r.split("\n#").next().unwrap_or(r))
        .unwrap_or("");
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((
                name.to_string(),
                cells[1..].iter().map(|c| c.to_string()).collect(),
            ))
        })
        .collect()
}

fn check_sizing(readme: &str, m: &Manifests) -> Vec<String> {
    let rows = sizing_rows(readme);
    let mut problems = Vec::new();
    let q = |map: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
             key: &str| {
        map.and_then(|m| m.get(key))
            .map_or("none".to_string(), |q| q.0.clone())
    };
    for c in m.all_containers() {
        let r = c.resources.as_ref();
        let want = vec![
            q(r.and_then(|r| r.requests.as_ref()), "cpu"),
            q(r.and_then(|r| r.limits.as_ref()), "cpu"),
            q(r.and_then(|r| r.requests.as_ref()), "memory"),
            q(r.and_then(|r| r.limits.as_ref()), "memory"),
        ];
        match rows.get(&c.name) {
            None => problems.push(format!(
                "README.md \"Sizing\" has no row for the container `{}` (want {want:?})",
                c.name
            )),
            Some(got) if *got != want => problems.push(format!(
                "README.md \"Sizing\", `{}`: {got:?}, the manifests say {want:?} \
                 (CPU request, CPU limit, memory request, memory limit)",
                c.name
            )),
            Some(_) => {}
        }
    }
    problems
}

// ------------------------------------------------------------ monitoring

/// deploy/monitoring against deploy/ and rules.yml.
fn check_monitoring(objs: &[Value], deploy: &Manifests, rules_yml: &str) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    let namespace = deploy.statefulset.metadata.namespace.clone();
    let rules = match parse_documents(rules_yml) {
        Ok(docs) if docs.len() == 1 => docs[0]["groups"].clone(),
        Ok(docs) => return vec![format!("rules.yml: {} documents, want one", docs.len())],
        Err(e) => return vec![format!("rules.yml does not parse: {e}")],
    };
    let kinds: Vec<String> = objs.iter().map(object_id).collect();
    if kinds.len() != 2 {
        problems.push(format!(
            "deploy/monitoring renders {kinds:?}: want one NetworkPolicy and one PrometheusRule"
        ));
    }
    for o in objs {
        if o["metadata"]["namespace"].as_str() != namespace.as_deref() {
            problems.push(format!(
                "{}: namespace {}, deploy/ uses {namespace:?}",
                object_id(o),
                o["metadata"]["namespace"]
            ));
        }
        match (o["apiVersion"].as_str(), o["kind"].as_str()) {
            (Some("monitoring.coreos.com/v1"), Some("PrometheusRule")) => {
                if o["spec"]["groups"] != rules {
                    problems.push(format!(
                        "{}: spec.groups differ from rules.yml's groups",
                        object_id(o)
                    ));
                }
            }
            (Some("networking.k8s.io/v1"), Some("NetworkPolicy")) => {
                problems.extend(
                    unknown_fields(o)
                        .into_iter()
                        .map(|p| format!("{}{p}", object_id(o))),
                );
                problems.extend(check_scrape_policy(o, deploy));
            }
            _ => problems.push(format!("{}: unexpected in deploy/monitoring", object_id(o))),
        }
    }
    let groups = rules.as_array().cloned().unwrap_or_default();
    let all: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    if all.is_empty() {
        problems.push("rules.yml holds no rule".into());
    }
    for r in all {
        let name = r["alert"].as_str().unwrap_or("?");
        for field in ["alert", "expr"] {
            if !r[field].is_string() {
                problems.push(format!("rule {name}: no {field}"));
            }
        }
        if !matches!(
            r["labels"]["severity"].as_str(),
            Some("critical" | "warning" | "info")
        ) {
            problems.push(format!(
                "rule {name}: severity is not critical, warning or info"
            ));
        }
        if !r["annotations"]["summary"].is_string() || !r["annotations"]["description"].is_string()
        {
            problems.push(format!("rule {name}: summary and description wanted"));
        }
    }
    problems
}

/// The scrape NetworkPolicy: the StatefulSet's pods, the admin port only,
/// from selected pods only.
fn check_scrape_policy(o: &Value, deploy: &Manifests) -> Vec<String> {
    let mut problems = Vec::new();
    let id = object_id(o);
    let labels: BTreeMap<String, String> =
        serde_json::from_value(o["spec"]["podSelector"]["matchLabels"].clone()).unwrap_or_default();
    if labels != deploy.pod_labels() {
        problems.push(format!(
            "{id}: podSelector {labels:?}, the StatefulSet's pods are {:?}",
            deploy.pod_labels()
        ));
    }
    let admin = match sidecar_args(deploy.sidecar()).and_then(|a| admin_port(&a)) {
        Ok(p) => p,
        Err(e) => return vec![format!("{id}: the sidecar's admin port: {e}")],
    };
    let ingress = o["spec"]["ingress"].as_array().cloned().unwrap_or_default();
    if ingress.is_empty() {
        problems.push(format!("{id}: no ingress rule"));
    }
    for rule in &ingress {
        let ports = rule["ports"].as_array().cloned().unwrap_or_default();
        let only_admin = !ports.is_empty()
            && ports
                .iter()
                .all(|p| p["port"].as_u64() == Some(admin.into()) && p["endPort"].is_null());
        if !only_admin {
            problems.push(format!(
                "{id}: ports {}, want only the sidecar's admin port {admin}",
                rule["ports"]
            ));
        }
        let from = rule["from"].as_array().cloned().unwrap_or_default();
        if from.is_empty()
            || from
                .iter()
                .any(|f| f["namespaceSelector"].is_null() && f["podSelector"].is_null())
        {
            problems.push(format!(
                "{id}: `from` must select the scraper (open to everyone it would expose /peers)"
            ));
        }
    }
    problems
}

fn fail_on(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ------------------------------------------------------------------- tests

/// The planner's source: plan.rs (actions and most reasons) and the files
/// of the rules it delegates to.
fn planner_source() -> String {
    [PLANNER, "src/cluster/partition.rs"]
        .iter()
        .map(|f| read(f))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_quoted_entrypoint_log_line_is_logged() {
    fail_on(check_log_lines(
        &read("README.md"),
        &read(ENTRYPOINT),
        &planner_source(),
    ));
}

#[test]
fn every_link_and_section_reference_names_a_heading() {
    fail_on(check_references(&read("README.md")));
}

#[test]
fn every_readme_reference_elsewhere_names_a_heading() {
    let docs: BTreeMap<&str, String> = [
        ("README.md", read("README.md")),
        ("BENCHMARKS.md", read("BENCHMARKS.md")),
    ]
    .into_iter()
    .collect();
    let files = text_files(
        &[
            "src",
            "tests",
            "deploy",
            "scripts",
            "benches",
            "build.rs",
            "Dockerfile",
            ".ci",
            "README.md",
            "BENCHMARKS.md",
            "CHANGELOG.md",
            "SECURITY.md",
        ],
        &["tests/readme.rs"],
    );
    let found: usize = files.iter().map(|(_, t)| cross_references(t).len()).sum();
    assert!(
        found >= 3,
        "found only {found} references to README sections: the scanner is broken"
    );
    fail_on(check_cross_references(&files, &docs));
}

#[test]
fn every_metric_named_is_exported() {
    let (actions, _) = planner_vocabulary(&read(PLANNER));
    let files = text_files(&["README.md", "BENCHMARKS.md", "deploy"], &[]);
    fail_on(check_metrics(
        &files,
        &exported_metrics(),
        &actions,
        &all_source(),
    ));
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn sizing_table_and_images_match_the_manifests() {
    let readme = read("README.md");
    let m = Manifests::load("deploy");
    let mut problems = check_sizing(&readme, &m);
    for c in m.all_containers() {
        let image = c.image.as_deref().unwrap_or("");
        if !readme.contains(image) {
            problems.push(format!(
                "README.md never names the image `{image}` of `{}`",
                c.name
            ));
        }
    }
    fail_on(problems);
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn monitoring_renders_and_matches_deploy() {
    let objs = rendered_objects("deploy/monitoring");
    fail_on(check_monitoring(
        &objs,
        &Manifests::load("deploy"),
        &read("deploy/monitoring/rules.yml"),
    ));
}

// ------------------------------------------- each check fails when it should

const SH: &str = r#"
log() { printf 'cluster-entrypoint: %s\n' "$*" >&2; }
    [ "$x" = "" ] || log "${action:-?}${arg:+ $arg}: ${reason:-}"
fail "$own_host is not in $HOSTS_FILE after 120 s: is kube-epmd running?"
log "joined the cluster through $arg"
"#;
const RS: &str = r#"
impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Wait(_) => "wait",
            Action::Start => "start",
            Action::Join { .. } => "join",
            Action::Seed => "seed",
            Action::Fail => "fail",
        }
    }
}
const STARTING: &str = "clustered before";
fn x() {
    plan_of(Action::Start, format!("{STARTING}; no other pod"));
    plan_of(Action::Join, format!("joining {target}"));
}
"#;

#[test]
fn log_line_check_catches_a_line_nobody_logs() {
    let ok = "x `cluster-entrypoint: join ejabberd@chat-0…: joining …` and\n\
              ```\n#   cluster-entrypoint: joined the cluster through ejabberd@chat-0.svc\n```\n\
              `cluster-entrypoint: chat-0.svc is not in /var/run/kube-epmd/hosts after 120 s: is kube-epmd running?`\n\
              `cluster-entrypoint: start: clustered before; no other pod`\n";
    fail_on(check_log_lines(ok, SH, RS));
    for wrong in [
        "`cluster-entrypoint: joining ejabberd@chat-0.xmpp-internal-svc`", // the old line
        "`cluster-entrypoint: … is not in /var/run/kube-epmd/hosts`",      // cut short
        "`cluster-entrypoint: remove ejabberd@chat-2: joining it`",        // no action remove here
        "```\n#   cluster-entrypoint: joined the cluster via ejabberd@chat-0\n```",
    ] {
        let p = check_log_lines(wrong, SH, RS);
        assert_eq!(p.len(), 1, "{wrong}: {p:?}");
    }
    // The plan line itself gone from the script: said so.
    let p = check_log_lines(ok, &SH.replace("${action", "${act"), RS);
    assert!(
        p.iter().any(|p| p.contains("no longer logs the plan")),
        "{p:?}"
    );
}

#[test]
fn reference_check_catches_missing_and_misplaced_sections() {
    let head = "# A\n\n## Joining, restarts, scaling\n\ntext\n\n## Backup and restore\n\n";
    let refs = "see \"Joining, restarts, scaling\" above, [x](#backup-and-restore), \
                (\"Backup and restore\" above), section \"A\", \"A\" above.\n";
    fail_on(check_references(&format!("{head}{refs}")));
    for wrong in [
        "\"Cluster lifecycle\" below",
        "\"Backup and restore\" below",
        "[x](#backup-restore)",
        "see \"Migration\"",
        "(\"Sizing\" below)",
    ] {
        let p = check_references(&format!("{head}{refs}{wrong}\n"));
        assert_eq!(p.len(), 1, "{wrong}: {p:?}");
    }
    // Headings in code fences do not count.
    let p = check_references(&format!(
        "```\n## Sizing\n```\n{head}{refs}see \"Sizing\"\n"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn cross_reference_check_catches_a_missing_heading() {
    let docs: BTreeMap<&str, String> = [
        (
            "README.md",
            "# R\n## Set-up\n## Joining, restarts, scaling\n".to_string(),
        ),
        (
            "BENCHMARKS.md",
            "## Kubernetes work vs EPMD answers: figures\n".to_string(),
        ),
    ]
    .into_iter()
    .collect();
    let good = "//! (README.md, \"Set-up\")\n# README \"Joining,\n# restarts, scaling\"\n\
                see BENCHMARKS.md, \"Kubernetes work vs EPMD answers\"\n";
    let files = vec![("a".to_string(), good.to_string())];
    assert_eq!(cross_references(good).len(), 3);
    fail_on(check_cross_references(&files, &docs));
    for wrong in [
        "README, \"Rotating the CA\"",
        "fail \"see README \\\"Migration\\\"\"",
    ] {
        let files = vec![("a".to_string(), wrong.to_string())];
        assert_eq!(check_cross_references(&files, &docs).len(), 1, "{wrong}");
    }
}

#[test]
fn metric_check_catches_unknown_names_and_label_values() {
    let exported = exported_metrics();
    for name in [
        "kube_epmd_cluster_plans_total",
        "kube_epmd_watch_healthy",
        "kube_epmd_tls_errors_total",
        "kube_epmd_registrations_refused_total",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    let actions = vec!["wait".to_string(), "fail".to_string()];
    let source = "\"forbidden\" \"unauthorized\"";
    let good = "`kube_epmd_tls_*` kube_epmd_cluster_plans_total{action=\"fail\"} \
                increase(kube_epmd_watch_errors_total{reason=~\"unauthorized|forbidden\"}[5m])";
    fail_on(check_metrics(
        &[("a".into(), good.into())],
        &exported,
        &actions,
        source,
    ));
    for wrong in [
        "kube_epmd_watch_errors", // the family, not the sample
        "kube_epmd_plans_total",  // no such metric
        "`kube_epmd_tcp_*`",      // no such family
        "kube_epmd_cluster_plans_total{action=\"set_aside\"}", // no such action
        "kube_epmd_watch_errors_total{reason=~\"forbidden|gone\"}", // no such reason
    ] {
        let p = check_metrics(&[("a".into(), wrong.into())], &exported, &actions, source);
        assert_eq!(p.len(), 1, "{wrong}: {p:?}");
    }
}

#[test]
#[cfg_attr(skip_kubectl, ignore = "needs kubectl >= 1.27 (KUBE_EPMD_TEST_SKIP)")]
fn sizing_and_monitoring_checks_catch_wrong_values() {
    let readme = read("README.md");
    let m = Manifests::load("deploy");
    assert!(check_sizing(&readme, &m).is_empty());
    let wrong = readme.replace("| `ejabberd` | 250m |", "| `ejabberd` | 500m |");
    assert_ne!(
        wrong, readme,
        "the sizing row of ejabberd moved: update this test"
    );
    assert_eq!(check_sizing(&wrong, &m).len(), 1);
    let gone = readme.replace("| `kube-epmd` |", "| `sidecar` |");
    assert_eq!(check_sizing(&gone, &m).len(), 1);

    let objs = rendered_objects("deploy/monitoring");
    let rules = read("deploy/monitoring/rules.yml");
    assert!(check_monitoring(&objs, &m, &rules).is_empty());
    let other_rules = rules.replacen("for: 5m", "for: 6m", 1);
    assert_eq!(check_monitoring(&objs, &m, &other_rules).len(), 1);
    let edit = |f: &dyn Fn(&mut Value)| -> Vec<String> {
        let mut objs = objs.clone();
        for o in &mut objs {
            if o["kind"] == "NetworkPolicy" {
                f(o);
            }
        }
        check_monitoring(&objs, &m, &rules)
    };
    assert_eq!(
        edit(&|o| o["spec"]["ingress"][0]["ports"][0]["port"] = 4369.into()).len(),
        1
    );
    assert_eq!(
        edit(&|o| o["spec"]["ingress"][0]["from"] = Value::Array(vec![])).len(),
        1
    );
    assert_eq!(
        edit(
            &|o| o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] = "x".into()
        )
        .len(),
        1
    );
    assert_eq!(
        edit(&|o| o["metadata"]["namespace"] = "default".into()).len(),
        1
    );
}

#[test]
fn glob_intersection() {
    let p = |s: &str| quote_pattern(s);
    assert!(intersects(
        &p("join a…: joining …"),
        &p("join …: joining …")
    ));
    assert!(intersects(&p("x…"), &p("xyz")));
    assert!(!intersects(&p("x…z"), &p("xy")));
    assert!(intersects(&p("N s"), &p("12 s")));
    assert!(!intersects(&p("joining a"), &p("join …: joining a")));
}
