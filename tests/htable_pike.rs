//! KSR.htable, KSR.pike and KSR.permissions on the real binary, over real
//! UDP: a flooding source is caught by pike, banned in an htable and then
//! dropped on every shard while another source is still answered; the ban
//! table and the permissions address table are loaded from SQLite at start
//! and managed over JSON-RPC (`htable.*`, `pike.top`, `permissions.*`).

#![allow(dead_code)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Kamailio's basic-script flood check, answering 200 when allowed; a
/// source in permissions group 1 gets 202.
const SCRIPT: &str = r#"
function ksr_request_route()
    local srcip = KSR.kx.get_srcip()
    if KSR.htable.sht_match_name("ipban", "eq", srcip) > 0 then
        KSR.x.exit()
    end
    if KSR.pike.pike_check_req() < 0 then
        KSR.err("ALERT: pike blocking " .. srcip .. "\n")
        KSR.htable.sht_seti("ipban", srcip, 1)
        KSR.x.exit()
    end
    if KSR.permissions and KSR.permissions.allow_source_address(1) > 0 then
        KSR.sl.sl_send_reply(202, "Trusted")
        KSR.x.exit()
    end
    KSR.sl.sl_send_reply(200, "OK")
end
"#;

fn client_at(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("bind a loopback alias");
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    s
}

fn options(srv: &Server, sock: &UdpSocket) -> Option<u16> {
    let msg = request(sock, "OPTIONS", &format!("sip:ping@{}", srv.addr), "");
    exchange(sock, srv.addr, msg.as_bytes()).map(|r| status(&r))
}

/// Runs SQL on a SQLite file (the schema made by `sipshard db init`).
fn sqlite(url: &str, statements: &[&str]) {
    use sqlx::Connection;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(s).execute(&mut c).await.unwrap();
        }
    });
}

#[test]
fn pike_bans_a_flooding_source_into_htable_and_other_sources_are_answered() {
    let dir = TempDir::new("mods");
    let url = format!("sqlite://{}", dir.path("mods.db").display());
    sipshard(&["db", "init", "--db", &url]);
    sqlite(
        &url,
        &[
            // Banned at start from the htable dbtable.
            "INSERT INTO htable (key_name, key_type, value_type, key_value, expires) \
             VALUES ('127.0.0.5', 0, 1, '1', 0)",
            "INSERT INTO address (grp, ip_addr, mask, port) VALUES (1, '127.0.0.4', 32, 0)",
        ],
    );
    let extra = format!(
        "[db]\nurl = \"{url}\"\n\n\
         [[htable]]\nname = \"ipban\"\nautoexpire = 300\ndbtable = \"htable\"\n\n\
         [pike]\nreqs_density_per_unit = 5\nsampling_time_unit = 3600\n\n\
         [permissions]\nenable = true\n"
    );
    let srv = Server::start_in(
        dir,
        ServerOpts {
            script: Some(SCRIPT),
            cores: "2",
            extra_toml: &extra,
            ..ServerOpts::default()
        },
    );

    // The flooding source: answered until pike's density is reached (the
    // count is shared by both shards, whichever reads each datagram).
    let flood = client_at("127.0.0.2");
    let mut answered = 0;
    for _ in 0..4 {
        if options(&srv, &flood) == Some(200) {
            answered += 1;
        }
    }
    assert_eq!(answered, 4, "{}", srv.log());
    assert_eq!(options(&srv, &flood), None, "5th request: pike blocks");
    for _ in 0..5 {
        assert_eq!(options(&srv, &flood), None, "banned source stays dropped");
    }
    assert!(srv.log().contains("ALERT: pike blocking 127.0.0.2"));

    // Another source is answered; the DB-loaded ban drops 127.0.0.5.
    let other = client_at("127.0.0.3");
    for _ in 0..3 {
        assert_eq!(options(&srv, &other), Some(200));
    }
    assert_eq!(options(&srv, &client_at("127.0.0.5")), None);
    // permissions address table loaded from the database.
    assert_eq!(options(&srv, &client_at("127.0.0.4")), Some(202));

    // The control plane sees the ban and the pike state.
    let got = rpc(srv.rpc_port, "htable.get", json!(["ipban", "127.0.0.2"]));
    assert_eq!(got["item"]["value"], json!(1), "{got}");
    let dump = rpc(srv.rpc_port, "htable.dump", json!(["ipban"]));
    let names: Vec<&str> = dump
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["127.0.0.2", "127.0.0.5"], "{dump}");
    let top = rpc(srv.rpc_port, "pike.top", json!([]));
    assert!(
        top.as_array()
            .unwrap()
            .iter()
            .any(|e| e["ip_addr"] == "127.0.0.2" && e["status"] == "HOT"),
        "{top}"
    );
    let tables = rpc(srv.rpc_port, "htable.listTables", json!([]));
    assert_eq!(tables[0]["name"], "ipban");

    // Banning and unbanning over RPC.
    rpc(
        srv.rpc_port,
        "htable.seti",
        json!(["ipban", "127.0.0.3", 1]),
    );
    assert_eq!(options(&srv, &other), None, "banned over RPC");
    rpc(srv.rpc_port, "htable.delete", json!(["ipban", "127.0.0.3"]));
    assert_eq!(options(&srv, &other), Some(200), "unbanned over RPC");
    rpc(srv.rpc_port, "htable.delete", json!(["ipban", "127.0.0.5"]));
    assert_eq!(options(&srv, &client_at("127.0.0.5")), Some(200));
    // (a fresh source: 127.0.0.3 is close to pike's density by now)
    let seven = client_at("127.0.0.7");
    rpc(
        srv.rpc_port,
        "htable.setxi",
        json!(["ipban", "127.0.0.7", 1, 60]),
    );
    assert_eq!(options(&srv, &seven), None, "banned with an expiry");
    // htable.reload: the table is read again from its dbtable.
    rpc(srv.rpc_port, "htable.reload", json!(["ipban"]));
    assert_eq!(
        options(&srv, &seven),
        Some(200),
        "reload drops RPC-set items"
    );
    assert_eq!(
        options(&srv, &client_at("127.0.0.5")),
        None,
        "DB ban is back"
    );

    // permissions: a new address row after addressReload.
    sqlite(
        &url,
        &["INSERT INTO address (grp, ip_addr, mask, port) VALUES (1, '127.0.0.6', 32, 0)"],
    );
    let six = client_at("127.0.0.6");
    assert_eq!(options(&srv, &six), Some(200));
    rpc(srv.rpc_port, "permissions.addressReload", json!([]));
    assert_eq!(options(&srv, &six), Some(202));
    let dumped = rpc(srv.rpc_port, "permissions.addressDump", json!([]));
    assert_eq!(dumped.as_array().unwrap().len(), 2, "{dumped}");

    let (ok, _) = srv.stop();
    assert!(ok);
}

#[test]
fn without_permissions_enabled_the_module_is_nil() {
    let srv = Server::start(ServerOpts {
        script: Some(SCRIPT),
        cores: "1",
        ..ServerOpts::default()
    });
    // No [[htable]]: sht_match_name on an unknown table is -1; pike allows;
    // KSR.permissions is nil, so the script answers 200.
    assert_eq!(options(&srv, &client_at("127.0.0.4")), Some(200));
    let (ok, _) = srv.stop();
    assert!(ok);
}
