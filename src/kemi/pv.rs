//! KSR.pv and KSR.pvx: pseudo-variables (Kamailio core PVs, `pv` module).
//!
//! | KSR function | Kamailio signature | returns |
//! |---|---|---|
//! | `KSR.pv.get(name)` | `xval (str)` | string, integer, or nil when null |
//! | `KSR.pv.gete(name)` | `xval (str)` | like get, `""` when null |
//! | `KSR.pv.getw(name)` | `xval (str)` | like get, `"<null>"` when null (Kamailio 5.6's marker) |
//! | `KSR.pv.geti(name)` | `int (str)` | the value as an integer (leading digits of a string), 0 when null |
//! | `KSR.pv.getvs(name, dflt)` | `xval (str, str)` | the value (its own type), dflt when null |
//! | `KSR.pv.getvn(name, dflt)` | `xval (str, int)` | the value (its own type), dflt when null |
//! | `KSR.pv.sets(name, value)` | `bool (str, str)` | true; false when it cannot be assigned (`$rU` of an unparsable R-URI) |
//! | `KSR.pv.seti(name, value)` | `bool (str, int)` | as sets |
//! | `KSR.pv.unset(name)` | `bool (str)` | true (`$avp`: removes the newest value) |
//! | `KSR.pv.is_null(name)` | `bool (str)` | true when null (`$var` never is) |
//! | `KSR.pvx.var_sets(name, v)` / `var_seti(name, v)` | `int (str, str/int)` | 1 (`$var(name)`) |
//! | `KSR.pvx.var_get(name)` | `xval (str)` | `$var(name)` |
//! | `KSR.pvx.avp_sets(name, v)` / `avp_seti(name, v)` | `int (str, str/int)` | 1, -1 when full; adds a value to `$avp(name)` |
//! | `KSR.pvx.avp_get/avp_gete/avp_getw(name)` | `xval (str)` | newest value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.avp_rm(name)` | `int (str)` | 1 |
//! | `KSR.pvx.avp_is_null(name)` | `int (str)` | 1 null, -1 set |
//! | `KSR.pvx.xavp_sets(name, v)` / `xavp_seti(name, v)` | `int (str, str/int)` | 1; adds a value item to `$xavp(name)` |
//! | `KSR.pvx.xavp_get/xavp_gete/xavp_getw(name)` | `xval (str)` | first item's value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavp_rm(name)` | `int (str)` | 1 |
//! | `KSR.pvx.xavp_is_null(name)` | `int (str)` | 1 null, -1 set |
//! | `KSR.pvx.xavp_child_sets/xavp_child_seti(name, field, v)` | `int (str, str, str/int)` | 1; sets `$xavp(name=>field)` |
//! | `KSR.pvx.xavp_child_get/xavp_child_gete/xavp_child_getw(name, field)` | `xval (str, str)` | field value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavp_child_rm(name, field)` | `int (str, str)` | 1 |
//! | `KSR.pvx.xavp_child_is_null(name, field)` | `int (str, str)` | 1 null, -1 set |
//! | `KSR.pvx.xavp_params_explode(params, name)` | `int (str, str)` | 1; `a=1;b=2` becomes fields of a new `$xavp(name)` (string values) |
//! | `KSR.pvx.xavp_params_implode(name, pv)` | `int (str, str)` | 1 (`a=1;b=2;` written to pv), -1 when no such xavp |
//! | `KSR.pvx.xavp_get_keys(name, idx)` | `xval (str, int)` | Lua array of the distinct field names of item idx (newest first), nil when none |
//! | `KSR.pvx.xavp_getd_p1(name, idx)` | `xval (str, int)` | item idx as a Lua table field → array of values (newest first), nil when none |
//! | `KSR.pvx.xavp_getd(name)` | `xval (str)` | Lua array of every item as xavp_getd_p1 gives it |
//! | `KSR.pvx.xavp_slist_explode(list, seps, mode, name)` | `int (str, str, str, str)` | 1; the tokens of list (split at any char of seps, mode `t` trims, empty ones skipped) as fields `v` of a new item; -1 when none |
//! | `KSR.pvx.xavp_copy(src, idx, dst)` | `int (str, int, str)` | 1; item idx of src appended to dst; -1 no such item |
//! | `KSR.pvx.xavp_copy_dst(src, idx, dst, dst_idx)` | `int (str, int, str, int)` | 1; item idx of src replaces dst's item dst_idx (appended when absent); -1 no such item or no dst |
//! | `KSR.pvx.pv_xavp_print()` | `int ()` | 1; logs each xavp's name and item count |
//! | `KSR.pvx.evalx(dst, format)` | `int (str, str)` | 1: format with its `$pv`s replaced (`<null>` for null, nothing for a transformed null, `$$` for `$`) written to dst; -1 for a lone `$` or an unknown pv |
//! | `KSR.pvx.sbranch_set_ruri()` | `int ()` | 1: the static branch `$sbranch(...)` becomes the main branch (R-URI, `$du`, path, q, flags); -1 when its uri is empty |
//! | `KSR.pvx.sbranch_append()` | `int ()` | 1: appended as a branch; -1 empty uri or too many branches |
//! | `KSR.pvx.sbranch_reset()` | `int ()` | 1: the static branch cleared |
//! | `KSR.pvx.xavu_sets/xavu_seti(name, v)` | `int (str, str/int)` | 1; `$xavu(name)`: one item per name, one value per field, setting replaces |
//! | `KSR.pvx.xavu_get/xavu_gete/xavu_getw(name)` | `xval (str)` | value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavu_rm/xavu_is_null(name)` | `int (str)` | 1 / 1 null, -1 set |
//! | `KSR.pvx.xavu_child_sets/xavu_child_seti(name, field, v)` | `int (str, str, str/int)` | 1 |
//! | `KSR.pvx.xavu_child_get/xavu_child_gete/xavu_child_getw(name, field)` | `xval (str, str)` | field value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavu_child_rm/xavu_child_is_null(name, field)` | `int (str, str)` | 1 / 1 null, -1 set |
//! | `KSR.pvx.xavi_sets/xavi_seti(name, v)` | `int (str, str/int)` | 1; `$xavi(name)`: as xavp, names and fields ignore case |
//! | `KSR.pvx.xavi_get/xavi_gete/xavi_getw(name)` | `xval (str)` | value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavi_rm/xavi_is_null(name)` | `int (str)` | 1 / 1 null, -1 set |
//! | `KSR.pvx.xavi_child_sets/xavi_child_seti(name, field, v)` | `int (str, str, str/int)` | 1 |
//! | `KSR.pvx.xavi_child_get/xavi_child_gete/xavi_child_getw(name, field)` | `xval (str, str)` | field value; nil / `""` / `"<null>"` |
//! | `KSR.pvx.xavi_child_rm/xavi_child_is_null(name, field)` | `int (str, str)` | 1 / 1 null, -1 set |
//! | `KSR.pvx.xavu_params_explode(params, name)` | `int (str, str)` | 1, as xavp_params_explode |
//! | `KSR.pvx.xavu_params_implode(name, pv)` | `int (str, str)` | 1, as xavp_params_implode |
//! | `KSR.pvx.xavi_get_keys(name, idx)` | `xval (str, int)` | as xavp_get_keys |
//! | `KSR.pvx.xavi_getd(name)` | `xval (str)` | as xavp_getd |
//! | `KSR.pvx.xavi_getd_p1(name, idx)` | `xval (str, int)` | as xavp_getd_p1 |
//! | `KSR.pvx.pv_var_to_xavp(var, name)` | `int (str, str)` | 1; `$var(var)` (or every `$var` for `*`) as fields of a new `$xavp(name)` |
//! | `KSR.pvx.pv_xavp_to_var(name)` | `int (str)` | 1; each field of `$xavp(name)` to `$var(field)`; -1 when none |
//!
//! Readable pseudo-variables: `$rm $ru $ruri $rU $rd $rp $rz $rP $rv $ou $oU
//! $od $du $dd $dp $dP $bf $mf $si $sp $su $sut $Ri $Rp $Ru $Rut $RAi $RAp $pr $proto $conid $ua $ci $fu $fU $fd $fn $ft $tu $tU
//! $td $tn $tt $cs $rs $rr $mb $ml $mt $bs $rb $ct $cT $cl $au $ar $adu
//! $hdr(Name) $(hdr(Name)[n]) $(hdr(Name)[-1]) $(hdr(Name)[*]) $hdrc(Name)
//! $hfl(Name) $(hfl(Name)[n]) $hflc(Name)
//! $var(name) $avp(name) $(avp(name)[n]) $xavp(name) $xavp(name[i]=>field[j])
//! $xavu(name=>field) $xavi(name[i]=>field) $sbranch(uri|dst_uri|path|q|flags)
//! $(branch(uri|dst_uri|path|q|flags)[n]) $branch(count)
//! $cnt($avp(name)) $Ts $TS $timef(format) $rc $retcode $T_*`, `$sht(t=>k)`,
//! `$shtex(t=>k)`, `$shtinc`, `$shtcn`, `$shtcv`, `$shtitkey`, `$shtitval` (see the
//! htable module) and `$shard`
//! (the shard number, a sipshard extension). Writable: `$ru $ruri $rU $rd $rp
//! $du $var(name) $avp(name) $xavp(name) $xavp(name[i]=>field) $xavu(...) $xavi(...)
//! $sbranch(attr)`:
//! `$xavp(a=>f) = v` pushes a new item, `$xavp(a[0]=>f) = v` adds the field
//! to item 0; unsetting removes the newest item / field.
//!
//! Values follow Kamailio 5.6 (checked by tests/differential.rs): `$rp` and
//! `$cs` are strings; `$fn`/`$tn` keep their quotes; an empty host, user or
//! tag is null; a `tel:` URI has a null host; an R-URI of another scheme
//! than sip/sips/tel makes `$ru`, `$rU`, `$rd`, `$rz` null; a `user=phone` SIP
//! URI reads as tel (`$rz` is `tel`, `$rU` the number without its
//! parameters), as Kamailio's default `phone2tel=1`; `$au`/`$ar`/`$adu` read
//! the credentials header (Proxy-Authorization, else Authorization) before
//! any auth check; `$hfl` splits Via, Route,
//! Record-Route and Contact bodies as Kamailio does (a Via body keeps its
//! comma, Contacts of one header come last first, no negative index); an
//! unset `$var` is 0; `$rc`
//! is 0 (KEMI functions do not set the cfg return code); `$timef` formats UTC.
//! `$avp`/`$xavp` live for one message.
//!
//! Transformations (chainable, `$(ru{uri.user}{s.len})`): `s.len s.int
//! s.tolower s.toupper s.substr,offset,length s.trim s.ltrim s.rtrim s.md5
//! s.sha256 s.encode.hexa s.select,index,separator s.strip,n s.striptail,n
//! s.numeric uri.user uri.host uri.port uri.params uri.param,name uri.scheme
//! uri.transport uri.maddr uri.ttl uri.method tobody.uri tobody.display
//! tobody.user tobody.host tobody.tag tobody.params nameaddr.uri
//! nameaddr.name param.value,name param.count param.name,index
//! param.valueat,index`; an unknown one, or one that does not apply, gives
//! null.

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::ffi::{self, Ret};
use super::{MsgCtx, Shared};
use crate::sip::{HdrName, SipUri};

/// A `$var` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PvValue {
    Int(i64),
    Str(Vec<u8>),
}

/// A pseudo-variable's value as Kamailio gives it: null, integer or string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Null,
    Int(i64),
    Str(Vec<u8>),
}

impl Val {
    pub(super) fn s(b: &[u8]) -> Val {
        Val::Str(b.to_vec())
    }
    pub(super) fn opt(b: Option<&[u8]>) -> Val {
        b.map(Val::s).unwrap_or(Val::Null)
    }
    /// Null for an absent or empty value (Kamailio's empty host / tag).
    fn non_empty(b: Option<&[u8]>) -> Val {
        Val::opt(b.filter(|x| !x.is_empty()))
    }
    pub(super) fn int_pub(&self) -> i64 {
        self.int()
    }
    /// The value as text; None for null.
    pub(super) fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Val::Str(b) => Some(b),
            v => v.text(),
        }
    }
    fn text(&self) -> Option<Vec<u8>> {
        match self {
            Val::Null => None,
            Val::Int(i) => Some(i.to_string().into_bytes()),
            Val::Str(b) => Some(b.clone()),
        }
    }
    /// The value as an integer: strings parse their leading digits (0 otherwise).
    pub(super) fn int(&self) -> i64 {
        match self {
            Val::Null => 0,
            Val::Int(i) => *i,
            Val::Str(b) => leading_int(b).unwrap_or(0),
        }
    }
    pub(super) fn into_lua(self, lua: &Lua) -> mlua::Result<Value> {
        Ok(match self {
            Val::Null => Value::Nil,
            Val::Int(i) => Value::Integer(i),
            Val::Str(b) => Value::String(lua.create_string(&b)?),
        })
    }
}

impl From<&PvValue> for Val {
    fn from(v: &PvValue) -> Val {
        match v {
            PvValue::Int(i) => Val::Int(*i),
            PvValue::Str(b) => Val::Str(b.clone()),
        }
    }
}

/// What `getw` style functions return for null, as Kamailio 5.6 does.
pub(super) const NULL_TEXT: &str = "<null>";

fn leading_int(b: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(b).ok()?.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let n: i64 = digits.get(..end)?.parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Whole-string integer (`{s.int}` fails on trailing garbage, as Kamailio).
fn strict_int(b: &[u8]) -> Option<i64> {
    let t = std::str::from_utf8(b).ok()?.trim();
    t.parse().ok()
}

enum NullMode {
    Nil,
    Empty,
    Print,
}

/// Per-message pv state: `$avp` and `$xavp` (cleared with the message).
/// A transaction keeps a copy for its failure route, as Kamailio keeps the
/// request's xavps with the transaction.
#[derive(Default, Debug, Clone)]
pub struct PvMsg {
    /// name -> values, newest first.
    avps: Vec<(String, Vec<PvValue>)>,
    /// name -> items, newest first; an item is either a value or a list of fields.
    xavps: Vec<(String, Vec<Xavp>)>,
    /// String bytes added to `avps`/`xavps` since [`PvMsg::clear`] (removals
    /// do not give them back: the bound is on what one message may add).
    bytes: usize,
    /// `[shard] pv_max_value_bytes` / `pv_max_bytes_per_msg`
    /// ([`PvMsg::set_limits`]); 0 = the defaults.
    max_value_bytes: usize,
    max_bytes: usize,
    /// Writes refused by these bounds (or the name/value counts) since
    /// [`PvMsg::take_refused`]: counted in `core.pv_limit` when the route ends.
    refused: u32,
}

/// Default largest `$var` / `$avp` / `$xavp` string value, bytes
/// (`[shard] pv_max_value_bytes`).
pub const MAX_PV_VALUE_BYTES: usize = 64 * 1024;
/// Default string bytes one message may add to its `$avp`s and `$xavp`s
/// (`[shard] pv_max_bytes_per_msg`).
pub const MAX_AVP_BYTES_PER_MSG: usize = 1 << 20;

impl PvValue {
    fn str_len(&self) -> usize {
        match self {
            PvValue::Int(_) => 0,
            PvValue::Str(b) => b.len(),
        }
    }
}

impl Xavp {
    fn str_len(&self) -> usize {
        match self {
            Xavp::Value(v) => v.str_len(),
            Xavp::Fields(f) => f.iter().map(|(k, v)| k.len() + v.str_len()).sum(),
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Xavp {
    Value(PvValue),
    Fields(Vec<(String, PvValue)>),
}

/// Most `$avp` / `$xavp` names and values one message may hold.
const MAX_AVPS: usize = 256;

impl PvMsg {
    pub fn clear(&mut self) {
        self.avps.clear();
        self.xavps.clear();
        self.bytes = 0;
        self.refused = 0;
    }
    /// Writes refused since the last call.
    pub fn take_refused(&mut self) -> u32 {
        std::mem::take(&mut self.refused)
    }
    fn refuse(&mut self) -> bool {
        self.refused = self.refused.saturating_add(1);
        false
    }
    /// Bounds of this context (kept across [`PvMsg::clear`]): set once
    /// when a shard makes the context.
    pub fn set_limits(&mut self, max_value_bytes: usize, max_bytes_per_msg: usize) {
        self.max_value_bytes = max_value_bytes;
        self.max_bytes = max_bytes_per_msg;
    }
    /// Replaces every item of `name` with `items` (the first becomes the
    /// head), each a list of fields; false when the message's bounds
    /// refused one (the items before it are kept).
    pub(crate) fn xavp_set_items(
        &mut self,
        name: &str,
        items: Vec<Vec<(String, PvValue)>>,
    ) -> bool {
        self.xavp_rm(name);
        for fields in items.into_iter().rev() {
            if !self.xavp_add(name, Xavp::Fields(fields)) {
                return false;
            }
        }
        true
    }
    /// Drops the head item of `name`.
    pub(crate) fn xavp_drop_head(&mut self, name: &str) {
        self.xavp_rm_item(name, 0);
    }
    /// A field of the head item of `name`.
    pub(crate) fn xavp_head_field(&self, name: &str, field: &str) -> Option<&PvValue> {
        self.xavp_field(name, field)
    }
    /// Takes `n` bytes of the message's budget; false (nothing taken) when
    /// the value or the total would be too large.
    fn take_bytes(&mut self, n: usize) -> bool {
        let max_value = match self.max_value_bytes {
            0 => MAX_PV_VALUE_BYTES,
            v => v,
        };
        let max_total = match self.max_bytes {
            0 => MAX_AVP_BYTES_PER_MSG,
            v => v,
        };
        if n > max_value || self.bytes.saturating_add(n) > max_total {
            return self.refuse();
        }
        self.bytes += n;
        true
    }
    fn avp(&self, name: &str) -> Option<&Vec<PvValue>> {
        self.avps.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    fn avp_add(&mut self, name: &str, v: PvValue) -> bool {
        if !self.take_bytes(name.len() + v.str_len()) {
            return false;
        }
        if let Some((_, vals)) = self.avps.iter_mut().find(|(n, _)| n == name) {
            if vals.len() >= MAX_AVPS {
                return self.refuse();
            }
            vals.insert(0, v);
            return true;
        }
        if self.avps.len() >= MAX_AVPS {
            return self.refuse();
        }
        self.avps.push((name.to_string(), vec![v]));
        true
    }
    fn avp_pop(&mut self, name: &str) {
        if let Some((_, vals)) = self.avps.iter_mut().find(|(n, _)| n == name) {
            if !vals.is_empty() {
                vals.remove(0);
            }
        }
        self.avps.retain(|(_, v)| !v.is_empty());
    }
    fn avp_rm(&mut self, name: &str) {
        self.avps.retain(|(n, _)| n != name);
    }
    fn xavp(&self, name: &str) -> Option<&Vec<Xavp>> {
        self.xavps.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    fn xavp_mut(&mut self, name: &str) -> Option<&mut Vec<Xavp>> {
        self.xavps
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
    /// Removes every item of `name`.
    fn xavp_rm(&mut self, name: &str) {
        self.xavps.retain(|(n, _)| n != name);
    }
    /// Removes item `idx` of `name` (unset `$xavp(name)` drops the newest).
    fn xavp_rm_item(&mut self, name: &str, idx: usize) {
        if let Some(items) = self.xavp_mut(name) {
            if idx < items.len() {
                items.remove(idx);
            }
        }
        self.xavps.retain(|(_, v)| !v.is_empty());
    }
    /// Adds a new item at the head of `name`.
    fn xavp_add(&mut self, name: &str, item: Xavp) -> bool {
        if !self.take_bytes(name.len() + item.str_len()) {
            return false;
        }
        if let Some(items) = self.xavp_mut(name) {
            if items.len() >= MAX_AVPS {
                return self.refuse();
            }
            items.insert(0, item);
            return true;
        }
        if self.xavps.len() >= MAX_AVPS {
            return self.refuse();
        }
        self.xavps.push((name.to_string(), vec![item]));
        true
    }
    /// Adds `field` (newest first) to item `idx` of `name`; creates the
    /// first item when there is none.
    fn xavp_field_add(&mut self, name: &str, idx: usize, field: &str, v: PvValue) -> bool {
        let new = || Xavp::Fields(vec![(field.to_string(), v.clone())]);
        match self.xavp_mut(name).map(|items| items.get_mut(idx)) {
            Some(Some(Xavp::Fields(f))) => {
                if f.len() >= MAX_AVPS {
                    return false;
                }
                if !self.take_bytes(field.len() + v.str_len()) {
                    return false;
                }
                let Some(Some(Xavp::Fields(f))) = self.xavp_mut(name).map(|i| i.get_mut(idx))
                else {
                    return false;
                };
                f.insert(0, (field.to_string(), v));
                true
            }
            Some(Some(_)) => false,
            Some(None) | None if idx == 0 => self.xavp_add(name, new()),
            _ => false,
        }
    }
    /// `xavp_child_sets`: a new field at the head of the first item.
    fn xavp_child_set(&mut self, name: &str, field: &str, v: PvValue) -> bool {
        self.xavp_field_add(name, 0, field, v)
    }
    /// Removes the newest `field` of item `idx`.
    fn xavp_field_rm(&mut self, name: &str, idx: usize, field: &str) {
        if let Some(Some(Xavp::Fields(f))) = self.xavp_mut(name).map(|i| i.get_mut(idx)) {
            if let Some(pos) = f.iter().position(|(n, _)| n == field) {
                f.remove(pos);
            }
        }
    }
    fn xavp_child_rm(&mut self, name: &str, field: &str) {
        self.xavp_field_rm(name, 0, field)
    }
    fn xavp_field(&self, name: &str, field: &str) -> Option<&PvValue> {
        match self.xavp(name)?.first()? {
            Xavp::Fields(f) => f.iter().find(|(n, _)| n == field).map(|(_, v)| v),
            Xavp::Value(_) => None,
        }
    }
}

/// `name`, `name[i]`, `name=>field`, `name[i]=>field[j]` of `$xavp(...)`.
struct XavpRef<'a> {
    name: &'a str,
    idx: Option<i64>,
    field: Option<(&'a str, Option<i64>)>,
}

fn split_index(t: &str) -> Option<(&str, Option<i64>)> {
    match t.split_once('[') {
        Some((n, rest)) => {
            let i = rest.strip_suffix(']')?.trim().parse().ok()?;
            Some((n.trim(), Some(i)))
        }
        None => Some((t.trim(), None)),
    }
}

fn xavp_ref(arg: &str) -> Option<XavpRef<'_>> {
    let (root, field) = match arg.split_once("=>") {
        Some((r, f)) => (r, Some(split_index(f)?)),
        None => (arg, None),
    };
    let (name, idx) = split_index(root)?;
    Some(XavpRef { name, idx, field })
}

/// `$name(arg)[idx]{tr}...` split up.
struct Spec<'a> {
    class: &'a str,
    arg: Option<&'a str>,
    idx: Option<&'a str>,
    trans: Vec<&'a str>,
}

/// Index of the `close` matching the `open` at position 0 of `s`.
fn matching(s: &str, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in s.bytes().enumerate() {
        if b == open {
            depth += 1;
        } else if b == close {
            depth = depth.checked_sub(1)?;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

fn parse_spec(name: &str) -> Option<Spec<'_>> {
    let rest = name.strip_prefix('$')?;
    let body = if rest.starts_with('(') {
        let end = matching(rest, b'(', b')')?;
        if end + 1 != rest.len() {
            return None;
        }
        rest.get(1..end)?
    } else {
        rest
    };
    let class_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let class = body.get(..class_end)?;
    let mut tail = body.get(class_end..)?;
    let mut spec = Spec {
        class,
        arg: None,
        idx: None,
        trans: Vec::new(),
    };
    if tail.starts_with('(') {
        let end = matching(tail, b'(', b')')?;
        spec.arg = Some(tail.get(1..end)?);
        tail = tail.get(end + 1..)?;
    }
    if tail.starts_with('[') {
        let end = tail.find(']')?;
        spec.idx = Some(tail.get(1..end)?);
        tail = tail.get(end + 1..)?;
    }
    while tail.starts_with('{') {
        let end = matching(tail, b'{', b'}')?;
        spec.trans.push(tail.get(1..end)?);
        tail = tail.get(end + 1..)?;
    }
    if !tail.is_empty() {
        return None;
    }
    Some(spec)
}

fn pick<T: Clone>(vals: &[T], idx: Option<&str>) -> Option<T> {
    let i: i64 = match idx {
        None => 0,
        Some(t) => t.trim().parse().ok()?,
    };
    let n = vals.len() as i64;
    let i = if i < 0 { n.saturating_add(i) } else { i };
    if i < 0 || i >= n {
        return None;
    }
    vals.get(i as usize).cloned()
}

pub(super) fn register(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let pv = lua.create_table()?;
    // get/gete/getw: fast functions (ffi.rs; pv.get is in every route), the
    // mlua versions for the names whose value needs the VM ($sht, $T_).
    macro_rules! getters {
        ($($name:literal => $mode:ident),* $(,)?) => {
            [$(($name, NullMode::$mode, ffi::fast_fn!([1], |s, a| {
                let name = a.str(1)?;
                if needs_vm(name) {
                    return Ok(Ret::Slow);
                }
                Ok(match (get_plain(s, name)?, NullMode::$mode) {
                    (Val::Null, NullMode::Nil) => Ret::Nil,
                    (Val::Null, NullMode::Empty) => Ret::Str(Vec::new()),
                    (Val::Null, NullMode::Print) => Ret::Str(NULL_TEXT.as_bytes().to_vec()),
                    (Val::Int(i), _) => Ret::Int(i),
                    (Val::Str(b), _) => Ret::Str(b),
                })
            }))),*]
        };
    }
    for (name, mode, fast) in getters![
        "get" => Nil,
        "gete" => Empty,
        "getw" => Print,
    ] {
        let s = shared.clone();
        let slow = lua.create_function(move |lua, name: mlua::String| {
            let v = get_val(lua, &s, &name.to_str()?)?;
            match (v, &mode) {
                (Val::Null, NullMode::Nil) => Ok(Value::Nil),
                (Val::Null, NullMode::Empty) => Val::s(b"").into_lua(lua),
                (Val::Null, NullMode::Print) => Val::s(NULL_TEXT.as_bytes()).into_lua(lua),
                (v, _) => v.into_lua(lua),
            }
        })?;
        ffi::set_fast_or(lua, &pv, name, shared, fast, slow)?;
    }
    let s = shared.clone();
    pv.set(
        "geti",
        lua.create_function(move |lua, name: mlua::String| {
            Ok(get_val(lua, &s, &name.to_str()?)?.int())
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "getvs",
        lua.create_function(
            move |lua, (name, dflt): (mlua::String, mlua::String)| match get_val(
                lua,
                &s,
                &name.to_str()?,
            )? {
                // the value as it is (Kamailio does not convert), else the default
                Val::Null => Ok(Value::String(dflt)),
                v => v.into_lua(lua),
            },
        )?,
    )?;
    let s = shared.clone();
    pv.set(
        "getvn",
        lua.create_function(move |lua, (name, dflt): (mlua::String, i64)| {
            match get_val(lua, &s, &name.to_str()?)? {
                Val::Null => Ok(Value::Integer(dflt)),
                v => v.into_lua(lua),
            }
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "sets",
        lua.create_function(move |lua, (name, value): (mlua::String, mlua::String)| {
            let name = name.to_str()?;
            set(
                &s,
                &sht_key_expanded(lua, &s, &name)?,
                Some(PvValue::Str(value.as_bytes().to_vec())),
            )
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "seti",
        lua.create_function(move |lua, (name, value): (mlua::String, i64)| {
            let name = name.to_str()?;
            set(
                &s,
                &sht_key_expanded(lua, &s, &name)?,
                Some(PvValue::Int(value)),
            )
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "unset",
        lua.create_function(move |lua, name: mlua::String| {
            let name = name.to_str()?;
            set(&s, &sht_key_expanded(lua, &s, &name)?, None)
        })?,
    )?;
    let s = shared.clone();
    pv.set(
        "is_null",
        lua.create_function(move |lua, name: mlua::String| {
            Ok(get_val(lua, &s, &name.to_str()?)? == Val::Null)
        })?,
    )?;
    ksr.set("pv", pv)?;
    register_pvx(lua, ksr, shared)?;
    Ok(())
}

/// `$sht(table=>key)`-style names with the key's pseudo-variables
/// evaluated (Kamailio parses the key as a format: `$sht(ipban=>$si)` is
/// the entry named by the source IP). Other names are returned as they are.
pub(super) fn sht_key_expanded<'a>(
    lua: &Lua,
    s: &Shared,
    name: &'a str,
) -> mlua::Result<std::borrow::Cow<'a, str>> {
    use std::borrow::Cow;
    if !name.starts_with("$sht") {
        return Ok(Cow::Borrowed(name));
    }
    let Some((head, key)) = name.split_once("=>") else {
        return Ok(Cow::Borrowed(name));
    };
    let Some(key) = key.strip_suffix(')') else {
        return Ok(Cow::Borrowed(name));
    };
    if !key.contains('$') {
        return Ok(Cow::Borrowed(name));
    }
    let Some(k) = eval_format(lua, s, key.as_bytes())? else {
        return Ok(Cow::Borrowed(name));
    };
    Ok(Cow::Owned(format!(
        "{head}=>{})",
        String::from_utf8_lossy(&k)
    )))
}

/// Reads a pseudo-variable as a Lua value; nil for null or unknown.
pub(super) fn get(lua: &Lua, s: &Shared, name: &str) -> mlua::Result<Value> {
    if name.starts_with("$T_") {
        return super::tm::pv_get(lua, s, name);
    }
    if name.starts_with("$sht") {
        let name = sht_key_expanded(lua, s, name)?;
        if let Some(v) = super::htable::pv_get(lua, s, &name) {
            return v;
        }
    }
    get_val(lua, s, name)?.into_lua(lua)
}

/// Reads a pseudo-variable with its index and transformations.
pub(super) fn get_val(lua: &Lua, s: &Shared, name: &str) -> mlua::Result<Val> {
    if name.starts_with("$sht") {
        let name = sht_key_expanded(lua, s, name)?;
        if let Some(v) = super::htable::pv_get(lua, s, &name) {
            return Ok(match v? {
                Value::Integer(i) => Val::Int(i),
                Value::String(t) => Val::s(&t.as_bytes()),
                _ => Val::Null,
            });
        }
    }
    if name.starts_with("$T_") {
        return Ok(match super::tm::pv_get(lua, s, name)? {
            Value::Integer(i) => Val::Int(i),
            Value::String(t) => Val::s(&t.as_bytes()),
            _ => Val::Null,
        });
    }
    get_plain(s, name)
}

/// The names whose value [`get_val`] reads through the VM (htable, tm).
fn needs_vm(name: &str) -> bool {
    name.starts_with("$sht") || name.starts_with("$T_")
}

/// [`get_val`] without the names the VM answers (see [`needs_vm`]).
fn get_plain(s: &Shared, name: &str) -> mlua::Result<Val> {
    let Some(spec) = parse_spec(name) else {
        return Ok(Val::Null);
    };
    let mut v = base_val(s, &spec)?;
    for tr in &spec.trans {
        v = transform(v, tr);
    }
    Ok(v)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Pseudo-variables other modules own, by class name: `$sht(table=>key)`
/// (htable) and the like hook in here, one arm each. None: no module owns it.
fn module_pv_get(s: &Shared, spec: &Spec<'_>) -> Option<mlua::Result<Val>> {
    match spec.class {
        "dbr" => Some(Ok(super::sqlops::pv_dbr(s, spec.arg?))),
        "sqlrows" => Some(Ok(super::sqlops::pv_sqlrows(s, spec.arg?))),
        "dns" => Some(Ok(super::ipops_dns::pv_dns(s, spec.arg?))),
        "ptrquery" => Some(Ok(super::ipops_dns::pv_ptrquery(s, spec.arg?))),
        "srvquery" => Some(Ok(super::ipops_dns::pv_srvquery(s, spec.arg?))),
        "naptrquery" => Some(Ok(super::ipops_dns::pv_naptrquery(s, spec.arg?))),
        "redis" => Some(Ok(super::ndb_redis::pv_redis(s, spec.arg?))),
        "redisd" => Some(Ok(super::ndb_redis::pv_redisd(spec.arg?))),
        "jsonrpl" => Some(Ok(super::jsonrpcs::pv_jsonrpl(s, spec.arg?))),
        "dlg" => Some(super::dialog::pv_dlg(s, spec.arg?)),
        "dlg_var" => Some(super::dialog::pv_var_get(s, spec.arg?)),
        "dlg_ctx" => Some(super::dialog::pv_ctx_get(s, spec.arg?)),
        _ => None,
    }
}

/// Adds one item of fields to `$xavp(name)` (newest first, as Kamailio's
/// xavp_add); false when the message's xavp budget is spent.
pub(super) fn xavp_push_fields(m: &mut MsgCtx, name: &str, fields: Vec<(String, PvValue)>) -> bool {
    m.pv.xavp_add(name, Xavp::Fields(fields))
}

/// An index written as a number or as `$var(name)` (`$dbr(r=>[$var(i),0])`).
pub(super) fn index_arg(s: &Shared, t: &str) -> Option<i64> {
    let t = t.trim();
    if let Some(name) = t.strip_prefix("$var(").and_then(|r| r.strip_suffix(')')) {
        return s.vars.borrow().get(name).map(|v| Val::from(v).int());
    }
    t.parse().ok()
}

/// Setter side of [`module_pv_get`] (`value` None = unset).
fn module_pv_set(
    s: &Shared,
    spec: &Spec<'_>,
    value: &Option<PvValue>,
) -> Option<mlua::Result<bool>> {
    match spec.class {
        "dlg_var" => Some(super::dialog::pv_var_set(s, spec.arg?, value)),
        "dlg_ctx" => Some(super::dialog::pv_ctx_set(s, spec.arg?, value)),
        // "sht" => Some(super::htable::pv_set(s, spec.arg?, value)),
        _ => None,
    }
}

fn base_val(s: &Shared, spec: &Spec<'_>) -> mlua::Result<Val> {
    if let Some(v) = module_pv_get(s, spec) {
        return v;
    }
    match (spec.class, spec.arg) {
        ("var", Some(v)) => {
            // $var is never null in Kamailio: an unset one is 0.
            return Ok(s.vars.borrow().get(v).map(Val::from).unwrap_or(Val::Int(0)));
        }
        ("shard", None) => return Ok(Val::Int(s.shard_id as i64)),
        ("Ts" | "TS", None) => return Ok(Val::Int(now_unix())),
        ("timef", Some(fmt)) => return Ok(Val::Str(strftime_utc(fmt, now_unix()))),
        // KEMI never sets the cfg action return code: Kamailio reads 0.
        ("rc" | "retcode", None) => return Ok(Val::Int(0)),
        ("sbranch", Some(attr)) => return Ok(branch_attr(&s.pv.sbranch.borrow(), attr)),
        _ => {}
    }
    s.with_msg(|m| msg_val(m, spec))
}

/// `$avp`, `$xavp`, `$cnt` and message pseudo-variables.
fn msg_val(m: &MsgCtx, spec: &Spec<'_>) -> Val {
    match (spec.class, spec.arg) {
        ("avp", Some(a)) => {
            return m
                .pv
                .avp(a)
                .and_then(|v| pick(v, spec.idx))
                .map(|v| Val::from(&v))
                .unwrap_or(Val::Null);
        }
        ("xavp", Some(a)) => return xavp_val(&m.pv, a, spec.idx),
        ("xavu" | "xavi", Some(a)) => {
            return xavp_val(&m.pv, &family_arg(spec.class, a), spec.idx);
        }
        ("cnt", Some(a)) => {
            let inner = parse_spec(a);
            return Val::Int(match inner {
                Some(i) if i.class == "avp" => i
                    .arg
                    .and_then(|n| m.pv.avp(n))
                    .map_or(0, |v| v.len() as i64),
                Some(i) if i.class == "xavp" => i
                    .arg
                    .and_then(xavp_ref)
                    .filter(|r| r.field.is_none())
                    .and_then(|r| m.pv.xavp(r.name))
                    .map_or(0, |v| v.len() as i64),
                _ => 0,
            });
        }
        _ => {}
    }
    let msg = m.msg();
    match (spec.class, spec.arg) {
        ("hdr", Some(h)) => {
            let vals = hdr_values(&msg, h.as_bytes());
            if spec.idx == Some("*") {
                if vals.is_empty() {
                    return Val::Null;
                }
                return Val::Str(vals.join(&b","[..]));
            }
            return Val::opt(pick(&vals, spec.idx));
        }
        ("branch", Some("count")) => {
            return match m.branches.len() {
                0 => Val::Null,
                n => Val::Int(n as i64),
            };
        }
        ("branch", Some(attr)) => {
            return pick(&m.branches, spec.idx).map_or(Val::Null, |b| branch_attr(&b, attr));
        }
        ("hdrc", Some(h)) => return Val::Int(hdr_values(&msg, h.as_bytes()).len() as i64),
        ("hfl" | "hflc", Some(h)) => {
            let name = h.as_bytes();
            let kind = HdrName::from_bytes(name);
            let listy = matches!(
                kind,
                HdrName::Via | HdrName::Route | HdrName::RecordRoute | HdrName::Contact
            );
            let mut vals: Vec<&[u8]> = Vec::new();
            for v in hdr_values(&msg, name) {
                if !listy {
                    vals.push(v);
                    continue;
                }
                let mut parts = split_list(v, kind == HdrName::Via);
                if kind == HdrName::Contact {
                    // Kamailio's parsed contact list runs backwards per header
                    parts.retain(|p| *p != b"*");
                    parts.reverse();
                }
                vals.extend(parts);
            }
            if spec.class == "hflc" {
                return Val::Int(vals.len() as i64);
            }
            // no negative indexes for $hfl in Kamailio
            if spec.idx.is_some_and(|i| i.trim_start().starts_with('-')) {
                return Val::Null;
            }
            return Val::opt(pick(&vals, spec.idx));
        }
        _ => {}
    }
    if spec.arg.is_some() {
        return Val::Null;
    }
    let ruri = m.ruri();
    // parsed only by the pvs that need them
    let from = || msg.from().ok();
    let to = || msg.to().ok();
    match spec.class {
        "rm" => Val::s(msg.method_bytes()),
        "hu" => Val::opt(super::xhttp::hu(m)),
        "ru" | "ruri" => uri_whole(ruri),
        "rU" => uri_user(ruri),
        "rd" => uri_host(ruri),
        "rp" => uri_port(ruri),
        "rz" => uri_scheme(ruri),
        "ou" => uri_whole(msg.ruri()),
        "oU" => uri_user(msg.ruri()),
        "od" => uri_host(msg.ruri()),
        "rv" => match msg.parsed.start {
            crate::sip::StartLine::Request { version, .. }
            | crate::sip::StartLine::Response { version, .. } => Val::s(version.get(msg.buf)),
        },
        "du" => Val::opt(m.dst_uri.as_deref()),
        "dd" | "dp" | "dP" => dst_part(m.dst_uri.as_deref(), spec.class),
        "rP" => ruri.and_then(|r| uri_view(r, true)).map_or(Val::Null, |u| {
            Val::s(param_value(u.params, "transport").unwrap_or(b"UDP"))
        }),
        "su" => Val::Str(addr_uri(m.src, None)),
        "sut" => Val::Str(addr_uri(m.src, Some(m.proto))),
        "Ru" => Val::Str(addr_uri(m.local, None)),
        "Rut" => Val::Str(addr_uri(m.local, Some(m.proto))),
        "RAi" => Val::Str(m.local.ip().to_string().into_bytes()),
        "RAp" => Val::Int(i64::from(m.local.port())),
        "bf" => Val::Int(i64::from(m.bflags)),
        "mf" => Val::Int(i64::from(m.flags)),
        "si" => Val::Str(m.src.ip().to_string().into_bytes()),
        "sp" => Val::Int(i64::from(m.src.port())),
        "Ri" => Val::Str(m.local.ip().to_string().into_bytes()),
        "Rp" => Val::Int(i64::from(m.local.port())),
        "pr" | "proto" => Val::s(m.proto.name().as_bytes()),
        "conid" => m.conn_id.map_or(Val::Null, |id| Val::Int(id as i64)),
        "ua" => Val::opt(untrimmed(&msg, HdrName::UserAgent)),
        "ci" => Val::opt(msg.call_id()),
        "fu" => Val::opt(from().map(|f| f.uri)),
        "fU" => uri_user(from().map(|f| f.uri)),
        "fd" => uri_host(from().map(|f| f.uri)),
        "fn" => Val::opt(from().and_then(|f| raw_display(f.raw))),
        "ft" => Val::non_empty(from().and_then(|f| f.tag())),
        "tu" => Val::opt(to().map(|t| t.uri)),
        "tU" => uri_user(to().map(|t| t.uri)),
        "td" => uri_host(to().map(|t| t.uri)),
        "tn" => Val::opt(to().and_then(|t| raw_display(t.raw))),
        "tt" => Val::non_empty(to().and_then(|t| t.tag())),
        "cs" => Val::opt(
            msg.cseq()
                .ok()
                .map(|c| c.num.to_string().into_bytes())
                .as_deref(),
        ),
        "rs" => msg.status().map_or(Val::Null, |c| Val::Int(i64::from(c))),
        "rr" => Val::opt(msg.reason()),
        "mb" => Val::s(msg.buf),
        "ml" => Val::Int(m.len as i64),
        "mt" => Val::Int(if msg.is_request() { 1 } else { 2 }),
        "bs" => Val::Int(msg.body().len() as i64),
        "rb" => Val::s(msg.body()),
        "cl" => msg
            .content_length()
            .ok()
            .flatten()
            .map_or(Val::Null, |n| Val::Int(i64::from(n))),
        "cT" => Val::opt(msg.header(HdrName::ContentType)),
        "ct" => Val::opt(msg.header(HdrName::Contact)),
        "au" => credential(m, b"username", m.auth_user.as_deref()),
        "ar" => credential(m, b"realm", m.auth_realm.as_deref()),
        "adu" => credential(m, b"uri", m.auth_digest_uri.as_deref()),
        _ => Val::Null,
    }
}

fn xavp_val(pv: &PvMsg, arg: &str, idx: Option<&str>) -> Val {
    // `$(xavp(a)[1])` is not how Kamailio indexes xavps (`$xavp(a[1])`): null
    let (Some(r), None) = (xavp_ref(arg), idx) else {
        return Val::Null;
    };
    let Some(items) = pv.xavp(r.name) else {
        return Val::Null;
    };
    let Some(item) = pick(items, r.idx.map(|i| i.to_string()).as_deref()) else {
        return Val::Null;
    };
    match (item, r.field) {
        (Xavp::Value(v), None) => Val::from(&v),
        (Xavp::Fields(f), Some((field, j))) => {
            let vals: Vec<&PvValue> = f
                .iter()
                .filter(|(n, _)| n == field)
                .map(|(_, v)| v)
                .collect();
            pick(&vals, j.map(|j| j.to_string()).as_deref()).map_or(Val::Null, Val::from)
        }
        // `$xavp(name)` of a list of fields prints as Kamailio's `<<xavp:...>>`
        (Xavp::Fields(_), None) => Val::Str(format!("<<xavp:{}>>", r.name).into_bytes()),
        (Xavp::Value(_), Some(_)) => Val::Null,
    }
}

/// One attribute of a branch (`$branch(attr)`, `$sbranch(attr)`).
fn branch_attr(b: &super::BranchSpec, attr: &str) -> Val {
    match attr {
        "uri" => Val::non_empty(Some(&b.uri)),
        "dst_uri" => Val::opt(b.dst_uri.as_deref()),
        "path" => Val::opt(b.path.as_deref()),
        "q" => b.q.map_or(Val::Null, |q| Val::Int(i64::from(q))),
        "flags" => Val::Int(i64::from(b.bflags)),
        "count" => Val::Int(0),
        _ => Val::Null,
    }
}

/// `KSR.pvx.evalx` formats: `$pv` / `$(pv...)` replaced by their values
/// (`<null>` for null), `$$` is `$`; None for a lone `$` or an unknown pv.
fn eval_format(lua: &Lua, s: &Shared, fmt: &[u8]) -> mlua::Result<Option<Vec<u8>>> {
    let mut out = Vec::with_capacity(fmt.len());
    let mut i = 0;
    while let Some(&c) = fmt.get(i) {
        if c != b'$' {
            out.push(c);
            i += 1;
            continue;
        }
        let rest = fmt.get(i + 1..).unwrap_or_default();
        let len = match rest.first() {
            Some(b'$') => {
                out.push(b'$');
                i += 2;
                continue;
            }
            Some(b'(') => {
                let t = std::str::from_utf8(rest).unwrap_or("");
                match matching(t, b'(', b')') {
                    Some(e) => e + 1,
                    None => return Ok(None),
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || *c == b'_' => {
                let mut n = rest
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                    .unwrap_or(rest.len());
                if rest.get(n) == Some(&b'(') {
                    let t = std::str::from_utf8(rest.get(n..).unwrap_or_default()).unwrap_or("");
                    match matching(t, b'(', b')') {
                        Some(e) => n += e + 1,
                        None => return Ok(None),
                    }
                }
                n
            }
            _ => return Ok(None),
        };
        let name = std::str::from_utf8(fmt.get(i..i + 1 + len).unwrap_or_default()).unwrap_or("");
        if !known_pv(name) {
            return Ok(None);
        }
        match get_val(lua, s, name)?.into_bytes() {
            Some(v) => out.extend_from_slice(&v),
            // a transformed null prints as nothing, a plain one as <null>
            None if name.contains('{') => {}
            None => out.extend_from_slice(NULL_TEXT.as_bytes()),
        }
        i += 1 + len;
    }
    Ok(Some(out))
}

/// Whether `name` is a pseudo-variable this server knows.
fn known_pv(name: &str) -> bool {
    const CLASSES: &[&str] = &[
        "var", "avp", "xavp", "xavu", "xavi", "cnt", "hdr", "hdrc", "hfl", "hflc", "shard", "Ts",
        "TS", "timef", "rc", "retcode", "sbranch", "branch", "rm", "ru", "ruri", "rU", "rd", "rp",
        "rz", "rP", "ou", "oU", "od", "rv", "du", "dd", "dp", "dP", "bf", "mf", "si", "sp", "su",
        "sut", "Ri", "Rp", "Ru", "Rut", "RAi", "RAp", "pr", "proto", "conid", "ua", "ci", "fu",
        "fU", "fd", "fn", "ft", "tu", "tU", "td", "tn", "tt", "cs", "rs", "rr", "mb", "ml", "mt",
        "bs", "rb", "cl", "cT", "ct", "au", "ar", "adu", "dlg", "dlg_var", "dlg_ctx", "hu",
    ];
    name.starts_with("$T_") || parse_spec(name).is_some_and(|s| CLASSES.contains(&s.class))
}

/// The xavp-store form of a `$xavu(...)` / `$xavi(...)` argument.
fn family_arg(class: &str, arg: &str) -> String {
    if class == "xavi" {
        format!("\u{1}i{}", arg.to_ascii_lowercase())
    } else {
        format!("\u{1}u{arg}")
    }
}

/// An xavp item as a Lua table: field -> array of its values, newest first.
fn xavp_item_table(lua: &Lua, item: &Xavp) -> mlua::Result<Value> {
    let Xavp::Fields(f) = item else {
        return Ok(Value::Nil);
    };
    let t = lua.create_table()?;
    for (k, v) in f {
        let arr = match t.get::<Value>(k.as_str())? {
            Value::Table(a) => a,
            _ => {
                let a = lua.create_table()?;
                t.set(k.as_str(), a.clone())?;
                a
            }
        };
        arr.push(Val::from(v).into_lua(lua)?)?;
    }
    Ok(Value::Table(t))
}

/// `sip:ip:port` (`;transport=udp` with `transport`), IPv6 in brackets.
fn addr_uri(a: std::net::SocketAddr, transport: Option<crate::sip::Proto>) -> Vec<u8> {
    let mut t = match a.ip() {
        std::net::IpAddr::V4(ip) => format!("sip:{ip}:{}", a.port()),
        std::net::IpAddr::V6(ip) => format!("sip:[{ip}]:{}", a.port()),
    };
    if let Some(p) = transport {
        t.push_str(";transport=");
        t.push_str(p.name());
    }
    t.into_bytes()
}

/// `$dd`, `$dp` (a string, 5060 by default), `$dP` (UDP by default) of `$du`.
fn dst_part(du: Option<&[u8]>, which: &str) -> Val {
    let Some(u) = du.and_then(|d| uri_view(d, false)) else {
        return Val::Null;
    };
    match which {
        "dd" => Val::non_empty(Some(u.host)),
        "dp" => Val::Str(u.port.unwrap_or(5060).to_string().into_bytes()),
        _ => Val::s(param_value(u.params, "transport").unwrap_or(b"UDP")),
    }
}

/// The first header value of this kind with the blanks that end its line
/// (Kamailio's `$ua` keeps them).
fn untrimmed<'a>(msg: &crate::sip::SipMsg<'a>, kind: HdrName) -> Option<&'a [u8]> {
    let h = msg.parsed.headers.iter().find(|h| h.name == kind)?;
    let (start, mut end) = (h.value.start as usize, h.value.end as usize);
    while matches!(msg.buf.get(end), Some(b' ' | b'\t')) {
        end += 1;
    }
    msg.buf.get(start..end)
}

/// Copies of every value of header `name` (KSR.hdr.match_content).
pub(super) fn header_values(m: &MsgCtx, name: &[u8]) -> Vec<Vec<u8>> {
    hdr_values(&m.msg(), name)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect()
}

/// Every value of header `name` (any name, compact forms match), in order.
pub(super) fn hdr_values<'a>(msg: &crate::sip::SipMsg<'a>, name: &[u8]) -> Vec<&'a [u8]> {
    let kind = HdrName::from_bytes(name);
    if kind != HdrName::Other {
        return msg.headers(kind).collect();
    }
    let buf = msg.buf;
    msg.parsed
        .headers
        .iter()
        .filter(|h| h.name == HdrName::Other && h.name_span.get(buf).eq_ignore_ascii_case(name))
        .map(|h| h.value.get(buf))
        .collect()
}

/// The comma-separated bodies of a list header (quotes and `<>` respected).
/// `keep_sep`: a body keeps the comma that ends it (Kamailio's Via bodies).
fn split_list(v: &[u8], keep_sep: bool) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let (mut in_quote, mut in_angle, mut esc, mut start) = (false, false, false, 0);
    for (i, &c) in v.iter().enumerate() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' if in_quote => esc = true,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => in_angle = true,
            b'>' if !in_quote => in_angle = false,
            b',' if !in_quote && !in_angle => {
                let raw = v.get(start..i).unwrap_or_default();
                let part = trim(raw);
                let next = i + 1;
                if !part.is_empty() {
                    if keep_sep {
                        let lead = raw.len() - raw.trim_ascii_start().len();
                        out.push(v.get(start + lead..next).unwrap_or(part));
                    } else {
                        out.push(part);
                    }
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = trim(v.get(start..).unwrap_or_default());
    if !part.is_empty() {
        out.push(part);
    }
    out
}

/// The display name as written (quotes kept, like Kamailio's `$fn`).
fn raw_display(raw: &[u8]) -> Option<&[u8]> {
    let lt = raw.iter().position(|&b| b == b'<')?;
    let d = trim(raw.get(..lt)?);
    (!d.is_empty()).then_some(d)
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    b.get(start..end).unwrap_or(&[])
}

/// A digest parameter of the request's credentials, read before any auth
/// check: Proxy-Authorization, else Authorization (as Kamailio); `fallback`
/// is what an auth function recorded.
fn credential(m: &MsgCtx, param: &[u8], fallback: Option<&str>) -> Val {
    let msg = m.msg();
    for name in [&b"Proxy-Authorization"[..], b"Authorization"] {
        if let Some(v) = hdr_values(&msg, name)
            .first()
            .and_then(|v| digest_param(v, param))
        {
            return Val::Str(v);
        }
    }
    Val::opt(fallback.map(str::as_bytes))
}

fn digest_param(v: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let v = trim(v);
    let sp = v.iter().position(|c| c.is_ascii_whitespace())?;
    let mut rest = v.get(sp..)?;
    loop {
        rest = trim(rest);
        let eq = rest.iter().position(|&c| c == b'=')?;
        let key = trim(rest.get(..eq)?);
        let after = trim(rest.get(eq + 1..)?);
        let (val, next) = if let Some(q) = after.strip_prefix(b"\"") {
            let mut end = None;
            let mut esc = false;
            for (i, &c) in q.iter().enumerate() {
                if esc {
                    esc = false;
                } else if c == b'\\' {
                    esc = true;
                } else if c == b'"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end?;
            (q.get(..end)?, q.get(end + 1..)?)
        } else {
            let end = after.iter().position(|&c| c == b',').unwrap_or(after.len());
            (trim(after.get(..end)?), after.get(end..)?)
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(val.to_vec());
        }
        let comma = next.iter().position(|&c| c == b',')?;
        rest = next.get(comma + 1..)?;
    }
}

/// A URI as Kamailio sees it: sip/sips/tel only, `user=phone` SIP URIs
/// handled as tel (core `phone2tel=1`).
struct UriView<'a> {
    scheme: &'static str,
    user: Option<&'a [u8]>,
    host: &'a [u8],
    port: Option<u16>,
    params: &'a [u8],
}

/// The user part of a `user=phone` SIP URI is the number without its
/// parameters; `phone2tel` also names its scheme tel (the pvs do, the
/// `{uri.*}` transformations do not).
fn uri_view(raw: &[u8], phone2tel: bool) -> Option<UriView<'_>> {
    use crate::sip::Scheme;
    let u = SipUri::parse(raw).ok()?;
    let phone = matches!(u.scheme, Scheme::Sip | Scheme::Sips)
        && u.params
            .get(b"user")
            .flatten()
            .is_some_and(|v| v.eq_ignore_ascii_case(b"phone"));
    let scheme = match (u.scheme, phone && phone2tel) {
        (Scheme::Sip, false) => "sip",
        (Scheme::Sips, false) => "sips",
        (Scheme::Sip, true) | (Scheme::Tel, _) => "tel",
        (Scheme::Sips, true) => "tels",
        (Scheme::Other, _) => return None,
    };
    let user = if phone {
        u.user.map(|x| x.split(|&c| c == b';').next().unwrap_or(x))
    } else {
        u.user
    };
    let params = if u.scheme == Scheme::Tel {
        &[][..]
    } else {
        u.params.raw.strip_prefix(b";").unwrap_or(u.params.raw)
    };
    Some(UriView {
        scheme,
        user,
        host: u.host,
        port: u.port,
        params,
    })
}

fn uri_whole(raw: Option<&[u8]>) -> Val {
    Val::opt(
        raw.and_then(|r| uri_view(r, true))
            .map(|_| raw.unwrap_or_default()),
    )
}

fn uri_user(raw: Option<&[u8]>) -> Val {
    Val::non_empty(raw.and_then(|r| uri_view(r, true)).and_then(|u| u.user))
}

fn uri_host(raw: Option<&[u8]>) -> Val {
    Val::non_empty(raw.and_then(|r| uri_view(r, true)).map(|u| u.host))
}

fn uri_scheme(raw: Option<&[u8]>) -> Val {
    Val::opt(
        raw.and_then(|r| uri_view(r, true))
            .map(|u| u.scheme.as_bytes()),
    )
}

/// `$rp`: the port as a string, the scheme's default when absent.
fn uri_port(raw: Option<&[u8]>) -> Val {
    raw.and_then(|r| uri_view(r, true)).map_or(Val::Null, |u| {
        let p = u
            .port
            .unwrap_or(if u.scheme.ends_with('s') { 5061 } else { 5060 });
        Val::Str(p.to_string().into_bytes())
    })
}

/// One transformation (`s.len`, `uri.user`, `param.value,name`...); an
/// unknown one or one that does not apply gives null.
fn transform(v: Val, tr: &str) -> Val {
    let mut parts = tr.split(',');
    let op = parts.next().unwrap_or("").trim();
    let args: Vec<&str> = parts.collect();
    if v == Val::Null {
        return Val::Null;
    }
    let text = v.text().unwrap_or_default();
    match op {
        "s.len" => Val::Int(text.len() as i64),
        "s.int" => match &v {
            Val::Int(i) => Val::Int(*i),
            _ => strict_int(&text).map_or(Val::Null, Val::Int),
        },
        "s.tolower" => Val::Str(text.to_ascii_lowercase()),
        "s.toupper" => Val::Str(text.to_ascii_uppercase()),
        "s.substr" => {
            let (Some(a), Some(b)) = (
                args.first().and_then(|a| a.trim().parse::<i64>().ok()),
                args.get(1).and_then(|b| b.trim().parse::<i64>().ok()),
            ) else {
                return Val::Null;
            };
            let n = text.len() as i64;
            let start = if a < 0 { n.saturating_add(a) } else { a };
            if start < 0 || start > n || b < 0 {
                return Val::Null;
            }
            let end = if b == 0 {
                n
            } else {
                start.saturating_add(b).min(n)
            };
            Val::opt(text.get(start as usize..end as usize))
        }
        "uri.user" | "uri.host" | "uri.port" | "uri.params" | "uri.scheme" | "uri.param" => {
            let Some(u) = uri_view(&text, false) else {
                return Val::Null;
            };
            match op {
                "uri.user" => Val::s(u.user.unwrap_or_default()),
                "uri.host" => Val::s(u.host),
                "uri.port" => Val::Int(u.port.map_or(0, i64::from)),
                "uri.params" => Val::s(u.params),
                "uri.scheme" => Val::s(
                    text.iter()
                        .position(|&c| c == b':')
                        .and_then(|i| text.get(..i))
                        .unwrap_or_default(),
                ),
                _ => {
                    let name = args.first().map_or("", |a| a.trim());
                    Val::s(param_value(u.params, name).unwrap_or_default())
                }
            }
        }
        "nameaddr.uri" | "nameaddr.name" => {
            let Some((name, uri)) = first_nameaddr(&text) else {
                return Val::Null;
            };
            Val::s(if op == "nameaddr.uri" { uri } else { name })
        }
        "tobody.user" | "tobody.host" | "tobody.uri" | "tobody.display" | "tobody.tag"
        | "tobody.params" => {
            let Ok(na) = crate::sip::NameAddr::parse(&text) else {
                return Val::Null;
            };
            // one name-addr of a known scheme (a Contact list is no To body)
            if uri_view(na.uri, true).is_none() || na.params.raw.contains(&b',') {
                return Val::Null;
            }
            match op {
                "tobody.uri" => Val::s(na.uri),
                "tobody.display" => Val::s(raw_display(na.raw).unwrap_or_default()),
                // the text before `<`, trailing spaces included (as Kamailio)
                "nameaddr.name" => {
                    let lt = na.raw.iter().position(|&b| b == b'<').unwrap_or(0);
                    let d = na.raw.get(..lt).unwrap_or_default();
                    let start = d
                        .iter()
                        .position(|c| !c.is_ascii_whitespace())
                        .unwrap_or(d.len());
                    Val::s(d.get(start..).unwrap_or_default())
                }
                "tobody.tag" => Val::s(na.tag().unwrap_or_default()),
                "tobody.params" => {
                    Val::s(na.params.raw.strip_prefix(b";").unwrap_or(na.params.raw))
                }
                _ => match uri_view(na.uri, false) {
                    Some(u) if op == "tobody.user" => Val::s(u.user.unwrap_or_default()),
                    Some(u) => Val::s(u.host),
                    None => Val::Null,
                },
            }
        }
        "param.value" => {
            let name = args.first().map_or("", |a| a.trim());
            param_list_value(&text, name)
        }
        "param.count" => param_list(&text).map_or(Val::Null, |l| Val::Int(l.len() as i64)),
        "param.name" | "param.valueat" => {
            let (Some(i), Some(list)) = (
                args.first().and_then(|a| a.trim().parse::<usize>().ok()),
                param_list(&text),
            ) else {
                return Val::Null;
            };
            // out of range: "" (as Kamailio)
            let p = list.get(i).copied().unwrap_or_default();
            let (n, v) = match p.iter().position(|&c| c == b'=') {
                Some(e) => (
                    p.get(..e).unwrap_or_default(),
                    p.get(e + 1..).unwrap_or_default(),
                ),
                None => (p, p.get(..0).unwrap_or_default()),
            };
            Val::s(trim(if op == "param.name" { n } else { v }))
        }
        "s.trim" => Val::s(trim(&text)),
        "s.ltrim" => Val::s(&text[text.len() - text.trim_ascii_start().len()..]),
        "s.rtrim" => Val::s(text.trim_ascii_end()),
        "s.md5" => {
            use md5::Digest;
            let d = md5::Md5::digest(&text);
            Val::Str(
                d.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            )
        }
        "s.sha256" => {
            use sha2::Digest;
            let d = sha2::Sha256::digest(&text);
            Val::Str(
                d.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes(),
            )
        }
        "s.encode.hexa" => Val::Str(
            text.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ),
        "s.select" => {
            let (Some(i), Some(sep)) = (
                args.first().and_then(|a| a.trim().parse::<i64>().ok()),
                args.get(1).and_then(|a| a.bytes().next()),
            ) else {
                return Val::Null;
            };
            let parts: Vec<&[u8]> = text.split(|&c| c == sep).collect();
            Val::s(pick(&parts, Some(&i.to_string())).unwrap_or_default())
        }
        "s.strip" | "s.striptail" => {
            let Some(n) = args.first().and_then(|a| a.trim().parse::<usize>().ok()) else {
                return Val::Null;
            };
            let n = n.min(text.len());
            if op == "s.strip" {
                Val::s(text.get(n..).unwrap_or_default())
            } else {
                Val::s(text.get(..text.len() - n).unwrap_or_default())
            }
        }
        "s.numeric" => Val::Str(text.iter().copied().filter(u8::is_ascii_digit).collect()),
        "uri.transport" | "uri.maddr" | "uri.ttl" | "uri.method" => {
            let Some(u) = uri_view(&text, false) else {
                return Val::Null;
            };
            let name = match op {
                "uri.transport" => "transport",
                "uri.maddr" => "maddr",
                "uri.ttl" => "ttl",
                _ => "method",
            };
            Val::s(param_value(u.params, name).unwrap_or_default())
        }
        _ => Val::Null,
    }
}

/// The first name-addr of a (possibly comma-separated) header value:
/// (display name as written with its trailing blanks, URI). `*` is a URI.
pub(super) fn first_nameaddr(text: &[u8]) -> Option<(&[u8], &[u8])> {
    let t = trim(text);
    let mut in_quote = false;
    let mut esc = false;
    for (i, &c) in t.iter().enumerate() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            b'\\' if in_quote => esc = true,
            b'"' => in_quote = !in_quote,
            b'<' if !in_quote => {
                let close = t.get(i..)?.iter().position(|&c| c == b'>')? + i;
                let name = t.get(..i)?;
                return Some((name, t.get(i + 1..close)?));
            }
            b',' | b';' if !in_quote => return Some((&t[..0], trim(t.get(..i)?))),
            _ => {}
        }
    }
    (!t.is_empty() && !in_quote).then_some((&t[..0], t))
}

/// `name=value` in a `;`-separated list (URI params without the first `;`).
fn param_value<'a>(params: &'a [u8], name: &str) -> Option<&'a [u8]> {
    params.split(|&c| c == b';').find_map(|p| {
        let p = trim(p);
        let (n, v) = match p.iter().position(|&c| c == b'=') {
            Some(i) => (p.get(..i)?, p.get(i + 1..)?),
            None => (p, &p[p.len()..]),
        };
        trim(n)
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| trim(v))
    })
}

/// The parameters of a `;`-separated list; None when empty or when it is
/// not a parameter list (as Kamailio's param parser decides).
fn param_list(text: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    for p in text.split(|&c| c == b';') {
        let p = trim(p);
        if p.is_empty() {
            continue;
        }
        let n = trim(p.split(|&c| c == b'=').next().unwrap_or_default());
        if !n
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.!~*'+%".contains(c))
        {
            return None;
        }
        out.push(p);
    }
    (!out.is_empty()).then_some(out)
}

/// `{param.value,name}`: the list must be made of parameters (Kamailio fails
/// on anything else, e.g. a whole Via); an absent name is "".
fn param_list_value(text: &[u8], name: &str) -> Val {
    for p in text.split(|&c| c == b';') {
        let p = trim(p);
        let n = p.split(|&c| c == b'=').next().unwrap_or_default();
        let n = trim(n);
        if !p.is_empty()
            && !n
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.!~*'+%".contains(c))
        {
            return Val::Null;
        }
    }
    Val::s(param_value(text, name).unwrap_or_default())
}

/// `$timef(format)`: a strftime subset, UTC.
fn strftime_utc(fmt: &str, t: i64) -> Vec<u8> {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // civil from days (proleptic Gregorian)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let wday = (days + 4).rem_euclid(7) as usize;
    const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(f) = it.next() else {
            out.push('%');
            break;
        };
        let piece = match f {
            'Y' => y.to_string(),
            'y' => format!("{:02}", y.rem_euclid(100)),
            'm' => format!("{m:02}"),
            'd' => format!("{d:02}"),
            'e' => format!("{d:2}"),
            'H' => format!("{hh:02}"),
            'M' => format!("{mm:02}"),
            'S' => format!("{ss:02}"),
            'T' => format!("{hh:02}:{mm:02}:{ss:02}"),
            'F' => format!("{y}-{m:02}-{d:02}"),
            's' => t.to_string(),
            'a' => WD[wday].to_string(),
            'b' => MO[(m - 1).clamp(0, 11) as usize].to_string(),
            'j' => format!("{:03}", days - days_from_civil(y, 1, 1) + 1),
            'Z' => "UTC".to_string(),
            'z' => "+0000".to_string(),
            '%' => "%".to_string(),
            other => format!("%{other}"),
        };
        out.push_str(&piece);
    }
    out.into_bytes()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// KSR.pvx: `$var`, `$avp` and `$xavp` helpers of Kamailio's pv module.
fn register_pvx(lua: &Lua, ksr: &Table, shared: &Rc<Shared>) -> mlua::Result<()> {
    let t = lua.create_table()?;
    macro_rules! f {
        ($name:expr, $args:ty, $body:expr) => {{
            let s = shared.clone();
            let body = $body;
            t.set(
                $name,
                lua.create_function(move |lua, a: $args| body(lua, &s, a))?,
            )?;
        }};
    }
    fn null_mode(lua: &Lua, v: Val, mode: u8) -> mlua::Result<Value> {
        match (v, mode) {
            (Val::Null, b'e') => Val::s(b"").into_lua(lua),
            (Val::Null, b'w') => Val::s(NULL_TEXT.as_bytes()).into_lua(lua),
            (v, _) => v.into_lua(lua),
        }
    }
    fn pvs(v: &mlua::String) -> PvValue {
        PvValue::Str(v.as_bytes().to_vec())
    }
    fn code(ok: bool) -> i64 {
        if ok {
            1
        } else {
            -1
        }
    }
    f!("var_sets", (String, mlua::String), |_: &Lua,
                                            s: &Rc<Shared>,
                                            (n, v): (
        String,
        mlua::String
    )| {
        set(s, &format!("$var({n})"), Some(pvs(&v))).map(|_| 1)
    });
    f!(
        "var_seti",
        (String, i64),
        |_: &Lua, s: &Rc<Shared>, (n, v): (String, i64)| {
            set(s, &format!("$var({n})"), Some(PvValue::Int(v))).map(|_| 1)
        }
    );
    f!("var_get", String, |lua: &Lua, s: &Rc<Shared>, n: String| {
        get(lua, s, &format!("$var({n})"))
    });
    f!("avp_sets", (String, mlua::String), |_: &Lua,
                                            s: &Rc<Shared>,
                                            (n, v): (
        String,
        mlua::String
    )| {
        s.with_msg(|m| code(m.pv.avp_add(&n, pvs(&v))))
    });
    f!(
        "avp_seti",
        (String, i64),
        |_: &Lua, s: &Rc<Shared>, (n, v): (String, i64)| {
            s.with_msg(|m| code(m.pv.avp_add(&n, PvValue::Int(v))))
        }
    );
    for (name, mode) in [("avp_get", b'n'), ("avp_gete", b'e'), ("avp_getw", b'w')] {
        f!(name, String, move |lua: &Lua, s: &Rc<Shared>, n: String| {
            let v = s.with_msg(|m| m.pv.avp(&n).and_then(|v| v.first()).map(Val::from))?;
            null_mode(lua, v.unwrap_or(Val::Null), mode)
        });
    }
    f!("avp_rm", String, |_: &Lua, s: &Rc<Shared>, n: String| {
        s.with_msg(|m| {
            m.pv.avp_rm(&n);
            1
        })
    });
    f!(
        "avp_is_null",
        String,
        |_: &Lua, s: &Rc<Shared>, n: String| { s.with_msg(|m| code(m.pv.avp(&n).is_none())) }
    );
    f!("xavp_sets", (String, mlua::String), |_: &Lua,
                                             s: &Rc<Shared>,
                                             (n, v): (
        String,
        mlua::String
    )| {
        s.with_msg(|m| code(m.pv.xavp_add(&n, Xavp::Value(pvs(&v)))))
    });
    f!(
        "xavp_seti",
        (String, i64),
        |_: &Lua, s: &Rc<Shared>, (n, v): (String, i64)| {
            s.with_msg(|m| code(m.pv.xavp_add(&n, Xavp::Value(PvValue::Int(v)))))
        }
    );
    for (name, mode) in [("xavp_get", b'n'), ("xavp_gete", b'e'), ("xavp_getw", b'w')] {
        f!(name, String, move |lua: &Lua, s: &Rc<Shared>, n: String| {
            let v = s.with_msg(|m| xavp_val(&m.pv, &n, None))?;
            null_mode(lua, v, mode)
        });
    }
    f!("xavp_rm", String, |_: &Lua, s: &Rc<Shared>, n: String| {
        s.with_msg(|m| {
            m.pv.xavp_rm(&n);
            1
        })
    });
    f!(
        "xavp_is_null",
        String,
        |_: &Lua, s: &Rc<Shared>, n: String| { s.with_msg(|m| code(m.pv.xavp(&n).is_none())) }
    );
    f!(
        "xavp_child_sets",
        (String, String, mlua::String),
        |_: &Lua, s: &Rc<Shared>, (n, c, v): (String, String, mlua::String)| {
            s.with_msg(|m| code(m.pv.xavp_child_set(&n, &c, pvs(&v))))
        }
    );
    f!("xavp_child_seti", (String, String, i64), |_: &Lua,
                                                  s: &Rc<
        Shared,
    >,
                                                  (n, c, v): (
        String,
        String,
        i64
    )| {
        s.with_msg(|m| code(m.pv.xavp_child_set(&n, &c, PvValue::Int(v))))
    });
    for (name, mode) in [
        ("xavp_child_get", b'n'),
        ("xavp_child_gete", b'e'),
        ("xavp_child_getw", b'w'),
    ] {
        f!(
            name,
            (String, String),
            move |lua: &Lua, s: &Rc<Shared>, (n, c): (String, String)| {
                let v = s.with_msg(|m| m.pv.xavp_field(&n, &c).map(Val::from))?;
                null_mode(lua, v.unwrap_or(Val::Null), mode)
            }
        );
    }
    f!("xavp_child_rm", (String, String), |_: &Lua,
                                           s: &Rc<Shared>,
                                           (n, c): (
        String,
        String
    )| {
        s.with_msg(|m| {
            m.pv.xavp_child_rm(&n, &c);
            1
        })
    });
    f!("xavp_child_is_null", (String, String), |_: &Lua,
                                                s: &Rc<Shared>,
                                                (n, c): (
        String,
        String
    )| {
        s.with_msg(|m| code(m.pv.xavp_field(&n, &c).is_none()))
    });
    f!("xavp_params_explode", (mlua::String, String), |_: &Lua,
                                                       s: &Rc<
        Shared,
    >,
                                                       (p, n): (
        mlua::String,
        String
    )| {
        let p = p.as_bytes();
        let mut fields: Vec<(String, PvValue)> = Vec::new();
        for part in p.split(|&c| c == b';') {
            let part = trim(part);
            if part.is_empty() || fields.len() >= MAX_AVPS {
                continue;
            }
            let (k, v) = match part.iter().position(|&c| c == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &part[part.len()..]),
            };
            fields.push((
                String::from_utf8_lossy(trim(k)).into_owned(),
                PvValue::Str(trim(v).to_vec()),
            ));
        }
        s.with_msg(|m| code(m.pv.xavp_add(&n, Xavp::Fields(fields))))
    });
    f!("xavp_params_implode", (String, String), |_: &Lua,
                                                 s: &Rc<Shared>,
                                                 (n, pv): (
        String,
        String
    )| {
        let text = s.with_msg(|m| match m.pv.xavp(&n).and_then(|i| i.first()) {
            Some(Xavp::Fields(f)) => {
                let mut out = Vec::new();
                for (k, v) in f {
                    out.extend_from_slice(k.as_bytes());
                    out.push(b'=');
                    out.extend_from_slice(&Val::from(v).text().unwrap_or_default());
                    out.push(b';');
                }
                Some(out)
            }
            _ => None,
        })?;
        match text {
            Some(t) => set(s, &pv, Some(PvValue::Str(t))).map(|_| 1),
            None => Ok(-1),
        }
    });
    f!(
        "xavp_get_keys",
        (String, i64),
        |lua: &Lua, s: &Rc<Shared>, (n, idx): (String, i64)| {
            let keys = s.with_msg(|m| {
                let items = m.pv.xavp(&n)?;
                match pick(items, Some(&idx.to_string()))? {
                    Xavp::Fields(f) => {
                        // distinct names, newest first
                        let mut keys: Vec<String> = Vec::new();
                        for (k, _) in f {
                            if !keys.contains(&k) {
                                keys.push(k);
                            }
                        }
                        Some(keys)
                    }
                    Xavp::Value(_) => None,
                }
            })?;
            match keys {
                Some(k) => Ok(Value::Table(lua.create_sequence_from(k)?)),
                None => Ok(Value::Nil),
            }
        }
    );
    f!("pv_var_to_xavp", (String, String), |_: &Lua,
                                            s: &Rc<Shared>,
                                            (v, n): (
        String,
        String
    )| {
        let fields: Vec<(String, PvValue)> = {
            let vars = s.vars.borrow();
            if v == "*" {
                vars.iter()
                    .take(MAX_AVPS)
                    .map(|(k, x)| (k.clone(), x.clone()))
                    .collect()
            } else {
                vec![(v.clone(), vars.get(&v).cloned().unwrap_or(PvValue::Int(0)))]
            }
        };
        s.with_msg(|m| code(m.pv.xavp_add(&n, Xavp::Fields(fields))))
    });
    f!(
        "pv_xavp_to_var",
        String,
        |_: &Lua, s: &Rc<Shared>, n: String| {
            let fields = s.with_msg(|m| match m.pv.xavp(&n).and_then(|i| i.first()) {
                Some(Xavp::Fields(f)) => f.clone(),
                _ => Vec::new(),
            })?;
            if fields.is_empty() {
                return Ok(-1);
            }
            for (k, v) in fields {
                set(s, &format!("$var({k})"), Some(v))?;
            }
            Ok(1)
        }
    );
    f!(
        "xavp_getd",
        String,
        |lua: &Lua, s: &Rc<Shared>, n: String| {
            let items = s.with_msg(|m| m.pv.xavp(&n).cloned())?;
            let Some(items) = items else {
                return Ok(Value::Nil);
            };
            let arr = lua.create_table()?;
            for it in &items {
                arr.push(xavp_item_table(lua, it)?)?;
            }
            Ok(Value::Table(arr))
        }
    );
    f!(
        "xavp_getd_p1",
        (String, i64),
        |lua: &Lua, s: &Rc<Shared>, (n, i): (String, i64)| {
            let item = s.with_msg(|m| m.pv.xavp(&n).and_then(|v| pick(v, Some(&i.to_string()))))?;
            match item {
                Some(it) => xavp_item_table(lua, &it),
                None => Ok(Value::Nil),
            }
        }
    );
    f!(
        "xavp_slist_explode",
        (mlua::String, mlua::String, String, String),
        |_: &Lua,
         s: &Rc<Shared>,
         (list, seps, mode, n): (mlua::String, mlua::String, String, String)| {
            let (list, seps) = (list.as_bytes(), seps.as_bytes());
            let mut fields: Vec<(String, PvValue)> = Vec::new();
            for tok in list.split(|c| seps.contains(c)) {
                let tok = if mode.contains('t') { trim(tok) } else { tok };
                if tok.is_empty() || fields.len() >= MAX_AVPS {
                    continue;
                }
                fields.push(("v".to_string(), PvValue::Str(tok.to_vec())));
            }
            if fields.is_empty() {
                return Ok(-1);
            }
            s.with_msg(|m| code(m.pv.xavp_add(&n, Xavp::Fields(fields))))
        }
    );
    f!("xavp_copy", (String, i64, String), |_: &Lua,
                                            s: &Rc<Shared>,
                                            (src, i, dst): (
        String,
        i64,
        String
    )| {
        s.with_msg(|m| {
            let Some(item) = m.pv.xavp(&src).and_then(|v| pick(v, Some(&i.to_string()))) else {
                return -1;
            };
            // appended at the end of the destination stack
            match m.pv.xavp_mut(&dst) {
                Some(items) if items.len() < MAX_AVPS => {
                    items.push(item);
                    1
                }
                Some(_) => -1,
                None => code(m.pv.xavp_add(&dst, item)),
            }
        })
    });
    f!("xavp_copy_dst", (String, i64, String, i64), |_: &Lua,
                                                     s: &Rc<
        Shared,
    >,
                                                     (
        src,
        i,
        dst,
        j,
    ): (
        String,
        i64,
        String,
        i64
    )| {
        s.with_msg(|m| {
            let Some(item) = m.pv.xavp(&src).and_then(|v| pick(v, Some(&i.to_string()))) else {
                return -1;
            };
            match m.pv.xavp_mut(&dst) {
                Some(items) => {
                    let j = usize::try_from(j).unwrap_or(usize::MAX);
                    if let Some(slot) = items.get_mut(j) {
                        *slot = item;
                    } else if items.len() < MAX_AVPS {
                        items.push(item);
                    } else {
                        return -1;
                    }
                    1
                }
                None => -1,
            }
        })
    });
    f!("pv_xavp_print", (), |_: &Lua, s: &Rc<Shared>, (): ()| {
        s.with_msg(|m| {
            for (name, items) in &m.pv.xavps {
                tracing::info!(xavp = %name, items = items.len(), "pv_xavp_print");
            }
            1
        })
    });
    f!("evalx", (String, mlua::String), |lua: &Lua,
                                         s: &Rc<Shared>,
                                         (dst, fmt): (
        String,
        mlua::String
    )| {
        match eval_format(lua, s, &fmt.as_bytes())? {
            Some(v) => set(s, &dst, Some(PvValue::Str(v))).map(code),
            None => Ok(-1),
        }
    });
    f!("sbranch_set_ruri", (), |_: &Lua, s: &Rc<Shared>, (): ()| {
        let b = s.pv.sbranch.borrow().clone();
        if b.uri.is_empty() {
            return Ok(-1);
        }
        s.with_msg(|m| {
            // a reply has no R-URI to set
            if m.msg().is_request() {
                m.new_ruri = Some(b.uri);
            }
            m.dst_uri = b.dst_uri;
            m.path = b.path;
            m.ruri_q = b.q;
            m.bflags = b.bflags;
            1
        })
    });
    f!("sbranch_append", (), |_: &Lua, s: &Rc<Shared>, (): ()| {
        let b = s.pv.sbranch.borrow().clone();
        if b.uri.is_empty() {
            return Ok(-1);
        }
        s.with_msg(|m| {
            if m.branches.len() + 1 >= super::corex::MAX_BRANCHES {
                return -1;
            }
            m.branches.push(b);
            1
        })
    });
    f!("sbranch_reset", (), |_: &Lua, s: &Rc<Shared>, (): ()| {
        *s.pv.sbranch.borrow_mut() = Default::default();
        Ok(1)
    });
    ksr.set("pvx", t.clone())?;
    lua.load(XAVU_XAVI)
        .set_name("=ksr_pvx_xavu_xavi")
        .call::<()>(t)?;
    Ok(())
}

/// `xavu_*` (one item per name: setting replaces) and `xavi_*` (names and
/// fields case-insensitive) over the xavp store, under names scripts cannot
/// write (`\1u` / `\1i` prefix); `$xavu(...)` / `$xavi(...)` read the same.
const XAVU_XAVI: &str = r#"
local P = ...
local function u(n) return "\1u" .. n end
local function i(n) return "\1i" .. string.lower(n) end
local lower = string.lower
P.xavu_sets = function(n, v) P.xavp_rm(u(n)) return P.xavp_sets(u(n), v) end
P.xavu_seti = function(n, v) P.xavp_rm(u(n)) return P.xavp_seti(u(n), v) end
P.xavu_child_sets = function(n, c, v) P.xavp_child_rm(u(n), c) return P.xavp_child_sets(u(n), c, v) end
P.xavu_child_seti = function(n, c, v) P.xavp_child_rm(u(n), c) return P.xavp_child_seti(u(n), c, v) end
P.xavu_params_explode = function(p, n) P.xavp_rm(u(n)) return P.xavp_params_explode(p, u(n)) end
P.xavu_params_implode = function(n, pv) return P.xavp_params_implode(u(n), pv) end
P.xavi_sets = function(n, v) return P.xavp_sets(i(n), v) end
P.xavi_seti = function(n, v) return P.xavp_seti(i(n), v) end
P.xavi_child_sets = function(n, c, v) return P.xavp_child_sets(i(n), lower(c), v) end
P.xavi_child_seti = function(n, c, v) return P.xavp_child_seti(i(n), lower(c), v) end
P.xavi_getd = function(n) return P.xavp_getd(i(n)) end
P.xavi_getd_p1 = function(n, x) return P.xavp_getd_p1(i(n), x) end
P.xavi_get_keys = function(n, x) return P.xavp_get_keys(i(n), x) end
for fam, key in pairs({ xavu = u, xavi = i }) do
	local fld = fam == "xavi" and lower or function(c) return c end
	for _, f in ipairs({ "get", "gete", "getw", "rm", "is_null" }) do
		local g = P["xavp_" .. f]
		P[fam .. "_" .. f] = function(n) return g(key(n)) end
	end
	for _, f in ipairs({ "get", "gete", "getw", "rm", "is_null" }) do
		local g = P["xavp_child_" .. f]
		P[fam .. "_child_" .. f] = function(n, c) return g(key(n), fld(c)) end
	end
end
"#;
fn var_name(name: &str) -> Option<&str> {
    name.strip_prefix("$var(").and_then(|r| r.strip_suffix(')'))
}

/// Writes a pseudo-variable (`None` = unset). Unknown or read-only names are
/// a script error, as in Kamailio.
/// Ok(false) when the value cannot be assigned (Kamailio's false).
pub(super) fn set(s: &Shared, name: &str, value: Option<PvValue>) -> mlua::Result<bool> {
    if let Some(v) = var_name(name) {
        let mut vars = s.vars.borrow_mut();
        match value {
            Some(val) => {
                if val.str_len() > s.limits.msg.pv_max_value_bytes {
                    drop(vars);
                    s.counters.incr(crate::stats::Counter::PvLimit);
                    return Ok(false);
                }
                // Bounded like every table: a runaway script cannot grow it forever.
                let max_vars = s.limits.msg.pv_max_vars;
                if vars.len() >= max_vars && !vars.contains_key(v) {
                    s.counters.incr(crate::stats::Counter::PvLimit);
                    return Err(mlua::Error::RuntimeError(format!(
                        "too many $var() names (max {max_vars}: [shard] pv_max_vars)"
                    )));
                }
                vars.insert(v.to_string(), val);
            }
            None => {
                vars.remove(v);
            }
        }
        return Ok(true);
    }
    if let Some(spec) = parse_spec(name) {
        if let Some(r) = module_pv_set(s, &spec, &value) {
            return r;
        }
        match (spec.class, spec.arg) {
            ("avp", Some(a)) => {
                return s.with_msg(|m| match value {
                    Some(v) => m.pv.avp_add(a, v),
                    // unset removes the newest value, as Kamailio
                    None => {
                        m.pv.avp_pop(a);
                        true
                    }
                });
            }
            ("sbranch", Some(attr)) => {
                let mut b = s.pv.sbranch.borrow_mut();
                let text = value.as_ref().and_then(|v| Val::from(v).into_bytes());
                let int = value.as_ref().map(|v| Val::from(v).int());
                match attr {
                    "uri" => b.uri = text.unwrap_or_default(),
                    "dst_uri" => b.dst_uri = text,
                    "path" => b.path = text,
                    "q" => b.q = int.map(|q| q.clamp(0, 1000) as u16),
                    "flags" => b.bflags = int.unwrap_or(0) as u32,
                    _ => return Ok(false),
                }
                return Ok(true);
            }
            ("xavu", Some(a)) => {
                // one item per name, one value per field: setting replaces
                let arg = family_arg("xavu", a);
                let Some(r) = xavp_ref(&arg) else {
                    return Ok(false);
                };
                return s.with_msg(|m| match (r.field, value) {
                    (Some((f, _)), Some(v)) => {
                        m.pv.xavp_field_rm(r.name, 0, f);
                        m.pv.xavp_field_add(r.name, 0, f, v)
                    }
                    (Some((f, _)), None) => {
                        m.pv.xavp_field_rm(r.name, 0, f);
                        true
                    }
                    (None, Some(v)) => {
                        m.pv.xavp_rm(r.name);
                        m.pv.xavp_add(r.name, Xavp::Value(v))
                    }
                    (None, None) => {
                        m.pv.xavp_rm(r.name);
                        true
                    }
                });
            }
            ("xavi", Some(a)) => {
                let arg = format!("$xavp({})", family_arg("xavi", a));
                return set(s, &arg, value);
            }
            ("xavp", Some(a)) => {
                let Some(r) = xavp_ref(a) else {
                    return Ok(false);
                };
                let idx = r.idx.unwrap_or(0).max(0) as usize;
                return s.with_msg(|m| match (r.field, r.idx, value) {
                    // `$xavp(a=>f) = v` pushes a new item; `$xavp(a[i]=>f) = v`
                    // adds the field to item i (as Kamailio)
                    (Some((f, _)), None, Some(v)) => {
                        m.pv.xavp_add(r.name, Xavp::Fields(vec![(f.to_string(), v)]))
                    }
                    (Some((f, _)), Some(_), Some(v)) => m.pv.xavp_field_add(r.name, idx, f, v),
                    (Some((f, _)), _, None) => {
                        m.pv.xavp_field_rm(r.name, idx, f);
                        true
                    }
                    (None, _, Some(v)) => m.pv.xavp_add(r.name, Xavp::Value(v)),
                    (None, _, None) => {
                        m.pv.xavp_rm_item(r.name, idx);
                        true
                    }
                });
            }
            _ => {}
        }
    }
    if name.starts_with("$sht") {
        if let Some(r) = super::htable::pv_set(s, name, value.clone()) {
            return r.map(|()| true);
        }
    }
    let text = match &value {
        Some(PvValue::Str(b)) => Some(b.clone()),
        Some(PvValue::Int(i)) => Some(i.to_string().into_bytes()),
        None => None,
    };
    s.with_msg(|m| match name {
        "$ru" | "$ruri" => {
            m.new_ruri = text;
            Ok(true)
        }
        "$du" => {
            m.dst_uri = text;
            Ok(true)
        }
        "$rU" | "$rd" | "$rp" => {
            let Some(cur) = m.ruri().map(<[u8]>::to_vec) else {
                return Ok(false);
            };
            // Kamailio fails the assignment (false) for an R-URI it cannot parse.
            let u = match SipUri::parse(&cur) {
                Ok(u) if u.scheme != crate::sip::Scheme::Other => u,
                _ => return Ok(false),
            };
            let new = rebuild_uri(&u, name, text.as_deref());
            m.new_ruri = Some(new);
            Ok(true)
        }
        _ => Err(mlua::Error::RuntimeError(format!(
            "pseudo-variable {name} is not writable"
        ))),
    })?
}

/// A URI with its user, host or port replaced (`None` removes user/port).
pub(crate) fn rebuild_uri(u: &SipUri<'_>, which: &str, v: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(u.raw.len() + 16);
    out.extend_from_slice(match u.scheme {
        crate::sip::Scheme::Sips => b"sips:",
        crate::sip::Scheme::Tel => b"tel:",
        _ => b"sip:",
    });
    if u.scheme == crate::sip::Scheme::Tel {
        // tel:number;params — only the number can change
        out.extend_from_slice(if which == "$rU" {
            v.unwrap_or_default()
        } else {
            u.user.unwrap_or_default()
        });
        out.extend_from_slice(u.params.raw);
        return out;
    }
    // user=phone (phone2tel): the number is the user part before its first
    // `;`; its parameters stay.
    let phone = u
        .params
        .get(b"user")
        .flatten()
        .is_some_and(|x| x.eq_ignore_ascii_case(b"phone"));
    let kept: Vec<u8>;
    let user = match (which == "$rU", v) {
        (true, Some(new)) if phone => {
            let old = u.user.unwrap_or_default();
            let tail = old
                .iter()
                .position(|&c| c == b';')
                .map_or(&[][..], |i| &old[i..]);
            kept = [new, tail].concat();
            Some(&kept[..])
        }
        (true, v) => v,
        (false, _) => u.user,
    };
    if let Some(user) = user.filter(|x| !x.is_empty()) {
        out.extend_from_slice(user);
        if let Some(pw) = u.password {
            out.push(b':');
            out.extend_from_slice(pw);
        }
        out.push(b'@');
    }
    out.extend_from_slice(if which == "$rd" {
        v.unwrap_or(u.host)
    } else {
        u.host
    });
    let port_text;
    let port: Option<&[u8]> = if which == "$rp" {
        v
    } else {
        port_text = u.port.map(|p| p.to_string());
        port_text.as_deref().map(str::as_bytes)
    };
    if let Some(p) = port.filter(|x| !x.is_empty()) {
        out.push(b':');
        out.extend_from_slice(p);
    }
    out.extend_from_slice(u.params.raw);
    if !u.headers.is_empty() {
        out.push(b'?');
        out.extend_from_slice(u.headers);
    }
    out
}

/// Script-wide pv state of one shard: the `core.defines` names.
pub struct PvState {
    /// (name, value) from `core.defines`; value `None` for a bare `NAME`.
    pub defines: Vec<(String, Option<String>)>,
    /// `$sbranch(...)`: the static branch (per shard, as Kamailio's is per
    /// process), kept until `sbranch_reset()`.
    pub sbranch: std::cell::RefCell<super::BranchSpec>,
}

impl PvState {
    pub fn new(defines: &[String]) -> PvState {
        PvState {
            defines: defines
                .iter()
                .map(|d| match d.split_once('=') {
                    Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                    None => (d.trim().to_string(), None),
                })
                .collect(),
            sbranch: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kemi::testutil::{engine, request, run};

    fn tr(v: &str, t: &str) -> Val {
        transform(Val::s(v.as_bytes()), t)
    }

    #[test]
    fn spec_parsing() {
        let s = parse_spec("$(hdr(X-A)[-1]{s.len}{s.int})").unwrap();
        assert_eq!(
            (s.class, s.arg, s.idx, s.trans),
            ("hdr", Some("X-A"), Some("-1"), vec!["s.len", "s.int"])
        );
        let s = parse_spec("$cnt($avp(x))").unwrap();
        assert_eq!((s.class, s.arg), ("cnt", Some("$avp(x)")));
        let s = parse_spec("$xavp(a=>b)").unwrap();
        assert_eq!((s.class, s.arg), ("xavp", Some("a=>b")));
        assert!(parse_spec("$(hdr(X)").is_none());
        assert!(parse_spec("ru").is_none());
        assert!(parse_spec("$ru junk").is_none());
    }

    #[test]
    fn transformations() {
        let uri = "sip:bob@Example.com:5070;transport=udp;lr";
        assert_eq!(tr(uri, "uri.user"), Val::s(b"bob"));
        assert_eq!(tr(uri, "uri.host"), Val::s(b"Example.com"));
        assert_eq!(tr(uri, "uri.port"), Val::Int(5070));
        assert_eq!(tr("sip:a@b", "uri.port"), Val::Int(0));
        assert_eq!(tr(uri, "uri.params"), Val::s(b"transport=udp;lr"));
        assert_eq!(tr(uri, "uri.param,transport"), Val::s(b"udp"));
        assert_eq!(tr(uri, "uri.param,nope"), Val::s(b""));
        assert_eq!(tr("SIP:a@b", "uri.scheme"), Val::s(b"SIP"));
        assert_eq!(tr("im:a@b", "uri.user"), Val::Null);
        assert_eq!(tr("abc", "s.len"), Val::Int(3));
        assert_eq!(tr("AbC", "s.tolower"), Val::s(b"abc"));
        assert_eq!(tr("AbC", "s.toupper"), Val::s(b"ABC"));
        assert_eq!(tr("abcdef", "s.substr,1,3"), Val::s(b"bcd"));
        assert_eq!(tr("abcdef", "s.substr,2,0"), Val::s(b"cdef"));
        assert_eq!(tr("abcdef", "s.substr,-2,0"), Val::s(b"ef"));
        assert_eq!(tr("abcdef", "s.substr,9,1"), Val::Null);
        assert_eq!(tr("abc", "s.substr,1,9223372036854775807"), Val::s(b"bc"));
        assert_eq!(tr("abc", "s.substr,-9223372036854775808,1"), Val::Null);
        assert_eq!(tr(" 42 ", "s.int"), Val::Int(42));
        assert_eq!(tr("42abc", "s.int"), Val::Null);
        let from = "\"Al Ice\" <sip:alice@example.com;user=phone>;tag=t1;x=y";
        assert_eq!(tr(from, "tobody.user"), Val::s(b"alice"));
        assert_eq!(tr(from, "tobody.host"), Val::s(b"example.com"));
        assert_eq!(tr(from, "tobody.tag"), Val::s(b"t1"));
        assert_eq!(tr(from, "tobody.params"), Val::s(b"tag=t1;x=y"));
        assert_eq!(tr(from, "tobody.display"), Val::s(b"\"Al Ice\""));
        assert_eq!(tr(from, "nameaddr.name"), Val::s(b"\"Al Ice\" "));
        let list = "<sip:a@h1>;q=1, <sip:b@h2>";
        assert_eq!(tr(list, "nameaddr.uri"), Val::s(b"sip:a@h1"));
        assert_eq!(tr("*", "nameaddr.uri"), Val::s(b"*"));
        assert_eq!(
            tr("sip:c@h3;expires=5", "nameaddr.uri"),
            Val::s(b"sip:c@h3")
        );
        assert_eq!(tr("a=1;b=two", "param.value,b"), Val::s(b"two"));
        assert_eq!(tr("a=1;b=two", "param.value,c"), Val::s(b""));
        assert_eq!(
            tr("SIP/2.0/UDP h;branch=x", "param.value,branch"),
            Val::Null
        );
        assert_eq!(tr("x", "no.such"), Val::Null);
        assert_eq!(transform(Val::Null, "s.len"), Val::Null);
        assert_eq!(transform(Val::Int(1234), "s.len"), Val::Int(4));
        assert_eq!(tr(" a b ", "s.trim"), Val::s(b"a b"));
        assert_eq!(tr(" a b ", "s.ltrim"), Val::s(b"a b "));
        assert_eq!(tr(" a b ", "s.rtrim"), Val::s(b" a b"));
        assert_eq!(
            tr("abc", "s.md5"),
            Val::s(b"900150983cd24fb0d6963f7d28e17f72")
        );
        assert_eq!(tr("AB", "s.encode.hexa"), Val::s(b"4142"));
        assert_eq!(tr("a.b.c", "s.select,-1,."), Val::s(b"c"));
        assert_eq!(tr("a.b.c", "s.select,7,."), Val::s(b""));
        assert_eq!(tr("abcdef", "s.strip,2"), Val::s(b"cdef"));
        assert_eq!(tr("abcdef", "s.striptail,2"), Val::s(b"abcd"));
        assert_eq!(tr("abcdef", "s.strip,99"), Val::s(b""));
        assert_eq!(tr("a1b22", "s.numeric"), Val::s(b"122"));
        assert_eq!(tr("a=1;b", "param.count"), Val::Int(2));
        assert_eq!(tr("a=1;b", "param.name,1"), Val::s(b"b"));
        assert_eq!(tr("a=1;b", "param.valueat,0"), Val::s(b"1"));
        assert_eq!(tr("a=1;b", "param.name,5"), Val::s(b""));
        assert_eq!(tr("SIP/2.0/UDP h;branch=1", "param.count"), Val::Null);
        assert_eq!(
            tr("sip:h;transport=tcp;maddr=m", "uri.transport"),
            Val::s(b"tcp")
        );
        assert_eq!(tr("sip:h;transport=tcp;maddr=m", "uri.maddr"), Val::s(b"m"));
    }

    #[test]
    fn timef_formats_utc() {
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %b %j %%", 1_700_000_000),
            b"2023-11-14 22:13:20 Tue Nov 318 %".to_vec()
        );
        assert_eq!(strftime_utc("%F %T", 0), b"1970-01-01 00:00:00".to_vec());
    }

    #[test]
    fn credentials_params() {
        let v = br#"Digest username="a\"b", realm=r.example.com, uri="sip:x", response="1""#;
        assert_eq!(digest_param(v, b"username"), Some(br#"a\"b"#.to_vec()));
        assert_eq!(digest_param(v, b"realm"), Some(b"r.example.com".to_vec()));
        assert_eq!(digest_param(v, b"uri"), Some(b"sip:x".to_vec()));
        assert_eq!(digest_param(v, b"nonce"), None);
        assert_eq!(digest_param(b"Digest", b"uri"), None);
    }

    fn answer(script_body: &str, msg: &[u8]) -> String {
        let eng = engine(&format!(
            "function ksr_request_route()\n local r = {{}}\n \
             local function p(v) r[#r + 1] = type(v) .. ':' .. tostring(v) end\n\
             {script_body}\n out = table.concat(r, '|')\nend"
        ));
        let (_, outcome) = run(&eng, msg);
        assert_eq!(outcome, super::super::RouteOutcome::Done);
        eng.lua().globals().get::<String>("out").unwrap()
    }

    #[test]
    fn kamailio_types_and_nulls() {
        let msg = request(
            "INVITE tel:+123;phone-context=x SIP/2.0",
            Some(""),
            &[
                "Contact: \"A\" <sip:a@192.0.2.1>",
                "X-M: 1",
                "X-M: 2",
                "Authorization: Digest username=\"u1\", realm=\"r1\", uri=\"sip:y\"",
            ],
        );
        let got = answer(
            r#"for _, n in ipairs({"$rp", "$cs", "$rd", "$rU", "$rz", "$tt", "$ft", "$fn",
                "$var(nope)", "$au", "$ar", "$adu", "$(hdr(X-M)[-1])", "$hdrc(X-M)",
                "$(hdr(X-M)[*])", "$mt", "$rv", "$bs", "$rb", "$ruri"}) do p(KSR.pv.get(n)) end
               p(KSR.pv.getw("$du")) p(KSR.pv.is_null("$var(nope)")) p(KSR.kx.get_body())
               p(KSR.kx.gete_body()) p(KSR.kx.get_bodylen()) p(KSR.kx.get_cturi())
               p(KSR.hdr.get_idx("X-M", 1)) p(KSR.hdr.getw_idx("X-M", 2))
               p(KSR.hdr.match_content("X-M", "eq", "2", "l"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "string:5060|string:2|nil:nil|string:+123|string:tel|nil:nil|string:fromtag1|\
             nil:nil|number:0|string:u1|string:r1|string:sip:y|string:2|number:2|\
             string:1,2|number:1|string:SIP/2.0|number:0|string:|\
             string:tel:+123;phone-context=x|string:<null>|boolean:false|nil:nil|string:|\
             number:0|string:sip:a@192.0.2.1|string:2|string:<null>|boolean:true"
        );
    }

    #[test]
    fn user_phone_and_unknown_scheme() {
        let msg = request(
            "INVITE sip:+155;npdi@gw.example.com;user=phone SIP/2.0",
            None,
            &[],
        );
        let got = answer(
            r#"p(KSR.pv.get("$rz")) p(KSR.pv.get("$rU")) p(KSR.pv.get("$rd"))
               p(KSR.pv.get("$(ru{uri.scheme})"))
               p(KSR.pv.sets("$rU", "+199")) p(KSR.pv.get("$ru"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "string:tel|string:+155|string:gw.example.com|string:sip|boolean:true|\
             string:sip:+199;npdi@gw.example.com;user=phone"
        );
        let msg = request("MESSAGE im:bob@example.com SIP/2.0", None, &[]);
        let got = answer(
            r#"p(KSR.pv.get("$ru")) p(KSR.pv.get("$rd")) p(KSR.kx.get_ruri())
               p(KSR.pv.sets("$rU", "x")) p(KSR.pv.get("$tu"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "nil:nil|nil:nil|nil:nil|boolean:false|string:sip:bob@example.com"
        );
    }

    #[test]
    fn avp_and_xavp() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let got = answer(
            r#"KSR.pv.sets("$avp(a)", "one") KSR.pv.seti("$avp(a)", 2)
               p(KSR.pv.get("$avp(a)")) p(KSR.pv.get("$(avp(a)[1])")) p(KSR.pv.get("$cnt($avp(a))"))
               KSR.pv.unset("$avp(a)") p(KSR.pv.get("$avp(a)")) p(KSR.pvx.avp_is_null("b"))
               p(KSR.pvx.xavp_params_explode("k=v;n=1;e", "x"))
               p(KSR.pv.get("$xavp(x=>n)")) p(KSR.pv.get("$xavp(x=>e)"))
               p(table.concat(KSR.pvx.xavp_get_keys("x", 0), ","))
               p(KSR.pvx.xavp_params_implode("x", "$var(imp)")) p(KSR.pv.get("$var(imp)"))
               p(KSR.pvx.xavp_child_seti("c", "f", 3)) p(KSR.pvx.xavp_child_get("c", "f"))
               p(KSR.pvx.xavp_child_getw("c", "g")) p(KSR.pvx.xavp_child_is_null("c", "g"))
               KSR.pvx.xavp_rm("x") p(KSR.pvx.xavp_is_null("x"))
               KSR.pv.sets("$var(v1)", "s1") p(KSR.pvx.pv_var_to_xavp("v1", "vx"))
               p(KSR.pv.get("$xavp(vx=>v1)"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "number:2|string:one|number:2|string:one|number:1|number:1|string:1|string:|\
             string:k,n,e|number:1|string:k=v;n=1;e=;|number:1|number:3|string:<null>|\
             number:1|number:1|number:1|string:s1"
        );
        // $avp / $xavp do not outlive their message
        let eng = engine(
            "function ksr_request_route() if KSR.pv.get('$avp(z)') == nil then \
             n = (n or 0) + 1 end KSR.pv.sets('$avp(z)', 'x') end",
        );
        run(&eng, &msg);
        run(&eng, &msg);
        assert_eq!(crate::kemi::testutil::global_int(&eng, "n"), 2);
    }

    #[test]
    fn xavp_stack_and_dst_parts() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let got = answer(
            r#"KSR.pv.sets("$xavp(a=>x)", "a0x") KSR.pv.sets("$xavp(a[0]=>y)", "a0y")
               KSR.pv.sets("$xavp(a=>x)", "a1x") KSR.pv.sets("$xavp(a[0]=>y)", "a1y")
               KSR.pv.sets("$xavp(a[0]=>y)", "a1y2")
               p(KSR.pv.get("$xavp(a[1]=>x)")) p(KSR.pv.get("$xavp(a=>y)"))
               p(KSR.pv.get("$xavp(a=>y[1])")) p(KSR.pv.get("$cnt($xavp(a))"))
               p(table.concat(KSR.pvx.xavp_get_keys("a", 0), ","))
               p(KSR.pvx.xavp_getd_p1("a", 0).y[2]) p(#KSR.pvx.xavp_getd("a"))
               KSR.pv.unset("$xavp(a)") p(KSR.pv.get("$xavp(a=>x)"))
               p(KSR.pvx.xavp_slist_explode(" p ;q,, r", ";,", "t", "s"))
               p(table.concat(KSR.pvx.xavp_getd_p1("s", 0).v, "/"))
               KSR.pv.sets("$du", "sip:192.0.2.4:5099;transport=tcp")
               p(KSR.pv.get("$dd")) p(KSR.pv.get("$dp")) p(KSR.pv.get("$dP"))
               p(KSR.pv.get("$rP")) p(KSR.pv.get("$sut"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "string:a0x|string:a1y2|string:a1y|number:2|string:y,x|string:a1y|number:2|\
             string:a0x|number:1|string:p/q/r|string:192.0.2.4|string:5099|string:tcp|\
             string:UDP|string:sip:192.0.2.9:5060;transport=udp"
        );
    }

    #[test]
    fn header_field_lists() {
        assert_eq!(
            split_list(b"a;x=1, <sip:b,c>;q=1 ,\"d, e\" <f>", false),
            vec![&b"a;x=1"[..], b"<sip:b,c>;q=1", b"\"d, e\" <f>"]
        );
        assert_eq!(split_list(b"v1, v2", true), vec![&b"v1,"[..], b"v2"]);
        let msg = request(
            "OPTIONS sip:a@example.com SIP/2.0",
            None,
            &[
                "Contact: <sip:a@h>, <sip:b@h>",
                "Contact: sip:c@h",
                "Route: <sip:r1>, <sip:r2>",
            ],
        );
        let got = answer(
            r#"p(KSR.pv.get("$hfl(Contact)")) p(KSR.pv.get("$(hfl(Contact)[2])"))
               p(KSR.pv.get("$hflc(Contact)")) p(KSR.pv.get("$(hfl(Route)[1])"))
               p(KSR.pv.get("$(hfl(Route)[-1])")) p(KSR.pv.get("$hflc(Via)"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "string:<sip:b@h>|string:sip:c@h|number:3|string:<sip:r2>|nil:nil|number:1"
        );
    }

    #[test]
    fn xavu_replaces_and_xavi_ignores_case() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let got = answer(
            r#"KSR.pvx.xavu_sets("u", "a") KSR.pvx.xavu_sets("u", "b")
               p(KSR.pvx.xavu_get("u")) p(KSR.pv.get("$cnt($xavp(u))"))
               KSR.pv.sets("$xavu(w=>k)", "v1") KSR.pv.sets("$xavu(w=>k)", "v2")
               p(KSR.pv.get("$xavu(w=>k)")) p(KSR.pvx.xavu_child_get("w", "k"))
               KSR.pvx.xavi_child_sets("Ci", "FoO", "1")
               p(KSR.pv.get("$xavi(CI=>foo)")) p(KSR.pvx.xavi_child_is_null("cI", "FOO"))
               p(KSR.pvx.xavp_is_null("Ci"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "string:b|number:0|string:v2|string:v2|string:1|number:-1|number:1"
        );
    }

    #[test]
    fn evalx_and_sbranch() {
        let msg = request("OPTIONS sip:a@example.com SIP/2.0", None, &[]);
        let got = answer(
            r#"p(KSR.pvx.evalx("$var(e)", "m=$rm u=$(ru{uri.user}) d=$du $$ $var(nope)"))
               p(KSR.pv.get("$var(e)")) p(KSR.pvx.evalx("$var(e)", "x $ y"))
               p(KSR.pvx.evalx("$var(e)", "$unknownpv"))
               p(KSR.pvx.sbranch_append())
               KSR.pv.sets("$sbranch(uri)", "sip:b@192.0.2.7") KSR.pv.seti("$sbranch(q)", 300)
               p(KSR.pvx.sbranch_append()) p(KSR.pv.get("$(branch(uri)[0])"))
               p(KSR.pv.get("$(branch(q)[0])")) p(KSR.pv.get("$branch(count)"))
               p(KSR.pvx.sbranch_set_ruri()) p(KSR.pv.get("$ru"))
               p(KSR.pvx.sbranch_reset()) p(KSR.pv.get("$sbranch(uri)"))"#,
            &msg,
        );
        assert_eq!(
            got,
            "number:1|string:m=OPTIONS u=a d=<null> $ 0|number:-1|number:-1|number:-1|\
             number:1|string:sip:b@192.0.2.7|number:300|number:1|number:1|\
             string:sip:b@192.0.2.7|number:1|nil:nil"
        );
    }
}
