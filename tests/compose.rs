//! docker-compose.yml as an attacker on the host's network would meet it: only the gateway and
//! the hub are published, no broker or database port and no management UI, and no secret has a
//! default that works (compose must refuse to start without each one).

#![allow(clippy::unwrap_used)]

use serde_yaml::Value;

fn compose() -> (String, Value) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml"))
        .unwrap();
    let parsed = serde_yaml::from_str(&text).unwrap();
    (text, parsed)
}

#[test]
fn only_the_gateway_and_the_hub_are_published() {
    let (_, compose) = compose();
    let services = compose["services"].as_mapping().unwrap();
    let published: Vec<&str> = services
        .iter()
        .filter(|(_, service)| service.get("ports").is_some())
        .map(|(name, _)| name.as_str().unwrap())
        .collect();
    assert_eq!(published, ["gateway", "hub-balancer"]);
    for (name, service) in services {
        let image = service["image"].as_str().unwrap_or_default();
        assert!(
            !image.contains("management"),
            "{name:?} runs a management UI: {image}"
        );
    }
}

/// `docker compose up --scale realtime-hub=3`: the replicas publish no port of their own (they
/// would collide), the balancer finds every replica through Docker's DNS and checks `/ready`,
/// and the other parts reach the hub through it.
#[test]
fn the_hub_scales_behind_its_balancer() {
    let (_, compose) = compose();
    let services = &compose["services"];
    assert!(services["realtime-hub"].get("ports").is_none());
    assert!(services["realtime-hub"].get("container_name").is_none());
    let balancer = &services["hub-balancer"];
    assert!(
        balancer["image"].as_str().unwrap().starts_with("haproxy:"),
        "{balancer:?}"
    );
    let mounted = balancer["volumes"][0].as_str().unwrap();
    let config_path = mounted.split(':').next().unwrap();
    assert_eq!(config_path, "./deploy/compose/haproxy.cfg");
    let config =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(config_path))
            .unwrap();
    assert!(
        config.contains("server-template hub 10 realtime-hub:3005"),
        "{config}"
    );
    assert!(config.contains("option httpchk GET /ready"), "{config}");
    assert!(config.contains("timeout tunnel 1h"), "{config}");
    assert_eq!(
        compose["x-instaclone"]["environment"]["HUB_URL"].as_str(),
        Some("http://hub-balancer:3005"),
        "every part's settings"
    );
    let haproxy = std::process::Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(config_path))
        .output()
        .expect("haproxy is installed (scripts/ensure-haproxy.sh)");
    // Outside Docker the resolver's address does not answer; the syntax and every directive
    // must still be accepted.
    assert!(
        haproxy.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&haproxy.stderr)
    );
}

#[test]
fn every_secret_is_required_and_none_has_a_default() {
    let (text, _) = compose();
    assert!(
        !text.contains("guest:guest"),
        "RabbitMQ's default account is used"
    );
    for secret in [
        "INTERNAL_TOKEN",
        "POSTGRES_PASSWORD",
        "MONGO_PASSWORD",
        "REDIS_PASSWORD",
        "RABBITMQ_PASSWORD",
    ] {
        let uses: Vec<&str> = text
            .match_indices(&format!("${{{secret}"))
            .map(|(i, _)| &text[i..])
            .collect();
        assert!(!uses.is_empty(), "{secret} is not used");
        for used in uses {
            assert!(
                used.starts_with(&format!("${{{secret}:?")),
                "{secret} must be required (${{{secret}:?...}}): {}",
                used.lines().next().unwrap()
            );
        }
    }
    // Each backing service's URL takes its password from a required variable, not a literal.
    for (url, secret) in [
        ("USERS_DATABASE_URL", "POSTGRES_PASSWORD"),
        ("MONGODB_URL", "MONGO_PASSWORD"),
        ("REDIS_URL", "REDIS_PASSWORD"),
        ("AMQP_URL", "RABBITMQ_PASSWORD"),
    ] {
        let line = text
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{url}:")))
            .unwrap_or_else(|| panic!("{url} not set"));
        assert!(line.contains(&format!("${{{secret}:?")), "{line}");
    }
}

#[test]
fn the_env_script_writes_a_fresh_value_for_every_required_secret() {
    let run = || {
        let output = std::process::Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/compose-env.sh"
        ))
        .output()
        .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let (first, second) = (run(), run());
    let (text, _) = compose();
    for line in first.lines() {
        let (name, value) = line.split_once('=').unwrap();
        assert!(
            text.contains(&format!("${{{name}:?")),
            "{name} is not required by compose"
        );
        assert!(value.len() >= 32, "{name} is short");
        assert!(!second.contains(value), "{name} is not random");
    }
}
