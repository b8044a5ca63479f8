//! KSR.sqlops: raw SQL from the route (Kamailio `sqlops` module) over the
//! named connections of `[[sqlops]]`.
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.sqlops.sql_query(con, query, res)` | `int (str, str, str)` | 1 rows stored in result `res`; 2 no rows; 3 rows but `res` empty (discarded); -1 unknown connection, SQL error, timeout, queue full, or `sqlops_results_maxsize` results in use |
//! | `KSR.sqlops.sql_xquery(con, query, xavp)` | `int (str, str, str)` | 1 each row added as an item of `$xavp(xavp)` (first row at index 0, a field per column); 2 no rows; -1 as sql_query |
//! | `KSR.sqlops.sql_pvquery(con, query, pvs)` | `int (str, str, str)` | 1 the columns assigned to the pseudo-variables listed in `pvs` (`$var(a), $avp(b); $ru`: last row to first, so a `$var` ends with the first row; a NULL skips an `$avp`, unsets others); 2 no rows; -1 as sql_query, fewer pvs than columns, or a pv not writable |
//! | `KSR.sqlops.sql_query_async(con, query)` | `int (str, str)` | 1 queued (nobody waits; a failure is logged); -1 unknown connection or queue full |
//! | `KSR.sqlops.sql_result_free(res)` | `int (str)` | 1 (the result is emptied) |
//! | `KSR.sqlops.sql_num_rows(res)` | `int (str)` | rows of the result; -1 no such result |
//! | `KSR.sqlops.sql_num_columns(res)` | `int (str)` | columns of the result; -1 no such result |
//! | `KSR.sqlops.sql_is_null(res, row, col)` | `int (str, int, int)` | 1 NULL; 0 not NULL; -1 no such result, row or column |
//! | `KSR.sqlops.sql_result_get(res, row, col)` | `xval (str, int, int)` | the value (integer or string); nil when NULL or out of range |
//! | `KSR.sqlops.sql_result_gete(res, row, col)` | `xval (str, int, int)` | as sql_result_get, `""` instead of nil |
//! | `KSR.sqlops.sql_result_getz(res, row, col)` | `xval (str, int, int)` | as sql_result_get, 0 instead of nil |
//!
//! Pseudo-variables (through `KSR.pv`): `$dbr(res=>rows)`, `$dbr(res=>cols)`,
//! `$dbr(res=>[row,col])`, `$dbr(res=>colname[n])` (indexes may be
//! `$var(name)`), and `$sqlrows(con)`: rows the last query on `con` changed.
//!
//! A query suspends the route (never the shard) until the database answers
//! or the connection's `query_timeout_ms` passes; these waits are counted
//! (`sqlops.queries`, `sqlops.timeouts`, `sqlops.errors`) and timed (the
//! `sqlops_wait` histogram beside the routes in `kemi.route_latency`).
//! Results keep integers and strings as Kamailio does (other column types
//! read as text), at most `max_rows` rows each (more are dropped, counted in
//! `sqlops.rows_truncated`), at most `[db] sqlops_results_maxsize` names per
//! shard; like Kamailio's per-process results they stay until freed or
//! replaced.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Lua, Table};

use super::pv::{PvValue, Val};
use super::services::unix_now_s;
use super::Shared;
use crate::db::sqlops::{ResultSet, SqlValue};
use crate::db::DbError;
use crate::stats::Counter;

/// This shard's results and affected-row counts.
pub struct SqlState {
    results: RefCell<HashMap<String, ResultSet>>,
    affected: RefCell<HashMap<String, u64>>,
    wait_name: Arc<str>,
    log_s: Cell<u64>,
}

impl Default for SqlState {
    fn default() -> Self {
        SqlState {
            results: RefCell::new(HashMap::new()),
            affected: RefCell::new(HashMap::new()),
            wait_name: Arc::from("sqlops_wait"),
            log_s: Cell::new(0),
        }
    }
}

/// One warning a second at most.
fn warn_limited(s: &Shared, what: std::fmt::Arguments<'_>) {
    let now = unix_now_s();
    if s.sql.log_s.get() != now {
        s.sql.log_s.set(now);
        tracing::warn!(shard = s.shard_id, "sqlops: {what}");
    }
}

type S = mlua::String;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let s = shared.clone();
    t.set(
        "sql_query",
        lua.create_async_function(move |_, (con, q, res): (S, S, Option<S>)| {
            let s = s.clone();
            async move {
                let res = res.map(|r| r.to_string_lossy()).unwrap_or_default();
                Ok(sql_query(&s, &con.to_string_lossy(), q.to_string_lossy(), &res).await)
            }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_xquery",
        lua.create_async_function(move |_, (con, q, xavp): (S, S, S)| {
            let s = s.clone();
            async move {
                Ok(sql_xquery(
                    &s,
                    &con.to_string_lossy(),
                    q.to_string_lossy(),
                    &xavp.to_string_lossy(),
                )
                .await)
            }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_pvquery",
        lua.create_async_function(move |_, (con, q, pvs): (S, S, S)| {
            let s = s.clone();
            async move {
                Ok(sql_pvquery(
                    &s,
                    &con.to_string_lossy(),
                    q.to_string_lossy(),
                    &pvs.to_string_lossy(),
                )
                .await)
            }
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_query_async",
        lua.create_function(move |_, (con, q): (S, S)| {
            Ok(sql_query_async(
                &s,
                &con.to_string_lossy(),
                q.to_string_lossy(),
            ))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_result_free",
        lua.create_function(move |_, res: S| {
            let name = res.to_string_lossy();
            if let Some(r) = s.sql.results.borrow_mut().get_mut(&name) {
                *r = ResultSet::default();
            }
            Ok(1)
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_num_rows",
        lua.create_function(move |_, res: S| {
            Ok(with_result(&s, &res.to_string_lossy(), |r| r.rows.len() as i64).unwrap_or(-1))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_num_columns",
        lua.create_function(move |_, res: S| {
            Ok(with_result(&s, &res.to_string_lossy(), |r| r.columns.len() as i64).unwrap_or(-1))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sql_is_null",
        lua.create_function(move |_, (res, row, col): (S, i64, i64)| {
            Ok(
                with_result(&s, &res.to_string_lossy(), |r| match cell(r, row, col) {
                    Some(SqlValue::Null) => 1,
                    Some(_) => 0,
                    None => -1,
                })
                .unwrap_or(-1),
            )
        })?,
    )?;
    for (name, null) in [
        ("sql_result_get", Val::Null),
        ("sql_result_gete", Val::Str(Vec::new())),
        ("sql_result_getz", Val::Int(0)),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |lua, (res, row, col): (S, i64, i64)| {
                let v = with_result(&s, &res.to_string_lossy(), |r| {
                    cell(r, row, col).map(sql_val).unwrap_or(Val::Null)
                })
                .unwrap_or(Val::Null);
                match v {
                    Val::Null => null.clone().into_lua(lua),
                    v => v.into_lua(lua),
                }
            })?,
        )?;
    }
    ksr.set("sqlops", t)
}

fn with_result<R>(s: &Shared, name: &str, f: impl FnOnce(&ResultSet) -> R) -> Option<R> {
    s.sql.results.borrow().get(name).map(f)
}

fn cell(r: &ResultSet, row: i64, col: i64) -> Option<&SqlValue> {
    let row = usize::try_from(row).ok()?;
    let col = usize::try_from(col).ok()?;
    r.rows.get(row)?.get(col)
}

fn sql_val(v: &SqlValue) -> Val {
    match v {
        SqlValue::Null => Val::Null,
        SqlValue::Int(i) => Val::Int(*i),
        SqlValue::Str(b) => Val::Str(b.clone()),
    }
}

fn pv_value(v: &SqlValue) -> Option<PvValue> {
    match v {
        SqlValue::Null => None,
        SqlValue::Int(i) => Some(PvValue::Int(*i)),
        SqlValue::Str(b) => Some(PvValue::Str(b.clone())),
    }
}

/// Sends `sql` to connection `con` and waits (suspending the route); every
/// failure is counted and logged (rate-limited) here.
async fn run(s: &Rc<Shared>, con: &str, sql: String) -> Option<ResultSet> {
    let Some(handle) = s.services.sqlops.as_ref() else {
        s.counters.incr(Counter::SqlopsErrors);
        warn_limited(s, format_args!("no [[sqlops]] connection named {con:?}"));
        return None;
    };
    let Some(idx) = handle.con(con) else {
        s.counters.incr(Counter::SqlopsErrors);
        warn_limited(s, format_args!("no [[sqlops]] connection named {con:?}"));
        return None;
    };
    s.counters.incr(Counter::SqlopsQueries);
    let t0 = Instant::now();
    let sent = handle.query(idx, sql);
    let answer = match sent {
        Err(e) => Err(e),
        // The worker cuts the query at the timeout; the shard's own bound
        // (a little later) covers a queue that does not move at all.
        Ok(fut) => {
            let limit = handle.timeout(idx) + Duration::from_millis(50);
            crate::exec::timeout(limit, fut)
                .await
                .unwrap_or(Err(DbError::Timeout))
        }
    };
    s.record_route_time(&s.sql.wait_name, t0.elapsed());
    match answer {
        Ok(rs) => {
            if rs.truncated {
                s.counters.incr(Counter::SqlopsRowsTruncated);
                warn_limited(
                    s,
                    format_args!(
                        "result of a query on {con:?} cut at max_rows ({})",
                        rs.rows.len()
                    ),
                );
            }
            let mut affected = s.sql.affected.borrow_mut();
            if affected.len() < 256 || affected.contains_key(con) {
                affected.insert(con.to_owned(), rs.affected);
            }
            Some(rs)
        }
        Err(e) => {
            s.counters.incr(if matches!(e, DbError::Timeout) {
                Counter::SqlopsTimeouts
            } else {
                Counter::SqlopsErrors
            });
            warn_limited(s, format_args!("query on {con:?} failed: {e}"));
            None
        }
    }
}

/// True when result `name` may be stored (it exists, or there is room).
fn result_slot(s: &Shared, name: &str) -> bool {
    let results = s.sql.results.borrow();
    if results.contains_key(name) || results.len() < s.services.sqlops_results_max {
        return true;
    }
    drop(results);
    s.counters.incr(Counter::SqlopsResultsFull);
    warn_limited(
        s,
        format_args!(
            "result {name:?} refused: {} results in use ([db] sqlops_results_maxsize)",
            s.services.sqlops_results_max
        ),
    );
    false
}

fn has_rows(rs: &ResultSet) -> bool {
    !rs.rows.is_empty() && !rs.columns.is_empty()
}

async fn sql_query(s: &Rc<Shared>, con: &str, sql: String, res: &str) -> i32 {
    if !res.is_empty() {
        if !result_slot(s, res) {
            return -1;
        }
        // As Kamailio: the container is emptied before the query runs.
        s.sql
            .results
            .borrow_mut()
            .insert(res.to_owned(), ResultSet::default());
    }
    let Some(rs) = run(s, con, sql).await else {
        return -1;
    };
    let rows = has_rows(&rs);
    if res.is_empty() {
        return if rows { 3 } else { 2 };
    }
    s.sql.results.borrow_mut().insert(res.to_owned(), rs);
    if rows {
        1
    } else {
        2
    }
}

async fn sql_xquery(s: &Rc<Shared>, con: &str, sql: String, xavp: &str) -> i32 {
    let Some(rs) = run(s, con, sql).await else {
        return -1;
    };
    if !has_rows(&rs) {
        return 2;
    }
    let pushed = s.with_msg(|m| {
        // Last row first: each item goes in front, so row 0 ends at index 0.
        rs.rows.iter().rev().all(|row| {
            let fields = rs
                .columns
                .iter()
                .zip(row)
                .filter_map(|(c, v)| pv_value(v).map(|v| (c.clone(), v)))
                .collect();
            super::pv::xavp_push_fields(m, xavp, fields)
        })
    });
    match pushed {
        Ok(true) => 1,
        _ => -1,
    }
}

/// `$var(a), $avp(b); $ru`: split at `,` and `;` outside parentheses.
fn pv_list(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0u32;
    let mut cur = String::new();
    for ch in text.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | ';' if depth == 0 => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

async fn sql_pvquery(s: &Rc<Shared>, con: &str, sql: String, pvs: &str) -> i32 {
    let names = pv_list(pvs);
    if names.is_empty() || names.len() > 64 {
        return -1;
    }
    let Some(rs) = run(s, con, sql).await else {
        return -1;
    };
    if !has_rows(&rs) {
        return 2;
    }
    if names.len() < rs.columns.len() {
        warn_limited(
            s,
            format_args!(
                "sql_pvquery: {} columns, {} pvs",
                rs.columns.len(),
                names.len()
            ),
        );
        return -1;
    }
    for row in rs.rows.iter().rev() {
        for (name, v) in names.iter().zip(row) {
            let value = pv_value(v);
            if value.is_none() && name.starts_with("$avp") {
                continue;
            }
            match super::pv::set(s, name, value) {
                Ok(true) => {}
                _ => return -1,
            }
        }
    }
    1
}

fn sql_query_async(s: &Rc<Shared>, con: &str, sql: String) -> i32 {
    let Some((handle, idx)) = s
        .services
        .sqlops
        .as_ref()
        .and_then(|h| h.con(con).map(|i| (h, i)))
    else {
        s.counters.incr(Counter::SqlopsErrors);
        warn_limited(s, format_args!("no [[sqlops]] connection named {con:?}"));
        return -1;
    };
    match handle.query_detached(idx, sql) {
        Ok(()) => {
            s.counters.incr(Counter::SqlopsAsyncQueries);
            1
        }
        Err(e) => {
            s.counters.incr(Counter::SqlopsErrors);
            warn_limited(s, format_args!("sql_query_async on {con:?}: {e}"));
            -1
        }
    }
}

/// `$dbr(res=>rows|cols|[r,c]|colname[n])`.
pub(super) fn pv_dbr(s: &Shared, arg: &str) -> Val {
    let Some((name, key)) = arg.split_once("=>") else {
        return Val::Null;
    };
    let results = s.sql.results.borrow();
    let r = results.get(name.trim());
    let key = key.trim();
    match key {
        "rows" => return Val::Int(r.map_or(0, |r| r.rows.len() as i64)),
        "cols" => return Val::Int(r.map_or(0, |r| r.columns.len() as i64)),
        _ => {}
    }
    let Some(r) = r else {
        return Val::Null;
    };
    if let Some(n) = key
        .strip_prefix("colname[")
        .and_then(|k| k.strip_suffix(']'))
    {
        return super::pv::index_arg(s, n)
            .and_then(|n| usize::try_from(n).ok())
            .and_then(|n| r.columns.get(n))
            .map_or(Val::Null, |c| Val::Str(c.as_bytes().to_vec()));
    }
    if let Some((row, col)) = key
        .strip_prefix('[')
        .and_then(|k| k.strip_suffix(']'))
        .and_then(|k| k.split_once(','))
    {
        return match (super::pv::index_arg(s, row), super::pv::index_arg(s, col)) {
            (Some(row), Some(col)) => cell(r, row, col).map_or(Val::Null, sql_val),
            _ => Val::Null,
        };
    }
    Val::Null
}

/// `$sqlrows(con)`.
pub(super) fn pv_sqlrows(s: &Shared, con: &str) -> Val {
    Val::Int(
        s.sql
            .affected
            .borrow()
            .get(con.trim())
            .map_or(0, |n| i64::try_from(*n).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pv_lists_split_outside_parentheses() {
        assert_eq!(
            pv_list("$var(a), $avp(col2), $xavp(item[0]=>s); $ru"),
            vec!["$var(a)", "$avp(col2)", "$xavp(item[0]=>s)", "$ru"]
        );
        assert!(pv_list(" ; ,").is_empty());
    }

    #[test]
    fn cells_are_bounds_checked() {
        let r = ResultSet {
            columns: vec!["a".into()],
            rows: vec![vec![SqlValue::Int(7)]],
            ..Default::default()
        };
        assert_eq!(cell(&r, 0, 0), Some(&SqlValue::Int(7)));
        assert_eq!(cell(&r, 1, 0), None);
        assert_eq!(cell(&r, 0, -1), None);
    }
}
