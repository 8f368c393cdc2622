//! Connections to peers by id, reused while they are open and the peer's address is
//! unchanged (a restarted daemon may come back on another address).

use crate::conn::{Conn, NetError};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

pub struct ConnCache<K> {
    conns: Mutex<HashMap<K, Arc<Conn>>>,
}

impl<K: Hash + Eq + Copy> Default for ConnCache<K> {
    fn default() -> Self {
        ConnCache {
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Copy> ConnCache<K> {
    /// An open connection to `key` at `addr`, connecting if there is none.
    pub async fn get(&self, key: K, addr: &str) -> Result<Arc<Conn>, NetError> {
        if let Some(c) = crate::sync::lock(&self.conns).get(&key).cloned() {
            if !c.is_closed() && c.peer() == addr {
                return Ok(c);
            }
        }
        let c = crate::transport::connect(addr).await?;
        crate::sync::lock(&self.conns).insert(key, c.clone());
        Ok(c)
    }
}
