//! `/tags/`: CRUD, and the resources carrying a tag (`tags/{uuid}/servers/` …).

use super::{check_id, Client, Error};
use crate::models::{Drive, Ip, Server, Tag, TagCreate, Vlan};

impl Client {
    pub async fn list_tags(&self) -> Result<Vec<Tag>, Error> {
        self.list_unique(&["tags", "detail"], &[]).await
    }

    pub async fn get_tag(&self, uuid: &str) -> Result<Tag, Error> {
        check_id("tag", uuid)?;
        self.get_json(&["tags", uuid], &[]).await
    }

    pub async fn create_tag(&self, t: &TagCreate) -> Result<Tag, Error> {
        self.create_one("tags", t).await
    }

    pub async fn update_tag(&self, t: &Tag) -> Result<Tag, Error> {
        check_id("tag", &t.uuid)?;
        self.put_json(&["tags", &t.uuid], t).await
    }

    pub async fn delete_tag(&self, uuid: &str) -> Result<(), Error> {
        check_id("tag", uuid)?;
        self.delete_at(&["tags", uuid], &[]).await
    }

    /// Servers carrying tag `uuid` (`GET tags/{uuid}/servers/`).
    pub async fn tag_servers(&self, uuid: &str) -> Result<Vec<Server>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "servers"], &[]).await
    }

    /// Servers carrying tag `uuid`, in full (`GET tags/{uuid}/servers/detail/`, paginated like
    /// `servers/detail/`): what a controller scoped to one cluster's tag lists instead of the
    /// whole account.
    pub async fn tag_servers_detail(&self, uuid: &str) -> Result<Vec<Server>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "servers", "detail"], &[])
            .await
    }

    /// Drives carrying tag `uuid` (`GET tags/{uuid}/drives/`).
    pub async fn tag_drives(&self, uuid: &str) -> Result<Vec<Drive>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "drives"], &[]).await
    }

    /// IPs carrying tag `uuid` (`GET tags/{uuid}/ips/`).
    pub async fn tag_ips(&self, uuid: &str) -> Result<Vec<Ip>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "ips"], &[]).await
    }

    /// VLANs carrying tag `uuid` (`GET tags/{uuid}/vlans/`).
    pub async fn tag_vlans(&self, uuid: &str) -> Result<Vec<Vlan>, Error> {
        check_id("tag", uuid)?;
        self.list_unique(&["tags", uuid, "vlans"], &[]).await
    }
}
