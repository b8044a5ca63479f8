//! Architecture lints (like glommio's tests/linters.rs): the sans-IO and pure
//! modules never name I/O runtimes, sockets or the clock, and unsafe code
//! stays in one file, each block justified.

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
        "rusqlite",
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
    for module in ["sip", "auth", "usrloc", "txn", "dispatcher", "http"] {
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

/// All unsafe code lives in two files (the Linux calls std lacks; the Lua C
/// API for the KSR functions every route calls, docs/ARCHITECTURE.md
/// decision 11), and every unsafe block there says why it is sound in a
/// `// SAFETY:` comment just above it (rustls/httparse discipline).
const UNSAFE_FILES: [&str; 2] = ["transport/sys.rs", "kemi/ffi.rs"];

#[test]
fn unsafe_code_only_in_sys_and_ffi_and_justified() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut violations = Vec::new();
    let mut blocks = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let allowed = UNSAFE_FILES.iter().any(|u| f.ends_with(u));
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in code_lines(&text) {
            if !(line.contains("unsafe ") || line.contains("unsafe{"))
                || line.contains("unsafe_code")
            {
                continue;
            }
            if !allowed {
                violations.push(format!(
                    "{}:{n}: unsafe outside {UNSAFE_FILES:?}",
                    f.display()
                ));
                continue;
            }
            blocks += 1;
            let justified = lines[..n - 1]
                .iter()
                .rev()
                .take(4)
                .any(|l| l.trim_start().starts_with("// SAFETY:"));
            if !justified {
                violations.push(format!(
                    "{}:{n}: unsafe without a // SAFETY: comment above",
                    f.display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    assert!(
        blocks > 0,
        "the scan found the unsafe blocks of {UNSAFE_FILES:?}"
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in [
        "sip",
        "auth",
        "usrloc",
        "txn",
        "http",
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

/// Dependencies point down: `config` (read by every layer) names none of
/// the layers above it, and `kemi` (the Lua layer) never reaches into the
/// shard runtime.
#[test]
fn lower_layers_do_not_import_upper_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: &[(&str, &[&str])] = &[
        (
            "config.rs",
            &["crate::rpc", "crate::db", "crate::shard", "crate::kemi"],
        ),
        ("partition.rs", &["crate::"]),
        (
            "flood.rs",
            &[
                "crate::shard",
                "crate::kemi",
                "crate::rpc",
                "crate::db",
                "Instant::now",
                "SystemTime::now",
            ],
        ),
        (
            "exec.rs",
            &["crate::shard", "crate::kemi", "crate::transport"],
        ),
    ];
    let mut violations = Vec::new();
    for (file, banned) in rules {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for (n, line) in code_lines(&text) {
            for b in *banned {
                if line.contains(b) {
                    violations.push(format!("src/{file}:{n}: names `{b}`"));
                }
            }
        }
    }
    let mut kemi = Vec::new();
    rust_files(&root.join("kemi"), &mut kemi);
    for f in kemi {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in code_lines(&text) {
            if line.contains("crate::shard::") && !line.contains("crate::shard::control") {
                violations.push(format!("{}:{n}: kemi reaches into shard", f.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
