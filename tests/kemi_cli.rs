//! `sipshard check-script` and `sipshard kemi list` on the real binary.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_script_reports_missing_calls_with_lines() {
    let dir = TempDir::new("check");
    let p = dir.path("s.lua");
    std::fs::write(
        &p,
        "function ksr_request_route()\n\
         \x20 -- KSR.nope.commented()\n\
         \x20 if KSR.rtpproxy then KSR.rtpproxy.rtpproxy_manage('co') end\n\
         \x20 KSR.tm.t_relay()\n\
         \x20 KSR.tm.t_relay_typo()\n\
         \x20 KSR.x.exit()\n\
         end\n",
    )
    .unwrap();
    let file = p.to_str().unwrap();
    let (code, text) = run(&["check-script", file]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("{file}:5: missing: KSR.tm.t_relay_typo()")),
        "{text}"
    );
    assert!(text.contains(&format!("{file}:3: note:")), "{text}");
    assert!(!text.contains("nope"), "{text}");
    assert!(!text.contains(":4:"), "{text}");
}

/// `--strict` with two scripts: per script, what sipshard lacks grouped by
/// module (guarded calls and names only read too), exit 1 when anything is
/// missing; a clean script alone passes.
#[test]
fn check_script_strict_groups_missing_names_by_module() {
    let dir = TempDir::new("check-strict");
    let a = dir.path("a.lua");
    std::fs::write(
        &a,
        "function ksr_request_route()\n\
         \x20 if KSR.rtpproxy then KSR.rtpproxy.rtpproxy_manage('co') end\n\
         \x20 KSR.tm.t_relay_typo()\n\
         \x20 KSR.tm.t_relay_typo()\n\
         \x20 KSR.nosuch_core_fn()\n\
         \x20 KSR.dialog.dlg_manage()\n\
         end\n",
    )
    .unwrap();
    let b = dir.path("b.lua");
    std::fs::write(
        &b,
        "function ksr_request_route()\n  KSR.dialog.dlg_manage()\n  KSR.tm.t_relay()\nend\n",
    )
    .unwrap();
    let (fa, fb) = (a.to_str().unwrap(), b.to_str().unwrap());
    let (code, text) = run(&["check-script", "--strict", fa, fb]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!("{fa}: 3 KSR name(s) missing in 3 module(s):")),
        "{text}"
    );
    assert!(text.contains("  core: nosuch_core_fn (line 5)\n"), "{text}");
    assert!(
        text.contains("  rtpproxy: rtpproxy_manage (line 2)\n"),
        "{text}"
    );
    assert!(text.contains("  tm: t_relay_typo (line 3, 4)\n"), "{text}");
    assert!(
        text.contains(&format!("{fb}: 2 KSR call(s), nothing missing")),
        "{text}"
    );
    let (code, text) = run(&["check-script", "--strict", fb]);
    assert_eq!(code, 0, "{text}");
    // without --strict, one script at a time
    let (code, text) = run(&["check-script", fa, fb]);
    assert_eq!(code, 2, "{text}");
}

#[test]
fn check_script_passes_the_bundled_script_and_fails_a_syntax_error() {
    let bundled = concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sipshard.lua");
    let (code, text) = run(&["check-script", bundled]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 missing"), "{text}");

    let dir = TempDir::new("check");
    let p = dir.path("bad.lua");
    std::fs::write(&p, "function ksr_request_route()\n\n  local = 1\nend\n").unwrap();
    let (code, text) = run(&["check-script", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("bad.lua:3:"), "{text}");

    let p = dir.path("noroute.lua");
    std::fs::write(&p, "x = 1\n").unwrap();
    let (code, text) = run(&["check-script", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("ksr_request_route"), "{text}");
}

#[test]
fn kemi_list_prints_kamailio_signatures() {
    let text = sipshard(&["kemi", "list"]);
    for line in [
        "int KSR.tm.t_relay()",
        "int KSR.sl.sl_send_reply(int code, str reason)",
        "int KSR.registrar.save(str table, int flags)",
        "xval KSR.pv.get(str name)",
        "bool KSR.is_INVITE()",
        "void KSR.x.exit()",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    assert!(
        !text.contains("? KSR."),
        "a function without signature:\n{text}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&sipshard(&["kemi", "list", "--json"])).unwrap();
    assert_eq!(
        json["msize"].as_u64().unwrap() as usize,
        text.lines().count()
    );
    let md = sipshard(&["kemi", "list", "--markdown"]);
    assert!(md.contains("### tm\n"), "{md}");
}
