//! Shard services the auth and registrar KSR modules use: the tables shared
//! by every shard ([`SharedTables`]: user location, nonce counts, credential
//! cache), this shard's nonce generator, and the database handle.
//!
//! No route waits for another core: the shared tables are lock-striped and
//! locked for one operation at a time, so a save or lookup for any AOR runs
//! on the shard that has the message (docs/ARCHITECTURE.md has the
//! measurements behind this choice).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::auth::{CredCache, NcTracker, NonceGen, NonceKey};
use crate::config::{AuthConfig, RegistrarConfig};
use crate::db::{DbHandle, LocationRow};
use crate::partition::Striped;
use crate::stats::Counter;
use crate::usrloc::{
    ContactSpec, LocationParams, LookupCode, MatchingMode, MinExpiresMode, PathMode,
    RegistrarParams, RuidGen, SaveError, SaveFlags, SaveOutcome, SaveRequest, Ucontact, Unregister,
};

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds now (the KSR layer's clock; the pure modules take it as input).
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A cached subscriber row (what digest verification needs).
#[derive(Clone, Debug)]
pub struct CachedCred {
    pub password: String,
    pub ha1: String,
    pub ha1b: String,
}

/// An owned `SaveRequest`, to send to the shard that owns the AOR.
#[derive(Clone, Debug, Default)]
pub struct OwnedSave {
    pub aor: String,
    pub contacts: Vec<OwnedContact>,
    pub expires_hdr_s: Option<u32>,
    pub call_id: String,
    pub cseq: u32,
    pub user_agent: String,
    pub received: Option<String>,
    pub path: Option<String>,
    pub path_supported: bool,
    pub socket: Option<String>,
    pub methods: Option<u32>,
    pub flags: u32,
}

#[derive(Clone, Debug, Default)]
pub struct OwnedContact {
    pub uri: String,
    pub expires_s: Option<u32>,
    pub q: Option<u16>,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
}

impl OwnedSave {
    fn with_request<R>(&self, f: impl FnOnce(&SaveRequest<'_>) -> R) -> R {
        let specs: Vec<ContactSpec<'_>> = self
            .contacts
            .iter()
            .map(|c| ContactSpec {
                uri: &c.uri,
                expires_s: c.expires_s,
                q: c.q,
                instance: c.instance.as_deref(),
                reg_id: c.reg_id,
            })
            .collect();
        let req = SaveRequest {
            aor: &self.aor,
            contacts: &specs,
            expires_hdr_s: self.expires_hdr_s,
            call_id: &self.call_id,
            cseq: self.cseq,
            user_agent: &self.user_agent,
            received: self.received.as_deref(),
            path: self.path.as_deref(),
            path_supported: self.path_supported,
            socket: self.socket.as_deref(),
            methods: self.methods,
            cflags: 0,
            flags: SaveFlags(self.flags),
            max_contacts: None,
            expires_override_s: None,
            q_override: None,
        };
        f(&req)
    }
}

/// The tables every shard uses without a hop to another core (lock-striped,
/// see [`crate::partition::Striped`]): user location, nonce counts (a replay
/// is caught whichever shard it reaches) and the credential cache.
pub struct SharedTables {
    pub location: Striped<crate::usrloc::Location>,
    /// usrloc db_mode 3: AORs whose save (database read, change, database
    /// write) is in flight on some shard of this node. A second save of the
    /// same AOR waits for the first, as Kamailio holds the record's lock
    /// across the database write; without it both read the AOR before
    /// either wrote and each inserted its own row for one contact.
    pub db3_saving: Striped<std::collections::HashSet<Box<[u8]>>>,
    pub nc: Striped<NcTracker>,
    /// Shared values: a cache hit is a reference count, not three strings.
    pub creds: Striped<CredCache<Arc<CachedCred>>>,
    /// Transactions (KSR.tm), lock-striped as well.
    pub tm: Arc<super::tm::SharedTm>,
    /// KSR.htable tables (`[[htable]]`), each lock-striped.
    pub htable: super::htable::Htables,
    /// KSR.pike per-IP counters, lock-striped by IP.
    pub pike: super::pike::Pike,
    /// `[flood]`: per-source rate limit and auth-failure bans, checked by
    /// the shard before the route.
    pub flood: crate::flood::Flood,
    /// KSR.permissions address table (read-mostly, replaced whole on reload).
    pub permissions: super::permissions::AddressTable,
    /// `[permissions] enable`: register `KSR.permissions`.
    pub permissions_enabled: bool,
    /// `KSR.jsonrpcs.exec`: the control plane's method registry, set once
    /// the control interface runs.
    pub rpc_exec: std::sync::OnceLock<super::jsonrpcs::ScriptRpc>,
    /// KSR.dialog dialogs and profiles (`[dialog]`), lock-striped.
    pub dialog: super::dialog_store::Dialogs,
    /// KSR.dispatcher sets and destination state (when configured).
    pub dispatcher: Option<Arc<crate::dispatcher::Dispatcher>>,
    pub dispatcher_cfg: crate::config::DispatcherConfig,
    /// `[xhttp]` and `[websocket]` (KSR.xhttp, KSR.websocket).
    pub xhttp: std::sync::Arc<super::xhttp::Settings>,
    /// TCP/TLS connections (`[tcp]` / `[tls]` configured): every shard
    /// sends on any connection through it, without a hop.
    /// Set once at start (the TLS files are read then).
    pub conns: std::sync::OnceLock<Arc<crate::transport::conn::ConnTable>>,
}

/// Holds an AOR in [`SharedTables::db3_saving`] until dropped (also when
/// the save's future is dropped half-way).
pub struct Db3SaveGuard<'a> {
    tables: Option<&'a SharedTables>,
    aor: Box<[u8]>,
}

impl Drop for Db3SaveGuard<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.tables {
            t.db3_saving.get(&self.aor).remove(&self.aor);
        }
    }
}

/// Stripes per table: many more than shards, so two shards rarely meet on one.
pub const STRIPES: usize = 64;

impl SharedTables {
    /// With the transaction timers and limits of `[tm]`.
    pub fn with_tm(mut self, cfg: &crate::config::TmConfig, shard_count: usize) -> SharedTables {
        self.tm = Arc::new(super::tm::SharedTm::new(cfg, shard_count));
        self
    }

    /// With the htable tables, pike settings and permissions switch of
    /// `config` (before any row is loaded).
    pub fn with_modules(mut self, config: &crate::config::Config) -> SharedTables {
        self.htable = super::htable::Htables::new(&config.htable);
        self.pike = super::pike::Pike::new(&config.pike);
        self.flood = crate::flood::Flood::new(&config.flood);
        self.permissions_enabled = config.permissions.enable;
        self.dialog = super::dialog_store::Dialogs::new(&config.dialog);
        self.dispatcher = super::dispatcher::build(config, 0);
        self.dispatcher_cfg = config.dispatcher.clone();
        self.xhttp = std::sync::Arc::new(super::xhttp::Settings::new(
            &config.xhttp,
            &config.websocket,
        ));
        self
    }

    pub fn new(
        shard_count: usize,
        auth: &AuthConfig,
        registrar: &RegistrarConfig,
        epoch_unix_s: u64,
    ) -> SharedTables {
        let (params, reg) = location_params(shard_count, registrar);
        let per = |total: usize| total.div_ceil(STRIPES).max(1);
        SharedTables {
            location: Striped::new(STRIPES, |i| {
                crate::usrloc::Location::new(
                    params.clone(),
                    reg.clone(),
                    RuidGen::new(i as u16, epoch_unix_s),
                )
            }),
            db3_saving: Striped::new(STRIPES, |_| std::collections::HashSet::new()),
            nc: Striped::new(STRIPES, |_| NcTracker::new(per(auth.nc_max_entries))),
            creds: Striped::new(STRIPES, |_| {
                // 0 disables the cache (every lookup asks the database).
                CredCache::new(
                    if auth.cache_max_entries == 0 {
                        0
                    } else {
                        per(auth.cache_max_entries)
                    },
                    auth.cache_ttl_s,
                    auth.cache_negative_ttl_s,
                )
            }),
            tm: Arc::new(super::tm::SharedTm::new(
                &crate::config::TmConfig::default(),
                shard_count,
            )),
            htable: super::htable::Htables::default(),
            pike: super::pike::Pike::new(&crate::config::PikeConfig::default()),
            flood: crate::flood::Flood::new(&crate::config::FloodConfig::default()),
            permissions: super::permissions::AddressTable::default(),
            permissions_enabled: false,
            rpc_exec: std::sync::OnceLock::new(),
            dialog: super::dialog_store::Dialogs::new(&crate::config::DialogConfig::default()),
            dispatcher: None,
            dispatcher_cfg: crate::config::DispatcherConfig::default(),
            xhttp: Default::default(),
            conns: std::sync::OnceLock::new(),
        }
    }

    /// Loads every htable `dbtable` and (permissions enabled) the address
    /// table from the database: at start, before the shards run.
    pub async fn load_modules(
        &self,
        config: &crate::config::Config,
        db: &DbHandle,
    ) -> Result<(), String> {
        let now = unix_now_s();
        for t in self.htable.tables() {
            if t.def.dbtable.is_empty() {
                continue;
            }
            let what = format!("loading htable {} from {}", t.def.name, t.def.dbtable);
            let rows = db
                .htable_load(&t.def.dbtable, t.def.max_items)
                .map_err(|e| format!("{what}: {e}"))?
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            let (loaded, skipped) = t.load_rows(&rows, now);
            tracing::info!(table = %t.def.name, loaded, skipped, "htable loaded from the database");
        }
        if let Some(ds) = &self.dispatcher {
            let (n, skipped) = super::dispatcher::load(ds, &config.dispatcher, Some(db)).await?;
            tracing::info!(
                destinations = n,
                skipped,
                sets = ds.list().sets.len(),
                "dispatcher sets loaded"
            );
        }
        if self.permissions_enabled {
            let (n, skipped) = self
                .reload_addresses(db, &config.permissions)
                .await
                .map_err(|e| format!("loading permissions: {e}"))?;
            tracing::info!(entries = n, skipped, "permissions address table loaded");
        }
        Ok(())
    }

    /// Reads the permissions address table into [`SharedTables::permissions`];
    /// (entries, skipped rows).
    pub async fn reload_addresses(
        &self,
        db: &DbHandle,
        cfg: &crate::config::PermissionsConfig,
    ) -> Result<(usize, usize), crate::db::DbError> {
        let rows = db
            .address_load(&cfg.address_table, cfg.max_addresses)?
            .await?;
        Ok(self.permissions.replace(&rows))
    }

    /// Loads bindings read from the database at start (db_mode 1/2).
    pub fn load_rows(&self, rows: &[LocationRow], use_domain: bool, now: u64) -> LoadTotals {
        let mut t = LoadTotals::default();
        for r in rows {
            let (aor, c) = from_row(r, use_domain);
            let report = self
                .location
                .get(aor.as_bytes())
                .load(std::iter::once((aor, c)), now);
            t.loaded += report.loaded;
            t.expired += report.expired;
            t.rejected += report.rejected;
        }
        t
    }
}

/// What [`SharedTables::load_rows`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadTotals {
    pub loaded: usize,
    pub expired: usize,
    pub rejected: usize,
}

fn location_params(
    shard_count: usize,
    registrar: &RegistrarConfig,
) -> (LocationParams, RegistrarParams) {
    let total = registrar
        .max_aors_per_shard
        .saturating_mul(shard_count.max(1));
    let params = LocationParams {
        max_aors: total.div_ceil(STRIPES).max(1),
        max_contacts_per_aor: registrar.contacts_per_aor_cap.max(1),
        use_domain: registrar.use_domain,
        case_sensitive: registrar.case_sensitive,
        realm_prefix: registrar.realm_prefix.clone(),
        matching_mode: match registrar.matching_mode {
            1 => MatchingMode::ContactCallid,
            2 => MatchingMode::ContactPath,
            3 => MatchingMode::Callid,
            _ => MatchingMode::Contact,
        },
        cseq_delay_s: registrar.cseq_delay,
        track_dirty: registrar.db_mode == 2,
        ..LocationParams::default()
    };
    let reg = RegistrarParams {
        default_expires_s: registrar.default_expires,
        min_expires_s: registrar.min_expires,
        min_expires_mode: if registrar.min_expires_mode == 1 {
            MinExpiresMode::Reject
        } else {
            MinExpiresMode::Clamp
        },
        max_expires_s: registrar.max_expires,
        default_q: u16::try_from(registrar.default_q).ok().map(|q| q.min(1000)),
        max_contacts: u32::try_from(registrar.max_contacts).unwrap_or(u32::MAX),
        contact_max_size: registrar.contact_max_size,
        use_path: registrar.use_path,
        path_mode: match registrar.path_mode {
            0 => PathMode::Off,
            1 => PathMode::Lazy,
            _ => PathMode::Strict,
        },
        retry_after_s: registrar.retry_after,
    };
    (params, reg)
}

/// Per-shard services.
pub struct Services {
    pub shard_id: usize,
    pub shard_count: usize,
    pub tables: Arc<SharedTables>,
    /// An empty table with the shared one's settings: AOR normalisation and
    /// registrar parameters without taking a lock.
    pub location_rules: crate::usrloc::Location,
    pub db: Option<DbHandle>,
    pub nonce_key: NonceKey,
    pub nonce_gen: RefCell<NonceGen>,
    pub auth: AuthConfig,
    pub algorithms: Vec<crate::auth::Algorithm>,
    pub registrar: RegistrarConfig,
    /// Writes in flight to the database (write-through / write-back).
    pub db_pending: Cell<usize>,
    /// Location writes that failed, kept for the retry timer.
    pub db_retry: RefCell<RetryQueue>,
    /// Milliseconds between retries (`[db] retry_interval_ms`).
    pub db_retry_interval_ms: Cell<u64>,
    /// The shard's retry timer, parked while the retry queue is empty
    /// (woken by the first failed write, so an idle shard has no timer).
    pub db_retry_waker: RefCell<Option<std::task::Waker>>,
    /// Last time (Unix s) a database write failure was logged: one line a
    /// second at most.
    db_log_s: Cell<u64>,
    /// The same for failed credential reads.
    auth_log_s: Cell<u64>,
    /// KSR.sqlops connections (`[[sqlops]]`); None without any.
    pub sqlops: Option<crate::db::sqlops::SqlopsHandle>,
    /// KSR.ndb_redis servers (`[[redis]]`); None without any.
    pub redis: Option<crate::db::redis::RedisHandle>,
    /// KSR.ipops DNS lookups; None: every lookup fails (-4).
    pub dns: Option<crate::db::dns::DnsHandle>,
    /// `[ipops] pv_containers_max`.
    pub ipops_containers_max: usize,
    /// `[db] sqlops_results_maxsize` and `redis_replies_max`.
    pub sqlops_results_max: usize,
    pub redis_replies_max: usize,
    /// Last second a flood ban was logged (one line a second at most).
    ban_log_s: Cell<u64>,
    /// Bans not logged since that line.
    bans_unlogged: Cell<u64>,
}

/// One pending location write.
#[derive(Clone, Debug)]
pub enum RetryOp {
    Upsert(Box<LocationRow>),
    Delete,
}

/// Failed location writes, one per ruid (the latest wins), bounded.
#[derive(Debug)]
pub struct RetryQueue {
    ops: std::collections::HashMap<String, (u64, RetryOp)>,
    /// Writes in flight: ruid → sequence number of the newest one sent.
    issued: std::collections::HashMap<String, u64>,
    max: usize,
    seq: u64,
}

impl RetryQueue {
    pub fn new(max: usize) -> RetryQueue {
        RetryQueue {
            ops: std::collections::HashMap::new(),
            issued: std::collections::HashMap::new(),
            max,
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// A sequence number for a write being sent now: a failed write only
    /// replaces a queued one of the same ruid that is older.
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// A newer write of `ruid` (numbered `seq`) is being sent: the queued
    /// one is superseded.
    pub fn begin(&mut self, ruid: &str, seq: u64) {
        self.ops.remove(ruid);
        self.issued.insert(ruid.to_owned(), seq);
    }

    /// The write `seq` of `ruid` is answered; true when no newer write of
    /// it was sent meanwhile (so a failure must be retried).
    pub fn end(&mut self, ruid: &str, seq: u64) -> bool {
        match self.issued.get(ruid) {
            Some(&s) if s == seq => {
                self.issued.remove(ruid);
                true
            }
            // A newer write is in flight (Some) or already answered (None:
            // it removed the entry): that one carries the latest state.
            _ => false,
        }
    }

    /// Keeps a failed write; false when it was dropped (queue full).
    pub fn push(&mut self, seq: u64, ruid: String, op: RetryOp) -> bool {
        let full = self.ops.len() >= self.max;
        match self.ops.get_mut(&ruid) {
            Some(slot) => {
                if slot.0 < seq {
                    *slot = (seq, op);
                }
                true
            }
            None if !full => {
                self.ops.insert(ruid, (seq, op));
                true
            }
            None => false,
        }
    }

    /// Takes up to `n` writes to send again.
    pub fn take(&mut self, n: usize) -> (Vec<LocationRow>, Vec<String>) {
        let keys: Vec<String> = self.ops.keys().take(n).cloned().collect();
        let mut rows = Vec::new();
        let mut deletes = Vec::new();
        for k in keys {
            match self.ops.remove(&k) {
                Some((_, RetryOp::Upsert(r))) => rows.push(*r),
                Some((_, RetryOp::Delete)) => deletes.push(k),
                None => {}
            }
        }
        (rows, deletes)
    }
}

impl Services {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shard_id: usize,
        shard_count: usize,
        tables: Arc<SharedTables>,
        auth: &AuthConfig,
        registrar: &RegistrarConfig,
        nonce_secret: [u8; 32],
        db: Option<DbHandle>,
        epoch_unix_s: u64,
    ) -> Result<Services, String> {
        let (params, reg) = location_params(shard_count, registrar);
        let location_rules = crate::usrloc::Location::new(
            LocationParams {
                max_aors: 0,
                ..params
            },
            reg,
            RuidGen::new(u16::MAX, epoch_unix_s),
        );
        let algorithms = auth
            .offered_algorithms()
            .iter()
            .map(|a| {
                crate::auth::Algorithm::from_token(a)
                    .ok_or_else(|| format!("auth.algorithms: unknown algorithm `{a}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Services {
            shard_id,
            shard_count,
            tables,
            location_rules,
            db,
            nonce_key: NonceKey::new(nonce_secret).with_expire_s(auth.nonce_expire),
            nonce_gen: RefCell::new(NonceGen::new(shard_id as u16, epoch_unix_s << 16)),
            auth: auth.clone(),
            algorithms,
            registrar: registrar.clone(),
            db_pending: Cell::new(0),
            db_retry: RefCell::new(RetryQueue::new(100_000)),
            db_retry_interval_ms: Cell::new(1_000),
            db_retry_waker: RefCell::new(None),
            db_log_s: Cell::new(0),
            auth_log_s: Cell::new(0),
            sqlops: None,
            redis: None,
            sqlops_results_max: 32,
            dns: None,
            ipops_containers_max: 32,
            redis_replies_max: 32,
            ban_log_s: Cell::new(0),
            bans_unlogged: Cell::new(0),
        })
    }

    /// The AOR of `user`/`domain` per usrloc `use_domain`.
    pub fn aor(&self, user: &str, domain: &str) -> String {
        self.location_rules.aor(user, domain)
    }

    pub fn save(&self, req: &OwnedSave) -> Result<SaveOutcome, SaveError> {
        let now = unix_now_s();
        req.with_request(|r| self.tables.location.get(req.aor.as_bytes()).save(now, r))
    }

    pub fn lookup(&self, aor: &str, method_bit: u32) -> (LookupCode, Vec<Ucontact>) {
        let now = unix_now_s();
        let (code, contacts) = self
            .tables
            .location
            .get(aor.as_bytes())
            .lookup_method(aor, now, method_bit);
        (code, contacts.into_vec())
    }

    pub fn registered(&self, aor: &str) -> bool {
        self.tables
            .location
            .get(aor.as_bytes())
            .registered(aor, unix_now_s())
    }

    pub fn unregister(&self, aor: &str, contact: Option<&str>) -> Result<Vec<String>, i32> {
        let what = match contact {
            Some(c) => Unregister::Contact(c),
            None => Unregister::All,
        };
        self.unregister_what(aor, what)
    }

    /// Removes what `what` names; the ruids removed, or the
    /// `unregister()` return code.
    pub fn unregister_what(&self, aor: &str, what: Unregister<'_>) -> Result<Vec<String>, i32> {
        self.tables
            .location
            .get(aor.as_bytes())
            .unregister(aor, what)
            .map_err(|e| e.code())
    }

    /// usrloc db_mode 3: waits (at most `[auth] db_timeout_ms`) until no
    /// other save of `aor` is in flight on this node, then holds the AOR
    /// until the returned guard drops. None when the wait timed out. Other
    /// db_modes get a guard that holds nothing, at once.
    pub async fn db3_save_gate(&self, aor: &str) -> Option<Db3SaveGuard<'_>> {
        if self.registrar.db_mode != 3 {
            return Some(Db3SaveGuard {
                tables: None,
                aor: Box::default(),
            });
        }
        let key: Box<[u8]> = aor.as_bytes().into();
        let deadline = std::time::Instant::now() + Duration::from_millis(self.auth.db_timeout_ms);
        let mut pause = Duration::from_micros(500);
        loop {
            if self.tables.db3_saving.get(&key).insert(key.clone()) {
                return Some(Db3SaveGuard {
                    tables: Some(&*self.tables),
                    aor: key,
                });
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            crate::exec::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// usrloc db_mode 3 (database only): before an operation on `aor`, its
    /// bindings are read from the database into the owner's table, so the
    /// database is the only state that survives between operations. False
    /// when the database did not answer (the operation then fails).
    pub async fn refresh_from_db(&self, aor: &str) -> bool {
        if self.registrar.db_mode != 3 {
            return true;
        }
        let Some(db) = self.db.clone() else {
            tracing::warn!(shard = self.shard_id, "db_mode 3 without a database");
            return false;
        };
        tracing::debug!(
            shard = self.shard_id,
            aor,
            "reading location from the database"
        );
        let (user, domain) = match (self.registrar.use_domain, aor.split_once('@')) {
            (true, Some((u, d))) => (u.to_string(), d.to_string()),
            _ => (aor.to_string(), String::new()),
        };
        let fut = match db.location_load_aor(&user, &domain) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(shard = self.shard_id, aor, "location read not queued: {e}");
                return false;
            }
        };
        let timeout = Duration::from_millis(self.auth.db_timeout_ms);
        let rows = match crate::exec::timeout(timeout, fut).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(shard = self.shard_id, aor, "location read failed: {e}");
                return false;
            }
            Err(_) => {
                tracing::warn!(shard = self.shard_id, aor, "location read timed out");
                return false;
            }
        };
        let use_domain = self.registrar.use_domain;
        let contacts: Vec<Ucontact> = rows.iter().map(|r| from_row(r, use_domain).1).collect();
        tracing::debug!(
            shard = self.shard_id,
            aor,
            rows = contacts.len(),
            "location read from the database"
        );
        let mut loc = self.tables.location.get(aor.as_bytes());
        let _ = loc.unregister(aor, Unregister::All);
        loc.load(
            contacts.into_iter().map(|c| (aor.to_string(), c)),
            unix_now_s(),
        );
        true
    }

    /// Writes a save's changes to the database (db_mode 1); the receiver
    /// says when they are written (true) or queued for retry (false).
    pub fn write_through(
        self: &Rc<Self>,
        outcome: &SaveOutcome,
        counters: Rc<super::Shared>,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        let db = self.db.clone()?;
        let use_domain = self.registrar.use_domain;
        let rows: Vec<LocationRow> = outcome
            .changes
            .inserted
            .iter()
            .chain(outcome.changes.updated.iter())
            .filter(|c| !c.is_mem_only())
            .map(|c| to_row(&outcome.aor, c, use_domain))
            .collect();
        let deletes: Vec<String> = outcome
            .changes
            .deleted
            .iter()
            .map(|c| c.ruid.clone())
            .collect();
        self.spawn_db_write(db, rows, deletes, counters)
    }

    /// Issues upserts and deletes on the control runtime and tracks them.
    /// A write that fails (queue full, error, timeout) goes to the retry
    /// queue. The receiver, when any, says whether everything was written.
    pub fn spawn_db_write(
        self: &Rc<Self>,
        db: DbHandle,
        rows: Vec<LocationRow>,
        deletes: Vec<String>,
        shared: Rc<super::Shared>,
    ) -> Option<tokio::sync::oneshot::Receiver<bool>> {
        if rows.is_empty() && deletes.is_empty() {
            return None;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        this.db_pending.set(this.db_pending.get() + 1);
        let n = (rows.len() + deletes.len()) as u64;
        let counters = shared.clone();
        let spawned = crate::exec::spawn_local(async move {
            let ok = this.write_rows(&db, rows, deletes, &shared).await;
            this.db_pending.set(this.db_pending.get() - 1);
            let _ = done_tx.send(ok);
        });
        if spawned.is_err() {
            // The task table is full (or no shard runs here): counted; the
            // rows were moved into the task, which was not kept.
            self.db_pending.set(self.db_pending.get() - 1);
            counters.counters.add(Counter::DbWritesDropped, n);
            self.note_db_failure(0, n as usize, "task table full");
            return None;
        }
        Some(done_rx)
    }

    /// Writes `rows` and `deletes` and awaits the answers; what failed is
    /// queued for retry. True when everything was written.
    pub async fn write_rows(
        &self,
        db: &DbHandle,
        rows: Vec<LocationRow>,
        deletes: Vec<String>,
        shared: &super::Shared,
    ) -> bool {
        let seq = {
            let mut q = self.db_retry.borrow_mut();
            let seq = q.next_seq();
            for r in &rows {
                q.begin(&r.ruid, seq);
            }
            for d in &deletes {
                q.begin(d, seq);
            }
            seq
        };
        let mut all_ok = true;
        for chunk in rows.chunks(crate::db::BATCH_ROWS_MAX) {
            shared.counters.incr(Counter::DbQueries);
            let answer = match db.location_upsert(chunk.to_vec()) {
                Ok(f) => f.await,
                Err(e) => {
                    if matches!(e, crate::db::DbError::QueueFull) {
                        shared.counters.incr(Counter::DbQueueFull);
                    }
                    Err(e)
                }
            };
            let latest: Vec<bool> = {
                let mut q = self.db_retry.borrow_mut();
                chunk.iter().map(|r| q.end(&r.ruid, seq)).collect()
            };
            if let Err(e) = answer {
                all_ok = false;
                shared.counters.incr(Counter::DbErrors);
                let ops = chunk
                    .iter()
                    .zip(latest)
                    .filter(|(_, latest)| *latest)
                    .map(|(r, _)| (r.ruid.clone(), RetryOp::Upsert(Box::new(r.clone()))));
                self.requeue(seq, ops, shared, &e);
            }
        }
        for chunk in deletes.chunks(crate::db::BATCH_ROWS_MAX) {
            shared.counters.incr(Counter::DbQueries);
            let answer = match db.location_delete(chunk.to_vec()) {
                Ok(f) => f.await,
                Err(e) => {
                    if matches!(e, crate::db::DbError::QueueFull) {
                        shared.counters.incr(Counter::DbQueueFull);
                    }
                    Err(e)
                }
            };
            let latest: Vec<bool> = {
                let mut q = self.db_retry.borrow_mut();
                chunk.iter().map(|d| q.end(d, seq)).collect()
            };
            if let Err(e) = answer {
                all_ok = false;
                shared.counters.incr(Counter::DbErrors);
                let ops = chunk
                    .iter()
                    .zip(latest)
                    .filter(|(_, latest)| *latest)
                    .map(|(d, _)| (d.clone(), RetryOp::Delete));
                self.requeue(seq, ops, shared, &e);
            }
        }
        all_ok
    }

    fn requeue(
        &self,
        seq: u64,
        ops: impl Iterator<Item = (String, RetryOp)>,
        shared: &super::Shared,
        error: &crate::db::DbError,
    ) {
        let (mut kept, mut dropped) = (0usize, 0usize);
        {
            let mut q = self.db_retry.borrow_mut();
            for (ruid, op) in ops {
                if q.push(seq, ruid, op) {
                    kept += 1;
                } else {
                    dropped += 1;
                }
            }
        }
        if kept > 0 {
            if let Some(w) = self.db_retry_waker.borrow_mut().take() {
                w.wake();
            }
        }
        shared
            .counters
            .add(Counter::DbWritesDropped, dropped as u64);
        self.note_db_failure(kept, dropped, &error.to_string());
    }

    /// One log line a second at most about credential reads that failed.
    pub fn note_auth_db_failure(&self, why: &str) {
        let now = unix_now_s();
        if self.auth_log_s.replace(now) != now {
            tracing::warn!(
                shard = self.shard_id,
                "credentials not read ({why}): answering 500"
            );
        }
    }

    /// A source banned by `[flood] auth_failures_max`: one log line a
    /// second at most (with the count of bans not logged since).
    pub fn note_ban(&self, ip: std::net::IpAddr, until_ms: u64) {
        let now = unix_now_s();
        if self.ban_log_s.replace(now) == now {
            self.bans_unlogged.set(self.bans_unlogged.get() + 1);
            return;
        }
        let f = self.tables.flood.config();
        tracing::warn!(
            shard = self.shard_id,
            src = %ip,
            until_unix_s = until_ms / 1000,
            more_bans = self.bans_unlogged.replace(0),
            "source banned for {} s after {} failed authentications",
            f.ban_time_s,
            f.auth_failures_max
        );
    }

    /// db_mode 3 expiry delete that failed: one log line a second at most.
    fn note_expiry_failure(&self, why: &str) {
        let now = unix_now_s();
        if self.db_log_s.get() == now {
            return;
        }
        self.db_log_s.set(now);
        tracing::warn!(
            shard = self.shard_id,
            "deleting expired location rows failed ({why}); the rows stay (lookups skip expired rows)"
        );
    }

    /// One log line a second at most about failed location writes.
    fn note_db_failure(&self, kept: usize, dropped: usize, why: &str) {
        let now = unix_now_s();
        if self.db_log_s.get() == now {
            return;
        }
        self.db_log_s.set(now);
        let queued = self.db_retry.borrow().len();
        if dropped > 0 {
            tracing::error!(
                shard = self.shard_id,
                kept,
                dropped,
                queued,
                "location write failed ({why}); writes dropped (retry queue or task table full)"
            );
        } else {
            tracing::warn!(
                shard = self.shard_id,
                kept,
                queued,
                "location write failed ({why}); will retry"
            );
        }
    }

    /// Sends the queued failed writes again (one batch); true when the
    /// queue is empty afterwards.
    pub async fn retry_writes(&self, shared: &super::Shared) -> bool {
        let Some(db) = self.db.clone() else {
            return true;
        };
        let (rows, deletes) = self.db_retry.borrow_mut().take(crate::db::BATCH_ROWS_MAX);
        if rows.is_empty() && deletes.is_empty() {
            return true;
        }
        let n = rows.len() + deletes.len();
        shared.counters.add(Counter::DbWriteRetries, n as u64);
        self.db_pending.set(self.db_pending.get() + 1);
        let ok = self.write_rows(&db, rows, deletes, shared).await;
        self.db_pending.set(self.db_pending.get() - 1);
        if ok {
            tracing::info!(
                shard = self.shard_id,
                rows = n,
                queued = self.db_retry.borrow().len(),
                "location writes retried"
            );
        }
        ok && self.db_retry.borrow().is_empty()
    }

    /// db_mode 2: writes the dirty set of the stripes this shard looks
    /// after. Returns how many rows were sent.
    pub fn flush_dirty(self: &Rc<Self>, shared: Rc<super::Shared>) -> usize {
        let Some(db) = self.db.clone() else { return 0 };
        let use_domain = self.registrar.use_domain;
        let mut rows: Vec<LocationRow> = Vec::new();
        let mut deletes = Vec::new();
        let loc = &self.tables.location;
        for i in loc.parts_of(self.shard_id, self.shard_count) {
            let stripe = loc.at(i);
            let batch = {
                let mut stripe = stripe;
                let batch = stripe.take_dirty();
                if batch.overflowed {
                    // Changes were dropped from the dirty set: write every
                    // binding of the stripe, so none is lost.
                    tracing::warn!(
                        shard = self.shard_id,
                        stripe = i,
                        "usrloc dirty set overflowed: writing the whole stripe"
                    );
                    for r in stripe.dump() {
                        rows.extend(
                            r.contacts
                                .iter()
                                .filter(|c| !c.is_mem_only())
                                .map(|c| to_row(&r.aor, c, use_domain)),
                        );
                    }
                }
                batch
            };
            rows.extend(
                batch
                    .upserts
                    .iter()
                    .filter(|(_, c)| !c.is_mem_only())
                    .map(|(aor, c)| to_row(aor, c, use_domain)),
            );
            deletes.extend(batch.deletes);
        }
        let n = rows.len() + deletes.len();
        let _ = self.spawn_db_write(db, rows, deletes, shared);
        n
    }

    /// Removes expired bindings from the stripes this shard looks after; in
    /// db_mode 1 deletes their rows too, in db_mode 3 those rows that are
    /// still expired in the database.
    pub fn expire(self: &Rc<Self>, shared: Rc<super::Shared>) -> usize {
        let now = unix_now_s();
        let loc = &self.tables.location;
        let mut expired = Vec::new();
        for i in loc.parts_of(self.shard_id, self.shard_count) {
            expired.extend(loc.at(i).expire(now));
        }
        let n = expired.len();
        shared
            .counters
            .add(crate::stats::Counter::UlExpired, n as u64);
        if n > 0 && self.registrar.db_mode == 3 {
            if let Some(db) = self.db.clone() {
                // Database only: the row is the binding, and another server
                // sharing it may have refreshed it since this one read it,
                // so only rows still expired go. Not retried: an expired
                // row left behind is skipped by every read.
                let ruids: Vec<String> = expired.into_iter().map(|e| e.contact.ruid).collect();
                for chunk in ruids.chunks(crate::db::BATCH_ROWS_MAX) {
                    match db.location_delete_expired(chunk.to_vec(), now as i64) {
                        Ok(reply) => {
                            let this = self.clone();
                            let spawned = crate::exec::spawn_local(async move {
                                if let Err(e) = reply.await {
                                    this.note_expiry_failure(&e.to_string());
                                }
                            });
                            if spawned.is_err() {
                                self.note_expiry_failure("task table full");
                            }
                        }
                        Err(e) => self.note_expiry_failure(&e.to_string()),
                    }
                }
            }
        } else if n > 0 && self.registrar.db_mode == 1 {
            if let Some(db) = self.db.clone() {
                let _ = self.spawn_db_write(
                    db,
                    Vec::new(),
                    expired.into_iter().map(|e| e.contact.ruid).collect(),
                    shared,
                );
            }
        }
        n
    }
}

/// Latest Unix second every database backend stores in `expires`.
const DB_TIME_UNIX_S_MAX: i64 = i32::MAX as i64;

/// A location row for the database.
pub fn to_row(aor: &str, c: &Ucontact, use_domain: bool) -> LocationRow {
    let (username, domain) = match (use_domain, aor.split_once('@')) {
        (true, Some((u, d))) => (u.to_string(), Some(d.to_string())),
        _ => (aor.to_string(), None),
    };
    LocationRow {
        ruid: c.ruid.clone(),
        username,
        domain,
        contact: c.contact.clone(),
        received: c.received.clone(),
        path: c.path.clone(),
        // With max_expires = 0 (Kamailio's default: no maximum) a binding
        // may outlive what every backend's `expires` column holds
        // (2038-01-19); the row says that date rather than failing its batch.
        expires_unix_s: i64::try_from(c.expires_unix_s)
            .unwrap_or(i64::MAX)
            .min(DB_TIME_UNIX_S_MAX),
        q: c.q.map(|q| q as f32 / 1000.0).unwrap_or(-1.0),
        callid: c.callid.clone(),
        cseq: c.cseq as i32,
        last_modified_unix_s: c.last_modified_unix_s as i64,
        flags: c.flags as i32,
        cflags: c.cflags as i32,
        user_agent: c.user_agent.clone(),
        socket: c.socket.clone(),
        methods: Some(c.methods as i32),
        instance: c.instance.clone(),
        reg_id: c.reg_id as i32,
        server_id: 0,
        connection_id: -1,
        keepalive: 0,
        partition: 0,
    }
}

/// A binding back from a database row, with its AOR.
pub fn from_row(r: &LocationRow, use_domain: bool) -> (String, Ucontact) {
    let aor = match (&r.domain, use_domain) {
        (Some(d), true) if !d.is_empty() => format!("{}@{d}", r.username),
        _ => r.username.clone(),
    };
    let c = Ucontact {
        ruid: r.ruid.clone(),
        contact: r.contact.clone(),
        received: r.received.clone(),
        path: r.path.clone(),
        expires_unix_s: r.expires_unix_s.max(0) as u64,
        q: (r.q >= 0.0).then(|| (r.q * 1000.0).round() as u16),
        callid: r.callid.clone(),
        cseq: r.cseq.max(0) as u32,
        flags: r.flags as u32,
        cflags: r.cflags as u32,
        user_agent: r.user_agent.clone(),
        socket: r.socket.clone(),
        methods: r.methods.map(|m| m as u32).unwrap_or(u32::MAX),
        instance: r.instance.clone(),
        reg_id: r.reg_id.max(0) as u32,
        last_modified_unix_s: r.last_modified_unix_s.max(0) as u64,
    };
    (aor, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_expires_fit_the_database_column() {
        let c = Ucontact {
            ruid: "r".into(),
            contact: "sip:alice@192.0.2.1".into(),
            received: None,
            path: None,
            expires_unix_s: u64::from(u32::MAX) * 4,
            q: None,
            callid: "c".into(),
            cseq: 1,
            flags: 0,
            cflags: 0,
            user_agent: String::new(),
            socket: None,
            methods: 0,
            instance: None,
            reg_id: 0,
            last_modified_unix_s: 1_700_000_000,
        };
        let row = to_row("alice", &c, false);
        assert_eq!(row.expires_unix_s, i64::from(i32::MAX));
        let c = Ucontact {
            expires_unix_s: 1_800_000_000,
            ..c
        };
        assert_eq!(to_row("alice", &c, false).expires_unix_s, 1_800_000_000);
    }

    #[test]
    fn registrar_config_maps_to_usrloc_params() {
        let (p, r) = location_params(2, &RegistrarConfig::default());
        assert_eq!(r.min_expires_mode, MinExpiresMode::Clamp);
        assert_eq!((r.max_expires_s, r.max_contacts), (0, 0));
        assert!(!r.use_path);
        assert_eq!(r.path_mode, PathMode::Strict);
        assert_eq!(r.default_q, None);
        assert_eq!(
            p.max_contacts_per_aor,
            crate::config::CONTACTS_PER_AOR_CAP_DEFAULT
        );
        assert_eq!(p.matching_mode, MatchingMode::Contact);

        let cfg = RegistrarConfig {
            min_expires_mode: 1,
            max_expires: 7200,
            max_contacts: 3,
            contacts_per_aor_cap: 8,
            use_path: true,
            path_mode: 1,
            default_q: 500,
            case_sensitive: true,
            realm_prefix: "sip.".into(),
            contact_max_size: 100,
            retry_after: 9,
            matching_mode: 3,
            cseq_delay: 0,
            ..RegistrarConfig::default()
        };
        let (p, r) = location_params(1, &cfg);
        assert_eq!(r.min_expires_mode, MinExpiresMode::Reject);
        assert_eq!((r.max_expires_s, r.max_contacts), (7200, 3));
        assert!(r.use_path);
        assert_eq!(r.path_mode, PathMode::Lazy);
        assert_eq!(r.default_q, Some(500));
        assert_eq!((r.contact_max_size, r.retry_after_s), (100, 9));
        assert_eq!(p.max_contacts_per_aor, 8);
        assert!(p.case_sensitive);
        assert_eq!(p.realm_prefix, "sip.");
        assert_eq!(p.matching_mode, MatchingMode::Callid);
        assert_eq!(p.cseq_delay_s, 0);
    }

    fn row(ruid: &str, contact: &str) -> LocationRow {
        let c = Ucontact {
            ruid: ruid.into(),
            contact: contact.into(),
            received: None,
            path: None,
            expires_unix_s: 1_800_000_000,
            q: None,
            callid: "c".into(),
            cseq: 1,
            flags: 0,
            cflags: 0,
            user_agent: String::new(),
            socket: None,
            methods: 0,
            instance: None,
            reg_id: 0,
            last_modified_unix_s: 1_700_000_000,
        };
        to_row("alice", &c, false)
    }

    #[test]
    fn retry_queue_keeps_the_latest_write_per_contact_and_is_bounded() {
        let mut q = RetryQueue::new(2);
        // write 1 of r1 is sent, then write 2; write 2 fails first, then 1
        let s1 = q.next_seq();
        q.begin("r1", s1);
        let s2 = q.next_seq();
        q.begin("r1", s2);
        assert!(q.end("r1", s2));
        assert!(q.push(
            s2,
            "r1".into(),
            RetryOp::Upsert(Box::new(row("r1", "sip:new")))
        ));
        assert!(!q.end("r1", s1), "an older write is not retried");
        // an older failure never replaces a newer queued one
        assert!(q.push(s1, "r1".into(), RetryOp::Delete));
        assert_eq!(q.len(), 1);
        // bounded: a third contact is dropped
        assert!(q.push(s2, "r2".into(), RetryOp::Delete));
        assert!(!q.push(s2, "r3".into(), RetryOp::Delete));
        assert_eq!(q.len(), 2);
        let (rows, deletes) = q.take(10);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].contact, "sip:new");
        assert_eq!(deletes, vec!["r2".to_string()]);
        assert!(q.is_empty());
        // a new write of a queued contact supersedes it
        let s3 = q.next_seq();
        assert!(q.push(s3, "r4".into(), RetryOp::Delete));
        q.begin("r4", q.seq + 1);
        assert!(q.is_empty());
    }
}

#[cfg(test)]
mod module_load_tests {
    use super::*;
    use crate::kemi::htable::HtValue;

    /// A current-thread tokio runtime driven by its own thread (as the
    /// control plane runs the database).
    fn control_rt() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
        let (htx, hrx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            htx.send(rt.handle().clone()).expect("handle");
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        (hrx.recv().expect("runtime started"), stop)
    }

    #[test]
    fn htable_dbtable_and_address_table_load_from_sqlite() {
        let path = std::env::temp_dir().join(format!(
            "sipshard_modload_{}_{}.db",
            std::process::id(),
            unix_now_s()
        ));
        let _ = std::fs::remove_file(&path);
        let url = format!("sqlite://{}", path.display());
        let config = crate::config::Config::from_toml(
            &format!(
                "[db]\nurl = \"{url}\"\n\n[[htable]]\nname = \"ipban\"\ndbtable = \"htable\"\n\n\
                 [[htable]]\nname = \"plain\"\n\n[permissions]\nenable = true\n"
            ),
            "test",
        )
        .unwrap();
        let (rt, stop) = control_rt();
        // DbHandle::start creates the SQLite schema, htable and address included.
        let db = DbHandle::start(&config.db, &rt).unwrap();
        let seed = [
            "INSERT INTO htable (key_name, key_type, value_type, key_value, expires) \
             VALUES ('192.0.2.66', 0, 1, '1', 0)",
            "INSERT INTO htable (key_name, key_type, value_type, key_value, expires) \
             VALUES ('note', 0, 0, 'hello', 0)",
            "INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (1, '10.0.0.0', 8, 0, 'lan')",
            "INSERT INTO address (grp, ip_addr, mask, port, tag) VALUES (2, '192.0.2.7', 32, 5060, NULL)",
        ];
        let url2 = url.clone();
        rt.block_on(async move {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url2).await.unwrap();
            for s in seed {
                sqlx::query(s).execute(&mut c).await.unwrap();
            }
        });
        let tables = SharedTables::new(1, &config.auth, &config.registrar, 0).with_modules(&config);
        rt.block_on(tables.load_modules(&config, &db)).unwrap();
        let ipban = tables.htable.table("ipban").unwrap();
        assert_eq!(ipban.get("192.0.2.66", unix_now_s()), Some(HtValue::Int(1)));
        assert_eq!(
            ipban.get("note", unix_now_s()),
            Some(HtValue::Str("hello".into()))
        );
        assert!(tables.htable.table("plain").unwrap().is_empty());
        let set = tables.permissions.current();
        assert_eq!(set.len(), 2);
        assert_eq!(
            set.find(Some(1), "10.20.30.40", 5).map(|e| e.tag.clone()),
            Some(Some("lan".into()))
        );
        assert!(set.find(Some(2), "192.0.2.7", 5060).is_some());
        assert!(set.find(Some(2), "192.0.2.7", 5061).is_none());
        // Reload picks up a new row.
        let url3 = url.clone();
        rt.block_on(async move {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&url3).await.unwrap();
            sqlx::query(
                "INSERT INTO address (grp, ip_addr, mask, port) VALUES (3, '203.0.113.5', 32, 0)",
            )
            .execute(&mut c)
            .await
            .unwrap();
        });
        let (n, skipped) = rt
            .block_on(tables.reload_addresses(&db, &config.permissions))
            .unwrap();
        assert_eq!((n, skipped), (3, 0));
        assert!(tables
            .permissions
            .current()
            .find(Some(3), "203.0.113.5", 1)
            .is_some());
        // A missing dbtable is an error at start, naming the table.
        let bad = crate::config::Config::from_toml(
            "[[htable]]\nname = \"x\"\ndbtable = \"no_such_table\"\n",
            "test",
        )
        .unwrap();
        let t2 = SharedTables::new(1, &bad.auth, &bad.registrar, 0).with_modules(&bad);
        let err = rt.block_on(t2.load_modules(&bad, &db)).unwrap_err();
        assert!(err.contains("no_such_table"), "{err}");
        drop(db);
        let _ = stop.send(());
        let _ = std::fs::remove_file(&path);
    }
}
