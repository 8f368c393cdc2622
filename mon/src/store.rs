//! The monitor's durable store (redb): every committed map by epoch, and the monitor's
//! identity. Maps are kept in an envelope so a damaged or foreign store is refused at start
//! instead of serving a wrong map.
//!
//! Stored map envelope (little-endian):
//! ```text
//!   0 magic "ATLM" u32 | 4 format u16 | 6 reserved u16 | 8 length u32 | 12 crc32c u32 | 16 postcard(ClusterMap)
//! ```

use proto::checksum::crc32c;
use proto::{ClusterMap, Epoch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const MAPS: TableDefinition<u64, &[u8]> = TableDefinition::new("maps");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const MAGIC: u32 = u32::from_le_bytes(*b"ATLM");
/// 2: the map gained OSD fullness and the full ratios.
pub const FORMAT_VERSION: u16 = 2;
const ENVELOPE_LEN: usize = 16;
/// How many old maps are kept for subscribers that fell behind.
const KEEP_MAPS: u64 = 500;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("monitor store {path}: {source}")]
    Db {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error(
        "monitor store {path} is damaged: {what}; refusing to start rather than serve a wrong map"
    )]
    Damaged { path: PathBuf, what: String },
    #[error("monitor store {0} does not exist; create it with `atlant-mon mkfs`")]
    Missing(PathBuf),
    #[error("monitor store {0} already exists")]
    Exists(PathBuf),
}

pub struct MonStore {
    db: Database,
    path: PathBuf,
}

/// The monitor's identity, written by `mkfs`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub name: String,
    pub addr: String,
    pub fsid: u128,
}

impl MonStore {
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join("mon.redb")
    }

    /// Creates a new store holding the first map.
    pub fn create(dir: &Path, id: &Identity, map: &ClusterMap) -> Result<MonStore, StoreError> {
        let path = Self::path_in(dir);
        if path.exists() {
            return Err(StoreError::Exists(path));
        }
        std::fs::create_dir_all(dir).map_err(|e| db_err(&path, e))?;
        let db = Database::create(&path).map_err(|e| db_err(&path, e))?;
        let store = MonStore { db, path };
        store.write(Some(id), map)?;
        Ok(store)
    }

    /// Opens an existing store and checks it: returns the identity and the latest map.
    pub fn open(dir: &Path) -> Result<(MonStore, Identity, ClusterMap), StoreError> {
        let path = Self::path_in(dir);
        if !path.exists() {
            return Err(StoreError::Missing(path));
        }
        let db = Database::open(&path).map_err(|e| db_err(&path, e))?;
        let store = MonStore { db, path };
        let (id, map) = store.load()?;
        Ok((store, id, map))
    }

    fn damaged(&self, what: impl Into<String>) -> StoreError {
        StoreError::Damaged {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn load(&self) -> Result<(Identity, ClusterMap), StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(p, e))?;
        let meta = txn.open_table(META).map_err(|e| db_err(p, e))?;
        let raw = meta
            .get("identity")
            .map_err(|e| db_err(p, e))?
            .ok_or_else(|| self.damaged("no identity record"))?;
        let id: Identity =
            unseal(raw.value()).map_err(|e| self.damaged(format!("identity: {e}")))?;
        let maps = txn.open_table(MAPS).map_err(|e| db_err(p, e))?;
        let (k, v) = maps
            .last()
            .map_err(|e| db_err(p, e))?
            .ok_or_else(|| self.damaged("no map"))?;
        let map: ClusterMap = unseal(v.value())
            .map_err(|e| self.damaged(format!("map at epoch {}: {e}", k.value())))?;
        if map.epoch != k.value() {
            return Err(self.damaged(format!(
                "map stored under epoch {} says epoch {}",
                k.value(),
                map.epoch
            )));
        }
        if map.fsid != id.fsid {
            return Err(self.damaged("map belongs to another cluster"));
        }
        Ok((id, map))
    }

    /// Durably records `map` (and trims maps older than the kept window).
    pub fn save(&self, map: &ClusterMap) -> Result<(), StoreError> {
        self.write(None, map)
    }

    fn write(&self, id: Option<&Identity>, map: &ClusterMap) -> Result<(), StoreError> {
        let p = &self.path;
        let txn = self.db.begin_write().map_err(|e| db_err(p, e))?;
        {
            let mut maps = txn.open_table(MAPS).map_err(|e| db_err(p, e))?;
            maps.insert(map.epoch, seal(map).as_slice())
                .map_err(|e| db_err(p, e))?;
            if map.epoch > KEEP_MAPS {
                let cut = map.epoch - KEEP_MAPS;
                maps.retain_in(..cut, |_, _| false)
                    .map_err(|e| db_err(p, e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| db_err(p, e))?;
            if let Some(id) = id {
                meta.insert("identity", seal(id).as_slice())
                    .map_err(|e| db_err(p, e))?;
            }
        }
        txn.commit().map_err(|e| db_err(p, e))?;
        Ok(())
    }

    /// The stored map at `epoch`, if still kept.
    pub fn map_at(&self, epoch: Epoch) -> Result<Option<ClusterMap>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_read().map_err(|e| db_err(p, e))?;
        let maps = txn.open_table(MAPS).map_err(|e| db_err(p, e))?;
        match maps.get(epoch).map_err(|e| db_err(p, e))? {
            None => Ok(None),
            Some(v) => unseal(v.value())
                .map(Some)
                .map_err(|e| self.damaged(format!("map at epoch {epoch}: {e}"))),
        }
    }
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.to_path_buf(),
        source: Box::new(e.into()),
    }
}

fn seal<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let body = proto::msg::encode_control(v);
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn unseal<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    if raw.len() < ENVELOPE_LEN {
        return Err(format!(
            "record of {} bytes is shorter than its header",
            raw.len()
        ));
    }
    let u32_at = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
    if u32_at(0) != MAGIC {
        return Err("bad magic".into());
    }
    let format = u16::from_le_bytes([raw[4], raw[5]]);
    if format != FORMAT_VERSION {
        return Err(format!(
            "format version {format}, this build reads {FORMAT_VERSION}"
        ));
    }
    let len = u32_at(8) as usize;
    let body = &raw[ENVELOPE_LEN..];
    if body.len() != len {
        return Err(format!("length {} but header says {len}", body.len()));
    }
    if crc32c(body) != u32_at(12) {
        return Err("checksum mismatch".into());
    }
    postcard::from_bytes(body).map_err(|e| format!("decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("atlant-monstore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn maps_survive_reopen() {
        let d = tmpdir("reopen");
        let id = Identity {
            name: "a".into(),
            addr: "127.0.0.1:1".into(),
            fsid: 9,
        };
        let m = ClusterMap::new(9, vec![]);
        {
            let s = MonStore::create(&d, &id, &m).unwrap();
            let mut m2 = m.clone();
            m2.epoch = 2;
            s.save(&m2).unwrap();
        }
        let (_, id2, latest) = MonStore::open(&d).unwrap();
        assert_eq!(id2.name, "a");
        assert_eq!(latest.epoch, 2);
        assert!(matches!(
            MonStore::create(&d, &id, &m),
            Err(StoreError::Exists(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn sealed_records_reject_damage() {
        let m = ClusterMap::new(9, vec![]);
        let mut raw = seal(&m);
        assert_eq!(unseal::<ClusterMap>(&raw).unwrap(), m);
        let last = raw.len() - 1;
        raw[last] ^= 0x40;
        assert!(unseal::<ClusterMap>(&raw).unwrap_err().contains("checksum"));
        assert!(unseal::<ClusterMap>(&raw[..5]).is_err());
        let mut v2 = seal(&m);
        v2[4] = 9;
        assert!(unseal::<ClusterMap>(&v2)
            .unwrap_err()
            .contains("format version"));
    }
}
