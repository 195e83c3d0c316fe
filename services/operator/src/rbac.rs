//! The operator's permissions, exactly the requests it makes. `crdgen rbac`
//! prints them: a ClusterRole with [`PIPELINE_RULES`] bound by a RoleBinding
//! in each namespace the operator serves (`WATCH_NAMESPACES`), so that it
//! reads Secrets only there (or by a ClusterRoleBinding when it serves every
//! namespace), and a Role with [`NAMESPACE_RULES`] (the leader Lease) in its
//! own namespace. The reconcile scenarios check every request they see
//! against these rules; the control-plane tests compare them with what the
//! real API server grants (`kubectl auth can-i --list`).

use serde_json::{json, Value};

pub struct Rule {
    pub group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// In every served namespace: what reconciling a pipeline there needs.
pub const PIPELINE_RULES: &[Rule] = &[
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
    // Owned objects are written with server-side apply: a patch, which the
    // API server authorizes as `create` too when the object does not exist
    // yet. Deployments are watched to follow their rollout.
    Rule {
        group: "apps",
        resources: &["deployments"],
        verbs: &["list", "watch", "create", "patch"],
    },
    Rule {
        group: "apps",
        resources: &["deployments/scale"],
        verbs: &["patch"],
    },
    Rule {
        group: "",
        resources: &["configmaps", "services"],
        verbs: &["create", "patch"],
    },
    Rule {
        group: "networking.k8s.io",
        resources: &["ingresses"],
        verbs: &["create", "patch", "delete"],
    },
    Rule {
        group: "gateway.networking.k8s.io",
        resources: &["httproutes"],
        verbs: &["create", "patch", "delete"],
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

/// The operator's ServiceAccount, ClusterRole, Role and bindings.
pub const NAME: &str = "orderflow-operator";

/// Whether the rules allow `verb` on `group`/`resource`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules
        .iter()
        .any(|r| r.group == group && r.resources.contains(&resource) && r.verbs.contains(&verb))
}

pub fn rules_json(rules: &[Rule]) -> Value {
    rules
        .iter()
        .map(|r| json!({"apiGroups": [r.group], "resources": r.resources, "verbs": r.verbs}))
        .collect()
}

/// The ServiceAccount `orderflow-operator` in `namespace`, its roles and
/// bindings: the pipeline rules in each of `served` (every namespace when
/// `served` is empty), leader election in `namespace`. Namespaces are
/// included, so the stream applies on its own.
pub fn manifests(namespace: &str, served: &[&str]) -> Vec<Value> {
    let name = NAME;
    let labels = json!({"app.kubernetes.io/name": "orderflow-operator", "app.kubernetes.io/part-of": "orderflow"});
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": namespace}]);
    let cluster_role =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name});
    let mut namespaces = vec![namespace];
    namespaces.extend(served.iter().filter(|n| **n != namespace));
    let mut out: Vec<Value> = namespaces
        .iter()
        .map(|ns| {
            json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": "orderflow"}},
            })
        })
        .collect();
    out.push(json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels},
        "rules": rules_json(PIPELINE_RULES),
    }));
    if served.is_empty() {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": cluster_role,
            "subjects": subject,
        }));
    }
    for ns in served {
        out.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("{name}-pipelines"), "namespace": ns, "labels": labels},
            "roleRef": cluster_role,
            "subjects": subject,
        }));
    }
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "rules": rules_json(NAMESPACE_RULES),
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": subject,
    }));
    out
}

/// The manifests as one YAML stream.
pub fn manifests_yaml(namespace: &str, served: &[&str]) -> String {
    manifests(namespace, served)
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
        for rule in PIPELINE_RULES.iter().chain(NAMESPACE_RULES) {
            assert!(
                !rule.group.contains('*')
                    && !rule.resources.contains(&"*")
                    && !rule.verbs.contains(&"*")
            );
        }
    }
}
