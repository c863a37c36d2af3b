//! deploy/kubernetes/ checked offline against the Kubernetes OpenAPI schemas: `kubernetes-validate`
//! (PyPI; it bundles the schemas of each Kubernetes release) in a venv of the test's own, `--strict` so
//! an unknown field fails. A manifest with a misspelled field must fail too, so the check can fail.

use std::{path::Path, process::Command};

use integration_tests::{TempDir, in_vm, skip};

/// The Kubernetes release the manifests are checked against.
const KUBERNETES: &str = "1.30.0";

/// A venv with kubernetes-validate; Err says why it cannot be had here.
fn validator(dir: &Path) -> Result<std::path::PathBuf, String> {
    if in_vm() {
        return Err("the VM has no package registry to install kubernetes-validate from".into());
    }
    let venv = dir.join("venv");
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !ok.status.success() {
        return Err(format!(
            "python3 -m venv failed (apt-get install python3-venv): {}",
            String::from_utf8_lossy(&ok.stderr).trim()
        ));
    }
    let out = Command::new("timeout")
        .arg("300")
        .arg(venv.join("bin/python3"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "kubernetes-validate",
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip install kubernetes-validate failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        ));
    }
    Ok(venv.join("bin/kubernetes-validate"))
}

fn validate(tool: &Path, files: &[&Path]) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "-k", KUBERNETES])
        .args(files)
        .output()
        .expect("kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    const NAME: &str = "manifests_validate_against_the_kubernetes_schemas";
    let tmp = TempDir::new("kubernetes-validate");
    let tool = match validator(&tmp.0) {
        Ok(t) => t,
        Err(why) => return skip(NAME, &why),
    };
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes"));
    let manifests: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    assert!(manifests.len() >= 3, "{manifests:?}");
    let refs: Vec<&Path> = manifests.iter().map(|p| p.as_path()).collect();
    let (ok, text) = validate(&tool, &refs);
    println!("{text}");
    assert!(ok, "{text}");
    for kind in [
        "namespace/kchaos",
        "daemonset/kchaos",
        "job/",
        "configmap/",
        "networkpolicy/kchaos-metrics",
    ] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{kind}: {text}"
        );
    }

    // A misspelled field fails: the check can fail.
    let job = std::fs::read_to_string(dir.join("job.yaml")).unwrap();
    let bad = tmp.0.join("bad-job.yaml");
    std::fs::write(&bad, job.replace("hostPID: true", "hostPDI: true")).unwrap();
    let (ok, text) = validate(&tool, &[&bad]);
    assert!(!ok && text.contains("hostPDI"), "{text}");
}

/// The pods kchaos runs in hold no more power than it uses (issue 28.9): no `privileged`, every
/// capability dropped but a named few, no service-account token, resource limits, and the metrics
/// endpoint (which has no authentication) bound to the pod's own address, reachable through the
/// NetworkPolicy from Prometheus only. No cluster runs here, so the manifests are what is checked.
#[test]
fn manifests_grant_no_more_than_kchaos_uses() {
    // Compiled in: the VM image has the test binaries, not the source tree.
    let manifests = [
        (
            "daemonset.yaml",
            include_str!("../../deploy/kubernetes/daemonset.yaml"),
        ),
        ("job.yaml", include_str!("../../deploy/kubernetes/job.yaml")),
    ];
    for (name, m) in manifests {
        // Comment lines may name what is left out; only the YAML itself counts.
        let yaml: String = m
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(!yaml.contains("privileged: true"), "{name} is privileged");
        assert!(yaml.contains("privileged: false"), "{name}");
        assert!(
            yaml.contains("drop: [\"ALL\"]"),
            "{name} keeps the default capabilities"
        );
        assert!(
            yaml.contains("automountServiceAccountToken: false"),
            "{name} mounts a service-account token"
        );
        assert!(yaml.contains("limits:"), "{name} has no resource limits");
        assert!(
            !yaml.contains("hostNetwork: true"),
            "{name}: the NetworkPolicy cannot hold"
        );
        assert!(!yaml.contains("0.0.0.0"), "{name} listens on every address");
        assert!(yaml.contains("fieldPath: status.podIP"), "{name}");
    }
    assert!(manifests[1].1.contains("$(POD_IP):9464"));
    let policy = include_str!("../../deploy/kubernetes/networkpolicy.yaml");
    assert!(policy.contains("kind: NetworkPolicy") && policy.contains("port: 9464"));
}
