//! The store's maintenance operations: one list for the `iiifd store` command and the admin API
//! (`/admin/store/{name}`), so the two cannot drift apart in what they offer or what they answer.

use super::Store;
use serde_json::{json, Value};
use std::io;

/// One maintenance operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Maintenance {
    /// Objects, bytes and budget.
    Stats,
    /// Check every object against its length and blake3.
    Verify,
    /// Remove temp files, dangling entries and index orphans; enforce the budget.
    Gc,
    /// Rebuild the index from the object files (offline only: the index is cleared first).
    Reindex,
    /// Remove every derivative of one identifier.
    Purge(String),
}

impl Maintenance {
    /// The names of the operations a running server offers, as the admin API spells them.
    pub(crate) const ONLINE: [&'static str; 4] = ["stats", "verify", "gc", "purge"];

    /// The operation called `name` (`purge` needs `id`), if a running server offers it.
    pub(crate) fn online(
        name: &str,
        id: Option<String>,
    ) -> Option<Result<Maintenance, &'static str>> {
        Some(Ok(match name {
            "stats" => Maintenance::Stats,
            "verify" => Maintenance::Verify,
            "gc" => Maintenance::Gc,
            "purge" => match id.filter(|i| !i.is_empty()) {
                Some(id) => Maintenance::Purge(id),
                None => return Some(Err("purge needs ?id=IDENTIFIER")),
            },
            _ => return None,
        }))
    }

    /// The admin API's method for the operation called `name`: GET for what only reads.
    pub(crate) fn method(name: &str) -> Option<&'static str> {
        match name {
            "stats" => Some("GET"),
            _ if Self::ONLINE.contains(&name) => Some("POST"),
            _ => None,
        }
    }

    /// Run it on `store`: the name its report goes under, and the report.
    pub(crate) fn run(&self, store: &Store) -> io::Result<(&'static str, Value)> {
        let value = |v: Result<Value, serde_json::Error>| v.map_err(io::Error::other);
        Ok(match self {
            Maintenance::Stats => ("stats", value(serde_json::to_value(store.stats()))?),
            Maintenance::Verify => ("verify", value(serde_json::to_value(store.verify()?))?),
            Maintenance::Gc => ("gc", value(serde_json::to_value(store.gc()?))?),
            Maintenance::Reindex => ("reindex", value(serde_json::to_value(store.reindex()?))?),
            Maintenance::Purge(id) => ("purged", json!(store.purge(id)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_online_name_parses_and_others_do_not() {
        for name in Maintenance::ONLINE {
            let op = Maintenance::online(name, Some("x".into()));
            assert!(matches!(op, Some(Ok(_))), "{name}");
        }
        assert_eq!(
            Maintenance::online("purge", None),
            Some(Err("purge needs ?id=IDENTIFIER"))
        );
        assert_eq!(Maintenance::online("reindex", None), None, "offline only");
        assert_eq!(Maintenance::method("stats"), Some("GET"));
        assert_eq!(Maintenance::method("gc"), Some("POST"));
        assert_eq!(Maintenance::method("reindex"), None);
        assert_eq!(Maintenance::online("nope", None), None);
    }
}
