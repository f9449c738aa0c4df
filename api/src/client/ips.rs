//! `/ips/`: the account's subscribed IPv4 addresses (an IP's uuid is the address).

use super::{check_id, Client, Error};
use crate::models::Ip;

impl Client {
    pub async fn list_ips(&self) -> Result<Vec<Ip>, Error> {
        self.list_unique(&["ips", "detail"], &[]).await
    }

    /// One subscribed IP; its uuid is the address.
    pub async fn get_ip(&self, address: &str) -> Result<Ip, Error> {
        check_id("ip", address)?;
        self.get_json(&["ips", address], &[]).await
    }
}
