//! HTTP and WebSocket on the real binary: the minesweeper example
//! (`etc/examples/minesweeper.lua`) played over SIP OPTIONS (UDP, raw
//! sockets and sipsak), its board shared by both shards.

mod common;

use common::*;

const MINESWEEPER: &str = include_str!("../etc/examples/minesweeper.lua");
const ROWS: usize = 5;
const COLS: usize = 6;

fn minesweeper_server() -> Server {
    Server::start(ServerOpts {
        script: Some(MINESWEEPER),
        cores: "2",
        core_toml: "defines = [\"MINESWEEPER_SEED=42\"]\n",
        extra_toml: "[[htable]]\nname = \"mines\"\n",
        low_port: true,
        ..Default::default()
    })
}

/// The mines of the current game, from the control plane's `htable.get`.
fn mines(srv: &Server) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for r in 1..=ROWS {
        for c in 1..=COLS {
            let v = rpc(
                srv.rpc_port,
                "htable.get",
                serde_json::json!(["mines", format!("m-{r}-{c}")]),
            );
            if v["item"]["value"] == 1 {
                out.push((r, c));
            }
        }
    }
    out
}

/// Sends OPTIONS sip:<cmd>@127.0.0.1 from a fresh socket (so the BPF spread
/// lands the requests on both shards); returns the reply.
fn play(srv: &Server, cmd: &str) -> String {
    let sock = client();
    let ruri = format!("sip:{cmd}@127.0.0.1:{}", srv.addr.port());
    exchange(
        &sock,
        srv.addr,
        request(&sock, "OPTIONS", &ruri, "").as_bytes(),
    )
    .unwrap_or_else(|| panic!("no reply to {cmd}:\n{}", srv.log()))
}

fn body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |x| x.1)
}

/// The cell at (r, c) of a board body.
fn cell(reply: &str, r: usize, c: usize) -> String {
    let rows: Vec<&str> = body(reply)
        .lines()
        .skip_while(|l| !l.starts_with("    1"))
        .skip(1)
        .collect();
    rows[r - 1].split_whitespace().nth(c).unwrap().to_string()
}

#[test]
fn minesweeper_over_sip_options() {
    let srv = minesweeper_server();
    let first = play(&srv, "board");
    assert_eq!((status(&first), reason(&first)), (200, "Board".into()));
    assert_eq!(
        header(&first, "Content-Type").as_deref(),
        Some("text/plain")
    );
    assert!(
        body(&first).contains("game 1: playing (5x6, 5 mines)"),
        "{first}"
    );
    let mine_set = mines(&srv);
    assert_eq!(mine_set.len(), 5, "seeded game has its mines in the htable");

    // every safe cell, one request each from new sockets (both shards play
    // the same board) until the game is won
    let mut won = false;
    for r in 1..=ROWS {
        for c in 1..=COLS {
            if mine_set.contains(&(r, c)) {
                continue;
            }
            let reply = play(&srv, &format!("e-{r}-{c}"));
            let why = reason(&reply);
            assert_eq!(status(&reply), 200, "{reply}");
            assert!(
                ["Safe", "Already Explored", "You Won"].contains(&why.as_str()),
                "{reply}"
            );
            let near = mine_set
                .iter()
                .filter(|(mr, mc)| mr.abs_diff(r) <= 1 && mc.abs_diff(c) <= 1)
                .count();
            assert_eq!(cell(&reply, r, c), near.to_string(), "{reply}");
            if why == "You Won" {
                won = true;
                break;
            }
        }
        if won {
            break;
        }
    }
    assert!(won, "all safe cells explored wins");
    assert!(body(&play(&srv, "board")).contains("game 1: won"));

    // a new game, then a mine
    let reply = play(&srv, "new");
    assert_eq!(reason(&reply), "New Game");
    let (mr, mc) = mines(&srv)[0];
    let reply = play(&srv, &format!("e-{mr}-{mc}"));
    assert_eq!(reason(&reply), "Buuum", "{reply}");
    assert_eq!(cell(&reply, mr, mc), "X");
    assert_eq!(status(&play(&srv, "e-1-1")), 409);

    // sipsak, as in the talk
    play(&srv, "new");
    let out = std::process::Command::new("sipsak")
        .args([
            "-vv",
            "-s",
            &format!("sip:d-{mr}-{mc}@127.0.0.1:{}", srv.addr.port()),
        ])
        .output()
        .expect("sipsak is installed by scripts/deps.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "sipsak failed: {text}");
    assert!(text.contains("200 Defused"), "{text}");
    let reply = play(&srv, "board");
    assert_eq!(cell(&reply, mr, mc), "W");
}
