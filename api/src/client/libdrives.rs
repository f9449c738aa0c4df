//! `/libdrives/`: CloudSigma's public images, and cloning one into the account.

use super::{check_id, Client, Error};
use crate::models::{Drive, DriveClone, LibDrive};

impl Client {
    /// Library drives matching `query` (e.g. `[("distribution", "Ubuntu"), ("version", "24.04")]`).
    pub async fn list_libdrives(&self, query: &[(&str, &str)]) -> Result<Vec<LibDrive>, Error> {
        self.list_unique(&["libdrives", "detail"], query).await
    }

    pub async fn get_libdrive(&self, uuid: &str) -> Result<LibDrive, Error> {
        check_id("library drive", uuid)?;
        self.get_json(&["libdrives", uuid], &[]).await
    }

    /// Clone a library drive into the account (202, new drive in `cloning_dst`). Not retried.
    pub async fn clone_libdrive(&self, uuid: &str, req: &DriveClone) -> Result<Drive, Error> {
        check_id("library drive", uuid)?;
        self.post_first(&["libdrives", uuid, "action"], &[("do", "clone")], req)
            .await
    }
}
