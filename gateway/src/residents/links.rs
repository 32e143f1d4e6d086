//! Per-unit secret links: `/r/{token}`, 32 random bytes (hex). Only the SHA-256 of a token
//! is stored; a lookup finds the row by hash and compares it in constant time.
//!
//! ```sql
//! CREATE TABLE resident_links (
//!     building TEXT NOT NULL, unit TEXT NOT NULL,
//!     token_hash BLOB NOT NULL UNIQUE,   -- SHA-256 of the token
//!     created_at TEXT NOT NULL,
//!     revoked INTEGER NOT NULL DEFAULT 0 -- 1 once rotated
//! );
//! ```
//!
//! The table is created and versioned by [`crate::db::migrate`] (schema version 1).
//! Issuing a unit's link revokes its previous one (rotation).

use std::path::Path;

use edge_config::Config;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::ResidentsError;

/// One unit and its (secret) token, as just issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub building: String,
    pub unit: String,
    pub token: String,
}

/// A unit's current link, without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub building: String,
    pub unit: String,
    pub created_at: String,
}

fn hash(token: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).to_vec()
}

fn open_rw(db: &Path) -> Result<Connection, ResidentsError> {
    let conn = crate::db::open_writer(db)?;
    crate::db::migrate(&conn)?;
    Ok(conn)
}

/// Issues a new link for each `(building, unit)`, revoking the previous one: one transaction.
pub fn issue(db: &Path, units: &[(String, String)]) -> Result<Vec<Issued>, ResidentsError> {
    let mut conn = open_rw(db)?;
    let tx = conn.transaction()?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut out = Vec::with_capacity(units.len());
    for (building, unit) in units {
        let token = crate::token::new_token().map_err(ResidentsError::Random)?;
        tx.execute(
            "UPDATE resident_links SET revoked = 1 WHERE building = ?1 AND unit = ?2",
            params![building, unit],
        )?;
        tx.execute(
            "INSERT INTO resident_links (building, unit, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![building, unit, hash(&token), now],
        )?;
        out.push(Issued {
            building: building.clone(),
            unit: unit.clone(),
            token,
        });
    }
    tx.commit()?;
    Ok(out)
}

/// Every `(building, unit)` of the configuration.
pub fn all_units(config: &Config) -> Vec<(String, String)> {
    config
        .locations
        .buildings
        .iter()
        .flat_map(|b| b.units.iter().map(|u| (b.id.clone(), u.id.clone())))
        .collect()
}

/// Parses `BUILDING/UNIT` against the configuration.
pub fn parse_unit(config: &Config, s: &str) -> Result<(String, String), ResidentsError> {
    let (b, u) = s
        .split_once('/')
        .ok_or_else(|| ResidentsError::UnknownUnit(s.to_owned()))?;
    config
        .building(b)
        .and_then(|b| b.unit(u))
        .map(|_| (b.to_owned(), u.to_owned()))
        .ok_or_else(|| ResidentsError::UnknownUnit(s.to_owned()))
}

/// The unit a token opens, if it is current (read-only; no table yet means no links).
pub fn lookup(db: &Path, token: &str) -> Result<Option<(String, String)>, ResidentsError> {
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let conn = crate::db::open_reader(db)?;
    let wanted = hash(token);
    let row: Result<Option<(String, String, Vec<u8>)>, _> = conn
        .query_row(
            "SELECT building, unit, token_hash FROM resident_links WHERE token_hash = ?1 AND revoked = 0",
            [&wanted],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional();
    let row = match row {
        Ok(r) => r,
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => None,
        Err(e) => return Err(e.into()),
    };
    Ok(row.and_then(|(b, u, stored)| bool::from(stored.ct_eq(&wanted)).then_some((b, u))))
}

/// The current link of every unit that has one (no secrets).
pub fn list(db: &Path) -> Result<Vec<LinkInfo>, ResidentsError> {
    let conn = open_rw(db)?;
    let mut stmt = conn.prepare(
        "SELECT building, unit, created_at FROM resident_links WHERE revoked = 0 ORDER BY building, unit",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(LinkInfo {
            building: r.get(0)?,
            unit: r.get(1)?,
            created_at: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_opens_its_unit_until_it_is_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shouwang.db");
        assert_eq!(
            lookup(&db.with_extension("missing"), &"a".repeat(64))
                .ok()
                .flatten(),
            None
        );
        let units = vec![
            ("b1".to_owned(), "u1".to_owned()),
            ("b2".to_owned(), "u2".to_owned()),
        ];
        let first = issue(&db, &units).unwrap();
        assert_eq!(
            lookup(&db, &first[0].token).unwrap(),
            Some(units[0].clone())
        );
        assert_eq!(
            lookup(&db, &first[1].token).unwrap(),
            Some(units[1].clone())
        );
        let rotated = issue(&db, &units[..1]).unwrap();
        assert_eq!(lookup(&db, &first[0].token).unwrap(), None);
        assert_eq!(
            lookup(&db, &rotated[0].token).unwrap(),
            Some(units[0].clone())
        );
        assert_eq!(
            lookup(&db, &first[1].token).unwrap(),
            Some(units[1].clone())
        );
        assert_eq!(lookup(&db, "not-a-token").unwrap(), None);
        assert_eq!(list(&db).unwrap().len(), 2);
    }
}
