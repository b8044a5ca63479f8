//! Users for `sipshard bench register`: a sipp-style CSV (`SEQUENTIAL` first
//! line, then `name;domain;password` or `name@domain;password`, the format
//! `sipshard user import` reads) or a generated range from a pattern such as
//! `u%d@example.com:pw%d` (`%d` is the user number).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Most users one run loads (a CSV line or a generated number each).
pub const USERS_MAX: usize = 10_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub domain: String,
    pub password: String,
}

/// Where the users come from.
#[derive(clap::Args, Clone, Debug)]
pub struct UserArgs {
    /// sipp-style CSV: `SEQUENTIAL` first line, then `name;domain;password`
    /// or `name@domain;password` per line.
    #[arg(long, conflicts_with = "users")]
    pub users_file: Option<PathBuf>,
    /// Generated users: `NAME@DOMAIN:PASSWORD`, `%d` replaced by the number.
    #[arg(long, default_value = "u%d@example.com:pw%d")]
    pub users: String,
    /// How many generated users (numbers `--user-first` ..).
    #[arg(long, default_value_t = 1000)]
    pub user_count: usize,
    /// First generated user number.
    #[arg(long, default_value_t = 0)]
    pub user_first: usize,
}

/// `sipshard bench users`: write the users as a file `sipshard user import` reads.
#[derive(clap::Args, Clone, Debug)]
pub struct UsersOutArgs {
    #[command(flatten)]
    pub users: UserArgs,
    /// Output file (sipp CSV: `SEQUENTIAL`, then `name;domain;password`).
    #[arg(long)]
    pub out: PathBuf,
}

impl UserArgs {
    pub fn load(&self) -> Result<Vec<User>, String> {
        match &self.users_file {
            Some(path) => read_csv(path),
            None => generate(&self.users, self.user_first, self.user_count),
        }
    }
}

/// Expands a `NAME@DOMAIN:PASSWORD` pattern for numbers `first..first+count`.
pub fn generate(pattern: &str, first: usize, count: usize) -> Result<Vec<User>, String> {
    if count == 0 || count > USERS_MAX {
        return Err(format!("--user-count must be 1..={USERS_MAX}"));
    }
    let (aor, password) = pattern
        .rsplit_once(':')
        .ok_or_else(|| format!("`{pattern}`: expected NAME@DOMAIN:PASSWORD"))?;
    let (name, domain) = aor
        .split_once('@')
        .ok_or_else(|| format!("`{pattern}`: expected NAME@DOMAIN:PASSWORD"))?;
    if name.is_empty() || domain.is_empty() || password.is_empty() {
        return Err(format!("`{pattern}`: empty name, domain or password"));
    }
    let mut out = Vec::with_capacity(count);
    for n in first..first.saturating_add(count) {
        let num = n.to_string();
        out.push(User {
            name: name.replace("%d", &num),
            domain: domain.replace("%d", &num),
            password: password.replace("%d", &num),
        });
    }
    Ok(out)
}

/// Parses a sipp injection file.
pub fn parse_csv(text: &str) -> Result<Vec<User>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty()
            || line.starts_with('#')
            || (i == 0 && matches!(line, "SEQUENTIAL" | "RANDOM" | "USER" | "RANDOM_ONCE"))
        {
            continue;
        }
        let fields: Vec<&str> = line.split(';').map(str::trim).collect();
        let user = match fields.as_slice() {
            [aor, p] => aor.split_once('@').map(|(n, d)| (n, d, *p)),
            [n, d, p, ..] => Some((*n, *d, *p)),
            _ => None,
        };
        let Some((name, domain, password)) =
            user.filter(|(n, d, _)| !n.is_empty() && !d.is_empty())
        else {
            return Err(format!(
                "line {}: `{line}`: expected name;domain;password",
                i + 1
            ));
        };
        if out.len() >= USERS_MAX {
            return Err(format!("more than {USERS_MAX} users"));
        }
        out.push(User {
            name: name.to_owned(),
            domain: domain.to_owned(),
            password: password.to_owned(),
        });
    }
    if out.is_empty() {
        return Err("no users".into());
    }
    Ok(out)
}

fn read_csv(path: &Path) -> Result<Vec<User>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_csv(&text)
}

/// Writes users as a sipp CSV (which `sipshard user import` reads).
pub fn write_csv(path: &Path, users: &[User]) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    let mut go = || -> std::io::Result<()> {
        writeln!(w, "SEQUENTIAL")?;
        for u in users {
            writeln!(w, "{};{};{}", u.name, u.domain, u.password)?;
        }
        w.flush()
    };
    go().map_err(|e| format!("{}: {e}", path.display()))
}

pub fn run_users(args: UsersOutArgs) -> Result<(), String> {
    let users = args.users.load()?;
    write_csv(&args.out, &users)?;
    println!("wrote {} users to {}", users.len(), args.out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_expands() {
        let u = generate("u%d@example.com:pw%d", 5, 2).unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].name, "u5");
        assert_eq!(u[1].domain, "example.com");
        assert_eq!(u[1].password, "pw6");
        assert!(generate("nodomain:pw", 0, 1).is_err());
        assert!(generate("a@b:pw", 0, 0).is_err());
    }

    #[test]
    fn csv_both_forms() {
        let u = parse_csv("SEQUENTIAL\nalice;example.com;s1\nbob@example.org;s2\n\n").unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[1].domain, "example.org");
        assert_eq!(u[1].password, "s2");
        assert!(parse_csv("SEQUENTIAL\nnodomain;pw\n").is_err());
        assert!(parse_csv("SEQUENTIAL\n").is_err());
    }
}
