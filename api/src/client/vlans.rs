//! `/vlans/`: the account's private networks.

use super::{check_id, Client, Error};
use crate::models::Vlan;

impl Client {
    pub async fn list_vlans(&self) -> Result<Vec<Vlan>, Error> {
        self.list_unique(&["vlans", "detail"], &[]).await
    }

    pub async fn get_vlan(&self, uuid: &str) -> Result<Vlan, Error> {
        check_id("vlan", uuid)?;
        self.get_json(&["vlans", uuid], &[]).await
    }
}
