//! The web app in a real browser: `tests/browser/app.test.mjs`, driven by Node with
//! `playwright-core` in Debian's Chromium, against the platform started here. `scripts/test.sh`
//! installs both when missing (`scripts/ensure-browser.sh`); without them this test fails saying
//! which is missing.

#![allow(clippy::unwrap_used)]

mod common;

use std::{path::Path, process::Command};

use common::platform::Platform;
use instaclone_shared::testing::TestEnv;

#[tokio::test]
async fn the_web_app_works_in_chromium_over_websocket_and_sse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is not installed at {chromium} (run scripts/ensure-browser.sh)"
    );
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/browser (run scripts/ensure-browser.sh)"
    );
    let env = TestEnv::new();
    // The hub's port is only known here: the app is told it through /config.json.
    let ports = common::platform::Ports::free();
    let hub = common::platform::url(ports.hub);
    let platform = Platform::start_on(&env, ports, &[("PUBLIC_HUB_URL", hub)], 0).await;
    let mut node = Command::new("node");
    node.arg("app.test.mjs")
        .current_dir(&dir)
        .env("BASE_URL", &platform.gateway.base_url)
        .env("CHROMIUM", &chromium);
    common::run_to_success("browser test failed (is node installed?)", node).await;
}
