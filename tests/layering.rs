//! Architecture lints (like glommio's tests/linters.rs): the sans-IO and pure
//! modules never name I/O runtimes, sockets or the clock, and unsafe code
//! stays out of the tree.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code lines (comments and doc comments stripped, test modules included:
/// tests of pure modules must stay pure too).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let t = l.trim_start();
        if t.starts_with("//") {
            None
        } else {
            Some((i + 1, l.split(" //").next().unwrap_or(l)))
        }
    })
}

#[test]
fn pure_modules_do_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let forbidden = [
        "glommio",
        "mlua",
        "sqlx",
        "tokio",
        "std::net::UdpSocket",
        "std::net::TcpStream",
        "socket2",
        "Instant::now",
        "SystemTime::now",
        "std::fs",
        "std::thread",
    ];
    let mut violations = Vec::new();
    for module in ["sip", "auth", "usrloc"] {
        let mut files = Vec::new();
        rust_files(&root.join(module), &mut files);
        assert!(!files.is_empty(), "src/{module} has no files");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for (n, line) in code_lines(&text) {
                for word in forbidden {
                    if line.contains(word) {
                        violations
                            .push(format!("{}:{n}: `{word}` in a sans-IO module", f.display()));
                    }
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_unsafe_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in code_lines(&text) {
            if line.contains("unsafe ") && !line.contains("unsafe_code") {
                violations.push(format!("{}:{n}", f.display()));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "unsafe code outside the allowed places:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in [
        "sip",
        "auth",
        "usrloc",
        "kemi",
        "shard",
        "transport",
        "db",
        "rpc",
        "stats",
        "loadgen",
    ] {
        let text = std::fs::read_to_string(root.join(module).join("mod.rs")).unwrap();
        assert!(
            text.trim_start().starts_with("//!"),
            "src/{module}/mod.rs must open with a //! module doc"
        );
    }
}
