//! The `rollcall` command line: migrations and API-key management on a real SQLite database.

use std::process::{Command, Output};

fn rollcall(db: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(args)
        .env("DATABASE_URL", db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rollcall {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn api_keys_are_created_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let migrated = rollcall(&db, &["migrate"]);
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("migrations applied"));

    let created = String::from_utf8(
        rollcall(
            &db,
            &[
                "api-key",
                "create",
                "--name",
                "front desk",
                "--scopes",
                "recognize,read",
            ],
        )
        .stdout,
    )
    .unwrap();
    let secret = created.lines().last().unwrap().trim().to_owned();
    assert!(secret.starts_with("rc_") && secret.len() == 43, "{created}");

    let listed = String::from_utf8(rollcall(&db, &["api-key", "list"]).stdout).unwrap();
    assert!(
        listed.contains("front desk")
            && listed.contains("recognize,read")
            && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains(&secret), "a secret must never be listed");

    rollcall(&db, &["api-key", "revoke", "1"]);
    let listed = String::from_utf8(rollcall(&db, &["api-key", "list"]).stdout).unwrap();
    assert!(listed.contains("revoked"), "{listed}");

    let bad = Command::new(env!("CARGO_BIN_EXE_rollcall"))
        .args(["api-key", "create", "--name", "x", "--scopes", "root"])
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}

#[tokio::test]
async fn first_start_creates_one_admin_key() {
    use rollcall_server::auth::{hash_key, Scope};
    use rollcall_server::config::CommonSettings;
    let dir = tempfile::tempdir().unwrap();
    let common = CommonSettings {
        database_url: format!("sqlite://{}", dir.path().join("first.db").display()),
        model_dir: dir.path().to_owned(),
        device: rollcall_models::device::DeviceChoice::Cpu,
    };
    let (store, key) = rollcall_server::app::open_store(&common, None)
        .await
        .unwrap();
    let key = key.expect("an empty database gets an admin key");
    let record = store
        .authenticate(&hash_key(&key))
        .await
        .unwrap()
        .expect("the key works");
    assert_eq!(record.scopes, vec![Scope::Admin]);
    let (_, again) = rollcall_server::app::open_store(&common, None)
        .await
        .unwrap();
    assert!(again.is_none(), "the key is created and shown only once");
}

#[test]
fn a_device_that_cannot_run_the_networks_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = |device: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_rollcall"))
            .args(["--device", device, "eval"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--device {device} must fail here");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let unknown = run("tpu");
    assert!(
        unknown.contains("`tpu` is not a device: use cpu, cuda, cuda:N or auto"),
        "{unknown}"
    );
    #[cfg(not(feature = "cuda"))]
    {
        let cuda = run("cuda:1");
        assert!(
            cuda.contains(
                "device cuda:1: this build has no CUDA support (build with `--features cuda`)"
            ),
            "{cuda}"
        );
    }
}
