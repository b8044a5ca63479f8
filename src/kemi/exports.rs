//! The KSR export list: the live `KSR` table an engine builds, joined with
//! the Kamailio signatures written in the `//!` tables at the top of each
//! `src/kemi/<mod>.rs` (compiled in with `include_str!`). Those tables are
//! the one source of truth for signatures: `sipshard kemi list`,
//! `sipshard check-script`, the `app_lua.api_list` RPC method and
//! docs/kemi.md (scripts/gen-kemi-doc.py) all read them, and a unit test
//! checks that every live function has a row and every row a live function.
//!
//! Table grammar (first two columns of a row that starts with a backtick):
//! - column 1: one or more backticked calls, `` `KSR.mod.name(a, b)` ``;
//!   a call without the `KSR.` prefix (`` `t_on_failure(fn)` ``) belongs to
//!   the first call's module; `KSR.dbg/info(msg)` lists alternative names
//!   with the same arguments. Backticked text without parentheses and text
//!   outside backticks are prose and ignored.
//! - column 2: `` `ret (type, type)` `` with ret `int`/`bool`/`xval`/`void`,
//!   types `int`/`str`, optional ones in `[...]`; or, without backticks,
//!   prose starting "sipshard extension" for a function Kamailio lacks
//!   (which a later column may say instead).

use std::collections::BTreeMap;
use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::services::{Services, SharedTables};
use super::{Engine, EngineConfig, Myself};
use crate::config::{AuthConfig, RegistrarConfig, ShardTuning};

/// Every module file whose `//!` table documents KSR functions. A new
/// module adds its line here (the export test names what is missing).
pub const DOC_SOURCES: &[(&str, &str)] = &[
    ("core", include_str!("core.rs")),
    ("sl", include_str!("sl.rs")),
    ("pv", include_str!("pv.rs")),
    ("kx", include_str!("kx.rs")),
    ("hdr", include_str!("hdr.rs")),
    ("auth", include_str!("auth.rs")),
    ("registrar", include_str!("registrar.rs")),
    ("tm", include_str!("tm.rs")),
    ("rr", include_str!("rr.rs")),
    ("siputils", include_str!("siputils.rs")),
    ("maxfwd", include_str!("maxfwd.rs")),
    ("tcpops", include_str!("tcpops.rs")),
    ("corex", include_str!("corex.rs")),
    ("htable", include_str!("htable.rs")),
    ("pike", include_str!("pike.rs")),
    ("permissions", include_str!("permissions.rs")),
    ("sanity", include_str!("sanity.rs")),
    ("nathelper", include_str!("nathelper.rs")),
    ("ipops", include_str!("ipops.rs")),
    ("textops", include_str!("textops.rs")),
    ("sqlops", include_str!("sqlops.rs")),
    ("ndb_redis", include_str!("ndb_redis.rs")),
    ("jsonrpcs", include_str!("jsonrpcs.rs")),
    ("sipjson", include_str!("sipjson.rs")),
    ("dialog", include_str!("dialog.rs")),
    ("dispatcher", include_str!("dispatcher.rs")),
    ("xhttp", include_str!("xhttp.rs")),
    ("websocket", include_str!("websocket.rs")),
];

/// One documented KSR function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Path below `KSR`: `tm.t_relay`, `info`, `x.exit`.
    pub name: String,
    /// `int`, `bool`, `xval`, `void`; `None` for an undocumented type.
    pub ret: Option<String>,
    /// (type, name) of each parameter; optional ones have `[ ]` around the type.
    pub params: Vec<(String, String)>,
    /// Not in Kamailio 5.6 (the row says "sipshard extension").
    pub extension: bool,
    /// The module file the row is in.
    pub file: &'static str,
}

impl Signature {
    /// Kamailio's KEMI doc style: `int KSR.sl.sl_send_reply(int code, str reason)`.
    pub fn line(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(t, n)| {
                if n.is_empty() {
                    t.clone()
                } else {
                    format!("{t} {n}")
                }
            })
            .collect();
        format!(
            "{} KSR.{}({})",
            self.ret.as_deref().unwrap_or("?"),
            self.name,
            params.join(", ")
        )
    }
}

/// The signatures of every [`DOC_SOURCES`] table, by name (a name in two
/// rows keeps the first).
pub fn signatures() -> BTreeMap<String, Signature> {
    let mut out = BTreeMap::new();
    for (file, src) in DOC_SOURCES {
        for s in parse_doc_table(file, src) {
            out.entry(s.name.clone()).or_insert(s);
        }
    }
    out
}

/// Backticked spans of `s`.
fn ticks(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// Table rows of the leading `//!` block of a module file.
pub fn parse_doc_table(file: &'static str, src: &str) -> Vec<Signature> {
    let mut out = Vec::new();
    for line in src.lines() {
        let Some(doc) = line.strip_prefix("//!") else {
            break;
        };
        let doc = doc.trim();
        if !doc.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = doc.split(" | ").collect();
        let (Some(c1), Some(c2)) = (cells.first(), cells.get(1)) else {
            continue;
        };
        let c1 = c1.trim_start_matches('|').trim();
        let (ret, types, extension) = parse_sig_cell(c2);
        // "sipshard extension" may also be said in the description column
        let extension = extension || cells[2..].iter().any(|c| c.contains("sipshard extension"));
        let mut module: Option<Option<String>> = None;
        for call in ticks(c1) {
            let Some((path, args)) = call.split_once('(') else {
                continue; // prose in backticks
            };
            let Some(args) = args.strip_suffix(')') else {
                continue;
            };
            let (prefix, names) = match path.strip_prefix("KSR.") {
                Some(p) => match p.rsplit_once('.') {
                    Some((m, n)) => (Some(m.to_string()), n),
                    None => (None, p),
                },
                None => (module.clone().flatten(), path),
            };
            if path.starts_with("KSR.") && module.is_none() {
                module = Some(prefix.clone());
            }
            let arg_names = split_args(args);
            for n in names.split('/') {
                if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let name = match &prefix {
                    Some(m) => format!("{m}.{n}"),
                    None => n.to_string(),
                };
                let params = pair_params(&types, &arg_names);
                out.push(Signature {
                    name,
                    ret: ret.clone(),
                    params,
                    extension,
                    file,
                });
            }
        }
    }
    out
}

/// `a, b[, c]` → `["a", "b", "[c]"]`.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut cur = String::new();
    let mut opt = false;
    for ch in args.chars() {
        match ch {
            '[' => {
                depth += 1;
                opt = true;
                flush(&mut cur, &mut out, opt && depth > 1);
            }
            ']' => depth = depth.saturating_sub(1),
            ',' => flush(&mut cur, &mut out, opt),
            c => cur.push(c),
        }
    }
    flush(&mut cur, &mut out, opt);
    out
}

fn flush(cur: &mut String, out: &mut Vec<String>, opt: bool) {
    let t = cur.trim();
    if !t.is_empty() {
        out.push(if opt { format!("[{t}]") } else { t.to_string() });
    }
    cur.clear();
}

/// Column 2: (ret, parameter types, extension).
fn parse_sig_cell(c: &str) -> (Option<String>, Vec<String>, bool) {
    let extension = c.contains("sipshard extension");
    for t in ticks(c) {
        let Some((ret, rest)) = t.split_once(' ') else {
            continue;
        };
        if !matches!(ret, "int" | "bool" | "xval" | "void" | "str") {
            continue;
        }
        let Some(inner) = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
        else {
            continue;
        };
        return (Some(ret.to_string()), split_args(inner), extension);
    }
    (None, Vec::new(), extension)
}

/// Types from column 2 with names from column 1 (`[str] uri` for an
/// optional one); names alone when column 2 has no types.
fn pair_params(types: &[String], names: &[String]) -> Vec<(String, String)> {
    let n = types.len().max(names.len());
    (0..n)
        .map(|i| {
            let t = types.get(i).cloned().unwrap_or_else(|| "?".into());
            let name = names
                .get(i)
                .map(|s| s.trim_matches(|c| c == '[' || c == ']').to_string())
                .unwrap_or_default();
            (t, name)
        })
        .collect()
}

/// The names (below `KSR`) of every function in the live `KSR` table:
/// `info`, `tm.t_relay`, `x.exit`. Internal `__` entries are left out.
pub fn live_names(lua: &Lua) -> Result<Vec<String>, String> {
    let ksr: Table = lua.globals().get("KSR").map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    walk(&ksr, "", 0, &mut out).map_err(|e| e.to_string())?;
    out.sort();
    Ok(out)
}

fn walk(t: &Table, prefix: &str, depth: usize, out: &mut Vec<String>) -> mlua::Result<()> {
    for pair in t.clone().pairs::<Value, Value>() {
        let (k, v) = pair?;
        let Value::String(k) = k else { continue };
        let k = k.to_string_lossy();
        if k.starts_with("__") {
            continue;
        }
        let name = if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Function(_) => out.push(name),
            Value::Table(sub) if depth < 2 => walk(&sub, &name, depth + 1, out)?,
            _ => {}
        }
    }
    Ok(())
}

/// An engine outside any server (no database, one shard, 127.0.0.1:5060),
/// for listing exports and checking scripts.
pub fn standalone_engine(script: &str, test_hooks: bool) -> Result<Engine, String> {
    let tuning = ShardTuning::default();
    let auth = AuthConfig::default();
    let reg = RegistrarConfig::default();
    // every optional module loaded, so the list shows all sipshard can export
    let mut config = crate::config::Config::embedded();
    config.permissions.enable = true;
    config.dispatcher.list_file = "(not loaded)".into();
    let tables = std::sync::Arc::new(SharedTables::new(1, &auth, &reg, 0).with_modules(&config));
    let services = Rc::new(Services::new(
        0, 1, tables, &auth, &reg, [0u8; 32], None, 0,
    )?);
    let local: std::net::SocketAddr = ([127, 0, 0, 1], 5060).into();
    Engine::new(&EngineConfig {
        shard_id: 0,
        shard_count: 1,
        script,
        script_name: "kemi-list",
        myself: Myself::new(local, &[]),
        server_header: "",
        tuning: &tuning,
        services,
        test_hooks,
        defines: &[],
        local_addr: local,
        route: Default::default(),
    })
}

/// The live export names of a standalone engine.
pub fn exported_names() -> Result<Vec<String>, String> {
    let eng = standalone_engine("function ksr_request_route() end", false)?;
    live_names(&eng.lua())
}

/// One line of `sipshard kemi list`.
#[derive(Clone, Debug)]
pub struct Export {
    pub name: String,
    pub signature: Option<Signature>,
}

impl Export {
    pub fn module(&self) -> &str {
        self.name.rsplit_once('.').map(|(m, _)| m).unwrap_or("")
    }

    /// The signature line, or `? KSR.name(?)` when the tables lack it.
    pub fn line(&self) -> String {
        match &self.signature {
            Some(s) => s.line(),
            None => format!("? KSR.{}(?)", self.name),
        }
    }
}

/// Every live export with its signature, sorted by name.
pub fn exports() -> Result<Vec<Export>, String> {
    let sigs = signatures();
    Ok(exported_names()?
        .into_iter()
        .map(|name| Export {
            signature: sigs.get(&name).cloned(),
            name,
        })
        .collect())
}

/// `sipshard kemi list`: one signature a line; with `markdown`, a table
/// per module; with `json`, Kamailio's `app_lua.api_list` shape.
pub fn render(list: &[Export], format: ListFormat) -> String {
    match format {
        ListFormat::Text => list.iter().map(|e| e.line() + "\n").collect(),
        ListFormat::Markdown => {
            let mut out = String::new();
            let mut cur: Option<&str> = None;
            for e in list {
                let m = e.module();
                if cur != Some(m) {
                    let title = if m.is_empty() { "KSR (core)" } else { m };
                    out.push_str(&format!(
                        "\n### {title}\n\n| function | signature |\n|---|---|\n"
                    ));
                    cur = Some(m);
                }
                let ext = match &e.signature {
                    Some(s) if s.extension => " (sipshard extension)",
                    _ => "",
                };
                out.push_str(&format!("| `KSR.{}` | `{}`{ext} |\n", e.name, e.line()));
            }
            out
        }
        ListFormat::Json => api_list_json(list).to_string() + "\n",
    }
}

/// Output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListFormat {
    Text,
    Markdown,
    Json,
}

/// `{"msize": n, "methods": [{"ret", "module", "name", "params"}]}` like
/// Kamailio's `app_lua.api_list`.
pub fn api_list_json(list: &[Export]) -> serde_json::Value {
    let methods: Vec<serde_json::Value> = list
        .iter()
        .map(|e| {
            let (module, name) = e.name.rsplit_once('.').unwrap_or(("", e.name.as_str()));
            let (ret, params) = match &e.signature {
                Some(s) => (
                    s.ret.clone().unwrap_or_else(|| "?".into()),
                    if s.params.is_empty() {
                        "none".to_string()
                    } else {
                        s.params
                            .iter()
                            .map(|(t, _)| t.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ),
                None => ("?".into(), "?".into()),
            };
            serde_json::json!({"ret": ret, "module": module, "name": name, "params": params})
        })
        .collect();
    serde_json::json!({"msize": methods.len(), "methods": methods})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_with_alternatives_and_relative_names() {
        let src = "//! x\n//!\n\
//! | KSR function | Kamailio signature | returns |\n\
//! |---|---|---|\n\
//! | `KSR.dbg/info(msg)` | `void (str)` | nothing |\n\
//! | `KSR.tm.t_on_reply(fn)` / `t_on_failure(fn)` | `int (str)` | 1 |\n\
//! | `KSR.corex.append_branch([uri[, q]])` | `int ([str, str])` | 1 |\n\
//! | `KSR.kx.get_ruri()` (+ `gete_`) | `xval ()` | s |\n\
//! | `KSR.sipshard_test.panic(text)` | sipshard extension, test only | - |\n\
use x;\n//! | `KSR.not.this()` | `int ()` | |\n";
        let s = parse_doc_table("t", src);
        let lines: Vec<String> = s.iter().map(Signature::line).collect();
        assert_eq!(
            lines,
            [
                "void KSR.dbg(str msg)",
                "void KSR.info(str msg)",
                "int KSR.tm.t_on_reply(str fn)",
                "int KSR.tm.t_on_failure(str fn)",
                "int KSR.corex.append_branch([str] uri, [str] q)",
                "xval KSR.kx.get_ruri()",
                "? KSR.sipshard_test.panic(? text)",
            ]
        );
        assert!(s[6].extension && !s[0].extension);
    }

    /// Every function in the live KSR table has a signature row and every
    /// row names a live function. A failure lists the names: add a row to
    /// the module's `//!` table (or the module to DOC_SOURCES), or remove it.
    #[test]
    fn every_export_has_a_signature_and_every_signature_an_export() {
        let eng = standalone_engine("function ksr_request_route() end", true).unwrap();
        let live = live_names(&eng.lua()).unwrap();
        let sigs = signatures();
        let undocumented: Vec<&String> = live.iter().filter(|n| !sigs.contains_key(*n)).collect();
        let dead: Vec<&String> = sigs.keys().filter(|n| !live.contains(n)).collect();
        assert!(
            undocumented.is_empty() && dead.is_empty(),
            "KSR functions without a signature row (add them to the //! table of \
             src/kemi/<mod>.rs, and the file to DOC_SOURCES): {undocumented:?}\n\
             signature rows without a live KSR function: {dead:?}"
        );
        let untyped: Vec<&String> = sigs
            .values()
            .filter(|s| s.ret.is_none() && !s.extension)
            .map(|s| &s.name)
            .collect();
        assert!(
            untyped.is_empty(),
            "rows without a `ret (types)` signature: {untyped:?}"
        );
    }

    #[test]
    fn lists_known_functions_with_kamailio_signatures() {
        let list = exports().unwrap();
        let text = render(&list, ListFormat::Text);
        assert!(text.contains("int KSR.tm.t_relay()\n"), "{text}");
        assert!(text.contains("int KSR.sl.sl_send_reply(int code, str reason)\n"));
        assert!(text.contains("void KSR.x.exit()\n"));
        assert!(!text.contains("sipshard_test"), "test hooks are not listed");
        let json = api_list_json(&list);
        assert_eq!(json["msize"].as_u64().unwrap() as usize, list.len());
    }
}
