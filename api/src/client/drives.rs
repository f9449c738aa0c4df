//! `/drives/`: listing, CRUD, clone and resize.

use super::{check_id, Client, Error};
use crate::models::{Drive, DriveClone, DriveCreate};

impl Client {
    pub async fn list_drives(&self) -> Result<Vec<Drive>, Error> {
        self.list_unique(&["drives", "detail"], &[]).await
    }

    pub async fn list_drives_filtered(&self, query: &[(&str, &str)]) -> Result<Vec<Drive>, Error> {
        self.list_unique(&["drives", "detail"], query).await
    }

    pub async fn get_drive(&self, uuid: &str) -> Result<Drive, Error> {
        check_id("drive", uuid)?;
        self.get_json(&["drives", uuid], &[]).await
    }

    /// Create one drive (status `creating`, then `unmounted`: use [`Client::wait_drive_status`]).
    pub async fn create_drive(&self, d: &DriveCreate) -> Result<Drive, Error> {
        self.create_one("drives", d).await
    }

    pub async fn update_drive(&self, d: &Drive) -> Result<Drive, Error> {
        check_id("drive", &d.uuid)?;
        self.put_json(&["drives", &d.uuid], d).await
    }

    /// Refused by the API (4xx) while the drive is mounted on a running server.
    pub async fn delete_drive(&self, uuid: &str) -> Result<(), Error> {
        check_id("drive", uuid)?;
        self.delete_at(&["drives", uuid], &[]).await
    }

    /// Clone a drive; the answer (202) is the new drive in `cloning_dst`. Not retried.
    pub async fn clone_drive(&self, uuid: &str, req: &DriveClone) -> Result<Drive, Error> {
        check_id("drive", uuid)?;
        self.post_first(&["drives", uuid, "action"], &[("do", "clone")], req)
            .await
    }

    /// Resize: the API takes the full drive definition with the new `size` (202, `resizing`).
    pub async fn resize_drive(&self, drive: &Drive, new_size: u64) -> Result<Drive, Error> {
        check_id("drive", &drive.uuid)?;
        let mut body = drive.clone();
        body.size = new_size;
        self.post_first(
            &["drives", &drive.uuid, "action"],
            &[("do", "resize")],
            &body,
        )
        .await
    }
}
