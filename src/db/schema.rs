//! Kamailio's table layout for the tables sipshard uses, rendered per backend.
//!
//! Owns: the DDL of `version`, `subscriber` (auth_db), `location` and
//! `location_attrs` (usrloc), `htable` (htable), `address` (permissions) and `dispatcher`, their indexes and `version` rows, with
//! Kamailio's column names, types, defaults and index names (on PostgreSQL and
//! SQLite index names are global, so Kamailio prefixes them with the table
//! name; on MySQL it does not), so that sipshard and Kamailio can share one
//! database.
//! Must never: drop, alter or rewrite existing tables or rows. Every statement
//! is `CREATE ... IF NOT EXISTS` or an insert that skips existing rows, so
//! running it again, or against a database Kamailio created, changes nothing.

use super::pool::{DbPool, Dialect};
use super::DbError;

/// The `version` rows sipshard writes and expects: (table_name, table_version),
/// the versions of Kamailio 5.x/6.x.
pub const SCHEMA_VERSIONS: [(&str, i64); 7] = [
    ("version", 1),
    ("subscriber", 7),
    ("location", 9),
    ("location_attrs", 1),
    ("htable", 2),
    ("address", 6),
    ("dispatcher", 4),
];

/// Creates the tables, indexes and `version` rows that are missing.
/// Idempotent; safe on a database Kamailio created.
pub async fn init_schema(pool: &DbPool) -> Result<(), DbError> {
    pool.execute_all(&statements(pool.dialect())).await
}

/// Checks the `version` rows of the tables sipshard reads and writes, as
/// Kamailio's modules do at start.
pub(crate) async fn check_versions(pool: &DbPool) -> Result<(), DbError> {
    let found = match pool.versions().await {
        Ok(found) => found,
        Err(DbError::Sql(sqlx::Error::Database(e))) => {
            return Err(DbError::NoSchema(e.message().to_owned()))
        }
        Err(other) => return Err(other),
    };
    for (table, expected) in SCHEMA_VERSIONS {
        if table != "subscriber" && table != "location" {
            continue;
        }
        let version = found
            .iter()
            .find(|(name, _)| name == table)
            .map(|(_, v)| *v);
        if version != Some(expected) {
            return Err(DbError::SchemaVersion {
                table,
                found: version,
                expected,
            });
        }
    }
    Ok(())
}

/// Column types, named after what Kamailio's schema means by them.
#[derive(Clone, Copy)]
enum Ty {
    /// Auto-increment primary key.
    Id,
    /// `VARCHAR(n) DEFAULT '<default>' NOT NULL`.
    Text(u16, &'static str),
    /// `VARCHAR(n) DEFAULT NULL`.
    TextNull(u16),
    /// `INT DEFAULT <default> NOT NULL`.
    Int(i32),
    /// `INT UNSIGNED` on MySQL (only `version.table_version`).
    UInt(i32),
    /// `INT DEFAULT NULL`.
    IntNull,
    /// `REAL` / MySQL `FLOAT(10,2)`, default 1.0.
    Real,
    /// `TIMESTAMP WITHOUT TIME ZONE` / MySQL `DATETIME`, with a default.
    Time(&'static str),
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Ty)],
    /// (name without table prefix, columns)
    unique: &'static [(&'static str, &'static [&'static str])],
    indexes: &'static [(&'static str, &'static [&'static str])],
}

const VERSION: Table = Table {
    name: "version",
    columns: &[
        ("id", Ty::Id),
        ("table_name", Ty::Text(32, "")),
        ("table_version", Ty::UInt(0)),
    ],
    unique: &[("table_name_idx", &["table_name"])],
    indexes: &[],
};

const SUBSCRIBER: Table = Table {
    name: "subscriber",
    columns: &[
        ("id", Ty::Id),
        ("username", Ty::Text(64, "")),
        ("domain", Ty::Text(64, "")),
        ("password", Ty::Text(64, "")),
        ("ha1", Ty::Text(128, "")),
        ("ha1b", Ty::Text(128, "")),
    ],
    unique: &[("account_idx", &["username", "domain"])],
    indexes: &[("username_idx", &["username"])],
};

const LOCATION: Table = Table {
    name: "location",
    columns: &[
        ("id", Ty::Id),
        ("ruid", Ty::Text(64, "")),
        ("username", Ty::Text(64, "")),
        ("domain", Ty::TextNull(64)),
        ("contact", Ty::Text(512, "")),
        ("received", Ty::TextNull(128)),
        ("path", Ty::TextNull(512)),
        ("expires", Ty::Time("2030-05-28 21:32:15")),
        ("q", Ty::Real),
        ("callid", Ty::Text(255, "Default-Call-ID")),
        ("cseq", Ty::Int(1)),
        ("last_modified", Ty::Time("2000-01-01 00:00:01")),
        ("flags", Ty::Int(0)),
        ("cflags", Ty::Int(0)),
        ("user_agent", Ty::Text(255, "")),
        ("socket", Ty::TextNull(64)),
        ("methods", Ty::IntNull),
        ("instance", Ty::TextNull(255)),
        ("reg_id", Ty::Int(0)),
        ("server_id", Ty::Int(0)),
        ("connection_id", Ty::Int(0)),
        ("keepalive", Ty::Int(0)),
        ("partition", Ty::Int(0)),
    ],
    unique: &[("ruid_idx", &["ruid"])],
    indexes: &[
        ("account_contact_idx", &["username", "domain", "contact"]),
        ("expires_idx", &["expires"]),
        ("connection_idx", &["server_id", "connection_id"]),
    ],
};

const LOCATION_ATTRS: Table = Table {
    name: "location_attrs",
    columns: &[
        ("id", Ty::Id),
        ("ruid", Ty::Text(64, "")),
        ("username", Ty::Text(64, "")),
        ("domain", Ty::TextNull(64)),
        ("aname", Ty::Text(64, "")),
        ("atype", Ty::Int(0)),
        ("avalue", Ty::Text(512, "")),
        ("last_modified", Ty::Time("2000-01-01 00:00:01")),
    ],
    unique: &[],
    indexes: &[
        ("account_record_idx", &["username", "domain", "ruid"]),
        ("last_modified_idx", &["last_modified"]),
    ],
};

/// htable module `dbtable` (Kamailio's default table name `htable`).
const HTABLE: Table = Table {
    name: "htable",
    columns: &[
        ("id", Ty::Id),
        ("key_name", Ty::Text(64, "")),
        ("key_type", Ty::Int(0)),
        ("value_type", Ty::Int(0)),
        ("key_value", Ty::Text(128, "")),
        ("expires", Ty::Int(0)),
    ],
    unique: &[],
    indexes: &[],
};

/// permissions module address table.
const ADDRESS: Table = Table {
    name: "address",
    columns: &[
        ("id", Ty::Id),
        ("grp", Ty::UInt(1)),
        ("ip_addr", Ty::Text(50, "")),
        ("mask", Ty::Int(32)),
        ("port", Ty::UInt(0)),
        ("tag", Ty::TextNull(64)),
    ],
    unique: &[],
    indexes: &[],
};

/// dispatcher module destination sets.
const DISPATCHER: Table = Table {
    name: "dispatcher",
    columns: &[
        ("id", Ty::Id),
        ("setid", Ty::Int(0)),
        ("destination", Ty::Text(192, "")),
        ("flags", Ty::Int(0)),
        ("priority", Ty::Int(0)),
        ("attrs", Ty::Text(198, "")),
        ("description", Ty::Text(64, "")),
    ],
    unique: &[],
    indexes: &[],
};

const TABLES: [&Table; 7] = [
    &VERSION,
    &SUBSCRIBER,
    &LOCATION,
    &LOCATION_ATTRS,
    &HTABLE,
    &ADDRESS,
    &DISPATCHER,
];

/// Every statement of the schema, in order, for one dialect.
fn statements(d: Dialect) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        out.extend(create_table(d, table));
    }
    for (table, version) in SCHEMA_VERSIONS {
        let insert = match d {
            Dialect::MySql => "INSERT IGNORE INTO",
            Dialect::Sqlite | Dialect::Postgres => "INSERT INTO",
        };
        let skip_existing = match d {
            Dialect::MySql => "",
            Dialect::Sqlite | Dialect::Postgres => " ON CONFLICT (table_name) DO NOTHING",
        };
        out.push(format!(
            "{insert} version (table_name, table_version) VALUES ('{table}', {version}){skip_existing}"
        ));
    }
    out
}

fn column_type(d: Dialect, ty: Ty) -> String {
    let int = if d == Dialect::MySql {
        "INT(11)"
    } else {
        "INTEGER"
    };
    match ty {
        Ty::Id => match d {
            Dialect::Sqlite => "INTEGER PRIMARY KEY NOT NULL".to_owned(),
            Dialect::Postgres => "SERIAL PRIMARY KEY NOT NULL".to_owned(),
            Dialect::MySql => "INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL".to_owned(),
        },
        Ty::Text(len, default) => format!("VARCHAR({len}) DEFAULT '{default}' NOT NULL"),
        Ty::TextNull(len) => format!("VARCHAR({len}) DEFAULT NULL"),
        Ty::Int(default) => format!("{int} DEFAULT {default} NOT NULL"),
        Ty::UInt(default) => match d {
            Dialect::MySql => format!("INT UNSIGNED DEFAULT {default} NOT NULL"),
            Dialect::Sqlite | Dialect::Postgres => format!("INTEGER DEFAULT {default} NOT NULL"),
        },
        Ty::IntNull => format!("{int} DEFAULT NULL"),
        Ty::Real => match d {
            Dialect::MySql => "FLOAT(10,2) DEFAULT 1.0 NOT NULL".to_owned(),
            Dialect::Sqlite | Dialect::Postgres => "REAL DEFAULT 1.0 NOT NULL".to_owned(),
        },
        Ty::Time(default) => match d {
            Dialect::MySql => format!("DATETIME DEFAULT '{default}' NOT NULL"),
            Dialect::Sqlite | Dialect::Postgres => {
                format!("TIMESTAMP WITHOUT TIME ZONE DEFAULT '{default}' NOT NULL")
            }
        },
    }
}

/// `CREATE TABLE IF NOT EXISTS`, then its indexes. MySQL declares indexes
/// inside the table (it has no `CREATE INDEX IF NOT EXISTS` before MariaDB);
/// the others use separate `CREATE INDEX IF NOT EXISTS`.
fn create_table(d: Dialect, table: &Table) -> Vec<String> {
    let index_name = |name: &str| match d {
        Dialect::MySql => name.to_owned(),
        Dialect::Sqlite | Dialect::Postgres => format!("{}_{name}", table.name),
    };
    let list = |columns: &[&str]| {
        columns
            .iter()
            .map(|c| d.ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines: Vec<String> = table
        .columns
        .iter()
        .map(|(name, ty)| format!("    {} {}", d.ident(name), column_type(d, *ty)))
        .collect();
    for (name, columns) in table.unique {
        lines.push(format!(
            "    CONSTRAINT {} UNIQUE ({})",
            index_name(name),
            list(columns)
        ));
    }
    let mut out = Vec::new();
    match d {
        Dialect::MySql => {
            for (name, columns) in table.indexes {
                lines.push(format!(
                    "    INDEX {} ({})",
                    index_name(name),
                    list(columns)
                ));
            }
        }
        Dialect::Sqlite | Dialect::Postgres => {
            for (name, columns) in table.indexes {
                out.push(format!(
                    "CREATE INDEX IF NOT EXISTS {} ON {} ({})",
                    index_name(name),
                    table.name,
                    list(columns)
                ));
            }
        }
    }
    out.insert(
        0,
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n{}\n)",
            d.ident(table.name),
            lines.join(",\n")
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_kamailio() {
        let pg = statements(Dialect::Postgres).join("\n");
        assert!(pg.contains("CONSTRAINT location_ruid_idx UNIQUE (ruid)"));
        assert!(pg.contains(
            "CREATE INDEX IF NOT EXISTS location_account_contact_idx ON location (username, domain, contact)"
        ));
        assert!(pg.contains("CONSTRAINT subscriber_account_idx UNIQUE (username, domain)"));
        assert!(pg.contains("CONSTRAINT version_table_name_idx UNIQUE (table_name)"));
        assert!(pg.contains(
            "expires TIMESTAMP WITHOUT TIME ZONE DEFAULT '2030-05-28 21:32:15' NOT NULL"
        ));
        let my = statements(Dialect::MySql).join("\n");
        assert!(my.contains("CONSTRAINT ruid_idx UNIQUE (`ruid`)"));
        assert!(my.contains("INDEX connection_idx (`server_id`, `connection_id`)"));
        assert!(my.contains("`partition` INT(11) DEFAULT 0 NOT NULL"));
        assert!(my.contains("`q` FLOAT(10,2) DEFAULT 1.0 NOT NULL"));
        assert!(my.contains(
            "INSERT IGNORE INTO version (table_name, table_version) VALUES ('location', 9)"
        ));
        let lite = statements(Dialect::Sqlite).join("\n");
        assert!(lite.contains("id INTEGER PRIMARY KEY NOT NULL"));
        assert!(lite.contains("ON CONFLICT (table_name) DO NOTHING"));
    }

    #[test]
    fn every_statement_is_idempotent() {
        for d in [Dialect::Sqlite, Dialect::Postgres, Dialect::MySql] {
            for statement in statements(d) {
                assert!(
                    statement.starts_with("CREATE TABLE IF NOT EXISTS")
                        || statement.starts_with("CREATE INDEX IF NOT EXISTS")
                        || statement.contains("INSERT IGNORE")
                        || statement.ends_with("ON CONFLICT (table_name) DO NOTHING"),
                    "{statement}"
                );
            }
        }
    }
}
