//! KSR.htable: shared hash tables (Kamailio `htable` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.htable.sht_get(table, key)` | `xval (str, str)` | string or integer; the table's `initval` for an absent key when set, else nil (also for an unknown table) |
//! | `KSR.htable.sht_gete(table, key)` | `xval (str, str)` | like sht_get, `""` instead of nil |
//! | `KSR.htable.sht_getw(table, key)` | `xval (str, str)` | like sht_get, `"<null>"` instead of nil (as Kamailio 5.6 prints null) |
//! | `KSR.htable.sht_sets(table, key, value)` | `int (str, str, str)` | 1; -1 unknown table or table full (`max_items`) |
//! | `KSR.htable.sht_seti(table, key, value)` | `int (str, str, int)` | 1; -1 unknown table or table full |
//! | `KSR.htable.sht_setex(table, key, expire)` | `int (str, str, int)` | 1 (expiry of an existing item set to now+expire, 0 = never; only on tables with `autoexpire`); -1 unknown table |
//! | `KSR.htable.sht_setxs(table, key, value, expire)` | `int (str, str, str, int)` | 1; -1 unknown table or table full |
//! | `KSR.htable.sht_setxi(table, key, value, expire)` | `int (str, str, int, int)` | 0 on success (as Kamailio 5.6); -1 unknown table or table full |
//! | `KSR.htable.sht_rm(table, key)` | `int (str, str)` | 1; -1 unknown table |
//! | `KSR.htable.sht_rm_name_re(table, regexp)` | `int (str, str)` | 1 (also for an unknown table); -1 bad regexp |
//! | `KSR.htable.sht_rm_value_re(table, regexp)` | `int (str, str)` | 1 (also for an unknown table); -1 bad regexp |
//! | `KSR.htable.sht_rm_name(table, op, value)` | `int (str, str, str)` | 1; -1 unknown table, op not `re`/`sw`, empty value or bad regexp |
//! | `KSR.htable.sht_rm_value(table, op, value)` | `int (str, str, str)` | as sht_rm_name, on string values |
//! | `KSR.htable.sht_match_name(table, op, value)` | `int (str, str, str)` | 1 some key matches (`eq`, `ne`, `re`, `sw`); -1 none, unknown table or op, empty value, bad regexp |
//! | `KSR.htable.sht_match_str_value(table, op, value)` | `int (str, str, str)` | as sht_match_name, on string values |
//! | `KSR.htable.sht_inc(table, key)` | `int (str, str)` | the new value; an absent key starts at `initval`; -255 unknown table, string value, or absent key without `initval` |
//! | `KSR.htable.sht_dec(table, key)` | `int (str, str)` | as sht_inc, minus one |
//! | `KSR.htable.sht_is_null(table, key)` | `int (str, str)` | 1 absent; -1 present; -2 table has `initval`; 2 unknown table |
//! | `KSR.htable.sht_reset(table)` | `int (str)` | 0 emptied (as Kamailio 5.6); -1 unknown table |
//! | `KSR.htable.sht_iterator_start(iname, table)` | `int (str, str)` | 1; -1 unknown table, 4 iterators already open, name empty or 32+ bytes |
//! | `KSR.htable.sht_iterator_next(iname)` | `int (str)` | 1 moved to the next item (`$shtitkey(iname)`, `$shtitval(iname)`); -1 no more items or no such iterator |
//! | `KSR.htable.sht_iterator_end(iname)` | `int (str)` | 1; -1 no such iterator |
//! | `KSR.htable.sht_iterator_rm(iname)` | `int (str)` | 1 current item removed and moved to the next; -2 removed, no next item; -1 no current item |
//! | `KSR.htable.sht_iterator_sets(iname, value)` | `int (str, str)` | 1 current item set; -1 no current item or not stored |
//! | `KSR.htable.sht_iterator_seti(iname, value)` | `int (str, int)` | as sht_iterator_sets |
//! | `KSR.htable.sht_iterator_setex(iname, expire)` | `int (str, int)` | 1 current item's expiry set; -1 no current item |
//! | `KSR.htable.sht_lock(table, key)` | `int (str, str)` | 1; sipshard: no lock is held (every htable call is atomic on its own, and a route never holds a lock another core waits for) |
//! | `KSR.htable.sht_unlock(table, key)` | `int (str, str)` | 1; see sht_lock |
//!
//! Pseudo-variables (through `KSR.pv`): `$sht(table=>key)` reads like
//! sht_get, `KSR.pv.sets/seti` set it, `KSR.pv.unset` removes it;
//! `$shtex(table=>key)` reads the seconds until the item expires (0 = never
//! or absent), `KSR.pv.seti` on it is sht_setex; `$shtinc(table=>key)` reads
//! as sht_inc; `$shtitkey(iname)` / `$shtitval(iname)` read an iterator's
//! current item; `$shtcn(table=>expr)` / `$shtcv(table=>expr)` count the
//! items whose names / string values match `expr` (`~~regexp` or a bare
//! regexp, `~%suffix`, `%~prefix`, `==text`, `eqN` for integer values,
//! `**` all). The key is taken literally (build it in Lua, e.g.
//! `"$sht(ipban=>" .. ip .. ")"`).
//!
//! Iterators belong to the shard's VM (at most 4 open, as Kamailio) and walk
//! a snapshot of the table's keys taken at sht_iterator_start, reading each
//! item live; unlike Kamailio they hold no lock, so other shards may change
//! the table meanwhile (a key removed since is skipped).
//!
//! Tables are declared in the config (`[[htable]]`, Kamailio's `htable`
//! modparam attributes as keys) and shared by every shard: each is
//! lock-striped, and each operation locks one stripe (a scan over the table
//! one stripe at a time). Expiry as Kamailio: only tables with `autoexpire`
//! expire items, `autoexpire` seconds after the last set (`updateexpire`) or
//! at the time a sht_setx*/sht_setex call gave; an expired item reads as
//! absent at once and is removed by the shard's periodic sweep or when a set
//! finds the table full. Not implemented: `$shtrecord`, DMQ
//! replication, `dbmode=1`.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use mlua::{Lua, Table, Value};

use super::services::unix_now_s;
use super::Shared;
use crate::config::HtableDef;
use crate::db::HtableRow;
use crate::partition::Striped;

/// Returned by sht_inc/sht_dec when there is no integer to change (Kamailio's
/// `KSR_HT_KEMI_NOINTVAL`).
pub const NOINTVAL: i64 = -255;
/// Longest regular expression accepted (compiled size is bounded as well).
const RE_LEN_MAX: usize = 1024;
/// Longest key and string value stored.
pub const KEY_LEN_MAX: usize = 4096;
pub const VALUE_LEN_MAX: usize = 65_536;

/// An item's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HtValue {
    Int(i64),
    Str(String),
}

#[derive(Clone, Debug)]
struct Item {
    value: HtValue,
    /// Unix seconds; 0 = never (only looked at on `autoexpire` tables).
    expire: u64,
}

/// How sht_match_* / sht_rm_name compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Ne,
    Re,
    Sw,
}

impl MatchOp {
    pub fn parse(op: &str) -> Option<MatchOp> {
        match op {
            "eq" => Some(MatchOp::Eq),
            "ne" => Some(MatchOp::Ne),
            "re" => Some(MatchOp::Re),
            "sw" => Some(MatchOp::Sw),
            _ => None,
        }
    }
}

/// A compiled matcher (a bad regexp is `None`).
enum Matcher<'a> {
    Eq(&'a str),
    Ne(&'a str),
    Sw(&'a str),
    Re(regex::Regex),
}

impl Matcher<'_> {
    fn new(op: MatchOp, val: &str) -> Option<Matcher<'_>> {
        Some(match op {
            MatchOp::Eq => Matcher::Eq(val),
            MatchOp::Ne => Matcher::Ne(val),
            MatchOp::Sw => Matcher::Sw(val),
            MatchOp::Re => Matcher::Re(compile_re(val)?),
        })
    }

    fn is_match(&self, s: &str) -> bool {
        match self {
            Matcher::Eq(v) => s == *v,
            Matcher::Ne(v) => s != *v,
            Matcher::Sw(v) => s.starts_with(v),
            Matcher::Re(re) => re.is_match(s),
        }
    }
}

/// POSIX-extended-like, case-insensitive (Kamailio compiles with
/// `REG_EXTENDED | REG_ICASE`), bounded in length and compiled size.
fn compile_re(re: &str) -> Option<regex::Regex> {
    if re.is_empty() || re.len() > RE_LEN_MAX {
        return None;
    }
    regex::RegexBuilder::new(re)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .ok()
}

/// One hash table.
pub struct Htable {
    pub def: HtableDef,
    stripes: Striped<HashMap<String, Item>>,
    items: AtomicUsize,
    /// Sets refused because the table was full.
    pub full_errors: AtomicU64,
    /// Unix second of the last "table full" log line (one per second).
    last_full_log_s: AtomicU64,
}

impl Htable {
    pub fn new(def: HtableDef) -> Htable {
        let slots = 1usize << def.size.clamp(2, 14);
        Htable {
            stripes: Striped::new(slots.min(super::services::STRIPES), |_| HashMap::new()),
            def,
            items: AtomicUsize::new(0),
            full_errors: AtomicU64::new(0),
            last_full_log_s: AtomicU64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// Items stored (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.items.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expires(&self) -> bool {
        self.def.autoexpire > 0
    }

    fn is_expired(&self, it: &Item, now: u64) -> bool {
        self.expires() && it.expire != 0 && it.expire < now
    }

    /// The value of `key`, if present and not expired (no `initval`).
    pub fn get_raw(&self, key: &str, now: u64) -> Option<HtValue> {
        let stripe = self.stripes.get(key.as_bytes());
        stripe
            .get(key)
            .filter(|it| !self.is_expired(it, now))
            .map(|it| it.value.clone())
    }

    /// sht_get: the value, else `initval`, else `None`.
    pub fn get(&self, key: &str, now: u64) -> Option<HtValue> {
        self.get_raw(key, now)
            .or_else(|| self.def.initval.map(HtValue::Int))
    }

    /// Seconds until `key` expires (0: never, absent, or a table without
    /// autoexpire), as `$shtex`.
    pub fn expire_in(&self, key: &str, now: u64) -> u64 {
        let stripe = self.stripes.get(key.as_bytes());
        match stripe.get(key) {
            Some(it) if self.expires() && it.expire != 0 && !self.is_expired(it, now) => {
                it.expire - now
            }
            _ => 0,
        }
    }

    /// A full table is swept of its expired items (one stripe locked at a
    /// time) before a set looks for room; call without holding a stripe.
    fn sweep_if_full(&self, now: u64) {
        if self.items.load(Ordering::Relaxed) >= self.def.max_items {
            self.sweep(0, 1, now);
        }
    }

    /// Counts one new item: false when the table is full.
    fn reserve(&self, now: u64) -> bool {
        let mut cur = self.items.load(Ordering::Relaxed);
        loop {
            if cur >= self.def.max_items {
                self.full_errors.fetch_add(1, Ordering::Relaxed);
                let last = self.last_full_log_s.swap(now, Ordering::Relaxed);
                if last != now {
                    tracing::warn!(
                        table = %self.def.name,
                        max_items = self.def.max_items,
                        "htable full: item not stored"
                    );
                }
                return false;
            }
            match self.items.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now_cur) => cur = now_cur,
            }
        }
    }

    fn sweep_map(&self, map: &mut HashMap<String, Item>, now: u64) -> usize {
        if !self.expires() {
            return 0;
        }
        let before = map.len();
        map.retain(|_, it| !self.is_expired(it, now));
        let n = before - map.len();
        self.items.fetch_sub(n, Ordering::Relaxed);
        n
    }

    /// Sets `key` (Kamailio's `ht_set_cell_ex`): `exv` > 0 sets the expiry
    /// to now+exv, else an update keeps it unless `updateexpire`, and a new
    /// item gets now+autoexpire. False when the table is full or the key or
    /// value is too long.
    pub fn set(&self, key: &str, value: HtValue, exv: i64, now: u64) -> bool {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return false;
        }
        if let HtValue::Str(s) = &value {
            if s.len() > VALUE_LEN_MAX {
                return false;
            }
        }
        let auto = if self.expires() {
            now + self.def.autoexpire
        } else {
            0
        };
        let given = (exv > 0).then(|| now.saturating_add(exv as u64));
        self.sweep_if_full(now);
        let mut stripe = self.stripes.get(key.as_bytes());
        if let Some(it) = stripe.get_mut(key) {
            it.value = value;
            match given {
                Some(e) => it.expire = e,
                None if self.def.updateexpire => it.expire = auto,
                None => {}
            }
            return true;
        }
        if !self.reserve(now) {
            return false;
        }
        stripe.insert(
            key.to_string(),
            Item {
                value,
                expire: given.unwrap_or(auto),
            },
        );
        true
    }

    /// sht_setex: the expiry of an existing item (0 = never). Only tables
    /// with autoexpire keep expiries, as Kamailio.
    pub fn set_expire(&self, key: &str, exv: i64, now: u64) {
        if !self.expires() {
            return;
        }
        let mut stripe = self.stripes.get(key.as_bytes());
        if let Some(it) = stripe.get_mut(key) {
            it.expire = if exv > 0 {
                now.saturating_add(exv as u64)
            } else {
                0
            };
        }
    }

    /// Removes `key`; true when it was there.
    pub fn remove(&self, key: &str) -> bool {
        let removed = self.stripes.get(key.as_bytes()).remove(key).is_some();
        if removed {
            self.items.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// sht_inc/sht_dec (Kamailio's `ht_cell_value_add`): the new value, or
    /// `None` when there is no integer to change.
    pub fn add(&self, key: &str, delta: i64, now: u64) -> Option<i64> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return None;
        }
        let auto = if self.expires() {
            now + self.def.autoexpire
        } else {
            0
        };
        self.sweep_if_full(now);
        let mut stripe = self.stripes.get(key.as_bytes());
        if let Some(it) = stripe.get_mut(key) {
            if self.expires() && it.expire != 0 && it.expire < now {
                // Expired: a table with an integer initval starts afresh.
                let init = self.def.initval?;
                it.value = HtValue::Int(init);
            }
            let HtValue::Int(n) = &mut it.value else {
                return None;
            };
            *n = n.wrapping_add(delta);
            let v = *n;
            if self.def.updateexpire {
                it.expire = auto;
            }
            return Some(v);
        }
        let init = self.def.initval?;
        if !self.reserve(now) {
            return None;
        }
        let v = init.wrapping_add(delta);
        stripe.insert(
            key.to_string(),
            Item {
                value: HtValue::Int(v),
                expire: auto,
            },
        );
        Some(v)
    }

    /// True when some live item's name (`values` false) or string value
    /// matches. `None`: bad regexp or empty value.
    pub fn matches(&self, op: MatchOp, val: &str, values: bool, now: u64) -> Option<bool> {
        if val.is_empty() {
            return None;
        }
        if op == MatchOp::Eq && !values {
            return Some(self.get_raw(val, now).is_some());
        }
        let m = Matcher::new(op, val)?;
        for i in 0..self.stripes.parts() {
            let stripe = self.stripes.at(i);
            let hit = stripe.iter().any(|(k, it)| {
                !self.is_expired(it, now)
                    && match (values, &it.value) {
                        (false, _) => m.is_match(k),
                        (true, HtValue::Str(s)) => m.is_match(s),
                        (true, HtValue::Int(_)) => false,
                    }
            });
            if hit {
                return Some(true);
            }
        }
        Some(false)
    }

    /// `$shtcn` / `$shtcv` (`values`): how many live items' names (string
    /// values) match `expr`: `~~re` (also a bare `re`), `~%suffix`,
    /// `%~prefix`, `==text`, `eqN` (integer values equal to N; names: 0),
    /// `**` (every item). A bad regexp counts 0.
    pub fn count(&self, expr: &str, values: bool, now: u64) -> i64 {
        enum Op {
            Re(regex::Regex),
            Suffix,
            Prefix,
            Eq,
            IntEq(i64),
            All,
        }
        let (op, arg) = match expr.get(..2) {
            Some("**") => (Op::All, ""),
            Some("~~") | Some("~%") | Some("%~") | Some("==") | Some("eq") if expr.len() <= 2 => {
                return 0
            }
            Some("~~") => match compile_re(&expr[2..]) {
                Some(re) => (Op::Re(re), ""),
                None => return 0,
            },
            Some("~%") => (Op::Suffix, &expr[2..]),
            Some("%~") => (Op::Prefix, &expr[2..]),
            Some("==") => (Op::Eq, &expr[2..]),
            Some("eq") => {
                if !values {
                    return 0;
                }
                (Op::IntEq(expr[2..].trim().parse().unwrap_or(0)), "")
            }
            _ => match compile_re(expr) {
                Some(re) => (Op::Re(re), ""),
                None => return 0,
            },
        };
        let mut n = 0i64;
        for i in 0..self.stripes.parts() {
            let stripe = self.stripes.at(i);
            for (k, it) in stripe.iter() {
                if self.is_expired(it, now) {
                    continue;
                }
                let text = match (values, &it.value) {
                    (false, _) => Some(k.as_str()),
                    (true, HtValue::Str(s)) => Some(s.as_str()),
                    (true, HtValue::Int(_)) => None,
                };
                let hit = match (&op, text) {
                    (Op::All, _) => true,
                    (Op::IntEq(want), _) => it.value == HtValue::Int(*want),
                    (_, None) => false,
                    (Op::Re(re), Some(t)) => re.is_match(t),
                    (Op::Suffix, Some(t)) => t.ends_with(arg),
                    (Op::Prefix, Some(t)) => t.starts_with(arg),
                    (Op::Eq, Some(t)) => t == arg,
                };
                n += i64::from(hit);
            }
        }
        n
    }

    /// Removes the items whose name (or string value) matches; `None`: bad
    /// regexp or empty value. Returns how many were removed.
    pub fn remove_matching(&self, op: MatchOp, val: &str, values: bool) -> Option<usize> {
        if val.is_empty() {
            return None;
        }
        let m = Matcher::new(op, val)?;
        let mut removed = 0;
        for i in 0..self.stripes.parts() {
            let mut stripe = self.stripes.at(i);
            let before = stripe.len();
            stripe.retain(|k, it| match (values, &it.value) {
                (false, _) => !m.is_match(k),
                (true, HtValue::Str(s)) => !m.is_match(s),
                (true, HtValue::Int(_)) => true,
            });
            removed += before - stripe.len();
        }
        self.items.fetch_sub(removed, Ordering::Relaxed);
        Some(removed)
    }

    /// Empties the table (sht_reset, `htable.flush`).
    pub fn reset(&self) {
        for i in 0..self.stripes.parts() {
            let mut stripe = self.stripes.at(i);
            let n = stripe.len();
            stripe.clear();
            self.items.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Removes expired items from stripes `shard, shard+shards, ...`.
    pub fn sweep(&self, shard: usize, shards: usize, now: u64) -> usize {
        if !self.expires() {
            return 0;
        }
        self.stripes
            .parts_of(shard, shards)
            .map(|i| self.sweep_map(&mut self.stripes.at(i), now))
            .sum()
    }

    /// Live items as (key, value, expire), at most `max`, sorted by key.
    pub fn dump(&self, now: u64, max: usize) -> (Vec<(String, HtValue, u64)>, bool) {
        let mut out = Vec::new();
        let mut truncated = false;
        for i in 0..self.stripes.parts() {
            let stripe = self.stripes.at(i);
            for (k, it) in stripe.iter() {
                if self.is_expired(it, now) {
                    continue;
                }
                if out.len() >= max {
                    truncated = true;
                    break;
                }
                out.push((k.clone(), it.value.clone(), it.expire));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        (out, truncated)
    }

    /// Loads `dbtable` rows (Kamailio's layout): key_type 1 builds arrays
    /// `name[n]` plus `name::size`; value_type 1 is an integer. Returns
    /// (loaded, skipped).
    pub fn load_rows(&self, rows: &[HtableRow], now: u64) -> (usize, usize) {
        let mut loaded = 0;
        let mut skipped = 0;
        let mut arrays: Vec<(String, i64)> = Vec::new();
        for r in rows {
            let value = if r.value_type == 1 {
                match r.key_value.trim().parse::<i64>() {
                    Ok(n) => HtValue::Int(n),
                    Err(_) => {
                        skipped += 1;
                        continue;
                    }
                }
            } else {
                HtValue::Str(r.key_value.clone())
            };
            let key = if r.key_type == 1 {
                let n = match arrays.iter_mut().find(|(k, _)| *k == r.key_name) {
                    Some((_, n)) => {
                        *n += 1;
                        *n - 1
                    }
                    None => {
                        arrays.push((r.key_name.clone(), 1));
                        0
                    }
                };
                format!("{}[{n}]", r.key_name)
            } else {
                r.key_name.clone()
            };
            // db_expires: the stored absolute expiry; an expired row is skipped.
            let exv = if self.def.db_expires && r.expires > 0 {
                let at = r.expires as u64;
                if at < now {
                    skipped += 1;
                    continue;
                }
                (at - now).max(1) as i64
            } else {
                0
            };
            if self.set(&key, value, exv, now) {
                loaded += 1;
            } else {
                skipped += 1;
            }
        }
        for (name, n) in arrays {
            if self.set(&format!("{name}::size"), HtValue::Int(n), 0, now) {
                loaded += 1;
            }
        }
        (loaded, skipped)
    }
}

/// Every declared table, shared by all shards.
#[derive(Default)]
pub struct Htables {
    tables: Vec<Htable>,
}

impl Htables {
    pub fn new(defs: &[HtableDef]) -> Htables {
        Htables {
            tables: defs.iter().cloned().map(Htable::new).collect(),
        }
    }

    pub fn table(&self, name: &str) -> Option<&Htable> {
        self.tables.iter().find(|t| t.def.name == name)
    }

    pub fn tables(&self) -> &[Htable] {
        &self.tables
    }

    /// Periodic expiry over this shard's share of every table's stripes.
    pub fn sweep(&self, shard: usize, shards: usize, now: u64) -> usize {
        self.tables
            .iter()
            .map(|t| t.sweep(shard, shards, now))
            .sum()
    }
}

fn to_lua(lua: &Lua, v: Option<HtValue>) -> mlua::Result<Value> {
    Ok(match v {
        Some(HtValue::Int(n)) => Value::Integer(n),
        Some(HtValue::Str(s)) => Value::String(lua.create_string(&s)?),
        None => Value::Nil,
    })
}

fn tables(s: &Shared) -> &Htables {
    &s.services.tables.htable
}

/// sht_sets / sht_seti / sht_setxs / sht_setxi.
fn set_code(s: &Shared, t: &str, k: &str, v: HtValue, exv: i64, ok: i64) -> i64 {
    match tables(s).table(t) {
        Some(ht) if ht.set(k, v, exv, unix_now_s()) => ok,
        Some(_) => -1,
        None => {
            tracing::debug!(table = t, "no such htable");
            -1
        }
    }
}

fn match_code(s: &Shared, t: &str, op: &str, v: &str, values: bool) -> i64 {
    let Some(ht) = tables(s).table(t) else {
        return -1;
    };
    let Some(op) = MatchOp::parse(op) else {
        return -1;
    };
    match ht.matches(op, v, values, unix_now_s()) {
        Some(true) => 1,
        _ => -1,
    }
}

fn rm_code(s: &Shared, t: &str, op: &str, v: &str, values: bool) -> i64 {
    let Some(ht) = tables(s).table(t) else {
        return -1;
    };
    let op = match MatchOp::parse(op) {
        Some(op @ (MatchOp::Re | MatchOp::Sw)) => op,
        _ => return -1,
    };
    match ht.remove_matching(op, v, values) {
        Some(_) => 1,
        None => -1,
    }
}

fn rm_re_code(s: &Shared, t: &str, re: &str, values: bool) -> i64 {
    let Some(ht) = tables(s).table(t) else {
        return 1;
    };
    match ht.remove_matching(MatchOp::Re, re, values) {
        Some(_) => 1,
        None => -1,
    }
}

fn add_code(s: &Shared, t: &str, k: &str, delta: i64) -> i64 {
    tables(s)
        .table(t)
        .and_then(|ht| ht.add(k, delta, unix_now_s()))
        .unwrap_or(NOINTVAL)
}

type S = mlua::String;

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    for (name, null) in [
        ("sht_get", None),
        ("sht_gete", Some("")),
        ("sht_getw", Some("<null>")),
    ] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |lua, (tn, k): (S, S)| {
                let k = k.to_str()?;
                let v = tables(&s)
                    .table(&tn.to_str()?)
                    .and_then(|ht| ht.get(&k, unix_now_s()));
                match (v, null) {
                    (None, Some(n)) => Ok(Value::String(lua.create_string(n)?)),
                    (v, _) => to_lua(lua, v),
                }
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "sht_sets",
        lua.create_function(move |_, (tn, k, v): (S, S, S)| {
            Ok(set_code(
                &s,
                &tn.to_str()?,
                &k.to_str()?,
                HtValue::Str(v.to_str()?.to_string()),
                0,
                1,
            ))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_seti",
        lua.create_function(move |_, (tn, k, v): (S, S, i64)| {
            Ok(set_code(
                &s,
                &tn.to_str()?,
                &k.to_str()?,
                HtValue::Int(v),
                0,
                1,
            ))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_setxs",
        lua.create_function(move |_, (tn, k, v, ex): (S, S, S, i64)| {
            Ok(set_code(
                &s,
                &tn.to_str()?,
                &k.to_str()?,
                HtValue::Str(v.to_str()?.to_string()),
                ex,
                1,
            ))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_setxi",
        lua.create_function(move |_, (tn, k, v, ex): (S, S, i64, i64)| {
            Ok(set_code(
                &s,
                &tn.to_str()?,
                &k.to_str()?,
                HtValue::Int(v),
                ex,
                0,
            ))
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_setex",
        lua.create_function(move |_, (tn, k, ex): (S, S, i64)| {
            Ok(match tables(&s).table(&tn.to_str()?) {
                Some(ht) => {
                    ht.set_expire(&k.to_str()?, ex, unix_now_s());
                    1
                }
                None => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_rm",
        lua.create_function(move |_, (tn, k): (S, S)| {
            Ok(match tables(&s).table(&tn.to_str()?) {
                Some(ht) => {
                    ht.remove(&k.to_str()?);
                    1
                }
                None => -1,
            })
        })?,
    )?;
    for (name, values) in [("sht_rm_name_re", false), ("sht_rm_value_re", true)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (tn, re): (S, S)| {
                Ok(rm_re_code(&s, &tn.to_str()?, &re.to_str()?, values))
            })?,
        )?;
    }
    for (name, values) in [("sht_rm_name", false), ("sht_rm_value", true)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (tn, op, v): (S, S, S)| {
                Ok(rm_code(
                    &s,
                    &tn.to_str()?,
                    &op.to_str()?,
                    &v.to_str()?,
                    values,
                ))
            })?,
        )?;
    }
    for (name, values) in [("sht_match_name", false), ("sht_match_str_value", true)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (tn, op, v): (S, S, S)| {
                Ok(match_code(
                    &s,
                    &tn.to_str()?,
                    &op.to_str()?,
                    &v.to_str()?,
                    values,
                ))
            })?,
        )?;
    }
    for (name, delta) in [("sht_inc", 1), ("sht_dec", -1)] {
        let s = shared.clone();
        t.set(
            name,
            lua.create_function(move |_, (tn, k): (S, S)| {
                Ok(add_code(&s, &tn.to_str()?, &k.to_str()?, delta))
            })?,
        )?;
    }
    let s = shared.clone();
    t.set(
        "sht_is_null",
        lua.create_function(move |_, (tn, k): (S, S)| {
            Ok(match tables(&s).table(&tn.to_str()?) {
                None => 2,
                Some(ht) if ht.def.initval.is_some() => -2,
                Some(ht) if ht.get_raw(&k.to_str()?, unix_now_s()).is_some() => -1,
                Some(_) => 1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_reset",
        lua.create_function(move |_, tn: S| {
            Ok(match tables(&s).table(&tn.to_str()?) {
                Some(ht) => {
                    ht.reset();
                    0
                }
                None => -1,
            })
        })?,
    )?;
    for name in ["sht_lock", "sht_unlock"] {
        t.set(
            name,
            lua.create_function(move |_, (_tn, _k): (S, S)| Ok(1))?,
        )?;
    }
    register_iterators(lua, &t, shared)?;
    ksr.set("htable", t)?;
    Ok(())
}

/// Iterators a VM may have open at once (Kamailio's `HT_ITERATOR_SIZE`).
pub const ITERATORS_MAX: usize = 4;
/// Longest iterator name (Kamailio's `HT_ITERATOR_NAME_SIZE`).
const ITERATOR_NAME_MAX: usize = 32;

/// One `sht_iterator_start` iterator: a snapshot of the table's keys,
/// walked on demand (each step reads the live item).
struct Iter {
    name: String,
    table: String,
    keys: Vec<String>,
    next: usize,
    cur: Option<String>,
}

/// This VM's open iterators (in the Lua app data).
#[derive(Default)]
pub(super) struct Iters(Vec<Iter>);

impl Iters {
    fn find(&mut self, name: &str) -> Option<&mut Iter> {
        self.0.iter_mut().find(|i| i.name == name)
    }
}

fn iters(lua: &Lua) -> mlua::Result<mlua::AppDataRefMut<'_, Iters>> {
    lua.app_data_mut::<Iters>()
        .ok_or_else(|| mlua::Error::RuntimeError("htable iterators unavailable".into()))
}

/// Moves `it` to the next key still in `ht`; false at the end.
fn iter_advance(it: &mut Iter, ht: &Htable, now: u64) -> bool {
    while let Some(k) = it.keys.get(it.next) {
        it.next += 1;
        if ht.get_raw(k, now).is_some() {
            it.cur = Some(k.clone());
            return true;
        }
    }
    it.cur = None;
    false
}

fn iter_start(lua: &Lua, s: &Shared, name: &str, table: &str) -> mlua::Result<i64> {
    let Some(ht) = tables(s).table(table) else {
        return Ok(-1);
    };
    if name.is_empty() || name.len() >= ITERATOR_NAME_MAX {
        return Ok(-1);
    }
    let mut its = iters(lua)?;
    if its.find(name).is_none() && its.0.len() >= ITERATORS_MAX {
        return Ok(-1);
    }
    let (items, _) = ht.dump(unix_now_s(), ht.def.max_items);
    let it = Iter {
        name: name.to_string(),
        table: table.to_string(),
        keys: items.into_iter().map(|(k, _, _)| k).collect(),
        next: 0,
        cur: None,
    };
    match its.find(name) {
        Some(old) => *old = it,
        None => its.0.push(it),
    }
    Ok(1)
}

/// Runs `f` on iterator `name` and its table; -1 when either is gone.
fn with_iter(
    lua: &Lua,
    s: &Shared,
    name: &str,
    f: impl FnOnce(&mut Iter, &Htable) -> i64,
) -> mlua::Result<i64> {
    let mut its = iters(lua)?;
    let Some(it) = its.find(name) else {
        return Ok(-1);
    };
    let Some(ht) = tables(s).table(&it.table) else {
        return Ok(-1);
    };
    Ok(f(it, ht))
}

fn register_iterators(lua: &Lua, t: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    lua.set_app_data(Iters::default());
    let s = shared.clone();
    t.set(
        "sht_iterator_start",
        lua.create_function(move |lua, (name, tn): (S, S)| {
            iter_start(lua, &s, &name.to_str()?, &tn.to_str()?)
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_iterator_next",
        lua.create_function(move |lua, name: S| {
            with_iter(lua, &s, &name.to_str()?, |it, ht| {
                if iter_advance(it, ht, unix_now_s()) {
                    1
                } else {
                    -1
                }
            })
        })?,
    )?;
    t.set(
        "sht_iterator_end",
        lua.create_function(move |lua, name: S| {
            let name = name.to_str()?;
            let mut its = iters(lua)?;
            let before = its.0.len();
            its.0.retain(|i| i.name != *name);
            Ok(if its.0.len() < before { 1 } else { -1 })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_iterator_rm",
        lua.create_function(move |lua, name: S| {
            with_iter(lua, &s, &name.to_str()?, |it, ht| {
                let Some(k) = it.cur.take() else {
                    return -1;
                };
                ht.remove(&k);
                if iter_advance(it, ht, unix_now_s()) {
                    1
                } else {
                    -2
                }
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_iterator_sets",
        lua.create_function(move |lua, (name, v): (S, S)| {
            let v = v.to_str()?.to_string();
            with_iter(lua, &s, &name.to_str()?, |it, ht| match &it.cur {
                Some(k) if ht.set(k, HtValue::Str(v), 0, unix_now_s()) => 1,
                _ => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_iterator_seti",
        lua.create_function(move |lua, (name, v): (S, i64)| {
            with_iter(lua, &s, &name.to_str()?, |it, ht| match &it.cur {
                Some(k) if ht.set(k, HtValue::Int(v), 0, unix_now_s()) => 1,
                _ => -1,
            })
        })?,
    )?;
    let s = shared.clone();
    t.set(
        "sht_iterator_setex",
        lua.create_function(move |lua, (name, ex): (S, i64)| {
            with_iter(lua, &s, &name.to_str()?, |it, ht| match &it.cur {
                Some(k) => {
                    ht.set_expire(k, ex, unix_now_s());
                    1
                }
                None => -1,
            })
        })?,
    )?;
    Ok(())
}

/// `$shtitkey(iname)` / `$shtitval(iname)`: the iterator's current key and
/// its value now.
fn pv_iter(lua: &Lua, s: &Shared, name: &str) -> Option<mlua::Result<Value>> {
    let (pv, iname) = name.split_once('(')?;
    let iname = iname.strip_suffix(')')?;
    if pv != "$shtitkey" && pv != "$shtitval" {
        return None;
    }
    let (table, cur) = {
        let its = lua.app_data_ref::<Iters>()?;
        let it = its.0.iter().find(|i| i.name == iname)?;
        (it.table.clone(), it.cur.clone()?)
    };
    Some(if pv == "$shtitkey" {
        to_lua(lua, Some(HtValue::Str(cur)))
    } else {
        let v = tables(s)
            .table(&table)
            .and_then(|ht| ht.get_raw(&cur, unix_now_s()));
        to_lua(lua, v)
    })
}

/// `table=>key` of `$sht(...)`-style names, with the PV's prefix.
fn pv_parts(name: &str) -> Option<(&str, &str, &str)> {
    let open = name.find('(')?;
    let (pv, rest) = name.split_at(open);
    let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
    let (t, k) = inner.split_once("=>")?;
    Some((pv, t, k))
}

/// `KSR.pv.get` of `$sht / $shtex / $shtinc(table=>key)`; `None` when
/// `name` is not one of them.
pub(super) fn pv_get(lua: &Lua, s: &Shared, name: &str) -> Option<mlua::Result<Value>> {
    if name.starts_with("$shtit") {
        return Some(pv_iter(lua, s, name).unwrap_or(Ok(Value::Nil)));
    }
    let (pv, t, k) = pv_parts(name)?;
    let now = unix_now_s();
    let ht = tables(s).table(t);
    Some(match pv {
        "$sht" => to_lua(lua, ht.and_then(|ht| ht.get(k, now))),
        "$shtex" => Ok(ht
            .map(|ht| Value::Integer(ht.expire_in(k, now) as i64))
            .unwrap_or(Value::Nil)),
        "$shtinc" => Ok(ht
            .and_then(|ht| ht.add(k, 1, now))
            .map(Value::Integer)
            .unwrap_or(Value::Nil)),
        "$shtcn" | "$shtcv" => Ok(ht
            .map(|ht| Value::Integer(ht.count(k, pv == "$shtcv", now)))
            .unwrap_or(Value::Nil)),
        _ => return None,
    })
}

/// `KSR.pv.sets/seti/unset` of `$sht(table=>key)` and `$shtex(table=>key)`;
/// `None` when `name` is not one of them.
pub(super) fn pv_set(
    s: &Shared,
    name: &str,
    value: Option<super::PvValue>,
) -> Option<mlua::Result<()>> {
    let (pv, t, k) = pv_parts(name)?;
    if pv != "$sht" && pv != "$shtex" {
        return None;
    }
    let Some(ht) = tables(s).table(t) else {
        return Some(Err(mlua::Error::RuntimeError(format!(
            "{name}: no such htable {t:?}"
        ))));
    };
    let now = unix_now_s();
    Some(match (pv, value) {
        ("$sht", None) => {
            ht.remove(k);
            Ok(())
        }
        ("$sht", Some(v)) => {
            let v = match v {
                super::PvValue::Int(n) => HtValue::Int(n),
                super::PvValue::Str(b) => HtValue::Str(String::from_utf8_lossy(&b).into_owned()),
            };
            if ht.set(k, v, 0, now) {
                Ok(())
            } else {
                Err(mlua::Error::RuntimeError(format!(
                    "{name}: not stored (table full or key/value too long)"
                )))
            }
        }
        (_, Some(super::PvValue::Int(n))) => {
            ht.set_expire(k, n, now);
            Ok(())
        }
        (_, Some(super::PvValue::Str(b))) => {
            let n = std::str::from_utf8(&b)
                .ok()
                .and_then(|x| x.trim().parse::<i64>().ok())
                .unwrap_or(0);
            ht.set_expire(k, n, now);
            Ok(())
        }
        (_, None) => {
            ht.set_expire(k, 0, now);
            Ok(())
        }
    })
}

/// Items `htable.dump` returns at most.
pub const DUMP_MAX: usize = 100_000;

/// JSON of one item for the RPC methods (Kamailio's `name`, `value`, and
/// `expires` when set).
pub fn item_json(k: &str, v: &HtValue, expire: u64) -> serde_json::Value {
    let value = match v {
        HtValue::Int(n) => serde_json::json!(n),
        HtValue::Str(s) => serde_json::json!(s),
    };
    let mut o = serde_json::json!({"name": k, "value": value});
    if expire != 0 {
        o["expires"] = serde_json::json!(expire);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{engine_on, global_int, request, run, tables_with};

    const CFG: &str = r#"
[[htable]]
name = "ipban"
autoexpire = 300

[[htable]]
name = "cnt"
initval = 0

[[htable]]
name = "small"
max_items = 2
autoexpire = 10
"#;

    fn def(name: &str) -> HtableDef {
        HtableDef {
            name: name.into(),
            ..HtableDef::default()
        }
    }

    /// Runs `body` (Lua statements) in a route over tables `CFG`; returns
    /// the engine to read globals from.
    fn route(body: &str) -> crate::kemi::Engine {
        let eng = engine_on(
            &format!("function ksr_request_route()\n{body}\nend"),
            tables_with(CFG),
            0,
            1,
        );
        let (_, out) = run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(out, crate::kemi::RouteOutcome::Done);
        eng
    }

    #[test]
    fn sets_seti_get_gete_getw() {
        let eng = route(
            r#"
            a = KSR.htable.sht_sets("ipban", "k1", "v1")
            b = KSR.htable.sht_seti("ipban", "k2", 42)
            c = KSR.htable.sht_sets("nope", "k", "v")
            g1 = KSR.htable.sht_get("ipban", "k1") == "v1"
            g2 = KSR.htable.sht_get("ipban", "k2")
            g3 = KSR.htable.sht_get("ipban", "absent") == nil
            g4 = KSR.htable.sht_gete("ipban", "absent") == ""
            g5 = KSR.htable.sht_getw("ipban", "absent") == "<null>"
            g6 = KSR.htable.sht_get("nope", "k") == nil
            g7 = KSR.htable.sht_get("cnt", "absent")
            "#,
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 1);
        assert_eq!(global_int(&eng, "c"), -1);
        for g in ["g1", "g3", "g4", "g5", "g6"] {
            assert_eq!(global_int(&eng, g), 1, "{g}");
        }
        assert_eq!(global_int(&eng, "g2"), 42);
        assert_eq!(global_int(&eng, "g7"), 0, "initval for an absent key");
    }

    #[test]
    fn setxs_setxi_setex_return_codes() {
        let eng = route(
            r#"
            a = KSR.htable.sht_setxs("ipban", "s", "v", 10)
            b = KSR.htable.sht_setxi("ipban", "i", 7, 10)
            c = KSR.htable.sht_setxi("nope", "i", 7, 10)
            d = KSR.htable.sht_setex("ipban", "i", 100)
            e = KSR.htable.sht_setex("nope", "i", 100)
            ex = KSR.pv.get("$shtex(ipban=>i)")
            v = KSR.htable.sht_get("ipban", "i")
            "#,
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 0, "Kamailio 5.6 sht_setxi returns 0");
        assert_eq!(global_int(&eng, "c"), -1);
        assert_eq!(global_int(&eng, "d"), 1);
        assert_eq!(global_int(&eng, "e"), -1);
        let ex = global_int(&eng, "ex");
        assert!((99..=100).contains(&ex), "{ex}");
        assert_eq!(global_int(&eng, "v"), 7);
    }

    #[test]
    fn rm_and_regexp_removals() {
        let eng = route(
            r#"
            KSR.htable.sht_sets("ipban", "a1", "x")
            KSR.htable.sht_sets("ipban", "a2", "yes")
            KSR.htable.sht_sets("ipban", "b1", "YES")
            KSR.htable.sht_seti("ipban", "b2", 5)
            r1 = KSR.htable.sht_rm("ipban", "a1")
            r2 = KSR.htable.sht_rm("nope", "a1")
            n1 = KSR.htable.sht_is_null("ipban", "a1")
            r3 = KSR.htable.sht_rm_value_re("ipban", "^yes$")
            left_b2 = KSR.htable.sht_get("ipban", "b2")
            gone = KSR.htable.sht_get("ipban", "a2") == nil and KSR.htable.sht_get("ipban", "b1") == nil
            r4 = KSR.htable.sht_rm_name_re("ipban", "(")
            r5 = KSR.htable.sht_rm_name_re("nope", ".*")
            KSR.htable.sht_sets("ipban", "pre.1", "x")
            KSR.htable.sht_sets("ipban", "pre.2", "x")
            KSR.htable.sht_sets("ipban", "other", "pre")
            r6 = KSR.htable.sht_rm_name("ipban", "sw", "pre.")
            kept = KSR.htable.sht_get("ipban", "other")
            none_pre = KSR.htable.sht_match_name("ipban", "sw", "pre.")
            r7 = KSR.htable.sht_rm_name("ipban", "eq", "other")
            r8 = KSR.htable.sht_rm_value("ipban", "sw", "pr")
            other_gone = KSR.htable.sht_is_null("ipban", "other")
            r9 = KSR.htable.sht_rm_name("nope", "re", ".")
            "#,
        );
        let want = [
            ("r1", 1),
            ("r2", -1),
            ("n1", 1),
            ("r3", 1),
            ("left_b2", 5),
            ("gone", 1),
            ("r4", -1),
            ("r5", 1),
            ("r6", 1),
            ("none_pre", -1),
            ("r7", -1),
            ("r8", 1),
            ("other_gone", 1),
            ("r9", -1),
        ];
        for (g, v) in want {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
        let kept: String = eng.lua().globals().get("kept").unwrap();
        assert_eq!(kept, "pre");
    }

    #[test]
    fn match_name_and_str_value_ops() {
        let eng = route(
            r#"
            KSR.htable.sht_seti("ipban", "192.0.2.9", 1)
            KSR.htable.sht_sets("ipban", "user", "Alice")
            m1 = KSR.htable.sht_match_name("ipban", "eq", "192.0.2.9")
            m2 = KSR.htable.sht_match_name("ipban", "eq", "192.0.2.99")
            m3 = KSR.htable.sht_match_name("ipban", "sw", "192.0.")
            m4 = KSR.htable.sht_match_name("ipban", "re", "^USER$")
            m5 = KSR.htable.sht_match_name("ipban", "ne", "user")
            m6 = KSR.htable.sht_match_name("ipban", "xx", "user")
            m7 = KSR.htable.sht_match_name("nope", "eq", "user")
            m8 = KSR.htable.sht_match_name("ipban", "eq", "")
            v1 = KSR.htable.sht_match_str_value("ipban", "eq", "Alice")
            v2 = KSR.htable.sht_match_str_value("ipban", "eq", "1")
            v3 = KSR.htable.sht_match_str_value("ipban", "re", "^ali")
            v4 = KSR.htable.sht_match_str_value("ipban", "re", "[")
            "#,
        );
        let want = [
            ("m1", 1),
            ("m2", -1),
            ("m3", 1),
            ("m4", 1),
            ("m5", 1),
            ("m6", -1),
            ("m7", -1),
            ("m8", -1),
            ("v1", 1),
            ("v2", -1),
            ("v3", 1),
            ("v4", -1),
        ];
        for (g, v) in want {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
    }

    #[test]
    fn inc_dec_is_null_reset_lock() {
        let eng = route(
            r#"
            i1 = KSR.htable.sht_inc("cnt", "k")
            i2 = KSR.htable.sht_inc("cnt", "k")
            d1 = KSR.htable.sht_dec("cnt", "k")
            i3 = KSR.htable.sht_inc("ipban", "absent")
            KSR.htable.sht_sets("ipban", "s", "x")
            i4 = KSR.htable.sht_inc("ipban", "s")
            i5 = KSR.htable.sht_inc("nope", "s")
            KSR.htable.sht_seti("ipban", "n", 10)
            i6 = KSR.htable.sht_dec("ipban", "n")
            z1 = KSR.htable.sht_is_null("ipban", "s")
            z2 = KSR.htable.sht_is_null("ipban", "absent")
            z3 = KSR.htable.sht_is_null("cnt", "k")
            z4 = KSR.htable.sht_is_null("nope", "k")
            l1 = KSR.htable.sht_lock("ipban", "n")
            l2 = KSR.htable.sht_unlock("ipban", "n")
            r1 = KSR.htable.sht_reset("ipban")
            r2 = KSR.htable.sht_reset("nope")
            after = KSR.htable.sht_is_null("ipban", "n")
            "#,
        );
        let want = [
            ("i1", 1),
            ("i2", 2),
            ("d1", 1),
            ("i3", NOINTVAL),
            ("i4", NOINTVAL),
            ("i5", NOINTVAL),
            ("i6", 9),
            ("z1", -1),
            ("z2", 1),
            ("z3", -2),
            ("z4", 2),
            ("l1", 1),
            ("l2", 1),
            ("r1", 0),
            ("r2", -1),
            ("after", 1),
        ];
        for (g, v) in want {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
    }

    #[test]
    fn sht_pseudo_variables() {
        let eng = route(
            r#"
            KSR.pv.sets("$sht(ipban=>a)", "hello")
            KSR.pv.seti("$sht(ipban=>b)", 3)
            p1 = KSR.htable.sht_get("ipban", "a") == "hello"
            p2 = KSR.pv.get("$sht(ipban=>b)")
            p3 = KSR.pv.get("$sht(ipban=>zz)") == nil
            p4 = KSR.pv.get("$sht(cnt=>zz)")
            KSR.pv.unset("$sht(ipban=>a)")
            p5 = KSR.htable.sht_is_null("ipban", "a")
            KSR.pv.seti("$shtex(ipban=>b)", 50)
            p6 = KSR.pv.get("$shtex(ipban=>b)")
            p7 = KSR.pv.get("$shtinc(cnt=>c)")
            KSR.htable.sht_sets("ipban", "u1", "alice")
            KSR.htable.sht_sets("ipban", "u2", "alicia")
            KSR.htable.sht_seti("ipban", "n1", 3)
            c1 = KSR.pv.get("$shtcn(ipban=>~~^u)")
            c2 = KSR.pv.get("$shtcv(ipban=>%~ali)")
            c3 = KSR.pv.get("$shtcv(ipban=>==alice)")
            c4 = KSR.pv.get("$shtcv(ipban=>eq3)")
            c5 = KSR.pv.get("$shtcn(ipban=>**)")
            c6 = KSR.pv.get("$shtcn(ipban=>~%1)")
            c7 = KSR.pv.get("$shtcn(ipban=>U)")
            c8 = KSR.pv.get("$shtcn(nope=>**)") == nil
            p8 = KSR.pv.get("$shtinc(cnt=>c)")
            ok, err = pcall(KSR.pv.sets, "$sht(nope=>a)", "x")
            p9 = ok
            "#,
        );
        assert_eq!(global_int(&eng, "p1"), 1);
        assert_eq!(global_int(&eng, "p2"), 3);
        assert_eq!(global_int(&eng, "p3"), 1);
        assert_eq!(global_int(&eng, "p4"), 0);
        assert_eq!(global_int(&eng, "p5"), 1);
        let ex = global_int(&eng, "p6");
        assert!((49..=50).contains(&ex), "{ex}");
        assert_eq!(global_int(&eng, "p7"), 1);
        assert_eq!(global_int(&eng, "p8"), 2);
        // ipban holds b, u1, u2, n1 here
        for (g, v) in [
            ("c1", 2),
            ("c2", 2),
            ("c3", 1),
            ("c4", 2), // b and n1 are 3
            ("c5", 4),
            ("c6", 2),
            ("c7", 2),
            ("c8", 1),
        ] {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
        assert_eq!(global_int(&eng, "p9"), 0, "unknown table is a script error");
    }

    #[test]
    fn numbers_and_numeric_strings_are_coerced_as_in_kamailio_lua() {
        let eng = route(
            r#"
            a = KSR.htable.sht_seti("ipban", 15, "7")
            b = KSR.htable.sht_get("ipban", "15")
            "#,
        );
        assert_eq!(global_int(&eng, "a"), 1);
        assert_eq!(global_int(&eng, "b"), 7);
    }

    #[test]
    fn iterators_walk_set_and_remove() {
        let eng = route(
            r#"
            for i = 1, 5 do KSR.htable.sht_seti("ipban", "k" .. i, i) end
            s1 = KSR.htable.sht_iterator_start("i1", "ipban")
            s2 = KSR.htable.sht_iterator_start("i2", "nope")
            sum, n = 0, 0
            while KSR.htable.sht_iterator_next("i1") > 0 do
                local k = KSR.pv.get("$shtitkey(i1)")
                local v = KSR.pv.get("$shtitval(i1)")
                sum = sum + v
                n = n + 1
                if k == "k2" then KSR.htable.sht_iterator_seti("i1", 20) end
                if k == "k3" then KSR.htable.sht_iterator_sets("i1", "three") end
            end
            after_end = KSR.htable.sht_iterator_next("i1")
            v2 = KSR.htable.sht_get("ipban", "k2")
            v3 = KSR.htable.sht_get("ipban", "k3") == "three"
            -- remove every item through an iterator
            KSR.htable.sht_iterator_start("i1", "ipban")
            KSR.htable.sht_iterator_next("i1")
            local rc = 1
            removed = 0
            while rc == 1 do
                rc = KSR.htable.sht_iterator_rm("i1")
                removed = removed + 1
            end
            last_rc = rc
            rm_none = KSR.htable.sht_iterator_rm("i1")
            left = KSR.htable.sht_match_name("ipban", "re", ".")
            e1 = KSR.htable.sht_iterator_end("i1")
            e2 = KSR.htable.sht_iterator_end("i1")
            nx = KSR.htable.sht_iterator_next("i1")
            for i = 1, 4 do KSR.htable.sht_iterator_start("x" .. i, "cnt") end
            fifth = KSR.htable.sht_iterator_start("x5", "cnt")
            again = KSR.htable.sht_iterator_start("x1", "cnt")
            "#,
        );
        let want = [
            ("s1", 1),
            ("s2", -1),
            ("sum", 15),
            ("n", 5),
            ("after_end", -1),
            ("v2", 20),
            ("v3", 1),
            ("removed", 5),
            ("last_rc", -2),
            ("rm_none", -1),
            ("left", -1),
            ("e1", 1),
            ("e2", -1),
            ("nx", -1),
            ("fifth", -1),
            ("again", 1),
        ];
        for (g, v) in want {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
    }

    #[test]
    fn autoexpire_is_from_the_last_set_and_lazy() {
        let t = Htable::new(HtableDef {
            autoexpire: 10,
            ..def("t")
        });
        assert!(t.set("k", HtValue::Int(1), 0, 100));
        assert_eq!(t.get("k", 110), Some(HtValue::Int(1)));
        assert!(
            t.set("k", HtValue::Int(2), 0, 105),
            "update resets the expiry"
        );
        assert_eq!(t.get("k", 115), Some(HtValue::Int(2)));
        assert_eq!(t.get("k", 116), None, "expired reads as absent");
        assert_eq!(t.matches(MatchOp::Eq, "k", false, 116), Some(false));
        assert_eq!(t.len(), 1, "still stored until swept");
        assert_eq!(t.sweep(0, 1, 116), 1);
        assert_eq!(t.len(), 0);
        // Per-item expiry beats autoexpire; updateexpire=false keeps it.
        let u = Htable::new(HtableDef {
            autoexpire: 10,
            updateexpire: false,
            ..def("u")
        });
        assert!(u.set("k", HtValue::Int(1), 100, 0));
        assert!(u.set("k", HtValue::Int(2), 0, 50));
        assert_eq!(u.expire_in("k", 50), 50);
        // A table without autoexpire never expires (Kamailio: only
        // autoexpire tables keep expiries).
        let n = Htable::new(def("n"));
        assert!(n.set("k", HtValue::Int(1), 5, 0));
        assert_eq!(n.get("k", 1_000), Some(HtValue::Int(1)));
    }

    #[test]
    fn expired_counter_restarts_from_initval() {
        let t = Htable::new(HtableDef {
            autoexpire: 10,
            initval: Some(0),
            ..def("t")
        });
        assert_eq!(t.add("k", 1, 100), Some(1));
        assert_eq!(t.add("k", 1, 105), Some(2));
        assert_eq!(t.add("k", 1, 200), Some(1), "expired: starts again");
    }

    #[test]
    fn max_items_is_enforced_after_sweeping() {
        let eng = route(
            r#"
            a = KSR.htable.sht_seti("small", "1", 1)
            b = KSR.htable.sht_seti("small", "2", 1)
            c = KSR.htable.sht_seti("small", "3", 1)
            d = KSR.htable.sht_seti("small", "2", 5)
            KSR.htable.sht_rm("small", "1")
            e = KSR.htable.sht_seti("small", "3", 1)
            "#,
        );
        for (g, v) in [("a", 1), ("b", 1), ("c", -1), ("d", 1), ("e", 1)] {
            assert_eq!(global_int(&eng, g), v, "{g}");
        }
        let t = Htable::new(HtableDef {
            max_items: 1,
            autoexpire: 10,
            ..def("t")
        });
        assert!(t.set("a", HtValue::Int(1), 0, 100));
        assert!(!t.set("b", HtValue::Int(1), 0, 105));
        assert_eq!(t.full_errors.load(Ordering::Relaxed), 1);
        // Once "a" expired, a set of a new key sweeps the full table first
        // (whichever stripe "a" is in).
        let t1 = Htable::new(HtableDef {
            max_items: 1,
            autoexpire: 10,
            size: 0,
            ..def("t1")
        });
        assert!(t1.set("a", HtValue::Int(1), 0, 100));
        assert!(t1.set("b", HtValue::Int(1), 0, 200));
        assert_eq!(t1.len(), 1);
        assert!(!t.set(&"k".repeat(KEY_LEN_MAX + 1), HtValue::Int(1), 0, 0));
    }

    #[test]
    fn db_rows_load_with_arrays_and_types() {
        let t = Htable::new(HtableDef {
            autoexpire: 100,
            db_expires: true,
            ..def("t")
        });
        let row = |k: &str, kt, vt, v: &str, e| HtableRow {
            key_name: k.into(),
            key_type: kt,
            value_type: vt,
            key_value: v.into(),
            expires: e,
        };
        let rows = [
            row("s", 0, 0, "text", 0),
            row("i", 0, 1, "12", 0),
            row("bad", 0, 1, "x", 0),
            row("arr", 1, 0, "v1", 0),
            row("arr", 1, 0, "v2", 0),
            row("old", 0, 0, "x", 50),
            row("later", 0, 0, "x", 1_050),
        ];
        let (loaded, skipped) = t.load_rows(&rows, 1_000);
        assert_eq!((loaded, skipped), (6, 2));
        assert_eq!(t.get("s", 1_000), Some(HtValue::Str("text".into())));
        assert_eq!(t.get("i", 1_000), Some(HtValue::Int(12)));
        assert_eq!(t.get("arr[0]", 1_000), Some(HtValue::Str("v1".into())));
        assert_eq!(t.get("arr[1]", 1_000), Some(HtValue::Str("v2".into())));
        assert_eq!(t.get("arr::size", 1_000), Some(HtValue::Int(2)));
        assert_eq!(t.expire_in("later", 1_000), 50);
        assert_eq!(t.get("old", 1_000), None);
    }

    #[test]
    fn two_shards_see_one_table() {
        let tables = tables_with(CFG);
        let a = engine_on(
            "function ksr_request_route() KSR.htable.sht_seti('ipban', KSR.kx.get_srcip(), 1); c = KSR.htable.sht_inc('cnt', 'n') end",
            tables.clone(),
            0,
            2,
        );
        let b = engine_on(
            "function ksr_request_route() seen = KSR.htable.sht_match_name('ipban', 'eq', '192.0.2.9'); c = KSR.htable.sht_inc('cnt', 'n') end",
            tables.clone(),
            1,
            2,
        );
        let msg = request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]);
        run(&a, &msg);
        run(&b, &msg);
        assert_eq!(global_int(&b, "seen"), 1);
        assert_eq!(global_int(&b, "c"), 2);
        assert_eq!(
            tables.htable.table("cnt").unwrap().get("n", 0),
            Some(HtValue::Int(2))
        );
    }

    #[test]
    fn no_tables_declared_still_registers_the_module() {
        let eng = crate::kemi::testutil::engine(
            "function ksr_request_route() r = KSR.htable.sht_match_name('ipban', 'eq', '1.2.3.4') end",
        );
        run(&eng, &request("OPTIONS sip:x@10.0.0.1 SIP/2.0", None, &[]));
        assert_eq!(global_int(&eng, "r"), -1);
    }
}
