//! The operator's permissions, exactly the requests it makes; `crdgen rbac`
//! prints them as a ClusterRole (pipelines live in any namespace) and a Role
//! (the leader Lease, in the operator's own namespace). The reconcile
//! scenarios check every request they see against these rules.

use serde_json::{json, Value};

pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Cluster-wide: what reconciling a pipeline in any namespace needs.
pub const CLUSTER_RULES: &[Rule] = &[
    // The controller watches pipelines and sets its finalizer (a patch).
    Rule {
        group: "orderflow.dev",
        resources: &["orderpipelines"],
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        group: "orderflow.dev",
        resources: &["orderpipelines/status"],
        verbs: &["patch"],
    },
    // Owned objects are written with server-side apply (a patch, which also
    // creates); Deployments are watched to follow their rollout.
    Rule {
        group: "apps",
        resources: &["deployments"],
        verbs: &["list", "watch", "patch"],
    },
    Rule {
        group: "apps",
        resources: &["deployments/scale"],
        verbs: &["patch"],
    },
    Rule {
        group: "",
        resources: &["configmaps", "services"],
        verbs: &["patch"],
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["ingresses"],
        verbs: &["patch", "delete"],
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resources: &["httproutes"],
        verbs: &["patch", "delete"],
    },
    // The pipeline's Kafka settings Secret (SASL/TLS), when it names one.
    Rule {
        group: "",
        resources: &["secrets"],
        verbs: &["get"],
    },
    Rule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create"],
    },
];

/// In the operator's namespace: leader election.
pub const NAMESPACE_RULES: &[Rule] = &[Rule {
    group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "update"],
}];

/// Whether the rules allow `verb` on `group`/`resource`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resources.contains(&resource) && r.verbs.contains(&verb))
}

fn rules_json(rules: &[Rule]) -> Value {
    rules
        .iter()
        .map(|r| json!({"apiGroups": [r.group], "resources": r.resources, "verbs": r.verbs}))
        .collect()
}

/// The ClusterRole, Role and their bindings for the operator's
/// ServiceAccount `orderflow-operator` in `namespace`.
pub fn manifests(namespace: &str) -> Vec<Value> {
    let name = "orderflow-operator";
    let labels = json!({"app.kubernetes.io/name": "orderflow-operator", "app.kubernetes.io/part-of": "orderflow"});
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": namespace}]);
    vec![
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": rules_json(CLUSTER_RULES),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subject,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "rules": rules_json(NAMESPACE_RULES),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": subject,
        }),
    ]
}

/// The manifests as one YAML stream.
pub fn manifests_yaml(namespace: &str) -> String {
    manifests(namespace)
        .iter()
        .map(|m| {
            format!(
                "---\n{}",
                serde_yaml::to_string(m).expect("RBAC serializes")
            )
        })
        .collect()
}

/// The (group, resource, verb) of a request to the API server, from its
/// method and path (`/api/v1/namespaces/ns/configmaps/name`,
/// `/apis/apps/v1/namespaces/ns/deployments/name/scale`, …).
pub fn request_attributes(method: &str, path: &str, query: &str) -> (String, String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.first() {
        Some(&"api") => ("", &parts[2..]),
        _ => (parts[1], &parts[3..]),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        &rest[2..]
    } else {
        rest
    };
    let resource = match rest {
        [resource, _, sub] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => String::new(),
    };
    let named = rest.len() >= 2;
    let verb = match method {
        "GET" if query.contains("watch=true") => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        other => other,
    };
    (group.to_owned(), resource, verb.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_their_rbac_attributes() {
        let cases = [
            (
                "PATCH",
                "/api/v1/namespaces/a/configmaps/x",
                "",
                ("", "configmaps", "patch"),
            ),
            (
                "PATCH",
                "/apis/apps/v1/namespaces/a/deployments/x/scale",
                "",
                ("apps", "deployments/scale", "patch"),
            ),
            (
                "GET",
                "/apis/orderflow.dev/v1alpha1/orderpipelines",
                "watch=true",
                ("orderflow.dev", "orderpipelines", "watch"),
            ),
            (
                "GET",
                "/apis/orderflow.dev/v1alpha1/orderpipelines",
                "limit=1",
                ("orderflow.dev", "orderpipelines", "list"),
            ),
            (
                "POST",
                "/apis/events.k8s.io/v1/namespaces/a/events",
                "",
                ("events.k8s.io", "events", "create"),
            ),
            (
                "GET",
                "/api/v1/namespaces/a/secrets/kafka",
                "",
                ("", "secrets", "get"),
            ),
        ];
        for (method, path, query, (g, r, v)) in cases {
            assert_eq!(
                request_attributes(method, path, query),
                (g.into(), r.into(), v.into()),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn no_wildcards() {
        for rule in CLUSTER_RULES.iter().chain(NAMESPACE_RULES) {
            assert!(
                !rule.group.contains('*')
                    && !rule.resources.contains(&"*")
                    && !rule.verbs.contains(&"*")
            );
        }
    }
}
