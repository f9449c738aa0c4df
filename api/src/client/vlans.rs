//! `/vlans/`: the account's private networks.

use super::{check_id, Client, Error};
use crate::models::{Meta, Vlan};

impl Client {
    pub async fn list_vlans(&self) -> Result<Vec<Vlan>, Error> {
        self.list_unique(&["vlans", "detail"], &[]).await
    }

    pub async fn get_vlan(&self, uuid: &str) -> Result<Vlan, Error> {
        check_id("vlan", uuid)?;
        self.get_json(&["vlans", uuid], &[]).await
    }

    /// Read-modify-write of a VLAN's `meta` (the only editable part with `tags` [D: emulator
    /// rule, unconfirmed on the real cloud]): GET, `edit` (false = leave it, nothing written),
    /// `PUT {"meta": …}` sent once, and after a retryable failure the same again from a fresh
    /// read, as [`Client::modify_server_meta`]. Returns the VLAN as last read or written.
    pub async fn modify_vlan_meta(
        &self,
        uuid: &str,
        mut edit: impl FnMut(&mut Meta) -> bool,
    ) -> Result<Vlan, Error> {
        check_id("vlan", uuid)?;
        let attempts = self.config().retry.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut v = self.get_vlan(uuid).await?;
            if !edit(&mut v.meta) {
                return Ok(v);
            }
            let body = serde_json::json!({ "meta": v.meta });
            match self.put_json_once(&["vlans", uuid], &body).await {
                Ok(written) => return Ok(written),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    let d = self.config().retry.base_delay * attempt;
                    tokio::time::sleep(e.retry_after().unwrap_or(d).max(d)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
