//! The public API keeps the promises of its own document: schemathesis reads `/openapi.json`
//! from the gateway of a running platform and sends every operation generated requests, valid
//! and invalid (`--checks all`: no 5xx, every status and body as documented, invalid input
//! refused with a 4xx, valid input accepted, a token-guarded route refusing a request without
//! one). `scripts/test.sh` installs schemathesis (`scripts/ensure-schemathesis.sh`); without it
//! this test fails saying so.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Command};

use common::platform::{Platform, register};
use instaclone_shared::testing::TestEnv;

/// Examples per operation and generation phase; `CONTRACT_MAX_EXAMPLES` asks for more (a deeper
/// search than CI's).
const MAX_EXAMPLES: &str = "40";

#[tokio::test]
async fn the_api_behaves_as_its_openapi_document_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schemathesis = std::env::var("SCHEMATHESIS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".tools/schemathesis/bin/st"));
    assert!(
        schemathesis.exists(),
        "schemathesis is not installed at {} (run scripts/ensure-schemathesis.sh)",
        schemathesis.display()
    );
    let env = TestEnv::new();
    // Generous rate limits: a 429 is a documented answer, but one that tests nothing else.
    let limits = [
        ("RATE_LIMIT_ANONYMOUS", "1000000".to_owned()),
        ("RATE_LIMIT_USER", "1000000".to_owned()),
    ];
    let platform = Platform::start(&env, &limits, 0).await;
    let user = register(&platform.gateway, "contract").await;
    let work_dir = std::env::temp_dir().join(format!("instaclone-contract-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).unwrap();
    let document = platform.gateway.url("/openapi.json");
    let max_examples =
        std::env::var("CONTRACT_MAX_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.to_owned());
    let mut run = Command::new(&schemathesis);
    run.current_dir(&work_dir)
        .args(["run", &document, "--checks", "all"])
        .args(["--max-examples", &max_examples])
        .args(["--header", &format!("Authorization: Bearer {}", user.token)])
        .args(["--generation-database", "none", "--no-color"]);
    common::run_to_success("schemathesis found the API and its document apart", run).await;
    let _ = std::fs::remove_dir_all(&work_dir);
}
