//! The Node as the controller's watch keeps it: every field but `metadata.managedFields`.
//!
//! Why: each of the controller's two writes per Node comes back through its own watch, and the
//! apiserver sends every event with the Node's `managedFields`. k8s-openapi parses those into
//! `serde_json::Value` trees. In the 1,000-Node bench, `perf` put 12 % of the controller's CPU in
//! decoding Nodes (8.6 % in `ObjectMeta`) and 13 % in malloc, and that CPU is taken from an
//! apiserver on the same cores. Nothing here reads `managedFields`. controller-runtime offers the
//! same for its caches (`pkg/cache/cache.go`, `TransformStripManagedFields`), but after decoding;
//! serde skips them here without building anything.
//!
//! Writes still use `k8s_openapi` `Node`: [`WatchedNode`] only stands in for it in the watch, the
//! store and the reconcile's argument.

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

/// A watched Node, `metadata.managedFields` left out (always `None`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WatchedNode(pub Node);

impl std::ops::Deref for WatchedNode {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.0
    }
}

impl k8s_openapi::Resource for WatchedNode {
    const API_VERSION: &'static str = <Node as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Node as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Node as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Node as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Node as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for WatchedNode {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

impl Serialize for WatchedNode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// The wire form: unknown keys (`apiVersion`, `kind`, `managedFields`) are skipped by serde.
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: Meta,
    spec: Option<NodeSpec>,
    status: Option<NodeStatus>,
}

/// `ObjectMeta` without `managedFields`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl<'de> Deserialize<'de> for WatchedNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let m = w.metadata;
        Ok(WatchedNode(Node {
            metadata: ObjectMeta {
                annotations: m.annotations,
                creation_timestamp: m.creation_timestamp,
                deletion_grace_period_seconds: m.deletion_grace_period_seconds,
                deletion_timestamp: m.deletion_timestamp,
                finalizers: m.finalizers,
                generate_name: m.generate_name,
                generation: m.generation,
                labels: m.labels,
                managed_fields: None,
                name: m.name,
                namespace: m.namespace,
                owner_references: m.owner_references,
                resource_version: m.resource_version,
                self_link: m.self_link,
                uid: m.uid,
            },
            spec: w.spec,
            status: w.status,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Node as the apiserver sends it after a kubelet registration and our two writes.
    const NODE: &str = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"w1","uid":"u-1",
        "resourceVersion":"42","creationTimestamp":"2026-11-29T10:00:00Z","generation":3,
        "labels":{"kubernetes.io/hostname":"w1","node.kubernetes.io/instance-type":"c2000-m2048"},
        "annotations":{"alpha.kubernetes.io/provided-node-ip":"10.0.0.5"},
        "finalizers":["f"],"ownerReferences":[{"apiVersion":"v1","kind":"X","name":"x","uid":"x1"}],
        "deletionGracePeriodSeconds":30,"deletionTimestamp":"2026-11-29T11:00:00Z",
        "managedFields":[{"manager":"kubelet","operation":"Update","apiVersion":"v1",
          "time":"2026-11-29T10:00:00Z","fieldsType":"FieldsV1",
          "fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:kubernetes.io/hostname":{}}}}}]},
        "spec":{"providerID":"cloudsigma://abc","taints":[{"key":"k","effect":"NoSchedule"}]},
        "status":{"addresses":[{"type":"InternalIP","address":"10.0.0.5"}],
          "conditions":[{"type":"Ready","status":"True"}]}}"#;

    #[test]
    fn everything_but_managed_fields_is_kept() {
        let full: Node = serde_json::from_str(NODE).expect("full");
        assert!(
            full.metadata.managed_fields.is_some(),
            "fixture has managedFields"
        );
        let watched: WatchedNode = serde_json::from_str(NODE).expect("watched");
        let mut expected = full;
        expected.metadata.managed_fields = None;
        assert_eq!(watched.0, expected);
    }

    #[test]
    fn round_trips_through_its_serialized_form() {
        let watched: WatchedNode = serde_json::from_str(NODE).expect("watched");
        let again: WatchedNode =
            serde_json::from_str(&serde_json::to_string(&watched).expect("ser")).expect("de");
        assert_eq!(again, watched);
        assert!(serde_json::to_string(&watched)
            .expect("ser")
            .contains(r#""kind":"Node""#));
    }
}
