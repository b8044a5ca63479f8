//! Shard services the auth and registrar KSR modules use: this shard's
//! user-location partition, the credential cache, nonce key and nonce-count
//! table, the database handle, and the channel mesh to the other shards.
//!
//! The location table is partitioned by AOR: `shard_for(aor)` owns it. A
//! save or lookup for an AOR owned elsewhere travels as a [`MeshMsg`] to the
//! owner, carrying a oneshot for the answer; nothing is locked or shared.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::channels::channel_mesh::Senders;
use tokio::sync::oneshot;

use crate::auth::{CredCache, NcTracker, NonceGen, NonceKey};
use crate::config::{AuthConfig, RegistrarConfig};
use crate::db::{DbHandle, LocationRow};
use crate::usrloc::{
    ContactSpec, LocationParams, LookupCode, RegistrarParams, RuidGen, SaveError, SaveFlags,
    SaveOutcome, SaveRequest, Ucontact, Unregister,
};

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

/// Location operations one shard asks of the AOR's owner.
pub enum MeshMsg {
    Save {
        req: OwnedSave,
        reply: oneshot::Sender<Result<SaveOutcome, SaveError>>,
    },
    Lookup {
        aor: String,
        method_bit: u32,
        reply: oneshot::Sender<(LookupCode, Vec<Ucontact>)>,
    },
    Registered {
        aor: String,
        reply: oneshot::Sender<bool>,
    },
    Unregister {
        aor: String,
        contact: Option<String>,
        reply: oneshot::Sender<Result<Vec<String>, i32>>,
    },
    /// db_mode 3: replace the AOR's bindings with what the database holds.
    Refresh {
        aor: String,
        contacts: Vec<Ucontact>,
        reply: oneshot::Sender<()>,
    },
}

/// Per-shard services.
pub struct Services {
    pub shard_id: usize,
    pub shard_count: usize,
    pub location: RefCell<crate::usrloc::Location>,
    pub mesh: RefCell<Option<Rc<Senders<MeshMsg>>>>,
    pub db: Option<DbHandle>,
    pub creds: RefCell<CredCache<CachedCred>>,
    pub nonce_key: NonceKey,
    pub nonce_gen: RefCell<NonceGen>,
    pub nc: RefCell<NcTracker>,
    pub auth: AuthConfig,
    pub algorithms: Vec<crate::auth::Algorithm>,
    pub registrar: RegistrarConfig,
    /// Writes in flight to the database (write-through / write-back).
    pub db_pending: Cell<usize>,
    pub mesh_timeout: Duration,
    /// Requests sent to other shards' location partitions.
    pub mesh_sent: Cell<u64>,
}

impl Services {
    pub fn new(
        shard_id: usize,
        shard_count: usize,
        auth: &AuthConfig,
        registrar: &RegistrarConfig,
        nonce_secret: [u8; 32],
        db: Option<DbHandle>,
        epoch_unix_s: u64,
    ) -> Result<Services, String> {
        let params = LocationParams {
            max_aors: registrar.max_aors_per_shard,
            use_domain: registrar.use_domain,
            track_dirty: registrar.db_mode == 2,
            ..LocationParams::default()
        };
        let reg = RegistrarParams {
            default_expires_s: registrar.default_expires_s,
            min_expires_s: registrar.min_expires_s,
            min_expires_mode: crate::usrloc::MinExpiresMode::Reject,
            max_expires_s: registrar.max_expires_s,
            max_contacts: registrar.max_contacts as u32,
            use_path: true,
            ..RegistrarParams::default()
        };
        let location =
            crate::usrloc::Location::new(params, reg, RuidGen::new(shard_id as u16, epoch_unix_s));
        let algorithms = auth
            .algorithms
            .iter()
            .map(|a| {
                crate::auth::Algorithm::from_token(a)
                    .ok_or_else(|| format!("auth.algorithms: unknown algorithm `{a}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Services {
            shard_id,
            shard_count,
            location: RefCell::new(location),
            mesh: RefCell::new(None),
            db,
            creds: RefCell::new(CredCache::new(
                auth.cache_max_entries,
                auth.cache_ttl_s,
                auth.cache_negative_ttl_s,
            )),
            nonce_key: NonceKey::new(nonce_secret).with_expire_s(auth.nonce_expire_s),
            nonce_gen: RefCell::new(NonceGen::new(shard_id as u16, epoch_unix_s << 16)),
            nc: RefCell::new(NcTracker::new(auth.nc_max_entries)),
            auth: auth.clone(),
            algorithms,
            registrar: registrar.clone(),
            db_pending: Cell::new(0),
            mesh_timeout: Duration::from_secs(2),
            mesh_sent: Cell::new(0),
        })
    }

    /// The shard that owns `aor`.
    pub fn owner(&self, aor: &str) -> usize {
        crate::shard::shard_for(aor.as_bytes(), self.shard_count)
    }

    /// Handles a location request from another shard (or this one).
    pub fn handle_mesh(&self, msg: MeshMsg) {
        let now = unix_now_s();
        match msg {
            MeshMsg::Save { req, reply } => {
                let r = req.with_request(|r| self.location.borrow_mut().save(now, r));
                let _ = reply.send(r);
            }
            MeshMsg::Lookup {
                aor,
                method_bit,
                reply,
            } => {
                let loc = self.location.borrow();
                let (code, contacts) = loc.lookup_method(&aor, now, method_bit);
                let _ = reply.send((code, contacts.into_iter().cloned().collect()));
            }
            MeshMsg::Registered { aor, reply } => {
                let _ = reply.send(self.location.borrow().registered(&aor, now));
            }
            MeshMsg::Refresh {
                aor,
                contacts,
                reply,
            } => {
                let mut loc = self.location.borrow_mut();
                let _ = loc.unregister(&aor, Unregister::All);
                loc.load(contacts.into_iter().map(|c| (aor.clone(), c)), now);
                let _ = reply.send(());
            }
            MeshMsg::Unregister {
                aor,
                contact,
                reply,
            } => {
                let what = match &contact {
                    Some(c) => Unregister::Contact(c),
                    None => Unregister::All,
                };
                let r = self
                    .location
                    .borrow_mut()
                    .unregister(&aor, what)
                    .map_err(|e| e.code());
                let _ = reply.send(r);
            }
        }
    }

    /// Runs `msg` on the owner shard of `aor`: locally when that is this
    /// shard, else over the mesh. `None` when the owner did not answer in time.
    pub async fn on_owner<T>(
        &self,
        aor: &str,
        build: impl FnOnce(oneshot::Sender<T>) -> MeshMsg,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let msg = build(tx);
        let owner = self.owner(aor);
        if owner == self.shard_id {
            self.handle_mesh(msg);
        } else {
            let senders = self.mesh.borrow().clone()?;
            self.mesh_sent.set(self.mesh_sent.get() + 1);
            // Bounded: a full queue to the owner waits here (the route is
            // suspended, the shard keeps serving), under the same timeout.
            let send = senders.send_to(owner, msg);
            match glommio::timer::timeout(self.mesh_timeout, async { Ok(send.await.is_ok()) }).await
            {
                Ok(true) => {}
                _ => return None,
            }
        }
        glommio::timer::timeout(self.mesh_timeout, async { Ok(rx.await.ok()) })
            .await
            .unwrap_or_default()
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
        let rows = match glommio::timer::timeout(timeout, async { Ok(fut.await) }).await {
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
        self.on_owner(aor, |reply| MeshMsg::Refresh {
            aor: aor.to_string(),
            contacts,
            reply,
        })
        .await
        .is_some()
    }

    /// Writes a save's changes to the database (db_mode 1), without holding
    /// up the reply; failures are counted by the caller's counters.
    pub fn write_through(self: &Rc<Self>, outcome: &SaveOutcome, counters: Rc<super::Shared>) {
        let Some(db) = self.db.clone() else { return };
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
        self.spawn_db_write(db, rows, deletes, counters);
    }

    /// Issues upserts and deletes on the control runtime and tracks them.
    pub fn spawn_db_write(
        self: &Rc<Self>,
        db: DbHandle,
        rows: Vec<LocationRow>,
        deletes: Vec<String>,
        shared: Rc<super::Shared>,
    ) {
        use crate::stats::Counter;
        if rows.is_empty() && deletes.is_empty() {
            return;
        }
        let mut futs = Vec::new();
        for chunk in rows.chunks(crate::db::BATCH_ROWS_MAX) {
            shared.counters.incr(Counter::DbQueries);
            match db.location_upsert(chunk.to_vec()) {
                Ok(f) => futs.push(f),
                Err(_) => shared.counters.incr(Counter::DbErrors),
            }
        }
        let mut del_futs = Vec::new();
        for chunk in deletes.chunks(crate::db::BATCH_ROWS_MAX) {
            shared.counters.incr(Counter::DbQueries);
            match db.location_delete(chunk.to_vec()) {
                Ok(f) => del_futs.push(f),
                Err(_) => shared.counters.incr(Counter::DbErrors),
            }
        }
        let this = self.clone();
        this.db_pending.set(this.db_pending.get() + 1);
        glommio::spawn_local(async move {
            for f in futs {
                if !matches!(f.await, Ok(())) {
                    shared.counters.incr(Counter::DbErrors);
                }
            }
            for f in del_futs {
                if !matches!(f.await, Ok(())) {
                    shared.counters.incr(Counter::DbErrors);
                }
            }
            this.db_pending.set(this.db_pending.get() - 1);
        })
        .detach();
    }

    /// db_mode 2: writes the dirty set. Returns how many rows were sent.
    pub fn flush_dirty(self: &Rc<Self>, shared: Rc<super::Shared>) -> usize {
        let Some(db) = self.db.clone() else { return 0 };
        let batch = self.location.borrow_mut().take_dirty();
        let use_domain = self.registrar.use_domain;
        let rows: Vec<LocationRow> = batch
            .upserts
            .iter()
            .filter(|(_, c)| !c.is_mem_only())
            .map(|(aor, c)| to_row(aor, c, use_domain))
            .collect();
        let n = rows.len() + batch.deletes.len();
        self.spawn_db_write(db, rows, batch.deletes, shared);
        n
    }

    /// Removes expired bindings; in db_mode 1/2 deletes their rows too.
    pub fn expire(self: &Rc<Self>, shared: Rc<super::Shared>) -> usize {
        let expired = self.location.borrow_mut().expire(unix_now_s());
        let n = expired.len();
        shared
            .counters
            .add(crate::stats::Counter::UlExpired, n as u64);
        if n > 0 && matches!(self.registrar.db_mode, 1 | 3) {
            if let Some(db) = self.db.clone() {
                self.spawn_db_write(
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
        expires_unix_s: c.expires_unix_s as i64,
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
