//! The Kubernetes manifests (`deploy/kubernetes/`): the base and the production overlay render
//! with `kubectl kustomize`, validate offline against the Kubernetes schemas
//! (`kubernetes-validate --strict`), and say what a deployment of this platform needs: readiness
//! on `/ready` and liveness on `/health` for every part, a drain before a hub replica stops, a
//! disruption budget and an autoscaler per part (the hub's on connections), secrets only from
//! Secret objects, and no StatefulSet (the backing services are external).
//! `scripts/ensure-kubernetes-tools.sh` installs kubernetes-validate when it is missing.

#![allow(clippy::unwrap_used)]

use std::{collections::HashMap, path::Path, process::Command};

use serde_yaml::Value;

fn render(overlay: &str) -> (String, Vec<Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes")
        .join(overlay);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl is not installed (needed to render deploy/kubernetes)");
    assert!(
        output.status.success(),
        "kubectl kustomize {overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let documents = text
        .split("\n---\n")
        .map(|document| serde_yaml::from_str(document).unwrap())
        .collect();
    (text, documents)
}

fn validate(text: &str, overlay: &str) {
    let file =
        std::env::temp_dir().join(format!("instaclone-{overlay}-{}.yaml", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("python3 is not installed");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "kubernetes-validate {overlay} (run scripts/ensure-kubernetes-tools.sh if it is missing): {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> HashMap<String, &'a Value> {
    documents
        .iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| (d["metadata"]["name"].as_str().unwrap().to_owned(), d))
        .collect()
}

const PARTS: [&str; 6] = [
    "gateway",
    "auth",
    "users",
    "posts",
    "notifications",
    "realtime-hub",
];

#[test]
fn base_and_production_render_and_validate() {
    for overlay in ["base", "overlays/production"] {
        let (text, documents) = render(overlay);
        validate(&text, &overlay.replace('/', "-"));
        assert!(
            of_kind(&documents, "StatefulSet").is_empty(),
            "{overlay}: a StatefulSet"
        );
        let deployments = of_kind(&documents, "Deployment");
        let budgets = of_kind(&documents, "PodDisruptionBudget");
        let autoscalers = of_kind(&documents, "HorizontalPodAutoscaler");
        for part in PARTS {
            let deployment = deployments
                .get(part)
                .unwrap_or_else(|| panic!("{overlay}: no {part}"));
            let pod = &deployment["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            assert_eq!(
                container["readinessProbe"]["httpGet"]["path"], "/ready",
                "{part}"
            );
            assert_eq!(
                container["livenessProbe"]["httpGet"]["path"], "/health",
                "{part}"
            );
            assert!(
                container["lifecycle"]["preStop"].is_mapping(),
                "{part}: no preStop"
            );
            // Secrets only by reference.
            for variable in container["env"].as_sequence().unwrap() {
                assert!(
                    variable.get("value").is_none(),
                    "{part}: literal {variable:?}"
                );
                assert!(variable["valueFrom"]["secretKeyRef"]["name"] == "instaclone-secrets");
            }
            assert!(
                budgets.contains_key(part),
                "{overlay}: no budget for {part}"
            );
            assert!(
                autoscalers.contains_key(part),
                "{overlay}: no autoscaler for {part}"
            );
        }
        let hub = &deployments["realtime-hub"]["spec"]["template"]["spec"];
        assert!(hub["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
        let hub_metrics =
            serde_yaml::to_string(&autoscalers["realtime-hub"]["spec"]["metrics"]).unwrap();
        assert!(hub_metrics.contains("hub_connections"), "{hub_metrics}");
        // Only the auth service holds the token-signing key.
        for (name, deployment) in &deployments {
            let env = serde_yaml::to_string(
                &deployment["spec"]["template"]["spec"]["containers"][0]["env"],
            )
            .unwrap();
            assert_eq!(env.contains("JWT_PRIVATE_KEY"), name == "auth", "{name}");
        }
        let ingress = serde_yaml::to_string(&of_kind(&documents, "Ingress")["instaclone"]).unwrap();
        assert!(
            ingress.contains("proxy-read-timeout") && ingress.contains("/realtime/ws"),
            "{ingress}"
        );
    }
    let (_, production) = render("overlays/production");
    let hub = &of_kind(&production, "Deployment")["realtime-hub"];
    assert_eq!(hub["spec"]["replicas"], 3);
    assert_eq!(hub["metadata"]["namespace"], "instaclone");
}
