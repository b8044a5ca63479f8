//! `sipshard check-script FILE`: a static check of a KSR Lua script against
//! what sipshard exports, in the spirit of Kamailio's
//! `misc/tools/kemi/lua/kemiluacheck.py` (which makes a luacheck config of
//! the KSR table so luacheck flags unknown fields).
//!
//! 1. The chunk is compiled without running it: a syntax error is reported
//!    with its line.
//! 2. Every `KSR.a.b(...)` call in the source (comments and strings are
//!    skipped) is looked up in the live export list
//!    ([`super::exports::exported_names`]); an unknown one is **missing**,
//!    with its line.
//! 3. Reading a name without calling it (`if KSR.rtpproxy then`) is a guard,
//!    not an error. A call into a module sipshard lacks is **guarded** (a
//!    note, not an error) when the file reads that module as a guard
//!    somewhere: in sipshard `KSR.<module>` is nil, so the guarded branch
//!    never runs. A call to a missing function of a module sipshard has is
//!    always missing. Unknown names that are only read are listed as notes.
//! 4. The script is then loaded once in a standalone engine (as at start-up:
//!    top-level code runs, `ksr_request_route` must exist).
//!
//! Exit status: 0 clean (notes allowed), 1 on a syntax error, a load error
//! or any missing call.
//!
//! `--strict` (any number of scripts): per script, everything sipshard does
//! not export grouped by module (`core` for `KSR.<name>`), guarded calls
//! and names only read included, so an operator sees at once what would
//! stop each script; exit status 1 when any script has something missing.

use std::collections::{BTreeSet, HashSet};

/// One `KSR.` reference in the source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KsrRef {
    /// Path below KSR: `tm.t_relay`.
    pub path: String,
    pub line: usize,
    /// Followed by a call (`(`, a string or a table constructor).
    pub call: bool,
}

/// A missing name and the lines that use it.
pub type NameLines = (String, Vec<usize>);

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    pub syntax_error: Option<String>,
    pub load_error: Option<String>,
    /// Calls sipshard does not export: (line, path).
    pub missing: Vec<(usize, String)>,
    /// Calls into an absent module the script guards: (line, path, module).
    pub guarded: Vec<(usize, String, String)>,
    /// Unknown names read without a call: (line, path).
    pub unknown_reads: Vec<(usize, String)>,
    pub calls: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.syntax_error.is_none() && self.load_error.is_none() && self.missing.is_empty()
    }

    /// The human report, one finding a line (`file:line: ...`).
    pub fn render(&self, file: &str) -> String {
        let mut out = String::new();
        if let Some(e) = &self.syntax_error {
            out.push_str(&format!("syntax error: {e}\n"));
            return out;
        }
        for (line, p) in &self.missing {
            out.push_str(&format!(
                "{file}:{line}: missing: KSR.{p}() is not exported by sipshard\n"
            ));
        }
        for (line, p, m) in &self.guarded {
            out.push_str(&format!(
                "{file}:{line}: note: KSR.{p}() is guarded (the script tests KSR.{m}, \
                 which sipshard lacks, so this call never runs)\n"
            ));
        }
        for (line, p) in &self.unknown_reads {
            out.push_str(&format!(
                "{file}:{line}: note: KSR.{p} is read but not exported (nil in sipshard)\n"
            ));
        }
        if let Some(e) = &self.load_error {
            out.push_str(&format!("load error: {e}\n"));
        }
        out.push_str(&format!(
            "{file}: {} KSR call(s), {} missing, {} guarded{}\n",
            self.calls,
            self.missing.len(),
            self.guarded.len(),
            if self.ok() { ", OK" } else { "" }
        ));
        out
    }
}

impl Report {
    /// Whether `--strict` finds something missing: a missing or guarded
    /// call, an unknown name read, or a syntax/load error.
    pub fn strict_ok(&self) -> bool {
        self.ok() && self.guarded.is_empty() && self.unknown_reads.is_empty()
    }

    /// What sipshard lacks, by module: (module, [(name, lines)]), sorted.
    pub fn missing_by_module(&self) -> Vec<(String, Vec<NameLines>)> {
        use std::collections::BTreeMap;
        let mut by: BTreeMap<String, BTreeMap<String, Vec<usize>>> = BTreeMap::new();
        let all = self
            .missing
            .iter()
            .map(|(l, p)| (*l, p))
            .chain(self.guarded.iter().map(|(l, p, _)| (*l, p)))
            // a guard (`if KSR.rtpproxy then`) shows as its guarded calls
            .chain(
                self.unknown_reads
                    .iter()
                    .filter(|(_, p)| !self.guarded.iter().any(|(_, _, m)| m == p))
                    .map(|(l, p)| (*l, p)),
            );
        for (line, path) in all {
            let (module, name) = match path.split_once('.') {
                Some((m, n)) => (m.to_string(), n.to_string()),
                None => ("core".to_string(), path.clone()),
            };
            let lines = by.entry(module).or_default().entry(name).or_default();
            if !lines.contains(&line) {
                lines.push(line);
            }
        }
        by.into_iter()
            .map(|(m, names)| (m, names.into_iter().collect()))
            .collect()
    }

    /// The `--strict` report of one script.
    pub fn render_strict(&self, file: &str) -> String {
        let mut out = String::new();
        if let Some(e) = &self.syntax_error {
            out.push_str(&format!("{file}: syntax error: {e}\n"));
            return out;
        }
        if let Some(e) = &self.load_error {
            out.push_str(&format!("{file}: load error: {e}\n"));
        }
        let groups = self.missing_by_module();
        if groups.is_empty() {
            out.push_str(&format!(
                "{file}: {} KSR call(s), nothing missing\n",
                self.calls
            ));
            return out;
        }
        let n: usize = groups.iter().map(|(_, v)| v.len()).sum();
        out.push_str(&format!(
            "{file}: {n} KSR name(s) missing in {} module(s):\n",
            groups.len()
        ));
        for (module, names) in &groups {
            let list: Vec<String> = names
                .iter()
                .map(|(name, lines)| {
                    let l: Vec<String> = lines.iter().map(usize::to_string).collect();
                    format!("{name} (line {})", l.join(", "))
                })
                .collect();
            out.push_str(&format!("  {module}: {}\n", list.join(", ")));
        }
        out
    }
}

/// `sipshard check-script --strict FILE...`: every script's missing names
/// by module; Ok(true) when none is missing anything.
pub fn run_cli_strict(files: &[std::path::PathBuf], load: bool) -> Result<bool, String> {
    let exports = super::exports::exported_names()?;
    let mut all_ok = true;
    for file in files {
        let src = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let name = file.display().to_string();
        let r = check(&src, &name, &exports, load);
        print!("{}", r.render_strict(&name));
        all_ok &= r.strict_ok();
    }
    Ok(all_ok)
}

/// Checks `source` (named `name` in messages) against `exports` (paths
/// below KSR, e.g. `tm.t_relay`). `load` also loads it in a standalone
/// engine.
pub fn check(source: &str, name: &str, exports: &[String], load: bool) -> Report {
    let mut r = Report::default();
    let lua = mlua::Lua::new();
    if let Err(e) = lua
        .load(source)
        .set_name(format!("@{name}"))
        .into_function()
    {
        r.syntax_error = Some(super::format_lua_error(&e));
        return r;
    }
    let known: HashSet<&str> = exports.iter().map(String::as_str).collect();
    // Every prefix of an export is a table sipshard has (`tm`, `x`).
    let mut tables: HashSet<String> = HashSet::new();
    for e in exports {
        let mut acc = String::new();
        for part in e.split('.').take(e.split('.').count().saturating_sub(1)) {
            if !acc.is_empty() {
                acc.push('.');
            }
            acc.push_str(part);
            tables.insert(acc.clone());
        }
    }
    let refs = ksr_refs(source);
    // Absent modules the script reads without calling (guards).
    let guards: BTreeSet<String> = refs
        .iter()
        .filter(|x| !x.call && !known.contains(x.path.as_str()) && !tables.contains(&x.path))
        .map(|x| x.path.clone())
        .collect();
    for x in &refs {
        let exists = known.contains(x.path.as_str()) || tables.contains(&x.path);
        if x.call {
            r.calls += 1;
            if known.contains(x.path.as_str()) {
                continue;
            }
            let module = x.path.split('.').next().unwrap_or("").to_string();
            let module_absent = !tables.contains(&module) && !known.contains(module.as_str());
            if module_absent && x.path.contains('.') && guards.contains(&module) {
                r.guarded.push((x.line, x.path.clone(), module));
            } else {
                r.missing.push((x.line, x.path.clone()));
            }
        } else if !exists {
            r.unknown_reads.push((x.line, x.path.clone()));
        }
    }
    if load {
        if let Err(e) = super::exports::standalone_engine(source, false) {
            r.load_error = Some(e);
        }
    }
    r
}

/// `sipshard check-script FILE`: prints the report; Ok(true) when clean.
pub fn run_cli(file: &std::path::Path, load: bool) -> Result<bool, String> {
    let src = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let exports = super::exports::exported_names()?;
    let name = file.display().to_string();
    let r = check(&src, &name, &exports, load);
    print!("{}", r.render(&name));
    Ok(r.ok())
}

/// Every `KSR.a.b` chain in Lua source, skipping comments and strings.
pub fn ksr_refs(src: &str) -> Vec<KsrRef> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    // The previous significant byte ('.' or ':' before KSR makes it a field).
    let mut prev: u8 = b' ';
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i += 2;
                if let Some(end) = long_bracket(b, i) {
                    line += count_nl(&b[i..end]);
                    i = end;
                } else {
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
            }
            b'[' if long_bracket(b, i).is_some() => {
                let end = long_bracket(b, i).unwrap_or(b.len());
                line += count_nl(&b[i..end]);
                i = end;
                prev = b'"';
            }
            b'"' | b'\'' => {
                i = skip_string(b, i, &mut line);
                prev = b'"';
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &src[start..i];
                if word == "KSR" && prev != b'.' && prev != b':' {
                    let at_line = line;
                    let mut path: Vec<&str> = Vec::new();
                    let mut j = i;
                    loop {
                        let k = skip_ws(b, j, &mut 0);
                        if b.get(k) == Some(&b'.') && b.get(k + 1) != Some(&b'.') {
                            let s = skip_ws(b, k + 1, &mut 0);
                            let e = ident_end(b, s);
                            if e == s {
                                break;
                            }
                            path.push(&src[s..e]);
                            j = e;
                        } else {
                            break;
                        }
                    }
                    if !path.is_empty() {
                        let k = skip_ws(b, j, &mut 0);
                        let call = matches!(b.get(k), Some(b'(' | b'"' | b'\'' | b'{'))
                            || (b.get(k) == Some(&b'[') && long_bracket(b, k).is_some());
                        let assign = b.get(k) == Some(&b'=') && b.get(k + 1) != Some(&b'=');
                        if !assign {
                            out.push(KsrRef {
                                path: path.join("."),
                                line: at_line,
                                call,
                            });
                        }
                        // Newlines inside the chain are rare; count them.
                        line += count_nl(&b[i..j]);
                        i = j;
                    }
                }
                prev = b'a';
            }
            c if c.is_ascii_whitespace() => i += 1,
            c => {
                prev = c;
                i += 1;
            }
        }
    }
    out
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    if i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'_') {
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
    }
    i
}

fn skip_ws(b: &[u8], mut i: usize, nl: &mut usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        if b[i] == b'\n' {
            *nl += 1;
        }
        i += 1;
    }
    i
}

fn count_nl(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

/// At `[`, `[=*[`: the index after the matching close bracket.
fn long_bracket(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let mut j = i + 1;
    let mut level = 0;
    while b.get(j) == Some(&b'=') {
        level += 1;
        j += 1;
    }
    if b.get(j) != Some(&b'[') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == b']' {
            let mut k = j + 1;
            let mut l = 0;
            while b.get(k) == Some(&b'=') {
                l += 1;
                k += 1;
            }
            if l == level && b.get(k) == Some(&b']') {
                return Some(k + 1);
            }
        }
        j += 1;
    }
    Some(b.len())
}

/// At a quote: the index after the closing quote.
fn skip_string(b: &[u8], i: usize, line: &mut usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => {
                if b.get(j + 1) == Some(&b'\n') {
                    *line += 1;
                }
                j += 2;
            }
            b'\n' => return j, // unfinished string: the compiler said so already
            c if c == q => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exports() -> Vec<String> {
        ["tm.t_relay", "sl.sl_send_reply", "x.exit", "info", "pv.get"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn finds_calls_and_reads_skipping_comments_and_strings() {
        let src = "-- KSR.commented.out()\n\
                   --[[ KSR.long.comment()\n]]\n\
                   local s = \"KSR.in_string()\" .. [[KSR.long_string()]]\n\
                   if KSR.rtpproxy then\n\
                     KSR.rtpproxy.rtpproxy_manage(\"co\")\n\
                   end\n\
                   KSR.tm.t_relay()\n\
                   KSR.info 'x'\n\
                   foo.KSR.bar()\n\
                   KSR.x.exit()\n";
        let refs = ksr_refs(src);
        let got: Vec<(usize, &str, bool)> = refs
            .iter()
            .map(|r| (r.line, r.path.as_str(), r.call))
            .collect();
        assert_eq!(
            got,
            [
                (5, "rtpproxy", false),
                (6, "rtpproxy.rtpproxy_manage", true),
                (8, "tm.t_relay", true),
                (9, "info", true),
                (11, "x.exit", true),
            ]
        );
    }

    #[test]
    fn reports_missing_calls_with_lines_and_guarded_ones_as_notes() {
        let src = "function ksr_request_route()\n\
                   if KSR.rtpproxy then KSR.rtpproxy.rtpproxy_manage('co') end\n\
                   KSR.tm.t_relayy()\n\
                   KSR.nathelper.fix_nated_contact()\n\
                   KSR.tm.t_relay()\n\
                   KSR.x.exit()\nend\n";
        let r = check(src, "s.lua", &exports(), false);
        assert_eq!(
            r.missing,
            [
                (3, "tm.t_relayy".to_string()),
                (4, "nathelper.fix_nated_contact".to_string())
            ]
        );
        assert_eq!(
            r.guarded,
            [(
                2,
                "rtpproxy.rtpproxy_manage".to_string(),
                "rtpproxy".to_string()
            )]
        );
        assert!(!r.ok());
        let text = r.render("s.lua");
        assert!(
            text.contains("s.lua:3: missing: KSR.tm.t_relayy()"),
            "{text}"
        );
        assert!(text.contains("s.lua:2: note:"), "{text}");
    }

    #[test]
    fn a_syntax_error_has_its_line() {
        let r = check(
            "x = 1\nfunction f(\n  y = \nend\n",
            "bad.lua",
            &exports(),
            false,
        );
        let e = r.syntax_error.clone().expect("syntax error");
        assert!(e.contains("bad.lua:3:"), "{e}");
        assert!(!r.ok());
    }

    #[test]
    fn a_clean_script_passes_and_loads() {
        let src = "function ksr_request_route()\n  KSR.sl.sl_send_reply(200, 'OK')\nend\n";
        let names = super::super::exports::exported_names().unwrap();
        let r = check(src, "ok.lua", &names, true);
        assert!(r.ok(), "{}", r.render("ok.lua"));
        assert_eq!(r.calls, 1);
        let r = check("x = 1\n", "noroute.lua", &names, true);
        assert!(r.load_error.unwrap().contains("ksr_request_route"));
    }
}
